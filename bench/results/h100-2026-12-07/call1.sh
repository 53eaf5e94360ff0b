#!/usr/bin/env bash
# Call 1 of 3 (fresh machine): the first half of the CUDA libmlx travels in
# .gpuA; this call measures the card's matmul rate and the peer
# (transformers + peft), eager and under torch.compile, with a kernel trace
# of 2 steps of each case.
CALL=1; . bench/gpu_calls/common.sh
cp .gpuA/* /tmp/g/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/*.whl > $R/pip.log 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)';
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } > $R/device.txt 2>&1
cat $R/device.txt; note setup
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul $(rate) TFLOP/s"; pack
cases=16x250:0.0625,8x130:0.0625,8x130:1.0
timeout 120 python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 --cases $cases \
  --warmup 3 --steps 5 --json-dir $R --tag eager --profile-dir $R/prof > $R/peer_eager.log 2>&1
note "peer eager exit $?"; grep -E "^== case|step s median" $R/peer_eager.log; pack
timeout $(( $(left) - 15 )) python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 \
  --cases $cases,16x250:1.0 --warmup 3 --steps 5 --compile --deadline-epoch $(( T0 + LIMIT - 20 )) \
  --json-dir $R --tag compiled --profile-dir $R/prof > $R/peer_compiled.log 2>&1
note "peer compiled exit $?"; grep -E "^== case|step s median|first warm-up|profile" $R/peer_compiled.log
pack; ls -la $R $R/prof
