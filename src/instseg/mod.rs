// SPDX-License-Identifier: MIT
//! The `instseg` element: instance segmentation of raw video with a deep-metric-learning
//! model run by ONNX Runtime, results attached to each buffer as metadata.

use gst::glib;
use gst::prelude::*;

mod imp;

/// Which ONNX Runtime execution provider runs the model.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstInstSegExecutionProvider")]
pub enum ExecutionProvider {
    #[enum_value(name = "Auto: CUDA when it can start, else CPU", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 1,
    #[enum_value(name = "CUDA (error if it cannot start)", nick = "cuda")]
    Cuda = 2,
    #[enum_value(name = "TensorRT (error if it cannot start)", nick = "tensorrt")]
    TensorRt = 3,
}

/// How the result is made visible.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstInstSegOverlay")]
pub enum Overlay {
    #[enum_value(name = "None: metadata only", nick = "none")]
    None = 0,
    #[enum_value(
        name = "Auto: meta when downstream composes overlays, else blend",
        nick = "auto"
    )]
    Auto = 1,
    #[enum_value(
        name = "Meta: a GstVideoOverlayCompositionMeta, pixels untouched",
        nick = "meta"
    )]
    Meta = 2,
    #[enum_value(name = "Blend: draw into the frame", nick = "blend")]
    Blend = 3,
}

glib::wrapper! {
    pub struct InstSeg(ObjectSubclass<imp::InstSeg>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    ExecutionProvider::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Overlay::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "instseg",
        gst::Rank::NONE,
        InstSeg::static_type(),
    )
}
