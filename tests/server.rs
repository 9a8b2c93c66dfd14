// SPDX-License-Identifier: MIT
//! `instseg inference-server=...` against a real Triton Inference Server (python backend,
//! see `tests/common/triton.rs`): the same results as local ONNX Runtime, batches across
//! concurrent pipelines, and a clear error for every fault.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::element::*;
use common::triton::{Entry, Triton, available, free_port};
use gst::prelude::*;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(fixture(name))
}

/// Frames of the three shapes moving a little each frame, RGB at `width` x `height`.
fn moving_frames(width: u32, height: u32, count: usize) -> Vec<(gst::Caps, gst::Buffer)> {
    init();
    (0..count)
        .map(|frame| {
            let step = frame as f32 * 1.5;
            let drawn = shapes(width, height).map(|shape| shape.shifted(step, step / 2.0));
            rgb_frame(width, height, &drawn)
        })
        .collect()
}

/// Pushes `frames` through `instseg <properties>` and returns what each output buffer's meta
/// says, and the element's active execution provider.
fn segment(properties: &str, frames: &[(gst::Caps, gst::Buffer)]) -> (Vec<MetaResult>, String) {
    init();
    let mut h = gst_check::Harness::new_parse(&format!("instseg {properties}"));
    h.play();
    let mut results = Vec::new();
    for (caps, buffer) in frames {
        h.set_src_caps(caps.clone());
        let out = h.push_and_pull(buffer.clone()).expect("a buffer comes out");
        results.push(MetaResult::read(&out));
    }
    let provider = instseg_of(&h)
        .property::<Option<String>>("active-execution-provider")
        .unwrap_or_default();
    (results, provider)
}

/// The two results are the same instances: seeds, classes, ids, boxes and masks equal, scores
/// within 1e-5.
fn assert_same(local: &[MetaResult], served: &[MetaResult], what: &str) {
    assert_eq!(local.len(), served.len(), "{what}");
    for (frame, (l, s)) in local.iter().zip(served).enumerate() {
        assert_eq!(l.labels, s.labels, "{what}, frame {frame}: label maps");
        assert_eq!(
            l.instances.len(),
            s.instances.len(),
            "{what}, frame {frame}"
        );
        for (a, b) in l.instances.iter().zip(&s.instances) {
            assert_eq!(
                (a.region, a.track_id, a.class_id, a.bbox, a.seed, a.area),
                (b.region, b.track_id, b.class_id, b.bbox, b.seed, b.area),
                "{what}, frame {frame}"
            );
            assert!(
                (a.confidence - b.confidence).abs() <= 1e-5,
                "{what}, frame {frame}: {} against {}",
                a.confidence,
                b.confidence
            );
        }
    }
}

#[test]
fn served_results_equal_local_results_and_concurrent_streams_are_batched() {
    if !available() {
        return;
    }
    let triton = Triton::start(&[
        Entry {
            name: "colour",
            model: &fixture_path("colour.onnx"),
            // A long queue delay, so that concurrent requests surely meet in one batch.
            options: &["--max-queue-delay-us", "50000"],
        },
        Entry {
            name: "default",
            model: &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default.onnx"),
            options: &[],
        },
    ]);
    let frames = moving_frames(96, 80, 8);
    let (local, _) = segment(
        &format!("model-location={}", fixture("colour.onnx")),
        &frames,
    );
    let url = triton.url("colour");
    let (served, provider) = segment(&format!("inference-server={url}"), &frames);
    assert_same(&local, &served, "colour model");
    assert!(local.iter().all(|r| r.instances.len() >= 3), "{local:?}");
    assert_eq!(provider, format!("server {url}"));

    // The embedded default model, served from the same file, on frames it segments.
    let frames = moving_frames(160, 120, 3);
    let (local, _) = segment("", &frames);
    let (served, _) = segment(
        &format!("inference-server={}", triton.url("default")),
        &frames,
    );
    assert_same(&local, &served, "default model");

    // Four pipelines at once against one server: each as local, and batched by the server.
    let (inferences_before, executions_before) = triton.stats("colour");
    let frames = moving_frames(96, 80, 20);
    let (local, _) = segment(
        &format!("model-location={}", fixture("colour.onnx")),
        &frames,
    );
    std::thread::scope(|scope| {
        let streams: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| segment(&format!("inference-server={url}"), &frames).0))
            .collect();
        for stream in streams {
            assert_same(&local, &stream.join().unwrap(), "concurrent stream");
        }
    });
    let (inferences, executions) = triton.stats("colour");
    let (inferences, executions) = (
        inferences - inferences_before,
        executions - executions_before,
    );
    println!("4 streams x 20 frames: {inferences} inferences in {executions} executions");
    assert!(inferences >= 80, "{inferences}");
    assert!(
        executions < inferences,
        "no batch of more than one: {inferences} inferences in {executions} executions"
    );
}

/// Runs `videotestsrc ! instseg <properties> ! fakesink` for `frames` frames; returns the
/// error message on the bus, if any, and how long the run took.
fn run_error(properties: &str, frames: u32) -> (Option<String>, Duration) {
    init();
    let started = Instant::now();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball background-color=0xff000000 \
         foreground-color=0xffff0000 ! video/x-raw,width=64,height=48 ! instseg {properties} ! \
         fakesink"
    ))
    .expect("pipeline");
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().expect("bus");
    let message = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(120),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let error = match message.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(err)) => Some(err.error().to_string()),
        Some(_) => None,
        None => Some("timed out".into()),
    };
    pipeline.set_state(gst::State::Null).expect("to NULL");
    (error, started.elapsed())
}

/// A model.py that serves the colour model like the toolkit's, but fails (`error`) or takes
/// 3 s (`slow`) on any frame that is not all zeros: the element's check at start (a zero
/// image) passes, its first real frame meets the fault.
const FAULTY_MODEL: &str = r#"
import time
from pathlib import Path

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).parent
        self.session = onnxruntime.InferenceSession(str(here / "model.onnx"),
                                                    providers=["CPUExecutionProvider"])
        self.fault = (here / "fault").read_text().strip()

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            if image.max() > 0 and self.fault == "error":
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("this test model refuses every real frame")))
                continue
            if image.max() > 0 and self.fault == "slow":
                time.sleep(3)
            embedding, classes = self.session.run(["embedding", "classes"], {"image": image})
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("embedding", embedding), pb_utils.Tensor("classes", classes)]))
        return responses
"#;

#[test]
fn server_faults_are_clear_errors_and_never_hang() {
    if !available() {
        return;
    }
    let colour = fixture_path("colour.onnx");
    let broken = fixture_path("broken_labels.onnx");
    let entries = [
        Entry {
            name: "colour",
            model: &colour,
            options: &[],
        },
        Entry {
            name: "broken",
            model: &broken,
            options: &[],
        },
        Entry {
            name: "failing",
            model: &colour,
            options: &[],
        },
        Entry {
            name: "slow",
            model: &colour,
            options: &[],
        },
    ];
    // The faulty entries get their own model.py before the server starts.
    let triton = {
        Triton::start_with(&entries, |repository| {
            for fault in ["failing", "slow"] {
                let version = repository.join(fault).join("1");
                std::fs::write(version.join("model.py"), FAULTY_MODEL).unwrap();
                let mode = if fault == "failing" { "error" } else { "slow" };
                std::fs::write(version.join("fault"), mode).unwrap();
            }
        })
    };
    let down = format!("http://127.0.0.1:{}/v2/models/colour", free_port());
    let broken_url = triton.url("broken");
    let cases = [
        (
            "a malformed URL".to_string(),
            "inference-server=ftp://host/models/colour".to_string(),
            vec!["inference-server URL", "is not an http:// URL"],
        ),
        (
            "no server".into(),
            format!("inference-server={down}"),
            vec!["cannot reach inference server", "after 2 retries"],
        ),
        (
            "an unknown model".into(),
            format!("inference-server={}", triton.url("nonexistent")),
            vec!["has no ready model", "nonexistent"],
        ),
        (
            "a model that breaks the contract".into(),
            format!("inference-server={}", triton.url("broken")),
            vec!["instseg.labels", "names 2 classes", &broken_url],
        ),
        (
            "an HTTP error".into(),
            format!("inference-server={}", triton.url("failing")),
            vec![
                "refused a frame",
                "this test model refuses every real frame",
            ],
        ),
        (
            "a slow server".into(),
            format!(
                "inference-server={} server-timeout=1000",
                triton.url("slow")
            ),
            vec!["gave no answer within 1000 ms", "server-timeout"],
        ),
    ];
    for (fault, properties, needles) in cases {
        let (error, took) = run_error(&properties, 5);
        let error = error.unwrap_or_else(|| panic!("{fault}: no error"));
        for needle in needles {
            assert!(error.contains(needle), "{fault}: no {needle:?} in {error}");
        }
        assert!(took < Duration::from_secs(30), "{fault}: took {took:?}");
    }

    // Killed mid-stream: the element errors out within the timeout and its retries.
    let mut triton = triton;
    let url = triton.url("colour");
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        triton.stop();
        triton
    });
    let (error, took) = run_error(
        &format!("inference-server={url} server-timeout=2000"),
        1_000_000,
    );
    drop(stopper.join());
    let error = error.expect("the stream fails once the server is gone");
    assert!(
        error.contains(&url) && error.contains("inference server"),
        "{error}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
