// SPDX-License-Identifier: MIT
//! [`Preprocessor`] against real GStreamer frames: each of the twelve formats, made by
//! `videotestsrc` at even, odd and HD sizes, is compared with Pillow's bilinear resize
//! (written out here from `libImaging/Resample.c`, whole picture at a time, in integers) of the
//! same picture in 8-bit RGB.
//!
//! For the ten RGB formats that picture is the frame after `videoconvert`, which only
//! reorders bytes, so the two must agree exactly. For I420 and NV12 the exact reference is a
//! plain decoding of the raw samples written here, rounded to 8 bits; `videoconvert` is
//! compared too, with bounds that account for its fixed-point arithmetic and chroma handling
//! (see the tests for the measurements behind them). `tests/python/test_input_equality.py`
//! compares the same tensors with the training loader's, which calls Pillow itself.

use gst::prelude::*;
use gst_video::prelude::*;
use gstinstseg::preprocess::{
    FrameRef, Normalization, PixelFormat, Placement, Preprocessor, ResizeMode,
};

const IMAGENET: Normalization = Normalization {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

const YUV_FORMATS: [PixelFormat; 2] = [PixelFormat::I420, PixelFormat::Nv12];

/// Even, odd (chroma planes of 161x121, RGB rows padded to 4 bytes) and HD sizes.
const SIZES: [(u32, u32); 3] = [(64, 64), (321, 241), (1280, 720)];

/// Model inputs: a letterbox (64x64 is enlarged, the others reduced) and a stretch to a
/// size that is neither a divisor nor a multiple of any frame size.
const INPUTS: [(usize, usize, ResizeMode); 2] = [
    (256, 256, ResizeMode::Letterbox),
    (200, 120, ResizeMode::Stretch),
];

/// Colour bars: sharp edges, the worst case for resizing and chroma upsampling.
const SMPTE: &str = "pattern=smpte";
/// A vertical gradient between two colours: smooth chroma.
const GRADIENT: &str = "pattern=gradient foreground-color=0xff20e040 background-color=0xffe02080";
/// A disc of one colour on another.
const BALL: &str = "pattern=ball foreground-color=0xffffd000 background-color=0xff2040c0";

fn caps_name(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::Rgb => "RGB",
        PixelFormat::Bgr => "BGR",
        PixelFormat::Rgba => "RGBA",
        PixelFormat::Bgra => "BGRA",
        PixelFormat::Rgbx => "RGBx",
        PixelFormat::Bgrx => "BGRx",
        PixelFormat::Xrgb => "xRGB",
        PixelFormat::Xbgr => "xBGR",
        PixelFormat::Argb => "ARGB",
        PixelFormat::Abgr => "ABGR",
        PixelFormat::I420 => "I420",
        PixelFormat::Nv12 => "NV12",
    }
}

/// One `videotestsrc` frame as produced, and the same frame after `videoconvert`.
struct Capture {
    raw: gst::Sample,
    converted: gst::Sample,
}

/// Runs `videotestsrc <source> ! <caps> ! tee`, one branch into an appsink untouched, the
/// other through `videoconvert` to `converted_caps`.
fn capture(source: &str, caps: &str, converted_caps: &str) -> Capture {
    gst::init().unwrap();
    let description = format!(
        "videotestsrc num-buffers=1 {source} ! {caps} ! tee name=t \
         t. ! queue ! appsink name=raw sync=false \
         t. ! queue ! videoconvert ! {converted_caps} ! appsink name=converted sync=false"
    );
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let pull = |name: &str| {
        pipeline
            .by_name(name)
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap()
            .pull_sample()
            .unwrap_or_else(|_| panic!("no frame from {description}"))
    };
    let capture = Capture {
        raw: pull("raw"),
        converted: pull("converted"),
    };
    pipeline.set_state(gst::State::Null).unwrap();
    capture
}

/// Maps a sample's frame as described by its caps (and any `GstVideoMeta` on its buffer).
fn map(sample: &gst::Sample) -> gst_video::VideoFrameRef<&gst::BufferRef> {
    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    gst_video::VideoFrameRef::from_buffer_ref_readable(sample.buffer().unwrap(), &info).unwrap()
}

/// Preprocesses a mapped frame, as the element does.
fn preprocess(
    frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    (input_width, input_height, mode): (usize, usize, ResizeMode),
) -> (Vec<f32>, Placement) {
    let plane = |i: u32| {
        if i < frame.n_planes() {
            (
                frame.plane_data(i).unwrap(),
                frame.plane_stride()[i as usize] as usize,
            )
        } else {
            (&[][..], 0)
        }
    };
    let [(y, y_stride), (u, u_stride), (v, v_stride)] = [0, 1, 2].map(plane);
    let frame = FrameRef {
        format: PixelFormat::from_caps_name(frame.format().to_str()).expect("a supported format"),
        width: frame.width() as usize,
        height: frame.height() as usize,
        planes: [y, u, v],
        strides: [y_stride, u_stride, v_stride],
        colorimetry: gstinstseg::frame::colorimetry(frame.info()),
    };
    let placement = Placement::new(
        frame.width as u32,
        frame.height as u32,
        input_width as u32,
        input_height as u32,
        mode,
    );
    let mut out = vec![f32::NAN; 3 * input_width * input_height];
    Preprocessor::default()
        .run(
            &frame,
            input_width,
            input_height,
            placement,
            &IMAGENET,
            &mut out,
        )
        .unwrap();
    (out, placement)
}

/// A picture in RGB with values 0..=255, read pixel by pixel: what the references resize.
struct Picture<'a> {
    width: usize,
    height: usize,
    pixel: Box<dyn Fn(usize, usize) -> [f64; 3] + 'a>,
}

impl<'a> Picture<'a> {
    /// A frame `videoconvert` made, in RGB (8 bits) or RGBA64_LE (16 bits).
    fn from_rgb(frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>) -> Self {
        let data = frame.plane_data(0).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let pixel: Box<dyn Fn(usize, usize) -> [f64; 3]> = match frame.format() {
            gst_video::VideoFormat::Rgb => {
                Box::new(move |x, y| [0, 1, 2].map(|c| f64::from(data[y * stride + 3 * x + c])))
            }
            gst_video::VideoFormat::Rgba64Le => Box::new(move |x, y| {
                [0, 1, 2].map(|c| {
                    let i = y * stride + 8 * x + 2 * c;
                    f64::from(u16::from_le_bytes([data[i], data[i + 1]])) / 257.0
                })
            }),
            other => panic!("not a reference format: {other:?}"),
        };
        Self {
            width: frame.width() as usize,
            height: frame.height() as usize,
            pixel,
        }
    }

    /// A raw I420 or NV12 frame decoded the textbook way: chroma interpolated bilinearly at
    /// MPEG-2 sites (co-sited with even luma columns, midway between luma rows), then the
    /// Y'CbCr matrix from Kr and Kb of the caps' colorimetry, clamped.
    fn from_yuv(frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>) -> Self {
        let (width, height) = (frame.width() as usize, frame.height() as usize);
        let (chroma_width, chroma_height) = (width.div_ceil(2), height.div_ceil(2));
        let plane = |i: u32| {
            (
                frame.plane_data(i).unwrap(),
                frame.plane_stride()[i as usize] as usize,
            )
        };
        let (luma, luma_stride) = plane(0);
        // U (component 0) or V (1) of chroma sample (x, y).
        let chroma_sample: Box<dyn Fn(usize, usize, usize) -> f64> = match frame.format() {
            gst_video::VideoFormat::I420 => {
                let planes = [plane(1), plane(2)];
                Box::new(move |component, x, y| {
                    let (data, stride) = planes[component];
                    f64::from(data[y * stride + x])
                })
            }
            gst_video::VideoFormat::Nv12 => {
                let (data, stride) = plane(1);
                Box::new(move |component, x, y| f64::from(data[y * stride + 2 * x + component]))
            }
            other => panic!("not a 4:2:0 format: {other:?}"),
        };
        let colorimetry = frame.info().colorimetry();
        let (kr, kb) = match colorimetry.matrix() {
            gst_video::VideoColorMatrix::Bt601 => (0.299, 0.114),
            gst_video::VideoColorMatrix::Bt709 => (0.2126, 0.0722),
            gst_video::VideoColorMatrix::Bt2020 => (0.2627, 0.0593),
            other => panic!("unsupported matrix {other:?}"),
        };
        let kg = 1.0 - kr - kb;
        let (black, luma_range, chroma_range) =
            if colorimetry.range() == gst_video::VideoColorRange::Range0_255 {
                (0.0, 255.0, 255.0)
            } else {
                (16.0, 219.0, 224.0)
            };
        let pixel = move |x: usize, y: usize| {
            let (x0, x1, wx) = linear_taps(x as f64 / 2.0, chroma_width);
            let (y0, y1, wy) = linear_taps((y as f64 + 0.5) / 2.0 - 0.5, chroma_height);
            let chroma = |component: usize| {
                let row = |y: usize| {
                    chroma_sample(component, x0, y) * (1.0 - wx)
                        + chroma_sample(component, x1, y) * wx
                };
                (row(y0) * (1.0 - wy) + row(y1) * wy - 128.0) * 255.0 / chroma_range
            };
            let (cb, cr) = (chroma(0), chroma(1));
            let y_ = (f64::from(luma[y * luma_stride + x]) - black) * 255.0 / luma_range;
            [
                y_ + 2.0 * (1.0 - kr) * cr,
                y_ - 2.0 * kb * (1.0 - kb) / kg * cb - 2.0 * kr * (1.0 - kr) / kg * cr,
                y_ + 2.0 * (1.0 - kb) * cb,
            ]
            .map(|value| value.clamp(0.0, 255.0))
        };
        Self {
            width,
            height,
            pixel: Box::new(pixel),
        }
    }

    /// The picture in 8 bits, rounded to nearest (ties to even, as the element rounds a
    /// converted 4:2:0 row).
    fn levels(&self) -> Vec<[u8; 3]> {
        (0..self.height)
            .flat_map(|y| (0..self.width).map(move |x| (x, y)))
            .map(|(x, y)| (self.pixel)(x, y).map(|value| value.round_ties_even() as u8))
            .collect()
    }

    /// The model input computed the plain way: the 8-bit picture resized onto the
    /// placement by [`pillow_bilinear`], normalised in f64; black outside.
    fn model_input(
        &self,
        (input_width, input_height, _): (usize, usize, ResizeMode),
        placement: Placement,
    ) -> Vec<f64> {
        let (placed_width, placed_height) = (placement.width as usize, placement.height as usize);
        let resized = pillow_bilinear(
            &self.levels(),
            (self.width, self.height),
            (placed_width, placed_height),
        );
        let plane_len = input_width * input_height;
        let mut out = vec![0.0; 3 * plane_len];
        for y in 0..input_height {
            for x in 0..input_width {
                let inside_x = x
                    .checked_sub(placement.x as usize)
                    .filter(|x| *x < placed_width);
                let inside_y = y
                    .checked_sub(placement.y as usize)
                    .filter(|y| *y < placed_height);
                let rgb = match (inside_x, inside_y) {
                    (Some(px), Some(py)) => resized[py * placed_width + px].map(f64::from),
                    _ => [0.0; 3],
                };
                for (c, value) in rgb.into_iter().enumerate() {
                    out[c * plane_len + y * input_width + x] =
                        (value / 255.0 - f64::from(IMAGENET.mean[c])) / f64::from(IMAGENET.std[c]);
                }
            }
        }
        out
    }
}

/// Pillow's `Image.resize((width, height), Image.BILINEAR)` of an 8-bit RGB picture, as
/// `libImaging/Resample.c` computes it: for each axis that changes size, output sample i is
/// centred on source position (i + 0.5) * scale, its triangle widened by max(scale, 1), its
/// window bounds truncated as C's `(int)` does, its weights divided by their sum and rounded to
/// 22-bit fixed point; the horizontal pass runs first and rounds to 8 bits, then the vertical
/// one.
fn pillow_bilinear(
    picture: &[[u8; 3]],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
) -> Vec<[u8; 3]> {
    // For each output sample, the first source sample and the fixed-point weights.
    let coefficients = |source: usize, target: usize| -> Vec<(usize, Vec<i64>)> {
        let scale = source as f64 / target as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale;
        let inverse = 1.0 / filter_scale;
        (0..target)
            .map(|i| {
                let centre = (i as f64 + 0.5) * scale;
                let first = ((centre - support + 0.5) as i64).max(0) as usize;
                let end = ((centre + support + 0.5) as i64).min(source as i64) as usize;
                let weights: Vec<f64> = (first..end)
                    .map(|x| {
                        let t = ((x as f64 - centre + 0.5) * inverse).abs();
                        if t < 1.0 { 1.0 - t } else { 0.0 }
                    })
                    .collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|w| (0.5 + w / total * f64::from(1 << 22)) as i64)
                    .collect();
                (first, fixed)
            })
            .collect()
    };
    // Sample `i` of a row or column is `sample(i)`.
    let filter = |sample: &dyn Fn(usize) -> [u8; 3], (first, weights): &(usize, Vec<i64>)| {
        let mut sums = [1i64 << 21; 3];
        for (k, weight) in weights.iter().enumerate() {
            let pixel = sample(first + k);
            for c in 0..3 {
                sums[c] += i64::from(pixel[c]) * weight;
            }
        }
        sums.map(|sum| (sum >> 22).clamp(0, 255) as u8)
    };
    let mut picture = picture.to_vec();
    let mut width = width;
    if out_width != width {
        let columns = coefficients(width, out_width);
        picture = picture
            .chunks_exact(width)
            .flat_map(|row| {
                columns
                    .iter()
                    .map(|column| filter(&|x| row[x], column))
                    .collect::<Vec<_>>()
            })
            .collect();
        width = out_width;
    }
    if out_height != height {
        let rows = coefficients(height, out_height);
        let source = &picture;
        picture = rows
            .iter()
            .flat_map(|row| (0..width).map(move |x| filter(&|y| source[y * width + x], row)))
            .collect();
    }
    picture
}

/// Linear interpolation taps at `position` (in samples) among `len` samples, clamped to
/// the edges: the two samples and the weight of the second.
fn linear_taps(position: f64, len: usize) -> (usize, usize, f64) {
    let position = position.clamp(0.0, (len - 1) as f64);
    let first = position.floor() as usize;
    (first, (first + 1).min(len - 1), position - first as f64)
}

/// How far a tensor is from the reference, in 8-bit pixel levels (the normalisation undone).
#[derive(Debug)]
struct Difference {
    max: f64,
    mean: f64,
    median: f64,
    p99: f64,
}

fn difference(out: &[f32], reference: &[f64]) -> Difference {
    assert_eq!(out.len(), reference.len());
    let plane = out.len() / 3;
    let mut levels: Vec<f64> = out
        .iter()
        .zip(reference)
        .enumerate()
        .map(|(i, (out, reference))| {
            (f64::from(*out) - reference).abs() * f64::from(IMAGENET.std[i / plane]) * 255.0
        })
        .collect();
    levels.sort_by(f64::total_cmp);
    Difference {
        max: levels[levels.len() - 1],
        mean: levels.iter().sum::<f64>() / levels.len() as f64,
        median: levels[levels.len() / 2],
        p99: levels[levels.len() * 99 / 100],
    }
}

/// Which picture the tensors are compared with.
#[derive(Clone, Copy)]
enum Reference {
    /// The frame as `videoconvert` turned it into RGB.
    Videoconvert,
    /// The raw 4:2:0 frame decoded the textbook way ([`Picture::from_yuv`]).
    PlainDecoding,
}

/// Compares `format` frames of every size, in each of `patterns`, for every input with the
/// reference; `check(pattern, difference)` judges each case.
fn compare(
    format: PixelFormat,
    patterns: &[&str],
    caps_extra: &str,
    converted_caps: &str,
    reference: Reference,
    check: impl Fn(&str, &Difference) -> bool,
) {
    let mut failures = Vec::new();
    for (width, height) in SIZES {
        let caps = format!(
            "video/x-raw,format={},width={width},height={height}{caps_extra}",
            caps_name(format)
        );
        for pattern in patterns {
            let capture = capture(pattern, &caps, converted_caps);
            let (raw, converted) = (map(&capture.raw), map(&capture.converted));
            let picture = match reference {
                Reference::Videoconvert => Picture::from_rgb(&converted),
                Reference::PlainDecoding => Picture::from_yuv(&raw),
            };
            for input in INPUTS {
                let (out, placement) = preprocess(&raw, input);
                let difference = difference(&out, &picture.model_input(input, placement));
                if !check(pattern, &difference) {
                    failures.push(format!("{caps} {pattern} to {input:?}: {difference:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Exactly: the same 8-bit picture, the normalisation aside (f32 here, f64 in the reference).
#[test]
fn rgb_formats_match_videoconvert_exactly() {
    for format in PixelFormat::packed() {
        compare(
            format,
            &[SMPTE],
            "",
            "video/x-raw,format=RGB",
            Reference::Videoconvert,
            |_, difference| difference.max < 0.01,
        );
    }
}

/// Every matrix and range, samples read from GStreamer's planes (odd sizes, padded strides)
/// and decoded as specified, then rounded to 8 bits: only the decoding's float rounding (f32
/// in the element, f64 here) could move a value lying near a half level to the other level;
/// none of these frames has one, so the tensors agree exactly.
#[test]
fn yuv_formats_match_a_plain_decoding() {
    for format in YUV_FORMATS {
        for colorimetry in ["bt601", "bt709", "bt2020", "1:4:5:4"] {
            compare(
                format,
                &[SMPTE],
                &format!(",colorimetry={colorimetry}"),
                "video/x-raw,format=RGB",
                Reference::PlainDecoding,
                |_, difference| difference.max < 0.01,
            );
        }
    }
}

/// With caps that fix the matrix, the range and MPEG-2 chroma siting, GStreamer interpolates
/// chroma where [`Preprocessor`] does. A 16-bit RGB output keeps `videoconvert` off its
/// 8-bit matrix (see the next test) and off its I420 fast path, which repeats chroma instead
/// of interpolating it. What remains is its 16-bit arithmetic, which is biased by itself:
/// it turns Y'CbCr (126, 128, 128) in BT.601 limited range, grey 128.1, into (129.2, 127.7,
/// 129.3). Its output is rounded to 8 bits and resized as the element resizes; measured here:
/// mean <= 1.3, 99th percentile <= 3, max <= 4 levels.
#[test]
fn yuv_formats_match_videoconvert_with_mpeg2_siting() {
    for format in YUV_FORMATS {
        // Limited-range BT.709 and full-range BT.601 (BT.2020 is the same code with other
        // coefficients, checked by the plain decoding).
        for colorimetry in ["bt709", "1:4:5:4"] {
            compare(
                format,
                &[SMPTE, GRADIENT, BALL],
                &format!(",colorimetry={colorimetry},chroma-site=mpeg2"),
                "video/x-raw,format=RGBA64_LE",
                Reference::Videoconvert,
                |_, difference| {
                    difference.mean <= 1.5 && difference.p99 <= 3.5 && difference.max <= 4.5
                },
            );
        }
    }
}

/// `videotestsrc ! videoconvert ! video/x-raw,format=RGB` as a pipeline has it, with caps
/// that name no colorimetry. Three things differ from [`Preprocessor`] there, all on
/// GStreamer's side:
/// - its 8-bit Y'CbCr matrix is biased: BT.601 limited (126, 128, 128), grey 128.1, comes
///   out as 126, and (143, 86, 55) as (29, 219, 62) instead of (31.4, 223.7, 63.2);
/// - GStreamer 1.22 ignores `chroma-site` in caps without `colorimetry` and assumes chroma
///   centred between luma columns up to 576 lines (MPEG-2 siting above);
/// - I420 to packed RGB takes a fast path that repeats each chroma sample over its 2x2
///   pixels instead of interpolating.
///
/// So the bias bounds the median everywhere (measured <= 2 levels) and, with smooth chroma,
/// the maximum (measured <= 7 levels); at sharp colour edges the chroma handling differs by
/// up to half the edge (more than 100 levels, over 20% of a 64x64 SMPTE frame enlarged to
/// 256x256), which is left unbounded.
#[test]
fn yuv_formats_against_videoconvert_defaults() {
    for format in YUV_FORMATS {
        compare(
            format,
            &[SMPTE, GRADIENT, BALL],
            "",
            "video/x-raw,format=RGB",
            Reference::Videoconvert,
            |pattern, difference| {
                difference.median <= 2.5 && (pattern != GRADIENT || difference.max <= 7.5)
            },
        );
    }
}

/// A frame whose planes sit at odd offsets with odd strides and garbage in between, as an
/// upstream element may hand over with a `GstVideoMeta`, gives exactly the tensor of the
/// same frame in GStreamer's default layout.
#[test]
fn custom_strides_from_video_meta() {
    for format in PixelFormat::packed().chain(YUV_FORMATS) {
        let caps = format!(
            "video/x-raw,format={},width=321,height=241",
            caps_name(format)
        );
        let capture = capture(SMPTE, &caps, "video/x-raw,format=RGB");
        let frame = map(&capture.raw);
        let info = frame.info();

        let mut offsets = Vec::new();
        let mut strides = Vec::new();
        let mut data = Vec::new();
        for plane in 0..frame.n_planes() {
            let source = frame.plane_data(plane).unwrap();
            let source_stride = frame.plane_stride()[plane as usize] as usize;
            let stride = source_stride + 13;
            data.resize(data.len() + 7, 0xAB);
            offsets.push(data.len());
            strides.push(stride as i32);
            for row in source.chunks(source_stride) {
                data.extend_from_slice(row);
                data.resize(data.len() + stride - row.len(), 0xAB);
            }
        }
        let mut buffer = gst::Buffer::from_mut_slice(data);
        gst_video::VideoMeta::add_full(
            buffer.get_mut().unwrap(),
            gst_video::VideoFrameFlags::empty(),
            info.format(),
            info.width(),
            info.height(),
            &offsets,
            &strides,
        )
        .unwrap();
        let relaid = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, info).unwrap();
        assert_eq!(relaid.plane_stride()[0], strides[0]);

        for input in INPUTS {
            assert_eq!(
                preprocess(&relaid, input),
                preprocess(&frame, input),
                "{caps} to {input:?}"
            );
        }
    }
}
