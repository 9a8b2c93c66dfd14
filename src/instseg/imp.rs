// SPDX-License-Identifier: MIT
//! The `instseg` element: properties, per-stream state and the BaseTransform glue between the
//! model runtime (`model`), the pre-processing (`preprocess`), the segmentation (`segment`),
//! the results in frame pixels (`results`, `meta`) and the overlay (`overlay`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use super::{ExecutionProvider, Overlay};
use crate::frame::{PlaneLayout, colorimetry};
use crate::meta;
use crate::model::{
    self, ActiveProvider, Contract, Model, ModelError, ModelOutputs, ModelSource, SessionOptions,
};
use crate::overlay::{self, OverlayInstance, OverlayStyle};
use crate::preprocess::{
    Colorimetry, FrameRef, Normalization, PixelFormat, Placement, Preprocessor, ResizeMode,
};
use crate::results::{FrameResult, GridCrop, MaskGeometry, ResultsFile};
use crate::segment::{OutputView, Params, Segmenter};

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
const DEFAULT_MAX_INSTANCES: u32 = 32;
const DEFAULT_TRACKING: bool = true;
const DEFAULT_TRACK_MAX_AGE: u32 = 10;
const DEFAULT_RESULTS_LOCATION: &str = "";
const DEFAULT_INFERENCE_INTERVAL: u32 = 1;
const DEFAULT_OVERLAY: Overlay = Overlay::Auto;
const DEFAULT_OVERLAY_ALPHA: f64 = 0.5;
const DEFAULT_DRAW_BOXES: bool = true;
const DEFAULT_DRAW_LABELS: bool = true;
const DEFAULT_POST_MESSAGES: bool = false;
const DEFAULT_INFERENCE_SERVER: &str = "";
const DEFAULT_SERVER_TIMEOUT_MS: u32 = 5000;

#[derive(Debug, Clone)]
struct Settings {
    model_location: String,
    execution_provider: ExecutionProvider,
    device_id: i32,
    threads: u32,
    seed_threshold: f64,
    max_instances: u32,
    tracking: bool,
    track_max_age: u32,
    results_location: String,
    post_messages: bool,
    inference_interval: u32,
    overlay: Overlay,
    overlay_alpha: f64,
    draw_boxes: bool,
    draw_labels: bool,
    overrides: Option<gst::Structure>,
    inference_server: String,
    server_timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model_location: DEFAULT_MODEL_LOCATION.into(),
            execution_provider: DEFAULT_EXECUTION_PROVIDER,
            device_id: DEFAULT_DEVICE_ID,
            threads: DEFAULT_THREADS,
            seed_threshold: DEFAULT_SEED_THRESHOLD,
            max_instances: DEFAULT_MAX_INSTANCES,
            tracking: DEFAULT_TRACKING,
            track_max_age: DEFAULT_TRACK_MAX_AGE,
            results_location: DEFAULT_RESULTS_LOCATION.into(),
            post_messages: DEFAULT_POST_MESSAGES,
            inference_interval: DEFAULT_INFERENCE_INTERVAL,
            overlay: DEFAULT_OVERLAY,
            overlay_alpha: DEFAULT_OVERLAY_ALPHA,
            draw_boxes: DEFAULT_DRAW_BOXES,
            draw_labels: DEFAULT_DRAW_LABELS,
            overrides: None,
            inference_server: DEFAULT_INFERENCE_SERVER.into(),
            server_timeout_ms: DEFAULT_SERVER_TIMEOUT_MS,
        }
    }
}

/// What `publish` draws, decided per frame from the settings and the negotiated geometry.
#[derive(Debug, Clone, Copy)]
enum Drawing {
    Nothing,
    Meta(OverlayStyle),
    Blend(OverlayStyle),
}

/// The settings a frame needs, read once per frame (properties can change in PLAYING).
#[derive(Debug, Clone, Copy)]
struct FrameSettings {
    seed_threshold: f64,
    max_instances: u32,
    tracking: bool,
    track_max_age: u32,
    inference_interval: u32,
    post_messages: bool,
    overlay: Overlay,
    style: OverlayStyle,
}

impl FrameSettings {
    fn drawing(&self, downstream_composes: bool) -> Drawing {
        match self.overlay {
            Overlay::None => Drawing::Nothing,
            Overlay::Meta => Drawing::Meta(self.style),
            Overlay::Blend => Drawing::Blend(self.style),
            Overlay::Auto if downstream_composes => Drawing::Meta(self.style),
            Overlay::Auto => Drawing::Blend(self.style),
        }
    }

    /// The deployment's settings over `recipe`, the model's post-processing recipe.
    fn update_params(&self, recipe: &Params, params: &mut Params) {
        params.seed_threshold = if self.seed_threshold >= 0.0 {
            self.seed_threshold
        } else {
            recipe.seed_threshold
        };
        params.max_instances = self.max_instances.clamp(1, 255) as u8;
        params.tracking.enabled = self.tracking;
        params.tracking.max_age = self.track_max_age;
    }
}

impl Settings {
    fn frame_settings(&self) -> FrameSettings {
        FrameSettings {
            seed_threshold: self.seed_threshold,
            max_instances: self.max_instances,
            tracking: self.tracking,
            track_max_age: self.track_max_age,
            inference_interval: self.inference_interval,
            post_messages: self.post_messages,
            overlay: self.overlay,
            style: OverlayStyle {
                alpha: self.overlay_alpha as f32,
                draw_boxes: self.draw_boxes,
                draw_labels: self.draw_labels,
            },
        }
    }

    fn model_source(&self) -> ModelSource {
        if !self.inference_server.is_empty() {
            ModelSource::Server(self.inference_server.clone())
        } else if self.model_location.is_empty() {
            ModelSource::Embedded {
                name: "default",
                bytes: EMBEDDED_MODEL,
            }
        } else {
            ModelSource::File(PathBuf::from(&self.model_location))
        }
    }

    fn session_options(&self) -> SessionOptions {
        let mut overrides: Vec<(String, String)> = self
            .overrides
            .iter()
            .flat_map(|structure| structure.iter())
            .map(|(key, value)| {
                let text = value
                    .get::<String>()
                    .ok()
                    .or_else(|| value.serialize().ok().map(Into::into))
                    .unwrap_or_default();
                (key.to_string(), text)
            })
            .collect();
        overrides.sort();
        SessionOptions {
            provider: match self.execution_provider {
                ExecutionProvider::Auto => model::ExecutionProvider::Auto,
                ExecutionProvider::Cpu => model::ExecutionProvider::Cpu,
                ExecutionProvider::Cuda => model::ExecutionProvider::Cuda,
                ExecutionProvider::TensorRt => model::ExecutionProvider::TensorRt,
            },
            device_id: self.device_id,
            threads: self.threads,
            overrides,
            server_timeout: Duration::from_millis(u64::from(self.server_timeout_ms)),
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

    /// Counts one frame: `times` are the pre-processing, inference, post-processing and
    /// metadata nanoseconds (the first three zero on a carried frame).
    fn add(&mut self, carried: bool, times: [u64; 4]) {
        if carried {
            self.carried += 1;
        } else {
            self.inferred += 1;
        }
        self.preprocess_ns += times[0];
        self.inference_ns += times[1];
        self.postprocess_ns += times[2];
        self.metadata_ns += times[3];
    }
}

/// Where the model input and the label map sit on the negotiated frames.
struct Geometry {
    info: gst_video::VideoInfo,
    format: PixelFormat,
    colorimetry: Colorimetry,
    placement: Placement,
    crop: GridCrop,
    mask: MaskGeometry,
    /// Downstream's allocation query lists GstVideoOverlayCompositionMeta (for `overlay=auto`).
    downstream_composes: bool,
}

impl Geometry {
    /// Places the model input on frames of `info` and the label map back onto them.
    fn new(info: gst_video::VideoInfo, contract: &Contract) -> Option<Geometry> {
        let format = PixelFormat::from_caps_name(info.format().to_str())?;
        let mode = match contract.resize {
            model::Resize::Letterbox => ResizeMode::Letterbox,
            model::Resize::Stretch => ResizeMode::Stretch,
        };
        let placement = Placement::new(
            info.width(),
            info.height(),
            contract.input_width,
            contract.input_height,
            mode,
        );
        let (crop, mask) = GridCrop::of(
            &placement,
            contract.stride,
            contract.grid_width,
            contract.grid_height,
            info.width(),
            info.height(),
        );
        Some(Geometry {
            colorimetry: colorimetry(&info),
            format,
            placement,
            crop,
            mask,
            info,
            downstream_composes: false,
        })
    }
}

/// An inferred frame's result, attached to its buffer and, when inference is skipped, to the
/// next ones.
struct Published {
    result: FrameResult,
    /// The label map, shared by every meta that carries it.
    mask: gst::Buffer,
    /// What the overlay writes above each instance's box: "label #track confidence".
    texts: Vec<String>,
    /// The `overlay=meta` composition and the style it was drawn in, made on the first frame
    /// that shows this result and attached again to the frames that carry it.
    composition: Option<(OverlayStyle, gst_video::VideoOverlayComposition)>,
}

impl Published {
    fn new(result: FrameResult) -> Self {
        let texts = result.instances.iter().map(overlay::label_text).collect();
        let mask = gst::Buffer::from_slice(result.labels.clone());
        Self {
            result,
            mask,
            texts,
            composition: None,
        }
    }

    fn overlay_instances(&self) -> Vec<OverlayInstance<'_>> {
        overlay::draw_order(&self.result.instances, &self.texts)
    }
}

/// Everything built in `start` (model, buffers, tracks) and `set_caps` (geometry).
struct State {
    model: Arc<Model>,
    /// The model's post-processing recipe, and the parameters in use (the recipe with the
    /// element's properties over it).
    recipe: Params,
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
    last: Option<Published>,
    /// Frames since the last inference.
    since_inference: u32,
    /// First and last seen times of the tracks, for the analytics meta's tracking Mtds.
    #[cfg(feature = "analytics")]
    tracks: crate::analytics::Tracks,
}

/// What one frame produced besides its buffer: messages to post once the locks are released.
#[derive(Default)]
struct FrameOutcome {
    warning: Option<String>,
    message: Option<gst::Structure>,
    carried: bool,
    times: [u64; 4],
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

/// Locks `mutex`, taking the data of a poisoned one (a panic elsewhere must not stop the
/// stream for good).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl InstSeg {
    /// Runs one frame under the state lock; `outcome` gets what is to be posted afterwards.
    fn process(
        &self,
        buf: &mut gst::BufferRef,
        settings: &FrameSettings,
        outcome: &mut FrameOutcome,
    ) -> Result<(), gst::ErrorMessage> {
        let mut state = lock(&self.state);
        let state = state
            .as_mut()
            .ok_or_else(|| gst::error_msg!(gst::CoreError::Negotiation, ("Not started")))?;
        let geometry = state
            .geometry
            .as_ref()
            .ok_or_else(|| gst::error_msg!(gst::CoreError::Negotiation, ("No caps negotiated")))?;
        let layout = PlaneLayout::of(buf, &geometry.info, geometry.format).map_err(|err| {
            gst::error_msg!(
                gst::StreamError::Format,
                (
                    "Refused a {}x{} {} buffer whose planes do not fit its memory: {err}; fix \
                     the element upstream that made it",
                    geometry.info.width(),
                    geometry.info.height(),
                    geometry.info.format().to_str()
                )
            )
        })?;
        settings.update_params(&state.recipe, &mut state.params);
        // Between inferences, and on frames downstream will get late anyway, repeat the last
        // result instead of running the network: every buffer still gets a result.
        outcome.carried = state.last.is_some()
            && (state.since_inference + 1 < settings.inference_interval || self.is_late(buf));
        if outcome.carried {
            state.since_inference += 1;
            gst::trace!(
                CAT,
                imp = self,
                "Carrying the last result to {:?}",
                buf.pts()
            );
        } else {
            let result = self.infer(state, buf, &layout, outcome)?;
            state.last = Some(Published::new(result));
            state.since_inference = 0;
        }
        let publishing = Instant::now();
        let composes = state
            .geometry
            .as_ref()
            .is_some_and(|g| g.downstream_composes);
        let drawing = settings.drawing(composes);
        let structure = publish(state, buf, &layout, outcome.carried, drawing)?;
        if settings.post_messages {
            let mut structure = structure;
            structure.set("timestamp", buf.pts());
            outcome.message = Some(structure);
        }
        outcome.times[3] = publishing.elapsed().as_nanos() as u64;
        Ok(())
    }

    /// Runs the model and the segmentation on one frame and maps the result to frame pixels;
    /// records the time of each stage in `outcome`.
    fn infer(
        &self,
        state: &mut State,
        buf: &gst::BufferRef,
        layout: &PlaneLayout,
        outcome: &mut FrameOutcome,
    ) -> Result<FrameResult, gst::ErrorMessage> {
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
        let geometry = geometry.as_ref().expect("checked by process");
        let contract = model.contract();
        let started = Instant::now();

        {
            let map = buf.map_readable().map_err(|_| {
                gst::error_msg!(
                    gst::ResourceError::Read,
                    ("Cannot map the buffer to read the frame")
                )
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
                    gst::error_msg!(gst::StreamError::Format, ("Cannot read the frame: {err}"))
                })?;
        }
        let preprocessed = Instant::now();

        model.run(input, outputs).map_err(|err| match err {
            ModelError::Server(_) => gst::error_msg!(gst::ResourceError::Read, ("{err}")),
            err => gst::error_msg!(gst::LibraryError::Failed, ("Inference failed: {err}")),
        })?;
        let inferred = Instant::now();
        // Scanning the outputs costs a pass over them; once warned, there is nothing to report.
        if !*warned_non_finite {
            let non_finite = outputs.non_finite_share();
            if non_finite > 0.5 {
                *warned_non_finite = true;
                outcome.warning = Some(format!(
                    "{:.0}% of the model's outputs on frame {frame_index} are NaN or infinite: \
                     those pixels are never part of an instance; check the model and its \
                     instseg.mean and instseg.std (reported once)",
                    100.0 * non_finite
                ));
            }
        }

        let segmentation = OutputView::new(
            &outputs.embedding,
            &outputs.classes,
            contract.embedding_dim,
            contract.recipe.thresholds.len(),
            contract.labels.len() + 1,
            contract.grid_height as usize,
            contract.grid_width as usize,
        )
        .and_then(|view| segmenter.segment(&view, params))
        .map_err(|err| {
            gst::error_msg!(gst::StreamError::Decode, ("Model output rejected: {err}"))
        })?;
        let result = FrameResult::new(segmentation, geometry.crop, geometry.mask, &contract.labels);
        let postprocessed = Instant::now();

        let nanos = |from: Instant, to: Instant| to.duration_since(from).as_nanos() as u64;
        outcome.times[0] = nanos(started, preprocessed);
        outcome.times[1] = nanos(preprocessed, inferred);
        outcome.times[2] = nanos(inferred, postprocessed);
        Ok(result)
    }

    /// Whether downstream's QoS says this buffer will be late anyway.
    fn is_late(&self, buf: &gst::BufferRef) -> bool {
        let Some(earliest) = *lock(&self.earliest_time) else {
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

/// Attaches the last result to a buffer (its metas, the overlay) and writes its JSON line;
/// returns the `InstSegMeta` structure for the element message.
fn publish(
    state: &mut State,
    buf: &mut gst::BufferRef,
    layout: &PlaneLayout,
    carried: bool,
    drawing: Drawing,
) -> Result<gst::Structure, gst::ErrorMessage> {
    let State {
        last,
        geometry,
        results,
        frame_index,
        ..
    } = state;
    let (Some(published), Some(geometry)) = (last.as_mut(), geometry.as_ref()) else {
        return Err(gst::error_msg!(
            gst::CoreError::Negotiation,
            ("No result to attach")
        ));
    };
    let result = &published.result;
    meta::add_regions_of_interest(buf, result);
    match drawing {
        Drawing::Nothing => (),
        Drawing::Blend(style) => {
            let mut map = buf.map_writable().map_err(|_| {
                gst::error_msg!(
                    gst::ResourceError::Write,
                    ("Cannot map the frame to draw into it")
                )
            })?;
            let mut frame = overlay::FrameMut {
                format: geometry.format,
                width: geometry.info.width() as usize,
                height: geometry.info.height() as usize,
                planes: layout.planes_mut(&mut map),
                strides: layout.strides(),
            };
            let instances = published.overlay_instances();
            overlay::blend(
                &mut frame,
                &result.labels,
                &result.geometry,
                &instances,
                style,
            );
        }
        Drawing::Meta(style) => {
            let composition = match &published.composition {
                Some((drawn_in, composition)) if *drawn_in == style => composition.clone(),
                _ => {
                    let instances = published.overlay_instances();
                    let composition = overlay::composition::compose(
                        &result.labels,
                        &result.geometry,
                        &instances,
                        style,
                    )
                    .map_err(|err| {
                        gst::error_msg!(gst::CoreError::Failed, ("Cannot make the overlay: {err}"))
                    })?;
                    published.composition = Some((style, composition.clone()));
                    composition
                }
            };
            gst_video::VideoOverlayCompositionMeta::add(buf, &composition);
        }
    }
    let structure = meta::structure(result, &published.mask, carried);
    meta::attach(buf, &structure).map_err(|err| {
        gst::error_msg!(
            gst::CoreError::Failed,
            ("Cannot attach {}: {err}", meta::META_NAME)
        )
    })?;
    #[cfg(feature = "analytics")]
    crate::analytics::publish(
        buf,
        result,
        &published.mask,
        carried,
        &state.params.tracking,
        &mut state.tracks,
    )?;
    if let Some(file) = results {
        let pts = buf.pts().map(gst::ClockTime::nseconds);
        file.write(*frame_index, pts, carried, result)
            .map_err(|err| {
                gst::error_msg!(
                    gst::ResourceError::Write,
                    (
                        "Cannot write the results of frame {frame_index} to {}: {err}",
                        file.path().display()
                    )
                )
            })?;
    }
    *frame_index += 1;
    Ok(structure)
}

/// A model that cannot load, as the error of the GStreamer domain it belongs to.
fn model_error(err: &ModelError) -> gst::ErrorMessage {
    match err {
        ModelError::NotFound(_) => gst::error_msg!(gst::ResourceError::NotFound, ("{err}")),
        ModelError::File(_) | ModelError::Server(_) => {
            gst::error_msg!(gst::ResourceError::OpenRead, ("{err}"))
        }
        ModelError::Contract(_) => gst::error_msg!(gst::LibraryError::Settings, ("{err}")),
        ModelError::Runtime(_) | ModelError::Provider(_) => {
            gst::error_msg!(gst::LibraryError::Init, ("{err}"))
        }
        ModelError::Inference(_) => gst::error_msg!(gst::LibraryError::Failed, ("{err}")),
    }
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
                    .blurb("ONNX model file (docs/contract.md); empty: the model embedded in the plugin")
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
                    .blurb("Minimum seediness of a seed (-1 = the model's recommendation, else 0.5)")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_SEED_THRESHOLD)
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
                glib::ParamSpecString::builder("results-location")
                    .nick("Results location")
                    .blurb("File that gets one JSON line per frame (docs/results.md); empty: none")
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
                glib::ParamSpecBoxed::builder::<gst::Structure>("overrides")
                    .nick("Overrides")
                    .blurb("Values replacing the model's instseg.* metadata, keys without the prefix, for experiments (docs/contract.md), e.g. \"overrides,alpha=0.3,min-area=8\"")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("inference-server")
                    .nick("Inference server")
                    .blurb("URL of the model on a KServe v2 / Triton HTTP server, http://HOST:PORT/v2/models/NAME[/versions/N], which then runs the network instead of a local ONNX Runtime (model-location is not used); empty: local")
                    .default_value(Some(DEFAULT_INFERENCE_SERVER))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("server-timeout")
                    .nick("Server timeout")
                    .blurb("Milliseconds an inference server has to answer each request")
                    .minimum(1)
                    .maximum(600_000)
                    .default_value(DEFAULT_SERVER_TIMEOUT_MS)
                    .mutable_ready()
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
        let string = || {
            value
                .get::<Option<String>>()
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let mut settings = lock(&self.settings);
        match pspec.name() {
            "model-location" => settings.model_location = string(),
            "execution-provider" => {
                settings.execution_provider = value.get().expect("type checked upstream")
            }
            "device-id" => settings.device_id = value.get().expect("type checked upstream"),
            "threads" => settings.threads = value.get().expect("type checked upstream"),
            "seed-threshold" => {
                settings.seed_threshold = value.get().expect("type checked upstream")
            }
            "max-instances" => settings.max_instances = value.get().expect("type checked upstream"),
            "tracking" => settings.tracking = value.get().expect("type checked upstream"),
            "track-max-age" => settings.track_max_age = value.get().expect("type checked upstream"),
            "results-location" => settings.results_location = string(),
            "post-messages" => settings.post_messages = value.get().expect("type checked upstream"),
            "inference-interval" => {
                settings.inference_interval = value.get().expect("type checked upstream")
            }
            "overlay" => settings.overlay = value.get().expect("type checked upstream"),
            "overlay-alpha" => settings.overlay_alpha = value.get().expect("type checked upstream"),
            "draw-boxes" => settings.draw_boxes = value.get().expect("type checked upstream"),
            "draw-labels" => settings.draw_labels = value.get().expect("type checked upstream"),
            "overrides" => settings.overrides = value.get().expect("type checked upstream"),
            "inference-server" => settings.inference_server = string(),
            "server-timeout" => {
                settings.server_timeout_ms = value.get().expect("type checked upstream")
            }
            other => unreachable!("no writable property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "stats" => return lock(&self.stats).to_structure().to_value(),
            "active-execution-provider" => return lock(&self.active_provider).to_value(),
            _ => (),
        }
        let settings = lock(&self.settings);
        match pspec.name() {
            "model-location" => settings.model_location.to_value(),
            "execution-provider" => settings.execution_provider.to_value(),
            "device-id" => settings.device_id.to_value(),
            "threads" => settings.threads.to_value(),
            "seed-threshold" => settings.seed_threshold.to_value(),
            "max-instances" => settings.max_instances.to_value(),
            "tracking" => settings.tracking.to_value(),
            "track-max-age" => settings.track_max_age.to_value(),
            "results-location" => settings.results_location.to_value(),
            "post-messages" => settings.post_messages.to_value(),
            "inference-interval" => settings.inference_interval.to_value(),
            "overlay" => settings.overlay.to_value(),
            "overlay-alpha" => settings.overlay_alpha.to_value(),
            "draw-boxes" => settings.draw_boxes.to_value(),
            "draw-labels" => settings.draw_labels.to_value(),
            "overrides" => settings.overrides.to_value(),
            "inference-server" => settings.inference_server.to_value(),
            "server-timeout" => settings.server_timeout_ms.to_value(),
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
            [
                ("src", gst::PadDirection::Src),
                ("sink", gst::PadDirection::Sink),
            ]
            .into_iter()
            .map(|(name, direction)| {
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
        let settings = lock(&self.settings).clone();
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
            contract.recipe.thresholds,
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

        let recipe = contract.recipe.clone();
        let mut params = recipe.clone();
        settings
            .frame_settings()
            .update_params(&recipe, &mut params);
        *lock(&self.active_provider) = Some(match model.active_provider() {
            ActiveProvider::Server => format!("server {}", settings.inference_server),
            local => local.to_string(),
        });
        *lock(&self.stats) = Stats::default();
        *lock(&self.state) = Some(State {
            normalization: Normalization {
                mean: contract.mean,
                std: contract.std,
            },
            input: vec![0.0; 3 * (contract.input_width * contract.input_height) as usize],
            model,
            recipe,
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
            #[cfg(feature = "analytics")]
            tracks: Default::default(),
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *lock(&self.state) = None;
        gst::debug!(CAT, imp = self, "Stopped");
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "Invalid caps {incaps}"))?;
        // As textoverlay does: give downstream the caps, then ask it whether it composes
        // overlays itself (an allocation query before the caps leaves some elements, such as
        // segmentationoverlay, unnegotiated).
        if self.obj().src_pad().current_caps().as_ref() != Some(outcaps) {
            self.obj()
                .src_pad()
                .push_event(gst::event::Caps::new(outcaps));
        }
        let mut query = gst::query::Allocation::new(Some(outcaps), false);
        let downstream_composes = self.obj().src_pad().peer_query(&mut query)
            && query
                .find_allocation_meta::<gst_video::VideoOverlayCompositionMeta>()
                .is_some();
        let mut state = lock(&self.state);
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "Caps before start"))?;
        let mut geometry = Geometry::new(info, state.model.contract())
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
            *lock(&self.earliest_time) = None;
            if let Some(state) = lock(&self.state).as_mut() {
                gst::debug!(CAT, imp = self, "Flush: forgetting all tracks");
                state.segmenter.reset();
                state.last = None;
            }
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = lock(&self.settings).frame_settings();
        let mut outcome = FrameOutcome::default();
        // Messages are posted here, after `process` released the state lock.
        let processed = self.process(buf, &settings, &mut outcome);
        if let Some(warning) = outcome.warning {
            gst::warning!(CAT, imp = self, "{warning}");
            gst::element_imp_warning!(self, gst::StreamError::Decode, ("{warning}"));
        }
        if let Err(err) = processed {
            self.post_error_message(err);
            return Err(gst::FlowError::Error);
        }
        if let Some(structure) = outcome.message {
            let _ = self.obj().post_message(
                gst::message::Element::builder(structure)
                    .src(&*self.obj())
                    .build(),
            );
        }
        lock(&self.stats).add(outcome.carried, outcome.times);
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
            *lock(&self.earliest_time) = earliest;
        }
        self.parent_src_event(event)
    }
}
