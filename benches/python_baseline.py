#!/usr/bin/env python3
"""The job of `instseg`, done the way a user would without it: appsink frames into NumPy,
OpenCV letterbox resize, ONNX Runtime, the NumPy reference post-processing.

Needs PyGObject (Debian's python3-gi) and numpy, onnxruntime, opencv-python-headless: run it
with a virtualenv made with --system-site-packages (benches/pipeline_vs_python.sh does).
Usage: python_baseline.py MODEL WIDTHxHEIGHT FORMAT FRAMES  -> prints frames per second.
"""

import sys
import time
from pathlib import Path

import cv2
import gi
import numpy as np
import onnxruntime as ort

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from instseg_train.postprocess import postprocess  # noqa: E402


def main():
    model, size, video_format, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    width, height = (int(v) for v in size.split("x"))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    thresholds = [float(t) for t in meta.get("instseg.thresholds", "0.25,0.5,0.75,0.9").split(",")]
    mean = np.array([float(v) for v in meta.get("instseg.mean", "0,0,0").split(",")], np.float32)
    std = np.array([float(v) for v in meta.get("instseg.std", "1,1,1").split(",")], np.float32)
    shape = session.get_inputs()[0].shape
    in_h, in_w = (shape[2], shape[3]) if isinstance(shape[2], int) else (256, 256)
    input_name = session.get_inputs()[0].name

    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"videotestsrc num-buffers={frames} pattern=ball background-color=0xff000000 "
        f"foreground-color=0xffff0000 ! video/x-raw,format={video_format},width={width},height={height} ! "
        "videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false max-buffers=4")
    sink = pipeline.get_by_name("sink")
    scale = min(in_w / width, in_h / height)
    new_w, new_h = round(width * scale), round(height * scale)
    x0, y0 = (in_w - new_w) // 2, (in_h - new_h) // 2
    pipeline.set_state(Gst.State.PLAYING)
    start = time.perf_counter()
    count = 0
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        stride = len(info.data) // height
        frame = np.frombuffer(info.data, np.uint8).reshape(height, stride)[:, : 3 * width]
        frame = frame.reshape(height, width, 3)
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[y0:y0 + new_h, x0:x0 + new_w] = cv2.resize(frame, (new_w, new_h),
                                                          interpolation=cv2.INTER_LINEAR)
        buffer.unmap(info)
        tensor = ((canvas.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
        embedding, classes = session.run(["embedding", "classes"], {input_name: tensor})
        postprocess(embedding[0], classes[0], thresholds)
        count += 1
    elapsed = time.perf_counter() - start
    pipeline.set_state(Gst.State.NULL)
    print(f"{count / elapsed:.1f}")


if __name__ == "__main__":
    main()
