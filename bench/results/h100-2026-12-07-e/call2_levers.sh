#!/usr/bin/env bash
# Machine 1's call 2 (after call1.sh): the second half of libmlx and csm
# (.gpuB, the build of e8dbd80). csm gpu-check, then the four levers
# (aligned heads, the SwiGLU-gradient, RoPE and cross-entropy kernels; off
# by default in that build) all on against the default at every case,
# three times each in turn; then each lever alone and each left out.
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -d /tmp/g/cuda/mlx ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; exit 1; }
fi
xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; exit 1; }
[ -f $R/torch_matmul.json ] || python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "assembled, matmul $(rate)"
timeout 150 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm gpu-check --seconds 0.3 > $R/gpu_check.log 2>&1
rc=$?; note "gpu-check exit $rc"; tail -25 $R/gpu_check.log; pack
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
A="--aligned-heads true"; S="--cuda-swiglu-grad true"; P="--cuda-rope true"; C="--cross-entropy cuda"
for i in 1 2 3; do
  [ $(left) -gt 60 ] && bt new-$i $all8 $A $S $P $C
  [ $(left) -gt 60 ] && bt old-$i $all8
done
[ $(left) -gt 40 ] && bt only-aligned $all8 $A
[ $(left) -gt 40 ] && bt only-swiglu $all8 $S
[ $(left) -gt 40 ] && bt only-rope $all8 $P
[ $(left) -gt 40 ] && bt only-ce $all8 $C
[ $(left) -gt 40 ] && bt no-aligned $all8 $S $P $C
[ $(left) -gt 40 ] && bt no-swiglu $all8 $A $P $C
[ $(left) -gt 40 ] && bt no-rope $all8 $A $S $C
[ $(left) -gt 40 ] && bt no-ce $all8 $A $S $P
pack; tail -20 $R/progress.txt
