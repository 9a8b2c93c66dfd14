// SPDX-License-Identifier: MIT
//! `InstSegMeta`: the per-buffer result (docs/metadata.md) as a custom meta holding a
//! `GstStructure`, so that any application can read it without this crate (PyGObject:
//! `buffer.get_custom_meta("InstSegMeta").get_structure()`).

use gst::glib;

use crate::results::FrameResult;

/// Name the meta is registered under.
pub const META_NAME: &str = "InstSegMeta";
/// Name of the meta's structure and of the element message.
pub const STRUCTURE_NAME: &str = "instseg";

/// Registers the meta. Buffer copies keep it; other transformations (scaling, cropping)
/// drop it, since its frame coordinates would no longer hold.
pub fn register() {
    if gst::meta::CustomMeta::is_registered(META_NAME) {
        return;
    }
    let copy = glib::Quark::from_str("gst-copy");
    gst::meta::CustomMeta::register_with_transform(
        META_NAME,
        &[],
        move |dest, meta, _src, kind| kind == copy && attach(dest, meta.structure()).is_ok(),
    );
}

/// Attaches a copy of `structure` (built by the element) as the buffer's `InstSegMeta`.
pub fn attach(
    buffer: &mut gst::BufferRef,
    structure: &gst::StructureRef,
) -> Result<(), glib::BoolError> {
    let mut meta = gst::meta::CustomMeta::add(buffer, META_NAME)?;
    let target = meta.mut_structure();
    target.set_name(STRUCTURE_NAME);
    for (field, value) in structure.iter() {
        target.set_value(field, value.clone());
    }
    Ok(())
}

/// The `InstSegMeta` structure of `result` (docs/metadata.md); `mask` is its label map as a
/// buffer, shared with whatever else carries it.
pub fn structure(result: &FrameResult, mask: &gst::Buffer, carried: bool) -> gst::Structure {
    let geometry = &result.geometry;
    let instances = result.instances.iter().map(|instance| {
        gst::Structure::builder("instance")
            .field("region", u32::from(instance.region))
            .field("track-id", instance.track_id)
            .field("class-id", instance.class_id)
            .field("label", &instance.label)
            .field("confidence", instance.confidence)
            .field("threshold", instance.threshold)
            .field("x", instance.bbox[0])
            .field("y", instance.bbox[1])
            .field("width", instance.bbox[2])
            .field("height", instance.bbox[3])
            .field("seed-x", instance.seed[0])
            .field("seed-y", instance.seed[1])
            .field("area", instance.area)
            .field("age", instance.age)
            .build()
    });
    gst::Structure::builder(STRUCTURE_NAME)
        .field("mask", mask)
        .field("mask-width", geometry.grid_width)
        .field("mask-height", geometry.grid_height)
        .field("mask-x", geometry.rect_x as i32)
        .field("mask-y", geometry.rect_y as i32)
        .field("mask-w", geometry.rect_width as i32)
        .field("mask-h", geometry.rect_height as i32)
        .field("instances", gst::Array::new(instances))
        .field("carried", carried)
        .build()
}

/// Adds one `GstVideoRegionOfInterestMeta` per instance: its label as the ROI type, its box,
/// and an `instance` parameter structure (region, track-id, class-id, confidence).
pub fn add_regions_of_interest(buffer: &mut gst::BufferRef, result: &FrameResult) {
    for instance in &result.instances {
        let [x, y, width, height] = instance.bbox;
        let mut roi = gst_video::VideoRegionOfInterestMeta::add(
            buffer,
            &instance.label,
            (x, y, width, height),
        );
        roi.add_param(
            gst::Structure::builder("instance")
                .field("region", u32::from(instance.region))
                .field("track-id", instance.track_id)
                .field("class-id", instance.class_id)
                .field("confidence", instance.confidence)
                .build(),
        );
    }
}
