"""Synthetic model outputs (embedding and class tensors) with known instances.

Used to test and benchmark the post-processing without a trained network: each instance is a
rectangle or disc of pixels sharing a centre embedding (plus noise) and a confident class.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def clustered_outputs(
    rng: np.random.Generator,
    dim: int,
    num_thresholds: int,
    num_classes: int,
    height: int,
    width: int,
    instances: int,
    noise: float = 0.05,
    spread: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (embedding [D,h,w], classes [T,C+1,h,w], instance map [h,w] with 0 = background).

    Instances are painted in order, later ones over earlier ones; each gets a random centre
    embedding (scale `spread`) and a random class in 1..C that is confident inside it.
    """
    ids = np.zeros((height, width), np.int32)
    ys, xs = np.mgrid[0:height, 0:width]
    for index in range(1, instances + 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = rng.uniform(0.05, 0.2) * height + 0.5
        rx = rng.uniform(0.05, 0.2) * width + 0.5
        if rng.random() < 0.5:
            inside = (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)
        else:
            inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
        ids[inside] = index

    centres = rng.normal(0.0, spread, (instances + 1, dim))
    embedding = centres[ids].transpose(2, 0, 1) + rng.normal(0.0, noise, (dim, height, width))

    labels = rng.integers(1, num_classes + 1, instances + 1)
    labels[0] = 0
    logits = rng.normal(0.0, 1.0, (num_thresholds, num_classes + 1, height, width))
    onehot = np.eye(num_classes + 1)[labels[ids]].transpose(2, 0, 1)  # [C+1, h, w]
    strength = rng.uniform(2.0, 6.0, (num_thresholds, 1, 1, 1))
    logits += strength * onehot[None]
    classes = softmax(logits, axis=1)
    return embedding.astype(np.float32), classes.astype(np.float32), ids
