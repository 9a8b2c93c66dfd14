// SPDX-License-Identifier: MIT
//! The visible overlay (docs/metadata.md) on frames of flat coloured shapes, colour model.

mod common;

use common::element::*;
use gst_video::prelude::*;

/// Runs one frame of shapes, converted to `format`, through instseg with `properties`;
/// returns the input frame and the output frame in `format`, and what the meta said.
fn run(format: &str, properties: &str) -> (gst::Buffer, gst::Buffer, MetaResult) {
    init();
    let (width, height) = (96, 96);
    let (caps, rgb) = rgb_frame(width, height, &shapes(width, height));
    let mut convert = gst_check::Harness::new_parse(&format!(
        "videoconvert ! capsfilter caps=video/x-raw,format={format}"
    ));
    convert.set_src_caps(caps);
    let input = convert.push_and_pull(rgb).expect("converted");
    let mut h = gst_check::Harness::new_parse(&format!(
        "instseg model-location={} {properties}",
        fixture("colour.onnx")
    ));
    h.play();
    h.set_src_caps_str(&format!(
        "video/x-raw,format={format},width={width},height={height},framerate=30/1"
    ));
    let output = h
        .push_and_pull(input.copy_deep().expect("copy"))
        .expect("processed");
    let result = MetaResult::read(&output);
    (input, output, result)
}

/// The RGB value of pixel (x, y) of a frame in `format`.
fn pixel(buffer: &gst::Buffer, format: &str, x: u32, y: u32) -> [f64; 3] {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::from_string(format), 96, 96)
        .build()
        .unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).unwrap();
    let stride = |p: usize| frame.plane_stride()[p] as usize;
    let (x, y) = (x as usize, y as usize);
    match format {
        "RGB" => {
            let d = frame.plane_data(0).unwrap();
            let at = y * stride(0) + 3 * x;
            [d[at], d[at + 1], d[at + 2]].map(f64::from)
        }
        "BGRx" => {
            let d = frame.plane_data(0).unwrap();
            let at = y * stride(0) + 4 * x;
            [d[at + 2], d[at + 1], d[at]].map(f64::from)
        }
        "I420" | "NV12" => {
            let luma = f64::from(frame.plane_data(0).unwrap()[y * stride(0) + x]);
            let (u, v) = if format == "I420" {
                let at1 = (y / 2) * stride(1) + x / 2;
                let at2 = (y / 2) * stride(2) + x / 2;
                (
                    frame.plane_data(1).unwrap()[at1],
                    frame.plane_data(2).unwrap()[at2],
                )
            } else {
                let at = (y / 2) * stride(1) + 2 * (x / 2);
                let uv = frame.plane_data(1).unwrap();
                (uv[at], uv[at + 1])
            };
            let (c, d, e) = (luma - 16.0, f64::from(u) - 128.0, f64::from(v) - 128.0);
            [
                1.164 * c + 1.596 * e,
                1.164 * c - 0.392 * d - 0.813 * e,
                1.164 * c + 2.017 * d,
            ]
            .map(|v| v.clamp(0.0, 255.0))
        }
        other => panic!("{other}"),
    }
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn blend_tints_masks_and_leaves_the_rest_of_the_frame_alone() {
    for format in ["RGB", "BGRx", "I420", "NV12"] {
        let (input, output, result) = run(format, "overlay=blend overlay-alpha=0.5");
        assert!(
            gst::meta::CustomMeta::from_buffer(&output, "InstSegMeta").is_ok(),
            "{format}: meta"
        );
        // Well inside each shape: the pixel moves towards its track's colour.
        for (shape, (class_id, _)) in shapes(96, 96).iter().zip(COLOURS) {
            let (cx, cy) = match *shape {
                Shape::Rect { x0, y0, x1, y1 } => ((x0 + x1) / 2, (y0 + y1) / 2 + 2),
                Shape::Disc { cx, cy, .. } => (cx as u32, cy as u32 + 2),
            };
            let instance = result.instance_at(cx, cy, 96, 96).unwrap_or_else(|| {
                panic!("{format}: no instance at the centre of class {class_id}")
            });
            let colour = gstinstseg::overlay::track_colour(instance.track_id).map(f64::from);
            let before = pixel(&input, format, cx, cy);
            let after = pixel(&output, format, cx, cy);
            assert!(
                distance(after, colour) < distance(before, colour) - 10.0,
                "{format}: class {class_id} at ({cx}, {cy}): {before:?} -> {after:?}, colour {colour:?}"
            );
        }
        // Outside every box and label band (up to 2 x 8 rows above the box, as wide as the
        // text at up to 2 x 6 px a character): byte-identical.
        let outside = |x: u32, y: u32| {
            result.instances.iter().all(|i| {
                let [bx, by, bw, bh] = i.bbox;
                let text = format!("{} #{} {:.2}", i.label, i.track_id, i.confidence).len() as u32;
                let in_box = x + 2 >= bx && x <= bx + bw + 2 && y + 2 >= by && y <= by + bh + 2;
                let in_band =
                    x + 2 >= bx && x <= bx + bw.max(12 * text) + 2 && y + 20 >= by && y <= by + 20;
                !in_box && !in_band
            })
        };
        let mut checked = 0;
        for y in (0..96).step_by(2) {
            for x in (0..96).step_by(2) {
                if (0..2).all(|dy| (0..2).all(|dx| outside(x + dx, y + dy))) {
                    assert_eq!(
                        pixel(&input, format, x, y),
                        pixel(&output, format, x, y),
                        "{format} ({x}, {y})"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 50,
            "{format}: only {checked} pixels outside the drawings: {:?}",
            result.instances
        );
    }
}

#[test]
fn meta_mode_leaves_pixels_and_composing_it_matches_blend() {
    let (input, with_meta, _) = run("RGB", "overlay=meta draw-labels=false draw-boxes=false");
    let (_, blended, _) = run("RGB", "overlay=blend draw-labels=false draw-boxes=false");
    let map_in = input.map_readable().unwrap();
    let map_out = with_meta.map_readable().unwrap();
    assert_eq!(
        map_in.as_slice(),
        map_out.as_slice(),
        "overlay=meta must not touch the pixels"
    );
    drop(map_out);

    let composition = with_meta
        .meta::<gst_video::VideoOverlayCompositionMeta>()
        .expect("a composition meta")
        .overlay_owned();
    let mut composed = with_meta.copy_deep().unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 96, 96)
        .build()
        .unwrap();
    {
        let mut frame =
            gst_video::VideoFrameRef::from_buffer_ref_writable(composed.get_mut().unwrap(), &info)
                .unwrap();
        composition.blend(&mut frame).expect("blends");
    }
    // Same colours and alpha, but the composition's label map (64x64 cells here) is scaled
    // to 96x96 by GStreamer and its border cells are opaque, while blend outlines each mask
    // at frame resolution: every mask border (about 6% of this frame) may differ.
    let (a, b) = (
        composed.map_readable().unwrap(),
        blended.map_readable().unwrap(),
    );
    let close = a
        .iter()
        .zip(b.iter())
        .filter(|(a, b)| a.abs_diff(**b) <= 24)
        .count();
    assert!(
        close as f64 >= 0.9 * a.len() as f64,
        "{close} of {} bytes within 24",
        a.len()
    );
}

#[test]
fn auto_blends_without_a_composing_sink() {
    let (input, output, _) = run("RGB", "overlay=auto");
    assert_ne!(
        input.map_readable().unwrap().as_slice(),
        output.map_readable().unwrap().as_slice()
    );
    assert!(
        output
            .meta::<gst_video::VideoOverlayCompositionMeta>()
            .is_none()
    );
}

#[test]
fn overlay_none_changes_nothing() {
    let (input, output, _) = run("NV12", "overlay=none");
    assert_eq!(
        input.map_readable().unwrap().as_slice(),
        output.map_readable().unwrap().as_slice()
    );
}

#[test]
fn auto_attaches_the_meta_when_downstream_composes_overlays() {
    init();
    let (caps, input) = rgb_frame(96, 96, &shapes(96, 96));
    let mut h = gst_check::Harness::new_parse(&format!(
        "instseg model-location={}",
        fixture("colour.onnx")
    ));
    // The harness's sink answers allocation queries as a composing video sink would.
    h.add_propose_allocation_meta(gst_video::VideoOverlayCompositionMeta::meta_api(), None);
    h.play();
    h.set_src_caps(caps);
    let output = h
        .push_and_pull(input.copy_deep().unwrap())
        .expect("processed");
    assert!(
        output
            .meta::<gst_video::VideoOverlayCompositionMeta>()
            .is_some()
    );
    assert_eq!(
        input.map_readable().unwrap().as_slice(),
        output.map_readable().unwrap().as_slice()
    );
}

#[test]
fn carried_frames_reuse_the_composition_until_the_style_changes() {
    init();
    let mut h = gst_check::Harness::new_parse(&format!(
        "instseg model-location={} overlay=meta inference-interval=3",
        fixture("colour.onnx")
    ));
    h.play();
    let instseg = instseg_of(&h);
    let mut push = || {
        let (caps, input) = rgb_frame(96, 96, &shapes(96, 96));
        h.set_src_caps(caps);
        let output = h.push_and_pull(input).expect("processed");
        let composition = output
            .meta::<gst_video::VideoOverlayCompositionMeta>()
            .expect("a composition meta")
            .overlay_owned();
        (composition.seqnum(), composition.n_rectangles())
    };
    let inferred = push();
    let carried = push();
    assert_eq!(carried, inferred, "the inferred frame's composition, again");
    assert!(inferred.1 > 1, "mask, boxes and labels: {inferred:?}");

    instseg.set_property("draw-labels", false);
    let restyled = push();
    assert_ne!(restyled.0, inferred.0, "drawn again in the new style");
    assert!(restyled.1 < inferred.1, "{restyled:?} against {inferred:?}");
}
