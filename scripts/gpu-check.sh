#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: installs onnxruntime-gpu into .venv-gpu, builds the plugin,
# runs a pipeline with execution-provider=cuda and prints the active provider and the mean
# time per stage. Usage: scripts/gpu-check.sh [MODEL] [WIDTHxHEIGHT] [FRAMES]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-}
size=${2:-1280x720}
frames=${3:-300}
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q onnxruntime-gpu
fi
. .venv-gpu/bin/activate
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
cargo build --quiet --release --example run_pipeline
target/release/examples/run_pipeline --provider cuda --size "$size" --frames "$frames" ${model:+--model "$model"}
