#!/usr/bin/env bash
# Builds the newer GStreamer (>= 1.26, with the GstAnalytics library) that the `analytics`
# cargo feature's tests run against, once per machine, outside the repository: core, base and
# bad from the source tarball beside the repository (../shared/third-party/gstreamer-*.tar.xz),
# with only the parts the tests use (videotestsrc, videoconvertscale, app, rawparse, the
# analytics library, tensordecoders with ioutracker, analyticsoverlay).
#
#   scripts/build-gstreamer.sh [TARBALL]     # prints the env file's path last
#
# Cache: ${INSTSEG_GST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instseg/gstreamer-1.29}; a prefix
# built from the same tarball (and the same options) is kept and the build skipped. About 5 to 8
# minutes on 2 cores the first time. Needs meson and ninja (from PyPI, into a venv in the cache)
# and Debian's flex, bison, libpango1.0-dev, libcairo2-dev (installed with apt-get when missing),
# plus gobject-introspection and libgirepository1.0-dev for the GObject introspection data that
# the PyGObject reader uses (INSTSEG_GST_INTROSPECTION=disabled skips them).
# Writes $CACHE/env.sh, to be sourced, which exports PKG_CONFIG_PATH, LD_LIBRARY_PATH,
# GST_PLUGIN_SYSTEM_PATH (the prefix's plugins only, not the system's 1.22 ones), GST_REGISTRY
# (a registry file of its own), GST_PLUGIN_SCANNER, GI_TYPELIB_PATH and PATH (its
# gst-launch-1.0 / gst-inspect-1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=${1:-}
if [ -z "$tarball" ]; then
  tarball=$(ls ../shared/third-party/gstreamer-*.tar.xz 2>/dev/null | sort | tail -n 1 || true)
fi
[ -n "$tarball" ] && [ -f "$tarball" ] ||
  { echo "build-gstreamer: no GStreamer tarball at ../shared/third-party/gstreamer-*.tar.xz" >&2; exit 1; }
tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
name=$(basename "$tarball" .tar.xz)
introspection=${INSTSEG_GST_INTROSPECTION:-enabled}
cache=${INSTSEG_GST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instseg/gstreamer-1.29}
prefix=$cache/prefix
stamp=$prefix/.built-from
key="$name introspection=$introspection"
env_file=$cache/env.sh
mkdir -p "$cache"

# One build at a time per cache (two test runs starting together wait for each other).
exec 9>"$cache/.lock"
flock 9

if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  echo "build-gstreamer: building $name into $prefix" >&2
  start=$(date +%s)
  packages=(build-essential pkg-config flex bison libglib2.0-dev libpango1.0-dev libcairo2-dev)
  [ "$introspection" = enabled ] && packages+=(gobject-introspection libgirepository1.0-dev)
  scripts/apt-install.sh "${packages[@]}" >&2
  # meson >= 1.4 and ninja from PyPI, in a venv of the cache's own.
  if ! "$cache/venv/bin/meson" --version >/dev/null 2>&1 || ! "$cache/venv/bin/ninja" --version >/dev/null 2>&1; then
    rm -rf "$cache/venv"
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q --disable-pip-version-check meson ninja
  fi
  export PATH=$cache/venv/bin:$PATH

  rm -rf "$prefix" "$cache/src"
  mkdir -p "$cache/src"
  tar -xJf "$tarball" -C "$cache/src"
  src=$(ls -d "$cache/src"/*/ | head -n 1)
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PATH=$prefix/bin:$PATH
  common=(--prefix="$prefix" --libdir=lib --buildtype=release -Dauto_features=disabled
          -Dtests=disabled -Dexamples=disabled -Ddoc=disabled -Dnls=disabled
          -Dintrospection="$introspection")
  build() {  # subproject, extra options...
    local project=$1
    shift
    echo "build-gstreamer: $project" >&2
    meson setup "$cache/build/$project" "$src/$project" "${common[@]}" "$@" >"$cache/build-$project.log" 2>&1 ||
      { tail -n 40 "$cache/build-$project.log" >&2; exit 1; }
    ninja -C "$cache/build/$project" install >>"$cache/build-$project.log" 2>&1 ||
      { tail -n 40 "$cache/build-$project.log" >&2; exit 1; }
  }
  rm -rf "$cache/build"
  build gstreamer -Dtools=enabled -Dcheck=enabled
  build gst-plugins-base -Dtools=enabled -Dgl=disabled -Dorc=disabled -Dvideotestsrc=enabled \
    -Dvideoconvertscale=enabled -Dvideorate=enabled -Dapp=enabled -Drawparse=enabled \
    -Dplayback=enabled -Dtypefind=enabled -Doverlaycomposition=enabled
  build gst-plugins-bad -Dtools=disabled -Dorc=disabled -Danalyticsoverlay=enabled -Dtensordecoders=enabled
  rm -rf "$cache/build" "$cache/src"
  echo "$key" >"$stamp"
  echo "build-gstreamer: built in $(( $(date +%s) - start )) s" >&2
fi

tmp_env=$(mktemp "$cache/.env.XXXXXX")
cat >"$tmp_env" <<EOF
# Written by scripts/build-gstreamer.sh: GStreamer $name (with GstAnalytics) from $prefix,
# for the analytics feature's build and tests. Source it; the system's 1.22 plugins stay out.
export INSTSEG_GST_PREFIX='$prefix'
export PKG_CONFIG_PATH='$prefix/lib/pkgconfig'
export LD_LIBRARY_PATH='$prefix/lib'"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export GST_PLUGIN_SYSTEM_PATH='$prefix/lib/gstreamer-1.0'
export GST_PLUGIN_SYSTEM_PATH_1_0='$prefix/lib/gstreamer-1.0'
export GST_PLUGIN_SCANNER='$prefix/libexec/gstreamer-1.0/gst-plugin-scanner'
export GST_PLUGIN_SCANNER_1_0='$prefix/libexec/gstreamer-1.0/gst-plugin-scanner'
export GST_REGISTRY='$cache/registry.bin'
export GST_REGISTRY_1_0='$cache/registry.bin'
export GI_TYPELIB_PATH='$prefix/lib/girepository-1.0'
export PATH='$prefix/bin':"\$PATH"
EOF
chmod 644 "$tmp_env"
mv "$tmp_env" "$env_file"
echo "$env_file"
