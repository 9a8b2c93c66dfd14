#!/usr/bin/env bash
# Builds everything and runs every test: formatting, lints, the Rust tests (unit,
# integration, doc) and the Python tests (NumPy reference equality, training package).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A real Triton Inference Server for the remote-inference tests, installed once per machine
# outside the repository; its env file tells the tests where it is (INSTSEG_TRITONSERVER...).
scripts/setup-triton.sh >/dev/null
. "${INSTSEG_TRITON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instseg/triton}/env.sh"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# The element finds ONNX Runtime in the active virtualenv (docs/element.md).
. .venv/bin/activate

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --locked --all-targets
cargo test --locked
# The Rust example an application would start from (the Python one and the demo run in pytest).
target/debug/examples/print_instances | tail -n 3
python -m pytest -q tests/python training/tests
