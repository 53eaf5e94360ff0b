#!/usr/bin/env bash
# Third round, call 2 of 2 (same warm machine): the final build (.gpuB) at
# every case, by default and with LoRA's products in bf16
# (--lora-activation-dtype true), in turn, three times; kernel traces of
# 8 x 130, the case furthest behind the peer.
CALL=6; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
mkdir -p $R/kt
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I/usr/local/cuda/include -I/usr/local/cuda/targets/x86_64-linux/include \
  /usr/local/cuda/targets/x86_64-linux/lib/libcupti.so* -Wl,-rpath,/usr/local/cuda/targets/x86_64-linux/lib -o /tmp/g/ktrace.so > $R/kt/build.log 2>&1
for i in 1 2 3; do
  [ $(left) -gt 60 ] && bt final-$i $all8
  [ $(left) -gt 60 ] && bt lora-bf16-$i $all8 --lora-activation-dtype true
done
for frac in 1.0 0.0625; do
  [ -f /tmp/g/ktrace.so ] && [ $(left) -gt 40 ] || break
  KTRACE_OUT=$R/kt/kernels_8x130_$frac.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so timeout 60 \
    scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --cases 8x130 --decoder-fraction $frac \
    --decoder-rule hf --modes compiled --warmup 2 --steps 3 > $R/kt/run_$frac.log 2>&1
  note "ktrace $frac exit $?: $(wc -l < $R/kt/kernels_8x130_$frac.tsv) kernels"; gzip -f $R/kt/kernels_8x130_$frac.tsv; pack
done
pack
