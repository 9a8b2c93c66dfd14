// SPDX-License-Identifier: MIT
//! Runs the segmentation core on model outputs stored as files, so that other tools (the
//! NumPy equality test, the post-processing benchmark) can drive the Rust implementation.
//!
//! Each directory holds `case.json` (`embedding_shape` [D, h, w], `classes_shape`
//! [T, C+1, h, w], `thresholds`, `seed_threshold`, `alpha`, `max_instances`, `min_area`,
//! optionally `overlaps`: `nearest` or `confident`, and `max_overlap`) and
//! the tensors as raw little-endian float32 (`embedding.f32`, `classes.f32`). The result is
//! written next to them: `result.json` (instances) and `labels.u8` (the label map).
//!
//! Usage: `segment_files [--repeat N] DIR...`; with `--repeat`, each case is segmented N
//! times and its mean and best milliseconds per frame are printed as one JSON line.
//! `segment_files --bandwidth` prints this thread's memory read bandwidth instead: the
//! floor of the benchmark is reading the embedding once per selected seed at that speed.

use std::path::Path;
use std::time::Instant;
use std::{env, fs};

use gstinstseg::segment::{OutputView, Overlaps, Params, Segmenter, TrackingParams};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--bandwidth") {
        println!("{}", json!({ "read_gb_per_s": read_bandwidth() }));
        return Ok(());
    }
    let mut repeat = 0usize;
    if args.peek().map(String::as_str) == Some("--repeat") {
        args.next();
        repeat = args.next().ok_or("--repeat needs a count")?.parse()?;
    }
    let mut segmenter = Segmenter::new();
    for dir in args {
        run_case(Path::new(&dir), repeat, &mut segmenter).map_err(|err| format!("{dir}: {err}"))?;
    }
    Ok(())
}

fn run_case(dir: &Path, repeat: usize, segmenter: &mut Segmenter) -> Result<(), Error> {
    let case: Value = serde_json::from_slice(&fs::read(dir.join("case.json"))?)?;
    let shape = |key: &str| -> Result<Vec<usize>, Error> {
        case[key]
            .as_array()
            .ok_or(format!("missing {key}"))?
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| format!("bad {key}").into())
            })
            .collect()
    };
    let number = |key: &str| case[key].as_f64().ok_or(format!("missing {key}"));
    let (emb_shape, cls_shape) = (shape("embedding_shape")?, shape("classes_shape")?);
    let embedding = read_f32(&dir.join("embedding.f32"))?;
    let classes = read_f32(&dir.join("classes.f32"))?;
    let view = OutputView::new(
        &embedding,
        &classes,
        emb_shape[0],
        cls_shape[0],
        cls_shape[1],
        emb_shape[1],
        emb_shape[2],
    )?;
    let params = Params {
        thresholds: case["thresholds"]
            .as_array()
            .ok_or("missing thresholds")?
            .iter()
            .filter_map(Value::as_f64)
            .collect(),
        seed_threshold: number("seed_threshold")?,
        alpha: number("alpha")?,
        max_instances: u8::try_from(number("max_instances")? as u64)?,
        min_area: number("min_area")? as u32,
        overlaps: match case["overlaps"].as_str() {
            None | Some("nearest") => Overlaps::Nearest,
            Some("confident") => Overlaps::Confident,
            Some(other) => return Err(format!("bad overlaps {other:?}").into()),
        },
        max_overlap: case["max_overlap"].as_f64().unwrap_or(1.0),
        tracking: TrackingParams {
            enabled: false,
            ..TrackingParams::default()
        },
    };

    if repeat > 0 {
        let mut times = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let start = Instant::now();
            segmenter.segment(&view, &params)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let result = segmenter.segment(&view, &params)?;
        println!(
            "{}",
            json!({"dir": dir, "mean_ms": mean, "best_ms": best,
                   "instances": result.instances.len(), "grid_passes": result.stats.grid_passes})
        );
    }

    let result = segmenter.segment(&view, &params)?;
    let instances: Vec<Value> = result
        .instances
        .iter()
        .map(|i| {
            json!({
                "region": i.region, "seed": [i.seed.x, i.seed.y], "class_id": i.class_id,
                "threshold": i.threshold, "confidence": i.confidence, "area": i.area,
                "bbox": [i.bbox.x, i.bbox.y, i.bbox.width, i.bbox.height],
            })
        })
        .collect();
    fs::write(
        dir.join("result.json"),
        json!({ "instances": instances }).to_string(),
    )?;
    fs::write(dir.join("labels.u8"), &result.labels)?;
    Ok(())
}

fn read_f32(path: &Path) -> Result<Vec<f32>, Error> {
    let bytes = fs::read(path)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Best of several sequential reads of a 512 MiB buffer (far larger than any cache), in GB/s.
fn read_bandwidth() -> f64 {
    let data: Vec<f32> = (0..128 << 20).map(|i| (i % 7) as f32).collect();
    let mut best = f64::INFINITY;
    let mut total = [0.0f32; 16];
    for _ in 0..5 {
        let start = Instant::now();
        for chunk in data.chunks_exact(16) {
            for (acc, value) in total.iter_mut().zip(chunk) {
                *acc += value;
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(total);
    (data.len() * 4) as f64 / best / 1e9
}
