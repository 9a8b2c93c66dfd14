"""Scores what users get: runs the real plugin (``gst-launch-1.0`` with the instseg element)
over a COCO split, reads its ``results-location`` JSON Lines and computes mask AP with
pycocotools and, on clips, identity metrics with tracking on and off.

    python -m instseg_train.evaluate --data DIR --model model.onnx [--plugin-path target/release]
    python -m instseg_train.evaluate --data DIR --grid-bound 4

``--grid-bound S`` scores the ground truth itself, sampled on a stride-S grid (the centre pixel
of each cell) and scaled back up as the element does: the best mask AP a perfect model with
output stride S can reach on that split.

Identity metrics: each ground-truth instance is matched per frame to the predicted mask of
highest IoU (>= 0.5, one to one); an identity switch is a change of the predicted track id
matched to a ground-truth track between two of its matched frames; "kept" is the share of
ground-truth tracks whose most frequent predicted id covers at least 80% of their visible frames.
The clip frames' masks are also scored (mask AP, tracking on and off): identities must not cost
the masks themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from collections import Counter, defaultdict

import numpy as np
from pycocotools import mask as mask_api
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .losses import downsample_ids


def run_plugin(paths, model, tracking=True, plugin_path=None, properties=""):
    """Runs the frames (PNG files, in order) through instseg; returns its JSON lines."""
    with tempfile.TemporaryDirectory() as tmp:
        for index, path in enumerate(paths):
            os.symlink(os.path.abspath(path), os.path.join(tmp, f"{index:06d}.png"))
        results = os.path.join(tmp, "results.jsonl")
        env = dict(os.environ)
        if plugin_path:
            env["GST_PLUGIN_PATH"] = plugin_path
        pipeline = (
            f"multifilesrc location={tmp}/%06d.png index=0 stop-index={len(paths) - 1} "
            "caps=image/png,framerate=10/1 ! pngdec ! videoconvert ! video/x-raw,format=RGB ! "
            f"instseg model-location={os.path.abspath(model)} results-location={results} "
            f"tracking={'true' if tracking else 'false'} overlay=none {properties} ! fakesink")
        subprocess.run(["gst-launch-1.0", "-q", *pipeline.split()], check=True, env=env)
        with open(results) as lines:
            return [json.loads(line) for line in lines]


def _still_images(coco):
    return [i for i in sorted(coco.getImgIds()) if "video_id" not in coco.imgs[i]]


def _score(coco, image_ids, detections):
    """(AP, AP50, AP75) of COCO result dicts with pycocotools (summary printed)."""
    if not detections:
        return 0.0, 0.0, 0.0
    evaluation = COCOeval(coco, coco.loadRes(detections), "segm")
    evaluation.params.imgIds = image_ids
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return tuple(float(v) for v in evaluation.stats[:3])


def _detections(coco, image_id, line):
    """COCO result dicts of the plugin's instances on one image (one `results-location` line)."""
    categories = [c["id"] for c in coco.dataset["categories"]]
    return [{"image_id": image_id, "category_id": categories[instance["class_id"] - 1],
             "segmentation": instance["mask"], "score": instance["score"]} for instance in line["instances"]]


def mask_ap(annotations, images_dir, model, plugin_path=None, properties=""):
    """(AP, AP50, AP75) of the plugin's masks on the split's still images."""
    coco = COCO(annotations)
    image_ids = _still_images(coco)
    paths = [os.path.join(images_dir, coco.imgs[i]["file_name"]) for i in image_ids]
    lines = run_plugin(paths, model, tracking=False, plugin_path=plugin_path, properties=properties)
    detections = [d for image_id, line in zip(image_ids, lines) for d in _detections(coco, image_id, line)]
    return _score(coco, image_ids, detections)


def grid_bound(annotations, stride: int):
    """(AP, AP50, AP75) of the ground truth sampled on a stride-`stride` grid and scaled back
    up by nearest neighbour: the ceiling that the output grid puts on any model."""
    coco = COCO(annotations)
    image_ids = _still_images(coco)
    detections = []
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_ids)):
        mask = coco.annToMask(annotation)
        cells = downsample_ids(mask, stride)  # the grid the losses train on
        if not cells.any():
            continue  # no cell centre on the shape: a model with this grid always misses it
        scaled = np.kron(cells, np.ones((stride, stride), np.uint8))[: mask.shape[0], : mask.shape[1]]
        rle = mask_api.encode(np.asfortranarray(scaled))
        rle["counts"] = rle["counts"].decode()
        detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                           "segmentation": rle, "score": 1.0})
    return _score(coco, image_ids, detections)


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 0.0


def identity_metrics(annotations, images_dir, model, tracking, plugin_path=None, properties=""):
    """(identity switches per 100 instance-frames, share of tracks keeping one id, mask AP of
    the clip frames) on clips: the AP shows what tracking does to the masks themselves."""
    coco = COCO(annotations)
    detections, frame_ids = [], []
    videos = defaultdict(list)
    for image in coco.imgs.values():
        if "video_id" in image:
            videos[image["video_id"]].append(image)
    switches, instance_frames, kept, tracks = 0, 0, 0, 0
    for frames in videos.values():
        frames.sort(key=lambda image: image["frame_index"])
        lines = run_plugin([os.path.join(images_dir, f["file_name"]) for f in frames], model,
                           tracking=tracking, plugin_path=plugin_path, properties=properties)
        matched = defaultdict(list)  # ground-truth track -> predicted id per visible frame
        for image, line in zip(frames, lines):
            frame_ids.append(image["id"])
            detections += _detections(coco, image["id"], line)
            truth = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            predicted = [(i["track_id"], mask_api.decode({"size": i["mask"]["size"],
                                                          "counts": i["mask"]["counts"].encode()}))
                         for i in line["instances"]]
            pairs = sorted(((_iou(coco.annToMask(t), m), t["track_id"], p)
                            for t in truth for p, m in predicted), reverse=True)
            used_truth, used_pred = set(), set()
            for iou, track, pred in pairs:
                if iou < 0.5 or track in used_truth or pred in used_pred:
                    continue
                used_truth.add(track)
                used_pred.add(pred)
                matched[track].append(pred)
            for t in truth:
                instance_frames += 1
                if t["track_id"] not in used_truth:
                    matched[t["track_id"]].append(None)
        for ids in matched.values():
            seen = [i for i in ids if i is not None]
            switches += sum(a != b for a, b in zip(seen, seen[1:]))
            tracks += 1
            if seen and Counter(seen).most_common(1)[0][1] >= 0.8 * len(ids):
                kept += 1
    ap = _score(coco, frame_ids, detections)[0]
    return 100.0 * switches / max(instance_frames, 1), kept / max(tracks, 1), ap


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", help="ONNX model to run in the plugin")
    parser.add_argument("--split", default="test")
    parser.add_argument("--plugin-path", default=None, help="directory of libgstinstseg.so")
    parser.add_argument("--properties", default="", help='extra instseg properties, e.g. "seed-threshold=0.4"')
    parser.add_argument("--grid-bound", type=int, metavar="S",
                        help="score the ground truth sampled on a stride-S grid instead of a model")
    args = parser.parse_args(argv)
    annotations = os.path.join(args.data, "annotations", f"instances_{args.split}.json")
    if args.grid_bound:
        ap, ap50, ap75 = grid_bound(annotations, args.grid_bound)
        print(json.dumps({"stride": args.grid_bound, "AP": ap, "AP50": ap50, "AP75": ap75}, indent=1))
        return
    if not args.model:
        parser.error("--model is required (or --grid-bound)")
    ap, ap50, ap75 = mask_ap(annotations, os.path.join(args.data, args.split), args.model, args.plugin_path,
                              args.properties)
    report = {"AP": ap, "AP50": ap50, "AP75": ap75}
    clips = os.path.join(args.data, "annotations", "instances_clips.json")
    if os.path.exists(clips):
        for tracking in (True, False):
            per100, share, clip_ap = identity_metrics(clips, os.path.join(args.data, "clips"), args.model,
                                                      tracking, args.plugin_path, args.properties)
            key = "tracking" if tracking else "no-tracking"
            report[f"id-switches-per-100 ({key})"] = per100
            report[f"tracks-keeping-one-id ({key})"] = share
            report[f"clip-AP ({key})"] = clip_ap
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
