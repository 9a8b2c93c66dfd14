// SPDX-License-Identifier: MIT
//! The `instseg` element in real pipelines, with the colour fixture model (embedding = 4 x RGB,
//! class = dominant colour) on frames of flat red, green and blue shapes.

mod common;

use std::collections::BTreeSet;

use common::element::*;
use gst::prelude::*;

/// A harness converting RGB frames to `format` before `instseg`.
fn harness(format: &str, properties: &str) -> gst_check::Harness {
    init();
    let mut h = gst_check::Harness::new_parse(&format!(
        "videoconvert ! video/x-raw,format={format} ! instseg model-location={} {properties}",
        fixture("colour.onnx")
    ));
    h.play();
    h
}

fn push_shapes(
    h: &mut gst_check::Harness,
    width: u32,
    height: u32,
    shapes: &[Shape; 3],
) -> MetaResult {
    let (caps, buffer) = rgb_frame(width, height, shapes);
    h.set_src_caps(caps);
    let out = h.push_and_pull(buffer).expect("a buffer comes out");
    MetaResult::read(&out)
}

#[test]
fn masks_match_the_drawn_shapes_in_every_format() {
    const RGB_FAMILY: [&str; 10] = [
        "RGB", "BGR", "RGBA", "BGRA", "RGBx", "BGRx", "xRGB", "xBGR", "ARGB", "ABGR",
    ];
    let (width, height) = (64, 64);
    let drawn = shapes(width, height);
    for format in RGB_FAMILY.iter().chain(&["I420", "NV12"]) {
        let mut h = harness(format, "");
        let result = push_shapes(&mut h, width, height, &drawn);
        let ious = best_ious(&result, &drawn, width, height);
        // 4:2:0 chroma is shared by 2x2 pixels: the colour of the one-pixel ring at each
        // shape's edge is blurred and may go either way. For the 24 px square that ring alone
        // is 1 - 24^2 / 26^2 = 15% of the union, so YUV masks are held to 0.8.
        let bound = if RGB_FAMILY.contains(format) {
            0.95
        } else {
            0.8
        };
        for (iou, (class_id, _)) in ious.iter().zip(COLOURS) {
            assert!(
                *iou >= bound,
                "{format}: class {class_id} IoU {iou:.3} < {bound}"
            );
        }
        let labels: BTreeSet<&str> = result.instances.iter().map(|i| i.label.as_str()).collect();
        assert!(
            labels.is_superset(&BTreeSet::from(["red", "green", "blue"])),
            "{format}: {labels:?}"
        );
    }
}

#[test]
fn odd_sizes_are_letterboxed_and_mapped_back() {
    // 321x241 goes into the 64x64 model as 64x48 (letterbox): each label-map cell covers about
    // 5x5 frame pixels, so shape edges are off by up to half a cell (2.5 px): for shapes 60 to
    // 240 px wide that bounds the IoU loss to about 15%.
    let (width, height) = (321, 241);
    let drawn = shapes(width, height);
    for format in ["RGB", "BGRx", "I420", "NV12"] {
        let mut h = harness(format, "");
        let result = push_shapes(&mut h, width, height, &drawn);
        assert_eq!(result.rect, [0, 0, width as i32, height as i32]);
        assert_eq!((result.mask_width, result.mask_height), (64, 48));
        for (iou, (class_id, _)) in best_ious(&result, &drawn, width, height)
            .iter()
            .zip(COLOURS)
        {
            assert!(
                *iou >= 0.85,
                "{format} {width}x{height}: class {class_id} IoU {iou:.3}"
            );
        }
        for instance in &result.instances {
            let [x, y, w, h] = instance.bbox;
            assert!(x + w <= width && y + h <= height, "{instance:?}");
        }
    }
}

#[test]
fn padded_strides_are_honoured() {
    init();
    let (width, height) = (50, 40);
    let drawn = shapes(width, height);
    let stride = 3 * width as usize + 37;
    let mut buffer = draw_rgb(width, height, stride, &drawn);
    {
        let buffer = buffer.get_mut().expect("writable");
        gst_video::VideoMeta::add_full(
            buffer,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Rgb,
            width,
            height,
            &[0],
            &[stride as i32],
        )
        .expect("video meta");
    }
    let mut h = gst_check::Harness::new_parse(&format!(
        "instseg model-location={}",
        fixture("colour.onnx")
    ));
    h.play();
    h.set_src_caps_str(&format!(
        "video/x-raw,format=RGB,width={width},height={height},framerate=30/1"
    ));
    let out = h.push_and_pull(buffer).expect("a buffer comes out");
    let result = MetaResult::read(&out);
    for (iou, (class_id, _)) in best_ious(&result, &drawn, width, height)
        .iter()
        .zip(COLOURS)
    {
        assert!(*iou >= 0.8, "class {class_id} IoU {iou:.3}");
    }
}

#[test]
fn identities_persist_while_shapes_move_and_reset_on_flush_and_caps_change() {
    let (width, height) = (64, 64);
    let mut h = harness("RGB", "");
    let ids_of = |result: &MetaResult| -> Vec<u64> {
        COLOURS
            .iter()
            .map(|(class_id, _)| {
                result
                    .instances
                    .iter()
                    .filter(|i| i.class_id == *class_id)
                    .max_by_key(|i| i.area)
                    .map(|i| i.track_id)
                    .expect("each colour is found")
            })
            .collect()
    };
    let mut first = None;
    for step in 0..8 {
        let moved = shapes(width, height).map(|s| s.shifted(step as f32, (step % 3) as f32));
        let ids = ids_of(&push_shapes(&mut h, width, height, &moved));
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "{ids:?}");
        match &first {
            None => first = Some(ids),
            Some(first) => assert_eq!(&ids, first, "step {step}"),
        }
    }
    let first = first.expect("frames ran");

    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
        gst::ClockTime,
    >::new()));
    let after_flush = ids_of(&push_shapes(&mut h, width, height, &shapes(width, height)));
    assert!(
        after_flush
            .iter()
            .all(|id| id > first.iter().max().unwrap()),
        "{after_flush:?}"
    );

    let after_caps = ids_of(&push_shapes(&mut h, 80, 64, &shapes(80, 64)));
    assert!(
        after_caps
            .iter()
            .all(|id| id > after_flush.iter().max().unwrap()),
        "{after_caps:?}"
    );
}

#[test]
fn stats_and_active_provider_are_reported() {
    let mut h = harness("RGB", "");
    for _ in 0..3 {
        push_shapes(&mut h, 64, 64, &shapes(64, 64));
    }
    let element = instseg_of(&h);
    let stats = element.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames").unwrap(), 3);
    for field in [
        "preprocess-ms",
        "inference-ms",
        "postprocess-ms",
        "metadata-ms",
    ] {
        assert!(stats.get::<f64>(field).unwrap() > 0.0, "{stats}");
    }
    assert_eq!(
        element
            .property::<Option<String>>("active-execution-provider")
            .as_deref(),
        Some("cpu")
    );
}

#[test]
fn roi_metas_mirror_the_instances() {
    let mut h = harness("RGB", "");
    let (caps, buffer) = rgb_frame(64, 64, &shapes(64, 64));
    h.set_src_caps(caps);
    let out = h.push_and_pull(buffer).unwrap();
    let result = MetaResult::read(&out);
    let rois: Vec<_> = out
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .collect();
    assert_eq!(rois.len(), result.instances.len());
    for (roi, instance) in rois.iter().zip(&result.instances) {
        assert_eq!(roi.roi_type(), instance.label);
        let (x, y, w, h) = roi.rect();
        assert_eq!([x, y, w, h], instance.bbox);
        let param = roi.param("instance").expect("instance param");
        assert_eq!(param.get::<u64>("track-id").unwrap(), instance.track_id);
        assert_eq!(param.get::<u32>("class-id").unwrap(), instance.class_id);
    }
}

/// Runs `videotestsrc ! instseg <properties> ! fakesink` and returns the error, if any.
fn run_pipeline(properties: &str) -> Option<String> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=64 ! instseg {properties} ! fakesink"
    ))
    .expect("pipeline");
    pipeline.set_state(gst::State::Playing).ok();
    let error = wait_for_end(&pipeline);
    pipeline.set_state(gst::State::Null).expect("to NULL");
    error
}

#[test]
fn bad_models_are_clear_errors_on_the_bus() {
    let cases = [
        (
            "/nonexistent/model.onnx".to_string(),
            "/nonexistent/model.onnx",
        ),
        (fixture("not_a_model.onnx"), "not_a_model.onnx"),
        (fixture("broken_missing_embedding.onnx"), "embedding"),
        (fixture("broken_missing_classes.onnx"), "classes"),
        (fixture("broken_embedding_rank.onnx"), "embedding"),
        (fixture("broken_thresholds.onnx"), "thresholds"),
        (fixture("broken_labels.onnx"), "labels"),
        (fixture("broken_grid_mismatch.onnx"), "embedding"),
        (fixture("broken_two_inputs.onnx"), "input"),
        (fixture("broken_input_channels.onnx"), "3"),
    ];
    for (model, expected) in cases {
        let error = run_pipeline(&format!("model-location={model}"))
            .unwrap_or_else(|| panic!("{model} was accepted"));
        assert!(error.contains(expected), "{model}: {error}");
        if model.contains("broken") {
            let file = std::path::Path::new(&model)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            assert!(error.contains(file), "{model}: {error}");
        }
    }
}

#[test]
fn explicit_cuda_without_a_gpu_is_an_error_and_auto_falls_back() {
    let error = run_pipeline(&format!(
        "model-location={} execution-provider=cuda",
        fixture("colour.onnx")
    ))
    .expect("cuda cannot start here");
    assert!(error.to_lowercase().contains("cuda"), "{error}");
    assert_eq!(
        run_pipeline(&format!(
            "model-location={} execution-provider=auto",
            fixture("colour.onnx")
        )),
        None
    );
}

/// The embedded default model (`models/default.onnx`, trained on procedural shapes) finds the
/// drawn square and disc, with their classes and most of their masks, without configuration.
#[test]
fn the_embedded_model_finds_shapes_without_configuration() {
    init();
    let mut h = gst_check::Harness::new_parse("videoconvert ! instseg");
    h.play();
    let (width, height) = (320, 240);
    // The model's squares have equal sides: the fixture's first shape, a 1.3:1 rectangle in a
    // 4:3 frame, is not one of its classes, so a 90-pixel square takes its place.
    let [_, disc, bar] = shapes(width, height);
    let square = Shape::Rect {
        x0: 29,
        y0: 21,
        x1: 119,
        y1: 111,
    };
    let drawn = [square, disc, bar];
    let result = push_shapes(&mut h, width, height, &drawn);
    for (shape, label) in drawn.iter().zip(["square", "circle"]) {
        let truth = truth_mask(shape, width, height);
        let (best, found) = result
            .instances
            .iter()
            .map(|i| (iou(&result.frame_mask(i.region, width, height), &truth), i))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("instances found");
        // Flat shapes on plain black are unlike the noisy, cluttered training images: the model
        // can split the large disc into a confident instance and a smaller one.
        assert!(best >= 0.6, "{label}: best IoU {best:.3} ({result:?})");
        assert_eq!(found.label, label, "{result:?}");
    }
}

fn in_child_process() -> bool {
    std::env::var_os("INSTSEG_CHILD").is_some()
}

/// Runs the test `name` alone in a child process of this test binary (with `env` set), asserts
/// that it passed and returns its standard output.
fn run_in_child_process(name: &str, env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env("INSTSEG_CHILD", "1")
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The runtime loads once per process: the missing-library case runs in a child process.
#[test]
fn a_missing_onnx_runtime_is_a_clear_error() {
    if in_child_process() {
        let error = run_pipeline("").expect("no runtime, no start");
        println!("CHILD-ERROR: {}", error.replace('\n', " "));
        return;
    }
    let stdout = run_in_child_process(
        "a_missing_onnx_runtime_is_a_clear_error",
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("CHILD-ERROR"))
        .expect("the child reports");
    assert!(line.contains("/nonexistent/libonnxruntime.so"), "{line}");
}

/// Resident memory is process-wide, so this runs alone in a child process: tests running
/// beside it in other threads (loading models, say) would otherwise count against it.
#[test]
fn repeated_state_cycles_and_long_runs_do_not_grow_memory() {
    if !in_child_process() {
        run_in_child_process(
            "repeated_state_cycles_and_long_runs_do_not_grow_memory",
            &[],
        );
        return;
    }
    init();
    let cycle = || {
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=64 ! instseg model-location={} ! fakesink",
            fixture("colour.onnx")
        ))
        .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        assert_eq!(wait_for_end(&pipeline), None);
        pipeline.set_state(gst::State::Null).unwrap();
    };
    for _ in 0..10 {
        cycle();
    }
    let before = resident_kib();
    for _ in 0..50 {
        cycle();
    }
    let after_cycles = resident_kib();
    assert!(
        after_cycles < before + 8 * 1024,
        "50 cycles: {before} KiB -> {after_cycles} KiB"
    );

    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=2000 pattern=ball ! video/x-raw,width=64,height=64 ! instseg model-location={} ! fakesink name=sink signal-handoffs=true",
        fixture("colour.onnx")
    ))
    .unwrap();
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap();
    let recorded = samples.clone();
    sink.connect("handoff", false, move |_| {
        let mut samples = recorded.lock().unwrap();
        let count = samples.len();
        samples.push(if count % 100 == 0 { resident_kib() } else { 0 });
        None
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    assert_eq!(wait_for_end(&pipeline), None);
    pipeline.set_state(gst::State::Null).unwrap();
    let samples = samples.lock().unwrap();
    assert_eq!(samples.len(), 2000);
    let (early, late) = (samples[200], samples[1900]);
    assert!(
        late < early + 4 * 1024,
        "2000 frames: {early} KiB at 200 -> {late} KiB at 1900"
    );
}

#[test]
fn tiny_frames_still_get_a_result() {
    for (width, height) in [(1, 1), (3, 2), (2, 97)] {
        for format in ["RGB", "I420", "NV12"] {
            let mut h = harness(format, "");
            let result = push_shapes(&mut h, width, height, &shapes(width, height));
            assert_eq!(
                result.rect,
                [0, 0, width as i32, height as i32],
                "{format} {width}x{height}"
            );
            assert!(result.mask_width >= 1 && result.mask_height >= 1);
        }
    }
}

/// Three bands of red, bright to dark (colour model: embedding 4 x RGB, tau 0.5 holds
/// squared distances up to ln 3): the middle band lies in the masks of both outer bands,
/// nearer to the dark band's seed, while the bright band's seed is the more confident.
#[test]
fn overlaps_go_to_the_nearest_seed_or_to_the_most_confident_instance() {
    init();
    let (width, height) = (64u32, 64u32);
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("valid video info");
    let stride = info.stride()[0] as usize;
    let mut data = vec![0u8; stride * height as usize];
    for (rows, red) in [(0..16, 255), (16..32, 190), (32..48, 145)] {
        for y in rows {
            for x in 0..width as usize {
                data[y * stride + 3 * x] = red;
            }
        }
    }
    // `overlaps`: the override's entry, empty for the model's own choice.
    let owner_of_middle_band = |overlaps: &str| {
        let mut h = gst_check::Harness::new_parse(&format!(
            "instseg model-location={} overrides=\"overrides,alpha=0.0,min-area=1{overlaps}\"",
            fixture("colour.onnx")
        ));
        h.play();
        h.set_src_caps(info.to_caps().expect("caps"));
        let out = h
            .push_and_pull(gst::Buffer::from_slice(data.clone()))
            .expect("a buffer comes out");
        let result = MetaResult::read(&out);
        assert_eq!(result.instances.len(), 2, "{overlaps}: {result:?}");
        let seed_row = |x, y| result.instance_at(x, y, width, height).map(|i| i.seed[1]);
        (seed_row(5, 5), seed_row(5, 24), seed_row(5, 40))
    };
    let (bright, middle, dark) = owner_of_middle_band(",overlaps=nearest");
    assert!(bright.is_some() && dark.is_some() && bright != dark);
    assert_eq!(middle, dark);
    // The colour model recommends nothing: the paper's nearest seed.
    assert_eq!(owner_of_middle_band(""), (bright, middle, dark));
    assert_eq!(
        owner_of_middle_band(",overlaps=confident"),
        (bright, bright, dark)
    );
}

/// GLib checks each value against the property's range; the bindings turn a refusal into a
/// panic, which this test catches.
#[test]
fn bad_property_values_are_refused_and_leave_the_setting_alone() {
    init();
    let element = gst::ElementFactory::make("instseg")
        .build()
        .expect("instseg exists");
    for (name, value) in [
        ("max-instances", 0u32.to_value()),
        ("max-instances", 256u32.to_value()),
        ("seed-threshold", 2.0f64.to_value()),
        ("overlay-alpha", 1.5f64.to_value()),
        ("inference-interval", 0u32.to_value()),
    ] {
        let before = element.property_value(name);
        let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            element.set_property_from_value(name, &value)
        }));
        assert!(set.is_err(), "{name} = {value:?} was accepted");
        assert_eq!(
            format!("{:?}", element.property_value(name)),
            format!("{before:?}"),
            "{name}"
        );
    }
    let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        element.set_property_from_str("execution-provider", "gpu")
    }));
    assert!(set.is_err(), "execution-provider=gpu was accepted");
    element.set_property_from_str("execution-provider", "cpu");
    assert_eq!(
        element.property::<gstinstseg::ExecutionProvider>("execution-provider"),
        gstinstseg::ExecutionProvider::Cpu
    );
}

fn carried(buffer: &gst::BufferRef) -> bool {
    gst::meta::CustomMeta::from_buffer(buffer, "InstSegMeta")
        .expect("meta")
        .structure()
        .get::<bool>("carried")
        .expect("carried")
}

#[test]
fn inference_interval_carries_the_last_result_between_inferences() {
    let (width, height) = (64, 64);
    let mut h = harness("RGB", "inference-interval=3");
    let mut seen = Vec::new();
    for step in 0..7 {
        let moved = shapes(width, height).map(|s| s.shifted(step as f32, 0.0));
        let (caps, buffer) = rgb_frame(width, height, &moved);
        h.set_src_caps(caps);
        let out = h.push_and_pull(buffer).expect("a buffer comes out");
        seen.push((carried(&out), MetaResult::read(&out)));
    }
    let flags: Vec<bool> = seen.iter().map(|(c, _)| *c).collect();
    assert_eq!(flags, [false, true, true, false, true, true, false]);
    for (index, (is_carried, result)) in seen.iter().enumerate() {
        if *is_carried {
            let inferred = &seen[index - index % 3].1;
            assert_eq!(result.labels, inferred.labels, "frame {index}");
            let ids = |r: &MetaResult| r.instances.iter().map(|i| i.track_id).collect::<Vec<_>>();
            assert_eq!(ids(result), ids(inferred), "frame {index}");
        }
    }
    let stats = instseg_of(&h).property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("inferred").unwrap(), 3);
    assert_eq!(stats.get::<u64>("carried").unwrap(), 4);
}

#[test]
fn late_frames_skip_inference_instead_of_being_dropped() {
    let (width, height) = (64, 64);
    // No videoconvert in front: as a GstVideoFilter it would drop late buffers itself.
    init();
    let mut h = gst_check::Harness::new_parse(&format!(
        "instseg model-location={}",
        fixture("colour.onnx")
    ));
    h.play();
    let frame = |index: u64| {
        let (caps, mut buffer) = rgb_frame(width, height, &shapes(width, height));
        let buffer_ref = buffer.get_mut().unwrap();
        buffer_ref.set_pts(gst::ClockTime::from_mseconds(40 * index));
        buffer_ref.set_duration(gst::ClockTime::from_mseconds(40));
        (caps, buffer)
    };
    let (caps, first) = frame(0);
    h.set_src_caps(caps);
    assert!(!carried(&h.push_and_pull(first).unwrap()));
    // Downstream: the frame at 40 ms was 1 s late, so everything before about 2 s is late.
    assert!(h.push_upstream_event(gst::event::Qos::new(
        gst::QOSType::Underflow,
        0.5,
        1_000_000_000,
        gst::ClockTime::from_mseconds(40),
    )));
    let mut flags = Vec::new();
    for index in 1..4 {
        flags.push(carried(
            &h.push_and_pull(frame(index).1).expect("not dropped"),
        ));
    }
    assert_eq!(flags, [true, true, true]);
    let (_, on_time) = frame(100);
    assert!(!carried(&h.push_and_pull(on_time).unwrap()));
}

/// The `overrides` property replaces the model's metadata for this element only, checked at
/// start as the file's values are.
#[test]
fn overrides_replace_the_models_metadata() {
    let mut h = harness(
        "RGB",
        "overrides=\"overrides,labels=(string)\\\"rot,gruen,blau\\\"\"",
    );
    let (width, height) = (64, 64);
    let result = push_shapes(&mut h, width, height, &shapes(width, height));
    let labels: BTreeSet<&str> = result.instances.iter().map(|i| i.label.as_str()).collect();
    assert_eq!(labels, BTreeSet::from(["rot", "gruen", "blau"]));

    let error = run_pipeline(&format!(
        "model-location={} overrides=\"overrides,min-area=5000\"",
        fixture("colour.onnx")
    ))
    .expect("refused");
    assert!(
        error.contains("instseg.min-area 5000 is more than the 4096 cells"),
        "{error}"
    );
    let error = run_pipeline(&format!(
        "model-location={} overrides=\"overrides,alhpa=0.3\"",
        fixture("colour.onnx")
    ))
    .expect("refused");
    assert!(error.contains("override \"alhpa\" is not a key"), "{error}");
}

/// A real file: an H.264 MP4 (`tests/fixtures/red_ball_h264.mp4`, 30 frames of a red ball on
/// black, made with x264enc) decoded by decodebin (gstreamer1.0-libav) and segmented.
#[test]
fn an_h264_clip_is_decoded_and_segmented() {
    init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! instseg model-location={} ! \
         appsink name=sink sync=false",
        fixture("red_ball_h264.mp4"),
        fixture("colour.onnx")
    ))
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .expect("appsink")
        .downcast::<gst_app::AppSink>()
        .expect("an appsink");
    pipeline.set_state(gst::State::Playing).expect("playing");
    let mut frames = 0;
    let mut with_ball = 0;
    while let Ok(sample) = sink.pull_sample() {
        let result = MetaResult::read(sample.buffer().expect("a buffer"));
        frames += 1;
        if result.instances.iter().any(|i| i.label == "red") {
            with_ball += 1;
        }
    }
    pipeline.set_state(gst::State::Null).expect("to NULL");
    assert_eq!(frames, 30);
    assert!(
        with_ball >= 28,
        "the ball was found on {with_ball} of 30 frames"
    );
}
