// SPDX-License-Identifier: MIT OR Apache-2.0
//! The demo of the README's main command: renders a short clip of moving coloured shapes, runs
//! it through `instseg` with the overlay drawn into the frames, writes the result as a video
//! file and a PNG contact sheet of a few frames, and prints each frame's instances and the
//! frames per second.
//!
//! Usage: `demo [OUTPUT_DIR]` (default `target/demo`); extra `instseg` properties in
//! `INSTSEG_PROPERTIES`.

#[path = "../tests/common/element.rs"]
mod element;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use element::{Shape, draw_rgb, shapes};
use gst::prelude::*;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FRAMES: u32 = 60;
/// Frames shown on the contact sheet, in a 2 x 2 grid.
const SHEET_FRAMES: [u32; 4] = [0, 20, 40, 59];

/// The shapes of frame `index`: they drift and bounce so that they cross and keep their ids.
fn frame_shapes(index: u32) -> [Shape; 3] {
    let t = index as f32;
    let [square, disc, bar] = shapes(WIDTH, HEIGHT);
    [
        square.shifted(1.5 * t, 0.4 * t),
        disc.shifted(-1.2 * t, 0.6 * t),
        bar.shifted(0.5 * (t / 6.0).sin() * 20.0, -0.5 * t),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let output = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/demo".into()),
    );
    std::fs::create_dir_all(&output)?;
    let video = output.join("instseg-demo.avi");
    let sheet = output.join("instseg-contact-sheet.png");
    let properties = std::env::var("INSTSEG_PROPERTIES").unwrap_or_default();

    gst::init()?;
    gstinstseg::plugin_register_static()?;
    let (pipeline, src) = launch_from_appsrc(&format!(
        "appsrc name=src format=time is-live=false caps=video/x-raw,format=RGB,width={WIDTH},height={HEIGHT},framerate=30/1 \
         ! instseg name=seg overlay=blend {properties} ! tee name=t \
         t. ! queue ! videoconvert ! jpegenc ! avimux ! filesink location=\"{}\" \
         t. ! queue ! appsink name=frames sync=false",
        video.display()
    ))?;
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, WIDTH, HEIGHT).build()?;
    let stride = info.stride()[0] as usize;
    let mut index = 0;
    src.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                if index == FRAMES {
                    let _ = src.end_of_stream();
                    return;
                }
                let mut buffer = draw_rgb(WIDTH, HEIGHT, stride, &frame_shapes(index));
                if let Some(buffer) = buffer.get_mut() {
                    buffer.set_pts(gst::ClockTime::from_mseconds(u64::from(index) * 1000 / 30));
                    buffer.set_duration(gst::ClockTime::from_mseconds(33));
                }
                let _ = src.push_buffer(buffer);
                index += 1;
            })
            .build(),
    );

    let sheet_frames = Arc::new(Mutex::new(Vec::new()));
    let appsink = pipeline
        .by_name("frames")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    let collected = sheet_frames.clone();
    let mut frame = 0u32;
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                print_instances(frame, buffer);
                if SHEET_FRAMES.contains(&frame) {
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    collected.lock().expect("not poisoned").push(map.to_vec());
                }
                frame += 1;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    let start = Instant::now();
    // A failure to start is reported on the bus.
    let _ = pipeline.set_state(gst::State::Playing);
    let error = element::wait_for_end(&pipeline);
    let elapsed = start.elapsed().as_secs_f64();
    let stats = pipeline
        .by_name("seg")
        .map(|seg| seg.property::<gst::Structure>("stats"));
    pipeline.set_state(gst::State::Null)?;
    if let Some(error) = error {
        return Err(error.into());
    }

    let frames = sheet_frames.lock().expect("not poisoned");
    write_contact_sheet(&frames, stride, &sheet)?;
    println!(
        "{FRAMES} frames in {elapsed:.2} s = {:.1} fps (encoding included)",
        f64::from(FRAMES) / elapsed
    );
    if let Some(stats) = stats {
        println!("stats: {stats}");
    }
    println!(
        "video: {}\ncontact sheet: {}",
        video.display(),
        sheet.display()
    );
    Ok(())
}

fn print_instances(frame: u32, buffer: &gst::BufferRef) {
    let Ok(meta) = gst::meta::CustomMeta::from_buffer(buffer, "InstSegMeta") else {
        return;
    };
    let Ok(instances) = meta.structure().get::<gst::Array>("instances") else {
        return;
    };
    let summary: Vec<String> = instances
        .iter()
        .filter_map(|v| v.get::<gst::Structure>().ok())
        .map(|i| {
            format!(
                "#{} {} {:.2} at ({}, {}) {}x{}",
                i.get::<u64>("track-id").unwrap_or_default(),
                i.get::<&str>("label").unwrap_or_default(),
                i.get::<f64>("confidence").unwrap_or_default(),
                i.get::<u32>("x").unwrap_or_default(),
                i.get::<u32>("y").unwrap_or_default(),
                i.get::<u32>("width").unwrap_or_default(),
                i.get::<u32>("height").unwrap_or_default(),
            )
        })
        .collect();
    println!("frame {frame:2}: {}", summary.join(" | "));
}

/// Tiles the frames 2 x 2 into one RGB picture and encodes it with pngenc.
fn write_contact_sheet(
    frames: &[Vec<u8>],
    stride: usize,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let (sheet_width, sheet_height) = (2 * WIDTH, 2 * HEIGHT);
    let sheet_stride = (3 * sheet_width as usize).next_multiple_of(4);
    let mut sheet = vec![0u8; sheet_stride * sheet_height as usize];
    for (tile, frame) in frames.iter().enumerate() {
        let (x0, y0) = ((tile % 2) as u32 * WIDTH, (tile / 2) as u32 * HEIGHT);
        for y in 0..HEIGHT as usize {
            let from = &frame[y * stride..][..3 * WIDTH as usize];
            let at = (y0 as usize + y) * sheet_stride + 3 * x0 as usize;
            sheet[at..at + from.len()].copy_from_slice(from);
        }
    }
    let (pipeline, src) = launch_from_appsrc(&format!(
        "appsrc name=src num-buffers=1 caps=video/x-raw,format=RGB,width={sheet_width},height={sheet_height},framerate=1/1 \
         ! videoconvert ! pngenc ! filesink location=\"{}\"",
        path.display()
    ))?;
    pipeline.set_state(gst::State::Playing)?;
    src.push_buffer(gst::Buffer::from_mut_slice(sheet))?;
    src.end_of_stream()?;
    let error = element::wait_for_end(&pipeline);
    pipeline.set_state(gst::State::Null)?;
    error.map_or(Ok(()), |error| {
        Err(format!("the contact sheet could not be written: {error}").into())
    })
}

/// Parses a pipeline description whose source is an `appsrc` named `src`.
fn launch_from_appsrc(
    description: &str,
) -> Result<(gst::Pipeline, gst_app::AppSrc), Box<dyn std::error::Error>> {
    let pipeline = gst::parse::launch(description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or("no appsrc")?;
    Ok((pipeline, src))
}
