// SPDX-License-Identifier: MIT
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

//! GStreamer instance segmentation with deep metric learning (Fathi et al. 2017).
//!
//! The element `instseg` runs an ONNX model ([`model`]) on each frame after converting it
//! ([`preprocess`]), segments instances with the method's post-processing and tracking
//! ([`segment`], free of GStreamer), and attaches the results as metadata ([`meta`]) and,
//! on request, JSON Lines ([`results`]).

use gst::glib;

#[cfg(feature = "analytics")]
pub mod analytics;
pub mod frame;
mod instseg;
pub mod meta;
pub mod model;
pub mod overlay;
pub mod preprocess;
pub mod results;
pub mod segment;

pub use instseg::{ExecutionProvider, Overlay};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    meta::register();
    instseg::register(plugin)
}

gst::plugin_define!(
    instseg,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    // GStreamer refuses a plugin without an origin; the crate has no public home yet.
    env!("CARGO_PKG_NAME"),
    env!("BUILD_REL_DATE")
);
