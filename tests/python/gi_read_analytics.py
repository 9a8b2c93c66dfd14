#!/usr/bin/python3
"""Reads the GstAnalytics relation meta (feature `analytics`) with PyGObject and checks that
it says what InstSegMeta says, instance for instance.

Run with Debian's python3 (python3-gi) under the env file of scripts/build-gstreamer.sh
(GstAnalytics typelib, GStreamer >= 1.26) and GST_PLUGIN_PATH at a build of the plugin with
the feature. Usage:
    gi_read_analytics.py MODEL
Runs 10 frames of a red ball moving on black through instseg and prints one JSON line,
{"frames": N, "instances": M}; exits with an error at the first disagreement.

Reading, as an application does: the segmentation Mtd (found by id: PyGObject cannot carry
`iterate`'s state), the object-detection Mtds related to it (`get_direct_related`, in id
order: region index 1, 2, ...), and the tracking Mtd each of them relates to.
"""

import json
import struct
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAnalytics", "1.0")
from gi.repository import GLib, Gst, GstAnalytics  # noqa: E402

model = sys.argv[1]
# Debian's Gst overrides (1.22) refuse None with the newer typelib's gst_init.
Gst.init([])
pipeline = Gst.parse_launch(
    "videotestsrc num-buffers=10 pattern=ball background-color=0xff000000 "
    "foreground-color=0xffff0000 ! video/x-raw,format=RGB,width=160,height=120 ! "
    f"instseg model-location={model} overlay=none ! appsink name=sink sync=false max-buffers=100"
)
sink = pipeline.get_by_name("sink")
pipeline.set_state(Gst.State.PLAYING)


def buffer_bytes(buffer):
    ok, info = buffer.map(Gst.MapFlags.READ)
    assert ok
    data = bytes(info.data)
    buffer.unmap(info)
    return data


def related(rmeta, mtd_id, relation, mtd_type):
    """Ids of the Mtds of `mtd_type` that `mtd_id` relates to by `relation`, in id order."""
    # The state is a gpointer: 0 starts (None is refused); PyGObject warns on stderr about its
    # transfer annotation, harmlessly.
    ids, state = [], 0
    while True:
        found, state, mtd = rmeta.get_direct_related(mtd_id, relation, mtd_type, state)
        if not found:
            return ids
        ids.append(mtd.id)


def f32(value):
    return struct.unpack("f", struct.pack("f", value))[0]


frames = instances = 0
while True:
    sample = sink.emit("pull-sample")
    if sample is None:
        break
    buffer = sample.get_buffer()
    ours = buffer.get_custom_meta("InstSegMeta").get_structure()
    rmeta = GstAnalytics.buffer_get_analytics_relation_meta(buffer)
    assert rmeta is not None, "no relation meta"
    segmentation = None
    for mtd_id in range(GstAnalytics.relation_get_length(rmeta)):
        found, mtd = rmeta.get_segmentation_mtd(mtd_id)
        if found:
            segmentation = mtd
            break
    assert segmentation is not None, "no segmentation Mtd"
    mask, x, y, w, h = segmentation.get_mask()
    assert [x, y, w, h] == [ours.get_value(k) for k in ("mask-x", "mask-y", "mask-w", "mask-h")]
    assert buffer_bytes(mask) == buffer_bytes(ours.get_value("mask")), "label maps differ"
    expected = ours.get_value("instances").array
    regions = [segmentation.get_region_id(i) for i in range(segmentation.get_region_count())]
    assert regions == [0] + [i.get_value("region") for i in expected], regions
    detections = related(rmeta, segmentation.id, GstAnalytics.RelTypes.RELATE_TO,
                         GstAnalytics.od_mtd_get_mtd_type())
    assert len(detections) == len(expected), (detections, len(expected))
    for od_id, instance in zip(detections, expected):
        found, od = rmeta.get_od_mtd(od_id)
        assert found
        ok, bx, by, bw, bh, confidence = od.get_location()
        box = [instance.get_value(k) for k in ("x", "y", "width", "height")]
        assert [bx, by, bw, bh] == box, ([bx, by, bw, bh], box)
        assert GLib.quark_to_string(od.get_obj_type()) == instance.get_value("label")
        assert confidence == f32(instance.get_value("confidence")), confidence
        tracks = related(rmeta, od_id, GstAnalytics.RelTypes.RELATE_TO,
                         GstAnalytics.tracking_mtd_get_mtd_type())
        assert len(tracks) == 1, tracks
        found, tracking = rmeta.get_tracking_mtd(tracks[0])
        assert found
        ok, track_id, first_seen, last_seen, lost = tracking.get_info()
        assert track_id == instance.get_value("track-id"), (track_id, instance.get_value("track-id"))
        assert last_seen == buffer.pts and first_seen <= last_seen and not lost
        instances += 1
    frames += 1
pipeline.set_state(Gst.State.NULL)
print(json.dumps({"frames": frames, "instances": instances}))
