#!/usr/bin/env bash
# Builds everything and runs the main job: a real GStreamer pipeline through instseg with the
# model embedded in the plugin, printing every frame's instances (ids stay with the objects).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. .venv/bin/activate
cargo build --quiet --release --lib --example print_instances
echo "== instseg on moving shapes (GST_PLUGIN_PATH=$PWD/target/release gst-inspect-1.0 instseg for the properties)"
target/release/examples/print_instances "$@"
