#!/usr/bin/env bash
# Builds what a GPU session's calls carry (run from the repo root, here):
#   .gpuA: the first part of the mlx-cuda-13 wheel's files (tar.xz, split
#          because one call carries at most 64 MiB) and peft's wheel;
#   .gpuB: the second part, the release csm (xz) and its commit; with
#          BASE_BIN=path, also that earlier csm binary, for call 2 to
#          compare with (csm_base.xz).
# Both are listed in .git/info/exclude; name them in `carry` (call 1:
# .gpuA, call 2: .gpuB). bench/results and docs must be moved out of the
# tree for the calls (about 42 MB): `bench/gpu_session/prepare.sh stash`
# and `... unstash`.
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  stash) mkdir -p /tmp/stash/bench && mv bench/results /tmp/stash/bench/ && mv docs /tmp/stash/; exit ;;
  unstash) mv /tmp/stash/docs . && mv /tmp/stash/bench/results bench/; exit ;;
esac
grep -qx '/.gpuA/' .git/info/exclude 2>/dev/null || printf '/.gpuA/\n/.gpuB/\n' >> .git/info/exclude
w=/tmp/gpu-wheels; mkdir -p $w .gpuA .gpuB
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 -d $w mlx-cuda-13==0.32.2 peft==0.21.2
if [ ! -f $w/cuda.tar.xz ]; then
  rm -rf $w/cuda && mkdir $w/cuda && python3 -m zipfile -e $w/mlx_cuda_13-0.32.2-*.whl $w/cuda
  rm -rf $w/cuda/*.dist-info
  tar -C $w/cuda -cf - . | xz -9 -T2 > $w/cuda.tar.xz.part && mv $w/cuda.tar.xz.part $w/cuda.tar.xz
fi
rm -f .gpuA/cuda.* .gpuB/cuda.*
split -b 44m $w/cuda.tar.xz .gpuA/cuda. && mv .gpuA/cuda.ab .gpuB/
cp $w/peft-0.21.2-*.whl .gpuA/
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}  # as scripts/setup.sh sets it
cargo build --release -p csm-cli
xz -T2 -c target/release/csm > .gpuB/csm.xz
target/release/csm --version | grep -o 'commit [0-9a-f]*' | cut -d' ' -f2 > .gpuB/commit.txt
rm -f .gpuB/csm_base.xz
if [ -n "${BASE_BIN:-}" ]; then
  xz -T2 -c "$BASE_BIN" > .gpuB/csm_base.xz
  echo "base: $("$BASE_BIN" --version)"
fi
du -sh .gpuA .gpuB; echo "csm of $(cat .gpuB/commit.txt)"
