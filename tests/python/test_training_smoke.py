"""Training smoke test: tiny procedural data, a few steps, export, then the exported model
loads in the real plugin and runs a pipeline."""

from __future__ import annotations

import json
import subprocess

import pytest

from core_cases import example_binary

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("options, stride, recommended", [
    ([], 4, {}),
    (["--output-stride", "2", "--workers", "1", "--device", "auto", "--generate-clips", "1", "--pairs", "1",
      "--alpha", "0", "--track-seed-threshold", "0.3", "--overlaps", "confident", "--max-overlap", "0.5"], 2,
     {"min-area": "16", "alpha": "0", "track-seed-threshold": "0.3", "overlaps": "confident",
      "max-overlap": "0.5"}),
])
def test_train_export_and_run_in_the_plugin(tmp_path, options, stride, recommended):
    import onnx

    from instseg_train.train import main

    model = tmp_path / "smoke.onnx"
    main(["--data", str(tmp_path / "data"), "--generate", "8", "--out", str(model), "--steps", "3",
          "--batch", "4", "--size", "64", "64", *options])
    assert model.stat().st_size < 4 * 1024 * 1024
    proto = onnx.load(str(model))
    outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outputs["embedding"] == ["N", 8, 64 // stride, 64 // stride]
    metadata = {p.key: p.value for p in proto.metadata_props}
    for key in ("min-area", "alpha", "track-seed-threshold", "overlaps", "max-overlap"):
        assert metadata.get(f"instseg.{key}") == recommended.get(key), key
    done = subprocess.run([str(example_binary("run_pipeline")), "--provider", "cpu", "--model",
                           str(model), "--frames", "5", "--size", "160x120"],
                          check=True, capture_output=True, text=True)
    assert "5 frames" in done.stdout and "on cpu" in done.stdout, done.stdout


def test_evaluation_scores_the_plugin_on_images_and_clips(tmp_path, monkeypatch, capsys):
    from instseg_train.coco import generate_dataset
    from instseg_train.evaluate import main as evaluate
    from instseg_train.train import main as train

    from core_cases import REPO

    subprocess.run(["cargo", "build", "--quiet", "--lib"], cwd=REPO, check=True)
    monkeypatch.setenv("GST_REGISTRY", str(tmp_path / "registry.bin"))
    data = tmp_path / "data"
    generate_dataset(str(data), seed=3, train=8, val=0, test=3, clips=1, size=(64, 64), frames=4)
    model = tmp_path / "smoke.onnx"
    train(["--data", str(data), "--out", str(model), "--steps", "2", "--batch", "4", "--size", "64", "64"])
    capsys.readouterr()
    evaluate(["--data", str(data), "--model", str(model), "--plugin-path", str(REPO / "target" / "debug")])
    output = capsys.readouterr().out
    report = json.loads(output[output.rindex("{\n"):])
    for key in ("AP", "AP50", "AP75"):
        assert -1.0 <= report[key] <= 1.0
    assert report["id-switches-per-100 (tracking)"] >= 0.0
    assert 0.0 <= report["tracks-keeping-one-id (no-tracking)"] <= 1.0
    assert -1.0 <= report["clip-AP (tracking)"] <= 1.0
