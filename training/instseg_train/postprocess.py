"""NumPy reference of the instseg post-processing (docs/algorithm.md, steps 1 to 8).

Read directly off the formulas, one line of the spec at a time. It is the single Python copy
of the algorithm: the Rust core is tested for equality against it, the benchmarks time it,
and the training evaluation uses it.

Arithmetic is pinned so that an independent implementation can match it bit for bit:
squared distances are float32, summed channel by channel in order 0..D-1 (vectorised over
pixels); scores and comparisons with the parameters are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Instance:
    """One kept instance, on the output grid."""

    region: int  # value in the label map, 1..N in acceptance order
    seed: tuple[int, int]  # (x, y) of the seed pixel
    class_id: int  # 1..C
    threshold: float  # tau_p
    confidence: float  # C^{t_p}_{p, c_p}
    area: int  # pixels of the exclusive mask
    bbox: tuple[int, int, int, int]  # x, y, width, height of the exclusive mask


def distance_limit(tau: float) -> float:
    """sigma(p, q) >= tau  <=>  d(p, q) <= ln(2 / tau - 1)."""
    return math.log(2.0 / tau - 1.0)


def squared_distances(embedding: np.ndarray, pixel: int) -> np.ndarray:
    """d(p, q) for every q: embedding is [D, P] float32; summed over channels in order."""
    total = np.zeros(embedding.shape[1], np.float32)
    for channel in embedding:
        diff = channel - channel[pixel]
        total += diff * diff
    return total


def postprocess(
    embedding: np.ndarray,
    classes: np.ndarray,
    thresholds,
    seed_threshold: float = 0.5,
    alpha: float = 0.3,
    max_instances: int = 32,
    min_area: int = 4,
    overlaps: str = "nearest",
    max_overlap: float = 1.0,
) -> tuple[list[Instance], np.ndarray]:
    """Segments one image from the model outputs.

    embedding: [D, h, w]; classes: [T, C+1, h, w] (class 0 is the background).
    overlaps: who owns a pixel inside several kept masks: "nearest" (step 7: the nearest seed)
    or "confident" (the element's extension: the most confident instance, ties to the earlier).
    max_overlap: an instance is dropped when more than this share of its mask stays with the
    instances accepted before it (the element's extension; 1 keeps every instance).
    Returns the kept instances in acceptance order and the exclusive label map (uint8, h x w).
    """
    dim, height, width = embedding.shape
    num_thresholds, num_classes = classes.shape[:2]
    assert len(thresholds) == num_thresholds
    assert overlaps in ("nearest", "confident")
    pixels = height * width
    emb = np.ascontiguousarray(embedding, np.float32).reshape(dim, pixels)
    probs = np.ascontiguousarray(classes, np.float32).reshape(num_thresholds, num_classes, pixels)

    # Non-finite pixels are never candidates and never inside a mask.
    valid = np.isfinite(emb).all(axis=0) & np.isfinite(probs).all(axis=(0, 1))
    # 1. Seediness: max over t and over c in 1..C.
    seediness = probs[:, 1:, :].max(axis=(0, 1))
    seediness64 = seediness.astype(np.float64)
    # 2. Candidates.
    candidate = valid & (seediness64 >= seed_threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_seediness = np.log(seediness64)

    nearest = np.full(pixels, np.inf, np.float32)  # D(p)
    owner_key = np.full(pixels, np.inf, np.float32)
    labels = np.zeros(pixels, np.uint8)
    instances: list[Instance] = []
    any_selected = False

    while len(instances) < max_instances and candidate.any():
        # 4. Greedy selection.
        if not any_selected:
            seed = int(np.argmax(np.where(candidate, seediness, np.float32(-np.inf))))
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                score = ln_seediness + alpha * np.log(nearest.astype(np.float64))
            score = np.where(candidate & (nearest > 0) & ~np.isnan(score), score, -np.inf)
            seed = int(np.argmax(score))
            if score[seed] == -np.inf:
                break
        any_selected = True

        # 5. Class, threshold, confidence and mask of the seed.
        seed_probs = probs[:, 1:, seed]  # [T, C]
        t, c = divmod(int(np.argmax(seed_probs)), num_classes - 1)
        tau = float(thresholds[t])
        distance = squared_distances(emb, seed)
        with np.errstate(invalid="ignore"):
            nearest = np.fmin(nearest, np.where(valid, distance, np.inf)).astype(np.float32)
            mask = valid & (distance.astype(np.float64) <= distance_limit(tau))

        # 6. Coverage, kept or not.
        candidate &= ~mask
        if int(mask.sum()) < min_area:
            continue

        # 7. Exclusive assignment: the nearest seed wins (with overlaps="confident", the most
        # confident instance): the smallest key, ties to the earlier instance.
        region = len(instances) + 1
        confidence = probs[t, c + 1, seed]
        key = distance if overlaps == "nearest" else np.full(pixels, -confidence, np.float32)
        take = mask & (key < owner_key)
        if float(take.sum()) < (1.0 - max_overlap) * float(mask.sum()):
            continue
        labels[take] = region
        owner_key[take] = key[take]
        instances.append(
            Instance(
                region=region,
                seed=(seed % width, seed // width),
                class_id=c + 1,
                threshold=tau,
                confidence=float(confidence),
                area=0,
                bbox=(0, 0, 0, 0),
            )
        )

    labels = labels.reshape(height, width)
    for instance in instances:  # 8. Areas and boxes after the exclusive assignment.
        ys, xs = np.nonzero(labels == instance.region)
        instance.area = int(xs.size)
        instance.bbox = (
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        )
    return instances, labels
