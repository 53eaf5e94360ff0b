#!/usr/bin/env bash
# Call 1 of 2 (fresh machine): the first half of the CUDA libmlx, the kernel
# cache of 2026-12-07 (ptx.tgz) and peft travel in .gpuA. The card's matmul
# rate, then the peer under torch.compile at every case, in order of
# interest (the two cases on every frame that no earlier machine measured
# beside csm first).
CALL=1; . bench/gpu_calls/common.sh
cp .gpuA/* /tmp/g/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/*.whl > $R/pip.log 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)';
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } > $R/device.txt 2>&1
cat $R/device.txt; note setup
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul $(rate) TFLOP/s"; pack
peer 16x250:1.0,8x130:1.0,16x250:0.0625,8x130:0.0625,4x500:0.0625,4x500:1.0,1x130:0.0625,1x130:1.0 15
ls -la $R
