#!/usr/bin/env bash
# Exploration (after call1.sh, same warm machine): where the GPU idles in a
# csm step and whether larger commits close it.
#  1. csm's 8 cases at MLX_MAX_MB_PER_BUFFER 32 (csm's default), 128, 1000
#     (MLX's H100 default), and 1000 with 20 ops a commit; 32 again at the end.
#  2. bench/ktrace with the host's CUDA calls and MLX's NVTX ranges at
#     8 x 130 and 16 x 250 on every frame (MB 32), and 8 x 130 at MB 1000.
#  3. The peer under torch.compile at 8 x 130 and 16 x 250 on every frame.
CALL=2; . bench/gpu_calls/common.sh
rate() { echo 672.3; }
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -d /tmp/g/cuda/mlx ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; exit 1; }
fi
xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; exit 1; }
note assembled
all="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
MLX_MAX_MB_PER_BUFFER=32 bt mb32-a $all
MLX_MAX_MB_PER_BUFFER=128 bt mb128 $all
MLX_MAX_MB_PER_BUFFER=1000 bt mb1000 $all
MLX_MAX_MB_PER_BUFFER=1000 MLX_MAX_OPS_PER_BUFFER=20 bt mb1000-ops20 $all
# The tracer, with the host's side.
cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
cupti_h=$(find -L "$cuda_home" -name cupti.h 2>/dev/null | head -1)
cupti_so=$(find -L "$cuda_home" -name 'libcupti.so*' 2>/dev/null | head -1)
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I"$cuda_home/include" -I"$(dirname "$cupti_h")" "$cupti_so" \
  -Wl,-rpath,"$(dirname "$cupti_so")" -o /tmp/g/ktrace.so > $R/ktrace_build.log 2>&1
note "ktrace build exit $? ($cupti_so)"
kt() { local tag=$1 shape=$2 frac=$3 mb=$4
  MLX_MAX_MB_PER_BUFFER=$mb KTRACE_OUT=$R/kernels_$tag.tsv KTRACE_API_OUT=$R/api_$tag.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so \
    NVTX_INJECTION64_PATH=$(readlink -f $cupti_so) timeout $(( $(left) - 10 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train \
    --size csm1b --dtype bf16 --decoder-rule hf --modes compiled --warmup 2 --steps 3 --cases $shape --decoder-fraction $frac \
    > $R/ktrace_$tag.log 2>&1
  note "ktrace $tag exit $?"
  python3 bench/host_gaps.py --kernels $R/kernels_$tag.tsv --api $R/api_$tag.tsv > $R/host_gaps_$tag.txt 2>&1
  head -40 $R/host_gaps_$tag.txt; gzip -f $R/kernels_$tag.tsv $R/api_$tag.tsv; pack; }
kt 8x130_1_mb32 8x130 1.0 32
kt 16x250_1_mb32 16x250 1.0 32
kt 8x130_1_mb1000 8x130 1.0 1000
MLX_MAX_MB_PER_BUFFER=32 bt mb32-b $all
peer 8x130:1.0,16x250:1.0 8 > /dev/null
pack; cat $R/progress.txt
