// SPDX-License-Identifier: MIT
//! Post-processing speed over grid sizes and embedding dimensions (T = 4, C = 3, about 20
//! instances), cold (no tracks) and warm-started (the same scene again with tracking on).

#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gstinstseg::segment::{OutputView, Params, Segmenter, TrackingParams};
use synthetic::Scene;

const INSTANCES: usize = 20;

fn scene(side: usize, dim: usize) -> Scene {
    Scene {
        dim,
        thresholds: 4,
        classes: 3,
        width: side,
        height: side,
        noise: 0.05,
    }
}

fn bench_segment(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment");
    for side in [64, 128, 256] {
        for dim in [8, 32, 64] {
            let scene = scene(side, dim);
            let (embedding, classes) = scene.render(&scene.random_blobs(INSTANCES, 3), 0);
            let view = OutputView::new(&embedding, &classes, dim, 4, 4, side, side).unwrap();
            group.throughput(Throughput::Elements((side * side) as u64));
            for warm in [false, true] {
                if warm && (side, dim) != (128, 32) {
                    continue;
                }
                let params = Params {
                    tracking: TrackingParams {
                        enabled: warm,
                        ..TrackingParams::default()
                    },
                    ..Params::default()
                };
                let mut segmenter = Segmenter::new();
                let found = segmenter.segment(&view, &params).unwrap().instances.len();
                let name = format!("{}/{side}x{side}", if warm { "warm" } else { "cold" });
                let id = BenchmarkId::new(name, format!("D{dim}-K{found}"));
                group.bench_function(id, |b| {
                    b.iter(|| segmenter.segment(&view, &params).unwrap().instances.len())
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_segment);
criterion_main!(benches);
