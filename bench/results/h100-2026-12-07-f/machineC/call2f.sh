#!/usr/bin/env bash
# Final call 2 of 3 (after call1.sh): csm with the LoRA kernel (cuda_lora,
# on by default in this build) against it switched off (the previous
# default) and against it with full-f32 matmuls (MLX_ENABLE_TF32=0), csm's
# 8 cases interleaved; a kernel trace of 8 x 130 on every frame; then the
# peer under torch.compile, as many cases as the call's time allows.
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
timeout 120 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm gpu-check --seconds 0.3 > $R/gpu_check.log 2>&1
note "gpu-check exit $?"; grep -E "lora|FAIL|fail|error" $R/gpu_check.log | head -30; pack
all="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
bt k1 $all
bt o1 $all --cuda-lora false
MLX_ENABLE_TF32=0 bt kt1 $all
bt k2 $all
bt o2 $all --cuda-lora false
cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
cupti_h=$(find -L "$cuda_home" -name cupti.h 2>/dev/null | head -1)
cupti_so=$(find -L "$cuda_home" -name 'libcupti.so*' 2>/dev/null | head -1)
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I"$cuda_home/include" -I"$(dirname "$cupti_h")" "$cupti_so" \
  -Wl,-rpath,"$(dirname "$cupti_so")" -o /tmp/g/ktrace.so > $R/ktrace_build.log 2>&1
KTRACE_OUT=$R/kernels_8x130_1.tsv KTRACE_API_OUT=$R/api_8x130_1.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so \
  timeout 60 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --decoder-rule hf \
  --modes compiled --warmup 2 --steps 3 --cases 8x130 --decoder-fraction 1.0 > $R/ktrace_8x130_1.log 2>&1
note "ktrace exit $?"
python3 bench/host_gaps.py --kernels $R/kernels_8x130_1.tsv --api $R/api_8x130_1.tsv > $R/host_gaps_8x130_1.txt 2>&1
head -8 $R/host_gaps_8x130_1.txt; gzip -f $R/kernels_8x130_1.tsv $R/api_8x130_1.tsv; pack
# The peer under torch.compile, cases in order of interest, until the call's end.
peer 8x130:1.0,16x250:1.0,8x130:0.0625,16x250:0.0625,4x500:1.0,4x500:0.0625,1x130:1.0,1x130:0.0625 10 > /dev/null
grep -E "^== case|step s median" $R/peer_compiled.log | tail -16; pack; cat $R/progress.txt
