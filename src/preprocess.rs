// SPDX-License-Identifier: MIT
//! The model input from one raw video frame (docs/contract.md, docs/element.md).
//!
//! A frame in one of the twelve formats the element accepts becomes a planar `[3][H][W]`
//! float32 RGB tensor with value `(pixel / 255 - mean[c]) / std[c]`. The frame is resized
//! onto a [`Placement`] inside the `W x H` input exactly as Pillow's `Image.resize(size,
//! Image.BILINEAR)` resizes an 8-bit RGB image, which is what the training loader
//! (`training/instseg_train/coco.py`) feeds the network; the rest of the input is padding
//! with the value of a black pixel.
//!
//! That resampling is a separable triangle filter with half-pixel centres whose support
//! widens with the scale factor when shrinking, so that every output pixel averages its whole
//! source footprint (antialiased; enlarging, it is plain bilinear interpolation with the edges
//! repeated). As in Pillow (`libImaging/Resample.c`), the weights of each output sample are
//! computed in f64, normalised to sum 1 and rounded to 22-bit fixed point; the horizontal
//! pass runs first and rounds to 8 bits, then the vertical pass, which rounds to 8 bits
//! again (an axis that keeps its size is left as it is). Pillow up to 12 always runs the
//! horizontal pass first; Pillow 13 runs the vertical one first when the height shrinks by
//! more than twice as many pixels as the width, so the loader resizes one axis per call
//! (`resize_bilinear`) to get the same order from every version. For the ten RGB formats the
//! resized picture is bit-identical to the loader's, and so is the tensor (pinned by
//! `tests/python/test_input_equality.py`). A 4:2:0 frame is first turned into 8-bit RGB row
//! by row (see [`Yuv420`]) and then resized the same way.
//!
//! The planes are read in place, honouring their strides: no full-size RGB copy of the frame
//! is ever made. Each source row the vertical filter needs is resampled horizontally once into
//! a small ring of rows, from which each output row is filtered vertically; rows that no
//! output row needs are never read (when shrinking, every row is needed). The filter weights
//! depend only on the geometry, so a [`Preprocessor`] computes them once and reuses them, with
//! its buffers, for every frame of that geometry. The sums are integers, so the passes run
//! with AVX2 where the CPU has it and give the same tensor either way.
//!
//! ```
//! use gstinstseg::preprocess::*;
//!
//! // A 16x1 RGB frame whose red channel repeats 255, 0, 0, 0, shrunk onto a 4x1 input: each
//! // input pixel averages its footprint (plus a little of its neighbours'), as Pillow does.
//! let pixels: Vec<u8> = (0..16).flat_map(|x| [if x % 4 == 0 { 255 } else { 0 }, 0, 0]).collect();
//! let frame = FrameRef {
//!     format: PixelFormat::Rgb,
//!     width: 16,
//!     height: 1,
//!     planes: [&pixels, &[], &[]],
//!     strides: [48, 0, 0],
//!     colorimetry: Colorimetry { matrix: YuvMatrix::Bt601, full_range: false },
//! };
//! let placement = Placement::new(16, 1, 4, 1, ResizeMode::Stretch);
//! let mut input = vec![0.0; 3 * 4];
//! Preprocessor::default()
//!     .run(&frame, 4, 1, placement, &Normalization::default(), &mut input)
//!     .unwrap();
//! let red: Vec<f32> = input[..4].iter().map(|value| value * 255.0).collect();
//! assert_eq!(red, [73.0, 64.0, 64.0, 46.0]);
//! ```

use std::fmt;

/// The raw video formats of the element's caps, named as in GStreamer.
///
/// Packed formats are named by their bytes in memory order (`Rgbx` is R, G, B, padding);
/// `I420` and `Nv12` are 8-bit 4:2:0 YUV with three planes (Y, U, V) and two planes (Y,
/// interleaved UV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgb,
    Bgr,
    Rgba,
    Bgra,
    Rgbx,
    Bgrx,
    Xrgb,
    Xbgr,
    Argb,
    Abgr,
    I420,
    Nv12,
}

impl PixelFormat {
    /// Every supported format, with its name in GStreamer caps; the packed RGB ones first.
    pub const ALL: [(PixelFormat, &'static str); 12] = [
        (PixelFormat::Rgb, "RGB"),
        (PixelFormat::Bgr, "BGR"),
        (PixelFormat::Rgba, "RGBA"),
        (PixelFormat::Bgra, "BGRA"),
        (PixelFormat::Rgbx, "RGBx"),
        (PixelFormat::Bgrx, "BGRx"),
        (PixelFormat::Xrgb, "xRGB"),
        (PixelFormat::Xbgr, "xBGR"),
        (PixelFormat::Argb, "ARGB"),
        (PixelFormat::Abgr, "ABGR"),
        (PixelFormat::I420, "I420"),
        (PixelFormat::Nv12, "NV12"),
    ];

    /// The format of a GStreamer caps `format` name, if supported.
    pub fn from_caps_name(name: &str) -> Option<PixelFormat> {
        Self::ALL
            .iter()
            .find(|(_, caps_name)| *caps_name == name)
            .map(|(format, _)| *format)
    }

    /// The ten packed RGB formats.
    pub fn packed() -> impl Iterator<Item = PixelFormat> {
        Self::ALL[..10].iter().map(|(format, _)| *format)
    }

    /// Bytes per row and number of rows of each plane; `(0, 0)` for planes the format lacks.
    /// Chroma planes of odd-sized frames round up, as GStreamer lays them out.
    pub(crate) fn plane_extents(self, width: usize, height: usize) -> [(usize, usize); 3] {
        let packed = |bytes_per_pixel: usize| {
            [
                (width.saturating_mul(bytes_per_pixel), height),
                (0, 0),
                (0, 0),
            ]
        };
        let (chroma_width, chroma_height) = (width.div_ceil(2), height.div_ceil(2));
        match self {
            Self::Rgb | Self::Bgr => packed(3),
            Self::Rgba
            | Self::Bgra
            | Self::Rgbx
            | Self::Bgrx
            | Self::Xrgb
            | Self::Xbgr
            | Self::Argb
            | Self::Abgr => packed(4),
            Self::I420 => [
                (width, height),
                (chroma_width, chroma_height),
                (chroma_width, chroma_height),
            ],
            Self::Nv12 => [
                (width, height),
                (chroma_width.saturating_mul(2), chroma_height),
                (0, 0),
            ],
        }
    }

    fn is_chroma_subsampled(self) -> bool {
        matches!(self, Self::I420 | Self::Nv12)
    }
}

/// The Y'CbCr matrix of a YUV frame (GStreamer's `colorimetry` matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvMatrix {
    Bt601,
    Bt709,
    Bt2020,
}

/// How to turn a YUV frame's samples into RGB; ignored for RGB formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Colorimetry {
    pub matrix: YuvMatrix,
    /// `true`: Y', Cb and Cr use 0..=255; `false` (limited range, GStreamer's `16_235`): Y'
    /// uses 16..=235 and Cb, Cr 16..=240.
    pub full_range: bool,
}

/// A borrowed raw frame, as a mapped `GstVideoFrame` exposes it.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    /// Plane data starting at the first pixel; planes the format lacks are empty slices.
    /// The last row of a plane may end right after its last pixel.
    pub planes: [&'a [u8]; 3],
    /// Bytes from one row of a plane to the next.
    pub strides: [usize; 3],
    pub colorimetry: Colorimetry,
}

impl FrameRef<'_> {
    /// Checks that the frame is not empty and that every plane holds all the rows its stride
    /// implies, so that reading the frame can never go out of bounds.
    fn validate(&self) -> Result<(), PreprocessError> {
        if self.width == 0 || self.height == 0 {
            return Err(PreprocessError(format!(
                "empty {:?} frame of {}x{}",
                self.format, self.width, self.height
            )));
        }
        let extents = self.format.plane_extents(self.width, self.height);
        for (plane, ((row_bytes, rows), (data, stride))) in extents
            .into_iter()
            .zip(self.planes.iter().zip(self.strides))
            .enumerate()
            .filter(|(_, ((row_bytes, _), _))| *row_bytes > 0)
        {
            if stride < row_bytes {
                return Err(PreprocessError(format!(
                    "plane {plane} of a {}x{} {:?} frame has a stride of {stride} bytes, \
                     less than the {row_bytes} bytes of one row",
                    self.width, self.height, self.format
                )));
            }
            let needed = stride.saturating_mul(rows - 1).saturating_add(row_bytes);
            if data.len() < needed {
                return Err(PreprocessError(format!(
                    "plane {plane} of a {}x{} {:?} frame holds {} bytes, but {rows} rows of \
                     stride {stride} need {needed} (the last row only its {row_bytes} bytes)",
                    self.width,
                    self.height,
                    self.format,
                    data.len()
                )));
            }
        }
        Ok(())
    }
}

/// How the frame is fitted into the model input (the `instseg.resize` metadata key,
/// docs/contract.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Keep the aspect ratio, centre the picture and pad the rest.
    Letterbox,
    /// Fill the whole input, distorting the aspect ratio.
    Stretch,
}

/// Where the frame's picture lands inside the model input, in input pixels (the rest is
/// padding). The element needs it again to map results back to frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Placement {
    /// For [`ResizeMode::Letterbox`], the frame scaled by `min(input_w / frame_w, input_h /
    /// frame_h)`, each side rounded to the nearest pixel (at least 1, at most the input) and
    /// centred, rounding the offsets down; for [`ResizeMode::Stretch`], the whole input.
    pub fn new(
        frame_width: u32,
        frame_height: u32,
        input_width: u32,
        input_height: u32,
        mode: ResizeMode,
    ) -> Self {
        match mode {
            ResizeMode::Stretch => Self {
                x: 0,
                y: 0,
                width: input_width,
                height: input_height,
            },
            ResizeMode::Letterbox => {
                let scale = f64::min(
                    f64::from(input_width) / f64::from(frame_width),
                    f64::from(input_height) / f64::from(frame_height),
                );
                // `as` saturates (NaN becomes 0), so even an empty frame gives a placement
                // inside the input; `Preprocessor::run` refuses that frame anyway.
                let fit = |frame: u32, input: u32| {
                    ((f64::from(frame) * scale).round() as u32)
                        .max(1)
                        .min(input)
                };
                let width = fit(frame_width, input_width);
                let height = fit(frame_height, input_height);
                Self {
                    x: (input_width - width) / 2,
                    y: (input_height - height) / 2,
                    width,
                    height,
                }
            }
        }
    }
}

/// Per-channel (R, G, B) normalisation: `value = (pixel / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The contract's defaults: mean 0, std 1, i.e. `pixel / 255`.
impl Default for Normalization {
    fn default() -> Self {
        Self {
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }
}

impl Normalization {
    fn apply(&self, channel: usize, pixel: f32) -> f32 {
        (pixel / 255.0 - self.mean[channel]) / self.std[channel]
    }
}

/// A frame, geometry or output buffer that cannot be preprocessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreprocessError(String);

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PreprocessError {}

/// Turns frames into model inputs; keep one per stream and reuse it.
///
/// It caches the filter weights and buffers of the last geometry and the normalised value of
/// every 8-bit level, so once the frame size, the placement and the normalisation are stable,
/// [`run`](Self::run) allocates nothing.
#[derive(Debug, Default)]
pub struct Preprocessor {
    geometry: Option<Geometry>,
    buffers: Buffers,
    levels: Option<Levels>,
    /// For 4:2:0 frames, the source row being converted (see [`Yuv420`]).
    yuv_row: Yuv420Row,
}

impl Preprocessor {
    /// Writes the model input for `frame` into `out`, a planar `[3][input_height][input_width]`
    /// RGB tensor: the frame resized onto `placement` (see [`Placement::new`]), the padding
    /// around it set to the value of a black pixel, `(0 - mean[c]) / std[c]`.
    pub fn run(
        &mut self,
        frame: &FrameRef,
        input_width: usize,
        input_height: usize,
        placement: Placement,
        normalization: &Normalization,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        frame.validate()?;
        validate_output(input_width, input_height, placement, normalization, out)?;

        let key = GeometryKey {
            frame_width: frame.width,
            frame_height: frame.height,
            placement_width: placement.width as usize,
            placement_height: placement.height as usize,
            chroma_subsampled: frame.format.is_chroma_subsampled(),
        };
        let geometry = match &mut self.geometry {
            Some(geometry) if geometry.key == key => geometry,
            stale => {
                // Rebuild in place so the vectors keep their capacity.
                let geometry = stale.get_or_insert_with(Geometry::default);
                geometry.rebuild(key);
                geometry
            }
        };
        let levels = match &mut self.levels {
            Some(levels) if levels.normalization == *normalization => levels,
            stale => stale.insert(Levels::new(*normalization)),
        };
        self.buffers.start_frame(geometry);

        let mut output = Output::new(out, input_width, input_height, placement, levels);
        output.pad();
        let geometry = &*geometry;
        let buffers = &mut self.buffers;
        match frame.format {
            PixelFormat::Rgb => {
                output.fill(&mut PackedRgb::<3, 0, 1, 2>::new(frame), geometry, buffers)
            }
            PixelFormat::Bgr => {
                output.fill(&mut PackedRgb::<3, 2, 1, 0>::new(frame), geometry, buffers)
            }
            PixelFormat::Rgba | PixelFormat::Rgbx => {
                output.fill(&mut PackedRgb::<4, 0, 1, 2>::new(frame), geometry, buffers)
            }
            PixelFormat::Bgra | PixelFormat::Bgrx => {
                output.fill(&mut PackedRgb::<4, 2, 1, 0>::new(frame), geometry, buffers)
            }
            PixelFormat::Argb | PixelFormat::Xrgb => {
                output.fill(&mut PackedRgb::<4, 1, 2, 3>::new(frame), geometry, buffers)
            }
            PixelFormat::Abgr | PixelFormat::Xbgr => {
                output.fill(&mut PackedRgb::<4, 3, 2, 1>::new(frame), geometry, buffers)
            }
            PixelFormat::I420 => {
                let chroma = SeparateUv {
                    u: Plane::new(frame, 1),
                    v: Plane::new(frame, 2),
                };
                let mut layout = Yuv420::new(frame, chroma, geometry, &mut self.yuv_row);
                output.fill(&mut layout, geometry, buffers)
            }
            PixelFormat::Nv12 => {
                let chroma = InterleavedUv(Plane::new(frame, 1));
                let mut layout = Yuv420::new(frame, chroma, geometry, &mut self.yuv_row);
                output.fill(&mut layout, geometry, buffers)
            }
        }
        Ok(())
    }
}

fn validate_output(
    input_width: usize,
    input_height: usize,
    placement: Placement,
    normalization: &Normalization,
    out: &[f32],
) -> Result<(), PreprocessError> {
    if input_width == 0 || input_height == 0 {
        return Err(PreprocessError(format!(
            "empty model input of {input_width}x{input_height}"
        )));
    }
    let right = u64::from(placement.x) + u64::from(placement.width);
    let bottom = u64::from(placement.y) + u64::from(placement.height);
    if placement.width == 0
        || placement.height == 0
        || right > input_width as u64
        || bottom > input_height as u64
    {
        return Err(PreprocessError(format!(
            "placement {placement:?} is empty or not inside the {input_width}x{input_height} input"
        )));
    }
    let expected = input_width
        .checked_mul(input_height)
        .and_then(|pixels| pixels.checked_mul(3));
    if expected != Some(out.len()) {
        return Err(PreprocessError(format!(
            "output holds {} values, expected 3 x {input_height} x {input_width}",
            out.len()
        )));
    }
    let all_finite = normalization
        .mean
        .iter()
        .chain(&normalization.std)
        .all(|value| value.is_finite());
    if !all_finite || normalization.std.contains(&0.0) {
        return Err(PreprocessError(format!(
            "normalisation {normalization:?} has a non-finite value or a zero std"
        )));
    }
    Ok(())
}

/// What the cached filters depend on (the placement's offset and the input size only move
/// where rows are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct GeometryKey {
    frame_width: usize,
    frame_height: usize,
    placement_width: usize,
    placement_height: usize,
    chroma_subsampled: bool,
}

/// Linear interpolation between two samples: `first + weight * (second - first)`.
///
/// A weight of exactly 0 returns `first` unchanged. Used to interpolate chroma rows.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    first: usize,
    second: usize,
    weight: f32,
}

impl Tap {
    /// The tap for a position in sample units, clamped to the `len` samples: beyond the
    /// borders the edge sample is repeated.
    fn at(position: f64, len: usize) -> Self {
        let last = len - 1;
        let position = position.clamp(0.0, last as f64);
        // Truncation is the floor here: the position is not negative.
        let first = position as usize;
        Self {
            first,
            second: (first + 1).min(last),
            weight: (position - first as f64) as f32,
        }
    }

    fn blend(self, first: f32, second: f32) -> f32 {
        lerp(first, second, self.weight)
    }
}

fn lerp(first: f32, second: f32, weight: f32) -> f32 {
    first + weight * (second - first)
}

/// Bits after the binary point of the fixed-point filter weights (Pillow's `PRECISION_BITS`
/// for 8-bit images): a weight of 1 is `1 << 22`.
const PRECISION_BITS: u32 = 22;

/// What a weighted sum starts from, so that the final shift rounds to nearest.
const ROUNDING: u32 = 1 << (PRECISION_BITS - 1);

/// A weighted sum (started at [`ROUNDING`]) back to an 8-bit level, clipped.
#[inline(always)]
fn level(sum: u32) -> u8 {
    (sum >> PRECISION_BITS).min(255) as u8
}

/// The triangle (bilinear) kernel.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// The source samples one output sample is filtered from: `len` samples from `start`, with
/// the weights at `offset` in [`Filter::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: usize,
    len: usize,
    offset: usize,
}

/// Pillow's bilinear filter resizing `source_len` samples to `target_len` along one axis.
#[derive(Debug, Default)]
struct Filter {
    /// One per output sample.
    windows: Vec<Window>,
    /// Fixed-point weights (never negative: the triangle is not), each window's summing to
    /// about `1 << PRECISION_BITS`.
    weights: Vec<u32>,
    /// The most samples any window spans.
    longest: usize,
    /// The f64 weights of one window while they are computed.
    scratch: Vec<f64>,
}

impl Filter {
    /// The weights of Pillow's `precompute_coeffs` for its bilinear filter, in the fixed
    /// point of `normalize_coeffs_8bpc`: output sample `i` is centred on source position
    /// `(i + 0.5) * scale` (`scale = source_len / target_len`), the triangle is widened by
    /// `max(scale, 1)`, the window bounds are rounded as C's `(int)` does, the weights are
    /// divided by their sum, then scaled by `1 << 22` and rounded. Weights that round to 0
    /// at either end of a window are left out, which changes no sum.
    fn rebuild(&mut self, source_len: usize, target_len: usize) {
        self.windows.clear();
        self.weights.clear();
        self.longest = 0;
        let scale = source_len as f64 / target_len as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale;
        let inverse = 1.0 / filter_scale;
        let one = f64::from(1 << PRECISION_BITS);
        for i in 0..target_len {
            let centre = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero like C's `(int)` (and saturates).
            let start = ((centre - support + 0.5) as i64).max(0) as usize;
            let end = ((centre + support + 0.5) as i64).min(source_len as i64) as usize;
            self.scratch.clear();
            self.scratch.extend(
                (start..end.max(start)).map(|x| triangle((x as f64 - centre + 0.5) * inverse)),
            );
            let total: f64 = self.scratch.iter().sum();
            let fixed = |weight: f64| {
                let weight = if total != 0.0 { weight / total } else { weight };
                (0.5 + weight * one) as u32
            };
            let first = self.scratch.iter().position(|w| fixed(*w) != 0);
            let last = self.scratch.iter().rposition(|w| fixed(*w) != 0);
            let (skip, len) = match (first, last) {
                (Some(first), Some(last)) => (first, last + 1 - first),
                _ => (0, 0),
            };
            let offset = self.weights.len();
            self.weights
                .extend(self.scratch[skip..skip + len].iter().map(|w| fixed(*w)));
            self.windows.push(Window {
                start: start + skip,
                len,
                offset,
            });
            self.longest = self.longest.max(len);
        }
    }

    /// Widens every window to [`longest`](Self::longest) samples with weights of 0, moving
    /// the ones at the end of the source back so that they stay inside it. The sums are the
    /// same, and a loop over the windows then runs the same number of times for each one,
    /// which the processor predicts.
    fn pad_windows(&mut self, source_len: usize) {
        let longest = self.longest;
        let mut padded = Vec::with_capacity(self.windows.len() * longest);
        for window in &mut self.windows {
            let start = window.start.min(source_len - longest);
            let lead = window.start - start;
            padded.resize(padded.len() + lead, 0);
            padded.extend_from_slice(&self.weights[window.offset..window.offset + window.len]);
            padded.resize(padded.len() + longest - lead - window.len, 0);
            *window = Window {
                start,
                len: longest,
                offset: padded.len() - longest,
            };
        }
        self.weights = padded;
    }

    fn weights(&self, window: &Window) -> &[u32] {
        &self.weights[window.offset..window.offset + window.len]
    }
}

/// The filters of one geometry.
#[derive(Debug, Default)]
struct Geometry {
    key: GeometryKey,
    /// Frame width to placement width.
    columns: Filter,
    /// Frame height to placement height.
    rows: Filter,
    /// The source rows the vertical windows need lie in `first_row..`; resampling them in
    /// order, the rows of each window are among the last `ring_rows` resampled.
    first_row: usize,
    ring_rows: usize,
    /// For 4:2:0 frames, for each source row, the two chroma rows at its position.
    chroma_rows: Vec<Tap>,
}

impl Geometry {
    fn rebuild(&mut self, key: GeometryKey) {
        self.key = key;
        self.columns.rebuild(key.frame_width, key.placement_width);
        self.columns.pad_windows(key.frame_width);
        self.rows.rebuild(key.frame_height, key.placement_height);
        let windows = &self.rows.windows;
        self.first_row = windows.iter().map(|window| window.start).min().unwrap_or(0);
        self.ring_rows = 1;
        let mut resampled_to = self.first_row;
        for window in windows {
            resampled_to = resampled_to.max(window.start + window.len);
            self.ring_rows = self.ring_rows.max(resampled_to - window.start);
        }
        self.chroma_rows.clear();
        if key.chroma_subsampled {
            // Chroma sited as in MPEG-2 and H.264/H.265 (see `Yuv420`): luma row y is at
            // chroma row (y + 0.5) / 2 - 0.5.
            let chroma_height = key.frame_height.div_ceil(2);
            self.chroma_rows.extend(
                (0..key.frame_height).map(|y| Tap::at((y as f64 + 0.5) / 2.0 - 0.5, chroma_height)),
            );
        }
    }
}

/// The rows between the two passes, kept by the [`Preprocessor`] across frames.
#[derive(Debug, Default)]
struct Buffers {
    /// Source rows resampled to the placement width, planar R, G, B in 8 bits: a ring of
    /// [`Geometry::ring_rows`] rows, source row `y` in slot `y % slots`.
    ring: Vec<u8>,
    slots: usize,
    /// The vertical pass's weighted sums of one output row, planar R, G, B.
    sums: Vec<u32>,
}

impl Buffers {
    fn start_frame(&mut self, geometry: &Geometry) {
        let row_len = 3 * geometry.key.placement_width;
        self.slots = geometry.ring_rows;
        self.ring.resize(self.slots * row_len, 0);
        self.sums.resize(row_len, 0);
    }
}

/// The normalised value of each 8-bit level of each channel.
#[derive(Debug)]
struct Levels {
    normalization: Normalization,
    values: [[f32; 256]; 3],
}

impl Levels {
    fn new(normalization: Normalization) -> Self {
        let mut values = [[0.0; 256]; 3];
        for (channel, values) in values.iter_mut().enumerate() {
            for (level, value) in values.iter_mut().enumerate() {
                *value = normalization.apply(channel, level as f32);
            }
        }
        Self {
            normalization,
            values,
        }
    }
}

/// The RGB pixels of one source row.
trait SourceRow {
    /// `ROUNDING` plus the weighted sums of red, green and blue over `weights.len()` pixels
    /// from column `start`.
    fn filter(&self, start: usize, weights: &[u32]) -> [u32; 3];

    /// [`filter`](Self::filter) over exactly `K` pixels: loops the compiler unrolls.
    #[inline(always)]
    fn filter_fixed<const K: usize>(&self, start: usize, weights: &[u32; K]) -> [u32; 3] {
        self.filter(start, weights)
    }
}

/// `ROUNDING` plus the weighted sums of red, green and blue, red and blue sharing one
/// 64-bit multiplication: each weight is under `2^23` and each window's sum about `2^22`, so
/// a channel's sum stays under `2^31` and never carries into the other's 32 bits.
#[derive(Debug, Clone, Copy)]
struct WeightedSums {
    red_blue: u64,
    green: u32,
}

impl Default for WeightedSums {
    #[inline(always)]
    fn default() -> Self {
        Self {
            red_blue: u64::from(ROUNDING) << 32 | u64::from(ROUNDING),
            green: ROUNDING,
        }
    }
}

impl WeightedSums {
    #[inline(always)]
    fn add(&mut self, [red, green, blue]: [u8; 3], weight: u32) {
        self.red_blue += (u64::from(blue) << 32 | u64::from(red)) * u64::from(weight);
        self.green += u32::from(green) * weight;
    }

    #[inline(always)]
    fn get(self) -> [u32; 3] {
        [
            self.red_blue as u32,
            self.green,
            (self.red_blue >> 32) as u32,
        ]
    }
}

/// A frame's memory layout. The resampling loops are generic over it, so each layout gets
/// its own compiled loop with no branch on the format per pixel.
trait Layout {
    type Row<'a>: SourceRow
    where
        Self: 'a;

    /// Source row `y` (mutable so that a layout can prepare the row in its own memory).
    fn row(&mut self, y: usize) -> Self::Row<'_>;
}

/// One plane of a validated frame.
#[derive(Debug, Clone, Copy)]
struct Plane<'a> {
    data: &'a [u8],
    stride: usize,
}

impl<'a> Plane<'a> {
    fn new(frame: &FrameRef<'a>, index: usize) -> Self {
        Self {
            data: frame.planes[index],
            stride: frame.strides[index],
        }
    }

    /// Row `y` and whatever follows it in the plane.
    fn row(&self, y: usize) -> &'a [u8] {
        &self.data[y * self.stride..]
    }
}

/// Packed 8-bit RGB: `BYTES` bytes per pixel with red, green and blue at byte offsets `R`,
/// `G` and `B` (alpha or padding is never read).
struct PackedRgb<'a, const BYTES: usize, const R: usize, const G: usize, const B: usize> {
    plane: Plane<'a>,
    width: usize,
}

impl<'a, const BYTES: usize, const R: usize, const G: usize, const B: usize>
    PackedRgb<'a, BYTES, R, G, B>
{
    fn new(frame: &FrameRef<'a>) -> Self {
        Self {
            plane: Plane::new(frame, 0),
            width: frame.width,
        }
    }
}

impl<const BYTES: usize, const R: usize, const G: usize, const B: usize> Layout
    for PackedRgb<'_, BYTES, R, G, B>
{
    type Row<'a>
        = PackedRow<'a, BYTES, R, G, B>
    where
        Self: 'a;

    #[inline(always)]
    fn row(&mut self, y: usize) -> Self::Row<'_> {
        PackedRow(&self.plane.row(y).as_chunks::<BYTES>().0[..self.width])
    }
}

struct PackedRow<'a, const BYTES: usize, const R: usize, const G: usize, const B: usize>(
    &'a [[u8; BYTES]],
);

impl<const BYTES: usize, const R: usize, const G: usize, const B: usize> SourceRow
    for PackedRow<'_, BYTES, R, G, B>
{
    #[inline(always)]
    fn filter(&self, start: usize, weights: &[u32]) -> [u32; 3] {
        let pixels = &self.0[start..start + weights.len()];
        let mut sums = WeightedSums::default();
        for (pixel, &weight) in pixels.iter().zip(weights) {
            sums.add([pixel[R], pixel[G], pixel[B]], weight);
        }
        sums.get()
    }

    #[inline(always)]
    fn filter_fixed<const K: usize>(&self, start: usize, weights: &[u32; K]) -> [u32; 3] {
        let pixels: &[[u8; BYTES]; K] = self.0[start..start + K].try_into().unwrap();
        let mut sums = [ROUNDING; 3];
        for k in 0..K {
            sums[0] += u32::from(pixels[k][R]) * weights[k];
            sums[1] += u32::from(pixels[k][G]) * weights[k];
            sums[2] += u32::from(pixels[k][B]) * weights[k];
        }
        sums
    }
}

/// 8-bit 4:2:0 YUV: a full-size Y plane and half-size U and V sample grids.
///
/// Chroma is sited as in MPEG-2 and H.264/H.265 (GStreamer's `mpeg2`, chroma location
/// type 0, what decoders produce): each chroma sample is co-sited with an even luma column
/// and lies midway between two luma rows. As in `videoconvert`'s general path, chroma is
/// interpolated bilinearly at every luma position and the matrix applied per pixel:
/// vertically by the row's [`Geometry`] tap, horizontally by the fixed pattern that siting
/// gives (an even column takes its chroma sample, an odd one the mean of its two
/// neighbours). Each channel is then rounded to 8 bits (to nearest, ties to even), which gives the 8-bit RGB
/// picture the resampling works on, as a frame decoded to RGB would be.
///
/// A row is converted whole into planar RGB: loops over contiguous memory that the compiler
/// vectorises, which is cheaper than converting only the columns the filter needs one by one.
struct Yuv420<'a, C> {
    luma: Plane<'a>,
    chroma_planes: C,
    chroma_rows: &'a [Tap],
    matrix: YuvToRgb,
    row: &'a mut Yuv420Row,
}

impl<'a, C: ChromaPlanes> Yuv420<'a, C> {
    fn new(
        frame: &FrameRef<'a>,
        chroma_planes: C,
        geometry: &'a Geometry,
        row: &'a mut Yuv420Row,
    ) -> Self {
        row.resize(frame.width);
        Self {
            luma: Plane::new(frame, 0),
            chroma_planes,
            chroma_rows: &geometry.chroma_rows,
            matrix: YuvToRgb::new(frame.colorimetry),
            row,
        }
    }
}

impl<C: ChromaPlanes> Layout for Yuv420<'_, C> {
    type Row<'a>
        = PlanarRow<'a>
    where
        Self: 'a;

    #[inline(always)]
    fn row(&mut self, y: usize) -> Self::Row<'_> {
        let row = &mut *self.row;
        let chroma_width = row.chroma.len() - 1;
        self.chroma_planes
            .interpolate_rows(self.chroma_rows[y], &mut row.chroma[..chroma_width]);
        // The right neighbour of the last chroma column is itself (edge repeat).
        row.chroma[chroma_width] = row.chroma[chroma_width - 1];
        row.convert(&self.matrix, &self.luma.row(y)[..row.red.len()]);
        PlanarRow {
            red: &row.red,
            green: &row.green,
            blue: &row.blue,
        }
    }
}

/// A value in 0..=255 rounded to the nearest integer, ties to even, as an 8-bit level.
///
/// Adding `2^23` leaves no bits for a fraction in an f32, so the addition rounds (to nearest,
/// ties to even) and the integer lands in the low bits of the mantissa; unlike a float to
/// integer cast, this vectorises.
#[inline(always)]
fn round_to_level(value: f32) -> u8 {
    const INTEGER_ULP: f32 = 8_388_608.0;
    (value + INTEGER_ULP).to_bits() as u8
}

/// One 4:2:0 row on its way to RGB; kept by the [`Preprocessor`] across frames.
#[derive(Debug, Default)]
struct Yuv420Row {
    /// U and V of each chroma column at the row's vertical position, plus a copy of the
    /// last one so that every odd luma column has a right neighbour.
    chroma: Vec<[f32; 2]>,
    /// The converted row, planar R, G, B in 0..=255 before rounding.
    converted: [Vec<f32>; 3],
    red: Vec<u8>,
    green: Vec<u8>,
    blue: Vec<u8>,
}

impl Yuv420Row {
    fn resize(&mut self, width: usize) {
        self.chroma.resize(width.div_ceil(2) + 1, [0.0; 2]);
        for channel in &mut self.converted {
            channel.resize(width, 0.0);
        }
        for channel in [&mut self.red, &mut self.green, &mut self.blue] {
            channel.resize(width, 0);
        }
    }

    /// Converts `luma` (the row's Y samples) with the row's chroma to 8-bit RGB. Two loops
    /// over contiguous memory, each of which the compiler vectorises: the matrix in f32, then
    /// the rounding to 8 bits ([`round_to_level`]).
    #[inline(always)]
    fn convert(&mut self, matrix: &YuvToRgb, luma: &[u8]) {
        let (pairs, odd_end) = luma.as_chunks::<2>();
        let n = pairs.len();
        let chroma = &self.chroma[..=n];
        let [red, green, blue] = &mut self.converted;
        let (red_pairs, green_pairs, blue_pairs) = (
            red.as_chunks_mut::<2>().0,
            green.as_chunks_mut::<2>().0,
            blue.as_chunks_mut::<2>().0,
        );
        for k in 0..n {
            let [even_y, odd_y] = pairs[k].map(f32::from);
            let ([u, v], [next_u, next_v]) = (chroma[k], chroma[k + 1]);
            let even = matrix.rgb(even_y, u, v);
            let odd = matrix.rgb(odd_y, lerp(u, next_u, 0.5), lerp(v, next_v, 0.5));
            red_pairs[k] = [even[0], odd[0]];
            green_pairs[k] = [even[1], odd[1]];
            blue_pairs[k] = [even[2], odd[2]];
        }
        if let [last_y] = odd_end {
            let [u, v] = chroma[n];
            let x = 2 * n;
            [red[x], green[x], blue[x]] = matrix.rgb((*last_y).into(), u, v);
        }
        for (levels, values) in [&mut self.red, &mut self.green, &mut self.blue]
            .into_iter()
            .zip(&self.converted)
        {
            for (level, &value) in levels.iter_mut().zip(values) {
                *level = round_to_level(value);
            }
        }
    }
}

/// Where the U and V samples of a 4:2:0 frame are stored.
trait ChromaPlanes {
    /// Writes U and V of every chroma column, interpolated between the chroma rows of `tap`.
    fn interpolate_rows(&self, tap: Tap, chroma: &mut [[f32; 2]]);
}

/// I420: a U plane and a V plane.
struct SeparateUv<'a> {
    u: Plane<'a>,
    v: Plane<'a>,
}

impl ChromaPlanes for SeparateUv<'_> {
    #[inline(always)]
    fn interpolate_rows(&self, tap: Tap, chroma: &mut [[f32; 2]]) {
        let (u_upper, u_lower) = (self.u.row(tap.first), self.u.row(tap.second));
        let (v_upper, v_lower) = (self.v.row(tap.first), self.v.row(tap.second));
        let n = chroma.len();
        let (u_upper, u_lower, v_upper, v_lower) =
            (&u_upper[..n], &u_lower[..n], &v_upper[..n], &v_lower[..n]);
        for (k, uv) in chroma.iter_mut().enumerate() {
            *uv = [
                tap.blend(u_upper[k].into(), u_lower[k].into()),
                tap.blend(v_upper[k].into(), v_lower[k].into()),
            ];
        }
    }
}

/// NV12: one plane of interleaved U and V.
struct InterleavedUv<'a>(Plane<'a>);

impl ChromaPlanes for InterleavedUv<'_> {
    #[inline(always)]
    fn interpolate_rows(&self, tap: Tap, chroma: &mut [[f32; 2]]) {
        // U and V alternate in memory as in `chroma`: one contiguous blend.
        let chroma = chroma.as_flattened_mut();
        let upper = &self.0.row(tap.first)[..chroma.len()];
        let lower = &self.0.row(tap.second)[..chroma.len()];
        for ((value, upper), lower) in chroma.iter_mut().zip(upper).zip(lower) {
            *value = tap.blend((*upper).into(), (*lower).into());
        }
    }
}

/// A source row already in 8-bit RGB, planar.
struct PlanarRow<'a> {
    red: &'a [u8],
    green: &'a [u8],
    blue: &'a [u8],
}

impl SourceRow for PlanarRow<'_> {
    #[inline(always)]
    fn filter(&self, start: usize, weights: &[u32]) -> [u32; 3] {
        let end = start + weights.len();
        let (red, green, blue) = (
            &self.red[start..end],
            &self.green[start..end],
            &self.blue[start..end],
        );
        let mut sums = WeightedSums::default();
        for (k, &weight) in weights.iter().enumerate() {
            sums.add([red[k], green[k], blue[k]], weight);
        }
        sums.get()
    }
}

/// Y'CbCr to R'G'B' for 8-bit samples, with the range expansion folded in.
#[derive(Debug, Clone, Copy)]
struct YuvToRgb {
    luma_scale: f32,
    luma_offset: f32,
    red_from_v: f32,
    green_from_u: f32,
    green_from_v: f32,
    blue_from_u: f32,
}

impl YuvToRgb {
    fn new(colorimetry: Colorimetry) -> Self {
        let (kr, kb) = match colorimetry.matrix {
            YuvMatrix::Bt601 => (0.299, 0.114),
            YuvMatrix::Bt709 => (0.2126, 0.0722),
            YuvMatrix::Bt2020 => (0.2627, 0.0593),
        };
        let kg = 1.0 - kr - kb;
        // Limited range maps Y' 16..=235 and Cb, Cr 16..=240 (centred on 128) to the full
        // 0..=255 scale.
        let (luma_scale, chroma_scale) = if colorimetry.full_range {
            (1.0, 1.0)
        } else {
            (255.0 / 219.0, 255.0 / 224.0)
        };
        let luma_black = if colorimetry.full_range { 0.0 } else { 16.0 };
        Self {
            luma_scale: luma_scale as f32,
            luma_offset: (-luma_black * luma_scale) as f32,
            red_from_v: (2.0 * (1.0 - kr) * chroma_scale) as f32,
            green_from_u: (-2.0 * kb * (1.0 - kb) / kg * chroma_scale) as f32,
            green_from_v: (-2.0 * kr * (1.0 - kr) / kg * chroma_scale) as f32,
            blue_from_u: (2.0 * (1.0 - kb) * chroma_scale) as f32,
        }
    }

    /// R, G, B in 0..=255 (clamped: not every Y'CbCr triple is a colour) from 8-bit samples.
    #[inline(always)]
    fn rgb(&self, y: f32, u: f32, v: f32) -> [f32; 3] {
        let luma = y * self.luma_scale + self.luma_offset;
        let (u, v) = (u - 128.0, v - 128.0);
        let clamp = |value: f32| value.clamp(0.0, 255.0);
        [
            clamp(luma + self.red_from_v * v),
            clamp(luma + self.green_from_u * u + self.green_from_v * v),
            clamp(luma + self.blue_from_u * u),
        ]
    }
}

/// The output tensor, split into its channel planes.
struct Output<'a> {
    channels: [&'a mut [f32]; 3],
    width: usize,
    placement: Placement,
    levels: &'a Levels,
}

impl<'a> Output<'a> {
    /// `out` must hold `3 * width * height` values.
    fn new(
        out: &'a mut [f32],
        width: usize,
        height: usize,
        placement: Placement,
        levels: &'a Levels,
    ) -> Self {
        let (red, rest) = out.split_at_mut(width * height);
        let (green, blue) = rest.split_at_mut(width * height);
        Self {
            channels: [red, green, blue],
            width,
            placement,
            levels,
        }
    }

    /// Sets everything outside the placement to the value of black.
    fn pad(&mut self) {
        let Placement {
            x,
            y,
            width,
            height,
        } = self.placement;
        let (left, top) = (x as usize, y as usize);
        let (right, bottom) = (left + width as usize, top + height as usize);
        for (channel, plane) in self.channels.iter_mut().enumerate() {
            let black = self.levels.values[channel][0];
            plane[..top * self.width].fill(black);
            plane[bottom * self.width..].fill(black);
            for row in plane[top * self.width..bottom * self.width].chunks_exact_mut(self.width) {
                row[..left].fill(black);
                row[right..].fill(black);
            }
        }
    }

    /// Writes the placement rectangle, with AVX2 where the CPU has it: integer arithmetic
    /// and the same float operations, so the tensor is the same either way.
    fn fill<L: Layout>(&mut self, layout: &mut L, geometry: &Geometry, buffers: &mut Buffers) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { self.fill_avx2(layout, geometry, buffers) };
        }
        self.fill_portable(layout, geometry, buffers)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn fill_avx2<L: Layout>(&mut self, layout: &mut L, geometry: &Geometry, buffers: &mut Buffers) {
        self.fill_portable(layout, geometry, buffers)
    }

    /// For each output row, the source rows of its vertical window not resampled yet are
    /// resampled horizontally into the ring (each source row once, in order), then the
    /// window's rows are summed with their weights, rounded to 8 bits and normalised into
    /// the three planes.
    #[inline(always)]
    fn fill_portable<L: Layout>(
        &mut self,
        layout: &mut L,
        geometry: &Geometry,
        buffers: &mut Buffers,
    ) {
        let placed_width = geometry.key.placement_width;
        let row_len = 3 * placed_width;
        let Buffers { ring, slots, sums } = buffers;
        let slots = *slots;
        let left = self.placement.x as usize;
        // The first source row not resampled yet.
        let mut next = geometry.first_row;
        for (output_y, window) in (self.placement.y as usize..).zip(&geometry.rows.windows) {
            let end = window.start + window.len;
            while next < end {
                let slot = &mut ring[next % slots * row_len..][..row_len];
                resample_row(&layout.row(next), &geometry.columns, slot);
                next += 1;
            }
            sums.fill(ROUNDING);
            for (y, &weight) in (window.start..).zip(geometry.rows.weights(window)) {
                let row = &ring[y % slots * row_len..][..row_len];
                for (sum, &value) in sums.iter_mut().zip(row) {
                    *sum += u32::from(value) * weight;
                }
            }
            let start = output_y * self.width + left;
            for ((plane, sums), values) in self
                .channels
                .iter_mut()
                .zip(sums.chunks_exact(placed_width))
                .zip(&self.levels.values)
            {
                for (value, &sum) in plane[start..start + placed_width].iter_mut().zip(sums) {
                    *value = values[usize::from(level(sum))];
                }
            }
        }
    }
}

/// Resamples one source row to the placement width, into planar 8-bit R, G, B.
#[inline(always)]
fn resample_row(row: &impl SourceRow, columns: &Filter, resampled: &mut [u8]) {
    match columns.longest {
        1 => resample_row_fixed::<1>(row, columns, resampled),
        2 => resample_row_fixed::<2>(row, columns, resampled),
        3 => resample_row_fixed::<3>(row, columns, resampled),
        4 => resample_row_fixed::<4>(row, columns, resampled),
        5 => resample_row_fixed::<5>(row, columns, resampled),
        6 => resample_row_fixed::<6>(row, columns, resampled),
        7 => resample_row_fixed::<7>(row, columns, resampled),
        8 => resample_row_fixed::<8>(row, columns, resampled),
        _ => {
            let width = columns.windows.len();
            let (red, rest) = resampled.split_at_mut(width);
            let (green, blue) = rest.split_at_mut(width);
            for (((window, red), green), blue) in
                columns.windows.iter().zip(red).zip(green).zip(blue)
            {
                let [r, g, b] = row.filter(window.start, columns.weights(window));
                (*red, *green, *blue) = (level(r), level(g), level(b));
            }
        }
    }
}

#[inline(always)]
fn resample_row_fixed<const K: usize>(
    row: &impl SourceRow,
    columns: &Filter,
    resampled: &mut [u8],
) {
    let width = columns.windows.len();
    let (red, rest) = resampled.split_at_mut(width);
    let (green, blue) = rest.split_at_mut(width);
    let weights = columns.weights.as_chunks::<K>().0;
    for ((((window, weights), red), green), blue) in columns
        .windows
        .iter()
        .zip(weights)
        .zip(red)
        .zip(green)
        .zip(blue)
    {
        let [r, g, b] = row.filter_fixed::<K>(window.start, weights);
        (*red, *green, *blue) = (level(r), level(g), level(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BT601_LIMITED: Colorimetry = Colorimetry {
        matrix: YuvMatrix::Bt601,
        full_range: false,
    };

    const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Where red, green and blue sit in a packed pixel, and its size; written out from the
    /// GStreamer format names rather than taken from the code under test.
    fn packed_layout(format: PixelFormat) -> (usize, [usize; 3]) {
        match format {
            PixelFormat::Rgb => (3, [0, 1, 2]),
            PixelFormat::Bgr => (3, [2, 1, 0]),
            PixelFormat::Rgba | PixelFormat::Rgbx => (4, [0, 1, 2]),
            PixelFormat::Bgra | PixelFormat::Bgrx => (4, [2, 1, 0]),
            PixelFormat::Argb | PixelFormat::Xrgb => (4, [1, 2, 3]),
            PixelFormat::Abgr | PixelFormat::Xbgr => (4, [3, 2, 1]),
            PixelFormat::I420 | PixelFormat::Nv12 => unreachable!("not packed"),
        }
    }

    /// A deterministic picture with detail at every scale (a hash of the coordinates).
    fn picture(width: usize, height: usize) -> Vec<[u8; 3]> {
        (0..width * height)
            .map(|i| {
                let hash = (i as u32 ^ 0x9e37)
                    .wrapping_mul(0x85eb_ca6b)
                    .rotate_left(13);
                [hash as u8, (hash >> 8) as u8, (hash >> 16) as u8]
            })
            .collect()
    }

    /// `picture` in a packed format with `stride` bytes per row; every byte that is not a
    /// colour (alpha, padding, row padding) is `filler`.
    fn pack(
        picture: &[[u8; 3]],
        width: usize,
        format: PixelFormat,
        stride: usize,
        filler: u8,
    ) -> Vec<u8> {
        let (bytes, offsets) = packed_layout(format);
        let mut data = vec![filler; stride * (picture.len() / width)];
        for (row, pixels) in data.chunks_exact_mut(stride).zip(picture.chunks(width)) {
            for (pixel, rgb) in row.chunks_exact_mut(bytes).zip(pixels) {
                for (offset, value) in offsets.iter().zip(rgb) {
                    pixel[*offset] = *value;
                }
            }
        }
        data
    }

    fn packed_frame(format: PixelFormat, width: usize, data: &[u8], stride: usize) -> FrameRef<'_> {
        FrameRef {
            format,
            width,
            height: data.len() / stride,
            planes: [data, &[], &[]],
            strides: [stride, 0, 0],
            colorimetry: BT601_LIMITED,
        }
    }

    fn preprocess(
        preprocessor: &mut Preprocessor,
        frame: &FrameRef,
        input: (usize, usize),
        mode: ResizeMode,
        normalization: &Normalization,
    ) -> Result<Vec<f32>, PreprocessError> {
        let placement = Placement::new(
            frame.width as u32,
            frame.height as u32,
            input.0 as u32,
            input.1 as u32,
            mode,
        );
        let mut out = vec![f32::NAN; 3 * input.0 * input.1];
        preprocessor.run(frame, input.0, input.1, placement, normalization, &mut out)?;
        Ok(out)
    }

    fn placement(x: u32, y: u32, width: u32, height: u32) -> Placement {
        Placement {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn letterbox_keeps_the_aspect_ratio_and_centres() {
        use ResizeMode::{Letterbox, Stretch};
        assert_eq!(
            Placement::new(1280, 720, 256, 256, Letterbox),
            placement(0, 56, 256, 144)
        );
        assert_eq!(
            Placement::new(720, 1280, 256, 256, Letterbox),
            placement(56, 0, 144, 256)
        );
        assert_eq!(
            Placement::new(1280, 720, 256, 256, Stretch),
            placement(0, 0, 256, 256)
        );
        // 321 * 256/321 = 256, 241 * 256/321 = 192.2 -> 192, centred at (256 - 192) / 2.
        assert_eq!(
            Placement::new(321, 241, 256, 256, Letterbox),
            placement(0, 32, 256, 192)
        );
        // An odd margin goes to the bottom / right: (255 - 192) / 2 = 31.
        assert_eq!(
            Placement::new(321, 241, 256, 255, Letterbox),
            placement(0, 31, 256, 192)
        );
        // Enlarging: 64 * 255/64 in both directions.
        assert_eq!(
            Placement::new(64, 64, 255, 256, Letterbox),
            placement(0, 0, 255, 255)
        );
        // A sliver keeps at least one row.
        assert_eq!(
            Placement::new(10000, 1, 256, 256, Letterbox),
            placement(0, 127, 256, 1)
        );
        assert_eq!(
            Placement::new(64, 48, 64, 48, Letterbox),
            placement(0, 0, 64, 48)
        );
        // A half rounds up (the training loader rounds the same way): 5 * 0.5 = 2.5 -> 3.
        assert_eq!(
            Placement::new(4, 5, 2, 10, Letterbox),
            placement(0, 3, 2, 3)
        );
    }

    #[test]
    fn resizing_matches_pillow_bilinear() {
        // Reds of a 5x3 frame and of a 2x2 frame, and what Pillow 13's
        // `Image.fromarray(rgb).resize((w, h), Image.BILINEAR)` makes of them.
        let five_by_three: [[u8; 5]; 3] = [
            [0, 100, 200, 40, 255],
            [30, 250, 10, 90, 120],
            [255, 0, 60, 180, 5],
        ];
        let two_by_two: [[u8; 2]; 2] = [[0, 100], [200, 40]];
        // (reds of the frame's rows, output size, reds of the output's rows)
        type Case<'a> = (&'a [&'a [u8]], (usize, usize), &'a [&'a [u8]]);
        let cases: [Case; 5] = [
            // Shrinking both ways: each output pixel averages its footprint.
            (
                &[&five_by_three[0], &five_by_three[1], &five_by_three[2]],
                (3, 2),
                &[&[73, 119, 142], &[138, 76, 90]],
            ),
            // Enlarging both ways: plain bilinear interpolation, edges repeated.
            (
                &[&five_by_three[0], &five_by_three[1], &five_by_three[2]],
                (8, 5),
                &[
                    &[0, 44, 106, 169, 150, 50, 161, 255],
                    &[12, 77, 158, 135, 104, 64, 139, 201],
                    &[30, 126, 235, 85, 35, 85, 107, 120],
                    &[165, 136, 96, 59, 73, 138, 92, 51],
                    &[255, 143, 4, 41, 98, 173, 82, 5],
                ],
            ),
            // Shrinking across, enlarging down: the horizontal pass runs first.
            (
                &[&five_by_three[0], &five_by_three[1], &five_by_three[2]],
                (2, 7),
                &[
                    &[88, 147],
                    &[92, 139],
                    &[105, 114],
                    &[118, 89],
                    &[112, 89],
                    &[105, 89],
                    &[103, 89],
                ],
            ),
            (
                &[&two_by_two[0], &two_by_two[1]],
                (4, 4),
                &[
                    &[0, 25, 75, 100],
                    &[50, 59, 76, 85],
                    &[150, 126, 79, 55],
                    &[200, 160, 80, 40],
                ],
            ),
            // The issue's row: 255, 0, 0, 0 repeated, 16 to 4 (two-tap sampling gave zeros).
            (
                &[&[255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0]],
                (4, 1),
                &[&[73, 64, 64, 46]],
            ),
        ];
        for (reds, (width, height), expected) in cases {
            let data: Vec<u8> = reds
                .iter()
                .flat_map(|row| row.iter().flat_map(|red| [*red, 0, 255 - *red]))
                .collect();
            let frame = packed_frame(PixelFormat::Rgb, reds[0].len(), &data, 3 * reds[0].len());
            let out = preprocess(
                &mut Preprocessor::default(),
                &frame,
                (width, height),
                ResizeMode::Stretch,
                &Normalization::default(),
            )
            .unwrap();
            let red: Vec<Vec<u8>> = out[..width * height]
                .chunks_exact(width)
                .map(|row| {
                    row.iter()
                        .map(|value| (value * 255.0).round() as u8)
                        .collect()
                })
                .collect();
            assert_eq!(red, expected, "{width}x{height}");
            // Every value is an 8-bit level over 255.
            assert!(
                out.iter()
                    .all(|value| (value * 255.0).round() / 255.0 == *value),
                "{width}x{height}"
            );
        }
    }

    #[test]
    fn filter_weights_follow_pillow() {
        let mut filter = Filter::default();
        // Halving: each window spans the triangle of twice the width, 3/7, 3/7, 1/7 inside
        // the frame (and 1/7, 3/7, 3/7 for the last output pixel).
        filter.rebuild(4, 2);
        let one = f64::from(1 << PRECISION_BITS);
        let fixed = |weight: f64| (0.5 + weight * one) as u32;
        assert_eq!(
            filter.windows,
            [
                Window {
                    start: 0,
                    len: 3,
                    offset: 0
                },
                Window {
                    start: 1,
                    len: 3,
                    offset: 3
                }
            ]
        );
        assert_eq!(
            filter.weights,
            [3.0, 3.0, 1.0, 1.0, 3.0, 3.0].map(|w| fixed(w / 7.0))
        );
        assert_eq!(filter.longest, 3);
        // Same size: one tap of weight 1 per sample (a zero-weight neighbour is left out).
        filter.rebuild(5, 5);
        assert!(filter.windows.iter().enumerate().all(|(i, window)| {
            window.start == i && window.len == 1 && filter.weights(window) == [1 << 22]
        }));
        // Shrinking 1280 to 256: the triangle spans 10 samples, its zero ends left out, and
        // every sample is used.
        filter.rebuild(1280, 256);
        assert_eq!(filter.longest, 9);
        assert_eq!(filter.windows[0].start, 0);
        let last = filter.windows[255];
        assert_eq!(last.start + last.len, 1280);
    }

    #[test]
    fn the_row_ring_matches_a_whole_picture_resize() {
        // The two passes over whole pictures with the unpadded weights, against the element's
        // ring of rows, padded windows and unrolled loops: enlarging, shrinking by up to 13
        // (windows from 1 to 26 samples), mixed, odd and single-pixel sizes.
        let sizes = [1, 2, 3, 5, 8, 13, 21, 40];
        let mut preprocessor = Preprocessor::default();
        for (width, height) in [(40, 21), (13, 40), (3, 5), (1, 8)] {
            let picture = picture(width, height);
            let data = pack(&picture, width, PixelFormat::Bgrx, 4 * width, 0);
            let frame = packed_frame(PixelFormat::Bgrx, width, &data, 4 * width);
            for (&out_width, &out_height) in sizes.iter().zip(sizes.iter().rev()) {
                let (mut columns, mut rows) = (Filter::default(), Filter::default());
                columns.rebuild(width, out_width);
                rows.rebuild(height, out_height);
                let pass = |filter: &Filter, sample: &dyn Fn(usize) -> [u8; 3], i: usize| {
                    let window = &filter.windows[i];
                    let mut sums = [ROUNDING; 3];
                    for (k, &weight) in filter.weights(window).iter().enumerate() {
                        let pixel = sample(window.start + k);
                        for c in 0..3 {
                            sums[c] += u32::from(pixel[c]) * weight;
                        }
                    }
                    sums.map(level)
                };
                let across: Vec<[u8; 3]> = (0..height)
                    .flat_map(|y| (0..out_width).map(move |x| (x, y)))
                    .map(|(x, y)| pass(&columns, &|i| picture[y * width + i], x))
                    .collect();
                let resized: Vec<[u8; 3]> = (0..out_height)
                    .flat_map(|y| (0..out_width).map(move |x| (x, y)))
                    .map(|(x, y)| pass(&rows, &|i| across[i * out_width + x], y))
                    .collect();
                let expected: Vec<f32> = (0..3)
                    .flat_map(|c| resized.iter().map(move |rgb| f32::from(rgb[c]) / 255.0))
                    .collect();
                let out = preprocess(
                    &mut preprocessor,
                    &frame,
                    (out_width, out_height),
                    ResizeMode::Stretch,
                    &Normalization::default(),
                )
                .unwrap();
                assert_eq!(
                    out, expected,
                    "{width}x{height} to {out_width}x{out_height}"
                );
            }
        }
    }

    #[test]
    fn same_size_reproduces_pixel_over_255_exactly() {
        let (width, height) = (19, 7);
        let picture = picture(width, height);
        for format in PixelFormat::packed() {
            let data = pack(&picture, width, format, width * packed_layout(format).0, 0);
            let frame = packed_frame(format, width, &data, width * packed_layout(format).0);
            for mode in [ResizeMode::Letterbox, ResizeMode::Stretch] {
                let out = preprocess(
                    &mut Preprocessor::default(),
                    &frame,
                    (width, height),
                    mode,
                    &Normalization::default(),
                )
                .unwrap();
                let expected: Vec<f32> = (0..3)
                    .flat_map(|c| picture.iter().map(move |rgb| f32::from(rgb[c]) / 255.0))
                    .collect();
                assert_eq!(out, expected, "{format:?} {mode:?}");
            }
        }
    }

    #[test]
    fn channel_orders_and_padded_strides_give_the_same_tensor() {
        let (width, height) = (37, 23);
        let picture = picture(width, height);
        let reference_data = pack(&picture, width, PixelFormat::Rgb, 3 * width, 0);
        let reference_frame = packed_frame(PixelFormat::Rgb, width, &reference_data, 3 * width);
        let mut preprocessor = Preprocessor::default();
        for (input, mode) in [
            ((16, 16), ResizeMode::Letterbox),
            ((50, 30), ResizeMode::Stretch),
            ((64, 64), ResizeMode::Letterbox),
        ] {
            let expected = preprocess(
                &mut Preprocessor::default(),
                &reference_frame,
                input,
                mode,
                &IMAGENET,
            )
            .unwrap();
            for format in PixelFormat::packed() {
                // An odd amount of row padding, and garbage in it and in alpha / x bytes.
                let stride = width * packed_layout(format).0 + 5;
                let data = pack(&picture, width, format, stride, 0xAB);
                let frame = packed_frame(format, width, &data, stride);
                let out = preprocess(&mut preprocessor, &frame, input, mode, &IMAGENET).unwrap();
                assert_eq!(out, expected, "{format:?} to {input:?} {mode:?}");
            }
        }
    }

    #[test]
    fn letterbox_pads_with_black() {
        let white = [255u8; 4 * 2 * 3];
        let frame = packed_frame(PixelFormat::Rgb, 4, &white, 12);
        let out = preprocess(
            &mut Preprocessor::default(),
            &frame,
            (4, 4),
            ResizeMode::Letterbox,
            &IMAGENET,
        )
        .unwrap();
        for (c, plane) in out.chunks_exact(16).enumerate() {
            let black = (0.0 - IMAGENET.mean[c]) / IMAGENET.std[c];
            let white = (1.0 - IMAGENET.mean[c]) / IMAGENET.std[c];
            let rows: Vec<_> = plane.chunks_exact(4).map(|row| row.to_vec()).collect();
            assert_eq!(rows, [[black; 4], [white; 4], [white; 4], [black; 4]]);
        }
    }

    #[test]
    fn geometry_changes_do_not_leak_between_frames() {
        let frames = [
            (PixelFormat::Rgbx, 40, 30, (16, 16), ResizeMode::Letterbox),
            (PixelFormat::Rgbx, 40, 30, (16, 16), ResizeMode::Letterbox),
            (PixelFormat::Bgr, 40, 30, (64, 48), ResizeMode::Stretch),
            (PixelFormat::Bgr, 9, 5, (64, 48), ResizeMode::Letterbox),
            (PixelFormat::Rgbx, 40, 30, (16, 16), ResizeMode::Letterbox),
        ];
        let mut reused = Preprocessor::default();
        for (format, width, height, input, mode) in frames {
            let bytes = packed_layout(format).0;
            let data = pack(&picture(width, height), width, format, width * bytes, 0);
            let frame = packed_frame(format, width, &data, width * bytes);
            let fresh =
                preprocess(&mut Preprocessor::default(), &frame, input, mode, &IMAGENET).unwrap();
            let out = preprocess(&mut reused, &frame, input, mode, &IMAGENET).unwrap();
            assert_eq!(out, fresh, "{format:?} {width}x{height} to {input:?}");
        }
    }

    #[test]
    fn short_planes_and_bad_geometry_are_errors() {
        let (width, height) = (5, 3);
        let data = vec![0u8; 16 * height];
        let run = |frame: &FrameRef| {
            preprocess(
                &mut Preprocessor::default(),
                frame,
                (8, 8),
                ResizeMode::Letterbox,
                &IMAGENET,
            )
        };
        let rgb = |len: usize, stride: usize| FrameRef {
            format: PixelFormat::Rgb,
            width,
            height,
            planes: [&data[..len], &[], &[]],
            strides: [stride, 0, 0],
            colorimetry: BT601_LIMITED,
        };
        // The last row may end right after its pixels.
        assert!(run(&rgb(16 * 2 + 15, 16)).is_ok());
        let err = run(&rgb(16 * 2 + 14, 16)).unwrap_err().to_string();
        assert!(err.contains("plane 0") && err.contains("need 47"), "{err}");
        let err = run(&rgb(48, 14)).unwrap_err().to_string();
        assert!(err.contains("stride of 14 bytes"), "{err}");
        let err = run(&FrameRef {
            width: 0,
            ..rgb(48, 16)
        })
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");

        // 5x3 4:2:0: chroma is 3x2; NV12 needs 6 bytes per UV row.
        let nv12 = |uv_len: usize| FrameRef {
            format: PixelFormat::Nv12,
            width,
            height,
            planes: [&data[..15], &data[..uv_len], &[]],
            strides: [5, 8, 0],
            colorimetry: BT601_LIMITED,
        };
        assert!(run(&nv12(8 + 6)).is_ok());
        let err = run(&nv12(8 + 5)).unwrap_err().to_string();
        assert!(err.contains("plane 1"), "{err}");
        let i420 = FrameRef {
            format: PixelFormat::I420,
            planes: [&data[..15], &data[..6], &[]],
            strides: [5, 3, 3],
            ..nv12(14)
        };
        let err = run(&i420).unwrap_err().to_string();
        assert!(
            err.contains("plane 2") && err.contains("holds 0 bytes"),
            "{err}"
        );

        let frame = rgb(48, 16);
        let mut out = vec![0.0; 3 * 8 * 8];
        let mut preprocessor = Preprocessor::default();
        let mut run_with =
            |placement: Placement, normalization: &Normalization, out: &mut [f32]| {
                preprocessor.run(&frame, 8, 8, placement, normalization, out)
            };
        let whole = placement(0, 0, 8, 8);
        assert!(run_with(whole, &IMAGENET, &mut out).is_ok());
        assert!(run_with(whole, &IMAGENET, &mut out[1..]).is_err());
        assert!(run_with(placement(1, 0, 8, 8), &IMAGENET, &mut out).is_err());
        assert!(run_with(placement(0, 0, 8, 0), &IMAGENET, &mut out).is_err());
        let zero_std = Normalization {
            std: [1.0, 0.0, 1.0],
            ..IMAGENET
        };
        assert!(run_with(whole, &zero_std, &mut out).is_err());
        assert!(
            preprocessor
                .run(&frame, 0, 8, whole, &IMAGENET, &mut out)
                .is_err()
        );
    }

    /// A 4:2:0 frame in both layouts from its Y, U and V sample grids (tightly packed).
    struct Yuv420Samples {
        width: usize,
        height: usize,
        y: Vec<u8>,
        u: Vec<u8>,
        v: Vec<u8>,
    }

    impl Yuv420Samples {
        fn uniform(width: usize, height: usize, [y, u, v]: [u8; 3]) -> Self {
            let chroma = width.div_ceil(2) * height.div_ceil(2);
            Self {
                width,
                height,
                y: vec![y; width * height],
                u: vec![u; chroma],
                v: vec![v; chroma],
            }
        }

        fn interleaved_uv(&self) -> Vec<u8> {
            self.u
                .iter()
                .zip(&self.v)
                .flat_map(|(u, v)| [*u, *v])
                .collect()
        }

        /// Runs both layouts at the frame's own size and checks they agree.
        fn preprocess(&self, colorimetry: Colorimetry) -> Vec<f32> {
            let uv = self.interleaved_uv();
            let chroma_width = self.width.div_ceil(2);
            let i420 = FrameRef {
                format: PixelFormat::I420,
                width: self.width,
                height: self.height,
                planes: [&self.y, &self.u, &self.v],
                strides: [self.width, chroma_width, chroma_width],
                colorimetry,
            };
            let nv12 = FrameRef {
                format: PixelFormat::Nv12,
                planes: [&self.y, &uv, &[]],
                strides: [self.width, 2 * chroma_width, 0],
                ..i420
            };
            let [from_i420, from_nv12] = [i420, nv12].map(|frame| {
                preprocess(
                    &mut Preprocessor::default(),
                    &frame,
                    (self.width, self.height),
                    ResizeMode::Stretch,
                    &Normalization::default(),
                )
                .unwrap()
            });
            assert_eq!(from_i420, from_nv12);
            from_i420
        }
    }

    /// Y'CbCr of an RGB colour, the textbook forward transform in f64.
    fn encode(rgb: [f64; 3], colorimetry: Colorimetry) -> [u8; 3] {
        let (kr, kb) = match colorimetry.matrix {
            YuvMatrix::Bt601 => (0.299, 0.114),
            YuvMatrix::Bt709 => (0.2126, 0.0722),
            YuvMatrix::Bt2020 => (0.2627, 0.0593),
        };
        let [r, g, b] = rgb.map(|value| value / 255.0);
        let y = kr * r + (1.0 - kr - kb) * g + kb * b;
        let (pb, pr) = ((b - y) / (2.0 * (1.0 - kb)), (r - y) / (2.0 * (1.0 - kr)));
        let [y, pb, pr] = if colorimetry.full_range {
            [255.0 * y, 128.0 + 255.0 * pb, 128.0 + 255.0 * pr]
        } else {
            [16.0 + 219.0 * y, 128.0 + 224.0 * pb, 128.0 + 224.0 * pr]
        };
        [y, pb, pr].map(|value| value.round().clamp(0.0, 255.0) as u8)
    }

    #[test]
    fn yuv_matrices_and_ranges_decode_colours() {
        let colours = [
            [0.0, 0.0, 0.0],
            [255.0, 255.0, 255.0],
            [255.0, 0.0, 0.0],
            [0.0, 255.0, 0.0],
            [0.0, 0.0, 255.0],
            [30.0, 140.0, 220.0],
            [200.0, 120.0, 40.0],
        ];
        for matrix in [YuvMatrix::Bt601, YuvMatrix::Bt709, YuvMatrix::Bt2020] {
            for full_range in [false, true] {
                let colorimetry = Colorimetry { matrix, full_range };
                for rgb in colours {
                    // 1x1 and 3x3 exercise single-sample and odd-sized chroma.
                    for side in [1, 3] {
                        let samples = Yuv420Samples::uniform(side, side, encode(rgb, colorimetry));
                        let out = samples.preprocess(colorimetry);
                        for (c, plane) in out.chunks_exact(side * side).enumerate() {
                            for value in plane {
                                // Rounding Y'CbCr to 8 bits moves a channel by up to ~2 levels.
                                let error = (value * 255.0 - rgb[c] as f32).abs();
                                assert!(
                                    error < 2.5,
                                    "{colorimetry:?} {rgb:?} channel {c}: {error}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Limited range: black is Y' 16 and white Y' 235, exactly.
        let black = Yuv420Samples::uniform(2, 2, [16, 128, 128]).preprocess(BT601_LIMITED);
        assert!(black.iter().all(|value| *value == 0.0), "{black:?}");
        let white = Yuv420Samples::uniform(2, 2, [235, 128, 128]).preprocess(BT601_LIMITED);
        assert!(
            white.iter().all(|value| (value - 1.0).abs() < 1e-6),
            "{white:?}"
        );
    }

    #[test]
    fn chroma_is_sited_like_mpeg2() {
        // One V sample raised at chroma (2, 1) of an 8x6 frame: it is co-sited with luma
        // column 4 and centred between luma rows 2 and 3.
        let mut samples = Yuv420Samples::uniform(8, 6, [128, 128, 128]);
        samples.v[4 + 2] = 168;
        let red = samples.preprocess(BT601_LIMITED)[..48].to_vec();
        let matrix = YuvToRgb::new(BT601_LIMITED);
        // Grey 128 is red 130.4 before rounding to 8 bits.
        let base = 128.0 * matrix.luma_scale + matrix.luma_offset;
        let peak = matrix.red_from_v * 40.0;
        let horizontal = [0.0, 0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0];
        let vertical = [0.0, 0.25, 0.75, 0.75, 0.25, 0.0];
        for (y, row) in red.chunks_exact(8).enumerate() {
            for (x, value) in row.iter().enumerate() {
                // The converted pixel, rounded to 8 bits (a same-size resize keeps it).
                let expected = base + peak * horizontal[x] * vertical[y];
                let level = value * 255.0;
                assert!(
                    level == level.round() && (level - expected).abs() <= 0.5 + 1e-3,
                    "({x}, {y}): {level} vs {expected}"
                );
            }
        }
    }
}
