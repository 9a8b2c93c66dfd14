"""Hand-checked cases of the NumPy reference post-processing."""

import math

import numpy as np

from instseg_train.postprocess import distance_limit, postprocess


def test_distance_limit_matches_sigma():
    for tau in (0.1, 0.5, 0.9, 1.0):
        d = distance_limit(tau)
        assert math.isclose(2 / (1 + math.exp(d)), tau, rel_tol=1e-12)


def test_two_far_apart_groups_make_two_instances():
    embedding = np.array([[[0.0, 0.0, 5.0, 5.0]]], np.float32)  # D=1, 1x4
    classes = np.zeros((1, 2, 1, 4), np.float32)
    classes[0, 1] = [0.9, 0.9, 0.8, 0.8]
    classes[0, 0] = 1 - classes[0, 1]
    instances, labels = postprocess(embedding, classes, [0.5], min_area=1)
    assert [i.seed for i in instances] == [(0, 0), (2, 0)]
    assert labels.tolist() == [[1, 1, 2, 2]]
    assert [i.area for i in instances] == [2, 2]


def test_small_masks_are_dropped_but_still_cover():
    embedding = np.array([[[0.0, 0.0, 5.0, 5.0]]], np.float32)
    classes = np.zeros((1, 2, 1, 4), np.float32)
    classes[0, 1] = [0.9, 0.9, 0.8, 0.8]
    instances, labels = postprocess(embedding, classes, [0.5], min_area=3)
    assert instances == [] and not labels.any()


def test_non_finite_pixels_are_never_in_a_mask():
    embedding = np.array([[[0.0, np.nan, 0.0, 0.0]]], np.float32)
    classes = np.zeros((1, 2, 1, 4), np.float32)
    classes[0, 1] = 0.9
    instances, labels = postprocess(embedding, classes, [0.5], min_area=1)
    assert labels.tolist() == [[1, 0, 1, 1]]
    assert instances[0].area == 3
