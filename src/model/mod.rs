// SPDX-License-Identifier: MIT
//! The model runtime for instseg models, with no GStreamer types.
//!
//! [`Model::load`] starts a backend for the model (a local ONNX Runtime session, ONNX Runtime
//! being found and loaded once per process (docs/element.md), or a model on a KServe v2 /
//! Triton server), checks the model against "instseg contract 1" (docs/contract.md) and
//! caches the result, so element instances that use the same model and options share one
//! backend. [`Model::run`] then feeds one normalised image and copies both outputs into
//! reusable buffers.

mod backend;
mod contract;
mod library;
mod local;
mod remote;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use backend::Backend;

use crate::segment::Params;

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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionOptions {
    pub provider: ExecutionProvider,
    pub device_id: i32,
    /// Intra-op threads; 0 leaves ONNX Runtime's default.
    pub threads: u32,
    /// Values that replace those of the file's `instseg.*` keys (named without the prefix),
    /// for experiments; checked as the file's are.
    pub overrides: Vec<(String, String)>,
    /// Bounds every request to an inference server.
    pub server_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            provider: ExecutionProvider::default(),
            device_id: 0,
            threads: 0,
            overrides: Vec::new(),
            server_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the ONNX model comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    File(PathBuf),
    /// A model on a KServe v2 / Triton HTTP server:
    /// `http://HOST:PORT/v2/models/NAME[/versions/N]`.
    Server(String),
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
    /// The C class names, for class ids 1..=C.
    pub labels: Vec<String>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: Resize,
    /// The model's post-processing recipe: the values of its post-processing keys over the
    /// defaults of [`Params`] (docs/contract.md lists the keys); its `thresholds` are the T
    /// values of tau, ascending.
    pub recipe: Params,
}

/// The execution provider a session actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveProvider {
    Cpu,
    Cuda,
    TensorRt,
    /// An inference server runs the model, on whatever it was configured with.
    Server,
}

impl fmt::Display for ActiveProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::TensorRt => "tensorrt",
            Self::Server => "server",
        })
    }
}

/// Both model outputs for one image: `embedding` is `[1, D, h, w]` and `classes`
/// `[1, T, C+1, h, w]`, with the shapes the model gave. Reused between runs so that running
/// does not allocate.
#[derive(Clone, Debug, Default)]
pub struct ModelOutputs {
    pub embedding: Vec<f32>,
    pub classes: Vec<f32>,
    pub embedding_shape: Vec<usize>,
    pub classes_shape: Vec<usize>,
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
    /// The model file does not exist, or the server has no such model.
    NotFound(String),
    /// The inference server cannot be reached, answers with an error or too late.
    Server(String),
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
            | Self::Server(message)
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
    Server(String),
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded(name) => write!(f, "embedded:{name}"),
            Self::Server(url) => f.write_str(url),
        }
    }
}

type CacheKey = (ModelId, SessionOptions);

/// A started backend, the provider it runs on and, after a fallback to the CPU, why.
type Started = (Box<dyn Backend>, ActiveProvider, Option<String>);

/// One cache entry: its lock is held while that key's session loads, so that concurrent loads
/// of one key start one session while other keys load in parallel.
type CacheSlot = Arc<Mutex<Weak<Model>>>;

/// Sessions alive anywhere in the process, so element instances share them. The map's lock is
/// only held to find or add a slot, never while a model loads.
static CACHE: LazyLock<Mutex<HashMap<CacheKey, CacheSlot>>> = LazyLock::new(Default::default);

/// A validated model and the backend that runs it; shared between element instances.
#[derive(Debug)]
pub struct Model {
    backend: Box<dyn Backend>,
    name: String,
    contract: Contract,
    active_provider: ActiveProvider,
    fallback_reason: Option<String>,
}

impl Model {
    /// Loads (or reuses from a process-wide cache) a session for this source + options,
    /// validated against the contract.
    pub fn load(source: &ModelSource, options: &SessionOptions) -> Result<Arc<Model>, ModelError> {
        let id = match source {
            ModelSource::File(path) => ModelId::File(regular_file(path)?),
            ModelSource::Embedded { name, .. } => ModelId::Embedded(name),
            ModelSource::Server(url) => ModelId::Server(url.clone()),
        };
        // Options the model ignores are left out, so that elements differing only in those
        // share one session.
        let defaults = SessionOptions::default();
        let key_options = match id {
            ModelId::Server(_) => SessionOptions {
                overrides: options.overrides.clone(),
                server_timeout: options.server_timeout,
                ..defaults
            },
            ModelId::File(_) | ModelId::Embedded(_) => SessionOptions {
                server_timeout: defaults.server_timeout,
                ..options.clone()
            },
        };
        let key = (id, key_options);
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
        let model = Arc::new(Self::start(source, key.0.to_string(), options)?);
        *loaded = Arc::downgrade(&model);
        Ok(model)
    }

    fn start(
        source: &ModelSource,
        name: String,
        options: &SessionOptions,
    ) -> Result<Self, ModelError> {
        let (backend, active_provider, fallback_reason): Started = match source {
            ModelSource::Server(url) => (
                Box::new(remote::RemoteBackend::connect(url, options.server_timeout)?),
                ActiveProvider::Server,
                None,
            ),
            ModelSource::File(path) => Self::start_local(local::Onnx::File(path), &name, options)?,
            ModelSource::Embedded { bytes, .. } => {
                Self::start_local(local::Onnx::Memory(bytes), &name, options)?
            }
        };
        let contract = contract::validate(backend.as_ref(), &name, &options.overrides)?;
        Ok(Self {
            backend,
            name,
            contract,
            active_provider,
            fallback_reason,
        })
    }

    /// A local ONNX Runtime session, ONNX Runtime loaded first if need be.
    fn start_local(
        onnx: local::Onnx,
        name: &str,
        options: &SessionOptions,
    ) -> Result<Started, ModelError> {
        let runtime = library::runtime()?;
        let (backend, active, fallback) = local::LocalBackend::start(runtime, onnx, name, options)?;
        Ok((Box::new(backend), active, fallback))
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
        self.backend.run(input, [1, 3, height, width], outputs)?;
        let grid = contract.grid_width as usize * contract.grid_height as usize;
        let classes_len = contract.recipe.thresholds.len() * (contract.labels.len() + 1) * grid;
        for (name, len, values, shape) in [
            (
                "embedding",
                contract.embedding_dim * grid,
                &outputs.embedding,
                &outputs.embedding_shape,
            ),
            (
                "classes",
                classes_len,
                &outputs.classes,
                &outputs.classes_shape,
            ),
        ] {
            if values.len() != len {
                return Err(ModelError::Inference(format!(
                    "model {}: output `{name}` has shape {shape:?}, not the {len} values of the \
                     dry run at load time",
                    self.name
                )));
            }
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
