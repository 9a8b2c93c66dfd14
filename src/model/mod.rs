// SPDX-License-Identifier: MIT OR Apache-2.0
//! The model runtime: ONNX Runtime sessions for instseg models, with no GStreamer types.
//!
//! [`Model::load`] finds and loads ONNX Runtime once per process (docs/element.md), starts a
//! session on the requested execution provider, checks the model against "instseg
//! contract 1" (docs/contract.md) and caches the result, so element instances that use the
//! same model and options share one session. [`Model::run`] then feeds one normalised
//! image and copies both outputs into reusable buffers.

mod contract;
mod library;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::value::TensorRef;

use crate::segment::{Overlaps, Params, TrackingParams};

/// The execution provider asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExecutionProvider {
    /// CUDA when it can start, else CPU (with [`Model::fallback_reason`] saying why).
    #[default]
    Auto,
    Cpu,
    Cuda,
    TensorRt,
}

/// How a session is started; part of the session cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionOptions {
    pub provider: ExecutionProvider,
    pub device_id: i32,
    /// Intra-op threads; 0 leaves ONNX Runtime's default.
    pub threads: u32,
    /// Values that replace those of the file's `instseg.*` keys (named without the prefix),
    /// for experiments; checked as the file's are.
    pub overrides: Vec<(String, String)>,
}

/// Where the ONNX model comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    File(PathBuf),
    /// A model compiled into the plugin; `name` identifies it in errors and the cache.
    Embedded {
        name: &'static str,
        bytes: &'static [u8],
    },
}

/// How frames are fitted to the model input (`instseg.resize`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// Keep the aspect ratio and pad.
    Letterbox,
    Stretch,
}

/// What a model promises, read from its tensors and `instseg.*` metadata and checked by a
/// dry run.
#[derive(Clone, Debug)]
pub struct Contract {
    pub input_name: String,
    /// The size to feed: the fixed input size, or `instseg.input-size` when it is dynamic.
    pub input_width: u32,
    pub input_height: u32,
    /// Input size divided by output grid size, the same on both axes.
    pub stride: u32,
    pub grid_width: u32,
    pub grid_height: u32,
    /// D, the length of one pixel's embedding.
    pub embedding_dim: usize,
    /// The T values of tau, ascending.
    pub thresholds: Vec<f64>,
    /// The C class names, for class ids 1..=C.
    pub labels: Vec<String>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: Resize,
    /// Recommended post-processing defaults; `None` when the model does not say.
    pub alpha: Option<f64>,
    pub seed_threshold: Option<f64>,
    pub min_area: Option<u32>,
    /// `instseg.track-seed-threshold`, an extension of the contract: see
    /// `TrackingParams::seed_threshold`.
    pub track_seed_threshold: Option<f64>,
    /// `instseg.overlaps`, an extension of the contract: see `segment::Overlaps`.
    pub overlaps: Option<Overlaps>,
    /// `instseg.max-overlap`, an extension of the contract: see `segment::Params::max_overlap`.
    pub max_overlap: Option<f64>,
    /// `instseg.match-similarity`: see `segment::TrackingParams::match_similarity`.
    pub match_similarity: Option<f64>,
    /// `instseg.search-radius`: see `segment::TrackingParams::search_radius`.
    pub search_radius: Option<u32>,
}

impl Contract {
    /// The model's post-processing recipe: its recommendations over the defaults of
    /// [`Params`] (docs/contract.md lists the keys).
    pub fn params(&self) -> Params {
        let defaults = Params::default();
        Params {
            thresholds: self.thresholds.clone(),
            seed_threshold: self.seed_threshold.unwrap_or(defaults.seed_threshold),
            alpha: self.alpha.unwrap_or(defaults.alpha),
            max_instances: defaults.max_instances,
            min_area: self.min_area.unwrap_or(defaults.min_area),
            overlaps: self.overlaps.unwrap_or(defaults.overlaps),
            max_overlap: self.max_overlap.unwrap_or(defaults.max_overlap),
            tracking: TrackingParams {
                match_similarity: self
                    .match_similarity
                    .unwrap_or(defaults.tracking.match_similarity),
                search_radius: self.search_radius,
                seed_threshold: self.track_seed_threshold,
                ..defaults.tracking
            },
        }
    }
}

/// The execution provider a session actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveProvider {
    Cpu,
    Cuda,
    TensorRt,
}

impl fmt::Display for ActiveProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::TensorRt => "tensorrt",
        })
    }
}

/// Both model outputs for one image, batch dimension dropped: `embedding` is `[D, h, w]`
/// and `classes` `[T, C+1, h, w]`. Reused between runs so that running does not allocate.
#[derive(Clone, Debug, Default)]
pub struct ModelOutputs {
    pub embedding: Vec<f32>,
    pub classes: Vec<f32>,
}

impl ModelOutputs {
    /// The share of output values that are NaN or infinite (such pixels are never seeds nor
    /// inside a mask: a model whose outputs are mostly so finds nothing).
    pub fn non_finite_share(&self) -> f64 {
        let total = self.embedding.len() + self.classes.len();
        if total == 0 {
            return 0.0;
        }
        let non_finite = (self.embedding.iter().chain(&self.classes))
            .filter(|value| !value.is_finite())
            .count();
        non_finite as f64 / total as f64
    }
}

/// Why a model cannot be loaded or run. Every message says what was found, what was
/// expected and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// ONNX Runtime could not be found, loaded or started.
    Runtime(String),
    /// An explicitly requested execution provider could not start.
    Provider(String),
    /// The model file does not exist.
    NotFound(String),
    /// The model file is unreadable, not a regular file or not an ONNX model.
    File(String),
    /// The model does not follow the instseg contract.
    Contract(String),
    /// Running the model failed.
    Inference(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Runtime(message)
            | Self::Provider(message)
            | Self::NotFound(message)
            | Self::File(message)
            | Self::Contract(message)
            | Self::Inference(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ModelError {}

/// A model in the cache: its canonical file path or embedded name, shown in errors too.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ModelId {
    File(PathBuf),
    Embedded(&'static str),
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded(name) => write!(f, "embedded:{name}"),
        }
    }
}

type CacheKey = (ModelId, SessionOptions);

/// One cache entry: its lock is held while that key's session loads, so that concurrent loads
/// of one key start one session while other keys load in parallel.
type CacheSlot = Arc<Mutex<Weak<Model>>>;

/// Sessions alive anywhere in the process, so element instances share them. The map's lock is
/// only held to find or add a slot, never while a model loads.
static CACHE: LazyLock<Mutex<HashMap<CacheKey, CacheSlot>>> = LazyLock::new(Default::default);

/// A validated ONNX Runtime session for one model; shared between element instances.
#[derive(Debug)]
pub struct Model {
    /// `Session::run` needs `&mut`; streaming threads take turns.
    session: Mutex<Session>,
    name: String,
    contract: Contract,
    active_provider: ActiveProvider,
    fallback_reason: Option<String>,
}

impl Model {
    /// Loads (or reuses from a process-wide cache) a session for this source + options,
    /// validated against the contract.
    pub fn load(source: &ModelSource, options: &SessionOptions) -> Result<Arc<Model>, ModelError> {
        let runtime = library::runtime()?;
        let id = match source {
            ModelSource::File(path) => ModelId::File(regular_file(path)?),
            ModelSource::Embedded { name, .. } => ModelId::Embedded(name),
        };
        let key = (id, options.clone());
        let slot = {
            let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
            // Drop the entries of unloaded models nobody is loading.
            cache.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map_or(true, |model| model.strong_count() > 0)
            });
            Arc::clone(cache.entry(key.clone()).or_default())
        };
        let mut loaded = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(model) = loaded.upgrade() {
            return Ok(model);
        }
        let model = Arc::new(Self::start(runtime, source, key.0.to_string(), options)?);
        *loaded = Arc::downgrade(&model);
        Ok(model)
    }

    fn start(
        runtime: &library::Runtime,
        source: &ModelSource,
        name: String,
        options: &SessionOptions,
    ) -> Result<Self, ModelError> {
        let start = |provider| start_session(runtime, source, &name, options, provider);
        let requested = match options.provider {
            ExecutionProvider::Cpu => ActiveProvider::Cpu,
            ExecutionProvider::Auto | ExecutionProvider::Cuda => ActiveProvider::Cuda,
            ExecutionProvider::TensorRt => ActiveProvider::TensorRt,
        };
        let (mut session, active_provider, fallback_reason) = match start(requested) {
            Ok(session) => (session, requested, None),
            Err(ModelError::Provider(reason)) if options.provider == ExecutionProvider::Auto => (
                start(ActiveProvider::Cpu)?,
                ActiveProvider::Cpu,
                Some(reason),
            ),
            Err(err) => return Err(err),
        };
        let contract = contract::validate(&mut session, &name, &options.overrides)?;
        Ok(Self {
            session: Mutex::new(session),
            name,
            contract,
            active_provider,
            fallback_reason,
        })
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    pub fn active_provider(&self) -> ActiveProvider {
        self.active_provider
    }

    /// Why `auto` fell back to CPU (None when it did not): the element logs it as a warning.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Path of the ONNX Runtime library in use (loading it if needed).
    pub fn runtime_library() -> Result<PathBuf, ModelError> {
        library::runtime().map(|runtime| runtime.library.clone())
    }

    /// Runs the model on `input` (1 x 3 x input_height x input_width, NCHW, already
    /// normalised) and copies both outputs into `outputs`, without reallocating once sized.
    pub fn run(&self, input: &[f32], outputs: &mut ModelOutputs) -> Result<(), ModelError> {
        let contract = &self.contract;
        let (width, height) = (
            contract.input_width as usize,
            contract.input_height as usize,
        );
        if input.len() != 3 * height * width {
            return Err(ModelError::Inference(format!(
                "model {}: input has {} values, expected {} (1 x 3 x {height} x {width})",
                self.name,
                input.len(),
                3 * height * width
            )));
        }
        let failed = |err: ort::Error| {
            ModelError::Inference(format!("model {}: inference failed: {err}", self.name))
        };
        let tensor = TensorRef::from_array_view(([1, 3, height, width], input)).map_err(failed)?;
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let results = session.run(ort::inputs![tensor]).map_err(failed)?;
        let grid = contract.grid_width as usize * contract.grid_height as usize;
        let classes_len = contract.thresholds.len() * (contract.labels.len() + 1) * grid;
        for (name, len, buffer) in [
            (
                "embedding",
                contract.embedding_dim * grid,
                &mut outputs.embedding,
            ),
            ("classes", classes_len, &mut outputs.classes),
        ] {
            let (shape, data) = results
                .get(name)
                .ok_or_else(|| ort::Error::new(format!("no output `{name}`")))
                .and_then(|value| value.try_extract_tensor::<f32>())
                .map_err(failed)?;
            if data.len() != len {
                return Err(ModelError::Inference(format!(
                    "model {}: output `{name}` has shape {shape:?}, not the {len} values of the \
                     dry run at load time",
                    self.name
                )));
            }
            buffer.clear();
            buffer.extend_from_slice(data);
        }
        Ok(())
    }
}

/// The canonical path of a model file, refusing anything that is not a regular file (a FIFO
/// or a device would block or never end inside ONNX Runtime's read).
fn regular_file(path: &Path) -> Result<PathBuf, ModelError> {
    let cannot_open = |err: std::io::Error| {
        let message = format!(
            "cannot open model file {}: {err}; give the path of an existing ONNX file",
            path.display()
        );
        if err.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound(message)
        } else {
            ModelError::File(message)
        }
    };
    let canonical = path.canonicalize().map_err(cannot_open)?;
    let file_type = std::fs::metadata(&canonical)
        .map_err(cannot_open)?
        .file_type();
    if !file_type.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(ModelError::File(format!(
            "model file {} is {kind}; give the path of an ONNX file",
            path.display()
        )));
    }
    Ok(canonical)
}

/// Starts a session on `provider` (CPU: ONNX Runtime's default). Failures of a GPU provider
/// are [`ModelError::Provider`], so that `auto` can fall back.
fn start_session(
    runtime: &library::Runtime,
    source: &ModelSource,
    name: &str,
    options: &SessionOptions,
    provider: ActiveProvider,
) -> Result<Session, ModelError> {
    let runtime_error = |err: String| {
        ModelError::Runtime(format!("model {name}: cannot configure a session: {err}"))
    };
    let provider_error = |reason: String| {
        let preloaded = library::preload_cuda(&runtime.library);
        ModelError::Provider(format!(
            "execution provider {provider} cannot start for model {name}: {reason} ({preloaded}). \
             To use it, install the GPU build of ONNX Runtime with `pip install onnxruntime-gpu` \
             (which also installs the CUDA libraries) and an NVIDIA GPU driver, or choose the \
             cpu execution provider"
        ))
    };

    let mut builder =
        Session::builder(&runtime.environment).map_err(|e| runtime_error(e.to_string()))?;
    if options.threads > 0 {
        builder = builder
            .with_intra_threads(options.threads as usize)
            .map_err(|e| runtime_error(e.to_string()))?;
    }
    if provider != ActiveProvider::Cpu {
        library::preload_cuda(&runtime.library);
        let available = match provider {
            ActiveProvider::TensorRt => ort::ep::TensorRT::is_available(),
            _ => ort::ep::CUDA::is_available(),
        };
        if !available.unwrap_or(true) {
            return Err(provider_error(format!(
                "the ONNX Runtime in use ({}) was built without it",
                runtime.library.display()
            )));
        }
        let cuda = ort::ep::CUDA::default()
            .with_device_id(options.device_id)
            .build()
            .error_on_failure();
        let providers = match provider {
            ActiveProvider::TensorRt => vec![
                ort::ep::TensorRT::default()
                    .with_device_id(options.device_id)
                    .build()
                    .error_on_failure(),
                cuda,
            ],
            _ => vec![cuda],
        };
        builder = builder
            .with_execution_providers(providers)
            .map_err(|e| provider_error(e.to_string()))?;
    }
    let session = match source {
        ModelSource::File(path) => builder.commit_from_file(path),
        ModelSource::Embedded { bytes, .. } => builder.commit_from_memory(bytes),
    };
    session.map_err(|err| {
        use ort::ErrorCode::*;
        let code = err.code();
        if provider == ActiveProvider::Cpu
            || matches!(
                code,
                NoSuchFile | NoModel | InvalidProtobuf | InvalidGraph | NotImplemented
            )
        {
            ModelError::File(format!(
                "ONNX Runtime cannot load model {name}: {err}; give the path of a valid ONNX model"
            ))
        } else {
            provider_error(err.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs ONNX Runtime, found as the element finds it (the test command's virtualenv).
    #[test]
    fn a_load_that_never_ends_blocks_no_other_model() {
        let hung = (ModelId::Embedded("hung"), SessionOptions::default());
        let slot = Arc::clone(
            CACHE
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(hung)
                .or_default(),
        );
        // What a load stuck in ONNX Runtime's file open holds.
        let _loading = slot.lock().unwrap();
        let colour = ModelSource::File(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/colour.onnx"),
        );
        let options = SessionOptions {
            provider: ExecutionProvider::Cpu,
            ..SessionOptions::default()
        };
        let model = Model::load(&colour, &options).expect("loads beside the stuck one");
        assert_eq!(model.contract().labels, ["red", "green", "blue"]);
    }
}
