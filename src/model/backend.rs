// SPDX-License-Identifier: MIT
//! What runs an instseg network: the [`Backend`] trait, with two implementations, a local
//! ONNX Runtime session (`local.rs`) and a model on a KServe v2 / Triton server
//! (`remote.rs`). The contract check and [`super::Model`] see only this trait.

use std::fmt;

use super::{ModelError, ModelOutputs};

/// A tensor as the model declares it.
#[derive(Debug, Clone)]
pub(super) struct Declared {
    pub name: String,
    pub float32: bool,
    /// Dimensions, -1 where dynamic; `None` when the value is not a tensor.
    pub shape: Option<Vec<i64>>,
    /// Type and shape as the backend words them, for error messages.
    pub description: String,
}

/// Runs an instseg network; shared between element instances and their streaming threads.
pub(super) trait Backend: Send + Sync + fmt::Debug {
    fn inputs(&self) -> &[Declared];
    fn outputs(&self) -> &[Declared];
    /// The value of a metadata key such as `instseg.labels`.
    fn metadata(&self, key: &str) -> Option<&str>;
    /// Runs the network on one NCHW float32 image of `shape` and fills `outputs` with both
    /// tensors and their shapes.
    fn run(
        &self,
        input: &[f32],
        shape: [usize; 4],
        outputs: &mut ModelOutputs,
    ) -> Result<(), ModelError>;
}
