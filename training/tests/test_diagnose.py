"""Sorting missed instances and unmatched masks by cause (`instseg_train.diagnose`)."""

import json
import os

import numpy as np
import torch

from instseg_train.coco import generate_dataset
from instseg_train.diagnose import area_band, contact_band, embedding_fits, main, miss_causes
from instseg_train.export import export_onnx
from instseg_train.model import InstSegNet
from instseg_train.postprocess import Instance

THRESHOLDS = (0.25, 0.5, 0.75, 0.9)


def scene():
    """A 12x12 grid: 1 (class 1) and 2 (class 2) get masks, 3 (class 1) none, 5 (class 1) is
    merged into the mask of 4 (class 1, touching it), 6 (class 2) gets a partial mask."""
    truth = np.zeros((12, 12), np.int64)
    truth[0:4, 0:4] = 1
    truth[0:4, 6:10] = 2
    truth[8:10, 0:2] = 3
    truth[8:12, 4:8] = 4
    truth[8:12, 8:10] = 5
    truth[5:8, 10:12] = 6
    labels = np.zeros((12, 12), np.uint8)
    labels[truth == 1] = 1  # right
    labels[truth == 2] = 2  # wrong class (3)
    labels[(truth == 4) | (truth == 5)] = 3  # IoU 16/24 with 4, 8/24 with 5
    labels[5, 10:12] = 4  # a third of 6
    labels[5:7, 0:2] = 5  # background
    classes = [1, 3, 1, 2, 1]
    instances = [Instance(r, (0, 0), c, 0.5, 0.9, int((labels == r).sum()), (0, 0, 1, 1))
                 for r, c in zip(range(1, 6), classes)]
    centres = np.array([[0, 0], [5, 0], [0, 5], [5, 5], [10, 0], [10, 0], [0, 10]], np.float32)  # 4 and 5 alike
    return centres[truth].transpose(2, 0, 1), truth, [1, 2, 1, 1, 1, 2], instances, labels


def test_miss_causes_by_hand():
    embedding, truth, truth_classes, instances, labels = scene()
    missed, unmatched = miss_causes(embedding, THRESHOLDS, truth, truth_classes, instances, labels)
    assert missed == {2: "wrong class, embedding fits", 3: "unseeded, embedding fits",
                      5: "merged, embedding does not fit", 6: "split, embedding fits"}
    assert unmatched == ["fragment", "fragment", "on background"]


def test_embedding_fits_needs_a_separate_cluster():
    embedding, truth, *_ = scene()
    assert embedding_fits(embedding, truth == 1, THRESHOLDS)
    assert embedding_fits(embedding, truth == 4, THRESHOLDS)  # with 5 in its cluster: IoU 16 / 24
    assert not embedding_fits(embedding, truth == 5, THRESHOLDS)  # 8 / 24
    assert not embedding_fits(np.zeros_like(embedding), truth == 1, THRESHOLDS)


def test_main_reports_every_instance(tmp_path, capsys):
    generate_dataset(str(tmp_path), seed=3, train=0, val=3, test=0, clips=0, size=(64, 64))
    torch.manual_seed(0)
    model = os.path.join(tmp_path, "model.onnx")
    export_onnx(InstSegNet(output_stride=2), model, input_size=(64, 64), seed_threshold=0.2)
    main(["--data", str(tmp_path), "--model", model, "--images", "2"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])
    assert report["images"] == 2 and report["settings"]["seed_threshold"] == 0.2
    assert 0 < sum(report["missed"].values()) <= report["instances"]
    assert sum(report["instances by area"].values()) == report["instances"]
    assert sum(report["missed by area"].values()) == sum(report["missed"].values())
    assert all(report["missed by area"][band] <= n for band, n in report["instances by area"].items())
    assert sum(report["unmatched masks"].values()) <= report["masks"]
    assert sum(report["instances by contact"].values()) == report["instances"]
    assert sum(report["missed by contact"].values()) == sum(report["missed"].values())


def test_area_bands_split_coco_small_at_128_pixels():
    assert [area_band(a) for a in (1, 127, 128, 1023, 1024, 9216, 10 ** 6)] == [
        "under 128", "under 128", "128 to 1024", "128 to 1024", "1024 to 9216", "over 9216", "over 9216"]


def test_contact_bands_by_the_share_of_the_outline_one_neighbour_holds():
    truth = np.zeros((20, 20), np.int64)
    truth[0:12, 0:12] = 1
    truth[4:7, 4:7] = 2  # on 1, inside it
    truth[8:11, 10:13] = 3  # over 1's right edge: 1 holds half of its outline
    truth[16:19, 16:19] = 4  # alone
    truth[0:4, 16:20] = 5  # in the corner, away from the others
    assert [contact_band(truth, i) for i in range(1, 6)] == ["apart", "surrounded", "touching", "apart", "apart"]
