#!/usr/bin/env bash
# Call 2 (same warm machine as call 1): the depth decoder's MLPs in 3
# pieces (--mlp-pieces 3) with csm's malloc settings and with glibc's
# (and the build in .gpuB/csm_base.xz, if any), every case, twice in
# turn; glibc's are kept for the whole run if they pay (summed time at
# least 1% lower, no case more than 5% slower); then
# bench/run_gpu.sh starts detached with 3 pieces (LEVERS=0 EXTRAS=0 PLAIN=0
# BUDGET_S=720), for call 3 to collect.
CALL=2; . bench/gpu_session/common.sh
assemble || exit 1
python3 bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json $R/torch_matmul.json > $R/torch_matmul.log 2>&1
note "matmul rate $(rate)"
ALL=(--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0)
# Kernels compiled (no cache here) before anything is timed.
STEPS=1 bt warm3 "${ALL[@]}" --mlp-pieces 3
for round in 1 2; do
  bt p3m32r$round "${ALL[@]}" --mlp-pieces 3
  # glibc's own malloc settings instead of csm's (one arena, no trim, no mmap).
  ( export GLIBC_TUNABLES=glibc.malloc.perturb=0; bt p3m32gr$round "${ALL[@]}" --mlp-pieces 3 )
  [ -x /tmp/g/csm_base ] && CSM_BIN=/tmp/g/csm_base bt p3m32br$round "${ALL[@]}" --mlp-pieces 3
done
python3 bench/gpu_session/choose.py $R > $R/choice.txt 2>&1; cat $R/choice.txt
glibc=$(tail -1 $R/choice.txt); note "glibc malloc defaults: ${glibc:-0}"
[ "${glibc:-0}" = 1 ] && export GLIBC_TUNABLES=glibc.malloc.perturb=0
rm -rf /tmp/full; mkdir -p /tmp/full
CSM_ARGS="--mlp-pieces 3" LEVERS=0 EXTRAS=0 PLAIN=0 BUDGET_S=720 \
  setsid bash -c 'bench/run_gpu.sh /tmp/full /tmp/g/cuda /tmp/g/csm > /tmp/full.log 2>&1; echo $? > /tmp/full.rc' < /dev/null > /dev/null 2>&1 &
note "run_gpu.sh started"; pack
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 15 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo ended || echo still running): $(grep '^== \[' /tmp/full.log | tail -1)"; pack
