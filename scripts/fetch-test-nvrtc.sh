#!/usr/bin/env bash
# Fetches NVRTC 13 and the CUDA headers it needs (PyPI nvidia-cuda-nvrtc,
# nvidia-cuda-runtime and nvidia-cuda-cccl, pinned) into
# target/test-data/nvrtc/ for the offline compile check of csm's CUDA
# kernels (no GPU needed; about 100 MB, so not part of scripts/test.sh):
#   scripts/fetch-test-nvrtc.sh
#   CSM_TEST_NVRTC=$PWD/target/test-data/nvrtc cargo test -p csm-core --lib \
#     kernels::cuda::tests::kernel_sources_compile_with_nvrtc -- --ignored
# Idempotent: does nothing when the folder is complete.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/target/test-data/nvrtc"
if [[ -f "$dest/.complete" ]]; then
    echo "$dest already present"
    exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The wheels are manylinux x86_64 (this machine's kind).
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
mkdir -p "$work/unpacked"
for wheel in "$work"/*.whl; do
    "$python" -m zipfile -e "$wheel" "$work/unpacked"
done
cu13="$work/unpacked/nvidia/cu13"
for need in lib/libnvrtc.so.13 include/cuda_bf16.h include/cccl/cuda/std/array; do
    if [[ ! -e "$cu13/$need" ]]; then
        echo "the wheels lack nvidia/cu13/$need: did the pinned versions change layout?" >&2
        exit 1
    fi
done
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
cp -r "$cu13/lib" "$cu13/include" "$dest.tmp/"
touch "$dest.tmp/.complete"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "wrote $dest"
