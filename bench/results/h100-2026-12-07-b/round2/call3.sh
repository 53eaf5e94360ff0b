#!/usr/bin/env bash
# Second round, call 1 of 2 (fresh machine): the first half of libmlx and the
# first round's kernel cache travel in .gpuA; nothing is measured (the
# device time left after failed starts covered csm only). The matmul rate
# for MFU is the first round's (683.0 TFLOP/s, PyTorch, another H100).
CALL=3; . bench/gpu_calls/common.sh
cp .gpuA/* /tmp/g/
echo '{"tflops": 683.0115244501825, "source": "first round, bench/results/h100-2026-12-07-b/torch_matmul.json"}' > $R/torch_matmul.json
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)'; } > $R/device.txt 2>&1
cat $R/device.txt; note setup; pack
