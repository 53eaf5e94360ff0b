#!/usr/bin/env bash
# Call 2 (same warm machine as call 1), short form for a session with
# little device time left: bench/run_gpu.sh at once, detached, with the
# depth decoder's MLPs in 3 pieces (LEVERS=0 EXTRAS=0 PLAIN=0
# BUDGET_S=720: csm compiled and the peer under torch.compile); call 3
# collects it (call3.sh, which then runs the malloc A/B of call2.sh).
CALL=2; . bench/gpu_session/common.sh
if [ ! -d /tmp/g/cuda/mlx ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; exit 1; }
fi
xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; exit 1; }
grep -aq "(commit $(cat .gpuB/commit.txt))" /tmp/g/csm || { note "csm is not the build of $(cat .gpuB/commit.txt)"; exit 1; }
cp .gpuB/commit.txt $R/; note "assembled, csm of $(cat .gpuB/commit.txt)"
rm -rf /tmp/full; mkdir -p /tmp/full
CSM_ARGS="--mlp-pieces 3" LEVERS=0 EXTRAS=0 PLAIN=0 BUDGET_S=720 \
  setsid bash -c 'bench/run_gpu.sh /tmp/full /tmp/g/cuda /tmp/g/csm > /tmp/full.log 2>&1; echo $? > /tmp/full.rc' < /dev/null > /dev/null 2>&1 &
note "run_gpu.sh started"; pack
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 15 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo ended || echo still running): $(grep '^== \[' /tmp/full.log | tail -1)"
cp /tmp/full.log /tmp/full/run_gpu.log 2>/dev/null; (cd /tmp && tar -czf $OUT/full.tgz full); pack
grep -E "^== |csm bench-train|step s median|^\| " /tmp/full.log | tail -40
