#!/usr/bin/env python3
"""Many streams, local against a Triton server: 1, 2, 4 and 8 concurrent 640x480 streams
through the default model, each stream count once with the element running the model itself
(one shared ONNX Runtime session) and once against one local Triton server with dynamic
batching (python backend: onnxruntime on the CPU, as scripts/setup-triton.sh installs it).
Prints one table: aggregate fps, per-frame latency through instseg (p50, p99), the server's
mean batch size (inferences per execution, from its statistics) and the element's CPU time per
frame. Both sides share this machine's cores, so the table says where batching wins here, not
on a GPU host.

    scripts/setup-triton.sh && . ~/.cache/instseg/triton/env.sh
    python benches/streams.py [--frames 40] [--streams 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from instseg_train.triton import local_server, write_repository

REPO = Path(__file__).resolve().parent.parent


def stats(port: int, name: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}/stats") as answer:
        model = json.load(answer)["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per stream")
    parser.add_argument("--streams", default="1,2,4,8", help="stream counts")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-us", type=int, default=5000)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "bench_streams"], cwd=REPO,
                   check=True)
    binary = REPO / "target/release/examples/bench_streams"
    model = REPO / "models/default.onnx"

    def run(streams: int, server: str = "") -> dict:
        command = [str(binary), "--streams", str(streams), "--frames", str(args.frames),
                   "--model", str(model)]
        if server:
            command += ["--server", server]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        write_repository(model, repository, name="instseg", backend="python",
                         max_batch_size=args.max_batch_size, kind="cpu",
                         max_queue_delay_us=args.max_queue_delay_us)
        with local_server(repository) as server:
            url = f"http://127.0.0.1:{server.http_port}/v2/models/instseg"
            for streams in [int(n) for n in args.streams.split(",")]:
                local = run(streams)
                before = stats(server.http_port, "instseg")
                remote = run(streams, url)
                after = stats(server.http_port, "instseg")
                inferences, executions = after[0] - before[0], after[1] - before[1]
                remote["batch"] = inferences / max(executions, 1)
                rows += [local, remote]

    print(f"{'streams':>7} {'where':>6} {'fps':>7} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'CPU ms/frame':>13}")
    for row in rows:
        batch = f"{row['batch']:.2f}" if "batch" in row else "-"
        print(f"{row['streams']:>7} {row['mode']:>6} {row['fps']:>7.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {batch:>6} {row['cpu_ms_per_frame']:>13.1f}")


if __name__ == "__main__":
    main()
