#!/usr/bin/env bash
# Second round, call 1 of 2 (fresh machine): as call1.sh, with the kernel
# cache of the first round; the peer at 16 x 250 only (the rest follow csm
# in call 2).
CALL=3; . bench/gpu_calls/common.sh
cp .gpuA/* /tmp/g/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/*.whl > $R/pip.log 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)';
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } > $R/device.txt 2>&1
cat $R/device.txt; note setup
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul $(rate) TFLOP/s"; pack
peer 16x250:1.0,16x250:0.0625 15
