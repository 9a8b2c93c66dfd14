#!/usr/bin/python3
"""Reads InstSegMeta from an appsink with PyGObject, as applications do.

Run with Debian's python3 (python3-gi, python3-gst-1.0). Usage:
    gi_read_meta.py MODEL RESULTS_JSON OUTPUT_JSON
Runs 10 frames of a red ball moving on black through instseg (model MODEL, writing the
element's JSON Lines to RESULTS_JSON) and writes what the meta said, per frame, to OUTPUT_JSON.
"""

import json
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst  # noqa: E402

model, results_path, output_path = sys.argv[1:4]
Gst.init(None)
pipeline = Gst.parse_launch(
    "videotestsrc num-buffers=10 pattern=ball background-color=0xff000000 "
    "foreground-color=0xffff0000 ! video/x-raw,format=RGB,width=160,height=120 ! "
    f"instseg model-location={model} results-location={results_path} ! "
    "appsink name=sink sync=false max-buffers=100"
)
sink = pipeline.get_by_name("sink")
pipeline.set_state(Gst.State.PLAYING)
frames = []
while True:
    sample = sink.emit("pull-sample")
    if sample is None:
        break
    buffer = sample.get_buffer()
    meta = buffer.get_custom_meta("InstSegMeta")
    structure = meta.get_structure()
    mask = structure.get_value("mask")
    ok, info = mask.map(Gst.MapFlags.READ)
    labels = list(info.data)
    mask.unmap(info)
    instances = []
    for instance in structure.get_value("instances").array:
        instances.append({
            field: instance.get_value(field)
            for field in ("region", "track-id", "class-id", "label", "confidence", "x", "y",
                          "width", "height", "seed-x", "seed-y", "area", "age")
        })
    frames.append({
        "pts": buffer.pts,
        "mask-width": structure.get_value("mask-width"),
        "mask-height": structure.get_value("mask-height"),
        "rect": [structure.get_value(f) for f in ("mask-x", "mask-y", "mask-w", "mask-h")],
        "labels": labels,
        "instances": instances,
    })
bus_error = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
pipeline.set_state(Gst.State.NULL)
if bus_error is not None:
    sys.exit(f"pipeline error: {bus_error.parse_error()[0].message}")
with open(output_path, "w") as out:
    json.dump(frames, out)
