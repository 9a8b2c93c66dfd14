// SPDX-License-Identifier: MIT
//! Preprocessing speed: packed RGB, RGBx and NV12 frames at 640x480 and 1280x720 into a
//! 256x256 letterboxed model input (antialiased shrinking: every source row is read), with the
//! filter weights and buffers cached as in a running stream.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gstinstseg::preprocess::{
    Colorimetry, FrameRef, Normalization, PixelFormat, Placement, Preprocessor, ResizeMode,
    YuvMatrix,
};

const INPUT_SIDE: usize = 256;

/// Plane sizes and strides of a `width` x `height` frame, with rows padded to 4 bytes as
/// GStreamer lays them out by default.
fn layout(format: PixelFormat, width: usize, height: usize) -> Vec<(usize, usize)> {
    let aligned = |bytes: usize| bytes.next_multiple_of(4);
    let chroma_rows = height.div_ceil(2);
    match format {
        PixelFormat::Rgb => vec![(aligned(3 * width), height)],
        PixelFormat::Rgbx => vec![(4 * width, height)],
        PixelFormat::Nv12 => vec![
            (aligned(width), height),
            (aligned(2 * width.div_ceil(2)), chroma_rows),
        ],
        _ => unimplemented!("not benchmarked"),
    }
}

fn bench_preprocess(c: &mut Criterion) {
    let mut group = c.benchmark_group("preprocess");
    let normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    for (width, height) in [(640, 480), (1280, 720)] {
        for format in [PixelFormat::Rgb, PixelFormat::Rgbx, PixelFormat::Nv12] {
            let planes: Vec<(Vec<u8>, usize)> = layout(format, width, height)
                .into_iter()
                .map(|(stride, rows)| {
                    let data = (0..stride * rows).map(|i| (i * 7 + i / stride) as u8);
                    (data.collect(), stride)
                })
                .collect();
            let plane = |i: usize| planes.get(i).map_or(&[][..], |(data, _)| data);
            let stride = |i: usize| planes.get(i).map_or(0, |(_, stride)| *stride);
            let frame = FrameRef {
                format,
                width,
                height,
                planes: [plane(0), plane(1), plane(2)],
                strides: [stride(0), stride(1), stride(2)],
                colorimetry: Colorimetry {
                    matrix: YuvMatrix::Bt709,
                    full_range: false,
                },
            };
            let placement = Placement::new(
                width as u32,
                height as u32,
                INPUT_SIDE as u32,
                INPUT_SIDE as u32,
                ResizeMode::Letterbox,
            );
            let mut preprocessor = Preprocessor::default();
            let mut input = vec![0.0; 3 * INPUT_SIDE * INPUT_SIDE];
            group.throughput(Throughput::Elements((width * height) as u64));
            let id = BenchmarkId::new(format!("{format:?}"), format!("{width}x{height}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    preprocessor
                        .run(
                            &frame,
                            INPUT_SIDE,
                            INPUT_SIDE,
                            placement,
                            &normalization,
                            &mut input,
                        )
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_preprocess);
criterion_main!(benches);
