#!/usr/bin/env bash
# Fourth round, call 1 of 2 (fresh machine): libmlx's first half and the
# kernel cache in .gpuA; the card's matmul rate.
CALL=7; . bench/gpu_calls/common.sh
cp .gpuA/cuda.aa .gpuA/ptx.tgz /tmp/g/
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)'; } > $R/device.txt 2>&1
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul $(rate) TFLOP/s"; pack
