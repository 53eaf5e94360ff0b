#!/usr/bin/env bash
# Call 2 of 3 (same warm machine): the rest of libmlx and csm travel in
# .gpuB. csm compiled at the four cases (pipelined, the default), then the
# levers: MLX_USE_CUDA_GRAPHS=0, a graph cache of 8192, the pipeline off; then one step's kernels
# under Nsight Compute (durations only) for the comparison with the peer's
# trace.
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate)"
all="--cases 16x250,8x130 --decoder-fraction 0.0625,1.0"
bt default $all --matmul-probe 8192
MLX_USE_CUDA_GRAPHS=0 bt no-cuda-graphs $all
# csm turns MLX's cache-thrashing check off (Mimi's conv plans); here it is
# on, to see whether the CUDA graph cache (400 graphs) thrashes: MLX then
# throws after 800 misses.
MLX_ENABLE_CACHE_THRASHING_CHECK=1 bt thrash-check --cases 16x250 --decoder-fraction 0.0625
MLX_CUDA_GRAPH_CACHE_SIZE=8192 bt graph-cache-8192 $all
bt pipeline-off --cases 16x250,8x130 --decoder-fraction 0.0625 --pipeline false
NCU=$(command -v ncu || ls -d /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && [ $(left) -gt 90 ]; then
  mkdir -p $R/ncu
  timeout $(( $(left) - 40 )) $NCU --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --page raw \
    --log-file $R/ncu/csm_16x250_0.0625.csv scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 \
    --decoder-rule hf --modes compiled --cases 16x250 --decoder-fraction 0.0625 --warmup 1 --steps 2 --json-dir $R/ncu --tag ncu > $R/ncu/ncu.log 2>&1
  note "ncu exit $?: $(wc -l < $R/ncu/csm_16x250_0.0625.csv) lines"; gzip -f $R/ncu/csm_16x250_0.0625.csv; pack
fi
[ $(left) -gt 60 ] && bt default-again --cases 16x250,8x130 --decoder-fraction 0.0625
du -sh /tmp/ptx 2>/dev/null | tee -a $R/progress.txt
(cd /tmp && tar -czf $OUT/ptx.tgz ptx) 2>/dev/null; ls -la $OUT
pack
