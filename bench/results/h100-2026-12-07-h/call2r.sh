#!/usr/bin/env bash
# Call 2, short form (little device time left): the depth decoder's MLPs
# in 1 and 2 pieces (--mlp-pieces) at every case, twice in turn; then
# run_gpu.sh's form (plain and compiled in one process) once.
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
ALL=(--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0)
run() { local tag=$1; shift; timeout $(( $(left) - 8 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 \
  --decoder-rule hf --warmup 3 --steps 15 --json-dir $R --tag $tag "${ALL[@]}" "$@" >> $R/csm_$tag.log 2>&1
  note "$tag exit $?"; grep -h "Compiled on" $R/csm_$tag.log | sed 's/ LoRA,//; s/, [0-9.]* frames.s.*loss/ loss/; s/, weights.*peak/ peak/; s/, max RSS.*//'; pack; }
for round in 1 2; do
  for n in 1 2; do run p${n}r$round --modes compiled --mlp-pieces $n; done
done
[ $(left) -gt 50 ] && run mixed --modes plain,compiled
pack
