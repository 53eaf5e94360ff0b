#!/usr/bin/env bash
# Second exploration (after call1.sh): which kernels make 20 of a step's CUDA
# graphs non-updatable (cluster shapes), and whether full-f32 LoRA products
# (MLX_ENABLE_TF32=0, as PyTorch computes f32 matmuls by default) or bf16
# LoRA products avoid them; csm's 8 cases with and without, interleaved.
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
cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
cupti_h=$(find -L "$cuda_home" -name cupti.h 2>/dev/null | head -1)
cupti_so=$(find -L "$cuda_home" -name 'libcupti.so*' 2>/dev/null | head -1)
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I"$cuda_home/include" -I"$(dirname "$cupti_h")" "$cupti_so" \
  -Wl,-rpath,"$(dirname "$cupti_so")" -o /tmp/g/ktrace.so > $R/ktrace_build.log 2>&1
note "ktrace build exit $?"
# kt TAG SHAPE FRAC [csm args...]; environment from the caller.
kt() { local tag=$1 shape=$2 frac=$3; shift 3
  KTRACE_OUT=$R/kernels_$tag.tsv KTRACE_API_OUT=$R/api_$tag.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so \
    timeout $(( $(left) - 10 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train \
    --size csm1b --dtype bf16 --decoder-rule hf --modes compiled --warmup 2 --steps 3 --cases $shape --decoder-fraction $frac "$@" \
    > $R/ktrace_$tag.log 2>&1
  note "ktrace $tag exit $?"
  python3 bench/host_gaps.py --kernels $R/kernels_$tag.tsv --api $R/api_$tag.tsv > $R/host_gaps_$tag.txt 2>&1
  head -6 $R/host_gaps_$tag.txt; gzip -f $R/kernels_$tag.tsv $R/api_$tag.tsv; pack; }
kt 8x130_1 8x130 1.0
MLX_ENABLE_TF32=0 kt 8x130_1_notf32 8x130 1.0
kt 8x130_1_lorabf16 8x130 1.0 --lora-activation-dtype true
all="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
bt d1 $all
MLX_ENABLE_TF32=0 bt t1 $all
bt d2 $all
MLX_ENABLE_TF32=0 bt t2 $all
MLX_ENABLE_TF32=0 MLX_MAX_MB_PER_BUFFER=128 bt t128 $all
MLX_ENABLE_TF32=0 kt 16x250_1_notf32 16x250 1.0
pack; cat $R/progress.txt
