// SPDX-License-Identifier: MIT
//! Writes the model input the element computes for `videotestsrc` frames, with the frames
//! themselves, so that other tools (`tests/python/test_input_equality.py`) can compare it
//! with the training loader's.
//!
//! Usage: `dump_input CASES.json OUT_DIR`. `CASES.json` holds `mean` and `std` (three
//! numbers each) and `cases`, a list of objects with `name`, `source` (the `videotestsrc`
//! properties, such as `pattern=smpte`), `caps` (raw video caps with format, width and
//! height), optionally `converted_caps` (`video/x-raw,format=RGB` or
//! `video/x-raw,format=RGBA64_LE`) and `inputs`, a list of `[width, height, "letterbox" |
//! "stretch"]`.
//!
//! Each frame goes through a real pipeline, `videotestsrc num-buffers=1 SOURCE ! CAPS`, into
//! an appsink as it is, and, with `converted_caps`, through a `tee` into `videoconvert !
//! CONVERTED_CAPS` too. The frame is mapped and preprocessed as the element does (`FrameRef`
//! from the planes `PlaneLayout` locates, the colorimetry read from the caps as the element reads
//! it, `Placement::new`, `Preprocessor::run`). Written to `OUT_DIR`: `NAME.K.f32` (the tensor
//! of input K, little-endian float32 `[3][height][width]`); `NAME.rgb` (the converted frame in
//! 8-bit RGB `[height][width][3]`, 16-bit values rounded to the nearest of `v / 257`, ties to
//! even) with `converted_caps`; `NAME.planes` (the raw planes one after the other, rows
//! without padding) for I420 and NV12; and `manifest.json`, which describes them: for each
//! case its `name`, `width`, `height`, `format`, `matrix` (`bt601`, `bt709` or `bt2020`),
//! `full_range`, `planes` (bytes per row and rows of each) and `inputs` with their
//! `placement` `[x, y, width, height]`.

use std::path::Path;
use std::{env, fs};

use gst::prelude::*;
use gst_video::prelude::*;
use gstinstseg::frame::{PlaneLayout, colorimetry};
use gstinstseg::preprocess::{
    FrameRef, Normalization, PixelFormat, Placement, Preprocessor, ResizeMode, YuvMatrix,
};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = env::args().skip(1);
    let (Some(cases), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: dump_input CASES.json OUT_DIR".into());
    };
    let cases: Value = serde_json::from_slice(&fs::read(&cases)?)?;
    let triple = |key: &str| -> Result<[f32; 3], Error> {
        let values: Vec<f32> = cases[key]
            .as_array()
            .ok_or(format!("missing {key}"))?
            .iter()
            .filter_map(|value| value.as_f64().map(|value| value as f32))
            .collect();
        Ok(values
            .try_into()
            .map_err(|_| format!("{key} needs 3 numbers"))?)
    };
    let normalization = Normalization {
        mean: triple("mean")?,
        std: triple("std")?,
    };
    let out = Path::new(&out);
    fs::create_dir_all(out)?;
    gst::init()?;
    let mut preprocessor = Preprocessor::default();
    let mut manifest = Vec::new();
    for case in cases["cases"].as_array().ok_or("missing cases")? {
        let name = case["name"].as_str().ok_or("a case without a name")?;
        let entry = dump(case, &normalization, &mut preprocessor, out)
            .map_err(|err| format!("{name}: {err}"))?;
        manifest.push(entry);
    }
    fs::write(out.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    Ok(())
}

fn dump(
    case: &Value,
    normalization: &Normalization,
    preprocessor: &mut Preprocessor,
    out: &Path,
) -> Result<Value, Error> {
    let text = |key: &str| case[key].as_str().ok_or(format!("missing {key}"));
    let name = text("name")?;
    let converted_caps = case["converted_caps"].as_str();
    let description = match converted_caps {
        Some(converted_caps) => format!(
            "videotestsrc num-buffers=1 {} ! {} ! tee name=t \
             t. ! queue ! appsink name=raw sync=false \
             t. ! queue ! videoconvert ! {converted_caps} ! appsink name=converted sync=false",
            text("source")?,
            text("caps")?,
        ),
        None => format!(
            "videotestsrc num-buffers=1 {} ! {} ! appsink name=raw sync=false",
            text("source")?,
            text("caps")?,
        ),
    };
    let pipeline = gst::parse::launch(&description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    pipeline.set_state(gst::State::Playing)?;
    let pull = |sink: &str| -> Result<gst::Sample, Error> {
        let sink = pipeline
            .by_name(sink)
            .ok_or("no appsink")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| "not an appsink")?;
        Ok(sink
            .pull_sample()
            .map_err(|_| format!("no frame from {description}"))?)
    };
    let raw = pull("raw");
    let converted = converted_caps.map(|_| pull("converted"));
    pipeline.set_state(gst::State::Null)?;
    let map = |sample: &gst::Sample| -> Result<gst_video::VideoFrame<gst_video::video_frame::Readable>, Error> {
        let info = gst_video::VideoInfo::from_caps(sample.caps().ok_or("no caps")?)?;
        let buffer = sample.buffer_owned().ok_or("no buffer")?;
        Ok(gst_video::VideoFrame::from_buffer_readable(buffer, &info)
            .map_err(|_| "cannot map the frame")?)
    };
    let raw = map(&raw?)?;
    if let Some(converted) = converted {
        let converted = map(&converted?)?;
        fs::write(out.join(format!("{name}.rgb")), rgb8(&converted)?)?;
    }
    if matches!(
        raw.format(),
        gst_video::VideoFormat::I420 | gst_video::VideoFormat::Nv12
    ) {
        fs::write(out.join(format!("{name}.planes")), tight_planes(&raw)?)?;
    }

    let info = raw.info();
    let format = PixelFormat::from_caps_name(info.format().to_str())
        .ok_or(format!("unsupported format {:?}", info.format()))?;
    let colorimetry = colorimetry(info);
    let (width, height) = (info.width(), info.height());
    // The planes as the element locates them: from the video meta, checked against the memory.
    let layout = PlaneLayout::of(raw.buffer(), info, format)?;
    let map = raw.buffer().map_readable()?;
    let frame = FrameRef {
        format,
        width: width as usize,
        height: height as usize,
        planes: layout.planes(&map),
        strides: layout.strides(),
        colorimetry,
    };

    let mut inputs = Vec::new();
    for (k, input) in case["inputs"]
        .as_array()
        .ok_or("missing inputs")?
        .iter()
        .enumerate()
    {
        let size = |i: usize| {
            input[i]
                .as_u64()
                .and_then(|value| u32::try_from(value).ok())
                .ok_or("an input size is not a number")
        };
        let (input_width, input_height) = (size(0)?, size(1)?);
        let mode = match input[2].as_str() {
            Some("letterbox") => ResizeMode::Letterbox,
            Some("stretch") => ResizeMode::Stretch,
            other => return Err(format!("unknown resize mode {other:?}").into()),
        };
        let placement = Placement::new(width, height, input_width, input_height, mode);
        let mut tensor = vec![0.0f32; 3 * input_width as usize * input_height as usize];
        preprocessor.run(
            &frame,
            input_width as usize,
            input_height as usize,
            placement,
            normalization,
            &mut tensor,
        )?;
        let bytes: Vec<u8> = tensor
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        fs::write(out.join(format!("{name}.{k}.f32")), bytes)?;
        inputs.push(json!({
            "size": [input_width, input_height],
            "mode": input[2],
            "placement": [placement.x, placement.y, placement.width, placement.height],
        }));
    }
    let planes: Vec<Value> = (0..raw.n_planes())
        .map(|i| json!(plane_extent(&raw, i)))
        .collect();
    Ok(json!({
        "name": name,
        "width": width,
        "height": height,
        "format": info.format().to_str().as_str(),
        "matrix": match colorimetry.matrix {
            YuvMatrix::Bt601 => "bt601",
            YuvMatrix::Bt709 => "bt709",
            YuvMatrix::Bt2020 => "bt2020",
        },
        "full_range": colorimetry.full_range,
        "planes": planes,
        "inputs": inputs,
    }))
}

/// Bytes per row (without padding) and rows of plane `i`.
fn plane_extent<T>(frame: &gst_video::VideoFrame<T>, i: u32) -> (usize, usize) {
    let component = frame
        .format_info()
        .plane()
        .iter()
        .position(|plane| *plane == i)
        .expect("every plane holds a component") as u32;
    let (width, height) = (
        frame.comp_width(component) as usize,
        frame.comp_height(component) as usize,
    );
    let pixel_stride = frame.comp_pstride(component) as usize;
    (width * pixel_stride, height)
}

/// The frame's planes one after the other, each row without its padding.
fn tight_planes<T>(frame: &gst_video::VideoFrame<T>) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    for i in 0..frame.n_planes() {
        let (row_bytes, rows) = plane_extent(frame, i);
        let stride = frame.plane_stride()[i as usize] as usize;
        let data = frame.plane_data(i)?;
        for row in 0..rows {
            bytes.extend_from_slice(&data[row * stride..row * stride + row_bytes]);
        }
    }
    Ok(bytes)
}

/// An RGB or RGBA64_LE frame in 8-bit RGB, rows without padding.
fn rgb8<T>(frame: &gst_video::VideoFrame<T>) -> Result<Vec<u8>, Error> {
    let bytes = tight_planes(frame)?;
    Ok(match frame.format() {
        gst_video::VideoFormat::Rgb => bytes,
        gst_video::VideoFormat::Rgba64Le => bytes
            .as_chunks::<8>()
            .0
            .iter()
            .flat_map(|pixel| {
                [0, 2, 4].map(|i| {
                    let value = f64::from(u16::from_le_bytes([pixel[i], pixel[i + 1]]));
                    (value / 257.0).round_ties_even() as u8
                })
            })
            .collect(),
        other => return Err(format!("cannot write {other:?} as RGB").into()),
    })
}
