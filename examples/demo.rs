// SPDX-License-Identifier: MIT
//! The demo of the README's main command: renders a short clip of moving shapes like the ones the
//! default model was trained on (a circle, a square, a triangle and a star, two of them crossing),
//! runs it through `instseg` with the overlay drawn into the frames, writes the result as a video
//! file and a PNG contact sheet of a few frames, and prints each frame's instances and the
//! frames per second.
//!
//! Usage: `demo [OUTPUT_DIR]` (default `target/demo`); extra `instseg` properties in
//! `INSTSEG_PROPERTIES`.

#[path = "../tests/common/element.rs"]
mod element;

use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FRAMES: u32 = 60;
/// Frames shown on the contact sheet, in a 2 x 2 grid.
const SHEET_FRAMES: [u32; 4] = [0, 20, 40, 59];

/// Background colours of the clip, top and bottom (a vertical gradient), like the muted
/// backgrounds the default model was trained on.
const BACKGROUND: [[f32; 3]; 2] = [[96.0, 104.0, 92.0], [132.0, 120.0, 140.0]];
/// Amplitude of the pixel noise on every frame; the training images are noisy too.
const NOISE: f32 = 6.0;

/// One of the default model's classes, as drawn by `training/instseg_train/shapes.py`.
#[derive(Clone, Copy)]
enum Kind {
    Circle,
    Square,
    Triangle,
    Star,
}

/// A moving shape: centre and circumradius in frame pixels, velocity in pixels per frame.
struct Sprite {
    kind: Kind,
    colour: [u8; 3],
    centre: (f32, f32),
    radius: f32,
    velocity: (f32, f32),
    spin: f32,
}

/// The clip's shapes: the square and the star cross in the middle of the clip.
const SPRITES: [Sprite; 4] = [
    Sprite {
        kind: Kind::Circle,
        colour: [250, 140, 30],
        centre: (70.0, 70.0),
        radius: 34.0,
        velocity: (0.6, 0.3),
        spin: 0.0,
    },
    Sprite {
        kind: Kind::Square,
        colour: [40, 110, 240],
        centre: (60.0, 175.0),
        radius: 36.0,
        velocity: (2.6, -0.5),
        spin: 0.02,
    },
    Sprite {
        kind: Kind::Triangle,
        colour: [60, 210, 90],
        centre: (250.0, 65.0),
        radius: 38.0,
        velocity: (-0.4, 0.4),
        spin: -0.03,
    },
    Sprite {
        kind: Kind::Star,
        colour: [230, 60, 200],
        centre: (265.0, 175.0),
        radius: 40.0,
        velocity: (-2.2, -0.3),
        spin: 0.04,
    },
];

/// Where a sprite is in one frame, computed once per frame rather than once per pixel.
enum Outline {
    Disc { cx: f32, cy: f32, r: f32 },
    Polygon(Vec<(f32, f32)>),
}

impl Outline {
    /// Whether point (x, y) is inside (hard edges).
    fn contains(&self, x: f32, y: f32) -> bool {
        match self {
            Outline::Disc { cx, cy, r } => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Outline::Polygon(vertices) => {
                // Even-odd rule: count the edges crossed by a ray going right from (x, y).
                let edges = vertices.iter().zip(vertices.iter().cycle().skip(1));
                edges.fold(false, |inside, (&(x0, y0), &(x1, y1))| {
                    let crosses = (y0 > y) != (y1 > y) && x < x0 + (y - y0) * (x1 - x0) / (y1 - y0);
                    inside != crosses
                })
            }
        }
    }
}

impl Sprite {
    /// The sprite's outline in frame `index`.
    fn outline(&self, index: u32) -> Outline {
        let t = index as f32;
        let (cx, cy) = (
            self.centre.0 + self.velocity.0 * t,
            self.centre.1 + self.velocity.1 * t,
        );
        let angle = self.spin * t;
        let r = self.radius;
        let polygon = |corners: usize, step: f32, start: f32, inner: f32| {
            let vertex = |k: usize| {
                let a = angle + start + k as f32 * step;
                let radius = if k % 2 == 1 { inner * r } else { r };
                (cx + radius * a.cos(), cy + radius * a.sin())
            };
            Outline::Polygon((0..corners).map(vertex).collect())
        };
        match self.kind {
            Kind::Circle => Outline::Disc { cx, cy, r },
            Kind::Square => polygon(4, FRAC_PI_2, FRAC_PI_4, 1.0),
            Kind::Triangle => polygon(3, 2.0 * PI / 3.0, -FRAC_PI_2, 1.0),
            Kind::Star => polygon(10, PI / 5.0, -FRAC_PI_2, 0.45),
        }
    }
}

/// Frame `index` of the clip as RGB rows of `stride` bytes; later sprites are drawn on top.
fn render_frame(index: u32, stride: usize) -> gst::Buffer {
    let outlines: Vec<(Outline, [u8; 3])> = SPRITES
        .iter()
        .rev()
        .map(|sprite| (sprite.outline(index), sprite.colour))
        .collect();
    let mut data = vec![0u8; stride * HEIGHT as usize];
    let mut noise = Noise(0x9e37_79b9 ^ index);
    for (y, row) in data.chunks_exact_mut(stride).enumerate() {
        let t = y as f32 / HEIGHT as f32;
        let background: [f32; 3] =
            std::array::from_fn(|c| BACKGROUND[0][c] * (1.0 - t) + BACKGROUND[1][c] * t);
        for (x, pixel) in row[..3 * WIDTH as usize].chunks_exact_mut(3).enumerate() {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let colour = outlines
                .iter()
                .find(|(outline, _)| outline.contains(px, py))
                .map_or(background, |(_, colour)| colour.map(f32::from));
            for (out, value) in pixel.iter_mut().zip(colour) {
                *out = (value + NOISE * noise.next()).clamp(0.0, 255.0) as u8;
            }
        }
    }
    gst::Buffer::from_mut_slice(data)
}

/// A small xorshift generator: uniform noise in -1..1, the same for every run.
struct Noise(u32);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 as f32 / u32::MAX as f32 * 2.0 - 1.0
    }
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
                let mut buffer = render_frame(index, stride);
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
