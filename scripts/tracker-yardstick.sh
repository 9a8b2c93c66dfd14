#!/usr/bin/env bash
# instseg's own tracking against GStreamer's ioutracker on the toolkit's 10 test clips (the
# table of README.md, "Tracking against upstream's ioutracker"). Builds the newer GStreamer
# once (scripts/build-gstreamer.sh), the `analytics_tracks` example with the `analytics`
# feature (target/analytics), renders the clips when missing, and prints the metrics as JSON.
#
#   scripts/tracker-yardstick.sh [DATA [MODEL]] [-- extra scripts/tracker_yardstick.py options]
#
# DATA defaults to target/yardstick-clips (rendered with --seed 0 --clips 10: the same clips as
# the model card's target/shapes-data), MODEL to models/default.onnx (the embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
data=target/yardstick-clips
model=models/default.onnx
if [ $# -gt 0 ] && [ "$1" != "--" ]; then data=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then model=$1; shift; fi
[ "${1:-}" = "--" ] && shift
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. .venv/bin/activate
env_file=$(scripts/build-gstreamer.sh)
. "$env_file"
export CARGO_TARGET_DIR=target/analytics
cargo build --locked --release --features analytics --example analytics_tracks
if [ ! -f "$data/annotations/instances_clips.json" ]; then
  python -m instseg_train.coco --out "$data" --seed 0 --train 0 --val 0 --test 0 --clips 10
fi
python scripts/tracker_yardstick.py --data "$data" --model "$model" \
  --example target/analytics/release/examples/analytics_tracks "$@" 2>/dev/null | sed -n '/^{/,$p'
