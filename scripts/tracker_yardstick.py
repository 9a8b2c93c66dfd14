"""Identity metrics of instseg's own tracking against GStreamer's `ioutracker` (a box-IoU
tracker reading instseg's object-detection Mtds), on the toolkit's test clips.

    python scripts/tracker_yardstick.py --data target/shapes-data --model models/default.onnx \\
        --example target/analytics/release/examples/analytics_tracks

Run it under the env file of scripts/build-gstreamer.sh (GStreamer >= 1.26 with ioutracker)
with ONNX Runtime's venv active; `scripts/tracker-yardstick.sh` does all that. Each clip's PNG
frames are decoded (Pillow) to one raw RGB file (the built GStreamer has no PNG decoder) and run
through the `analytics_tracks` example:

    filesrc ! rawvideoparse ! instseg tracking=T results-location=R ! [ioutracker !] appsink

The masks come from instseg's results file, the identities from the GstAnalytics tracking Mtds;
the metrics are `instseg_train.evaluate.identity_metrics` (switches per 100 instance-frames,
ground-truth tracks keeping one id for >= 80% of their frames, clip mask AP), fed with:

- `instseg`: tracking=true, instseg's own track ids;
- `ioutracker`: tracking=false (instseg attaches no tracking Mtd), ioutracker's track ids;
- `ioutracker-same-masks`: tracking=true, but ioutracker's ids (the tracking Mtd it adds after
  instseg's): the same masks as `instseg`, only the identities differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
from PIL import Image

from instseg_train import evaluate

MODES = {
    # name: (instseg tracking, ioutracker downstream, which tracking Mtd gives the id)
    "instseg": (True, False, 0),
    "ioutracker": (False, True, -1),
    "ioutracker-same-masks": (True, True, -1),
}


def run_clip(paths, model, example, mode, properties="", tracker_properties=""):
    """instseg's JSON lines for the frames, with each instance's `track_id` taken from the
    analytics meta as `mode` says."""
    tracking, ioutracker, pick = MODES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "clip.rgb")
        with open(raw, "wb") as clip:
            for path in paths:
                image = np.asarray(Image.open(path).convert("RGB"))
                height, width = image.shape[:2]
                if (3 * width) % 4:
                    raise SystemExit(f"{path}: RGB rows of {width} pixels need padding")
                clip.write(image.tobytes())
        results = os.path.join(tmp, "results.jsonl")
        pipeline = (
            f"filesrc location={raw} ! rawvideoparse format=rgb width={width} height={height} "
            "framerate=10/1 ! "
            f"instseg model-location={os.path.abspath(model)} results-location={results} "
            f"tracking={'true' if tracking else 'false'} overlay=none {properties} ! "
            + (f"ioutracker {tracker_properties} ! " if ioutracker else "")
            + "appsink name=sink")
        out = subprocess.run([example, pipeline], check=True, capture_output=True, text=True).stdout
        tracks = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        with open(results) as lines:
            frames = [json.loads(line) for line in lines]
    assert len(frames) == len(tracks) == len(paths), (len(frames), len(tracks), len(paths))
    for frame, analytics in zip(frames, tracks):
        assert len(frame["instances"]) == len(analytics["instances"])
        for instance, seen in zip(frame["instances"], analytics["instances"]):
            assert instance["bbox"] == seen["bbox"], (instance["bbox"], seen["bbox"])
            if not seen["tracks"]:
                raise SystemExit(f"{mode}: an instance without tracking Mtd")
            instance["track_id"] = seen["tracks"][pick]
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a toolkit dataset with annotations/instances_clips.json")
    parser.add_argument("--model", required=True)
    parser.add_argument("--example", required=True, help="the analytics_tracks example binary")
    parser.add_argument("--properties", default="", help="extra instseg properties")
    parser.add_argument("--tracker-properties", default="",
                        help='ioutracker properties, e.g. "iou-score-threshold=0.3" (default: its defaults)')
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    clips = os.path.join(args.data, "annotations", "instances_clips.json")
    report = {}
    for mode in args.modes.split(","):
        # identity_metrics runs each clip through evaluate.run_plugin: run ours instead.
        evaluate.run_plugin = (lambda paths, model, tracking=True, plugin_path=None, properties="", mode=mode:
                               run_clip(paths, model, args.example, mode, properties, args.tracker_properties))
        per100, kept, ap = evaluate.identity_metrics(clips, os.path.join(args.data, "clips"), args.model,
                                                      MODES[mode][0], properties=args.properties)
        report[mode] = {"id-switches-per-100": per100, "tracks-keeping-one-id": kept, "clip-AP": ap}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
