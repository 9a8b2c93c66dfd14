// SPDX-License-Identifier: MIT
//! Hostile input against the real element: models and metadata that ask for the impossible,
//! buffers whose video meta lies about their memory, model paths that are not files, outputs
//! that are not numbers and a results file on a full disk. Each must give a clear error (or a
//! warning) on the bus, naming what to fix, and nothing may crash, hang or panic.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::element::*;
use common::onnx_meta::fixture_with_metadata;
use gst::prelude::*;

/// What the bus said about one pipeline run.
#[derive(Debug, Default)]
struct Outcome {
    /// The first error's message (not its debug text), if the run failed.
    error: Option<String>,
    /// Every warning's message.
    warnings: Vec<String>,
}

/// Runs `pipeline` to EOS or its first error (set to PLAYING, whatever the state change
/// returns) and collects what the bus said.
fn run(pipeline: &gst::Element) -> Outcome {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let _ = pipeline.set_state(gst::State::Playing);
    let mut outcome = Outcome::default();
    loop {
        let Some(message) = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Warning,
            ],
        ) else {
            outcome.error = Some("timed out".into());
            break;
        };
        match message.view() {
            gst::MessageView::Warning(warning) => {
                outcome.warnings.push(warning.error().to_string());
            }
            gst::MessageView::Error(error) => {
                outcome.error = Some(error.error().to_string());
                break;
            }
            _ => break,
        }
    }
    pipeline.set_state(gst::State::Null).expect("to NULL");
    outcome
}

/// `videotestsrc ! instseg <properties> ! fakesink` for `frames` frames.
fn run_properties(properties: &str, frames: u32) -> Outcome {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48 ! instseg \
         {properties} ! fakesink"
    ))
    .expect("pipeline");
    run(&pipeline)
}

/// The start error for a model at `path`; fails if the model was accepted.
fn start_error(path: &str) -> String {
    run_properties(&format!("model-location=\"{path}\""), 2)
        .error
        .unwrap_or_else(|| panic!("{path} was accepted"))
}

#[test]
fn huge_model_inputs_are_refused_at_start_naming_the_limit() {
    let error = start_error(&fixture("broken_huge_input.onnx"));
    assert!(
        error.contains("input `image`")
            && error.contains("100000x100000")
            && error.contains("4096"),
        "{error}"
    );
    for size in ["100000x100000", "65536x65537", "4294967295x4294967295"] {
        let path = fixture_with_metadata(
            "colour_dynamic.onnx",
            &format!("input-size-{size}"),
            &[("instseg.input-size", Some(size))],
        );
        let error = start_error(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(
            error.contains("instseg.input-size") && error.contains(size) && error.contains("4096"),
            "{size}: {error}"
        );
    }
}

#[test]
fn metadata_values_out_of_range_are_refused_at_start_naming_the_key() {
    let cases: [(&str, Option<&str>, &str); 12] = [
        ("instseg.alpha", Some("-5"), "a number >= 0"),
        ("instseg.alpha", Some("-1"), "a number >= 0"),
        ("instseg.seed-threshold", Some("5"), "from 0 to 1"),
        ("instseg.seed-threshold", Some("-1"), "from 0 to 1"),
        ("instseg.track-seed-threshold", Some("1.5"), "from 0 to 1"),
        ("instseg.max-overlap", Some("2"), "from 0 to 1"),
        ("instseg.mean", Some("1e38,0,0"), "+-65504"),
        ("instseg.std", Some("1e-45,1,1"), "+-65504"),
        ("instseg.std", Some("1,1,1e-30"), "+-65504"),
        ("instseg.min-area", Some("5000"), "4096 cells"),
        ("instseg.min-area", Some("-3"), "non-negative integer"),
        ("instseg.contract", None, "missing"),
    ];
    for (index, (key, value, expected)) in cases.into_iter().enumerate() {
        let path = fixture_with_metadata("colour.onnx", &format!("meta-{index}"), &[(key, value)]);
        let error = start_error(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(
            error.contains(key) && error.contains(expected),
            "{key}={value:?}: {error}"
        );
    }
    let error = start_error(&fixture("broken_embedding_empty.onnx"));
    assert!(
        error.contains("`embedding`") && error.contains("D = 0"),
        "{error}"
    );
}

#[test]
fn a_megabyte_of_metadata_is_quoted_in_a_few_characters() {
    let huge = "x".repeat(1 << 20);
    for key in ["instseg.resize", "instseg.labels", "instseg.thresholds"] {
        let value = if key == "instseg.labels" {
            // Many names: refused for their count, quoted in the mismatch error.
            "a,".repeat(1 << 19) + "b"
        } else {
            huge.clone()
        };
        let path = fixture_with_metadata("colour.onnx", "huge-meta", &[(key, Some(&value))]);
        let error = start_error(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(error.contains(key), "{}", &error[..error.len().min(500)]);
        assert!(error.len() < 1000, "{key}: {} bytes of error", error.len());
        assert!(
            error.contains(&format!("({} bytes)", value.len())),
            "{error}"
        );
    }
}

#[test]
fn model_paths_that_are_not_regular_files_are_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("instseg-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("model.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    let link = dir.join("link-to-fifo.onnx");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let cases = [
        (fifo.clone(), "is a FIFO"),
        (link, "is a FIFO"),
        (dir.clone(), "is a directory"),
        ("/dev/zero".into(), "is a device"),
        (dir.join("missing.onnx"), "No such file"),
    ];
    for (path, expected) in cases {
        // Before the check, ONNX Runtime's open of a FIFO blocked start() forever.
        let (sender, receiver) = mpsc::channel();
        let location = path.display().to_string();
        std::thread::spawn(move || sender.send(start_error(&location)));
        let error = receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} blocked the element's start", path.display()));
        assert!(
            error.contains(expected) && error.contains(&path.display().to_string()),
            "{}: {error}",
            path.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_outputs_are_reported_once_as_a_warning() {
    let outcome = run_properties(
        &format!("model-location={}", fixture("broken_nan_outputs.onnx")),
        5,
    );
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    assert!(
        outcome.warnings[0].contains("100% of the model's outputs on frame 0 are NaN or infinite"),
        "{:?}",
        outcome.warnings
    );
}

#[test]
fn a_failing_results_file_fails_the_first_frame_naming_the_file() {
    let outcome = run_properties(
        &format!(
            "model-location={} results-location=/dev/full",
            fixture("colour.onnx")
        ),
        30,
    );
    let error = outcome.error.expect("a full disk is an error");
    assert!(
        error.contains("frame 0") && error.contains("/dev/full"),
        "{error}"
    );
}

#[test]
fn results_lines_are_on_disk_before_their_buffers_leave_the_element() {
    init();
    let path = std::env::temp_dir().join(format!("instseg-lines-{}.jsonl", std::process::id()));
    let mut h = gst_check::Harness::new_parse(&format!(
        "instseg model-location={} results-location={}",
        fixture("colour.onnx"),
        path.display()
    ));
    h.play();
    let (caps, buffer) = rgb_frame(64, 48, &shapes(64, 48));
    h.set_src_caps(caps);
    for frame in 1..=3 {
        h.push_and_pull(buffer.clone()).expect("a buffer comes out");
        // No EOS and no stop yet: each line is in the file as its buffer comes out.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), frame, "{text}");
    }
    drop(h);
    std::fs::remove_file(&path).unwrap();
}

/// The caps and a zeroed buffer of a `width` x `height` frame in `format` with its standard
/// layout.
fn frame_of(
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
) -> (gst_video::VideoInfo, gst::Buffer) {
    let info = gst_video::VideoInfo::builder(format, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("video info");
    let buffer = gst::Buffer::from_mut_slice(vec![0u8; info.size()]);
    (info, buffer)
}

/// Pushes one buffer through `appsrc ! instseg overlay=<overlay> ! fakesink`.
fn push_one(info: &gst_video::VideoInfo, buffer: gst::Buffer, overlay: &str) -> Outcome {
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time ! instseg model-location={} overlay={overlay} ! fakesink",
        fixture("colour.onnx")
    ))
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let src = pipeline
        .by_name("src")
        .expect("appsrc")
        .downcast::<gst_app::AppSrc>()
        .expect("an appsrc");
    src.set_caps(Some(&info.to_caps().expect("caps")));
    let _ = src.push_buffer(buffer);
    let _ = src.end_of_stream();
    run(pipeline.upcast_ref())
}

#[test]
fn lying_video_metas_are_refused_in_every_format_and_overlay_mode() {
    init();
    let (width, height) = (37, 21);
    for (_, name) in gstinstseg::preprocess::PixelFormat::ALL {
        let format = gst_video::VideoFormat::from_string(name);
        let (info, _) = frame_of(format, width, height);
        let planes = info.n_planes() as usize;
        let offsets = info.offset().to_vec();
        let strides = info.stride().to_vec();
        let size = info.size();
        let mut lies: Vec<(&str, Vec<usize>, Vec<i32>, u32)> = vec![
            (
                "stride 100000",
                offsets.clone(),
                [vec![100000], strides[1..].to_vec()].concat(),
                height,
            ),
            (
                "negative stride",
                offsets.clone(),
                [vec![-strides[0]], strides[1..].to_vec()].concat(),
                height,
            ),
            (
                "stride of one byte",
                offsets.clone(),
                [vec![1], strides[1..].to_vec()].concat(),
                height,
            ),
            (
                "shorter than the caps",
                offsets.clone(),
                strides.clone(),
                height - 1,
            ),
        ];
        let mut past_end = offsets.clone();
        past_end[planes - 1] = size;
        lies.push(("last plane past the end", past_end, strides.clone(), height));
        for overlay in ["none", "auto", "meta", "blend"] {
            for (lie, offsets, strides, meta_height) in &lies {
                let (info, mut buffer) = frame_of(format, width, height);
                gst_video::VideoMeta::add_full(
                    buffer.get_mut().unwrap(),
                    gst_video::VideoFrameFlags::empty(),
                    format,
                    width,
                    *meta_height,
                    offsets,
                    strides,
                )
                .expect("video meta");
                let outcome = push_one(&info, buffer, overlay);
                let error = outcome
                    .error
                    .unwrap_or_else(|| panic!("{name} {overlay} {lie}: accepted"));
                assert!(
                    error.contains("do not fit its memory") && error.contains(name),
                    "{name} {overlay} {lie}: {error}"
                );
            }
            // The same buffer with an honest meta goes through.
            let (info, mut buffer) = frame_of(format, width, height);
            gst_video::VideoMeta::add_from_info(
                buffer.get_mut().unwrap(),
                gst_video::VideoFrameFlags::empty(),
                &info,
            )
            .expect("video meta");
            let outcome = push_one(&info, buffer, overlay);
            assert_eq!(outcome.error, None, "{name} {overlay}: honest meta");
        }
    }
}
