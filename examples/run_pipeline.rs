// SPDX-License-Identifier: MIT
//! Runs `videotestsrc ! instseg ! fakesink sync=false` as fast as it goes and prints the frames
//! per second, the active execution provider and the element's per-stage `stats`.
//!
//! Usage: `run_pipeline [--provider auto|cpu|cuda|tensorrt] [--model FILE] [--size WxH]
//! [--format RGB|NV12|...] [--frames N] [--overlay none|auto|meta|blend]` (overlay defaults to
//! none: the benchmark measures the metadata path).

use std::time::Instant;

use gst::prelude::*;

#[path = "../tests/common/element.rs"]
mod element;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut provider = "auto".to_string();
    let mut model = String::new();
    let mut size = "640x480".to_string();
    let mut format = "RGB".to_string();
    let mut frames = 300u32;
    let mut overlay = "none".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--provider" => provider = value,
            "--model" => model = value,
            "--size" => size = value,
            "--format" => format = value,
            "--frames" => frames = value.parse()?,
            "--overlay" => overlay = value,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let (width, height) = size.split_once('x').ok_or("--size is WIDTHxHEIGHT")?;

    gst::init()?;
    gstinstseg::plugin_register_static()?;
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball background-color=0xff000000 \
         foreground-color=0xffff0000 ! video/x-raw,format={format},width={width},height={height} ! \
         instseg name=seg execution-provider={provider} overlay={overlay} model-location=\"{model}\" ! \
         fakesink sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "not a pipeline")?;
    let start = Instant::now();
    // A failure to start is reported on the bus, read below.
    let _ = pipeline.set_state(gst::State::Playing);
    let error = element::wait_for_end(&pipeline);
    let elapsed = start.elapsed().as_secs_f64();
    let segmenter = pipeline.by_name("seg").ok_or("no instseg")?;
    let provider = segmenter.property::<Option<String>>("active-execution-provider");
    let stats = segmenter.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null)?;
    if let Some(error) = error {
        return Err(error.into());
    }
    println!(
        "{size} {format}: {frames} frames in {elapsed:.2} s = {:.1} fps on {}",
        f64::from(frames) / elapsed,
        provider.unwrap_or_default()
    );
    println!("stats: {stats}");
    Ok(())
}
