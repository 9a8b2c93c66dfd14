#!/usr/bin/python3
"""Prints each frame's instances from InstSegMeta, read with PyGObject (Debian: python3-gi,
python3-gst-1.0). It draws nothing: applications get masks, classes and ids as metadata.

Usage: GST_PLUGIN_PATH=target/release examples/print_instances.py [PIPELINE-SOURCE]
The default source is a red ball moving on black; the model is the one embedded in the plugin
unless INSTSEG_PROPERTIES says otherwise (e.g. "model-location=/path/model.onnx").
"""

import os
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

SOURCE = ("videotestsrc num-buffers=30 pattern=ball background-color=0xff000000 "
          "foreground-color=0xffff0000 ! video/x-raw,width=320,height=240")


def main():
    Gst.init(None)
    source = sys.argv[1] if len(sys.argv) > 1 else SOURCE
    properties = os.environ.get("INSTSEG_PROPERTIES", "")
    pipeline = Gst.parse_launch(f"{source} ! instseg {properties} ! appsink name=sink sync=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    while (sample := sink.emit("pull-sample")) is not None:
        buffer = sample.get_buffer()
        meta = buffer.get_custom_meta("InstSegMeta")
        if meta is None:
            continue
        result = meta.get_structure()
        instances = result.get_value("instances").array
        carried = " (carried)" if result.get_value("carried") else ""
        print(f"frame at {buffer.pts / Gst.SECOND:.3f} s: {len(instances)} instances{carried}")
        for instance in instances:
            print("  #{} {} {:.2f} box {}x{} at ({}, {})".format(
                instance.get_value("track-id"), instance.get_value("label"),
                instance.get_value("confidence"), instance.get_value("width"),
                instance.get_value("height"), instance.get_value("x"), instance.get_value("y")))
    error = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if error is not None:
        sys.exit(f"error: {error.parse_error()[0].message}")


if __name__ == "__main__":
    main()
