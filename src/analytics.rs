// SPDX-License-Identifier: MIT
//! The frame's result as GStreamer's analytics metadata (GstAnalytics, GStreamer >= 1.26),
//! behind the cargo feature `analytics`: one `GstAnalyticsRelationMeta` per buffer that
//! upstream's elements (`segmentationoverlay`, `objectdetectionoverlay`, `ioutracker`) and any
//! application read without knowing this plugin (docs/metadata.md, "Analytics metadata").
//!
//! What [`attach`] puts in the relation meta, related as upstream's decoders and tracker
//! relate theirs:
//!
//! - one **segmentation Mtd** (`GST_SEGMENTATION_TYPE_INSTANCE`) per frame: the label map
//!   (GRAY8 with a `GstVideoMeta`, one byte per output-grid cell; 0 is the background, k the
//!   instance whose region is k), the frame rectangle it covers, and the region ids
//!   `[0, 1, ..., N]`: region index i holds region id i;
//! - one **classification Mtd** with N + 1 entries (index 0 `background` at -1, index i the
//!   label and confidence of region i), related to the segmentation Mtd by `N_TO_N` both ways,
//!   as the segmentation Mtd's documentation and `segmentationoverlay` (its label filter) do;
//! - per instance, in region order, an **object-detection Mtd** (box in frame pixels, the label
//!   as quark, the confidence) related to the segmentation Mtd by `RELATE_TO` both ways, as
//!   `yolosegv8tensordec` relates its boxes and masks; the i-th object-detection Mtd related to
//!   the segmentation Mtd (in id order) is region index i + 1;
//! - per instance, with `tracking=true` only, a **tracking Mtd** (track id, first seen, last
//!   seen), the object-detection Mtd `RELATE_TO` it, as `ioutracker` relates them (and as
//!   `objectdetectionoverlay` looks them up).
//!
//! First seen and last seen are buffer timestamps (PTS): first seen is that of the first
//! inferred frame the track had an instance in, last seen that of the latest such frame
//! (frames that repeat the last result, `carried`, do not observe anything). [`Tracks`]
//! keeps them per track id in the element's state; `ioutracker` writes running times, which
//! are the same in the usual segment (starting at 0, rate 1).
//!
//! `gstreamer-analytics` 0.25 has no segmentation API: [`RelationMetaSegmentationExt`] and
//! [`SegmentationMtd`] are a small safe wrapper over `gstreamer-analytics-sys`. [`read`] is the
//! reader: what an application gets back from a buffer, whoever wrote the Mtds.

use std::collections::HashMap;

use gst::glib;
use gst::glib::translate::{IntoGlib, IntoGlibPtr, from_glib};
use gst_analytics::prelude::*;
use gst_analytics::{
    AnalyticsClassificationMtd, AnalyticsMtd, AnalyticsODMtd, AnalyticsRelationMeta,
    AnalyticsTrackingMtd, RelTypes,
};
use gst_analytics_sys as ffi;

use crate::results::FrameResult;
use crate::segment::TrackingParams;

/// Quark of the background entry of the classification Mtd.
pub const BACKGROUND: &str = "background";

/// The segmentation Mtd type, for [`AnalyticsMetaRefExt::iter`] and friends.
#[derive(Debug)]
pub enum AnalyticsSegmentationMtd {}

// SAFETY: the type is the one GStreamer registers for segmentation Mtds.
unsafe impl AnalyticsMtd for AnalyticsSegmentationMtd {
    fn mtd_type() -> ffi::GstAnalyticsMtdType {
        // SAFETY: no arguments; returns a static type.
        unsafe { ffi::gst_analytics_segmentation_mtd_get_mtd_type() }
    }
}

/// The rectangle of the frame that a segmentation mask covers (frame pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskRect {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
}

/// Adds segmentation Mtds to a relation meta.
pub trait RelationMetaSegmentationExt {
    /// `gst_analytics_relation_meta_add_segmentation_mtd` of an instance segmentation (each
    /// object has its own region id): `masks` must carry a GRAY8 or GRAY16 `GstVideoMeta`;
    /// `region_ids[i]` is the mask value of region index i. Returns the new Mtd's id.
    fn add_segmentation_mtd(
        &mut self,
        masks: gst::Buffer,
        region_ids: &[u32],
        rect: MaskRect,
    ) -> Result<u32, glib::BoolError>;
}

impl RelationMetaSegmentationExt
    for gst::MetaRefMut<'_, AnalyticsRelationMeta, gst::meta::Standalone>
{
    fn add_segmentation_mtd(
        &mut self,
        masks: gst::Buffer,
        region_ids: &[u32],
        rect: MaskRect,
    ) -> Result<u32, glib::BoolError> {
        let mut mtd = ffi::GstAnalyticsSegmentationMtd {
            id: 0,
            meta: std::ptr::null_mut(),
        };
        // SAFETY: the meta is writable (MetaRefMut); the function copies `region_ids` and
        // takes the buffer's reference only when it succeeds.
        unsafe {
            let buffer = masks.into_glib_ptr();
            let added: bool = from_glib(ffi::gst_analytics_relation_meta_add_segmentation_mtd(
                self.as_mut_ptr(),
                buffer,
                ffi::GST_SEGMENTATION_TYPE_INSTANCE,
                region_ids.len(),
                region_ids.as_ptr() as *mut u32,
                rect.x,
                rect.y,
                rect.width,
                rect.height,
                &mut mtd,
            ));
            if added {
                Ok(mtd.id)
            } else {
                drop(gst::Buffer::from_glib_full(buffer));
                Err(glib::bool_error!(
                    "Cannot add a segmentation Mtd (the mask needs a GRAY8/16 video meta)"
                ))
            }
        }
    }
}

/// A segmentation Mtd of a relation meta.
#[derive(Debug, Clone, Copy)]
pub struct SegmentationMtd<'a> {
    meta: &'a AnalyticsRelationMeta,
    id: u32,
}

impl<'a> SegmentationMtd<'a> {
    /// Every segmentation Mtd of `meta`, in id order.
    pub fn all(meta: &'a gst::MetaRef<'a, AnalyticsRelationMeta>) -> Vec<SegmentationMtd<'a>> {
        let relation: &'a AnalyticsRelationMeta = meta;
        meta.iter::<AnalyticsSegmentationMtd>()
            .map(|mtd| Self {
                meta: relation,
                id: mtd.id(),
            })
            .collect()
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    fn handle(&self) -> ffi::GstAnalyticsSegmentationMtd {
        ffi::GstAnalyticsSegmentationMtd {
            id: self.id,
            meta: relation_ptr(self.meta),
        }
    }

    /// The mask buffer and the frame rectangle it covers.
    pub fn mask(&self) -> Option<(gst::Buffer, MaskRect)> {
        let handle = self.handle();
        let (mut x, mut y, mut width, mut height) = (0, 0, 0, 0);
        // SAFETY: `handle` names a segmentation Mtd (checked at construction); the buffer comes
        // back with a reference of ours.
        unsafe {
            let buffer = ffi::gst_analytics_segmentation_mtd_get_mask(
                &handle,
                &mut x,
                &mut y,
                &mut width,
                &mut height,
            );
            (!buffer.is_null()).then(|| {
                (
                    gst::Buffer::from_glib_full(buffer),
                    MaskRect {
                        x,
                        y,
                        width,
                        height,
                    },
                )
            })
        }
    }

    /// Number of regions (region indexes `0..count`).
    pub fn region_count(&self) -> usize {
        let handle = self.handle();
        // SAFETY: as in `mask`.
        unsafe { ffi::gst_analytics_segmentation_mtd_get_region_count(&handle) }
    }

    /// Mask value of region index `index`.
    pub fn region_id(&self, index: usize) -> Option<u32> {
        let handle = self.handle();
        // SAFETY: as in `mask`; the index is checked first (the C function logs otherwise).
        (index < self.region_count())
            .then(|| unsafe { ffi::gst_analytics_segmentation_mtd_get_region_id(&handle, index) })
    }
}

/// The C API takes mutable pointers for lookups too; they do not write.
fn relation_ptr(meta: &AnalyticsRelationMeta) -> *mut ffi::GstAnalyticsRelationMeta {
    meta as *const AnalyticsRelationMeta as *mut ffi::GstAnalyticsRelationMeta
}

/// A tracking Mtd's content; times are `None` where the writer had none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: u64,
    pub first_seen: Option<gst::ClockTime>,
    pub last_seen: Option<gst::ClockTime>,
    /// Set by a tracker that lost the object; instseg forgets such tracks instead.
    pub lost: bool,
}

fn add_tracking_mtd(
    meta: &mut gst::MetaRefMut<'_, AnalyticsRelationMeta, gst::meta::Standalone>,
    track: &TrackInfo,
) -> Result<u32, glib::BoolError> {
    let mut mtd = ffi::GstAnalyticsTrackingMtd {
        id: 0,
        meta: std::ptr::null_mut(),
    };
    // SAFETY: the meta is writable; `mtd` is filled in on success. The safe crate's
    // `add_tracking_mtd` takes no GST_CLOCK_TIME_NONE, which a buffer without PTS gives.
    unsafe {
        let added: bool = from_glib(ffi::gst_analytics_relation_meta_add_tracking_mtd(
            meta.as_mut_ptr(),
            track.id,
            track.first_seen.into_glib(),
            &mut mtd,
        ));
        if !added {
            return Err(glib::bool_error!("Cannot add a tracking Mtd"));
        }
        ffi::gst_analytics_tracking_mtd_update_last_seen(&mut mtd, track.last_seen.into_glib());
    }
    Ok(mtd.id)
}

fn tracking_info(meta: &AnalyticsRelationMeta, id: u32) -> TrackInfo {
    let handle = ffi::GstAnalyticsTrackingMtd {
        id,
        meta: relation_ptr(meta),
    };
    let (mut track, mut first, mut last, mut lost) = (0, 0, 0, 0);
    // SAFETY: `id` is a tracking Mtd of `meta` (found by type).
    unsafe {
        ffi::gst_analytics_tracking_mtd_get_info(
            &handle, &mut track, &mut first, &mut last, &mut lost,
        );
        TrackInfo {
            id: track,
            first_seen: from_glib(first),
            last_seen: from_glib(last),
            lost: lost != 0,
        }
    }
}

/// First and last seen times of the element's tracks, updated on inferred frames.
#[derive(Debug, Default)]
pub struct Tracks {
    tracks: HashMap<u64, Seen>,
    inferred: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first: Option<gst::ClockTime>,
    last: Option<gst::ClockTime>,
    frame: u64,
}

impl Tracks {
    /// Records that the instances of `result` were observed at `pts` (an inferred frame).
    /// Tracks unseen for more than `max_age + 1` inferred frames are forgotten: the tracker
    /// has dropped them and their ids never come back.
    pub fn observe(&mut self, result: &FrameResult, pts: Option<gst::ClockTime>, max_age: u32) {
        self.inferred += 1;
        let frame = self.inferred;
        for instance in &result.instances {
            let seen = self.tracks.entry(instance.track_id).or_insert(Seen {
                first: pts,
                last: pts,
                frame,
            });
            seen.last = pts;
            seen.frame = frame;
        }
        self.tracks
            .retain(|_, seen| frame - seen.frame <= u64::from(max_age) + 1);
    }

    /// The tracking Mtd content of track `id` (first and last seen `pts` when unknown).
    pub fn info(&self, id: u64, pts: Option<gst::ClockTime>) -> TrackInfo {
        let seen = self.tracks.get(&id);
        TrackInfo {
            id,
            first_seen: seen.map_or(pts, |s| s.first),
            last_seen: seen.map_or(pts, |s| s.last),
            lost: false,
        }
    }
}

/// Adds `result` to the buffer's relation meta (one is added when the buffer has none):
/// the Mtds and relations of the module documentation. `mask` is the label map as a buffer
/// (rows packed); it is shared, not copied. `tracks` is `None` with tracking off: no
/// tracking Mtd then.
pub fn attach(
    buffer: &mut gst::BufferRef,
    result: &FrameResult,
    mask: &gst::Buffer,
    tracks: Option<&Tracks>,
) -> Result<(), glib::BoolError> {
    let pts = buffer.pts();
    let geometry = &result.geometry;
    // A shallow copy shares the label map's memory; the copy gets the video meta.
    let mut masks = mask.copy();
    gst_video::VideoMeta::add_full(
        masks.get_mut().expect("a fresh copy is writable"),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::Gray8,
        geometry.grid_width,
        geometry.grid_height,
        &[0],
        &[geometry.grid_width as i32],
    )?;
    let count = result.instances.len();
    let region_ids: Vec<u32> = std::iter::once(0)
        .chain(result.instances.iter().map(|i| u32::from(i.region)))
        .collect();
    let rect = MaskRect {
        x: geometry.rect_x as i32,
        y: geometry.rect_y as i32,
        width: geometry.rect_width,
        height: geometry.rect_height,
    };
    let classes: Vec<glib::Quark> = std::iter::once(glib::Quark::from_str(BACKGROUND))
        .chain(
            result
                .instances
                .iter()
                .map(|i| glib::Quark::from_str(&i.label)),
        )
        .collect();
    let levels: Vec<f32> = std::iter::once(-1.0)
        .chain(result.instances.iter().map(|i| i.confidence as f32))
        .collect();

    if buffer.meta::<AnalyticsRelationMeta>().is_none() {
        // Room for every Mtd and relation without growing: 2 + 2 per instance.
        let order = (2 + 2 * count).next_power_of_two();
        let params = gst_analytics::AnalyticsRelationMetaInitParams::new(order, 256 + 96 * count);
        AnalyticsRelationMeta::add_full(buffer, &params);
    }
    let mut meta = buffer
        .meta_mut::<AnalyticsRelationMeta>()
        .expect("added above");
    let segmentation = meta.add_segmentation_mtd(masks, &region_ids, rect)?;
    let classification = meta.add_cls_mtd(&levels, &classes)?.id();
    meta.set_relation(RelTypes::N_TO_N, segmentation, classification)?;
    meta.set_relation(RelTypes::N_TO_N, classification, segmentation)?;
    for (instance, class) in result.instances.iter().zip(&classes[1..]) {
        let [x, y, width, height] = instance.bbox;
        let detection = meta
            .add_od_mtd(
                *class,
                x as i32,
                y as i32,
                width as i32,
                height as i32,
                instance.confidence as f32,
            )?
            .id();
        meta.set_relation(RelTypes::RELATE_TO, detection, segmentation)?;
        meta.set_relation(RelTypes::RELATE_TO, segmentation, detection)?;
        if let Some(tracks) = tracks {
            let tracking = add_tracking_mtd(&mut meta, &tracks.info(instance.track_id, pts))?;
            meta.set_relation(RelTypes::RELATE_TO, detection, tracking)?;
        }
    }
    Ok(())
}

/// One instance as the analytics meta gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsInstance {
    /// Its value in the mask.
    pub region: u32,
    /// The object-detection Mtd's type (quark) as a string.
    pub label: String,
    pub confidence: f32,
    /// x, y, width, height in frame pixels.
    pub bbox: [i32; 4],
    /// The tracking Mtds the object-detection Mtd relates to, in id order: instseg's (with
    /// `tracking=true`) comes first; a tracker downstream (`ioutracker`) adds its own.
    pub tracks: Vec<TrackInfo>,
}

impl AnalyticsInstance {
    /// The first tracking Mtd: instseg's own when it tracks, else a downstream tracker's.
    pub fn track(&self) -> Option<TrackInfo> {
        self.tracks.first().copied()
    }
}

/// What [`read`] gets from a buffer: the first instance segmentation Mtd and its regions.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsFrame {
    /// The mask, `mask_width` x `mask_height` values, rows packed.
    pub mask: Vec<u8>,
    pub mask_width: u32,
    pub mask_height: u32,
    pub rect: MaskRect,
    /// Region ids, by region index (index 0 is the background).
    pub region_ids: Vec<u32>,
    /// The classification Mtd related `N_TO_N` to the segmentation Mtd: (label, level) per
    /// region index.
    pub classes: Vec<(String, f32)>,
    /// One per region index from 1, from the object-detection Mtds related to the
    /// segmentation Mtd, in id order.
    pub instances: Vec<AnalyticsInstance>,
}

/// Reads the buffer's relation meta as [`attach`] writes it (and as upstream elements
/// downstream of it leave it: `ioutracker` adds tracking Mtds to the object-detection Mtds).
/// `None` when the buffer has no relation meta or no segmentation Mtd with a GRAY8 mask.
pub fn read(buffer: &gst::BufferRef) -> Option<AnalyticsFrame> {
    let meta = buffer.meta::<AnalyticsRelationMeta>()?;
    let segmentation = *SegmentationMtd::all(&meta).first()?;
    let (masks, rect) = segmentation.mask()?;
    let video = masks.meta::<gst_video::VideoMeta>()?;
    if video.format() != gst_video::VideoFormat::Gray8 {
        return None;
    }
    let (width, height) = (video.width(), video.height());
    let (offset, stride) = (video.offset()[0], video.stride()[0] as usize);
    let map = masks.map_readable().ok()?;
    let mut mask = Vec::with_capacity((width * height) as usize);
    for row in 0..height as usize {
        let start = offset + row * stride;
        mask.extend_from_slice(map.get(start..start + width as usize)?);
    }
    let region_ids: Vec<u32> = (0..segmentation.region_count())
        .filter_map(|index| segmentation.region_id(index))
        .collect();
    let classes = meta
        .iter_direct_related::<AnalyticsClassificationMtd>(segmentation.id(), RelTypes::N_TO_N)
        .next()
        .map(|cls| {
            (0..cls.len())
                .map(|i| (cls.quark(i).as_str().to_string(), cls.level(i)))
                .collect()
        })
        .unwrap_or_default();
    let instances = meta
        .iter_direct_related::<AnalyticsODMtd>(segmentation.id(), RelTypes::RELATE_TO)
        .enumerate()
        .map(|(index, od)| {
            let location = od.location().unwrap_or_default();
            let tracks = meta
                .iter_direct_related::<AnalyticsTrackingMtd>(od.id(), RelTypes::RELATE_TO)
                .map(|tracking| tracking_info(&meta, tracking.id()))
                .collect();
            AnalyticsInstance {
                region: region_ids.get(index + 1).copied().unwrap_or(0),
                label: od
                    .obj_type()
                    .map(|q| q.as_str().to_string())
                    .unwrap_or_default(),
                confidence: od.confidence_level(),
                bbox: [location.x, location.y, location.w, location.h],
                tracks,
            }
        })
        .collect();
    Some(AnalyticsFrame {
        mask,
        mask_width: width,
        mask_height: height,
        rect,
        region_ids,
        classes,
        instances,
    })
}

/// The element's step: updates `tracks` on inferred frames with tracking on, then
/// [`attach`]es `result` (no tracking Mtds with tracking off).
pub fn publish(
    buffer: &mut gst::BufferRef,
    result: &FrameResult,
    mask: &gst::Buffer,
    carried: bool,
    tracking: &TrackingParams,
    tracks: &mut Tracks,
) -> Result<(), gst::ErrorMessage> {
    if tracking.enabled && !carried {
        tracks.observe(result, buffer.pts(), tracking.max_age);
    }
    let tracks = tracking.enabled.then_some(&*tracks);
    attach(buffer, result, mask, tracks).map_err(|err| {
        gst::error_msg!(
            gst::CoreError::Failed,
            ("Cannot attach the analytics meta: {err}")
        )
    })
}
