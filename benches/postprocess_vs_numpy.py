#!/usr/bin/env python3
"""Post-processing speed: the Rust core against the NumPy reference on the same tensors.

For each grid size and embedding dimension (T = 4, C = 3, about 20 instances) it times the
NumPy reference (`instseg_train.postprocess`) and the Rust core (`examples/segment_files`,
release build, one thread), and the floor: reading the embedding once per selected seed,
K x h x w x D x 4 bytes, at the read bandwidth measured on this machine.

Usage: .venv/bin/python benches/postprocess_vs_numpy.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from core_cases import run_rust, segment_files_binary, write_case  # noqa: E402
from instseg_train.postprocess import postprocess  # noqa: E402
from instseg_train.synthetic_outputs import clustered_outputs  # noqa: E402

import subprocess  # noqa: E402
import json  # noqa: E402

THRESHOLDS = [0.25, 0.5, 0.75, 0.9]


def time_numpy(emb, cls, repeat):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        instances, _ = postprocess(emb, cls, THRESHOLDS)
        best = min(best, time.perf_counter() - start)
    return best * 1e3, len(instances)


def main():
    quick = "--quick" in sys.argv
    sides = [64, 128] if quick else [64, 128, 256]
    dims = [32] if quick else [8, 32, 64]
    binary = segment_files_binary("release")
    bandwidth = json.loads(subprocess.run([str(binary), "--bandwidth"], check=True,
                                          capture_output=True, text=True).stdout)["read_gb_per_s"]
    print(f"read bandwidth, one thread: {bandwidth:.1f} GB/s")
    header = (f"{'grid':>9} {'D':>3} {'K':>3} {'numpy ms':>9} {'rust ms':>8} {'speed-up':>8} "
              f"{'floor ms':>8} {'rust/floor':>10}")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            for dim in dims:
                rng = np.random.default_rng(side * 100 + dim)
                emb, cls, _ = clustered_outputs(rng, dim, 4, 3, side, side, 20)
                case = write_case(Path(tmp) / f"{side}-{dim}", emb, cls, THRESHOLDS)
                numpy_ms, found = time_numpy(emb, cls, 3 if side < 256 else 1)
                rust = run_rust([case], repeat=50 if side < 256 else 10, profile="release")[0]
                assert rust["instances"] == found, (rust, found)
                seeds = rust["grid_passes"]
                floor_ms = seeds * side * side * dim * 4 / (bandwidth * 1e9) * 1e3
                print(f"{side:>4}x{side:<4} {dim:>3} {seeds:>3} {numpy_ms:9.2f} "
                      f"{rust['best_ms']:8.3f} {numpy_ms / rust['best_ms']:7.1f}x "
                      f"{floor_ms:8.3f} {rust['best_ms'] / floor_ms:9.2f}x")


if __name__ == "__main__":
    main()
