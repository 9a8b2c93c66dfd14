// SPDX-License-Identifier: MIT
//! The `analytics` feature against GStreamer >= 1.26 (scripts/build-gstreamer.sh): the
//! GstAnalytics relation meta says what `InstSegMeta` says, instance for instance, upstream's
//! `segmentationoverlay` and `objectdetectionoverlay` draw it, `ioutracker` tracks its boxes,
//! and a PyGObject reader gets the same as the Rust one.
#![cfg(feature = "analytics")]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::element::*;
use gstinstseg::analytics::{self, AnalyticsFrame};

const WIDTH: u32 = 160;
const HEIGHT: u32 = 120;
/// 25 fps: frame k has PTS k * 40 ms.
const FRAME_NS: u64 = 40_000_000;

/// Frame `k` of the clip: the three shapes moving right and down by 2 pixels a frame, with
/// PTS k * 40 ms.
fn frame(k: u32) -> (gst::Caps, gst::Buffer) {
    let moved = shapes(WIDTH, HEIGHT).map(|s| s.shifted(2.0 * k as f32, k as f32));
    let (caps, mut buffer) = rgb_frame(WIDTH, HEIGHT, &moved);
    let buf = buffer.get_mut().expect("fresh buffer");
    buf.set_pts(gst::ClockTime::from_nseconds(u64::from(k) * FRAME_NS));
    buf.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
    (caps, buffer)
}

/// Runs `frames` frames through `pipeline` (a gst-launch description whose first element
/// takes RGB), returning the output buffers.
fn run(pipeline: &str, frames: u32) -> Vec<gst::Buffer> {
    init();
    let mut h = gst_check::Harness::new_parse(pipeline);
    h.play();
    h.set_src_caps(frame(0).0);
    (0..frames)
        .map(|k| h.push_and_pull(frame(k).1).expect("a frame comes out"))
        .collect()
}

/// Drops the small fragments the colour model finds on the shapes' rims: one instance per
/// shape.
const SHAPES_ONLY: &str = "overrides=o,min-area=150";

fn instseg(properties: &str) -> String {
    format!(
        "instseg model-location={} overlay=none {properties}",
        fixture("colour.onnx")
    )
}

/// Checks that the analytics meta of `buffer` says what its `InstSegMeta` says.
fn assert_same(buffer: &gst::BufferRef, frame: usize) -> (MetaResult, AnalyticsFrame) {
    let meta = MetaResult::read(buffer);
    let analytics = analytics::read(buffer).expect("the buffer carries the analytics meta");
    assert_eq!(
        (analytics.mask_width, analytics.mask_height),
        (meta.mask_width, meta.mask_height),
        "frame {frame}"
    );
    let rect = analytics.rect;
    assert_eq!(
        [rect.x, rect.y, rect.width as i32, rect.height as i32],
        meta.rect,
        "frame {frame}"
    );
    assert_eq!(analytics.mask, meta.labels, "frame {frame}: the label maps");
    let regions: Vec<u32> = std::iter::once(0)
        .chain(meta.instances.iter().map(|i| i.region))
        .collect();
    assert_eq!(analytics.region_ids, regions, "frame {frame}");
    assert_eq!(
        analytics.instances.len(),
        meta.instances.len(),
        "frame {frame}"
    );
    assert_eq!(analytics.classes.len(), meta.instances.len() + 1);
    assert_eq!(analytics.classes[0], ("background".to_string(), -1.0));
    for ((ours, theirs), class) in meta
        .instances
        .iter()
        .zip(&analytics.instances)
        .zip(&analytics.classes[1..])
    {
        assert_eq!(theirs.region, ours.region, "frame {frame}");
        assert_eq!(theirs.label, ours.label, "frame {frame}");
        assert_eq!(theirs.confidence, ours.confidence as f32, "frame {frame}");
        assert_eq!(theirs.bbox, ours.bbox.map(|v| v as i32), "frame {frame}");
        assert_eq!(class, &(ours.label.clone(), ours.confidence as f32));
    }
    (meta, analytics)
}

#[test]
fn analytics_meta_agrees_with_instseg_meta_instance_for_instance() {
    let outputs = run(&instseg(""), 8);
    // Track id -> PTS of the first frame it was seen in.
    let mut first_seen: HashMap<u64, u64> = HashMap::new();
    let mut instances = 0;
    for (k, buffer) in outputs.iter().enumerate() {
        let (meta, analytics) = assert_same(buffer, k);
        let pts = k as u64 * FRAME_NS;
        for (ours, theirs) in meta.instances.iter().zip(&analytics.instances) {
            let track = theirs.track().expect("a tracking Mtd per instance");
            assert_eq!(track.id, ours.track_id, "frame {k}");
            let first = *first_seen.entry(track.id).or_insert(pts);
            assert_eq!(track.first_seen.map(|t| t.nseconds()), Some(first));
            assert_eq!(track.last_seen.map(|t| t.nseconds()), Some(pts));
            assert!(!track.lost);
            instances += 1;
        }
    }
    // The colour model also finds small fragments on the shapes' rims; the three shapes
    // themselves keep ids 1, 2, 3, first seen on frame 0.
    assert!(instances >= 3 * 8, "{instances} instances");
    for (k, buffer) in outputs.iter().enumerate() {
        let meta = MetaResult::read(buffer);
        let mut large: Vec<u64> = meta
            .instances
            .iter()
            .filter(|i| i.area > 200)
            .map(|i| i.track_id)
            .collect();
        large.sort();
        assert_eq!(large, [1, 2, 3], "frame {k}");
    }
    assert!(
        [1, 2, 3].iter().all(|id| first_seen[id] == 0),
        "{first_seen:?}"
    );
}

#[test]
fn carried_frames_repeat_the_last_observation() {
    let outputs = run(&instseg("inference-interval=2"), 6);
    let mut first_seen: HashMap<u64, u64> = HashMap::new();
    for (k, buffer) in outputs.iter().enumerate() {
        let (meta, analytics) = assert_same(buffer, k);
        assert!(!meta.instances.is_empty());
        // Frames 1, 3, 5 repeat frames 0, 2, 4: last seen is the inferred frame's PTS.
        let inferred = (k as u64 / 2) * 2 * FRAME_NS;
        for (ours, theirs) in meta.instances.iter().zip(&analytics.instances) {
            let track = theirs.track().expect("a tracking Mtd");
            assert_eq!(track.id, ours.track_id);
            let first = *first_seen.entry(track.id).or_insert(inferred);
            assert_eq!(track.first_seen.map(|t| t.nseconds()), Some(first));
            assert_eq!(track.last_seen.map(|t| t.nseconds()), Some(inferred));
        }
    }
}

#[test]
fn tracking_off_attaches_no_tracking_mtd() {
    let outputs = run(&instseg("tracking=false"), 3);
    for (k, buffer) in outputs.iter().enumerate() {
        let (meta, analytics) = assert_same(buffer, k);
        assert!(!meta.instances.is_empty());
        assert!(analytics.instances.iter().all(|i| i.track().is_none()));
    }
}

#[test]
fn a_buffer_keeps_its_upstream_relation_meta() {
    // Another element's Mtds on the incoming buffer stay; ours join the same meta.
    init();
    let mut h = gst_check::Harness::new_parse(&instseg(""));
    h.play();
    let (caps, mut buffer) = frame(0);
    h.set_src_caps(caps);
    {
        use gst_analytics::prelude::*;
        let buf = buffer.get_mut().unwrap();
        let mut meta = gst_analytics::AnalyticsRelationMeta::add(buf);
        meta.add_one_cls_mtd(0.5, gst::glib::Quark::from_str("scene"))
            .unwrap();
    }
    let output = h.push_and_pull(buffer).unwrap();
    assert_eq!(
        output
            .iter_meta::<gst_analytics::AnalyticsRelationMeta>()
            .count(),
        1
    );
    let (meta, _) = assert_same(&output, 0);
    let relation = output
        .meta::<gst_analytics::AnalyticsRelationMeta>()
        .unwrap();
    // The upstream Mtd, then segmentation + classification + 2 per instance.
    assert_eq!(relation.len(), 1 + 2 + 2 * meta.instances.len());
}

/// Pixels (x, y) of two RGB frames that differ.
fn changed(a: &gst::Buffer, b: &gst::Buffer) -> Vec<bool> {
    let stride = (3 * WIDTH as usize).next_multiple_of(4);
    let (a, b) = (a.map_readable().unwrap(), b.map_readable().unwrap());
    (0..HEIGHT as usize)
        .flat_map(|y| (0..WIDTH as usize).map(move |x| (y, x)))
        .map(|(y, x)| {
            let at = y * stride + 3 * x;
            a[at..at + 3] != b[at..at + 3]
        })
        .collect()
}

#[test]
fn upstream_overlays_draw_our_masks_and_boxes() {
    let frames = 3;
    let instseg = || instseg(SHAPES_ONLY);
    let plain = run(&instseg(), frames);
    let segmentation = run(&format!("{} ! segmentationoverlay", instseg()), frames);
    let boxes = run(
        &format!(
            "{} ! objectdetectionoverlay draw-labels=false draw-tracking-labels=false",
            instseg()
        ),
        frames,
    );
    let both = run(
        &format!(
            "{} ! segmentationoverlay ! objectdetectionoverlay",
            instseg()
        ),
        frames,
    );
    for k in 0..frames as usize {
        let meta = MetaResult::read(&plain[k]);
        assert_eq!(meta.instances.len(), 3, "frame {k}");
        let mut in_mask = vec![false; (WIDTH * HEIGHT) as usize];
        for instance in &meta.instances {
            let mask = meta.frame_mask(instance.region, WIDTH, HEIGHT);
            in_mask.iter_mut().zip(mask).for_each(|(a, m)| *a |= m);
        }
        let mask_pixels = in_mask.iter().filter(|&&m| m).count();
        assert!(mask_pixels > 1000, "{mask_pixels}");

        // segmentationoverlay tints the masks and nothing else. Its colours come from the
        // region id (hue 0, red, for region 1): a tint is invisible where it has the shape's
        // own colour, so the red square may stay red. And it draws each band of frame rows
        // that samples mask row k >= 1 from mask row k - 1 (gst_segmentation_overlay_resampling
        // in 1.29.2.1 reads the row pointer of the previous canvas row): our label map, drawn
        // one cell lower, is what it shows.
        let tinted = changed(&plain[k], &segmentation[k]);
        let drawn = |region: u32| -> Vec<bool> {
            let [rx, ry, rw, rh] = meta.rect.map(|v| v as u32);
            (0..HEIGHT)
                .flat_map(|y| (0..WIDTH).map(move |x| (x, y)))
                .map(|(x, y)| {
                    if x < rx || y < ry || x >= rx + rw || y >= ry + rh {
                        return false;
                    }
                    let gx = (x - rx) * meta.mask_width / rw;
                    let gy = ((y - ry) * meta.mask_height / rh).saturating_sub(1);
                    u32::from(meta.labels[(gy * meta.mask_width + gx) as usize]) == region
                })
                .collect()
        };
        let mut anywhere = vec![false; tinted.len()];
        for instance in &meta.instances {
            let mask = drawn(instance.region);
            let pixels = mask.iter().filter(|&&m| m).count();
            let tinted = tinted.iter().zip(&mask).filter(|(t, m)| **t && **m).count();
            if instance.label != "red" {
                assert!(
                    tinted as f64 >= 0.99 * pixels as f64,
                    "frame {k}: {instance:?}: {tinted} of {pixels} pixels tinted"
                );
            }
            anywhere.iter_mut().zip(&mask).for_each(|(a, m)| *a |= m);
        }
        let outside = tinted
            .iter()
            .zip(&anywhere)
            .filter(|(t, m)| **t && !**m)
            .count();
        assert_eq!(
            outside, 0,
            "frame {k}: pixels outside the drawn masks changed"
        );
        let in_mask_tinted = tinted
            .iter()
            .zip(&in_mask)
            .filter(|(t, m)| **t && **m)
            .count();
        assert!(in_mask_tinted as f64 >= 0.5 * mask_pixels as f64);

        // objectdetectionoverlay draws each box's outline: its edges change, pixels well
        // away from every box do not.
        let outlined = changed(&plain[k], &boxes[k]);
        for instance in &meta.instances {
            let [x, y, w, h] = instance.bbox;
            let edge: Vec<(u32, u32)> = (x..x + w)
                .flat_map(|px| [(px, y), (px, y + h - 1)])
                .chain((y..y + h).flat_map(|py| [(x, py), (x + w - 1, py)]))
                .collect();
            let drawn = edge
                .iter()
                .filter(|&&(px, py)| outlined[(py * WIDTH + px) as usize])
                .count();
            assert!(
                drawn as f64 >= 0.8 * edge.len() as f64,
                "frame {k}: {drawn} of {} edge pixels of {:?} drawn",
                edge.len(),
                instance.bbox
            );
        }
        let near_a_box = |px: u32, py: u32| {
            meta.instances.iter().any(|i| {
                let [x, y, w, h] = i.bbox.map(|v| v as i64);
                let (px, py) = (i64::from(px), i64::from(py));
                px >= x - 4 && px < x + w + 4 && py >= y - 4 && py < y + h + 4
            })
        };
        let stray = (0..HEIGHT)
            .flat_map(|py| (0..WIDTH).map(move |px| (px, py)))
            .filter(|&(px, py)| outlined[(py * WIDTH + px) as usize] && !near_a_box(px, py))
            .count();
        assert_eq!(stray, 0, "frame {k}: pixels away from the boxes changed");

        // Both: the masks as segmentationoverlay alone tints them, and the boxes.
        let drawn = changed(&plain[k], &both[k]);
        let tinted_count = tinted.iter().filter(|&&t| t).count();
        let kept = tinted
            .iter()
            .zip(&drawn)
            .filter(|(t, d)| **t && **d)
            .count();
        assert!(
            kept as f64 >= 0.99 * tinted_count as f64,
            "{kept} of {tinted_count}"
        );
        for instance in &meta.instances {
            let [x, y, w, _] = instance.bbox;
            let top = (x..x + w)
                .filter(|&px| drawn[(y * WIDTH + px) as usize])
                .count();
            assert!(top as f64 >= 0.8 * f64::from(w), "frame {k}: {instance:?}");
        }
    }
}

#[test]
fn ioutracker_tracks_our_boxes_with_tracking_off() {
    let properties = format!("tracking=false {SHAPES_ONLY}");
    let outputs = run(&format!("{} ! ioutracker", instseg(&properties)), 8);
    // Label -> ioutracker's ids of the shape of that colour, per frame.
    let mut ids: HashMap<String, Vec<u64>> = HashMap::new();
    for (k, buffer) in outputs.iter().enumerate() {
        let (meta, analytics) = assert_same(buffer, k);
        for (ours, theirs) in meta.instances.iter().zip(&analytics.instances) {
            let track = theirs
                .track()
                .expect("ioutracker relates a tracking Mtd to every box");
            assert_eq!(theirs.tracks.len(), 1, "ioutracker's Mtd only: {theirs:?}");
            assert!(ours.area > 200, "{ours:?}");
            ids.entry(theirs.label.clone()).or_default().push(track.id);
        }
    }
    // The shapes move 2 pixels a frame: their boxes overlap and keep one id each.
    assert_eq!(ids.len(), 3, "{ids:?}");
    for (label, ids) in &ids {
        assert_eq!(ids.len(), 8, "{label}: {ids:?}");
        assert!(ids.iter().all(|&id| id == ids[0]), "{label}: {ids:?}");
    }
}

/// Debian's python3 with PyGObject, if this machine has it.
fn system_python() -> Option<&'static str> {
    let python = "/usr/bin/python3";
    let has_gi = Command::new(python)
        .args(["-c", "import gi"])
        .status()
        .is_ok_and(|s| s.success());
    has_gi.then_some(python)
}

#[test]
fn pygobject_reads_the_same_as_instseg_meta() {
    // The typelibs come with the built GStreamer (GI_TYPELIB_PATH from its env file).
    let typelib = std::env::var("GI_TYPELIB_PATH").unwrap_or_default();
    let Some(python) = system_python().filter(|_| {
        Path::new(&typelib)
            .join("GstAnalytics-1.0.typelib")
            .exists()
    }) else {
        eprintln!("pygobject: no python3-gi or no GstAnalytics typelib, skipped");
        return;
    };
    // The plugin as a shared library, beside this test binary's directory.
    let exe = std::env::current_exe().unwrap();
    let plugin_dir = exe.parent().unwrap().parent().unwrap();
    assert!(
        plugin_dir.join("libgstinstseg.so").exists(),
        "no libgstinstseg.so in {}",
        plugin_dir.display()
    );
    let registry = std::env::temp_dir().join(format!("instseg-gi-{}.bin", std::process::id()));
    let output = Command::new(python)
        .arg(format!(
            "{}/tests/python/gi_read_analytics.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(fixture("colour.onnx"))
        .env("GST_PLUGIN_PATH", plugin_dir)
        .env("GST_REGISTRY", &registry)
        .output()
        .expect("python runs");
    let _ = std::fs::remove_file(&registry);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON line");
    assert_eq!(summary["frames"], 10, "{summary}");
    assert!(summary["instances"].as_u64().unwrap() >= 10, "{summary}");
}
