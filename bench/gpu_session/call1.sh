#!/usr/bin/env bash
# Call 1 of 3 (fresh machine): the first part of the CUDA libmlx and peft
# travel in .gpuA; no kernel cache this time (lost with the old checkout).
CALL=1; . bench/gpu_session/common.sh
cp .gpuA/* /tmp/g/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/*.whl > $R/pip.log 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)';
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)";
  command -v cuda-gdb; } > $R/device.txt 2>&1
cat $R/device.txt; note setup; pack
