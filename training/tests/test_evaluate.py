"""The output-grid ceiling on mask AP (`evaluate --grid-bound`)."""

import json
import os

from instseg_train.coco import generate_dataset
from instseg_train.evaluate import grid_bound, main


def test_grid_bound_falls_with_the_stride(tmp_path, capsys):
    generate_dataset(str(tmp_path), seed=5, train=0, val=0, test=6, clips=0, size=(96, 96))
    annotations = os.path.join(tmp_path, "annotations", "instances_test.json")
    full, half, quarter = (grid_bound(annotations, stride) for stride in (1, 2, 4))
    assert full == (1.0, 1.0, 1.0)
    assert quarter[0] < half[0] < 1.0 and quarter[2] <= half[2]
    main(["--data", str(tmp_path), "--grid-bound", "2"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])
    assert report["AP"] == half[0]
