// SPDX-License-Identifier: MIT OR Apache-2.0
//! The `instseg` element: instance segmentation of raw video with a deep-metric-learning
//! model run by ONNX Runtime, results attached to each buffer as metadata.

use gst::glib;
use gst::prelude::*;

mod frame;
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

/// Which instance a pixel inside several masks belongs to.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstInstSegOverlaps")]
pub enum Overlaps {
    #[enum_value(
        name = "Auto: the model's recommendation (instseg.overlaps), else nearest",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Nearest: the instance whose seed is nearest in embedding space",
        nick = "nearest"
    )]
    Nearest = 1,
    #[enum_value(
        name = "Confident: the most confident instance keeps its pixels",
        nick = "confident"
    )]
    Confident = 2,
}

/// Which pixel of its search window a track takes as its seed.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstInstSegWarmSeed")]
pub enum WarmSeed {
    #[enum_value(
        name = "Auto: the model's recommendation (instseg.warm-seed), else balanced",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Balanced: the best seediness times similarity to the track",
        nick = "balanced"
    )]
    Balanced = 1,
    #[enum_value(
        name = "Seed-like: the most seed-like pixel that matches the track",
        nick = "seed-like"
    )]
    SeedLike = 2,
}

/// In which order the tracks take their seeds.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstInstSegWarmOrder")]
pub enum WarmOrder {
    #[enum_value(
        name = "Auto: the model's recommendation (instseg.warm-order), else confidence",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Confidence: by the track's last confidence",
        nick = "confidence"
    )]
    Confidence = 1,
    #[enum_value(
        name = "Match: the track whose best seed matches it most closely first",
        nick = "match"
    )]
    Match = 2,
}

/// Whether a new instance may take over the id of a nearby track that lost its object.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstInstSegRematch")]
pub enum Rematch {
    #[enum_value(
        name = "Auto: the model's recommendation (instseg.rematch), else off",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Off: every new instance starts a new track", nick = "off")]
    Off = 1,
    #[enum_value(
        name = "On: a new instance within a lost track's reach takes its id",
        nick = "on"
    )]
    On = 2,
}

glib::wrapper! {
    pub struct InstSeg(ObjectSubclass<imp::InstSeg>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "instseg",
        gst::Rank::NONE,
        InstSeg::static_type(),
    )
}
