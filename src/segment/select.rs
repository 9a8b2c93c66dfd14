// SPDX-License-Identifier: MIT
//! Seed selection, masks and exclusive assignment (docs/algorithm.md, steps 1 to 8), with
//! the warm-start search of steps 10 to 12.

use super::pass::{PixelState, Seed, fused_pass, load_frame, mask_area, reset};
use super::track::Tracker;
use super::{GridPoint, GridRect, Instance, OutputView, Params, Segmentation, distance_limit};

/// A track's seed under seed-threshold (see `TrackingParams::seed_threshold`) is refused when
/// its mask would be more than this many times the track's last area: a weak seed's class
/// head often picks the lowest threshold, whose mask can spread over the background (on the
/// default model's test clips, 71 of 283 such masks covered over 15% of the frame).
const WEAK_SEED_GROWTH: u32 = 2;

/// A track's warm seed is the matching pixel of its window maximising ln S_p + this x
/// ln sigma(p, track): mostly the seed the greedy step would take on the object, so tracking
/// does not change its mask, with a little weight on the match, which keeps a track from
/// taking a crossing neighbour that is more seed-like (default model, validation clips: 0 /
/// 0.05 / 0.1 / 0.2 / 0.3 gave 2.26 / 1.94 / 1.94 / 2.03 / 2.16 identity switches per 100
/// instance-frames, and a weight of 1, the best seediness times similarity, 2.79).
const WARM_SEED_SIMILARITY_WEIGHT: f64 = 0.1;

/// Per-frame buffers, sized h x w and reused from frame to frame.
#[derive(Debug, Default)]
pub(super) struct Workspace {
    /// Per-pixel state shared by the passes.
    pixels: PixelState,
    /// The current seed's embedding, gathered from the planar tensor.
    seed_embedding: Vec<f32>,
    /// Tracks in warm-start order.
    track_order: Vec<usize>,
    /// (squared distance of its best warm seed to the track, track), for the warm-start order.
    match_order: Vec<(f32, usize)>,
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
            self.order_by_match(view, params, tracker);
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
        load_frame(&mut self.pixels, view, params.seed_threshold);
        reset(&mut out.labels, view.pixels(), 0);
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
        for (pixel, (&candidate, &seediness)) in self
            .pixels
            .candidate
            .iter()
            .zip(&self.pixels.scoring.seediness)
            .enumerate()
        {
            if candidate && (best.is_none() || seediness > best_seediness) {
                best = Some(pixel);
                best_seediness = seediness;
            }
        }
        best
    }

    /// The candidate in the track's window whose similarity to the track reaches
    /// match-similarity and that maximises ln S_p + `WARM_SEED_SIMILARITY_WEIGHT` ln sigma(p,
    /// track). A candidate here is a valid,
    /// uncovered pixel whose seediness reaches the tracks' own threshold (by default the
    /// seed-threshold, which makes it exactly a step 2 candidate); one under seed-threshold
    /// must also keep its mask within `WEAK_SEED_GROWTH` times the track's last area.
    fn warm_seed(
        &mut self,
        view: &OutputView,
        params: &Params,
        tracker: &Tracker,
        track: usize,
    ) -> Option<usize> {
        let (seed, _) = self.warm_candidate(view, params, tracker, track)?;
        let weak = f64::from(self.pixels.scoring.seediness[seed]) < params.seed_threshold;
        if weak
            && self.prospective_mask_area(view, params, seed)
                > WEAK_SEED_GROWTH.saturating_mul(tracker.area(track).max(1))
        {
            return None;
        }
        Some(seed)
    }

    /// The window search of [`Self::warm_seed`] without the guard on weak seeds: the seed and
    /// its squared distance to the track.
    fn warm_candidate(
        &mut self,
        view: &OutputView,
        params: &Params,
        tracker: &Tracker,
        track: usize,
    ) -> Option<(usize, f32)> {
        let window = tracker.search_window(track, &params.tracking, view.width, view.height)?;
        let embedding = tracker.embedding(track);
        let mut best = None;
        let mut best_score = f64::NEG_INFINITY;
        let mut best_distance = f32::INFINITY;
        let threshold = params
            .tracking
            .seed_threshold
            .unwrap_or(params.seed_threshold);
        let match_limit = distance_limit(params.tracking.match_similarity);
        for y in window.y..window.y + window.height {
            for x in window.x..window.x + window.width {
                let pixel = y as usize * view.width + x as usize;
                let seediness = self.pixels.scoring.seediness[pixel];
                if !self.pixels.valid[pixel]
                    || self.pixels.covered[pixel]
                    || f64::from(seediness) < threshold
                {
                    continue;
                }
                let distance = self.pixels.pixel_distance(pixel, embedding);
                if distance > match_limit {
                    continue;
                }
                let score = self.pixels.scoring.ln_seediness(pixel)
                    + WARM_SEED_SIMILARITY_WEIGHT * ln_similarity(distance);
                if score > best_score {
                    best = Some(pixel);
                    best_score = score;
                    best_distance = distance;
                }
            }
        }
        best.map(|seed| (seed, best_distance))
    }

    /// Re-sorts the tracks by how closely the best warm seed each could take now matches it,
    /// closest first, tracks without one last; ties keep the order of confidence. (The guard
    /// on weak seeds, a pass over the grid each, waits for the track's turn.)
    fn order_by_match(&mut self, view: &OutputView, params: &Params, tracker: &Tracker) {
        let mut keyed = std::mem::take(&mut self.match_order);
        keyed.clear();
        for order in 0..self.track_order.len() {
            let track = self.track_order[order];
            let distance = self
                .warm_candidate(view, params, tracker, track)
                .map_or(f32::INFINITY, |(_, distance)| distance);
            keyed.push((distance, track));
        }
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.track_order.clear();
        self.track_order
            .extend(keyed.iter().map(|&(_, track)| track));
        self.match_order = keyed;
    }

    /// |m(p)| of a seed without selecting it (a seed that passes is then measured again by its
    /// fused pass: the guard only runs for weak seeds, so that pass stays the only one otherwise).
    fn prospective_mask_area(&mut self, view: &OutputView, params: &Params, seed: usize) -> u32 {
        let (threshold_index, _, _) = strongest_class(view, seed);
        self.gather_seed_embedding(view, seed);
        mask_area(
            &self.pixels,
            &self.seed_embedding,
            distance_limit(params.thresholds[threshold_index]),
            view.pixels(),
        )
    }

    /// Copies e_p out of the planar tensor into `seed_embedding`.
    fn gather_seed_embedding(&mut self, view: &OutputView, seed: usize) {
        self.seed_embedding.clear();
        self.seed_embedding
            .extend(view.embedding.iter().skip(seed).step_by(view.pixels()));
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
        let (threshold_index, class_id, confidence) = strongest_class(view, seed);
        let threshold = params.thresholds[threshold_index];
        let limit = distance_limit(threshold);
        self.gather_seed_embedding(view, seed);
        let region = out.instances.len() as u8 + 1;
        let pass = fused_pass(
            &Seed {
                embedding: &self.seed_embedding,
                limit,
                region,
                overlaps: params.overlaps,
                confidence,
            },
            params.alpha,
            &mut self.pixels,
            &mut out.labels,
        );
        out.stats.grid_passes += 1;
        // The seed is inside its own mask (d = 0); never let it be selected twice.
        self.pixels.candidate[seed] = false;

        let owns_enough =
            f64::from(pass.owned) >= (1.0 - params.max_overlap) * f64::from(pass.area);
        if pass.area >= params.min_area && owns_enough {
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
            for &(pixel, label, key) in &self.pixels.undo {
                out.labels[pixel as usize] = label;
                self.pixels.owner_key[pixel as usize] = key;
            }
        }
        pass.next
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

/// Areas and bounding boxes of the exclusive masks, read off the label map in one pass.
fn measure_regions(out: &mut Segmentation) {
    #[derive(Clone, Copy)]
    struct Extent {
        x0: u32,
        y0: u32,
        x1: u32,
        y1: u32,
        area: u32,
    }
    let mut extents = [Extent {
        x0: u32::MAX,
        y0: u32::MAX,
        x1: 0,
        y1: 0,
        area: 0,
    }; 256];
    for (y, line) in out.labels.chunks_exact(out.width).enumerate() {
        for (x, &label) in line.iter().enumerate() {
            if label != 0 {
                let (x, y) = (x as u32, y as u32);
                let e = &mut extents[usize::from(label)];
                e.x0 = e.x0.min(x);
                e.y0 = e.y0.min(y);
                e.x1 = e.x1.max(x);
                e.y1 = e.y1.max(y);
                e.area += 1;
            }
        }
    }
    for instance in &mut out.instances {
        let e = extents[usize::from(instance.region)];
        instance.area = e.area;
        instance.bbox = GridRect {
            x: e.x0,
            y: e.y0,
            width: e.x1 + 1 - e.x0,
            height: e.y1 + 1 - e.y0,
        };
    }
}
