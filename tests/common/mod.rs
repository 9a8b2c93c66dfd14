pub mod element;
pub mod synthetic;
