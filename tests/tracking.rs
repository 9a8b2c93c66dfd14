// SPDX-License-Identifier: MIT
//! Warm-start tracking (docs/algorithm.md, steps 9 to 14) on synthetic sequences of moving blobs.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::synthetic::{Blob, Scene};
use gstinstseg::segment::{OutputView, Params, Segmentation, Segmenter, TrackingParams};

const SCENE: Scene = Scene {
    dim: 8,
    thresholds: 2,
    classes: 3,
    width: 64,
    height: 48,
    noise: 0.05,
};

fn params(max_age: u32, enabled: bool) -> Params {
    Params {
        thresholds: vec![0.5, 0.75],
        tracking: TrackingParams {
            enabled,
            max_age,
            ..TrackingParams::default()
        },
        ..Params::default()
    }
}

/// A blob with a distinct embedding per `name`, centred at (x, y).
fn blob(name: usize, x: f32, y: f32) -> Blob {
    let mut embedding = vec![0.0; SCENE.dim];
    embedding[name % SCENE.dim] = 3.0;
    embedding[(name + 3) % SCENE.dim] = if name < SCENE.dim { 1.5 } else { -1.5 };
    Blob {
        center: (x, y),
        radius: (6.0, 5.0),
        embedding,
        class_id: 1 + name % 3,
    }
}

fn segment(segmenter: &mut Segmenter, blobs: &[Blob], frame: u64, params: &Params) -> Segmentation {
    let (embedding, classes) = SCENE.render(blobs, frame);
    segmenter
        .segment(&view(&embedding, &classes), params)
        .unwrap()
        .clone()
}

/// The rendered tensors of `SCENE` as the segmenter reads them.
fn view<'a>(embedding: &'a [f32], classes: &'a [f32]) -> OutputView<'a> {
    OutputView::new(
        embedding,
        classes,
        SCENE.dim,
        SCENE.thresholds,
        SCENE.classes + 1,
        SCENE.height,
        SCENE.width,
    )
    .unwrap()
}

/// The track id of the instance covering the blob's centre.
fn id_at(result: &Segmentation, blob: &Blob) -> Option<u64> {
    let (x, y) = (
        blob.center.0.round() as usize,
        blob.center.1.round() as usize,
    );
    if x >= result.width || y >= result.height {
        return None;
    }
    let region = result.labels[y * result.width + x];
    result
        .instances
        .iter()
        .find(|i| i.region == region && region != 0)
        .map(|i| i.track_id)
}

/// Names of the scripted objects.
const MOVER: usize = 0;
const CROSS_RIGHT: usize = 1;
const CROSS_LEFT: usize = 2;
const BLINKER: usize = 3;
const NEWCOMER: usize = 4;
const LEAVER: usize = 5;
const FRAMES: u64 = 24;
/// The blinker is invisible on these frames (3 frames), then returns.
const BLINK: std::ops::Range<u64> = 6..9;

/// The scripted sequence: one object moves, two cross (partially occluding each other), one
/// vanishes for three frames and returns, one appears at frame 5, one leaves on the left.
fn scripted_frame(frame: u64) -> Vec<(usize, Blob)> {
    let f = frame as f32;
    let mut blobs = vec![
        (MOVER, blob(MOVER, 8.0 + 2.0 * f, 8.0)),
        (CROSS_RIGHT, blob(CROSS_RIGHT, 8.0 + 2.0 * f, 24.0)),
        (CROSS_LEFT, blob(CROSS_LEFT, 56.0 - 2.0 * f, 30.0)),
    ];
    if !BLINK.contains(&frame) {
        blobs.push((BLINKER, blob(BLINKER, 50.0 - 0.5 * f, 42.0)));
    }
    if frame >= 5 {
        blobs.push((NEWCOMER, blob(NEWCOMER, 20.0, 41.0)));
    }
    blobs.push((LEAVER, blob(LEAVER, 12.0 - 3.0 * f, 40.0)));
    blobs
}

struct Run {
    /// Per frame: object name -> track id of the instance at its centre.
    ids: Vec<HashMap<usize, u64>>,
    results: Vec<Segmentation>,
}

fn run_scripted(segmenter: &mut Segmenter, params: &Params) -> Run {
    let mut run = Run {
        ids: Vec::new(),
        results: Vec::new(),
    };
    for frame in 0..FRAMES {
        let named = scripted_frame(frame);
        let blobs: Vec<Blob> = named.iter().map(|(_, b)| b.clone()).collect();
        let result = segment(segmenter, &blobs, frame, params);
        let ids = named
            .iter()
            .filter_map(|(name, b)| id_at(&result, b).map(|id| (*name, id)))
            .collect();
        run.ids.push(ids);
        run.results.push(result);
    }
    run
}

fn ids_of(run: &Run, name: usize) -> BTreeSet<u64> {
    run.ids
        .iter()
        .filter_map(|ids| ids.get(&name).copied())
        .collect()
}

#[test]
fn identities_survive_motion_crossing_and_short_absence() {
    let mut segmenter = Segmenter::new();
    let run = run_scripted(&mut segmenter, &params(10, true));

    for name in [MOVER, CROSS_RIGHT, CROSS_LEFT] {
        let seen = run.ids.iter().filter(|ids| ids.contains_key(&name)).count();
        assert_eq!(seen as u64, FRAMES, "object {name} found on every frame");
        assert_eq!(ids_of(&run, name).len(), 1, "object {name} keeps one id");
    }
    let blinker = ids_of(&run, BLINKER);
    assert_eq!(
        blinker.len(),
        1,
        "the blinker keeps its id across its absence"
    );
    for frame in BLINK {
        assert!(!run.ids[frame as usize].contains_key(&BLINKER));
        let id = *blinker.first().unwrap();
        assert!(
            run.results[frame as usize]
                .instances
                .iter()
                .all(|i| i.track_id != id)
        );
    }

    // The newcomer gets an id never seen before, and keeps it.
    let newcomer = ids_of(&run, NEWCOMER);
    assert_eq!(newcomer.len(), 1);
    let earlier: BTreeSet<u64> = run.results[..5]
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.track_id))
        .collect();
    assert!(newcomer.first().unwrap() > earlier.last().unwrap());

    // Six objects, six ids, over the whole sequence: nothing spurious, nothing reused.
    let all: BTreeSet<u64> = run
        .results
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.track_id))
        .collect();
    assert_eq!(all.len(), 6, "ids seen: {all:?}");

    // The leaver left the grid after frame 6; its track is dropped after max-age misses.
    assert!(run.ids.last().unwrap().get(&LEAVER).is_none());
    assert_eq!(segmenter.track_count(), 5);
}

#[test]
fn an_absence_longer_than_max_age_gives_a_new_id() {
    let mut segmenter = Segmenter::new();
    let run = run_scripted(&mut segmenter, &params(2, true));
    assert_eq!(ids_of(&run, BLINKER).len(), 2);
    assert_eq!(ids_of(&run, MOVER).len(), 1);
}

#[test]
fn ages_count_frames_since_birth() {
    let mut segmenter = Segmenter::new();
    let run = run_scripted(&mut segmenter, &params(10, true));
    let last = run.results.last().unwrap();
    let mover_id = run.ids.last().unwrap()[&MOVER];
    let newcomer_id = run.ids.last().unwrap()[&NEWCOMER];
    let age = |id| {
        last.instances
            .iter()
            .find(|i| i.track_id == id)
            .unwrap()
            .age
    };
    assert_eq!(age(mover_id), FRAMES as u32 - 1);
    assert_eq!(age(newcomer_id), FRAMES as u32 - 6);
}

#[test]
fn tracking_off_gives_fresh_ids_every_frame() {
    let mut segmenter = Segmenter::new();
    let run = run_scripted(&mut segmenter, &params(10, false));
    let mut previous_max = 0;
    let mut total = 0;
    for result in &run.results {
        assert!(!result.instances.is_empty());
        assert!(
            result
                .instances
                .iter()
                .all(|i| i.track_id > previous_max && !i.warm_started)
        );
        assert_eq!(result.stats.warm_seeds, 0);
        previous_max = result.instances.iter().map(|i| i.track_id).max().unwrap();
        total += result.instances.len();
    }
    assert_eq!(previous_max as usize, total);
    assert_eq!(segmenter.track_count(), 0);
}

#[test]
fn reset_clears_tracks_and_never_reuses_ids() {
    let mut segmenter = Segmenter::new();
    let p = params(10, true);
    let blobs: Vec<Blob> = scripted_frame(0).into_iter().map(|(_, b)| b).collect();
    let first = segment(&mut segmenter, &blobs, 0, &p);
    let second = segment(&mut segmenter, &blobs, 1, &p);
    let ids = |r: &Segmentation| {
        r.instances
            .iter()
            .map(|i| i.track_id)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(ids(&first), ids(&second));
    assert!(segmenter.track_count() > 0);

    segmenter.reset();
    assert_eq!(segmenter.track_count(), 0);
    let third = segment(&mut segmenter, &blobs, 2, &p);
    assert_eq!(third.stats.warm_seeds, 0);
    assert!(ids(&third).is_disjoint(&ids(&second)));
    assert!(ids(&third).first() > ids(&second).last());
}

#[test]
fn warm_start_replaces_greedy_search() {
    let mut segmenter = Segmenter::new();
    let p = params(10, true);
    let blobs = SCENE.random_blobs(12, 7);
    let cold = segment(&mut segmenter, &blobs, 0, &p);
    let warm = segment(&mut segmenter, &blobs, 1, &p);
    assert!(cold.instances.len() >= 6);
    assert_eq!(cold.stats.warm_seeds, 0);
    assert_eq!(warm.instances.len(), cold.instances.len());
    assert_eq!(warm.stats.warm_seeds as usize, cold.instances.len());
    assert!(warm.stats.greedy_seeds < cold.stats.greedy_seeds);
    assert!(warm.stats.grid_passes <= cold.stats.grid_passes);
    assert!(warm.instances.iter().all(|i| i.warm_started));
}

#[test]
fn a_changed_grid_forgets_the_tracks() {
    let mut segmenter = Segmenter::new();
    let p = params(10, true);
    let blobs: Vec<Blob> = scripted_frame(0).into_iter().map(|(_, b)| b).collect();
    segment(&mut segmenter, &blobs, 0, &p);
    let small = Scene { width: 40, ..SCENE };
    let (embedding, classes) = small.render(&blobs, 1);
    let view = OutputView::new(&embedding, &classes, 8, 2, 4, 48, 40).unwrap();
    let result = segmenter.segment(&view, &p).unwrap();
    assert_eq!(result.stats.warm_seeds, 0);
}

/// Caps the class probabilities (not the background's) inside `blob` at `seediness`: the
/// network hesitates on that object in this frame.
fn weaken(classes: &mut [f32], blob: &Blob, seediness: f32) {
    let pixels = SCENE.width * SCENE.height;
    for (index, plane) in classes.chunks_exact_mut(pixels).enumerate() {
        if index % (SCENE.classes + 1) == 0 {
            continue;
        }
        for (pixel, prob) in plane.iter_mut().enumerate() {
            if blob.contains(pixel % SCENE.width, pixel / SCENE.width) {
                *prob = prob.min(seediness);
            }
        }
    }
}

/// Per frame, the track id at the centre of a steady object and of one whose seediness drops
/// to 0.6 on frames 2 to 4, with seed-threshold 0.8 and the given tracks' threshold; and
/// whether a third object, at 0.6 from its first frame, was ever found. With `spreading_patch`, frame 3
/// also holds a large patch of the hesitant object's embedding where no pixel is seed-like,
/// so that a mask grown from the hesitant object would take it in.
fn run_hesitant(
    track_seed_threshold: Option<f64>,
    spreading_patch: bool,
) -> (Vec<Option<u64>>, Vec<Option<u64>>, bool) {
    let params = Params {
        thresholds: vec![0.5, 0.75],
        seed_threshold: 0.8,
        tracking: TrackingParams {
            seed_threshold: track_seed_threshold,
            ..TrackingParams::default()
        },
        ..Params::default()
    };
    let mut segmenter = Segmenter::new();
    let (mut steady_ids, mut hesitant_ids, mut weak_found) = (Vec::new(), Vec::new(), false);
    for frame in 0..8 {
        let f = frame as f32;
        let weak = blob(NEWCOMER, 50.0, 38.0);
        let steady = blob(MOVER, 8.0 + 2.0 * f, 10.0);
        let hesitant = blob(CROSS_RIGHT, 12.0 + 2.0 * f, 30.0);
        let patch = Blob {
            center: (48.0, 12.0),
            radius: (12.0, 9.0),
            ..hesitant.clone()
        };
        let mut blobs = vec![weak.clone(), steady.clone(), hesitant.clone()];
        let with_patch = spreading_patch && frame == 3;
        if with_patch {
            blobs.push(patch.clone());
        }
        let (embedding, mut classes) = SCENE.render(&blobs, frame);
        weaken(&mut classes, &weak, 0.6);
        if with_patch {
            weaken(&mut classes, &patch, 0.1);
        }
        if (2..5).contains(&frame) {
            weaken(&mut classes, &hesitant, 0.6);
        }
        let result = segmenter
            .segment(&view(&embedding, &classes), &params)
            .unwrap();
        steady_ids.push(id_at(result, &steady));
        hesitant_ids.push(id_at(result, &hesitant));
        weak_found |= id_at(result, &weak).is_some();
    }
    (steady_ids, hesitant_ids, weak_found)
}

#[test]
fn a_lower_track_seed_threshold_keeps_a_hesitant_object_without_seeding_weak_ones() {
    // Without track-seed-threshold: the object vanishes while its seediness is under seed-threshold.
    let (steady, hesitant, weak_found) = run_hesitant(None, false);
    assert!(
        steady.iter().all(|id| *id == steady[0] && id.is_some()),
        "{steady:?}"
    );
    assert!(hesitant[2..5].iter().all(Option::is_none), "{hesitant:?}");
    assert!(!weak_found);

    // With the hysteresis, its track holds it through the weak frames under one id, while
    // an object that never reached seed-threshold still starts no track.
    let (steady, hesitant, weak_found) = run_hesitant(Some(0.5), false);
    assert!(
        steady.iter().all(|id| *id == steady[0] && id.is_some()),
        "{steady:?}"
    );
    assert!(
        hesitant.iter().all(|id| *id == hesitant[0] && id.is_some()),
        "{hesitant:?}"
    );
    assert!(!weak_found);
}

#[test]
fn a_weak_seed_whose_mask_would_spread_is_refused() {
    // On frame 3 the hesitant object's mask would take in a patch over three times its size:
    // its track skips that frame instead, and takes the object back on frame 4.
    let (steady, hesitant, _) = run_hesitant(Some(0.5), true);
    assert!(
        steady.iter().all(|id| *id == steady[0] && id.is_some()),
        "{steady:?}"
    );
    assert_eq!(hesitant[3], None, "{hesitant:?}");
    assert!(
        hesitant
            .iter()
            .enumerate()
            .all(|(frame, id)| frame == 3 || (*id == hesitant[0] && id.is_some())),
        "{hesitant:?}"
    );
}

/// A 1x6 grid, D = 1: an object on pixels 0..3 in frame 0; in frame 1 its pixel 0 keeps the
/// track's embedding but weakens to seediness 0.6, while pixels 1 and 2 reach 0.99 at squared
/// distance 1 (sigma 0.54, over match-similarity 0.5). Returns the warm seed's column in frame 1.
fn warm_seed_column() -> u32 {
    let params = Params {
        thresholds: vec![0.5],
        min_area: 1,
        ..Params::default()
    };
    let mut segmenter = Segmenter::new();
    let frames: [([f32; 6], [f32; 6]); 2] = [
        (
            [0.0, 0.0, 0.0, 9.0, 9.0, 9.0],
            [0.9, 0.9, 0.9, 0.1, 0.1, 0.1],
        ),
        (
            [0.0, 1.0, 1.0, 9.0, 9.0, 9.0],
            [0.6, 0.99, 0.99, 0.1, 0.1, 0.1],
        ),
    ];
    let mut first_id = None;
    for (embedding, seediness) in frames {
        let classes: Vec<f32> = seediness.iter().map(|s| 1.0 - s).chain(seediness).collect();
        let view = OutputView::new(&embedding, &classes, 1, 1, 2, 1, 6).unwrap();
        let result = segmenter.segment(&view, &params).unwrap();
        let [instance] = &result.instances[..] else {
            panic!("one instance expected: {result:?}");
        };
        if let Some(id) = first_id {
            assert!(instance.warm_started, "{result:?}");
            assert_eq!(instance.track_id, id, "{result:?}");
            assert_eq!(result.labels, [1, 1, 1, 0, 0, 0]);
            return instance.seed.x;
        }
        first_id = Some(instance.track_id);
    }
    unreachable!("two frames")
}

#[test]
fn a_track_takes_the_most_seed_like_matching_pixel() {
    // The strongest matching pixel, the first of the two tied ones: ln 0.99 + 0.1 ln 0.54
    // beats ln 0.6 + 0.1 ln 1 (the best seediness times similarity would take pixel 0).
    assert_eq!(warm_seed_column(), 1);
}

/// A 1x8 grid, D = 1: object A on pixels 0 and 1 (embedding 0, seediness 0.95) and object B
/// on pixels 4 and 5 (1.2, 0.9) in frame 0. In frame 1 A is at -0.3 and weaker (0.85) while B
/// drifts to 0.9 and strengthens (0.99): B's pixels now also reach match-similarity with A's
/// track (d = 0.81), and a track takes its most seed-like match. Returns the ids on A and on B
/// in frame 1, and their tracks' ids from frame 0.
fn crossing_ids() -> ([u64; 2], [u64; 2]) {
    let params = Params {
        thresholds: vec![0.5],
        min_area: 1,
        ..Params::default()
    };
    let far = 10.0;
    let frames: [([f32; 8], [f32; 8]); 2] = [
        (
            [0.0, 0.0, far, far, 1.2, 1.2, far, far],
            [0.95, 0.95, 0.05, 0.05, 0.9, 0.9, 0.05, 0.05],
        ),
        (
            [-0.3, -0.3, far, far, 0.9, 0.9, far, far],
            [0.85, 0.85, 0.05, 0.05, 0.99, 0.99, 0.05, 0.05],
        ),
    ];
    let mut segmenter = Segmenter::new();
    let mut ids = Vec::new();
    for (embedding, seediness) in frames {
        let classes: Vec<f32> = seediness.iter().map(|s| 1.0 - s).chain(seediness).collect();
        let view = OutputView::new(&embedding, &classes, 1, 1, 2, 1, 8).unwrap();
        let result = segmenter.segment(&view, &params).unwrap();
        let id_at = |pixel: usize| {
            let region = result.labels[pixel];
            let instance = result.instances.iter().find(|i| i.region == region);
            instance
                .map(|i| i.track_id)
                .unwrap_or_else(|| panic!("{result:?}"))
        };
        ids.push([id_at(0), id_at(4)]);
    }
    (ids[1], ids[0])
}

#[test]
fn tracks_that_match_closest_take_their_seeds_first() {
    // By confidence A's track, the more confident, would go first and take B (its more
    // seed-like match); by match, B's track (d = 0.09) goes first and each object keeps its id.
    let (now, before) = crossing_ids();
    assert_eq!(now, before);
}

/// Ids of a moving object whose embedding jumps on frame 2 (from the MOVER's to the
/// LEAVER's, far past match-similarity) and of a newcomer that appears far from it on that
/// frame.
fn run_drifting() -> (Vec<Option<u64>>, Option<u64>) {
    let params = Params {
        thresholds: vec![0.5, 0.75],
        ..Params::default()
    };
    let mut segmenter = Segmenter::new();
    let mut ids = Vec::new();
    let mut newcomer_id = None;
    for frame in 0..4 {
        let x = 10.0 + 2.0 * frame as f32;
        let object = Blob {
            center: (x, 12.0),
            ..blob(if frame < 2 { MOVER } else { LEAVER }, 0.0, 0.0)
        };
        let newcomer = blob(NEWCOMER, 50.0, 36.0);
        let mut blobs = vec![object.clone()];
        if frame == 2 {
            blobs.push(newcomer.clone());
        }
        let result = segment(&mut segmenter, &blobs, frame, &params);
        ids.push(id_at(&result, &object));
        if frame == 2 {
            newcomer_id = id_at(&result, &newcomer);
        }
    }
    (ids, newcomer_id)
}

#[test]
fn rematch_keeps_the_id_of_an_object_whose_embedding_jumped() {
    // The jump leaves the track without a warm seed; the new instance lies within the lost
    // track's reach and takes its id, while the newcomer, far from any track, starts its own.
    let (ids, newcomer) = run_drifting();
    assert!(
        ids.iter().all(|id| *id == ids[0] && id.is_some()),
        "{ids:?}"
    );
    assert!(newcomer.is_some() && newcomer != ids[0], "{newcomer:?}");
}

#[test]
fn the_track_seed_threshold_must_be_finite() {
    let params = Params {
        thresholds: vec![0.5, 0.75],
        tracking: TrackingParams {
            seed_threshold: Some(f64::NAN),
            ..TrackingParams::default()
        },
        ..Params::default()
    };
    let (embedding, classes) = SCENE.render(&[blob(MOVER, 8.0, 8.0)], 0);
    let err = Segmenter::new()
        .segment(&view(&embedding, &classes), &params)
        .unwrap_err();
    assert!(err.to_string().contains("seed threshold"), "{err}");
}
