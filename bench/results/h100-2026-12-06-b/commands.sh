#!/usr/bin/env bash
# One GPU call: assemble libmlx (CUDA), then the measurements in order of
# value, each guarded by the time left; results re-packed into $OUT after
# every stage so a cut-off run still returns what it measured.
set -uo pipefail
T0=$(date +%s); LIMIT=${LIMIT:-330}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
R=/tmp/r; mkdir -p $R
pack() { tar -C /tmp -czf $OUT/r.tgz r 2>/dev/null; }
cd /tmp/g && cat cuda.part00 cuda.part01 > cuda.tar.xz && mkdir -p cuda && tar -C cuda -xJf cuda.tar.xz && xz -dc csm.xz > csm && chmod +x csm && cd - >/dev/null
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site
g() { scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm "$@"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } > $R/device.txt 2>&1
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tflops'])" $R/torch_matmul.json 2>/dev/null || echo 0)
echo "[$(left) s left] csm compiled, every case" >> $R/progress.txt
timeout 110 bash -c "$(declare -f g); g bench-train --size csm1b --dtype bf16 --cases 16x250,8x130 --decoder-fraction 0.0625,1.0 --decoder-rule hf --modes compiled --warmup 3 --steps 5 --matmul-probe 8192 --peak-tflops $rate --json-dir $R" > $R/csm.log 2>&1
pack
echo "[$(left) s left] csm packing" >> $R/progress.txt
timeout 80 bash -c "$(declare -f g); g bench-train --size csm1b --dtype bf16 --cases 16x0 --lengths 60,130,250 --layouts padded,packed --decoder-fraction 0.0625 --decoder-rule csm --modes compiled --warmup 3 --steps 5 --peak-tflops $rate --json-dir $R --tag packing" > $R/csm_packing.log 2>&1
pack
echo "[$(left) s left] peer eager" >> $R/progress.txt
timeout 60 python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 --cases 16x250:0.0625,8x130:1.0 --warmup 3 --steps 5 --json-dir $R --tag eager > $R/peer_eager.log 2>&1
pack
echo "[$(left) s left] peer compiled" >> $R/progress.txt
timeout $(( $(left) - 15 )) python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 --cases 16x250:0.0625,8x130:1.0 --warmup 3 --steps 5 --compile --json-dir $R --tag compiled > $R/peer_compiled.log 2>&1
echo "[$(left) s left] done" >> $R/progress.txt
pack
