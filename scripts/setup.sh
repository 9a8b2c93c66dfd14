#!/usr/bin/env bash
# Installs what instseg needs to build and test, skipping what is already there:
# Debian/Ubuntu packages (GStreamer with the decoders of common files, PyGObject), a Rust toolchain, and a local Python venv
# (.venv) with ONNX Runtime, the training package and the test tools. Safe to re-run.
# `--runtime` skips PyTorch (the training toolkit's 5 GB), for running the element only.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime_only=false
[ "${1:-}" = "--runtime" ] && runtime_only=true

packages=(
  build-essential pkg-config curl ca-certificates
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav
  python3 python3-venv python3-gi python3-gst-1.0
)
scripts/apt-install.sh "${packages[@]}"

# Rust >= 1.92 (Debian's own cargo is too old): rustup when cargo is missing or old.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
rust_minor=$(rustc --version 2>/dev/null | sed -E 's/^rustc 1\.([0-9]+).*/\1/' || true)
if [ -z "$rust_minor" ] || [ "$rust_minor" -lt 92 ]; then
  echo "setup: installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
    --component rustfmt,clippy
  . "$HOME/.cargo/env"
fi

# Python: prefer the interpreter on PATH; the venv gets ONNX Runtime's CPU build.
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
python_modules="numpy, onnx, onnxruntime, pytest, pycocotools, PIL, instseg_train"
$runtime_only || python_modules="$python_modules, torch"
if ! .venv/bin/python -c "import $python_modules" 2>/dev/null; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q numpy pytest onnx onnxruntime pycocotools pillow
  if $runtime_only; then
    .venv/bin/pip install -q -e training
  else
    # PyTorch for the training toolkit (no CPU-only wheel on the registries: about 5 GB).
    .venv/bin/pip install -q torch
    .venv/bin/pip install -q -e "training[train,test]"
  fi
fi
