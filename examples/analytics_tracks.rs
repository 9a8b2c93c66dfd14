// SPDX-License-Identifier: MIT
//! Runs a pipeline that ends in `appsink name=sink` and prints, per buffer, one JSON line of
//! what the GstAnalytics relation meta says (feature `analytics`, GStreamer >= 1.26):
//!
//! ```text
//! {"pts": 0, "instances": [{"region": 1, "bbox": [x, y, w, h], "label": "circle",
//!   "confidence": 0.97, "tracks": [3, 1]}, ...]}
//! ```
//!
//! `tracks` lists the track ids of every tracking Mtd the instance's object-detection Mtd
//! relates to, in Mtd id order: instseg's own first (with `tracking=true`), then those of a
//! tracker downstream such as `ioutracker`. `scripts/tracker_yardstick.py` uses it to score
//! `ioutracker`'s identities on instseg's detections.
//!
//! Usage (under the env file of scripts/build-gstreamer.sh, ONNX Runtime's venv active):
//! `analytics_tracks 'videotestsrc num-buffers=10 ! video/x-raw,format=RGB ! instseg ! ioutracker ! appsink name=sink'`

use gst::prelude::*;
use gstinstseg::analytics;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let description = std::env::args()
        .nth(1)
        .ok_or("usage: analytics_tracks 'PIPELINE ... ! appsink name=sink'")?;
    gst::init()?;
    gstinstseg::plugin_register_static()?;
    let pipeline = gst::parse::launch(&description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let sink = pipeline
        .by_name("sink")
        .ok_or("no element named sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| "sink is not an appsink")?;
    sink.set_property("sync", false);
    pipeline.set_state(gst::State::Playing)?;
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().ok_or("a sample without buffer")?;
        let instances: Vec<serde_json::Value> = analytics::read(buffer)
            .map(|frame| frame.instances)
            .unwrap_or_default()
            .iter()
            .map(|i| {
                serde_json::json!({
                    "region": i.region,
                    "bbox": i.bbox,
                    "label": i.label,
                    "confidence": i.confidence,
                    "tracks": i.tracks.iter().map(|t| t.id).collect::<Vec<_>>(),
                })
            })
            .collect();
        let pts = buffer.pts().map(gst::ClockTime::nseconds);
        println!(
            "{}",
            serde_json::json!({"pts": pts, "instances": instances})
        );
    }
    let bus = pipeline.bus().ok_or("no bus")?;
    let mut failure = None;
    if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error])
        && let gst::MessageView::Error(err) = message.view()
    {
        failure = Some(format!("{} ({:?})", err.error(), err.debug()));
    }
    pipeline.set_state(gst::State::Null)?;
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}
