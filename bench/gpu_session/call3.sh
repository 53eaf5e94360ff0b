#!/usr/bin/env bash
# Call 3 (same warm machine; LIMIT=seconds this call may take): waits for
# bench/run_gpu.sh, brings its output back (full.tgz); then, with what is
# left, in this order: 3 pieces with csm's malloc settings and with glibc's
# (if call 2 was the short form), a plain-then-compiled process with each,
# and samples of csm's main thread (cuda-gdb; libmlx keeps its .symtab)
# during steady compiled steps at 8 x 130 on every frame.
CALL=${CALL:-3}; . bench/gpu_session/common.sh
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 25 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo "ended $(cat /tmp/full.rc)" || echo "still running"): $(grep '^== \[' /tmp/full.log | tail -1)"
cp /tmp/full.log /tmp/full/run_gpu.log 2>/dev/null
rm -f /tmp/full/ktrace.so
(cd /tmp && tar -czf $OUT/full.tgz full); pack
sed -n '/^== \[.*table/,$p' /tmp/full.log | head -40
[ -f /tmp/full.rc ] || exit 0
ALL=(--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0)
if [ ! -f $R/choice.txt ]; then
  for round in 1 2; do
    [ $(left) -gt 60 ] || break
    bt p3m32r$round "${ALL[@]}" --mlp-pieces 3
    [ $(left) -gt 40 ] || break
    ( export GLIBC_TUNABLES=glibc.malloc.perturb=0; bt p3m32gr$round "${ALL[@]}" --mlp-pieces 3 )
  done
  python3 bench/gpu_session/choose.py $R > $R/choice.txt 2>&1; cat $R/choice.txt; pack
fi
# The plain steps' kernels are compiled on the first of these (no cache).
for g in 0 1; do
  [ $(left) -gt 60 ] || break
  ( [ $g = 1 ] && export GLIBC_TUNABLES=glibc.malloc.perturb=0
    timeout $(( $(left) - 10 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --decoder-rule hf \
      --modes plain,compiled --warmup 3 --steps 15 --mlp-pieces 3 --json-dir $R --tag mixedg$g "${ALL[@]}" > $R/csm_mixedg$g.log 2>&1 )
  note "mixed, glibc defaults $g: exit $?"; grep -h "Compiled on" $R/csm_mixedg$g.log | sed 's/, [0-9.]* frames.s.*peak/ peak/'; pack
done
if [ $(left) -gt 90 ] && command -v cuda-gdb > /dev/null; then
  timeout $(( $(left) - 30 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 \
    --decoder-rule hf --modes compiled --warmup 3 --steps 3000 --cases 8x130 --decoder-fraction 1.0 --mlp-pieces 3 > $R/sample.log 2>&1 &
  sleep 15; pid=$(pgrep -x csm | head -1); note "sampling pid ${pid:-none}"
  n=0
  while [ -n "$pid" ] && [ $(left) -gt 40 ] && [ $n -lt 60 ]; do
    timeout 15 cuda-gdb -q -p $pid -batch -ex "thread 1" -ex "bt 40" 2>/dev/null | grep -E "^#" >> $R/gdb_samples.txt
    echo --- >> $R/gdb_samples.txt; n=$((n+1)); sleep 0.3
  done
  kill $pid 2>/dev/null; wait
  note "cuda-gdb samples: $n"; pack
fi
