#!/usr/bin/env bash
# Call 2 (same warm machine as call 1): the depth decoder's MLPs in 1, 2
# and 4 pieces (--mlp-pieces) at every case, twice in turn; then the
# compiled peer at the three cases where csm's peak was above the peer's;
# then, with what is left, a sample of csm's host thread (perf or gdb).
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -d /tmp/g/cuda/mlx ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; exit 1; }
fi
xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; exit 1; }
grep -aq "(commit $(cat .gpuB/commit.txt))" /tmp/g/csm || { note "csm is not the build of $(cat .gpuB/commit.txt)"; exit 1; }
cp .gpuB/commit.txt $R/; note "assembled, csm of $(cat .gpuB/commit.txt)"
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul rate $(rate)"
ALL=(--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0)
for round in 1 2; do
  for n in 1 2 4; do
    bt p${n}r$round "${ALL[@]}" --mlp-pieces $n
  done
done
# run_gpu.sh's form: plain and compiled in one process, all cases (its
# compiled steps were slower than the compiled-only processes above).
timeout 120 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --decoder-rule hf \
  --modes plain,compiled --warmup 3 --steps 15 --peak-tflops $(rate) --json-dir $R --tag mixed "${ALL[@]}" > $R/csm_mixed.log 2>&1
note "mixed exit $?"; grep -h "Compiled on" $R/csm_mixed.log | sed 's/, [0-9.]* frames.s.*peak/ peak/'; pack
peer 8x130:1.0,1x130:1.0,8x130:0.0625 200
{ command -v perf; command -v gdb; } > $R/tools.txt 2>&1; cat $R/tools.txt
if [ $(left) -gt 120 ]; then
  timeout 100 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --decoder-rule hf \
    --modes compiled --warmup 3 --steps 150 --cases 8x130 --decoder-fraction 1.0 --json-dir $R --tag prof > $R/prof.log 2>&1 &
  for i in $(seq 60); do grep -q "step 5\|warm" $R/prof.log 2>/dev/null && break; sleep 1; done
  sleep 20
  pid=$(pgrep -f "csm bench-train" | head -1)
  if [ -n "$pid" ] && command -v perf > /dev/null; then
    timeout 20 perf record -F 4999 -g -t "$pid" -o /tmp/perf.data -- sleep 4 > $R/perf_record.log 2>&1
    perf report -i /tmp/perf.data --no-children --sort dso,symbol --stdio 2>/dev/null | head -150 > $R/perf_main_thread.txt
    note "perf: $(wc -l < $R/perf_main_thread.txt) lines"
  elif [ -n "$pid" ] && command -v gdb > /dev/null; then
    for i in $(seq 40); do timeout 5 gdb -p "$pid" -batch -ex "thread 1" -ex "bt 30" 2>/dev/null | grep -E "^#" ; echo ---; sleep 0.1; done > $R/gdb_samples.txt
    note "gdb: $(grep -c -- --- $R/gdb_samples.txt) samples"
  else
    note "no bench-train process or no profiler"
  fi
  wait; note "bench-train (profiled) done"; grep "csm bench-train: Csm1b" $R/prof.log
fi
pack
