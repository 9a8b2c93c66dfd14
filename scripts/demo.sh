#!/usr/bin/env bash
# Builds everything and runs the main job: the segmentation core tracking moving objects.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo run --quiet --release --example track_synthetic
