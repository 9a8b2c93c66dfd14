// SPDX-License-Identifier: MIT
//! Speed of one `results-location` line: a 1280 x 720 frame, a 64 x 64 label map stretched
//! over it and 20 instances, as compact blobs and, for the worst case, as per-cell noise
//! (a run boundary at almost every cell).

use criterion::{Criterion, criterion_group, criterion_main};
use gstinstseg::results::{FrameInstance, FrameResult, MaskGeometry, write_frame};

const GRID: u32 = 64;
const INSTANCES: u8 = 20;

/// 20 discs of radius 3 to 8 cells spread over the grid, later ones on top.
fn blobs() -> Vec<u8> {
    let mut labels = vec![0; (GRID * GRID) as usize];
    for region in 1..=INSTANCES {
        let i = i64::from(region);
        let (cx, cy, radius) = ((i * 37) % 64, (i * 23) % 64, 3 + i % 6);
        for (index, label) in labels.iter_mut().enumerate() {
            let (x, y) = (index as i64 % 64, index as i64 / 64);
            if (x - cx).pow(2) + (y - cy).pow(2) <= radius * radius {
                *label = region;
            }
        }
    }
    labels
}

/// Every cell a pseudo-random region in 0..=20.
fn noise() -> Vec<u8> {
    (0..GRID * GRID)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 16) as u8 % (INSTANCES + 1))
        .collect()
}

fn bench_write_frame(c: &mut Criterion) {
    let geometry = MaskGeometry {
        grid_width: GRID,
        grid_height: GRID,
        rect_x: 0,
        rect_y: 0,
        rect_width: 1280,
        rect_height: 720,
        frame_width: 1280,
        frame_height: 720,
    };
    let instances: Vec<FrameInstance> = (1..=INSTANCES)
        .map(|region| FrameInstance {
            region,
            track_id: u64::from(region),
            class_id: 1,
            label: "object".into(),
            confidence: 0.9,
            threshold: 0.5,
            bbox: [0, 0, 1280, 720],
            seed: [640, 360],
            area: 1,
            age: 0,
        })
        .collect();
    let mut group = c.benchmark_group("write_frame/1280x720-grid64-20");
    for (name, labels) in [("blobs", blobs()), ("noise", noise())] {
        let result = FrameResult {
            labels,
            geometry,
            instances: instances.clone(),
        };
        let (mut line, mut scratch) = (Vec::new(), Vec::new());
        group.bench_function(name, |b| {
            b.iter(|| {
                line.clear();
                write_frame(&mut line, 0, Some(0), false, &result, &mut scratch).unwrap();
                line.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_write_frame);
criterion_main!(benches);
