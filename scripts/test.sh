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

# The `analytics` feature (GstAnalytics, GStreamer >= 1.26) against a GStreamer built from the
# source tarball beside the clone, once per machine (scripts/build-gstreamer.sh), in a separate
# target directory; the default build above stays on the system's GStreamer 1.22.
gst_tarball=$(ls ../shared/third-party/gstreamer-*.tar.xz 2>/dev/null | sort | tail -n 1 || true)
if [ -n "$gst_tarball" ]; then
  (
    gst_env=$(scripts/build-gstreamer.sh "$gst_tarball")
    . "$gst_env"
    export CARGO_TARGET_DIR=target/analytics
    cargo clippy --all-targets --locked --features analytics -- -D warnings
    # The plugin library that the PyGObject reader of the tests loads.
    cargo build --locked --features analytics
    cargo test --locked --features analytics --test analytics
  )
else
  echo "analytics: no GStreamer tarball at ../shared/third-party/gstreamer-*.tar.xz, skipped"
fi
