#!/usr/bin/env bash
# Call 2 (same warm machine as call 1), short form for a session with
# little device time left: bench/run_gpu.sh at once, detached, with the
# depth decoder's MLPs in 3 pieces (LEVERS=0 EXTRAS=0 PLAIN=0
# BUDGET_S=720: csm compiled and the peer under torch.compile); call 3
# collects it (call3.sh, which then runs the malloc A/B of call2.sh).
CALL=2; . bench/gpu_session/common.sh
assemble || exit 1
rm -rf /tmp/full; mkdir -p /tmp/full
CSM_ARGS="--mlp-pieces 3" LEVERS=0 EXTRAS=0 PLAIN=0 BUDGET_S=720 \
  setsid bash -c 'bench/run_gpu.sh /tmp/full /tmp/g/cuda /tmp/g/csm > /tmp/full.log 2>&1; echo $? > /tmp/full.rc' < /dev/null > /dev/null 2>&1 &
note "run_gpu.sh started"; pack
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 15 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo ended || echo still running): $(grep '^== \[' /tmp/full.log | tail -1)"
cp /tmp/full.log /tmp/full/run_gpu.log 2>/dev/null; (cd /tmp && tar -czf $OUT/full.tgz full); pack
grep -E "^== |csm bench-train|step s median|^\| " /tmp/full.log | tail -40
