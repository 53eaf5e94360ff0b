#!/usr/bin/env bash
# Call 3 of 3 (same warm machine, if it is still held): no CUDA graphs with
# commits of 20 ops, then the default and MLX_USE_CUDA_GRAPHS=0 in turn,
# twice, at the four cases, for the noise between runs on one card.
CALL=3; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
all="--cases 16x250,8x130 --decoder-fraction 0.0625,1.0"
# Without graphs MLX commits every MLX_MAX_OPS_PER_BUFFER ops (100 on an
# H100) and frees a commit's temporaries when it completes: fewer ops a
# commit, less memory held.
MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=20 bt no-cuda-graphs-ops20 $all
for i in 2 3; do
  [ $(left) -gt 60 ] && bt default-$i $all
  [ $(left) -gt 60 ] && MLX_USE_CUDA_GRAPHS=0 bt no-cuda-graphs-$i $all
done
pack
