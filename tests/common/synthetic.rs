// SPDX-License-Identifier: MIT
//! Synthetic model outputs for tests, benches and examples: elliptic blobs of pixels that share
//! an embedding and a confident class, painted in order over a background (later blobs occlude
//! earlier ones), plus small deterministic noise.

#![allow(dead_code)]

/// One object in a synthetic frame.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Centre on the output grid (may lie outside it: the blob is clipped).
    pub center: (f32, f32),
    /// Half-width and half-height.
    pub radius: (f32, f32),
    /// The embedding all its pixels share (length D).
    pub embedding: Vec<f32>,
    /// Class id in 1..=C.
    pub class_id: usize,
}

impl Blob {
    /// Whether the grid pixel (x, y) lies inside the blob's ellipse.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        let dx = (x as f32 - self.center.0) / self.radius.0;
        let dy = (y as f32 - self.center.1) / self.radius.1;
        dx * dx + dy * dy <= 1.0
    }
}

/// Grid and tensor dimensions of a synthetic model output.
#[derive(Debug, Clone, Copy)]
pub struct Scene {
    pub dim: usize,
    pub thresholds: usize,
    /// C, not counting the background.
    pub classes: usize,
    pub width: usize,
    pub height: usize,
    /// Amplitude of the uniform noise added to every embedding value.
    pub noise: f32,
}

impl Scene {
    /// Renders `blobs` into (embedding [D,h,w], classes [T,C+1,h,w]).
    pub fn render(&self, blobs: &[Blob], seed: u64) -> (Vec<f32>, Vec<f32>) {
        let pixels = self.width * self.height;
        let mut owner = vec![usize::MAX; pixels];
        for (index, blob) in blobs.iter().enumerate() {
            for y in 0..self.height {
                for x in 0..self.width {
                    if blob.contains(x, y) {
                        owner[y * self.width + x] = index;
                    }
                }
            }
        }
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut embedding = vec![0.0; self.dim * pixels];
        for channel in 0..self.dim {
            for (pixel, &blob) in owner.iter().enumerate() {
                let base = blobs.get(blob).map_or(0.0, |b| b.embedding[channel]);
                embedding[channel * pixels + pixel] = base + self.noise * rng.symmetric();
            }
        }
        let classes_with_background = self.classes + 1;
        let mut classes = vec![0.0; self.thresholds * classes_with_background * pixels];
        for t in 0..self.thresholds {
            for (pixel, &blob) in owner.iter().enumerate() {
                let (winner, confidence) = match blobs.get(blob) {
                    Some(b) => (b.class_id, 0.9 - 0.05 * t as f32 + 0.02 * rng.symmetric()),
                    None => (0, 0.9),
                };
                let rest = (1.0 - confidence) / self.classes as f32;
                for c in 0..classes_with_background {
                    let prob = if c == winner { confidence } else { rest };
                    classes[(t * classes_with_background + c) * pixels + pixel] = prob;
                }
            }
        }
        (embedding, classes)
    }

    /// `count` blobs at deterministic pseudo-random places with well separated embeddings.
    pub fn random_blobs(&self, count: usize, seed: u64) -> Vec<Blob> {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        (0..count)
            .map(|_| Blob {
                center: (
                    rng.unit() * self.width as f32,
                    rng.unit() * self.height as f32,
                ),
                radius: (
                    (0.04 + 0.08 * rng.unit()) * self.width as f32 + 1.0,
                    (0.04 + 0.08 * rng.unit()) * self.height as f32 + 1.0,
                ),
                embedding: (0..self.dim).map(|_| 3.0 * rng.symmetric()).collect(),
                class_id: 1 + (rng.unit() * self.classes as f32) as usize % self.classes,
            })
            .collect()
    }
}

/// xorshift64*: deterministic, dependency-free noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }
}
