#!/usr/bin/env bash
# Frames per second of `instseg` (videotestsrc ! instseg ! fakesink sync=false) against the same
# job in Python (benches/python_baseline.py), same model and input, plus the element's stage
# breakdown and peak resident memory. Usage: benches/pipeline_vs_python.sh [MODEL] [FRAMES]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$PWD/models/default.onnx}
frames=${2:-200}
. .venv/bin/activate
if [ ! -x .venv-bench/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv-bench
  .venv-bench/bin/pip install -q numpy onnxruntime opencv-python-headless
fi
cargo build --quiet --release --example run_pipeline
printf '%-9s %-5s %9s %9s %7s %8s %8s %8s %8s %9s %8s\n' size format "fps" "python" ratio \
  "pre ms" "infer ms" "post ms" "meta ms" "overhead" "peak MB"
for size in 640x480 1280x720; do
  for format in RGB NV12; do
    out=$(/usr/bin/time -v target/release/examples/run_pipeline --provider cpu --model "$model" \
      --size "$size" --format "$format" --frames "$frames" 2>/tmp/instseg-time.txt)
    fps=$(sed -nE 's/.*= ([0-9.]+) fps.*/\1/p' <<<"$out")
    field() { sed -nE "s/.*$1=\\(double\\)([0-9.e+-]+).*/\\1/p" <<<"$out"; }
    pre=$(field preprocess-ms); infer=$(field inference-ms); post=$(field postprocess-ms); meta=$(field metadata-ms)
    peak=$(awk '/Maximum resident set size/ {printf "%.0f", $6 / 1024}' /tmp/instseg-time.txt)
    python=$(.venv-bench/bin/python benches/python_baseline.py "$model" "$size" "$format" "$frames")
    awk -v s="$size" -v f="$format" -v fps="$fps" -v py="$python" -v pre="$pre" -v inf="$infer" \
      -v post="$post" -v meta="$meta" -v peak="$peak" 'BEGIN {
        printf "%-9s %-5s %9.1f %9.1f %6.1fx %8.3f %8.3f %8.3f %8.3f %8.0f%% %8s\n",
          s, f, fps, py, fps / py, pre, inf, post, meta, 100 * (pre + post + meta) / inf, peak }'
  done
done
