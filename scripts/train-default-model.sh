#!/usr/bin/env bash
# Reproduces models/default.onnx, the plugin's embedded default model (see models/README.md):
# renders the procedural shapes dataset and training clips (seed 0), trains the network (seed 0), copies the ONNX
# file to models/, and scores it through the real plugin on the held-out test split and clips.
# Rendering and training take 79 to 88 minutes on a 2-core Intel Xeon with AMX, depending on the VM's speed that
# day (bfloat16 needs AVX-512 BF16 or AMX to be fast: elsewhere --precision auto trains in float32, about 130 minutes
# on a 2-core AVX2-only AMD EPYC). Rebuild the plugin afterwards to embed it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. .venv/bin/activate
data=${1:-target/shapes-data}
python -m instseg_train.coco --out "$data" --seed 0 --train 0 --val 200 --test 200 --clips 10
time python -m instseg_train.train --data "$data" --generate 4000 --generate-clips 200 --out "$data/default.onnx" \
    --steps 15000 --batch 8 --pairs 2 --seed 0 --workers 1 --device cpu --seed-threshold 0.8 --alpha 0 --overlaps confident \
    --max-overlap 0.5 --track-seed-threshold 0.3 \
    --output-stride 1 --lr 4e-3 --precision auto --cache --min-area 16
cp "$data/default.onnx" models/default.onnx
cargo build --quiet --release --lib
python -m instseg_train.evaluate --data "$data" --model models/default.onnx --plugin-path target/release
