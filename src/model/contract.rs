// SPDX-License-Identifier: MIT
//! Checking a session against "instseg contract 1" (docs/contract.md): the declared input and
//! outputs, the `instseg.*` metadata, and the shapes of a dry run on a zero image.

use std::str::FromStr;

use super::backend::Backend;
use super::{Contract, ModelError, ModelOutputs, Resize};
use crate::segment::{Overlaps, Params, TrackingParams};

/// The longest side of a model input the element serves: a 4096x4096 input is already a
/// 201 MB tensor, and a larger one only comes from a broken or hostile file.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// The normalised value of a black or white pixel must stay within this (the largest half
/// precision number): beyond it the network's first layer overflows.
const MAX_NORMALISED: f32 = 65504.0;

/// How much of a metadata value an error quotes.
const QUOTE_CHARS: usize = 64;

/// A contract error about `model`, from a format string.
macro_rules! refused {
    ($model:expr, $($message:tt)+) => {
        ModelError::Contract(format!("model {}: {}", $model, format_args!($($message)+)))
    };
}

/// The `instseg.*` keys the contract reads, without their prefix.
pub(super) const KEYS: [&str; 15] = [
    "contract",
    "thresholds",
    "labels",
    "mean",
    "std",
    "input-size",
    "resize",
    "alpha",
    "seed-threshold",
    "track-seed-threshold",
    "overlaps",
    "max-overlap",
    "min-area",
    "match-similarity",
    "search-radius",
];

/// Validates the model `backend` runs and returns its contract; `model` names it in errors.
/// `overrides` replace the values of the file's `instseg.*` keys (named without the prefix).
pub(super) fn validate(
    backend: &dyn Backend,
    model: &str,
    overrides: &[(String, String)],
) -> Result<Contract, ModelError> {
    if let Some((key, _)) = overrides
        .iter()
        .find(|(key, _)| !KEYS.contains(&key.as_str()))
    {
        return Err(refused!(
            model,
            "override {} is not a key of the contract; the keys are {}",
            quote(key),
            KEYS.join(", ")
        ));
    }
    let (input_name, fixed_width, fixed_height) = check_declared(backend, model)?;
    let props = Props {
        model,
        backend,
        overrides,
    };
    let contract_version = props.get(
        "instseg.contract",
        "1, the only contract version known",
        |v| (v == "1").then_some(()),
    )?;
    if contract_version.is_none() {
        return Err(refused!(
            model,
            "metadata instseg.contract is missing, expected 1; add instseg.contract=1 to the \
             model's metadata_props once it follows the contract (the training toolkit's export \
             writes it)"
        ));
    }
    let thresholds_meta = props.get(
        "instseg.thresholds",
        "comma-separated numbers in (0, 1], strictly ascending",
        |value| {
            parse_list::<f64>(value).filter(|values| {
                values.iter().all(|t| *t > 0.0 && *t <= 1.0)
                    && values.windows(2).all(|pair| pair[0] < pair[1])
            })
        },
    )?;
    let labels_meta = props.get("instseg.labels", "comma-separated class names", |value| {
        let labels: Vec<String> = value.split(',').map(|l| l.trim().to_owned()).collect();
        labels
            .iter()
            .all(|label| !label.is_empty())
            .then_some(labels)
    })?;
    let rgb = |nonzero: bool| {
        move |value: &str| {
            parse_list::<f32>(value)
                .and_then(|values| <[f32; 3]>::try_from(values).ok())
                .filter(|rgb| rgb.iter().all(|v| v.is_finite() && (!nonzero || *v != 0.0)))
        }
    };
    let mean = props
        .get("instseg.mean", "3 comma-separated numbers", rgb(false))?
        .unwrap_or([0.0; 3]);
    let std = props
        .get(
            "instseg.std",
            "3 comma-separated non-zero numbers",
            rgb(true),
        )?
        .unwrap_or([1.0; 3]);
    check_normalisation(model, mean, std)?;
    let input_size = props.get(
        "instseg.input-size",
        &format!("WxH with sides from 1 to {MAX_INPUT_SIDE}, e.g. 256x256"),
        |value| {
            let (width, height) = value.split_once('x')?;
            let side = |n: &str| {
                n.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_INPUT_SIDE).contains(n))
            };
            Some((side(width)?, side(height)?))
        },
    )?;
    let resize = props.choice(
        "instseg.resize",
        &[
            ("letterbox", Resize::Letterbox),
            ("stretch", Resize::Stretch),
        ],
    )?;
    let number = |value: &str| value.parse::<f64>().ok().filter(|n| n.is_finite());
    let probability = |value: &str| number(value).filter(|n| (0.0..=1.0).contains(n));
    let alpha = props.get("instseg.alpha", "a number >= 0", |value| {
        number(value).filter(|n| *n >= 0.0)
    })?;
    let seed_threshold = props.get(
        "instseg.seed-threshold",
        "a seediness from 0 to 1",
        probability,
    )?;
    let track_seed_threshold = props.get(
        "instseg.track-seed-threshold",
        "a seediness from 0 to 1",
        probability,
    )?;
    let overlaps = props.choice(
        "instseg.overlaps",
        &[
            ("nearest", Overlaps::Nearest),
            ("confident", Overlaps::Confident),
        ],
    )?;
    let max_overlap = props.get("instseg.max-overlap", "a number from 0 to 1", probability)?;
    let match_similarity = props.get(
        "instseg.match-similarity",
        "a similarity above 0, at most 1",
        |value| number(value).filter(|n| *n > 0.0 && *n <= 1.0),
    )?;
    let search_radius = props.get(
        "instseg.search-radius",
        "a non-negative integer (output-grid cells)",
        |v| v.parse().ok(),
    )?;

    let min_area = props.get("instseg.min-area", "a non-negative integer", |v| {
        v.parse().ok()
    })?;

    let (default_width, default_height) = input_size.unwrap_or((256, 256));
    let input_width = fixed_width.unwrap_or(default_width);
    let input_height = fixed_height.unwrap_or(default_height);
    let (embedding, classes) = dry_run(backend, model, input_width, input_height)?;

    let [1, dim, height, width] = embedding[..] else {
        return Err(refused!(
            model,
            "output `embedding` has shape {embedding:?}, expected [1, D, h, w] (rank 4); \
             export the embedding as [N, D, h, w]"
        ));
    };
    let [1, num_thresholds, num_classes, cls_height, cls_width] = classes[..] else {
        return Err(refused!(
            model,
            "output `classes` has shape {classes:?}, expected [1, T, C+1, h, w] (rank 5); \
             export the class probabilities as [N, T, C+1, h, w]"
        ));
    };
    if dim == 0 {
        return Err(refused!(
            model,
            "output `embedding` has shape {embedding:?} with D = 0, expected at least one \
             embedding channel [1, D, h, w]"
        ));
    }
    let default = if thresholds_meta.is_some() {
        ""
    } else {
        " (the default)"
    };
    let thresholds = thresholds_meta.unwrap_or_else(|| vec![0.25, 0.5, 0.75, 0.9]);
    if num_thresholds != thresholds.len() {
        let values: Vec<_> = thresholds.iter().map(f64::to_string).collect();
        return Err(refused!(
            model,
            "output `classes` has shape {classes:?} with T = {num_thresholds}, but \
             instseg.thresholds {}{default} has {} values: expected [1, {}, C+1, h, w]; \
             make instseg.thresholds list one value per threshold of the network",
            quote(&values.join(",")),
            thresholds.len(),
            thresholds.len()
        ));
    }
    if num_classes < 2 {
        return Err(refused!(
            model,
            "output `classes` has shape {classes:?} with C+1 = {num_classes}, expected at least \
             the background and one class"
        ));
    }
    let labels = match labels_meta {
        Some(labels) if labels.len() + 1 != num_classes => {
            return Err(refused!(
                model,
                "output `classes` has shape {classes:?} with C+1 = {num_classes}, but \
                 instseg.labels {} names {} classes: expected [1, T, {}, h, w]; make \
                 instseg.labels list one name per class, background excluded",
                quote(&labels.join(",")),
                labels.len(),
                labels.len() + 1
            ));
        }
        Some(labels) => labels,
        None => (1..num_classes).map(|id| format!("class{id}")).collect(),
    };
    if (cls_height, cls_width) != (height, width) {
        return Err(refused!(
            model,
            "output `classes` has shape {classes:?} (grid {cls_width}x{cls_height}) but output \
             `embedding` has shape {embedding:?} (grid {width}x{height}): expected both on the \
             same h x w grid"
        ));
    }
    let (in_width, in_height) = (input_width as usize, input_height as usize);
    let stride = (height > 0 && width > 0 && in_height % height == 0 && in_width % width == 0)
        .then(|| in_height / height)
        .filter(|&stride| stride == in_width / width)
        .and_then(|stride| u32::try_from(stride).ok())
        .ok_or_else(|| {
            refused!(
                model,
                "outputs have a {width}x{height} grid for a {input_width}x{input_height} input: \
                 expected the input size to be the grid size times one integer stride on both \
                 axes; fix the network or instseg.input-size"
            )
        })?;

    let grid_pixels = u64::from(input_width / stride) * u64::from(input_height / stride);
    if let Some(min_area) = min_area.filter(|&area| u64::from(area) > grid_pixels) {
        return Err(refused!(
            model,
            "instseg.min-area {min_area} is more than the {grid_pixels} cells of the \
             {width}x{height} output grid: no instance could ever be kept; lower it"
        ));
    }

    let defaults = Params::default();
    let recipe = Params {
        thresholds,
        seed_threshold: seed_threshold.unwrap_or(defaults.seed_threshold),
        alpha: alpha.unwrap_or(defaults.alpha),
        min_area: min_area.unwrap_or(defaults.min_area),
        overlaps: overlaps.unwrap_or(defaults.overlaps),
        max_overlap: max_overlap.unwrap_or(defaults.max_overlap),
        tracking: TrackingParams {
            match_similarity: match_similarity.unwrap_or(defaults.tracking.match_similarity),
            search_radius,
            seed_threshold: track_seed_threshold,
            ..defaults.tracking
        },
        ..defaults
    };

    Ok(Contract {
        input_name,
        input_width,
        input_height,
        stride,
        grid_width: input_width / stride,
        grid_height: input_height / stride,
        embedding_dim: dim,
        labels,
        mean,
        std,
        resize: resize.unwrap_or(Resize::Letterbox),
        recipe,
    })
}

/// The model's metadata_props and their overrides, read with the model's name at hand for
/// errors.
struct Props<'a> {
    model: &'a str,
    backend: &'a dyn Backend,
    overrides: &'a [(String, String)],
}

impl Props<'_> {
    /// Parses `key` with `parse` (`None`: invalid, as `expected` describes), if present.
    fn get<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ModelError> {
        let name = key.strip_prefix("instseg.").unwrap_or(key);
        let (value, source, fix) = match self.overrides.iter().find(|(k, _)| k == name) {
            Some((_, value)) => (value.clone(), "override", "fix the overrides property"),
            None => match self.backend.metadata(key) {
                Some(value) => (
                    value.to_owned(),
                    "metadata",
                    "fix it in the model's metadata_props (or remove it to use the default)",
                ),
                None => return Ok(None),
            },
        };
        parse(value.trim()).map(Some).ok_or_else(|| {
            refused!(
                self.model,
                "{source} {key} is {}, expected {expected}; {fix}",
                quote(&value)
            )
        })
    }

    /// Reads `key` as one of the names of `choices`.
    fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Result<Option<T>, ModelError> {
        let names: Vec<_> = choices.iter().map(|&(name, _)| name).collect();
        self.get(key, &names.join(" or "), |value| {
            choices
                .iter()
                .find(|&&(name, _)| name == value)
                .map(|&(_, choice)| choice)
        })
    }
}

/// `value` in quotes, cut to its first [`QUOTE_CHARS`] characters (with its length) when it
/// is longer: a hostile file's megabyte of metadata does not belong in an error message.
fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("\"{value}\""),
        Some((end, _)) => format!("\"{}...\" ({} bytes)", &value[..end], value.len()),
    }
}

/// Refuses a mean and std that take a black or white pixel out of the range a network can
/// compute with (a huge mean, a tiny std).
fn check_normalisation(model: &str, mean: [f32; 3], std: [f32; 3]) -> Result<(), ModelError> {
    for (channel, (mean, std)) in ["R", "G", "B"].into_iter().zip(mean.into_iter().zip(std)) {
        for pixel in [0.0f32, 1.0] {
            let value = (pixel - mean) / std;
            if value.is_nan() || value.abs() > MAX_NORMALISED {
                return Err(refused!(
                    model,
                    "instseg.mean {mean} and instseg.std {std} (channel {channel}) turn a \
                     pixel of {pixel} into {value}, expected a value within +-{MAX_NORMALISED}; \
                     give mean and std as fractions of 255 (e.g. 0.485 and 0.229)"
                ));
            }
        }
    }
    Ok(())
}

fn parse_list<T: FromStr>(value: &str) -> Option<Vec<T>> {
    value
        .split(',')
        .map(|part| part.trim().parse().ok())
        .collect()
}

/// Checks the declared input and outputs; returns the input name and its fixed width and
/// height (`None` where dynamic).
fn check_declared(
    backend: &dyn Backend,
    model: &str,
) -> Result<(String, Option<u32>, Option<u32>), ModelError> {
    let input = match backend.inputs() {
        [input] => input,
        inputs => {
            let names: Vec<_> = inputs.iter().map(|input| input.name.as_str()).collect();
            return Err(refused!(
                model,
                "{} inputs ({}), expected exactly one float32 input [1, 3, H, W]; export the \
                 network with a single image input",
                inputs.len(),
                names.join(", ")
            ));
        }
    };
    let (name, description) = (&input.name, &input.description);
    let fixed = |dim: i64| u32::try_from(dim).ok().filter(|&dim| dim > 0);
    let valid = |dim: i64| dim == -1 || fixed(dim).is_some();
    if let Some([.., height, width]) = input.shape.as_deref()
        && (*height > i64::from(MAX_INPUT_SIDE) || *width > i64::from(MAX_INPUT_SIDE))
    {
        return Err(refused!(
            model,
            "input `{name}` is {description}: an input of {width}x{height} is larger than the \
             {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} the element serves; export the network for a \
             smaller input (or with a dynamic size and instseg.input-size)"
        ));
    }
    let (width, height) = match input.shape.as_deref() {
        Some(&[batch, 3, height, width])
            if input.float32 && matches!(batch, 1 | -1) && valid(height) && valid(width) =>
        {
            (fixed(width), fixed(height))
        }
        _ => {
            return Err(refused!(
                model,
                "input `{name}` is {description}, expected a float32 tensor [1, 3, H, W] (RGB, \
                 N = 1 or dynamic); export the network with an NCHW float32 RGB input"
            ));
        }
    };
    for wanted in ["embedding", "classes"] {
        let Some(output) = backend
            .outputs()
            .iter()
            .find(|output| output.name == wanted)
        else {
            let names: Vec<_> = backend.outputs().iter().map(|o| o.name.as_str()).collect();
            return Err(refused!(
                model,
                "no output `{wanted}` (outputs: {}), expected outputs `embedding` [N, D, h, w] \
                 and `classes` [N, T, C+1, h, w]; give the network's outputs these names when \
                 exporting it",
                names.join(", ")
            ));
        };
        if !output.float32 {
            return Err(refused!(
                model,
                "output `{wanted}` is {}, expected a float32 tensor",
                output.description
            ));
        }
    }
    Ok((name.clone(), width, height))
}

/// Runs the model once on zeros and returns the actual shapes of `embedding` and `classes`.
fn dry_run(
    backend: &dyn Backend,
    model: &str,
    width: u32,
    height: u32,
) -> Result<(Vec<usize>, Vec<usize>), ModelError> {
    let zeros = vec![0.0f32; 3 * height as usize * width as usize];
    let mut outputs = ModelOutputs::default();
    backend
        .run(
            &zeros,
            [1, 3, height as usize, width as usize],
            &mut outputs,
        )
        .map_err(|err| {
            refused!(
                model,
                "running it on a 1x3x{height}x{width} zero image failed: {err}; check the \
                 network and instseg.input-size"
            )
        })?;
    Ok((outputs.embedding_shape, outputs.classes_shape))
}
