#!/usr/bin/env bash
# Installs what building and testing need on Debian 12 (idempotent: packages
# already present are skipped). Sourced by scripts/demo.sh and scripts/test.sh.
#
#   scripts/setup.sh [--gui]
#
# System packages: cmake, libclang 19 (bindgen), Debian's OpenBLAS (replaces
# the reference BLAS of MLX's CPU wheel), espeak-ng (the demo dataset), sox and
# ffmpeg (reference audio for the format tests), pip.
# The MLX wheel itself is fetched by crates/mlx-sys/build.rs with pip and
# cached in ~/.cache/csm-mlx.
set -euo pipefail

# g++: mlx-c and the crate's own CPU primitives (crates/csm-core/cpp) are C++.
need_apt=(g++ cmake libclang-19-dev libopenblas0-pthread espeak-ng python3-pip pkg-config sox ffmpeg)
if [ "${1:-}" = "--gui" ]; then
  need_apt+=(libwebkit2gtk-4.1-dev librsvg2-dev libxdo-dev libgtk-3-dev libasound2-dev
             webkit2gtk-driver xvfb imagemagick xdotool)
fi

missing=()
for pkg in "${need_apt[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq -o DPkg::Lock::Timeout=900
  $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=900 "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust 1.85 or newer (https://rustup.rs), then rerun." >&2
  exit 1
fi
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}
