#!/usr/bin/env bash
# Quick same-machine check (after call1.sh): csm (141c875, four levers on by
# default) at 8 x 130 and 16 x 250 on every frame, twice, then the peer under
# torch.compile at 8 x 130 on every frame, within LIMIT seconds.
CALL=2; . bench/gpu_calls/common.sh
# No matmul probe here: the rate of run_gpu.sh's machine (MFU only).
rate() { echo 672.3; }
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -d /tmp/g/cuda/mlx ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; exit 1; }
fi
xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; exit 1; }
note assembled
two="--cases 8x130,16x250 --decoder-fraction 1.0"
for i in 1 2; do [ $(left) -gt 60 ] && STEPS=10 bt q-$i $two; done
peer 8x130:1.0 8 > /dev/null
pack; cat $R/progress.txt
