#!/usr/bin/env bash
# Installs a real Triton Inference Server for the tests, once per machine, outside the repository:
# the `tritonserver` 2.51 binary bundled in the `nvidia-pytriton` 0.7.0 wheel on PyPI, which has
# the python backend only (no onnxruntime backend): the test repositories serve instseg's ONNX
# files through `python -m instseg_train.triton --backend python` (a model.py running onnxruntime).
#
#   scripts/setup-triton.sh [PYTHON]    # PYTHON: the interpreter (3.8 to 3.13) the python backend
#                                       # embeds (default: .venv/bin/python of the repository)
#
# Cache: ${INSTSEG_TRITON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instseg/triton}; what is there
# already is kept. It holds the server and a venv of its own for the models (numpy < 2 and
# onnxruntime): the python backend stub of Triton 2.51 returns empty output tensors (0 bytes,
# "output tensor shape does not match size of output") when the embedded interpreter has
# numpy 2. Writes $CACHE/env.sh, to be sourced, which exports:
#   INSTSEG_TRITONSERVER      the tritonserver binary
#   INSTSEG_TRITON_BACKENDS   its --backend-directory
#   INSTSEG_TRITON_PYTHON     the models' venv's python
#   INSTSEG_TRITON_PATH       PATH for the server: that venv's bin first (the stub's embedded
#                             interpreter finds the venv's packages through the python3 on PATH)
#   INSTSEG_TRITON_LD_LIBRARY_PATH
#                             LD_LIBRARY_PATH for the server: the interpreter's LIBDIR first, so the
#                             stub loads that interpreter's libpython3.X, not another copy
# Prints the tritonserver path last.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
version=0.7.0
cache=${INSTSEG_TRITON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instseg/triton}
root=$cache/pytriton-$version/pytriton/tritonserver
server=$root/bin/tritonserver

[ -x "$python" ] || { echo "setup-triton: no Python at $python (run scripts/setup.sh first)" >&2; exit 1; }
py_version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=$cache/venv-$py_version
stub_version_file=$root/backends/python/.stub-python-version
if [ ! -x "$server" ]; then
  echo "setup-triton: installing tritonserver from nvidia-pytriton $version into $cache" >&2
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.install.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  "$python" -m pip download -q --no-deps --dest "$work" "nvidia-pytriton==$version"
  wheel=$(ls "$work"/nvidia_pytriton-*.whl)
  "$python" -m zipfile -e "$wheel" "$work/pytriton-$version"
  # unzipping drops the exec bits
  chmod +x "$work/pytriton-$version/pytriton/tritonserver/bin/"* \
    "$work/pytriton-$version"/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub
  rm -rf "$cache/pytriton-$version"
  mv "$work/pytriton-$version" "$cache/pytriton-$version"
  rm -rf "$work"
  trap - EXIT
fi

# The stub of the interpreter's version, at the depth where its RPATH finds the bundled libraries.
if [ "$(cat "$stub_version_file" 2>/dev/null)" != "$py_version" ]; then
  stub=$root/python_backend_stubs/$py_version/triton_python_backend_stub
  [ -f "$stub" ] || { echo "setup-triton: the wheel has no python backend stub for Python $py_version" >&2; exit 1; }
  cp "$stub" "$root/backends/python/triton_python_backend_stub"
  echo "$py_version" >"$stub_version_file"
fi

# The models' own venv: numpy 1.x (see above) and onnxruntime.
numpy_1_check='import numpy, onnxruntime; assert int(numpy.__version__.split(".")[0]) < 2'
if ! "$venv/bin/python" -c "$numpy_1_check" 2>/dev/null; then
  echo "setup-triton: creating $venv (numpy < 2, onnxruntime)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "numpy<2" onnxruntime
fi
libdir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')

env_file=$cache/env.sh
tmp_env=$(mktemp "$cache/.env.XXXXXX")
cat >"$tmp_env" <<EOF
# Written by scripts/setup-triton.sh: what a test needs to start tritonserver (python backend).
export INSTSEG_TRITONSERVER='$server'
export INSTSEG_TRITON_BACKENDS='$root/backends'
export INSTSEG_TRITON_PYTHON='$venv/bin/python'
export INSTSEG_TRITON_PATH='$venv/bin'":\$PATH"
export INSTSEG_TRITON_LD_LIBRARY_PATH='$libdir'"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
chmod 644 "$tmp_env"
mv "$tmp_env" "$env_file"
echo "$server"
