// SPDX-License-Identifier: MIT
//! Segments a synthetic sequence of moving blobs with the segmentation core and prints each
//! frame's instances: track ids stay the same while the blobs move.

#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use gstinstseg::segment::{OutputView, Params, Segmenter};
use synthetic::Scene;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scene = Scene {
        dim: 8,
        thresholds: 4,
        classes: 3,
        width: 96,
        height: 64,
        noise: 0.05,
    };
    let mut blobs = scene.random_blobs(6, 1);
    let params = Params::default();
    let mut segmenter = Segmenter::new();
    for frame in 0..10u64 {
        for (index, blob) in blobs.iter_mut().enumerate() {
            blob.center.0 += if index % 2 == 0 { 1.5 } else { -1.5 };
        }
        let (embedding, classes) = scene.render(&blobs, frame);
        let view = OutputView::new(
            &embedding,
            &classes,
            scene.dim,
            scene.thresholds,
            scene.classes + 1,
            scene.height,
            scene.width,
        )?;
        let result = segmenter.segment(&view, &params)?;
        let summary: Vec<String> = result
            .instances
            .iter()
            .map(|i| {
                format!(
                    "#{} class {} conf {:.2} box {}x{}+{}+{}",
                    i.track_id,
                    i.class_id,
                    i.confidence,
                    i.bbox.width,
                    i.bbox.height,
                    i.bbox.x,
                    i.bbox.y
                )
            })
            .collect();
        println!("frame {frame}: {}", summary.join(" | "));
    }
    Ok(())
}
