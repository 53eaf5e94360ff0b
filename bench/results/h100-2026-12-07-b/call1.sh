#!/usr/bin/env bash
# Call 1 of 2 (fresh machine): the first half of the CUDA libmlx, the
# kernel cache kept from 2026-12-07 (ptx.tgz) and peft travel in .gpuA.
# This call measures the card's matmul rate and the peer (transformers +
# peft) under torch.compile at every case, new cases first, with a kernel
# trace of 2 steps of each.
CALL=1; . bench/gpu_calls/common.sh
cp .gpuA/* /tmp/g/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/*.whl > $R/pip.log 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)';
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)";
  echo "nvcc: $(command -v nvcc) nsys: $(command -v nsys) ncu: $(command -v ncu)"; } > $R/device.txt 2>&1
cat $R/device.txt; note setup
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul $(rate) TFLOP/s"; pack
# On an H100 the peer's 8x130 and 16x250 cases were measured on
# 2026-12-07 (bench/results/h100-2026-12-07): the new cases first, then
# 16x250 at 1/16 again as the check between the two machines.
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100; then
  cases=1x130:0.0625,4x500:0.0625,1x130:1.0,4x500:1.0,16x250:0.0625,8x130:0.0625,16x250:1.0,8x130:1.0
else
  cases=16x250:0.0625,1x130:0.0625,4x500:0.0625,16x250:1.0,8x130:0.0625,8x130:1.0,1x130:1.0,4x500:1.0
fi
timeout $(( $(left) - 15 )) python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 \
  --cases $cases --warmup 3 --steps 15 --compile --deadline-epoch $(( T0 + LIMIT - 20 )) \
  --json-dir $R --tag compiled --profile-dir $R/prof > $R/peer_compiled.log 2>&1
note "peer compiled exit $?"; grep -E "^== case|step s median|first warm-up|skip" $R/peer_compiled.log
pack; ls -la $R $R/prof
