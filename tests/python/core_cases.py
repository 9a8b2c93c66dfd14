"""Exchange of post-processing cases with the Rust core through files.

`examples/segment_files.rs` reads what `write_case` writes and writes what `read_result` reads.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def write_case(directory: Path, embedding, classes, thresholds, seed_threshold=0.5, alpha=0.3,
               max_instances=32, min_area=4, overlaps="nearest", max_overlap=1.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(embedding, "<f4").tofile(directory / "embedding.f32")
    np.ascontiguousarray(classes, "<f4").tofile(directory / "classes.f32")
    case = {
        "embedding_shape": list(embedding.shape),
        "classes_shape": list(classes.shape),
        "thresholds": [float(t) for t in thresholds],
        "seed_threshold": float(seed_threshold),
        "alpha": float(alpha),
        "max_instances": int(max_instances),
        "min_area": int(min_area),
        "overlaps": overlaps,
        "max_overlap": float(max_overlap),
    }
    (directory / "case.json").write_text(json.dumps(case))
    return directory


def read_result(directory: Path, height: int, width: int):
    result = json.loads((directory / "result.json").read_text())
    labels = np.fromfile(directory / "labels.u8", np.uint8).reshape(height, width)
    return result["instances"], labels


def example_binary(name: str, profile: str = "debug") -> Path:
    """Builds a Rust example (cargo is a no-op when it is fresh) and returns its path."""
    args = ["cargo", "build", "--quiet", "--example", name]
    if profile == "release":
        args.append("--release")
    subprocess.run(args, cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / profile / "examples" / name


def segment_files_binary(profile: str = "debug") -> Path:
    return example_binary("segment_files", profile)


def run_rust(directories, repeat: int = 0, profile: str = "debug") -> list[dict]:
    """Runs the Rust core over the case directories; returns the timing lines when repeating."""
    args = [str(segment_files_binary(profile))]
    if repeat:
        args += ["--repeat", str(repeat)]
    done = subprocess.run(args + [str(d) for d in directories], check=True, capture_output=True,
                          text=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
