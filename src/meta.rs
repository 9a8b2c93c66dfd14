// SPDX-License-Identifier: MIT OR Apache-2.0
//! `InstSegMeta`: the per-buffer result (SPEC section 5) as a custom meta holding a
//! `GstStructure`, so that any application can read it without this crate (PyGObject:
//! `buffer.get_custom_meta("InstSegMeta").get_structure()`).

use gst::glib;

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
