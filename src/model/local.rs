// SPDX-License-Identifier: MIT
//! The local backend: an ONNX Runtime session in this process, on the CPU, CUDA or TensorRT.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};

use super::backend::{Backend, Declared};
use super::{
    ActiveProvider, ExecutionProvider, ModelError, ModelOutputs, SessionOptions, contract, library,
};

/// An ONNX file, on disk or in memory.
#[derive(Clone, Copy, Debug)]
pub(super) enum Onnx<'a> {
    File(&'a Path),
    Memory(&'a [u8]),
}

/// An ONNX Runtime session with what it declares.
#[derive(Debug)]
pub(super) struct LocalBackend {
    /// `Session::run` needs `&mut`; streaming threads take turns.
    session: Mutex<Session>,
    name: String,
    inputs: Vec<Declared>,
    outputs: Vec<Declared>,
    /// The file's `instseg.*` metadata.
    metadata: HashMap<String, String>,
}

impl LocalBackend {
    /// Starts a session for `source` on the provider `options` ask for (`auto`: CUDA, else the
    /// CPU); returns it with the provider it runs on and, after a fallback, why.
    pub(super) fn start(
        runtime: &library::Runtime,
        source: Onnx,
        name: &str,
        options: &SessionOptions,
    ) -> Result<(Self, ActiveProvider, Option<String>), ModelError> {
        let start = |provider| start_session(runtime, source, name, options, provider);
        let requested = match options.provider {
            ExecutionProvider::Cpu => ActiveProvider::Cpu,
            ExecutionProvider::Auto | ExecutionProvider::Cuda => ActiveProvider::Cuda,
            ExecutionProvider::TensorRt => ActiveProvider::TensorRt,
        };
        let (session, active_provider, fallback_reason) = match start(requested) {
            Ok(session) => (session, requested, None),
            Err(ModelError::Provider(reason)) if options.provider == ExecutionProvider::Auto => (
                start(ActiveProvider::Cpu)?,
                ActiveProvider::Cpu,
                Some(reason),
            ),
            Err(err) => return Err(err),
        };
        let declared = |values: &[ort::value::Outlet]| -> Vec<Declared> {
            values
                .iter()
                .map(|value| {
                    let dtype = value.dtype();
                    Declared {
                        name: value.name().to_owned(),
                        float32: dtype.tensor_type() == Some(TensorElementType::Float32),
                        shape: dtype.tensor_shape().map(|shape| shape.to_vec()),
                        description: dtype.to_string(),
                    }
                })
                .collect()
        };
        let inputs = declared(session.inputs());
        let outputs = declared(session.outputs());
        let metadata = {
            let metadata = session.metadata().map_err(|err| {
                ModelError::File(format!("model {name}: cannot read its metadata: {err}"))
            })?;
            contract::KEYS
                .iter()
                .filter_map(|key| {
                    let key = format!("instseg.{key}");
                    metadata.custom(&key).map(|value| (key, value))
                })
                .collect()
        };
        let backend = Self {
            session: Mutex::new(session),
            name: name.to_owned(),
            inputs,
            outputs,
            metadata,
        };
        Ok((backend, active_provider, fallback_reason))
    }
}

impl Backend for LocalBackend {
    fn inputs(&self) -> &[Declared] {
        &self.inputs
    }

    fn outputs(&self) -> &[Declared] {
        &self.outputs
    }

    fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    fn run(
        &self,
        input: &[f32],
        shape: [usize; 4],
        outputs: &mut ModelOutputs,
    ) -> Result<(), ModelError> {
        let failed = |err: ort::Error| {
            ModelError::Inference(format!("model {}: inference failed: {err}", self.name))
        };
        let tensor = TensorRef::from_array_view((shape, input)).map_err(failed)?;
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let results = session.run(ort::inputs![tensor]).map_err(failed)?;
        for (name, values, dims) in [
            (
                "embedding",
                &mut outputs.embedding,
                &mut outputs.embedding_shape,
            ),
            ("classes", &mut outputs.classes, &mut outputs.classes_shape),
        ] {
            let (shape, data) = results
                .get(name)
                .ok_or_else(|| ort::Error::new(format!("no output `{name}`")))
                .and_then(|value| value.try_extract_tensor::<f32>())
                .map_err(failed)?;
            dims.clear();
            dims.extend(shape.iter().map(|&dim| usize::try_from(dim).unwrap_or(0)));
            values.clear();
            values.extend_from_slice(data);
        }
        Ok(())
    }
}

/// Starts a session on `provider` (CPU: ONNX Runtime's default). Failures of a GPU provider
/// are [`ModelError::Provider`], so that `auto` can fall back.
fn start_session(
    runtime: &library::Runtime,
    source: Onnx,
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
        Onnx::File(path) => builder.commit_from_file(path),
        Onnx::Memory(bytes) => builder.commit_from_memory(bytes),
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
