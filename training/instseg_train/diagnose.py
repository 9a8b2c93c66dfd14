"""Where a model loses mask AP: runs the ONNX model (onnxruntime, CPU) on a COCO split's still
images, segments with the NumPy reference post-processing (``postprocess.py``) and, on the
output grid, sorts every ground-truth instance that gets no mask of its class with IoU >= 0.5
into one cause:

- ``wrong class``: a mask of another class has IoU >= 0.5 with it;
- ``unseeded``: no mask covers 30% of it (no seed was found on it);
- ``merged``: the mask that overlaps it most also covers most of another instance;
- ``split``: none of the above: the masks on it are too partial (or too large).

A missed instance is also marked ``embedding fits`` when a mask grown from one of its pixels
(up to 64 of them, evenly spread) at one of the model's thresholds has IoU >= 0.5 with it:
then the class head (seediness, class or threshold), not the embedding, lost it. Masks that
match no instance are counted as ``on background`` (mostly outside every instance) or
``fragment`` (parts, duplicates or wrong classes of instances). The instances and the missed
ones are also counted by area in input pixels (``AREA_BANDS``): on the default model's test
split, shapes under 128 pixels are 15% of the instances and half of the misses. And by contact
(``contact_band``): how much of an instance's outline one other instance holds. On the same split
2% of the shapes apart from the others are missed, 30% of those touching one and 76% of those one
surrounds.

    python -m instseg_train.diagnose --data DIR --model model.onnx [--split val] [--images N]

Post-processing settings default to those recommended in the model file, else the element's
(the report lists those that are not the element's defaults, docs/contract.md).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import numpy as np

from .coco import CocoInstances
from .export import input_size, read_metadata
from .losses import downsample_ids
from .postprocess import distance_limit, postprocess
from .shapes import grow

COVERED = 0.3  # share of an instance a mask must cover for the instance to count as seeded
PROBES = 64  # pixels per missed instance tried as seeds in the embedding test
# Upper bounds of the area bands, in pixels of the model's input: COCO's small (< 32^2) split at 128 pixels (a
# shape about 13 pixels across, the smallest that the shapes data renders whole), medium, large.
AREA_BANDS = ((128, "under 128"), (32 ** 2, "128 to 1024"), (96 ** 2, "1024 to 9216"), (float("inf"), "over 9216"))


def area_band(area: float) -> str:
    return next(name for bound, name in AREA_BANDS if area < bound)


# Share of an instance's outline (the ring of RING grid pixels around it) that the one neighbour
# holding most of it holds: below TOUCHING "apart", below SURROUNDED "touching", else "surrounded"
# (a shape lying on a larger one, or mostly hidden by one).
RING, TOUCHING, SURROUNDED = 2, 0.25, 0.6
CONTACT_BANDS = ("apart", "touching", "surrounded")


def contact_band(truth_ids: np.ndarray, instance: int) -> str:
    """How much of instance ``instance``'s outline in the id map ``truth_ids`` one other
    instance holds (see ``CONTACT_BANDS``); the image border and the background hold none."""
    inside = truth_ids == instance
    ring = truth_ids[grow(inside, RING) & ~inside]
    holders = np.bincount(ring[ring != 0], minlength=1)
    share = holders.max() / max(ring.size, 1)
    return CONTACT_BANDS[int(share >= TOUCHING) + int(share >= SURROUNDED)]


def _mean_std(meta: dict, key: str, default: float) -> np.ndarray:
    values = meta.get(key)
    parts = [float(v) for v in values.split(",")] if values else [default] * 3
    return np.array(parts, np.float32)[:, None, None]


def embedding_fits(embedding: np.ndarray, truth: np.ndarray, thresholds) -> bool:
    """Whether some pixel of ``truth`` (bool [h, w]) grows, at some threshold, a mask
    {q : d(p, q) <= ln(2 / tau - 1)} of IoU >= 0.5 with it; embedding is [D, h, w]."""
    e = embedding.reshape(embedding.shape[0], -1).T.astype(np.float32)  # [P, D]
    inside = truth.reshape(-1)
    members = np.flatnonzero(inside)
    probes = e[members[np.linspace(0, len(members) - 1, min(len(members), PROBES)).astype(int)]]
    d = (e * e).sum(1)[None] + (probes * probes).sum(1)[:, None] - 2.0 * probes @ e.T  # [n, P]
    for tau in thresholds:
        mask = d <= distance_limit(tau)
        inter = mask[:, inside].sum(1)
        if np.any(2 * inter >= mask.sum(1) + len(members) - inter):
            return True
    return False


def miss_causes(embedding, thresholds, truth_ids, truth_classes, instances, labels):
    """({truth id: cause} of the missed instances, causes of the unmatched masks) of one image, on
    the grid: truth_ids [h, w] (0 = background, i = truth_classes[i - 1]), the post-processing's
    instances and label map."""
    masks = [labels == k.region for k in instances]
    truths = [truth_ids == i for i in range(1, len(truth_classes) + 1)]
    iou = np.zeros((len(masks), len(truths)))
    for m, mask in enumerate(masks):
        for i, truth in enumerate(truths):
            iou[m, i] = (mask & truth).sum() / max((mask | truth).sum(), 1)
    same_class = np.array([k.class_id for k in instances])[:, None] == np.array(truth_classes)[None, :]
    missed = {}
    for i, truth in enumerate(truths):
        if not truth.any() or np.any((iou[:, i] >= 0.5) & same_class[:, i]):
            continue
        overlap = np.array([(m & truth).sum() for m in masks])
        if np.any(iou[:, i] >= 0.5):
            cause = "wrong class"
        elif overlap.sum() < COVERED * truth.sum():
            cause = "unseeded"
        elif any((masks[overlap.argmax()] & other).sum() > 0.5 * other.sum()
                 for j, other in enumerate(truths) if j != i and other.any()):
            cause = "merged"
        else:
            cause = "split"
        fits = "embedding fits" if embedding_fits(embedding, truth, thresholds) else "embedding does not fit"
        missed[i + 1] = f"{cause}, {fits}"
    unmatched = []
    on_truth = truth_ids > 0
    for m, (row, classes) in enumerate(zip(iou, same_class)):
        if not np.any((row >= 0.5) & classes):
            unmatched.append("fragment" if (masks[m] & on_truth).sum() * 2 > masks[m].sum() else "on background")
    return missed, unmatched


def diagnose(annotations: str, images_dir: str, model: str, images: int | None = None,
             seed_threshold=None, alpha=None, min_area=None, overlaps=None, max_overlap=None) -> dict:
    """Counts of the causes over the split's still images (the first ``images`` of them)."""
    import onnxruntime as ort

    meta = read_metadata(model)
    thresholds = [float(v) for v in meta.get("instseg.thresholds", "0.25,0.5,0.75,0.9").split(",")]
    settings = {}  # what is neither given nor in the file keeps postprocess's (the element's) default
    for name, given, key, kind in (("seed_threshold", seed_threshold, "instseg.seed-threshold", float),
                                   ("alpha", alpha, "instseg.alpha", float),
                                   ("min_area", min_area, "instseg.min-area", int),
                                   ("overlaps", overlaps, "instseg.overlaps", str),
                                   ("max_overlap", max_overlap, "instseg.max-overlap", float)):
        if given is not None or key in meta:
            settings[name] = kind(given if given is not None else meta[key])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    shape = input_size(session, meta)
    data = CocoInstances(images_dir, annotations, size=shape, resize=meta.get("instseg.resize", "letterbox"))
    mean, std = _mean_std(meta, "instseg.mean", 0.0), _mean_std(meta, "instseg.std", 1.0)
    still = [i for i, image_id in enumerate(data.image_ids) if "video_id" not in data.coco.imgs[image_id]]
    missed, unmatched, by_area, missed_by_area, detections = Counter(), Counter(), Counter(), Counter(), 0
    by_contact, missed_by_contact = Counter(), Counter()
    for index in still[:images]:
        image, ids, classes = data[index]
        x = ((image.numpy() - mean) / std)[None].astype(np.float32)
        embedding, probabilities = session.run(["embedding", "classes"], {session.get_inputs()[0].name: x})
        grid = downsample_ids(ids.numpy(), shape[0] // embedding.shape[2])
        instances, labels = postprocess(embedding[0], probabilities[0], thresholds, **settings)
        lost, extra = miss_causes(embedding[0], thresholds, grid, classes.tolist(), instances, labels)
        missed.update(lost.values())
        cell = (shape[0] // grid.shape[0]) * (shape[1] // grid.shape[1])  # input pixels per grid pixel
        bands = {i: area_band(cell * n) for i, n in enumerate(np.bincount(grid.reshape(-1))) if i and n}
        by_area.update(bands.values())
        missed_by_area.update(bands[i] for i in lost)
        contacts = {i: contact_band(grid, i) for i in bands}
        by_contact.update(contacts.values())
        missed_by_contact.update(contacts[i] for i in lost)
        unmatched.update(extra)
        detections += len(instances)
    return {"images": len(still[:images]), "settings": settings, "instances": by_area.total(),
            "missed": dict(missed.most_common()), "masks": detections, "unmatched masks": dict(unmatched),
            "instances by area": {name: by_area[name] for _, name in AREA_BANDS},
            "missed by area": {name: missed_by_area[name] for _, name in AREA_BANDS},
            "instances by contact": {name: by_contact[name] for name in CONTACT_BANDS},
            "missed by contact": {name: missed_by_contact[name] for name in CONTACT_BANDS}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="COCO dataset directory")
    parser.add_argument("--model", required=True, help="ONNX model (instseg contract 1)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=None, help="only the first N still images")
    parser.add_argument("--seed-threshold", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--min-area", type=int, default=None)
    parser.add_argument("--overlaps", default=None, choices=("nearest", "confident"))
    parser.add_argument("--max-overlap", type=float, default=None)
    args = parser.parse_args(argv)
    report = diagnose(os.path.join(args.data, "annotations", f"instances_{args.split}.json"),
                      os.path.join(args.data, args.split), args.model, args.images,
                      args.seed_threshold, args.alpha, args.min_area, args.overlaps,
                      args.max_overlap)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
