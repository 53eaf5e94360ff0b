#!/usr/bin/env bash
# Fourth round, call 2 of 2 (same warm machine): the final build (.gpuB)
# at 8 x 130 and 16 x 250 with MLX's CUDA commits at csm's default of 32
# MB (elements) a buffer and at 96, 256 and 1000 (MLX's own H100 default),
# in turn, twice: host launch time against peak memory.
CALL=8; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
two="--cases 8x130,16x250 --decoder-fraction 0.0625,1.0"
for i in 1 2; do
  for mb in 32 96 256 1000; do
    [ $(left) -gt 25 ] && MLX_MAX_MB_PER_BUFFER=$mb bt mb$mb-$i $two
  done
done
pack
