// SPDX-License-Identifier: MIT OR Apache-2.0
//! Seed selection, masks and exclusive assignment (SPEC section 2), with the warm-start
//! search of section 3.

use super::track::Tracker;
use super::{GridPoint, GridRect, Instance, OutputView, Params, Segmentation, distance_limit};

/// Pixels per tile of the fused pass: the distances of one tile stay in registers / L1
/// while the D channel rows stream through, so the grid is read once per seed.
const TILE: usize = 128;

/// Per-frame buffers, sized h x w and reused from frame to frame.
#[derive(Debug, Default)]
pub(super) struct Workspace {
    /// Finite embedding and class values: only such pixels can be seeds or mask members.
    valid: Vec<bool>,
    /// Still a seed candidate: valid, seediness >= seed-threshold, not yet covered by a mask.
    candidate: Vec<bool>,
    /// S_p, the seediness.
    seediness: Vec<f32>,
    /// ln S_p (only read for candidates).
    ln_seediness: Vec<f64>,
    /// D(p): squared distance to the nearest selected seed.
    nearest_seed: Vec<f32>,
    /// ln D(p), refreshed only when D(p) shrinks.
    ln_nearest_seed: Vec<f64>,
    /// Distance to the seed of the instance that currently owns the pixel in the label map.
    owner_distance: Vec<f32>,
    /// Ownership taken by the current seed: (pixel, previous label, previous owner distance),
    /// replayed backwards when its instance turns out smaller than min-area.
    undo: Vec<(u32, u8, f32)>,
    /// The current seed's embedding, gathered from the planar tensor.
    seed_embedding: Vec<f32>,
    /// Tracks in warm-start order.
    track_order: Vec<usize>,
    /// For each kept instance, the index of the track whose warm start found it.
    pub(super) instance_tracks: Vec<Option<usize>>,
}

impl Workspace {
    /// Runs the whole selection of one frame into `out` (label map, instances without ids).
    pub(super) fn select(
        &mut self,
        view: &OutputView,
        params: &Params,
        tracker: Option<&Tracker>,
        out: &mut Segmentation,
    ) {
        self.prepare(view, params, out);
        let max_instances = usize::from(params.max_instances);
        // Best greedy candidate given every seed selected so far (computed by the last pass).
        let mut next_greedy = None;
        let mut any_selected = false;

        if let Some(tracker) = tracker {
            tracker.order_by_confidence(&mut self.track_order);
            for order in 0..self.track_order.len() {
                if out.instances.len() == max_instances {
                    break;
                }
                let track = self.track_order[order];
                if let Some(seed) = self.warm_seed(view, params, tracker, track) {
                    out.stats.warm_seeds += 1;
                    next_greedy = self.accept_seed(view, params, seed, Some(track), out);
                    any_selected = true;
                }
            }
        }

        while out.instances.len() < max_instances {
            let seed = if any_selected {
                next_greedy
            } else {
                self.strongest_candidate()
            };
            let Some(seed) = seed else { break };
            out.stats.greedy_seeds += 1;
            next_greedy = self.accept_seed(view, params, seed, None, out);
            any_selected = true;
        }

        measure_regions(out);
    }

    /// Computes validity, seediness and the initial candidates; clears the outputs.
    fn prepare(&mut self, view: &OutputView, params: &Params, out: &mut Segmentation) {
        let pixels = view.pixels();
        self.valid.clear();
        self.valid.resize(pixels, true);
        self.seediness.clear();
        self.seediness.resize(pixels, f32::NEG_INFINITY);
        for row in view.embedding.chunks_exact(pixels) {
            for (valid, value) in self.valid.iter_mut().zip(row) {
                *valid &= value.is_finite();
            }
        }
        for (index, row) in view.classes.chunks_exact(pixels).enumerate() {
            let is_background = index % view.num_classes == 0;
            for ((valid, seediness), &prob) in
                self.valid.iter_mut().zip(&mut self.seediness).zip(row)
            {
                *valid &= prob.is_finite();
                if !is_background && prob > *seediness {
                    *seediness = prob;
                }
            }
        }

        self.candidate.clear();
        self.ln_seediness.clear();
        for (&valid, &seediness) in self.valid.iter().zip(&self.seediness) {
            let seediness = f64::from(seediness);
            self.candidate
                .push(valid && seediness >= params.seed_threshold);
            self.ln_seediness.push(seediness.ln());
        }

        reset(&mut self.nearest_seed, pixels, f32::INFINITY);
        reset(&mut self.ln_nearest_seed, pixels, f64::INFINITY);
        reset(&mut self.owner_distance, pixels, f32::INFINITY);
        reset(&mut out.labels, pixels, 0);
        self.instance_tracks.clear();
        out.instances.clear();
        out.width = view.width;
        out.height = view.height;
        out.stats = Default::default();
    }

    /// The first greedy seed when nothing is selected yet: argmax S_p over the candidates.
    fn strongest_candidate(&self) -> Option<usize> {
        let mut best = None;
        let mut best_seediness = f32::NEG_INFINITY;
        for (pixel, (&candidate, &seediness)) in
            self.candidate.iter().zip(&self.seediness).enumerate()
        {
            if candidate && (best.is_none() || seediness > best_seediness) {
                best = Some(pixel);
                best_seediness = seediness;
            }
        }
        best
    }

    /// Section 3: the candidate in the track's window maximising ln S_p + ln sigma(p, track),
    /// if its similarity to the track reaches match-similarity.
    fn warm_seed(
        &self,
        view: &OutputView,
        params: &Params,
        tracker: &Tracker,
        track: usize,
    ) -> Option<usize> {
        let window = tracker.search_window(track, &params.tracking, view.width, view.height)?;
        let embedding = tracker.embedding(track);
        let pixels = view.pixels();
        let mut best = None;
        let mut best_score = f64::NEG_INFINITY;
        let mut best_distance = f32::INFINITY;
        for y in window.y..window.y + window.height {
            for x in window.x..window.x + window.width {
                let pixel = y as usize * view.width + x as usize;
                if !self.candidate[pixel] {
                    continue;
                }
                let mut distance = 0.0f32;
                for (channel, &value) in embedding.iter().enumerate() {
                    let diff = view.embedding[channel * pixels + pixel] - value;
                    distance += diff * diff;
                }
                let score = self.ln_seediness[pixel] + ln_similarity(distance);
                if score > best_score {
                    best = Some(pixel);
                    best_score = score;
                    best_distance = distance;
                }
            }
        }
        best.filter(|_| best_distance <= distance_limit(params.tracking.match_similarity))
    }

    /// Steps 5 to 7 for one selected seed in a single fused pass over the grid: distance,
    /// D(p) update, mask test, coverage and exclusive ownership; the same pass finds the
    /// next greedy seed. Returns that next seed (None when no candidate can be chosen).
    fn accept_seed(
        &mut self,
        view: &OutputView,
        params: &Params,
        seed: usize,
        track: Option<usize>,
        out: &mut Segmentation,
    ) -> Option<usize> {
        let pixels = view.pixels();
        let (threshold_index, class_id, confidence) = strongest_class(view, seed);
        let threshold = params.thresholds[threshold_index];
        let limit = distance_limit(threshold);
        self.seed_embedding.clear();
        self.seed_embedding
            .extend(view.embedding.iter().skip(seed).step_by(pixels));
        let region = out.instances.len() as u8 + 1;
        let alpha = params.alpha;
        self.undo.clear();

        let mut area = 0u32;
        let mut next = None;
        let mut next_score = f64::NEG_INFINITY;
        let mut tile = [0.0f32; TILE];
        for start in (0..pixels).step_by(TILE) {
            let len = TILE.min(pixels - start);
            let distances = &mut tile[..len];
            squared_distances(
                view.embedding,
                pixels,
                start,
                &self.seed_embedding,
                distances,
            );
            for (offset, &distance) in distances.iter().enumerate() {
                let pixel = start + offset;
                if !self.valid[pixel] {
                    continue;
                }
                if distance < self.nearest_seed[pixel] {
                    self.nearest_seed[pixel] = distance;
                    self.ln_nearest_seed[pixel] = f64::from(distance).ln();
                }
                if distance <= limit {
                    area += 1;
                    self.candidate[pixel] = false;
                    if distance < self.owner_distance[pixel] {
                        self.undo.push((
                            pixel as u32,
                            out.labels[pixel],
                            self.owner_distance[pixel],
                        ));
                        out.labels[pixel] = region;
                        self.owner_distance[pixel] = distance;
                    }
                } else if self.candidate[pixel] {
                    let score = if self.nearest_seed[pixel] > 0.0 {
                        self.ln_seediness[pixel] + alpha * self.ln_nearest_seed[pixel]
                    } else {
                        f64::NEG_INFINITY
                    };
                    if score > next_score {
                        next_score = score;
                        next = Some(pixel);
                    }
                }
            }
        }
        out.stats.grid_passes += 1;

        if area >= params.min_area {
            out.instances.push(Instance {
                region,
                track_id: 0,
                class_id: class_id as u32,
                confidence,
                threshold,
                seed: GridPoint {
                    x: (seed % view.width) as u32,
                    y: (seed / view.width) as u32,
                },
                bbox: GridRect::default(),
                area: 0,
                age: 0,
                warm_started: track.is_some(),
            });
            self.instance_tracks.push(track);
        } else {
            out.stats.rejected_seeds += 1;
            for &(pixel, label, distance) in self.undo.iter().rev() {
                out.labels[pixel as usize] = label;
                self.owner_distance[pixel as usize] = distance;
            }
        }
        next
    }
}

/// `out[i] = ||e_{start+i} - seed||^2`, summed over channels in order 0..D so that the result
/// is bit-identical to the NumPy reference; vectorised across pixels.
#[inline]
fn squared_distances(
    embedding: &[f32],
    pixels: usize,
    start: usize,
    seed: &[f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    for (channel, &center) in seed.iter().enumerate() {
        let row = &embedding[channel * pixels + start..][..out.len()];
        for (acc, &value) in out.iter_mut().zip(row) {
            let diff = value - center;
            *acc += diff * diff;
        }
    }
}

/// Step 5: (t_p, c_p) = argmax over t and c >= 1 of C^t_pc, ties to the lowest t then c;
/// returns (t_p, c_p, confidence).
fn strongest_class(view: &OutputView, pixel: usize) -> (usize, usize, f32) {
    let mut best = (0, 1, view.class_prob(0, 1, pixel));
    for t in 0..view.num_thresholds {
        for c in 1..view.num_classes {
            let prob = view.class_prob(t, c, pixel);
            if prob > best.2 {
                best = (t, c, prob);
            }
        }
    }
    best
}

/// ln sigma for a squared distance d: ln 2 - ln(1 + e^d), without overflow for large d.
fn ln_similarity(distance: f32) -> f64 {
    let d = f64::from(distance);
    let softplus = if d > 0.0 {
        d + (-d).exp().ln_1p()
    } else {
        d.exp().ln_1p()
    };
    std::f64::consts::LN_2 - softplus
}

/// Areas and bounding boxes of the exclusive masks, read off the label map.
fn measure_regions(out: &mut Segmentation) {
    let width = out.width.max(1);
    let mut bounds = [(u32::MAX, u32::MAX, 0u32, 0u32); 256];
    for (index, &label) in out.labels.iter().enumerate() {
        if label == 0 {
            continue;
        }
        let (x, y) = ((index % width) as u32, (index / width) as u32);
        let b = &mut bounds[usize::from(label)];
        b.0 = b.0.min(x);
        b.1 = b.1.min(y);
        b.2 = b.2.max(x);
        b.3 = b.3.max(y);
    }
    for instance in &mut out.instances {
        let (x0, y0, x1, y1) = bounds[usize::from(instance.region)];
        instance.bbox = GridRect {
            x: x0,
            y: y0,
            width: x1 + 1 - x0,
            height: y1 + 1 - y0,
        };
    }
    let mut areas = [0u32; 256];
    for &label in &out.labels {
        areas[usize::from(label)] += 1;
    }
    for instance in &mut out.instances {
        instance.area = areas[usize::from(instance.region)];
    }
}

fn reset<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    buffer.clear();
    buffer.resize(len, value);
}
