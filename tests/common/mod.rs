pub mod element;
pub mod onnx_meta;
pub mod synthetic;
pub mod triton;
