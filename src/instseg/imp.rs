// SPDX-License-Identifier: MIT OR Apache-2.0

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use super::frame::PlaneLayout;
use super::{ExecutionProvider, Overlaps, Overlay, Rematch, WarmOrder, WarmSeed};
use crate::meta;
use crate::model::{self, Contract, Model, ModelError, ModelOutputs, ModelSource, SessionOptions};
use crate::overlay::{self, OverlayInstance, OverlayStyle};
use crate::preprocess::{
    Colorimetry, FrameRef, Normalization, PixelFormat, Placement, Preprocessor, ResizeMode,
    YuvMatrix,
};
use crate::results::{FrameRecord, InstanceRecord, MaskGeometry, ResultsFile};
use crate::segment::{self, OutputView, Params, Segmentation, Segmenter, TrackingParams};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "instseg",
        gst::DebugColorFlags::empty(),
        Some("Instance segmentation (deep metric learning)"),
    )
});

/// The model shipped inside the plugin, used when `model-location` is empty.
static EMBEDDED_MODEL: &[u8] = include_bytes!("../../models/default.onnx");

const DEFAULT_MODEL_LOCATION: &str = "";
const DEFAULT_EXECUTION_PROVIDER: ExecutionProvider = ExecutionProvider::Auto;
const DEFAULT_DEVICE_ID: i32 = 0;
const DEFAULT_THREADS: u32 = 0;
/// Negative: take the model's recommendation (`instseg.seed-threshold`), else 0.5.
const DEFAULT_SEED_THRESHOLD: f64 = -1.0;
const FALLBACK_SEED_THRESHOLD: f64 = 0.5;
/// Negative: take the model's recommendation (`instseg.alpha`), else 0.3.
const DEFAULT_ALPHA: f64 = -1.0;
const FALLBACK_ALPHA: f64 = 0.3;
const DEFAULT_MAX_INSTANCES: u32 = 32;
/// Negative: take the model's recommendation (`instseg.min-area`), else 4.
const DEFAULT_MIN_AREA: i32 = -1;
const FALLBACK_MIN_AREA: u32 = 4;
/// Auto: take the model's recommendation (`instseg.overlaps`), else nearest (SPEC section 2).
const DEFAULT_OVERLAPS: Overlaps = Overlaps::Auto;
/// Negative: take the model's recommendation (`instseg.max-overlap`), else 1 (keep every
/// instance, SPEC section 2).
const DEFAULT_MAX_OVERLAP: f64 = -1.0;
const FALLBACK_MAX_OVERLAP: f64 = 1.0;
const DEFAULT_TRACKING: bool = true;
const DEFAULT_TRACK_MAX_AGE: u32 = 10;
const DEFAULT_MATCH_SIMILARITY: f64 = 0.5;
/// Negative: max(4, the track's bounding-box diagonal).
const DEFAULT_SEARCH_RADIUS: i32 = -1;
/// Negative: take the model's recommendation (`instseg.track-seed-threshold`), else the
/// seed threshold.
const DEFAULT_TRACK_SEED_THRESHOLD: f64 = -1.0;
/// Auto: take the model's recommendation (`instseg.warm-seed`), else balanced (SPEC section 3).
const DEFAULT_WARM_SEED: WarmSeed = WarmSeed::Auto;
/// Auto: take the model's recommendation (`instseg.rematch`), else off (SPEC section 3).
const DEFAULT_REMATCH: Rematch = Rematch::Auto;
/// Auto: take the model's recommendation (`instseg.warm-order`), else confidence (SPEC
/// section 3).
const DEFAULT_WARM_ORDER: WarmOrder = WarmOrder::Auto;
const DEFAULT_RESULTS_LOCATION: &str = "";
const DEFAULT_INFERENCE_INTERVAL: u32 = 1;
const DEFAULT_OVERLAY: Overlay = Overlay::Auto;
const DEFAULT_OVERLAY_ALPHA: f64 = 0.5;
const DEFAULT_DRAW_BOXES: bool = true;
const DEFAULT_DRAW_LABELS: bool = true;
const DEFAULT_POST_MESSAGES: bool = false;

#[derive(Debug, Clone)]
struct Settings {
    model_location: String,
    execution_provider: ExecutionProvider,
    device_id: i32,
    threads: u32,
    seed_threshold: f64,
    alpha: f64,
    max_instances: u32,
    min_area: i32,
    overlaps: Overlaps,
    max_overlap: f64,
    tracking: bool,
    track_max_age: u32,
    match_similarity: f64,
    search_radius: i32,
    track_seed_threshold: f64,
    warm_seed: WarmSeed,
    rematch: Rematch,
    warm_order: WarmOrder,
    results_location: String,
    post_messages: bool,
    inference_interval: u32,
    overlay: Overlay,
    overlay_alpha: f64,
    draw_boxes: bool,
    draw_labels: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model_location: DEFAULT_MODEL_LOCATION.into(),
            execution_provider: DEFAULT_EXECUTION_PROVIDER,
            device_id: DEFAULT_DEVICE_ID,
            threads: DEFAULT_THREADS,
            seed_threshold: DEFAULT_SEED_THRESHOLD,
            alpha: DEFAULT_ALPHA,
            max_instances: DEFAULT_MAX_INSTANCES,
            min_area: DEFAULT_MIN_AREA,
            overlaps: DEFAULT_OVERLAPS,
            max_overlap: DEFAULT_MAX_OVERLAP,
            tracking: DEFAULT_TRACKING,
            track_max_age: DEFAULT_TRACK_MAX_AGE,
            match_similarity: DEFAULT_MATCH_SIMILARITY,
            search_radius: DEFAULT_SEARCH_RADIUS,
            track_seed_threshold: DEFAULT_TRACK_SEED_THRESHOLD,
            warm_seed: DEFAULT_WARM_SEED,
            rematch: DEFAULT_REMATCH,
            warm_order: DEFAULT_WARM_ORDER,
            results_location: DEFAULT_RESULTS_LOCATION.into(),
            post_messages: DEFAULT_POST_MESSAGES,
            inference_interval: DEFAULT_INFERENCE_INTERVAL,
            overlay: DEFAULT_OVERLAY,
            overlay_alpha: DEFAULT_OVERLAY_ALPHA,
            draw_boxes: DEFAULT_DRAW_BOXES,
            draw_labels: DEFAULT_DRAW_LABELS,
        }
    }
}

/// A property whose negative value means "the model's recommendation": the property when it
/// is set, else what the model file recommends, if anything.
fn property_or_recommended(property: f64, recommended: Option<f64>) -> Option<f64> {
    (property >= 0.0).then_some(property).or(recommended)
}

/// What `publish` draws, decided per frame from the settings and the negotiated geometry.
#[derive(Debug, Clone, Copy)]
enum Drawing {
    Nothing,
    Meta(OverlayStyle),
    Blend(OverlayStyle),
}

impl Settings {
    fn drawing(&self, downstream_composes: bool) -> Drawing {
        let style = OverlayStyle {
            alpha: self.overlay_alpha as f32,
            draw_boxes: self.draw_boxes,
            draw_labels: self.draw_labels,
        };
        match self.overlay {
            Overlay::None => Drawing::Nothing,
            Overlay::Meta => Drawing::Meta(style),
            Overlay::Blend => Drawing::Blend(style),
            Overlay::Auto if downstream_composes => Drawing::Meta(style),
            Overlay::Auto => Drawing::Blend(style),
        }
    }

    /// The post-processing parameters: properties first, then the model's recommendations.
    fn update_params(&self, contract: &Contract, params: &mut Params) {
        params.seed_threshold =
            property_or_recommended(self.seed_threshold, contract.seed_threshold)
                .unwrap_or(FALLBACK_SEED_THRESHOLD);
        params.alpha =
            property_or_recommended(self.alpha, contract.alpha).unwrap_or(FALLBACK_ALPHA);
        params.max_instances = self.max_instances.clamp(1, 255) as u8;
        params.min_area = u32::try_from(self.min_area)
            .unwrap_or_else(|_| contract.min_area.unwrap_or(FALLBACK_MIN_AREA));
        params.overlaps = match self.overlaps {
            Overlaps::Auto => contract.overlaps.unwrap_or_default(),
            Overlaps::Nearest => segment::Overlaps::Nearest,
            Overlaps::Confident => segment::Overlaps::Confident,
        };
        params.max_overlap = property_or_recommended(self.max_overlap, contract.max_overlap)
            .unwrap_or(FALLBACK_MAX_OVERLAP);
        params.tracking = TrackingParams {
            enabled: self.tracking,
            max_age: self.track_max_age,
            match_similarity: self.match_similarity,
            search_radius: u32::try_from(self.search_radius).ok(),
            seed_threshold: property_or_recommended(
                self.track_seed_threshold,
                contract.track_seed_threshold,
            ),
            warm_seed: match self.warm_seed {
                WarmSeed::Auto => contract.warm_seed.unwrap_or_default(),
                WarmSeed::Balanced => segment::WarmSeed::Balanced,
                WarmSeed::SeedLike => segment::WarmSeed::SeedLike,
            },
            warm_order: match self.warm_order {
                WarmOrder::Auto => contract.warm_order.unwrap_or_default(),
                WarmOrder::Confidence => segment::WarmOrder::Confidence,
                WarmOrder::Match => segment::WarmOrder::Match,
            },
            rematch: match self.rematch {
                Rematch::Auto => contract.rematch.unwrap_or(false),
                Rematch::Off => false,
                Rematch::On => true,
            },
        };
    }

    fn model_source(&self) -> ModelSource {
        if self.model_location.is_empty() {
            ModelSource::Embedded {
                name: "default",
                bytes: EMBEDDED_MODEL,
            }
        } else {
            ModelSource::File(PathBuf::from(&self.model_location))
        }
    }

    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            provider: match self.execution_provider {
                ExecutionProvider::Auto => model::ExecutionProvider::Auto,
                ExecutionProvider::Cpu => model::ExecutionProvider::Cpu,
                ExecutionProvider::Cuda => model::ExecutionProvider::Cuda,
                ExecutionProvider::TensorRt => model::ExecutionProvider::TensorRt,
            },
            device_id: self.device_id,
            threads: self.threads,
        }
    }
}

/// Frame counts and time per stage, for the `stats` property (means over the frames that
/// ran the stage).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Frames the network ran on.
    inferred: u64,
    /// Frames that repeated the last result (inference-interval or QoS).
    carried: u64,
    preprocess_ns: u64,
    inference_ns: u64,
    postprocess_ns: u64,
    metadata_ns: u64,
}

impl Stats {
    fn to_structure(self) -> gst::Structure {
        let mean_ms = |total: u64, frames: u64| {
            if frames == 0 {
                0.0
            } else {
                total as f64 / frames as f64 / 1e6
            }
        };
        let frames = self.inferred + self.carried;
        gst::Structure::builder("instseg-stats")
            .field("frames", frames)
            .field("inferred", self.inferred)
            .field("carried", self.carried)
            .field("preprocess-ms", mean_ms(self.preprocess_ns, self.inferred))
            .field("inference-ms", mean_ms(self.inference_ns, self.inferred))
            .field(
                "postprocess-ms",
                mean_ms(self.postprocess_ns, self.inferred),
            )
            .field("metadata-ms", mean_ms(self.metadata_ns, frames))
            .build()
    }
}

/// Where the model input and the label map sit on the negotiated frames.
struct Geometry {
    info: gst_video::VideoInfo,
    format: PixelFormat,
    colorimetry: Colorimetry,
    placement: Placement,
    /// The grid cells inside the placement (letterbox padding excluded): x, y, width, height.
    crop: (usize, usize, usize, usize),
    mask: MaskGeometry,
    /// Downstream's allocation query lists GstVideoOverlayCompositionMeta (for `overlay=auto`).
    downstream_composes: bool,
}

/// A JSON results entry, owned so that it can be written again for carried frames.
struct OwnedRecord {
    region: u8,
    track_id: u64,
    class_id: u32,
    label: String,
    score: f64,
    bbox: [u32; 4],
    seed: [u32; 2],
    /// What the overlay writes above the box: "label #track confidence".
    text: String,
}

impl OwnedRecord {
    fn overlay(&self) -> OverlayInstance<'_> {
        OverlayInstance {
            region: self.region,
            track_id: self.track_id,
            bbox: self.bbox,
            text: &self.text,
        }
    }

    fn borrow(&self) -> InstanceRecord<'_> {
        InstanceRecord {
            region: self.region,
            track_id: self.track_id,
            class_id: self.class_id,
            label: &self.label,
            score: self.score,
            bbox: self.bbox,
            seed: self.seed,
        }
    }
}

/// One inferred frame's result in frame coordinates, ready to be attached to this buffer and,
/// when inference is skipped, to the next ones.
struct FrameResult {
    /// The `InstSegMeta` structure (SPEC section 5.1).
    structure: gst::Structure,
    /// The label map (also inside `structure`).
    mask: gst::Buffer,
    /// Per instance: ROI type, box and parameter structure (SPEC section 5.2).
    rois: Vec<(String, [u32; 4], gst::Structure)>,
    records: Vec<OwnedRecord>,
}

impl FrameResult {
    /// What the overlay draws for each instance, least confident first, so that the boxes and
    /// labels of the most confident instances end up on top of any they overlap.
    fn overlay_instances(&self) -> Vec<OverlayInstance<'_>> {
        let mut records: Vec<&OwnedRecord> = self.records.iter().collect();
        records.sort_by(|a, b| a.score.total_cmp(&b.score));
        records.into_iter().map(OwnedRecord::overlay).collect()
    }

    /// Crops the label map to the picture and maps every instance to frame pixels.
    fn new(segmentation: &Segmentation, geometry: &Geometry, labels: &[String]) -> FrameResult {
        let (crop_x, crop_y, crop_width, crop_height) = geometry.crop;
        let mut map = Vec::with_capacity(crop_width * crop_height);
        for row in segmentation.labels[crop_y * segmentation.width..]
            .chunks_exact(segmentation.width)
            .take(crop_height)
        {
            map.extend_from_slice(&row[crop_x..crop_x + crop_width]);
        }
        let mut areas = [0u32; 256];
        for &label in &map {
            areas[usize::from(label)] += 1;
        }

        let mask = &geometry.mask;
        let mut instances = Vec::with_capacity(segmentation.instances.len());
        let mut rois = Vec::with_capacity(segmentation.instances.len());
        let mut records = Vec::with_capacity(segmentation.instances.len());
        for instance in &segmentation.instances {
            let label = labels
                .get(instance.class_id as usize - 1)
                .cloned()
                .unwrap_or_default();
            // The grid box, clipped to the cropped label map, in frame pixels.
            let clip = |start: u32, len: u32, offset: usize, size: usize| {
                let first = (start as usize).clamp(offset, offset + size) - offset;
                let last = ((start + len) as usize).clamp(offset, offset + size) - offset;
                (first as u32, last as u32)
            };
            let (gx0, gx1) = clip(instance.bbox.x, instance.bbox.width, crop_x, crop_width);
            let (gy0, gy1) = clip(instance.bbox.y, instance.bbox.height, crop_y, crop_height);
            let (x0, x1) = mask.column_span(gx0, gx1);
            let (y0, y1) = mask.row_span(gy0, gy1);
            let seed_x = (instance.seed.x as usize).clamp(crop_x, crop_x + crop_width - 1) - crop_x;
            let seed_y =
                (instance.seed.y as usize).clamp(crop_y, crop_y + crop_height - 1) - crop_y;
            let (seed_x, seed_y) = mask.cell_center(seed_x as u32, seed_y as u32);
            let bbox = [x0, y0, x1 - x0, y1 - y0];
            let region = u32::from(instance.region);
            let confidence = f64::from(instance.confidence);

            instances.push(
                gst::Structure::builder("instance")
                    .field("region", region)
                    .field("track-id", instance.track_id)
                    .field("class-id", instance.class_id)
                    .field("label", &label)
                    .field("confidence", confidence)
                    .field("threshold", instance.threshold)
                    .field("x", bbox[0])
                    .field("y", bbox[1])
                    .field("width", bbox[2])
                    .field("height", bbox[3])
                    .field("seed-x", seed_x)
                    .field("seed-y", seed_y)
                    .field("area", areas[usize::from(instance.region)])
                    .field("age", instance.age)
                    .build(),
            );
            let param = gst::Structure::builder("instance")
                .field("region", region)
                .field("track-id", instance.track_id)
                .field("class-id", instance.class_id)
                .field("confidence", confidence)
                .build();
            rois.push((label.clone(), bbox, param));
            records.push(OwnedRecord {
                text: format!("{label} #{} {confidence:.2}", instance.track_id),
                region: instance.region,
                track_id: instance.track_id,
                class_id: instance.class_id,
                label,
                score: confidence,
                bbox,
                seed: [seed_x, seed_y],
            });
        }

        let mask_buffer = gst::Buffer::from_mut_slice(map);
        let structure = gst::Structure::builder(meta::STRUCTURE_NAME)
            .field("mask", &mask_buffer)
            .field("mask-width", crop_width as u32)
            .field("mask-height", crop_height as u32)
            .field("mask-x", mask.rect_x as i32)
            .field("mask-y", mask.rect_y as i32)
            .field("mask-w", mask.rect_width as i32)
            .field("mask-h", mask.rect_height as i32)
            .field("instances", gst::Array::new(instances))
            .build();
        FrameResult {
            structure,
            mask: mask_buffer,
            rois,
            records,
        }
    }
}

/// Everything built in `start` (model, buffers, tracks) and `set_caps` (geometry).
struct State {
    model: Arc<Model>,
    params: Params,
    normalization: Normalization,
    preprocessor: Preprocessor,
    input: Vec<f32>,
    outputs: ModelOutputs,
    segmenter: Segmenter,
    geometry: Option<Geometry>,
    results: Option<ResultsFile>,
    frame_index: u64,
    /// Whether a frame with mostly non-finite outputs was reported already.
    warned_non_finite: bool,
    /// The last inferred frame's result, repeated on frames that skip inference.
    last: Option<FrameResult>,
    /// Frames since the last inference.
    since_inference: u32,
}

#[derive(Default)]
pub struct InstSeg {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
    active_provider: Mutex<Option<String>>,
    /// From downstream's QoS events: buffers whose running time ends before this are late.
    earliest_time: Mutex<Option<gst::ClockTime>>,
}

impl InstSeg {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, Option<State>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs the model and the segmentation on one frame; returns its result and the time
    /// spent in pre-processing, inference and post-processing.
    fn infer(
        &self,
        state: &mut State,
        buf: &gst::BufferRef,
        layout: &PlaneLayout,
    ) -> Result<(FrameResult, [u64; 3]), gst::FlowError> {
        let State {
            model,
            params,
            normalization,
            preprocessor,
            input,
            outputs,
            segmenter,
            geometry,
            frame_index,
            warned_non_finite,
            ..
        } = state;
        let geometry = geometry.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
        let contract = model.contract();
        let started = Instant::now();

        {
            let map = buf.map_readable().map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Read,
                    ("Cannot map the buffer to read the frame")
                );
                gst::FlowError::Error
            })?;
            let frame = FrameRef {
                format: geometry.format,
                width: geometry.info.width() as usize,
                height: geometry.info.height() as usize,
                planes: layout.planes(&map),
                strides: layout.strides(),
                colorimetry: geometry.colorimetry,
            };
            preprocessor
                .run(
                    &frame,
                    contract.input_width as usize,
                    contract.input_height as usize,
                    geometry.placement,
                    normalization,
                    input,
                )
                .map_err(|err| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("Cannot read the frame: {err}")
                    );
                    gst::FlowError::Error
                })?;
        }
        let preprocessed = Instant::now();

        model.run(input, outputs).map_err(|err| {
            gst::element_imp_error!(self, gst::LibraryError::Failed, ("Inference failed: {err}"));
            gst::FlowError::Error
        })?;
        let inferred = Instant::now();
        let non_finite = outputs.non_finite_share();
        if non_finite > 0.5 && !std::mem::replace(warned_non_finite, true) {
            gst::warning!(
                CAT,
                imp = self,
                "{:.0}% of the model's outputs are NaN or infinite",
                100.0 * non_finite
            );
            gst::element_imp_warning!(
                self,
                gst::StreamError::Decode,
                (
                    "{:.0}% of the model's outputs on frame {} are NaN or infinite: those pixels \
                     are never part of an instance; check the model and its instseg.mean and \
                     instseg.std (reported once)",
                    100.0 * non_finite,
                    frame_index
                )
            );
        }

        let segmentation = OutputView::new(
            &outputs.embedding,
            &outputs.classes,
            contract.embedding_dim,
            contract.thresholds.len(),
            contract.labels.len() + 1,
            contract.grid_height as usize,
            contract.grid_width as usize,
        )
        .and_then(|view| segmenter.segment(&view, params))
        .map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Decode,
                ("Model output rejected: {err}")
            );
            gst::FlowError::Error
        })?;
        let result = FrameResult::new(segmentation, geometry, &contract.labels);
        let postprocessed = Instant::now();

        let nanos = |from: Instant, to: Instant| to.duration_since(from).as_nanos() as u64;
        Ok((
            result,
            [
                nanos(started, preprocessed),
                nanos(preprocessed, inferred),
                nanos(inferred, postprocessed),
            ],
        ))
    }

    /// Attaches a result to a buffer (meta, ROI metas), writes its JSON line and posts its
    /// message. `carried`: the result is the last inferred frame's, repeated.
    fn publish(
        &self,
        state: &mut State,
        buf: &mut gst::BufferRef,
        layout: &PlaneLayout,
        carried: bool,
        drawing: Drawing,
    ) -> Result<(), gst::FlowError> {
        let State {
            last,
            geometry,
            results,
            frame_index,
            ..
        } = state;
        let (Some(result), Some(geometry)) = (last.as_ref(), geometry.as_ref()) else {
            return Err(gst::FlowError::NotNegotiated);
        };
        for (label, bbox, param) in &result.rois {
            let mut roi = gst_video::VideoRegionOfInterestMeta::add(
                buf,
                label,
                (bbox[0], bbox[1], bbox[2], bbox[3]),
            );
            roi.add_param(param.clone());
        }
        match drawing {
            Drawing::Nothing => (),
            Drawing::Blend(style) => self.blend(buf, layout, result, geometry, style)?,
            Drawing::Meta(style) => compose(buf, result, geometry, style).map_err(|err| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Failed,
                    ("Cannot attach the overlay: {err}")
                );
                gst::FlowError::Error
            })?,
        }
        let mut structure = result.structure.clone();
        structure.set("carried", carried);
        meta::attach(buf, &structure).map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::CoreError::Failed,
                ("Cannot attach {}: {err}", meta::META_NAME)
            );
            gst::FlowError::Error
        })?;

        if let Some(file) = results {
            let records: Vec<InstanceRecord> =
                result.records.iter().map(OwnedRecord::borrow).collect();
            let record = FrameRecord {
                frame: *frame_index,
                pts: buf.pts().map(gst::ClockTime::nseconds),
                width: geometry.mask.frame_width,
                height: geometry.mask.frame_height,
                carried,
                instances: &records,
            };
            let mask = result
                .mask
                .map_readable()
                .map_err(|_| gst::FlowError::Error)?;
            if let Err(err) = file.write(&record, &mask, &geometry.mask) {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "Cannot write the results of frame {frame_index} to {}: {err}",
                        file.path().display()
                    )
                );
                return Err(gst::FlowError::Error);
            }
        }
        *frame_index += 1;

        if self.lock_settings().post_messages {
            structure.set("timestamp", buf.pts());
            let _ = self.obj().post_message(
                gst::message::Element::builder(structure)
                    .src(&*self.obj())
                    .build(),
            );
        }
        Ok(())
    }

    /// Draws the result into the frame (`overlay=blend`).
    fn blend(
        &self,
        buf: &mut gst::BufferRef,
        layout: &PlaneLayout,
        result: &FrameResult,
        geometry: &Geometry,
        style: OverlayStyle,
    ) -> Result<(), gst::FlowError> {
        let mask = result
            .mask
            .map_readable()
            .map_err(|_| gst::FlowError::Error)?;
        let instances = result.overlay_instances();
        let mut map = buf.map_writable().map_err(|_| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Write,
                ("Cannot map the frame to draw into it")
            );
            gst::FlowError::Error
        })?;
        let mut target = overlay::FrameMut {
            format: geometry.format,
            width: geometry.info.width() as usize,
            height: geometry.info.height() as usize,
            planes: layout.planes_mut(&mut map),
            strides: layout.strides(),
        };
        overlay::blend(&mut target, &mask, &geometry.mask, &instances, style);
        Ok(())
    }

    /// Where the planes of `buf` lie, checked against its memory; refuses the buffer (an error
    /// on the bus) when its video meta does not fit it.
    fn plane_layout(
        &self,
        state: &State,
        buf: &gst::BufferRef,
    ) -> Result<PlaneLayout, gst::FlowError> {
        let geometry = state.geometry.as_ref().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("No caps negotiated"));
            gst::FlowError::NotNegotiated
        })?;
        PlaneLayout::of(buf, &geometry.info, geometry.format).map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                (
                    "Refused a {}x{} {} buffer whose planes do not fit its memory: {err}; fix \
                     the element upstream that made it",
                    geometry.info.width(),
                    geometry.info.height(),
                    geometry.info.format().to_str()
                )
            );
            gst::FlowError::Error
        })
    }

    /// Whether downstream's QoS says this buffer will be late anyway.
    fn is_late(&self, buf: &gst::BufferRef) -> bool {
        let Some(earliest) = *self.earliest_time.lock().unwrap_or_else(|p| p.into_inner()) else {
            return false;
        };
        let segment = self.obj().segment();
        let Some(segment) = segment.downcast_ref::<gst::ClockTime>() else {
            return false;
        };
        buf.pts()
            .and_then(|pts| segment.to_running_time(pts))
            .is_some_and(|running_time| {
                running_time + buf.duration().unwrap_or_default() <= earliest
            })
    }
}

/// A model that cannot load, as the error of the GStreamer domain it belongs to.
fn model_error(err: &ModelError) -> gst::ErrorMessage {
    match err {
        ModelError::NotFound(_) => gst::error_msg!(gst::ResourceError::NotFound, ("{err}")),
        ModelError::File(_) => gst::error_msg!(gst::ResourceError::OpenRead, ("{err}")),
        ModelError::Contract(_) => gst::error_msg!(gst::LibraryError::Settings, ("{err}")),
        ModelError::Runtime(_) | ModelError::Provider(_) => {
            gst::error_msg!(gst::LibraryError::Init, ("{err}"))
        }
        ModelError::Inference(_) => gst::error_msg!(gst::LibraryError::Failed, ("{err}")),
    }
}

fn colorimetry(info: &gst_video::VideoInfo) -> Colorimetry {
    let colorimetry = info.colorimetry();
    Colorimetry {
        matrix: match colorimetry.matrix() {
            gst_video::VideoColorMatrix::Bt709 => YuvMatrix::Bt709,
            gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::Bt2020,
            _ => YuvMatrix::Bt601,
        },
        full_range: colorimetry.range() == gst_video::VideoColorRange::Range0_255,
    }
}

/// An ARGB overlay rectangle (GStreamer's composition layout) rendered at `render`.
fn overlay_rectangle(
    pixels: Vec<u8>,
    width: u32,
    height: u32,
    render: (i32, i32, u32, u32),
) -> Result<gst_video::VideoOverlayRectangle, glib::BoolError> {
    let format = if cfg!(target_endian = "little") {
        gst_video::VideoFormat::Bgra
    } else {
        gst_video::VideoFormat::Argb
    };
    let mut buffer = gst::Buffer::from_mut_slice(pixels);
    let buffer_ref = buffer
        .get_mut()
        .ok_or_else(|| glib::bool_error!("a new buffer is writable"))?;
    gst_video::VideoMeta::add(
        buffer_ref,
        gst_video::VideoFrameFlags::empty(),
        format,
        width,
        height,
    )?;
    Ok(gst_video::VideoOverlayRectangle::new_raw(
        &buffer,
        render.0,
        render.1,
        render.2,
        render.3,
        gst_video::VideoOverlayFormatFlags::empty(),
    ))
}

/// Attaches the result as a GstVideoOverlayCompositionMeta (`overlay=meta`): the label map in
/// instance colours as one rectangle scaled onto the mask rectangle, box edges as one-colour
/// rectangles, and the texts; the frame's pixels are left alone.
fn compose(
    buf: &mut gst::BufferRef,
    result: &FrameResult,
    geometry: &Geometry,
    style: OverlayStyle,
) -> Result<(), glib::BoolError> {
    let mask = result
        .mask
        .map_readable()
        .map_err(|_| glib::bool_error!("unreadable mask"))?;
    let instances = result.overlay_instances();
    let m = &geometry.mask;
    let (width, height) = (m.grid_width as usize, m.grid_height as usize);
    let mut rectangles = vec![overlay_rectangle(
        overlay::mask_argb(&mask, width, height, &instances, style),
        m.grid_width,
        m.grid_height,
        (
            m.rect_x as i32,
            m.rect_y as i32,
            m.rect_width,
            m.rect_height,
        ),
    )?];
    for instance in &instances {
        let [x, y, w, h] = instance.bbox;
        if w == 0 || h == 0 {
            continue;
        }
        if style.draw_boxes {
            let [r, g, b] = overlay::track_colour(instance.track_id);
            let argb = u32::from_be_bytes([255, r, g, b]).to_ne_bytes();
            let (x, y) = (x as i32, y as i32);
            let edges = [
                (x, y, w, 2),
                (x, y + h as i32 - 2, w, 2),
                (x, y, 2, h),
                (x + w as i32 - 2, y, 2, h),
            ];
            for edge in edges {
                rectangles.push(overlay_rectangle(argb.to_vec(), 1, 1, edge)?);
            }
        }
        if style.draw_labels {
            let (pixels, w, h, x, y) = overlay::label_argb(instance, m.frame_width, m.frame_height);
            rectangles.push(overlay_rectangle(pixels, w, h, (x, y, w, h))?);
        }
    }
    let composition = gst_video::VideoOverlayComposition::new(&rectangles)?;
    gst_video::VideoOverlayCompositionMeta::add(buf, &composition);
    Ok(())
}

/// Places the model input on the frame and the label map back onto it.
fn geometry(info: gst_video::VideoInfo, contract: &Contract) -> Option<Geometry> {
    let format = PixelFormat::from_caps_name(info.format().to_str())?;
    let (frame_width, frame_height) = (info.width(), info.height());
    let mode = match contract.resize {
        model::Resize::Letterbox => ResizeMode::Letterbox,
        model::Resize::Stretch => ResizeMode::Stretch,
    };
    let placement = Placement::new(
        frame_width,
        frame_height,
        contract.input_width,
        contract.input_height,
        mode,
    );
    // Grid cells whose centre lies on the picture (not on the letterbox padding).
    let stride = f64::from(contract.stride);
    let cells = |start: u32, len: u32, grid: u32| {
        let first = (f64::from(start) / stride - 0.5).ceil().max(0.0) as u32;
        let end = (f64::from(start + len) / stride - 0.5).ceil() as u32;
        let first = first.min(grid - 1);
        (
            first as usize,
            end.clamp(first + 1, grid) as usize - first as usize,
        )
    };
    let (crop_x, crop_width) = cells(placement.x, placement.width, contract.grid_width);
    let (crop_y, crop_height) = cells(placement.y, placement.height, contract.grid_height);
    Some(Geometry {
        colorimetry: colorimetry(&info),
        format,
        placement,
        crop: (crop_x, crop_y, crop_width, crop_height),
        mask: MaskGeometry {
            grid_width: crop_width as u32,
            grid_height: crop_height as u32,
            rect_x: 0,
            rect_y: 0,
            rect_width: frame_width,
            rect_height: frame_height,
            frame_width,
            frame_height,
        },
        info,
        downstream_composes: false,
    })
}

#[glib::object_subclass]
impl ObjectSubclass for InstSeg {
    const NAME: &'static str = "GstInstSeg";
    type Type = super::InstSeg;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for InstSeg {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("model-location")
                    .nick("Model location")
                    .blurb("ONNX model file (instseg contract 1); empty: the model embedded in the plugin")
                    .default_value(Some(DEFAULT_MODEL_LOCATION))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("execution-provider", DEFAULT_EXECUTION_PROVIDER)
                    .nick("Execution provider")
                    .blurb("ONNX Runtime execution provider: auto tries CUDA, then CPU")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("device-id")
                    .nick("Device id")
                    .blurb("GPU to run on (CUDA, TensorRT)")
                    .minimum(0)
                    .default_value(DEFAULT_DEVICE_ID)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("Intra-op threads of ONNX Runtime (0 = runtime default)")
                    .maximum(1024)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("active-execution-provider")
                    .nick("Active execution provider")
                    .blurb("The execution provider that actually runs the model (cpu, cuda, tensorrt)")
                    .read_only()
                    .build(),
                glib::ParamSpecDouble::builder("seed-threshold")
                    .nick("Seed threshold")
                    .blurb("Minimum seediness of a seed candidate (-1 = the model's recommendation, else 0.5)")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_SEED_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("alpha")
                    .nick("Alpha")
                    .blurb("Weight of the distance term when picking seeds (-1 = the model's recommendation, else 0.3)")
                    .minimum(-1.0)
                    .maximum(100.0)
                    .default_value(DEFAULT_ALPHA)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-instances")
                    .nick("Maximum instances")
                    .blurb("Most instances kept per frame")
                    .minimum(1)
                    .maximum(255)
                    .default_value(DEFAULT_MAX_INSTANCES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecInt::builder("min-area")
                    .nick("Minimum area")
                    .blurb("Smallest mask kept, in output-grid pixels (-1 = the model's recommendation, else 4)")
                    .minimum(-1)
                    .default_value(DEFAULT_MIN_AREA)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("overlaps", DEFAULT_OVERLAPS)
                    .nick("Overlaps")
                    .blurb("Which instance a pixel inside several masks belongs to: the one whose seed is nearest in embedding space (SPEC section 2), the most confident one (confident: masks of confident seeds stay whole), or auto (the model's recommendation, else nearest)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("max-overlap")
                    .nick("Maximum overlap")
                    .blurb("Drop an instance when more than this share of its mask stays with instances found before it, like a mask under min-area (1 = keep every instance; -1 = the model's recommendation, else 1)")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_MAX_OVERLAP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("tracking")
                    .nick("Tracking")
                    .blurb("Warm-start each frame from the previous one's seeds so instances keep their id")
                    .default_value(DEFAULT_TRACKING)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("track-max-age")
                    .nick("Track maximum age")
                    .blurb("Frames a track survives without being matched")
                    .default_value(DEFAULT_TRACK_MAX_AGE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("match-similarity")
                    .nick("Match similarity")
                    .blurb("Minimum similarity between a track and its new seed")
                    .minimum(0.001)
                    .maximum(1.0)
                    .default_value(DEFAULT_MATCH_SIMILARITY)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecInt::builder("search-radius")
                    .nick("Search radius")
                    .blurb("Half-size in output-grid pixels of the window searched around a track's last seed (-1 = max(4, its box diagonal))")
                    .minimum(-1)
                    .default_value(DEFAULT_SEARCH_RADIUS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("track-seed-threshold")
                    .nick("Track seed threshold")
                    .blurb("Minimum seediness of a tracked object's new seed; lower than seed-threshold keeps objects tracked through weak frames, unless the weak seed's mask would be more than twice the object's last area (-1 = the model's recommendation, else seed-threshold)")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_TRACK_SEED_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("warm-seed", DEFAULT_WARM_SEED)
                    .nick("Warm seed")
                    .blurb("Which pixel of its search window a track takes as its seed, among those that reach match-similarity: the best seediness times similarity (balanced, SPEC section 3), mostly the most seed-like (seed-like: best seediness times similarity^0.1, close to the seed the greedy step would take, so tracking keeps its mask), or auto (the model's recommendation, else balanced)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("warm-order", DEFAULT_WARM_ORDER)
                    .nick("Warm order")
                    .blurb("In which order the tracks take their seeds, each seed's mask covering its pixels for the tracks after it: by last confidence (confidence, SPEC section 3), the track whose best seed matches it most closely first (match: crossing objects keep their ids), or auto (the model's recommendation, else confidence)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("rematch", DEFAULT_REMATCH)
                    .nick("Rematch")
                    .blurb("Whether a new instance takes over the id of a track that found no seed in this frame when its seed lies within the track's reach (its box diagonal from its last seed, two more per frame missed): on, off (SPEC section 3: every new instance starts a track), or auto (the model's recommendation, else off)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("results-location")
                    .nick("Results location")
                    .blurb("File that gets one JSON line per frame (instances with COCO RLE masks); empty: none")
                    .default_value(Some(DEFAULT_RESULTS_LOCATION))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("post-messages")
                    .nick("Post messages")
                    .blurb("Post an element message \"instseg\" with the results of every frame")
                    .default_value(DEFAULT_POST_MESSAGES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("inference-interval")
                    .nick("Inference interval")
                    .blurb("Run the network on every Nth frame; frames in between carry the last result")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(DEFAULT_INFERENCE_INTERVAL)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("overlay", DEFAULT_OVERLAY)
                    .nick("Overlay")
                    .blurb("Make the result visible: none, a composition meta, drawn into the frame, or auto (meta when downstream composes overlays, else blend)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("overlay-alpha")
                    .nick("Overlay alpha")
                    .blurb("Opacity of the mask fill (outlines are solid)")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_OVERLAY_ALPHA)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("draw-boxes")
                    .nick("Draw boxes")
                    .blurb("Draw each instance's bounding box")
                    .default_value(DEFAULT_DRAW_BOXES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("draw-labels")
                    .nick("Draw labels")
                    .blurb("Write \"label #track confidence\" above each box")
                    .default_value(DEFAULT_DRAW_LABELS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Frames processed and mean milliseconds per stage")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.lock_settings();
        match pspec.name() {
            "model-location" => {
                settings.model_location = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }
            "execution-provider" => {
                settings.execution_provider = value.get().expect("type checked upstream")
            }
            "device-id" => settings.device_id = value.get().expect("type checked upstream"),
            "threads" => settings.threads = value.get().expect("type checked upstream"),
            "seed-threshold" => {
                settings.seed_threshold = value.get().expect("type checked upstream")
            }
            "alpha" => settings.alpha = value.get().expect("type checked upstream"),
            "max-instances" => settings.max_instances = value.get().expect("type checked upstream"),
            "min-area" => settings.min_area = value.get().expect("type checked upstream"),
            "overlaps" => settings.overlaps = value.get().expect("type checked upstream"),
            "max-overlap" => settings.max_overlap = value.get().expect("type checked upstream"),
            "tracking" => settings.tracking = value.get().expect("type checked upstream"),
            "track-max-age" => settings.track_max_age = value.get().expect("type checked upstream"),
            "match-similarity" => {
                settings.match_similarity = value.get().expect("type checked upstream")
            }
            "search-radius" => settings.search_radius = value.get().expect("type checked upstream"),
            "track-seed-threshold" => {
                settings.track_seed_threshold = value.get().expect("type checked upstream")
            }
            "warm-seed" => settings.warm_seed = value.get().expect("type checked upstream"),
            "rematch" => settings.rematch = value.get().expect("type checked upstream"),
            "warm-order" => settings.warm_order = value.get().expect("type checked upstream"),
            "results-location" => {
                settings.results_location = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }
            "post-messages" => settings.post_messages = value.get().expect("type checked upstream"),
            "inference-interval" => {
                settings.inference_interval = value.get().expect("type checked upstream")
            }
            "overlay" => settings.overlay = value.get().expect("type checked upstream"),
            "overlay-alpha" => settings.overlay_alpha = value.get().expect("type checked upstream"),
            "draw-boxes" => settings.draw_boxes = value.get().expect("type checked upstream"),
            "draw-labels" => settings.draw_labels = value.get().expect("type checked upstream"),
            other => unreachable!("no writable property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            let stats = *self
                .stats
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            return stats.to_structure().to_value();
        }
        if pspec.name() == "active-execution-provider" {
            return self
                .active_provider
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .to_value();
        }
        let settings = self.lock_settings();
        match pspec.name() {
            "model-location" => settings.model_location.to_value(),
            "execution-provider" => settings.execution_provider.to_value(),
            "device-id" => settings.device_id.to_value(),
            "threads" => settings.threads.to_value(),
            "seed-threshold" => settings.seed_threshold.to_value(),
            "alpha" => settings.alpha.to_value(),
            "max-instances" => settings.max_instances.to_value(),
            "min-area" => settings.min_area.to_value(),
            "overlaps" => settings.overlaps.to_value(),
            "max-overlap" => settings.max_overlap.to_value(),
            "tracking" => settings.tracking.to_value(),
            "track-max-age" => settings.track_max_age.to_value(),
            "match-similarity" => settings.match_similarity.to_value(),
            "search-radius" => settings.search_radius.to_value(),
            "track-seed-threshold" => settings.track_seed_threshold.to_value(),
            "warm-seed" => settings.warm_seed.to_value(),
            "rematch" => settings.rematch.to_value(),
            "warm-order" => settings.warm_order.to_value(),
            "results-location" => settings.results_location.to_value(),
            "post-messages" => settings.post_messages.to_value(),
            "inference-interval" => settings.inference_interval.to_value(),
            "overlay" => settings.overlay.to_value(),
            "overlay-alpha" => settings.overlay_alpha.to_value(),
            "draw-boxes" => settings.draw_boxes.to_value(),
            "draw-labels" => settings.draw_labels.to_value(),
            other => unreachable!("no readable property {other}"),
        }
    }
}

impl GstObjectImpl for InstSeg {}

impl ElementImpl for InstSeg {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Instance segmentation",
                "Filter/Analyzer/Video",
                "Segments object instances with a deep-metric-learning model (Fathi et al. 2017) on \
                 ONNX Runtime and attaches masks, classes and stable track ids as metadata",
                "instseg developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(
                    PixelFormat::ALL.map(|(_, name)| gst_video::VideoFormat::from_string(name)),
                )
                .build();
            [gst::PadDirection::Src, gst::PadDirection::Sink]
                .into_iter()
                .map(|direction| {
                    let name = if direction == gst::PadDirection::Src {
                        "src"
                    } else {
                        "sink"
                    };
                    gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
                        .expect("valid pad template")
                })
                .collect()
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for InstSeg {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    // Metadata is added to every buffer, which needs it writable.
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.lock_settings().clone();
        let source = settings.model_source();
        let model =
            Model::load(&source, &settings.session_options()).map_err(|err| model_error(&err))?;
        if let Some(reason) = model.fallback_reason() {
            gst::warning!(
                CAT,
                imp = self,
                "CUDA is not available, running on the CPU: {reason}"
            );
        }
        let contract = model.contract().clone();
        gst::info!(
            CAT,
            imp = self,
            "Model {:?} on {}: input {}x{}, stride {}, D = {}, thresholds {:?}, labels {:?}",
            source,
            model.active_provider(),
            contract.input_width,
            contract.input_height,
            contract.stride,
            contract.embedding_dim,
            contract.thresholds,
            contract.labels,
        );
        let results = if settings.results_location.is_empty() {
            None
        } else {
            let path = Path::new(&settings.results_location);
            let file = ResultsFile::create(path).map_err(|err| {
                gst::error_msg!(
                    gst::ResourceError::OpenWrite,
                    ("Cannot create results file {}: {err}", path.display())
                )
            })?;
            Some(file)
        };

        let mut params = Params {
            thresholds: contract.thresholds.clone(),
            ..Params::default()
        };
        settings.update_params(&contract, &mut params);
        *self
            .active_provider
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(model.active_provider().to_string());
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Stats::default();
        *self.lock_state() = Some(State {
            normalization: Normalization {
                mean: contract.mean,
                std: contract.std,
            },
            input: vec![0.0; 3 * (contract.input_width * contract.input_height) as usize],
            model,
            params,
            preprocessor: Preprocessor::default(),
            outputs: ModelOutputs::default(),
            segmenter: Segmenter::new(),
            geometry: None,
            results,
            frame_index: 0,
            warned_non_finite: false,
            last: None,
            since_inference: 0,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.lock_state() = None;
        gst::debug!(CAT, imp = self, "Stopped");
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "Invalid caps {incaps}"))?;
        // As textoverlay does: ask downstream whether it composes overlays itself.
        let mut query = gst::query::Allocation::new(Some(outcaps), false);
        let downstream_composes = self.obj().src_pad().peer_query(&mut query)
            && query
                .find_allocation_meta::<gst_video::VideoOverlayCompositionMeta>()
                .is_some();
        let mut state = self.lock_state();
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "Caps before start"))?;
        let mut geometry = geometry(info, state.model.contract())
            .ok_or_else(|| gst::loggable_error!(CAT, "Unsupported caps {incaps}"))?;
        geometry.downstream_composes = downstream_composes;
        gst::debug!(
            CAT,
            imp = self,
            "Caps {incaps}: picture at {:?} of the model input, label map {}x{}, downstream composes overlays: {}",
            geometry.placement,
            geometry.mask.grid_width,
            geometry.mask.grid_height,
            geometry.downstream_composes,
        );
        state.geometry = Some(geometry);
        // New caps: the objects of the old stream are not those of the new one.
        state.segmenter.reset();
        state.last = None;
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view() {
            *self.earliest_time.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Some(state) = self.lock_state().as_mut() {
                gst::debug!(CAT, imp = self, "Flush: forgetting all tracks");
                state.segmenter.reset();
                state.last = None;
            }
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut state = self.lock_state();
        let Some(state) = state.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("Not started"));
            return Err(gst::FlowError::NotNegotiated);
        };
        let layout = self.plane_layout(state, buf)?;
        let (interval, drawing) = {
            // Properties can change in PLAYING: take them up frame by frame.
            let settings = self.lock_settings();
            settings.update_params(state.model.contract(), &mut state.params);
            let composes = state
                .geometry
                .as_ref()
                .is_some_and(|g| g.downstream_composes);
            (settings.inference_interval, settings.drawing(composes))
        };
        // Between inferences, and on frames downstream will get late anyway, repeat the last
        // result instead of running the network: every buffer still gets a result.
        let skip =
            state.last.is_some() && (state.since_inference + 1 < interval || self.is_late(buf));
        let mut times = [0; 3];
        if skip {
            state.since_inference += 1;
            gst::trace!(
                CAT,
                imp = self,
                "Carrying the last result to {:?}",
                buf.pts()
            );
        } else {
            let (result, stage_times) = self.infer(state, buf, &layout)?;
            state.last = Some(result);
            state.since_inference = 0;
            times = stage_times;
        }
        let publishing = Instant::now();
        self.publish(state, buf, &layout, skip, drawing)?;
        let metadata_ns = publishing.elapsed().as_nanos() as u64;

        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if skip {
            stats.carried += 1;
        } else {
            stats.inferred += 1;
        }
        stats.preprocess_ns += times[0];
        stats.inference_ns += times[1];
        stats.postprocess_ns += times[2];
        stats.metadata_ns += metadata_ns;
        Ok(gst::FlowSuccess::Ok)
    }

    fn src_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Qos(qos) = event.view() {
            let (_, _, diff, timestamp) = qos.get();
            // As GstBaseTransform computes it: late buffers end before timestamp + 2 diff.
            let earliest = timestamp.map(|timestamp| {
                if diff > 0 {
                    timestamp + gst::ClockTime::from_nseconds(2 * diff as u64)
                } else {
                    timestamp.saturating_sub(gst::ClockTime::from_nseconds(diff.unsigned_abs()))
                }
            });
            *self.earliest_time.lock().unwrap_or_else(|p| p.into_inner()) = earliest;
        }
        self.parent_src_event(event)
    }
}
