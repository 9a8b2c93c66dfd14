"""The element seen from Python: InstSegMeta read with PyGObject from an appsink, and the
results-location JSON masks decoded with pycocotools, compared pixel for pixel."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core_cases import REPO

mask_api = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Runs the PyGObject reader once; returns (frames from the meta, JSON lines)."""
    subprocess.run(["cargo", "build", "--quiet", "--lib"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
    tmp = tmp_path_factory.mktemp("element")
    env = dict(os.environ, GST_PLUGIN_PATH=str(target), GST_REGISTRY=str(tmp / "registry.bin"))
    results, meta = tmp / "results.jsonl", tmp / "meta.json"
    subprocess.run(
        [SYSTEM_PYTHON, str(REPO / "tests/python/gi_read_meta.py"),
         str(REPO / "tests/fixtures/colour.onnx"), str(results), str(meta)],
        check=True, env=env)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    return json.loads(meta.read_text()), lines


def upsample(frame, region, width, height):
    """The frame-resolution mask of `region`, by the mapping of docs/metadata.md."""
    x0, y0, w, h = frame["rect"]
    labels = np.array(frame["labels"], np.uint8).reshape(frame["mask-height"], frame["mask-width"])
    xs = np.arange(width)
    ys = np.arange(height)
    gx = (xs - x0) * frame["mask-width"] // w
    gy = (ys - y0) * frame["mask-height"] // h
    inside = ((xs >= x0) & (xs < x0 + w))[None, :] & ((ys >= y0) & (ys < y0 + h))[:, None]
    cells = labels[np.clip(gy, 0, frame["mask-height"] - 1)][:, np.clip(gx, 0, frame["mask-width"] - 1)]
    return inside & (cells == region)


def test_meta_is_readable_from_python(outputs):
    frames, _ = outputs
    assert len(frames) == 10
    for frame in frames:
        assert len(frame["labels"]) == frame["mask-width"] * frame["mask-height"]
        reds = [i for i in frame["instances"] if i["label"] == "red"]
        assert reds, frame["instances"]
        assert all(i["region"] in frame["labels"] for i in frame["instances"])
    # The ball keeps its identity while it moves.
    ball_ids = {max((i for i in f["instances"] if i["label"] == "red"), key=lambda i: i["area"])["track-id"]
                for f in frames}
    assert len(ball_ids) == 1


def test_json_masks_decode_to_the_label_map(outputs):
    frames, lines = outputs
    assert [line["frame"] for line in lines] == list(range(10))
    for frame, line in zip(frames, lines):
        assert line["pts"] == frame["pts"]
        assert len(line["instances"]) == len(frame["instances"])
        for record, instance in zip(line["instances"], frame["instances"]):
            assert record["track_id"] == instance["track-id"]
            assert record["bbox"] == [instance[k] for k in ("x", "y", "width", "height")]
            rle = {"size": record["mask"]["size"], "counts": record["mask"]["counts"].encode()}
            decoded = mask_api.decode(rle).astype(bool)
            expected = upsample(frame, instance["region"], line["width"], line["height"])
            assert decoded.shape == (line["height"], line["width"])
            np.testing.assert_array_equal(decoded, expected)


def test_python_example_prints_instances(tmp_path):
    subprocess.run(["cargo", "build", "--quiet", "--lib"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
    env = dict(os.environ, GST_PLUGIN_PATH=str(target), GST_REGISTRY=str(tmp_path / "registry.bin"))
    done = subprocess.run([SYSTEM_PYTHON, str(REPO / "examples/print_instances.py")], check=True,
                          env=env, capture_output=True, text=True)
    frames = [line for line in done.stdout.splitlines() if line.startswith("frame at")]
    assert len(frames) == 30
    assert " circle 1.00 " in done.stdout  # the embedded shapes model on the ball


def test_demo_segments_the_shapes_with_the_default_model(tmp_path):
    """Screenshot-style: in the demo (the embedded default model on a clip of the four shape
    classes), frame 0 finds each shape with its class, and the contact sheet has the shapes of
    frame 0 (top-left tile) tinted by their masks."""
    image = pytest.importorskip("PIL.Image")
    subprocess.run(["cargo", "build", "--quiet", "--example", "demo"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
    done = subprocess.run([str(target / "examples/demo"), str(tmp_path)], check=True,
                          capture_output=True, text=True)
    assert "60 frames" in done.stdout and (tmp_path / "instseg-demo.avi").stat().st_size > 10_000
    first = next(line for line in done.stdout.splitlines() if line.startswith("frame  0:"))
    confident = {i.split()[1] for i in first.split(":", 1)[1].split("|") if float(i.split()[2]) >= 0.99}
    assert confident == {"circle", "square", "star", "triangle"}, first
    sheet = np.asarray(image.open(tmp_path / "instseg-contact-sheet.png").convert("RGB")).astype(int)
    assert sheet.shape == (480, 640, 3)
    # Frame 0 of examples/demo.rs: centres and colours of its SPRITES on 320x240 (noise +-6).
    sprites = {"circle": ((70, 70), (250, 140, 30)), "square": ((60, 175), (40, 110, 240)),
               "triangle": ((250, 65), (60, 210, 90)), "star": ((265, 175), (230, 60, 200))}
    for name, ((x, y), colour) in sprites.items():
        pixel = sheet[y, x]
        assert np.abs(pixel - colour).max() > 12, f"{name}: {pixel} is not tinted"
