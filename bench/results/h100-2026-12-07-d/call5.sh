#!/usr/bin/env bash
# Call 2 of 2 (same warm machine): is the spread of csm's host time between
# processes (0.0065-0.0132 s of graph building a step at the same case in
# call 2) a matter of where the OS places the process? The same build at
# 8 x 130 and 16 x 250 on 1/16, four times free and four times pinned
# (taskset) to 4 CPUs of distinct physical cores, in turn.
CALL=5; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
{ lscpu; lscpu -e; grep Cpus_allowed_list /proc/self/status; cat /proc/loadavg; } > $R/cpu.txt 2>&1
pin=$(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -u | head -4 | cut -d, -f1 | paste -sd,)
note "pinned runs use CPUs $pin"
run() { local tag=$1; shift
  timeout $(( $(left) - 10 )) "$@" scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 \
    --decoder-rule hf --modes compiled --warmup 3 --steps 15 --json-dir $R --tag $tag --cases 8x130,16x250 --decoder-fraction 0.0625 \
    >> $R/csm_$tag.log 2>&1
  note "$tag exit $?: $(grep -ho '[0-9.]* s/step (min [0-9.]*, first [0-9.]*, host [0-9.]*' $R/csm_$tag.log | paste -sd'|')"; pack; }
for i in 1 2 3 4; do
  [ $(left) -gt 40 ] && run free-$i env
  [ $(left) -gt 40 ] && run pin-$i taskset -c $pin
done
pack
