#!/usr/bin/env bash
# Call 2 of 2 (after call1.sh), session of 2026-12-07 evening: csm's two
# unmeasured levers (--eval-in-pieces; --cuda-lora true, the kernel's
# vector form) and both together, against the default, csm's 8 cases
# interleaved twice; the kernel with 128 MB a commit; kernel traces of
# 8 x 130 on every frame with each lever; then the compiled peer.
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
for i in 1 2; do
  bt d$i $all
  bt p$i $all --eval-in-pieces
  bt k$i $all --cuda-lora true
  bt kp$i $all --cuda-lora true --eval-in-pieces
done
MLX_MAX_MB_PER_BUFFER=128 bt k128 $all --cuda-lora true
cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
cupti_h=$(find -L "$cuda_home" -name cupti.h 2>/dev/null | head -1)
cupti_so=$(find -L "$cuda_home" -name 'libcupti.so*' 2>/dev/null | head -1)
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I"$cuda_home/include" -I"$(dirname "$cupti_h")" "$cupti_so" \
  -Wl,-rpath,"$(dirname "$cupti_so")" -o /tmp/g/ktrace.so > $R/ktrace_build.log 2>&1
for lever in pieces:--eval-in-pieces kernel:--cuda-lora=true; do
  name=${lever%%:*}; flag=${lever#*:}
  KTRACE_OUT=$R/kernels_8x130_1_$name.tsv KTRACE_API_OUT=$R/api_8x130_1_$name.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so \
    timeout 60 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --decoder-rule hf \
    --modes compiled --warmup 2 --steps 3 --cases 8x130 --decoder-fraction 1.0 $flag > $R/ktrace_8x130_1_$name.log 2>&1
  note "ktrace $name exit $?"
  python3 bench/host_gaps.py --kernels $R/kernels_8x130_1_$name.tsv --api $R/api_8x130_1_$name.tsv > $R/host_gaps_8x130_1_$name.txt 2>&1
  head -3 $R/host_gaps_8x130_1_$name.txt; gzip -f $R/kernels_8x130_1_$name.tsv $R/api_8x130_1_$name.tsv; pack
done
peer 8x130:1.0,16x250:1.0,4x500:1.0,8x130:0.0625,16x250:0.0625,4x500:0.0625,1x130:1.0,1x130:0.0625 10 > /dev/null
grep -E "^== case|step s median" $R/peer_compiled.log | tail -16; pack; cat $R/progress.txt
