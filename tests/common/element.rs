// SPDX-License-Identifier: MIT
//! Helpers for tests that run the real `instseg` element: frames of flat coloured shapes with
//! known masks, and a reader of the `InstSegMeta` a buffer carries.

#![allow(dead_code)]

use std::sync::Once;

use gst::prelude::*;

/// Registers the plugin with GStreamer once per test process.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstinstseg::plugin_register_static().expect("the plugin registers");
    });
}

/// Absolute path of a fixture model.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A flat-coloured shape drawn on a black frame, in frame pixels.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Rect { x0: u32, y0: u32, x1: u32, y1: u32 },
    Disc { cx: f32, cy: f32, r: f32 },
}

impl Shape {
    pub fn contains(&self, x: u32, y: u32) -> bool {
        match *self {
            Shape::Rect { x0, y0, x1, y1 } => x >= x0 && x < x1 && y >= y0 && y < y1,
            Shape::Disc { cx, cy, r } => {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                dx * dx + dy * dy <= r * r
            }
        }
    }

    pub fn shifted(&self, dx: f32, dy: f32) -> Shape {
        match *self {
            Shape::Rect { x0, y0, x1, y1 } => Shape::Rect {
                x0: (x0 as f32 + dx) as u32,
                y0: (y0 as f32 + dy) as u32,
                x1: (x1 as f32 + dx) as u32,
                y1: (y1 as f32 + dy) as u32,
            },
            Shape::Disc { cx, cy, r } => Shape::Disc {
                cx: cx + dx,
                cy: cy + dy,
                r,
            },
        }
    }
}

/// Class ids of the colour fixture model: 1 red, 2 green, 3 blue.
pub const COLOURS: [(u32, [u8; 3]); 3] = [(1, [255, 0, 0]), (2, [0, 255, 0]), (3, [0, 0, 255])];

/// Red square, green disc and blue bar, laid out relative to the frame size.
pub fn shapes(width: u32, height: u32) -> [Shape; 3] {
    let (w, h) = (width as f32, height as f32);
    [
        Shape::Rect {
            x0: (0.09 * w) as u32,
            y0: (0.09 * h) as u32,
            x1: (0.47 * w) as u32,
            y1: (0.47 * h) as u32,
        },
        Shape::Disc {
            cx: 0.72 * w,
            cy: 0.28 * h,
            r: 0.19 * w.min(h),
        },
        Shape::Rect {
            x0: (0.12 * w) as u32,
            y0: (0.6 * h) as u32,
            x1: (0.88 * w) as u32,
            y1: (0.9 * h) as u32,
        },
    ]
}

/// An RGB buffer (rows padded to `stride`) with the shapes drawn in red, green and blue.
pub fn draw_rgb(width: u32, height: u32, stride: usize, shapes: &[Shape; 3]) -> gst::Buffer {
    let mut data = vec![0u8; stride * height as usize];
    for y in 0..height {
        for x in 0..width {
            for (shape, (_, colour)) in shapes.iter().zip(COLOURS) {
                if shape.contains(x, y) {
                    let at = y as usize * stride + 3 * x as usize;
                    data[at..at + 3].copy_from_slice(&colour);
                }
            }
        }
    }
    gst::Buffer::from_mut_slice(data)
}

/// The RGB caps and buffer of a frame of shapes, with GStreamer's default stride.
pub fn rgb_frame(width: u32, height: u32, shapes: &[Shape; 3]) -> (gst::Caps, gst::Buffer) {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("valid video info");
    let buffer = draw_rgb(width, height, info.stride()[0] as usize, shapes);
    (info.to_caps().expect("caps"), buffer)
}

/// One instance as the meta reports it.
#[derive(Debug, Clone)]
pub struct MetaInstance {
    pub region: u32,
    pub track_id: u64,
    pub class_id: u32,
    pub label: String,
    pub confidence: f64,
    pub bbox: [u32; 4],
    pub seed: [u32; 2],
    pub area: u32,
}

/// What `InstSegMeta` says about one buffer.
#[derive(Debug, Clone)]
pub struct MetaResult {
    pub mask_width: u32,
    pub mask_height: u32,
    pub rect: [i32; 4],
    pub labels: Vec<u8>,
    pub instances: Vec<MetaInstance>,
}

impl MetaResult {
    pub fn read(buffer: &gst::BufferRef) -> MetaResult {
        let meta = gst::meta::CustomMeta::from_buffer(buffer, "InstSegMeta")
            .expect("the buffer carries InstSegMeta");
        let s = meta.structure();
        assert_eq!(s.name(), "instseg");
        let mask = s.get::<gst::Buffer>("mask").expect("mask");
        let labels = mask.map_readable().expect("readable mask").to_vec();
        let instances = s
            .get::<gst::Array>("instances")
            .expect("instances")
            .iter()
            .map(|value| {
                let i = value.get::<gst::Structure>().expect("instance structure");
                let uint = |field: &str| i.get::<u32>(field).expect(field);
                MetaInstance {
                    region: uint("region"),
                    track_id: i.get::<u64>("track-id").expect("track-id"),
                    class_id: uint("class-id"),
                    label: i.get::<String>("label").expect("label"),
                    confidence: i.get::<f64>("confidence").expect("confidence"),
                    bbox: [uint("x"), uint("y"), uint("width"), uint("height")],
                    seed: [uint("seed-x"), uint("seed-y")],
                    area: uint("area"),
                }
            })
            .collect();
        let int = |field: &str| s.get::<i32>(field).expect(field);
        let result = MetaResult {
            mask_width: s.get::<u32>("mask-width").expect("mask-width"),
            mask_height: s.get::<u32>("mask-height").expect("mask-height"),
            rect: [int("mask-x"), int("mask-y"), int("mask-w"), int("mask-h")],
            labels,
            instances,
        };
        assert_eq!(
            result.labels.len(),
            (result.mask_width * result.mask_height) as usize
        );
        result
    }

    /// The frame-resolution mask of `region` (nearest neighbour, as the JSON masks).
    pub fn frame_mask(&self, region: u32, width: u32, height: u32) -> Vec<bool> {
        let [rx, ry, rw, rh] = self.rect;
        let mut mask = vec![false; (width * height) as usize];
        for y in 0..height as i32 {
            for x in 0..width as i32 {
                if x < rx || y < ry || x >= rx + rw || y >= ry + rh {
                    continue;
                }
                let gx = (x - rx) as u64 * u64::from(self.mask_width) / rw as u64;
                let gy = (y - ry) as u64 * u64::from(self.mask_height) / rh as u64;
                let label = self.labels[(gy * u64::from(self.mask_width) + gx) as usize];
                mask[(y as u32 * width + x as u32) as usize] = u32::from(label) == region;
            }
        }
        mask
    }

    /// The instance covering frame pixel (x, y), if any.
    pub fn instance_at(&self, x: u32, y: u32, width: u32, height: u32) -> Option<&MetaInstance> {
        self.instances
            .iter()
            .find(|i| self.frame_mask(i.region, width, height)[(y * width + x) as usize])
    }
}

pub fn truth_mask(shape: &Shape, width: u32, height: u32) -> Vec<bool> {
    (0..height)
        .flat_map(|y| (0..width).map(move |x| shape.contains(x, y)))
        .collect()
}

pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let both = a.iter().zip(b).filter(|(a, b)| **a && **b).count();
    let either = a.iter().zip(b).filter(|(a, b)| **a || **b).count();
    if either == 0 {
        1.0
    } else {
        both as f64 / either as f64
    }
}

/// For each shape, the best IoU of any instance of the shape's class with its true mask.
pub fn best_ious(result: &MetaResult, shapes: &[Shape; 3], width: u32, height: u32) -> [f64; 3] {
    let mut best = [0.0; 3];
    for ((shape, (class_id, _)), best) in shapes.iter().zip(COLOURS).zip(&mut best) {
        let truth = truth_mask(shape, width, height);
        for instance in result.instances.iter().filter(|i| i.class_id == class_id) {
            *best = f64::max(
                *best,
                iou(&result.frame_mask(instance.region, width, height), &truth),
            );
        }
    }
    best
}

/// Waits (up to ten minutes) for EOS or an error; returns the error text, if any.
pub fn wait_for_end(pipeline: &impl IsA<gst::Element>) -> Option<String> {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let message = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(600),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    match message.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(err)) => Some(format!(
            "{} ({})",
            err.error(),
            err.debug().map(|d| d.to_string()).unwrap_or_default()
        )),
        Some(_) => None,
        None => Some("timed out".into()),
    }
}

/// Resident memory of this process in KiB.
pub fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    pages * 4
}

/// The `instseg` inside a harness made with `Harness::new_parse`.
pub fn instseg_of(h: &gst_check::Harness) -> gst::Element {
    h.element()
        .and_then(|bin| bin.downcast::<gst::Bin>().ok())
        .and_then(|bin| {
            bin.iterate_elements()
                .into_iter()
                .flatten()
                .find(|e| e.factory().is_some_and(|f| f.name() == "instseg"))
        })
        .expect("the element")
}
