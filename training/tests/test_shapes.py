"""Procedural shapes: reproducibility, ranges, occlusion, touching twins, clips."""

import numpy as np

from instseg_train.shapes import render_clip, render_scene, touching_pairs

SIZE = (64, 80)


def scene(seed, **kw):
    return render_scene(np.random.default_rng(seed), size=SIZE, **kw)


def test_scene_reproducible_and_seed_dependent():
    a, b, c = scene(3), scene(3), scene(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_scene_shapes_counts_and_masks():
    for seed in range(12):
        image, masks, classes = scene(seed)
        assert image.shape == SIZE + (3,) and image.dtype == np.uint8
        assert masks.dtype == bool and masks.shape[1:] == SIZE
        assert 1 <= len(masks) == len(classes) <= 15
        assert set(classes.tolist()) <= {1, 2, 3, 4}
        assert masks.any(axis=(1, 2)).all(), "every instance is visible"
        assert masks.sum(axis=0).max() <= 1, "masks are disjoint"
    counts = [len(scene(s, n_instances=(2, 5))[2]) for s in range(12)]
    assert max(counts) <= 5


def test_sizes_span_the_range():
    # largest visible extent of the biggest instance over a few scenes on a 128 image
    extents = []
    for seed in range(10):
        _, masks, _ = render_scene(np.random.default_rng(seed), size=(128, 128))
        for m in masks:
            ys, xs = np.nonzero(m)
            extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    assert min(extents) <= 0.1 * 128 and max(extents) >= 0.3 * 128
    assert max(extents) <= 0.5 * 128 + 2


def test_some_scene_has_touching_twins():
    found = []
    for seed in range(8):
        image, masks, classes, info = scene(seed, return_info=True)
        pairs = info["touching_pairs"]
        assert pairs == touching_pairs(masks, classes, info["appearance"])
        for i, j in pairs:
            assert classes[i] == classes[j]
            assert info["appearance"][i] == info["appearance"][j]
        found += pairs
    assert found, "no scene with two touching same-class same-colour instances"


def test_touching_pairs_helper():
    masks = np.zeros((3, 4, 6), bool)
    masks[0, :, :2] = True
    masks[1, :, 2:4] = True  # touches 0
    masks[2, :, 5] = True  # one column away from 1
    assert touching_pairs(masks, np.array([1, 1, 1]), np.array([0, 0, 0])) == [(0, 1)]
    assert touching_pairs(masks, np.array([1, 2, 1]), np.array([0, 0, 0])) == []
    assert touching_pairs(masks, np.array([1, 1, 1]), np.array([0, 1, 0])) == []


def test_clip_tracks_enter_leave_and_reproducible():
    clip = render_clip(np.random.default_rng(5), frames=12, size=SIZE)
    again = render_clip(np.random.default_rng(5), frames=12, size=SIZE)
    assert len(clip) == 12
    for (i1, m1, c1, t1), (i2, m2, c2, t2) in zip(clip, again):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(t1, t2)
    entered = left = False
    for seed in range(4):
        clip = render_clip(np.random.default_rng(seed), frames=12, size=SIZE)
        cls_of = {}
        for image, masks, classes, tracks in clip:
            assert image.shape == SIZE + (3,)
            assert len(masks) == len(classes) == len(tracks) == len(set(tracks.tolist()))
            assert masks.any(axis=(1, 2)).all() and masks.sum(0).max() <= 1
            for t, c in zip(tracks.tolist(), classes.tolist()):
                assert cls_of.setdefault(t, c) == c, "track keeps its class"
        sets = [set(f[3].tolist()) for f in clip]
        entered |= bool(sets[-1] - sets[0])
        left |= bool(sets[0] - sets[-1])
    assert entered and left


def test_clip_objects_move_consistently():
    clip = render_clip(np.random.default_rng(2), frames=8, size=(96, 96), jitter=0.0)
    centroids = {}
    for image, masks, classes, tracks in clip:
        for m, t in zip(masks, tracks.tolist()):
            centroids.setdefault(t, []).append(np.argwhere(m).mean(0))
    # small frame-to-frame motion for a tracked object (no identity swaps)
    steps = [np.abs(np.diff(np.array(c), axis=0)).max() for c in centroids.values() if len(c) > 1]
    assert steps and np.median(steps) < 30
