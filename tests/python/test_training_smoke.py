"""Training smoke test: tiny procedural data, a few steps, export, then the exported model
loads in the real plugin and runs a pipeline."""

from __future__ import annotations

import subprocess

import pytest

from core_cases import example_binary

torch = pytest.importorskip("torch")


def test_train_export_and_run_in_the_plugin(tmp_path):
    from instseg_train.train import main

    model = tmp_path / "smoke.onnx"
    main(["--data", str(tmp_path / "data"), "--generate", "8", "--out", str(model), "--steps", "3",
          "--batch", "4", "--size", "64", "64"])
    assert model.stat().st_size < 4 * 1024 * 1024
    done = subprocess.run([str(example_binary("run_pipeline")), "--provider", "cpu", "--model",
                           str(model), "--frames", "5", "--size", "160x120"],
                          check=True, capture_output=True, text=True)
    assert "5 frames" in done.stdout and "on cpu" in done.stdout, done.stdout
