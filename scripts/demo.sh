#!/usr/bin/env bash
# Builds everything and runs the main job: renders a clip of moving shapes, runs it through
# instseg (the model embedded in the plugin) with the overlay, writes a video file and a PNG
# contact sheet, and prints every frame's instances (ids stay with the objects) and the fps.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --runtime
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. .venv/bin/activate
cargo build --quiet --release --lib --example demo
echo "== instseg on a clip of moving shapes, overlay drawn into the frames"
target/release/examples/demo "${1:-target/demo}"
echo "(GST_PLUGIN_PATH=$PWD/target/release gst-inspect-1.0 instseg lists the element's properties)"
