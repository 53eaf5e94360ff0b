#!/usr/bin/env bash
# Runs `csm gpu-check` on an NVIDIA machine with the mlx-cuda-13 wheel's
# libmlx in place of the CPU one the binary was linked against.
#
#   scripts/gpu-check.sh <mlx_cuda_13-0.32.2-*.whl | unpacked dir> [csm binary] [csm args...]
#
# The wheel's libmlx finds the NVIDIA libraries through its RPATH at
# $ORIGIN/../../nvidia/{cu13,cublas,cudnn,nccl,...}/lib, i.e. the layout of
# a Python site-packages with the nvidia-* wheels (PyTorch's, for one). Set
# NVIDIA_LIBS to that `nvidia` folder if `python3 -c 'import nvidia'` can't
# find it.
set -euo pipefail
src=${1:?usage: scripts/gpu-check.sh <wheel or unpacked dir> [csm binary] [args...]}
csm=${2:-target/release/csm}
shift $(( $# >= 2 ? 2 : 1 ))
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(gpu-check)

if [ -d "$src" ]; then
  dest=$src
else
  dest=${CSM_CUDA_DIR:-/tmp/mlx-cuda-13}
  if [ ! -f "$dest/mlx/lib/libmlx.so" ]; then
    mkdir -p "$dest"
    python3 -m zipfile -e "$src" "$dest"
  fi
fi
if [ ! -e "$dest/nvidia" ]; then
  nv=${NVIDIA_LIBS:-$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)}
  if [ -z "$nv" ] || [ ! -d "$nv" ]; then
    echo "error: NVIDIA libraries not found; install the nvidia-*-cu13 wheels or set NVIDIA_LIBS" >&2
    exit 1
  fi
  ln -s "$nv" "$dest/nvidia"
fi
echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
LD_LIBRARY_PATH="$dest/mlx/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$csm" "${args[@]}"
