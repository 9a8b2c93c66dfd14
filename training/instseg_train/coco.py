"""COCO instance-segmentation files: writing the procedural shapes dataset, and loading any
COCO instance dataset for training.

Layout written by ``generate_dataset``::

    DIR/train/000001.png ...                 DIR/annotations/instances_train.json
    DIR/val/... DIR/test/...                 DIR/annotations/instances_{val,test}.json
    DIR/clips/v0001_f000.png ...             DIR/annotations/instances_clips.json
    DIR/train_clips/v0001_f000.png ...       DIR/annotations/instances_train_clips.json

Clip frames carry ``video_id`` and ``frame_index`` in their image entries and ``track_id`` in
their annotations (a ``videos`` list is added too). ``clips`` are held out for evaluation,
``train_clips`` (from their own seeds) are for training on consecutive frames. CLI::

    python -m instseg_train.coco --out DIR --seed S --train N --val N --test N --clips N [--train-clips N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict
from multiprocessing import Pool

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .shapes import CLASS_NAMES, render_clip, render_scene

SHAPE_CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "shape"}
                    for i, n in enumerate(CLASS_NAMES)]


def _annotation(mask: np.ndarray, ann_id: int, image_id: int, category: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(category),
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def write_coco(directory: str, split_name: str, items, categories=SHAPE_CATEGORIES) -> str:
    """Writes PNGs under ``directory/split_name/`` and
    ``directory/annotations/instances_{split_name}.json``; returns the json path.

    ``items`` yields scenes ``(image, masks, classes)`` and/or clips: a list of frames
    ``(image, masks, classes, track_ids)``."""
    img_dir = os.path.join(directory, split_name)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
    images, annotations, videos = [], [], []

    def add(image, masks, classes, extra=None, track_ids=None, name=None):
        image_id = len(images) + 1
        name = name or f"{image_id:06d}.png"
        Image.fromarray(image).save(os.path.join(img_dir, name), compress_level=1)
        images.append({"id": image_id, "file_name": name, "height": int(image.shape[0]),
                       "width": int(image.shape[1]), **(extra or {})})
        for k in range(len(masks)):
            ann = _annotation(masks[k], len(annotations) + 1, image_id, classes[k])
            if track_ids is not None:
                ann["track_id"] = int(track_ids[k])
            annotations.append(ann)

    for item in items:
        if isinstance(item, list):  # clip
            video_id = len(videos) + 1
            videos.append({"id": video_id, "name": f"v{video_id:04d}", "length": len(item)})
            for f, (image, masks, classes, track_ids) in enumerate(item):
                add(image, masks, classes, {"video_id": video_id, "frame_index": f},
                    track_ids, f"v{video_id:04d}_f{f:03d}.png")
        else:
            add(*item[:3])
    data = {"info": {"description": f"instseg shapes, split {split_name}"},
            "images": images, "annotations": annotations, "categories": list(categories)}
    if videos:
        data["videos"] = videos
    path = os.path.join(directory, "annotations", f"instances_{split_name}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _render(job):
    kind, seed, size, frames = job
    rng = np.random.default_rng(seed)
    if kind in ("clips", "train_clips"):
        return render_clip(rng, frames=frames, size=size)
    return render_scene(rng, size=size)


def generate_dataset(directory: str, seed: int, train: int = 1000, val: int = 200, test: int = 200,
                     clips: int = 10, size: tuple[int, int] = (256, 256), frames: int = 16,
                     workers: int = 1, train_clips: int = 0) -> dict:
    """Renders and writes the splits; each split (and each item) has its own seed derived from
    ``seed``, so the output is identical for a seed whatever ``workers`` is and whatever the
    other splits' sizes are. Returns {split: json path}."""
    names = ("train", "val", "test", "clips", "train_clips")
    split_seeds = dict(zip(names, np.random.SeedSequence(seed).spawn(len(names))))
    counts = {"train": train, "val": val, "test": test, "clips": clips, "train_clips": train_clips}
    paths = {}
    with Pool(workers) if workers > 1 else _Serial() as pool:
        for split, n in counts.items():
            if n <= 0:
                continue
            jobs = [(split, s, tuple(size), frames) for s in split_seeds[split].spawn(n)]
            paths[split] = write_coco(directory, split, pool.imap(_render, jobs, chunksize=4))
    return paths


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, jobs, chunksize=1):
        return map(fn, jobs)


# ----------------------------------------------------------------------------- loading


def _round_half_away(x: float) -> int:
    """``x`` (not negative) rounded to the nearest integer, halves up, as Rust's ``f64::round``
    (Python's ``round`` takes halves to the even neighbour)."""
    floor = math.floor(x)
    return floor + (x - floor >= 0.5)


def _letterbox_geometry(h: int, w: int, out_h: int, out_w: int):
    """(height, width, top, left) of an ``h`` x ``w`` picture letterboxed into ``out_h`` x
    ``out_w``, as the element's ``Placement::new`` computes it: scaled by the smaller ratio,
    each side rounded to the nearest pixel (halves up), at least 1 and at most the input,
    centred with the offsets rounded down."""
    scale = min(out_h / h, out_w / w)
    nh = min(out_h, max(1, _round_half_away(h * scale)))
    nw = min(out_w, max(1, _round_half_away(w * scale)))
    return nh, nw, (out_h - nh) // 2, (out_w - nw) // 2


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB uint8 [h,w,3] image resized to ``height`` x ``width`` with Pillow's bilinear
    filter (antialiased when shrinking): the horizontal pass first, then the vertical one, each
    rounded to 8 bits, which is what the element computes (``src/preprocess.rs``). Pillow 13
    runs the vertical pass first when the height shrinks much more than the width; resizing
    one axis per call keeps the order, and the result, the same with every Pillow version."""
    im = Image.fromarray(image)
    if im.width != width:
        im = im.resize((width, im.height), Image.BILINEAR)
    if im.height != height:
        im = im.resize((width, height), Image.BILINEAR)
    return np.asarray(im)


try:
    import torch
    from torch.utils.data import Dataset
except ImportError:  # writing datasets does not need torch
    torch, Dataset = None, object


def painted_values(painted: np.ndarray) -> np.ndarray:
    """The values > 0 present in a painted map, ascending (an image may have no background)."""
    return np.flatnonzero(np.bincount(painted.ravel())[1:]) + 1


class CocoInstances(Dataset):
    """Any COCO instance dataset as (image float [3,H,W] in 0..1, instance id map int64 [H,W]
    (0 = background, 1..N), classes int64 [N] in 1..C).

    Segmentations may be polygons, uncompressed or compressed RLE; crowd annotations are
    ignored. Later annotations are painted over earlier ones; instances left without pixels
    are dropped and ids stay contiguous. Category ids map to 1..C in the order of the json's
    ``categories`` list (``category_names`` holds the names). ``size=(H, W)`` resizes
    (``resize='letterbox'``: keep aspect, centred, zero padding; or ``'stretch'``) exactly as
    the element does (``resize_bilinear`` for the image, nearest for the id map);
    ``hflip=True`` flips half of the samples.
    ``cache=True`` keeps every decoded image and painted map in memory once read (about 4 bytes
    per pixel while an image holds fewer than 256 instances), which spares later epochs the PNG
    and RLE decoding: for datasets that fit in RAM."""

    def __init__(self, images_dir: str, annotation_file: str, size=None, resize: str = "letterbox",
                 hflip: bool = False, cache: bool = False):
        from pycocotools.coco import COCO
        import contextlib
        import io

        if resize not in ("letterbox", "stretch"):
            raise ValueError(f"resize must be 'letterbox' or 'stretch', not {resize!r}")
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            self.coco = COCO(annotation_file)
        self.images_dir, self.size, self.resize, self.hflip = images_dir, size, resize, hflip
        self.image_ids = list(self.coco.imgs.keys())
        cats = self.coco.dataset.get("categories", [])
        self.category_names = [c["name"] for c in cats]
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.image_ids)

    def painted(self, index: int, key: str | None = None):
        """(image uint8 [h,w,3], map int64 [h,w], instances): the map holds 1 + an index into
        ``instances`` (0 = background), later annotations painted over earlier ones;
        ``instances`` lists (annotation[key], class in 1..C), or (annotation id, class) when
        ``key`` is None. Instances may have no pixel left."""
        if self.cache is not None and (index, key) in self.cache:
            image, painted, instances = self.cache[(index, key)]
            return image, painted.astype(np.int64), instances
        info = self.coco.imgs[self.image_ids[index]]
        with Image.open(os.path.join(self.images_dir, info["file_name"])) as im:
            image = np.asarray(im.convert("RGB"))
        painted = np.zeros(image.shape[:2], np.int64)
        instances = []
        for ann in self.coco.imgToAnns.get(info["id"], []):
            if ann.get("iscrowd", 0):
                continue
            instances.append((ann[key or "id"], self.cat_to_label[ann["category_id"]]))
            painted[self.coco.annToMask(ann).astype(bool)] = len(instances)
        if self.cache is not None:
            self.cache[(index, key)] = image, painted.astype(np.min_scalar_type(len(instances))), instances
        return image, painted, instances

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Original-size numpy sample: (image uint8 [h,w,3], id map int64 [h,w], classes [N])."""
        image, painted, instances = self.painted(index)
        present = painted_values(painted)
        remap = np.zeros(len(instances) + 1, np.int64)
        remap[present] = np.arange(1, len(present) + 1)
        classes = np.array([c for _, c in instances], np.int64)
        return image, remap[painted], classes[present - 1]

    def __getitem__(self, index: int):
        image, ids, classes = self.load(index)
        img, ids = self.tensors(image, ids, self.hflip and bool(torch.rand(()) < 0.5))
        return img, ids, torch.from_numpy(classes)

    def tensors(self, image: np.ndarray, ids: np.ndarray, flip: bool):
        """Resized (``size``), optionally flipped: (image float [3,H,W] in 0..1, ids [H,W])."""
        if self.size is not None:
            image, ids = self._resize(image, ids)
        if flip:
            image, ids = image[:, ::-1], ids[:, ::-1]
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        return img, torch.from_numpy(np.ascontiguousarray(ids))

    def _resize(self, image: np.ndarray, ids: np.ndarray):
        out_h, out_w = self.size
        h, w = ids.shape
        if self.resize == "stretch":
            nh, nw, top, left = out_h, out_w, 0, 0
        else:
            nh, nw, top, left = _letterbox_geometry(h, w, out_h, out_w)
        img = resize_bilinear(image, nw, nh)
        # nearest neighbour on pixel centres
        ys = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
        xs = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
        out_img = np.zeros((out_h, out_w, 3), np.uint8)
        out_ids = np.zeros((out_h, out_w), np.int64)
        out_img[top:top + nh, left:left + nw] = img
        out_ids[top:top + nh, left:left + nw] = ids[ys[:, None], xs[None, :]]
        return out_img, out_ids


class ClipPairs(Dataset):
    """Pairs of consecutive frames from the clips of a COCO dataset (images with ``video_id``
    and ``frame_index``, annotations with ``track_id``), read through ``frames`` (a
    CocoInstances: its size and hflip apply, the same flip to both frames): (images [2,3,H,W],
    ids [2,H,W], classes [N]) where an id names the same track in both frames (1..N over the
    tracks visible in either)."""

    def __init__(self, frames: CocoInstances):
        self.frames = frames
        videos = defaultdict(dict)
        for index, image_id in enumerate(frames.image_ids):
            info = frames.coco.imgs[image_id]
            if "video_id" in info:
                videos[info["video_id"]][info["frame_index"]] = index
        self.pairs = [(f[k], f[k + 1]) for _, f in sorted(videos.items()) for k in sorted(f) if k + 1 in f]
        if not self.pairs:
            raise ValueError("no consecutive clip frames (video_id, frame_index) in the dataset")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        frames = [self.frames.painted(i, key="track_id") for i in self.pairs[index]]
        visible = {}  # track -> class, over both frames
        for _, painted, instances in frames:
            for p in painted_values(painted):
                visible[instances[p - 1][0]] = instances[p - 1][1]
        track_to_id = {t: i + 1 for i, t in enumerate(sorted(visible))}
        flip = self.frames.hflip and bool(torch.rand(()) < 0.5)
        images, ids = [], []
        for image, painted, instances in frames:
            remap = np.array([0] + [track_to_id.get(t, 0) for t, _ in instances], np.int64)
            img, frame_ids = self.frames.tensors(image, remap[painted], flip)
            images.append(img)
            ids.append(frame_ids)
        classes = torch.tensor([visible[t] for t in sorted(visible)], dtype=torch.long)
        return torch.stack(images), torch.stack(ids), classes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Generate the procedural shapes COCO dataset.")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--train-clips", type=int, default=0, help="clips for training (own seeds)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate_dataset(a.out, a.seed, a.train, a.val, a.test, a.clips, tuple(a.size),
                             a.frames, a.workers, a.train_clips)
    n = a.train + a.val + a.test + (a.clips + a.train_clips) * a.frames
    dt = time.perf_counter() - t0
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"{n} images in {dt:.1f} s ({n / dt:.1f} images/s)")


if __name__ == "__main__":
    main()
