#!/usr/bin/env bash
# Call 2 of 3 (same warm machine): the second half of libmlx and csm
# (.gpuB). csm with the grouped projections (the build's default) and
# without (--grouped-proj false), every case, three times each in turn;
# then bench/run_gpu.sh as a whole, from a copy of the tree, in a process
# session of its own that outlives this call (call 3 waits for it).
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
for i in 1 2 3; do
  [ $(left) -gt 60 ] && bt grouped-$i $all8
  [ $(left) -gt 60 ] && bt plain-$i $all8 --grouped-proj false
done
# The whole benchmark, from a copy (this call's tree may be replaced).
rm -rf /tmp/repo && mkdir -p /tmp/repo/tests/fixtures /tmp/full && cp -r scripts /tmp/repo/ && cp -r tests/fixtures/csm_tiny_hf /tmp/repo/tests/fixtures/ \
  && tar --exclude=bench/results -cf - bench | tar -C /tmp/repo -xf -
( cd /tmp/repo && setsid nohup bash -c 'BUDGET_S=900 bench/run_gpu.sh /tmp/full /tmp/g/cuda /tmp/g/csm > /tmp/full.log 2>&1; echo $? > /tmp/full.rc' \
  > /dev/null 2>&1 < /dev/null & )
note "run_gpu.sh started"
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 12 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo "ended $(cat /tmp/full.rc)" || echo "still running"): $(grep '^== \[' /tmp/full.log | tail -1)"
cp /tmp/full.log $R/ 2>/dev/null; pack
