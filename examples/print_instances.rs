// SPDX-License-Identifier: MIT
//! Runs a pipeline through `instseg` and prints each frame's instances, read from the
//! `InstSegMeta` that the element attaches to every buffer.
//!
//! Usage: `print_instances [FILE]` — a video file (decoded with decodebin), or without an
//! argument a test source of moving coloured shapes. Extra `instseg` properties can be passed
//! in `INSTSEG_PROPERTIES` (e.g. `model-location=/path/model.onnx`).

use gst::prelude::*;

#[path = "../tests/common/element.rs"]
mod element;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstinstseg::plugin_register_static()?;
    let properties = std::env::var("INSTSEG_PROPERTIES").unwrap_or_default();
    let source = match std::env::args().nth(1) {
        Some(file) => format!("filesrc location=\"{file}\" ! decodebin ! videoconvert"),
        None => "videotestsrc num-buffers=30 pattern=ball background-color=0xff000000 \
                 foreground-color=0xffff0000 ! video/x-raw,width=320,height=240"
            .to_string(),
    };
    let pipeline = gst::parse::launch(&format!(
        "{source} ! instseg {properties} ! fakesink name=sink signal-handoffs=true"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "not a pipeline")?;
    let sink = pipeline.by_name("sink").ok_or("no sink")?;
    sink.connect("handoff", false, |values| {
        let buffer = values[1].get::<gst::Buffer>().ok()?;
        let meta = gst::meta::CustomMeta::from_buffer(&buffer, "InstSegMeta").ok()?;
        let result = meta.structure();
        let instances = result.get::<gst::Array>("instances").ok()?;
        let pts = buffer.pts().map_or("-".into(), |pts| pts.to_string());
        println!("frame at {pts}: {} instances", instances.len());
        for instance in instances
            .iter()
            .filter_map(|v| v.get::<gst::Structure>().ok())
        {
            let get = |field: &str| instance.get::<u32>(field).unwrap_or_default();
            println!(
                "  #{} {} {:.2} box {}x{} at ({}, {}) area {}",
                instance.get::<u64>("track-id").unwrap_or_default(),
                instance.get::<&str>("label").unwrap_or_default(),
                instance.get::<f64>("confidence").unwrap_or_default(),
                get("width"),
                get("height"),
                get("x"),
                get("y"),
                get("area"),
            );
        }
        None
    });

    // A failure to start is reported on the bus, read below.
    let _ = pipeline.set_state(gst::State::Playing);
    let error = element::wait_for_end(&pipeline);
    let result = error.map_or(Ok(()), |error| Err(error.into()));
    pipeline.set_state(gst::State::Null)?;
    result
}
