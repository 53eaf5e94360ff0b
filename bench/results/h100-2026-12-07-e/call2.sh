#!/usr/bin/env bash
# Call 2 of 3 (same warm machine): the second half of libmlx and csm
# (.gpuB); csm gpu-check; then bench/run_gpu.sh as a whole, from a copy of
# the tree, in a process session of its own that outlives this call
# (call 3 waits for it).
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -d /tmp/g/cuda/mlx ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; exit 1; }
fi
xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; exit 1; }
note "assembled"
timeout 150 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm gpu-check --seconds 0.3 > $R/gpu_check.log 2>&1
note "gpu-check exit $?"; tail -22 $R/gpu_check.log; pack
rm -rf /tmp/repo && mkdir -p /tmp/repo/tests/fixtures /tmp/full && cp -r scripts /tmp/repo/ && cp -r tests/fixtures/csm_tiny_hf /tmp/repo/tests/fixtures/ \
  && tar --exclude=bench/results --exclude=bench/gpu_calls -cf - bench | tar -C /tmp/repo -xf -
( cd /tmp/repo && setsid nohup bash -c 'BUDGET_S=900 bench/run_gpu.sh /tmp/full /tmp/g/cuda /tmp/g/csm > /tmp/full.log 2>&1; echo $? > /tmp/full.rc' \
  > /dev/null 2>&1 < /dev/null & )
note "run_gpu.sh started"
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 12 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo "ended $(cat /tmp/full.rc)" || echo "still running"): $(grep '^== \[' /tmp/full.log | tail -1)"
cp /tmp/full.log $R/ 2>/dev/null; pack
