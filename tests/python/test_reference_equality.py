"""The Rust segmentation core against the NumPy reference of docs/algorithm.md, steps 1 to 8.

Hundreds of seeded random cases are written to a temporary directory, segmented by both, and
compared: same instances (seed, class, tau, order, area, box), same label map, confidences
within 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

from core_cases import read_result, run_rust, write_case
from instseg_train.postprocess import postprocess
from instseg_train.synthetic_outputs import clustered_outputs, softmax

CASES_PER_KIND = 30


def random_thresholds(rng, count):
    return np.sort(rng.uniform(0.05, 1.0, count)).round(3).tolist()


def random_params(rng, count_thresholds):
    return {
        "thresholds": random_thresholds(rng, count_thresholds),
        "seed_threshold": float(rng.choice([0.0, 0.3, 0.5, 0.7])),
        "alpha": float(rng.choice([0.0, 0.3, 1.0, 2.5])),
        "max_instances": int(rng.choice([1, 3, 32, 255])),
        "min_area": int(rng.choice([1, 4, 20])),
        "overlaps": str(rng.choice(["nearest", "confident"])),
        "max_overlap": float(rng.choice([1.0, 0.5, 0.2])),
    }


def random_shape(rng):
    dim = int(rng.choice([1, 2, 3, 8, 16, 32]))
    count_thresholds = int(rng.integers(1, 5))
    count_classes = int(rng.integers(1, 6))
    height, width = (int(v) for v in rng.choice([1, 2, 7, 16, 33, 48], 2))
    return dim, count_thresholds, count_classes, height, width


def clustered(rng):
    dim, t, c, h, w = random_shape(rng)
    emb, cls, _ = clustered_outputs(rng, dim, t, c, h, w, int(rng.integers(1, 25)),
                                    noise=float(rng.choice([0.0, 0.05, 0.3])))
    return emb, cls, random_params(rng, t)


def noise(rng):
    dim, t, c, h, w = random_shape(rng)
    emb = rng.normal(0, 1, (dim, h, w)).astype(np.float32)
    cls = softmax(rng.normal(0, 2, (t, c + 1, h, w)), axis=1).astype(np.float32)
    return emb, cls, random_params(rng, t)


def quantised(rng):
    """Coarse values: many exact ties in seediness and distances."""
    dim, t, c, h, w = random_shape(rng)
    emb = rng.integers(-2, 3, (dim, h, w)).astype(np.float32) * 0.5
    raw = rng.integers(1, 5, (t, c + 1, h, w)).astype(np.float32)
    cls = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)
    return emb, cls, random_params(rng, t)


def one_instance(rng):
    """Every pixel has the same embedding and a confident class."""
    dim, t, c, h, w = random_shape(rng)
    emb = np.broadcast_to(rng.normal(0, 1, (dim, 1, 1)), (dim, h, w)).astype(np.float32)
    cls = np.full((t, c + 1, h, w), 0.02 / c, np.float32)
    cls[:, 0] = 0.0
    cls[:, 1] = 0.98
    params = random_params(rng, t)
    params["seed_threshold"] = 0.5
    params["min_area"] = 1
    return emb, cls, params


def nothing_above_threshold(rng):
    emb, cls, params = noise(rng)
    params["seed_threshold"] = float(cls[:, 1:].max()) + 1e-3
    return emb, cls, params


def with_non_finite(rng):
    emb, cls, params = clustered(rng)
    emb = emb.copy()
    cls = cls.copy()
    for array in (emb, cls):
        flat = array.reshape(-1)
        hits = rng.integers(0, flat.size, max(1, flat.size // 50))
        flat[hits] = rng.choice([np.nan, np.inf, -np.inf], hits.size)
    return emb, cls, params


KINDS = [clustered, noise, quantised, one_instance, nothing_above_threshold, with_non_finite,
         clustered, quantised]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """(name, inputs, params) for every case, segmented once by the Rust core."""
    root = tmp_path_factory.mktemp("cases")
    made = []
    for kind_index, kind in enumerate(KINDS):
        for number in range(CASES_PER_KIND):
            rng = np.random.default_rng([kind_index, number])
            emb, cls, params = kind(rng)
            name = f"{kind.__name__}-{kind_index}-{number}"
            made.append((name, write_case(root / name, emb, cls, **params), emb, cls, params))
    run_rust([directory for _, directory, *_ in made])
    return made


def test_enough_cases(cases):
    assert len(cases) >= 200
    kinds_with_instances = {name.split("-")[0] for name, directory, emb, *_ in cases
                            if read_result(directory, *emb.shape[1:])[0]}
    assert {"clustered", "noise", "quantised", "one_instance", "with_non_finite"} <= \
        kinds_with_instances
    assert any(len(read_result(d, *e.shape[1:])[0]) >= 10 for _, d, e, *_ in cases)


def test_rust_matches_numpy_reference(cases):
    for name, directory, emb, cls, params in cases:
        expected, expected_labels = postprocess(emb, cls, **params)
        got, labels = read_result(directory, *emb.shape[1:])
        assert len(got) == len(expected), name
        for mine, ref in zip(got, expected):
            assert mine["region"] == ref.region, name
            assert tuple(mine["seed"]) == ref.seed, name
            assert mine["class_id"] == ref.class_id, name
            assert mine["threshold"] == ref.threshold, name
            assert abs(mine["confidence"] - ref.confidence) <= 1e-6, name
            assert mine["area"] == ref.area, name
            assert tuple(mine["bbox"]) == ref.bbox, name
        np.testing.assert_array_equal(labels, expected_labels, err_msg=name)


def test_special_cases_behave(cases):
    by_kind = {}
    for name, directory, emb, cls, params in cases:
        by_kind.setdefault(name.split("-")[0], []).append(
            (read_result(directory, *emb.shape[1:]), emb, params))
    for (instances, labels), _, _ in by_kind["nothing_above_threshold"]:
        assert instances == [] and not labels.any()
    for (instances, labels), _, params in by_kind["one_instance"]:
        assert len(instances) == 1
        assert (labels == 1).all()
    for (instances, _), _, params in by_kind["clustered"]:
        assert len(instances) <= params["max_instances"]
