#!/usr/bin/env bash
# One GPU call (session of 2026-12-06 late): assemble once, then
#  1. issue 21: bench/voice/run.sh run (or continue) under timeout -s INT;
#  2. issue 19: csm compiled + peer eager/compiled, each skipped if done.
# Results (small files) re-packed into $OUT/r.tgz every 20 s and at the end.
set -uo pipefail
T0=$(date +%s); LIMIT=${LIMIT:-580}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
R=/tmp/r; mkdir -p $R
pack() { (cd /tmp && find r -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.txt' -o -name '*.md' \) -size -20M | tar -czf $OUT/r.tgz -T -) 2>/dev/null; }
note() { echo "[$(( $(date +%s) - T0 )) s, $(left) left] $*" >> $R/progress.txt; }
if [ ! -x /tmp/g/csm ]; then
  cd /tmp/g && cat p.aa p.ab p.ac p.ad | tar -x && mkdir -p cuda && tar -C cuda -xJf stage/cuda.tar.xz && rm stage/cuda.tar.xz \
    && xz -d stage/pack/tokenizer.json.xz && xz -dc stage/csm.xz > csm && chmod +x csm && cd - >/dev/null
  printf '#!/usr/bin/env bash\nexec %s/scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm "$@"\n' "$PWD" > /tmp/g/csmw && chmod +x /tmp/g/csmw
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/stage/whl/*.whl > $R/pip.log 2>&1
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E 'Model name|^CPU\(s\)';
    PYTHONPATH=/tmp/site python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } > $R/device.txt 2>&1
fi
note "setup done"
( while sleep 20; do pack; done ) & PK=$!
export PYTHONPATH=/tmp/site
V=$R/voice
if [ ! -f $V/voice-bench.json ]; then
  mode=run; [ -f $V/voice/voice.json ] && mode=continue
  note "voice $mode"
  timeout -s INT -k 15 $(( $(left) - 25 )) bash bench/voice/run.sh $mode /tmp/g/stage/pack $V /tmp/g/csmw 500 8 > $R/voice-$mode-$T0.log 2>&1
  note "voice $mode exit $?"
fi
g() { scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm "$@"; }
B=$R/train
mkdir -p $B
if [ -f $V/voice-bench.json ] && [ $(left) -gt 60 ]; then
  if [ ! -f $B/torch_matmul.json ]; then
    python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $B/torch_matmul.json > $B/torch_matmul.log 2>&1
  fi
  rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tflops'])" $B/torch_matmul.json 2>/dev/null || echo 0)
  if [ ! -f $B/csm.done ] && [ $(left) -gt 150 ]; then
    note "csm compiled 16x250,8x130 x 1/16,1"
    timeout $(( $(left) - 20 )) bash -c "$(declare -f g); g bench-train --size csm1b --dtype bf16 --cases 16x250,8x130 --decoder-fraction 0.0625,1.0 --decoder-rule hf --modes compiled --warmup 3 --steps 5 --matmul-probe 8192 --peak-tflops $rate --json-dir $B" > $B/csm.log 2>&1 && touch $B/csm.done
    note "csm exit $?"; pack
  fi
  if [ ! -f $B/peer_eager.done ] && [ $(left) -gt 60 ]; then
    note "peer eager"
    timeout $(( $(left) - 15 )) python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 --cases 16x250:0.0625,8x130:1.0 --warmup 3 --steps 5 --json-dir $B --tag eager > $B/peer_eager.log 2>&1 && touch $B/peer_eager.done
    note "peer eager exit $?"; pack
  fi
  for c in 16x250:0.0625 8x130:1.0 8x130:0.0625; do
    f=$B/peer_compiled_${c/:/_}.done
    if [ ! -f $f ] && [ $(left) -gt 130 ]; then
      note "peer compiled $c"
      timeout $(( $(left) - 15 )) python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 --cases $c --warmup 3 --steps 5 --compile --json-dir $B --tag compiled >> $B/peer_compiled.log 2>&1 && touch $f
      note "peer compiled $c exit $?"; pack
    fi
  done
fi
kill $PK 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader >> $R/progress.txt 2>&1
note end
pack
