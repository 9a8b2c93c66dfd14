// SPDX-License-Identifier: MIT
//! Encodes label maps stored as files into COCO RLE strings, so that the Python test can
//! decode them with pycocotools and compare them with its own upsampling.
//!
//! Usage: `encode_rle JOBS.json`, where the file holds a list of jobs `{"labels": path of the
//! raw row-major u8 label map, "geometry": [grid_width, grid_height, rect_x, rect_y,
//! rect_width, rect_height, frame_width, frame_height], "regions": [region, ...]}`. For each
//! job, one JSON line `{"counts": [string per region]}` is printed.

use std::{env, fs};

use gstinstseg::results::{MaskGeometry, encode_rle};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let path = env::args().nth(1).ok_or("usage: encode_rle JOBS.json")?;
    let jobs: Vec<Value> = serde_json::from_slice(&fs::read(path)?)?;
    let mut scratch = Vec::new();
    for job in &jobs {
        let labels = fs::read(job["labels"].as_str().ok_or("missing labels")?)?;
        let numbers = |key: &str| -> Result<Vec<u64>, Error> {
            let values = job[key].as_array().ok_or(format!("missing {key}"))?;
            values
                .iter()
                .map(|v| v.as_u64().ok_or_else(|| format!("bad {key}").into()))
                .collect()
        };
        let geometry: Vec<u32> = numbers("geometry")?
            .into_iter()
            .map(u32::try_from)
            .collect::<Result<_, _>>()?;
        let [gw, gh, rx, ry, rw, rh, fw, fh] = geometry[..] else {
            return Err("geometry needs 8 numbers".into());
        };
        let geometry = MaskGeometry {
            grid_width: gw,
            grid_height: gh,
            rect_x: rx,
            rect_y: ry,
            rect_width: rw,
            rect_height: rh,
            frame_width: fw,
            frame_height: fh,
        };
        let counts = numbers("regions")?
            .into_iter()
            .map(|region| {
                Ok(encode_rle(
                    &labels,
                    u8::try_from(region)?,
                    &geometry,
                    &mut scratch,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        println!("{}", json!({ "counts": counts }));
    }
    Ok(())
}
