// SPDX-License-Identifier: MIT
//! The hot loop: one fused pass over the grid per selected seed (docs/algorithm.md, steps 4
//! to 7). For each block of pixels, the squared distances to the seed are accumulated in
//! registers while the block's D channel rows stream through once; then each pixel that
//! needs it gets its mask test, coverage, exclusive ownership, D(p) update and greedy score.
//!
//! The embedding is first copied into a blocked layout, `[h*w / BLOCK][D][BLOCK]`, so that a
//! pass reads memory strictly sequentially. Reading the model's planar `[D][h*w]` tensor
//! directly (D streams 4*h*w bytes apart, which also alias in the caches) was 1.5x slower.
//! Bounding each block's embeddings by a ball, to skip blocks the triangle inequality proves
//! outside the mask, was tried and measured slower: with D >= 8, distances between
//! clusters are too alike for the bound to prune more than it costs.

use super::{OutputView, Overlaps};

/// Pixels per block: 32 f32 accumulators fit in the vector registers of SSE2 and AVX2, and
/// a block's pixel flags fit in a u32.
const BLOCK: usize = 32;

/// Per-pixel state that the passes of one frame read and update, sized h x w.
#[derive(Debug, Default)]
pub(super) struct PixelState {
    /// The embedding in the blocked layout, the last block padded with zeros.
    pub blocked: Vec<f32>,
    /// Finite embedding and class values: only such pixels can be seeds or mask members.
    pub valid: Vec<bool>,
    /// Still a seed candidate: valid, seediness >= seed-threshold, not yet covered by a mask.
    pub candidate: Vec<bool>,
    /// Inside the mask of a seed selected earlier in this frame, kept or not.
    pub covered: Vec<bool>,
    /// Seediness, D(p) and the greedy scores of the candidates.
    pub scoring: Scoring,
    /// What the instance that currently owns the pixel in the label map holds it by: its
    /// seed's distance (`Overlaps::Nearest`) or minus its confidence (`Overlaps::Confident`).
    /// A seed whose key is smaller takes the pixel.
    pub owner_key: Vec<f32>,
    /// Ownership taken by the current seed: (pixel, previous label, previous owner key),
    /// replayed when its instance is not kept (min-area, max-overlap).
    pub undo: Vec<(u32, u8, f32)>,
}

/// What the greedy step (docs/algorithm.md, step 4) knows of each candidate.
#[derive(Debug, Default)]
pub(super) struct Scoring {
    /// S_p, the seediness.
    pub seediness: Vec<f32>,
    /// ln S_p, computed on first need (NaN until then).
    ln_seediness: Vec<f64>,
    /// D(p): squared distance to the nearest selected seed (kept up to date for candidates).
    nearest_seed: Vec<f32>,
    /// ln S_p + alpha ln D(p), or a cheap upper bound of it while the bound shows that the
    /// pixel cannot win (logarithms are the costly part of a pass).
    score: Vec<f64>,
    /// Whether `score` holds the exact score rather than the bound.
    score_is_exact: Vec<bool>,
}

impl Scoring {
    fn reset(&mut self, pixels: usize) {
        reset(&mut self.ln_seediness, pixels, f64::NAN);
        reset(&mut self.nearest_seed, pixels, f32::INFINITY);
        reset(&mut self.score, pixels, f64::INFINITY);
        reset(&mut self.score_is_exact, pixels, false);
    }

    /// A selected seed is `distance` away from candidate `pixel`.
    #[inline(always)]
    fn see_seed(&mut self, pixel: usize, distance: f32, alpha: f64) {
        if distance < self.nearest_seed[pixel] {
            self.nearest_seed[pixel] = distance;
            self.score[pixel] = score_upper_bound(self.seediness[pixel], distance, alpha);
            self.score_is_exact[pixel] = false;
        }
    }

    /// ln S_p, computed once per frame and pixel, on first need.
    #[inline(always)]
    pub fn ln_seediness(&mut self, pixel: usize) -> f64 {
        if self.ln_seediness[pixel].is_nan() {
            self.ln_seediness[pixel] = f64::from(self.seediness[pixel]).ln();
        }
        self.ln_seediness[pixel]
    }

    /// Makes candidate `pixel` the best so far if its score beats `best` (scanning in
    /// row-major order, so ties stay with the lower index).
    #[inline(always)]
    fn consider(&mut self, pixel: usize, alpha: f64, best: &mut (f64, Option<usize>)) {
        if !self.score_is_exact[pixel] {
            if self.score[pixel] < best.0 {
                return;
            }
            let ln_seediness = self.ln_seediness(pixel);
            self.score[pixel] = greedy_score(ln_seediness, self.nearest_seed[pixel], alpha);
            self.score_is_exact[pixel] = true;
        }
        if self.score[pixel] > best.0 {
            *best = (self.score[pixel], Some(pixel));
        }
    }
}

/// The selected seed as the pass needs it.
pub(super) struct Seed<'a> {
    /// e_p, gathered from the planar tensor (length D).
    pub embedding: &'a [f32],
    /// Largest f32 distance inside the mask: d <= limit  <=>  sigma >= tau_p.
    pub limit: f32,
    /// Label-map value the pixels of its mask take when it claims them.
    pub region: u8,
    /// How it claims the pixels of its mask that another instance owns.
    pub overlaps: Overlaps,
    /// C^{t_p}_{p, c_p}, its claim under `Overlaps::Confident`.
    pub confidence: f32,
}

/// What one pass found.
pub(super) struct PassResult {
    /// |m(p)|: pixels inside the seed's mask (before the exclusive assignment).
    pub area: u32,
    /// Pixels of the mask whose ownership it took (step 7).
    pub owned: u32,
    /// The best greedy candidate given every seed so far (None: no candidate can be chosen).
    pub next: Option<usize>,
}

/// Defines a function whose body is compiled twice, portable and for AVX2, and runs the AVX2
/// copy when the CPU has it. The arithmetic is the same on both (no fused multiply-add), so
/// results are bit-identical everywhere.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { avx2($($arg),*) };
            }
            portable($($arg),*)
        }
    };
}

with_avx2! {
    /// One pass for one seed: updates `state` and `labels`, returns the mask size and the
    /// next greedy seed.
    pub(super) fn fused_pass(
        seed: &Seed,
        alpha: f64,
        state: &mut PixelState,
        labels: &mut [u8],
    ) -> PassResult {
        let pixels = labels.len();
        let dim = seed.embedding.len();
        let PixelState {
            blocked,
            valid,
            candidate,
            covered,
            scoring,
            owner_key,
            undo,
        } = state;
        let (valid, candidate) = (&valid[..pixels], &mut candidate[..pixels]);
        let covered = &mut covered[..pixels];
        let owner_key = &mut owner_key[..pixels];
        undo.clear();
        let mut area = 0;
        let mut owned = 0;
        let mut best = (f64::NEG_INFINITY, None);
        let mut distances = [0.0f32; BLOCK];
        for (block, channels) in blocked.chunks_exact(dim * BLOCK).enumerate() {
            let start = block * BLOCK;
            let len = BLOCK.min(pixels - start);
            let mut candidates = 0u32;
            for (bit, &is_candidate) in candidate[start..start + len].iter().enumerate() {
                candidates |= u32::from(is_candidate) << bit;
            }
            block_distances(channels, seed.embedding, &mut distances);
            // Most blocks have no pixel inside the mask and few candidates: find the pixels
            // that need work with vector compares, then visit only those.
            let mut inside = 0u32;
            for (bit, &distance) in distances.iter().enumerate() {
                inside |= u32::from(distance <= seed.limit) << bit;
            }
            for offset in BitIter((inside | candidates) & (u32::MAX >> (BLOCK - len))) {
                let pixel = start + offset;
                let distance = distances[offset];
                if distance <= seed.limit {
                    if !valid[pixel] {
                        continue;
                    }
                    area += 1;
                    candidate[pixel] = false;
                    covered[pixel] = true;
                    let key = match seed.overlaps {
                        Overlaps::Nearest => distance,
                        Overlaps::Confident => -seed.confidence,
                    };
                    if key < owner_key[pixel] {
                        owned += 1;
                        undo.push((pixel as u32, labels[pixel], owner_key[pixel]));
                        labels[pixel] = seed.region;
                        owner_key[pixel] = key;
                    }
                } else {
                    // A candidate: D(p) only matters while p is one, and candidates never
                    // come back.
                    scoring.see_seed(pixel, distance, alpha);
                    scoring.consider(pixel, alpha, &mut best);
                }
            }
        }
        PassResult {
            area,
            owned,
            next: best.1,
        }
    }
}

with_avx2! {
    /// Loads one frame: the blocked embedding, validity, seediness and the initial
    /// candidates; resets the per-seed state.
    pub(super) fn load_frame(state: &mut PixelState, view: &OutputView, seed_threshold: f64) {
        let pixels = view.pixels();
        let dim = view.dim;
        reset(&mut state.valid, pixels, true);
        reset(&mut state.blocked, pixels.div_ceil(BLOCK) * dim * BLOCK, 0.0);
        for (channel, row) in view.embedding.chunks_exact(pixels).enumerate() {
            for (valid, &value) in state.valid.iter_mut().zip(row) {
                *valid &= value.is_finite();
            }
            // Fixed-size copies: the compiler inlines them as a few vector moves.
            let mut blocks = state.blocked.chunks_exact_mut(dim * BLOCK);
            let mut values = row.chunks_exact(BLOCK);
            // `values` first: zip must not take a block once the full chunks run out.
            for (values, block) in (&mut values).zip(&mut blocks) {
                let lanes: &mut [f32; BLOCK] =
                    (&mut block[channel * BLOCK..][..BLOCK]).try_into().expect("a block");
                *lanes = values.try_into().expect("a block");
            }
            let tail = values.remainder();
            if let Some(block) = blocks.next() {
                block[channel * BLOCK..][..tail.len()].copy_from_slice(tail);
            }
        }

        let seediness = &mut state.scoring.seediness;
        reset(seediness, pixels, f32::NEG_INFINITY);
        for (index, row) in view.classes.chunks_exact(pixels).enumerate() {
            for (valid, &prob) in state.valid.iter_mut().zip(row) {
                *valid &= prob.is_finite();
            }
            if index % view.num_classes != 0 {
                for (seediness, &prob) in seediness.iter_mut().zip(row) {
                    *seediness = seediness.max(prob);
                }
            }
        }

        state.candidate.clear();
        for (&valid, &seediness) in state.valid.iter().zip(seediness.iter()) {
            state
                .candidate
                .push(valid && f64::from(seediness) >= seed_threshold);
        }
        reset(&mut state.covered, pixels, false);
        state.scoring.reset(pixels);
        reset(&mut state.owner_key, pixels, f32::INFINITY);
    }
}

/// Step 4's score ln S_p + alpha ln D(p): minus infinity when D(p) = 0, and when it is
/// undefined (alpha = 0 with D(p) infinite), so that such a pixel is never chosen.
#[inline(always)]
fn greedy_score(ln_seediness: f64, nearest: f32, alpha: f64) -> f64 {
    if nearest > 0.0 {
        let score = ln_seediness + alpha * f64::from(nearest).ln();
        if score.is_nan() {
            f64::NEG_INFINITY
        } else {
            score
        }
    } else {
        f64::NEG_INFINITY
    }
}

/// An upper bound of [`greedy_score`] without logarithms (alpha >= 0, so each term's bound
/// bounds the sum). Loose by well under 0.01 per term.
#[inline(always)]
fn score_upper_bound(seediness: f32, nearest: f32, alpha: f64) -> f64 {
    if nearest > 0.0 {
        ln_upper_bound(seediness) + alpha * ln_upper_bound(nearest)
    } else {
        f64::NEG_INFINITY
    }
}

/// ln x <= e ln 2 + ln sqrt 2 + t - t^2/2 + t^3/3 for x = m 2^e and t = m / sqrt 2 - 1
/// (the cubic bounds ln(1 + t) from above for every t > -1); plus a margin for rounding.
/// Non-finite, zero and subnormal inputs give +inf: no bound, compute exactly.
#[inline(always)]
pub(super) fn ln_upper_bound(x: f32) -> f64 {
    if !x.is_normal() {
        return if x > 0.0 {
            f64::INFINITY
        } else {
            f64::from(x).ln()
        };
    }
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mantissa = f64::from(f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000));
    let t = mantissa * std::f64::consts::FRAC_1_SQRT_2 - 1.0;
    let bound = f64::from(exponent) * std::f64::consts::LN_2
        + 0.5 * std::f64::consts::LN_2
        + t * (1.0 - t * (0.5 - t / 3.0));
    bound + 1e-9 * (1.0 + bound.abs())
}

/// The positions of the set bits of a block mask, lowest first (row-major order).
struct BitIter(u32);

impl Iterator for BitIter {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

with_avx2! {
    /// |m(p)| of a seed embedding, changing no state: valid pixels with d <= limit, covered
    /// or not, as [`fused_pass`] counts them.
    pub(super) fn mask_area(
        state: &PixelState,
        embedding: &[f32],
        limit: f32,
        pixels: usize,
    ) -> u32 {
        let dim = embedding.len();
        let mut area = 0;
        let mut distances = [0.0f32; BLOCK];
        for (block, channels) in state.blocked.chunks_exact(dim * BLOCK).enumerate() {
            let start = block * BLOCK;
            let len = BLOCK.min(pixels - start);
            block_distances(channels, embedding, &mut distances);
            let valid = &state.valid[start..start + len];
            for (&distance, &valid) in distances[..len].iter().zip(valid) {
                area += u32::from(valid && distance <= limit);
            }
        }
        area
    }
}

pub(super) fn reset<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    buffer.clear();
    buffer.resize(len, value);
}

/// Squared distances of one block's pixels to the seed, accumulated in registers. Channels
/// are summed in order 0..D (as the NumPy reference does), vectorised across pixels.
///
/// Stopping a block early once every lane is provably outside the mask (partial sums only
/// grow) was tried: 70% of blocks stopped, after half their channels on average, yet the
/// pass got 15% slower, since the pass is bound by memory reads that prefetching makes
/// anyway, not by arithmetic.
#[inline(always)]
fn block_distances(channels: &[f32], seed: &[f32], out: &mut [f32; BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { block_distances_avx2(channels, seed, out) };
    }
    out.fill(0.0);
    for (row, &center) in channels.chunks_exact(BLOCK).zip(seed) {
        for (acc, &value) in out.iter_mut().zip(row) {
            let diff = value - center;
            *acc += diff * diff;
        }
    }
}

/// [`block_distances`] with explicit AVX2 (no FMA, so the same rounding): left to itself, the
/// compiler spilled the accumulators once the pass around it grew.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn block_distances_avx2(channels: &[f32], seed: &[f32], out: &mut [f32; BLOCK]) {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    let mut acc = [_mm256_setzero_ps(); BLOCK / LANES];
    for (row, &center) in channels.chunks_exact(BLOCK).zip(seed) {
        let center = _mm256_set1_ps(center);
        for (acc, lanes) in acc.iter_mut().zip(row.chunks_exact(LANES)) {
            // SAFETY: `lanes` holds exactly LANES floats.
            let value = unsafe { _mm256_loadu_ps(lanes.as_ptr()) };
            let diff = _mm256_sub_ps(value, center);
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(diff, diff));
        }
    }
    for (acc, lanes) in acc.iter().zip(out.chunks_exact_mut(LANES)) {
        // SAFETY: `lanes` holds exactly LANES floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
    }
}

impl PixelState {
    /// Squared distance of one pixel to `center`, read from the blocked layout (whose lines
    /// neighbouring pixels share), with the same arithmetic as the passes.
    pub fn pixel_distance(&self, pixel: usize, center: &[f32]) -> f32 {
        let dim = center.len();
        let block = &self.blocked[pixel / BLOCK * dim * BLOCK..][..dim * BLOCK];
        let mut distance = 0.0f32;
        for (row, &center) in block.chunks_exact(BLOCK).zip(center) {
            let diff = row[pixel % BLOCK] - center;
            distance += diff * diff;
        }
        distance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_upper_bound_bounds_and_is_tight() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            for value in [x, x * 1.37, x * 1.99] {
                let exact = f64::from(value).ln();
                let bound = ln_upper_bound(value);
                assert!(bound >= exact, "{value}: {bound} < {exact}");
                assert!(bound - exact < 0.01, "{value}: loose by {}", bound - exact);
            }
            x *= 3.1;
        }
        assert_eq!(ln_upper_bound(f32::INFINITY), f64::INFINITY);
        assert_eq!(ln_upper_bound(0.0), f64::NEG_INFINITY);
        assert_eq!(ln_upper_bound(1e-40), f64::INFINITY);
    }

    #[test]
    fn scores_follow_the_spec() {
        assert_eq!(greedy_score(0.0, 0.0, 0.3), f64::NEG_INFINITY);
        assert_eq!(greedy_score(-0.1, f32::INFINITY, 0.0), f64::NEG_INFINITY);
        assert_eq!(greedy_score(-0.5, 1.0, 0.3), -0.5);
        assert!(score_upper_bound(0.8, 3.0, 0.3) >= greedy_score(0.8f64.ln(), 3.0, 0.3));
    }
}
