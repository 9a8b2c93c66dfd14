// SPDX-License-Identifier: MIT
//! Runs N pipelines `videotestsrc ! instseg ! fakesink` at once in this process, as fast as
//! they go, and prints one JSON line: aggregate frames per second, per-frame latency through
//! `instseg` (p50, p99) and the element's CPU time per frame (the streaming thread's CPU time
//! from the buffer entering `instseg` to it leaving). `benches/streams.py` runs it for several
//! stream counts, locally and against a Triton server, and prints the table.
//!
//! Usage: `bench_streams --streams N [--frames F] [--size WxH] [--server URL] [--model FILE]`
//! (without `--server`, the element runs the model itself: the streams share one ONNX Runtime
//! session).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

/// The streaming thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

thread_local! {
    /// When the buffer in flight on this streaming thread entered `instseg`: wall and CPU time.
    static ENTERED: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// Per frame: (latency, CPU time) through `instseg`.
type Samples = Arc<Mutex<Vec<(Duration, Duration)>>>;

/// Frames of each stream left out of the latency figures (the first inferences warm up).
const WARM_UP: u64 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut streams, mut frames, mut size) = (1usize, 60u32, "640x480".to_string());
    let (mut server, mut model) = (String::new(), String::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--streams" => streams = value.parse()?,
            "--frames" => frames = value.parse()?,
            "--size" => size = value,
            "--server" => server = value,
            "--model" => model = value,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let (width, height) = size.split_once('x').ok_or("--size is WIDTHxHEIGHT")?;
    gst::init()?;
    gstinstseg::plugin_register_static()?;

    let samples: Samples = Arc::default();
    let mut pipelines = Vec::new();
    for _ in 0..streams {
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc num-buffers={frames} pattern=ball ! \
             video/x-raw,format=RGB,width={width},height={height} ! \
             instseg name=seg overlay=none inference-server=\"{server}\" model-location=\"{model}\" ! \
             fakesink sync=false"
        ))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
        let seg = pipeline.by_name("seg").ok_or("no instseg")?;
        seg.static_pad("sink").ok_or("no sink pad")?.add_probe(
            gst::PadProbeType::BUFFER,
            |_, _| {
                ENTERED.set(Some((Instant::now(), thread_cpu_time())));
                gst::PadProbeReturn::Ok
            },
        );
        let samples = Arc::clone(&samples);
        let seen = AtomicU64::new(0);
        seg.static_pad("src").ok_or("no src pad")?.add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                if let Some((wall, cpu)) = ENTERED.take()
                    && seen.fetch_add(1, Ordering::Relaxed) >= WARM_UP
                {
                    let sample = (wall.elapsed(), thread_cpu_time().saturating_sub(cpu));
                    samples.lock().expect("samples").push(sample);
                }
                gst::PadProbeReturn::Ok
            },
        );
        pipelines.push(pipeline);
    }
    // Start every model (and its check) first, then let all streams go at once.
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Paused)?;
        pipeline.state(gst::ClockTime::from_seconds(120)).0?;
    }
    let started = Instant::now();
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Playing)?;
    }
    for pipeline in &pipelines {
        let bus = pipeline.bus().ok_or("no bus")?;
        let message = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(1800),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        if let Some(gst::MessageView::Error(err)) = message.as_ref().map(|m| m.view()) {
            return Err(format!("{}", err.error()).into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Null)?;
    }

    let mut samples = samples.lock().expect("samples").clone();
    samples.sort_by_key(|(latency, _)| *latency);
    let percentile = |p: f64| {
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(index).map_or(0.0, |s| s.0.as_secs_f64() * 1e3)
    };
    let cpu_ms =
        samples.iter().map(|s| s.1.as_secs_f64()).sum::<f64>() * 1e3 / samples.len().max(1) as f64;
    let total = streams as f64 * f64::from(frames);
    println!(
        "{}",
        serde_json::json!({
            "mode": if server.is_empty() { "local" } else { "server" },
            "streams": streams,
            "frames": total,
            "seconds": seconds,
            "fps": total / seconds,
            "p50_ms": percentile(0.5),
            "p99_ms": percentile(0.99),
            "cpu_ms_per_frame": cpu_ms,
        })
    );
    Ok(())
}
