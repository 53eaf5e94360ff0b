#!/usr/bin/env bash
# Call 2 of 2 (same warm machine): the rest of libmlx and csm travel in
# .gpuB. csm's default (compiled, pipelined) at every case, and without
# CUDA graphs at 5 ops a commit; the kernels of
# 16 x 250 steps under bench/ktrace (nsys if that records nothing); the
# depth decoder's attention padded to 128; no CUDA graphs at 2 and 10
# ops a commit; generation with and without graphs; the default again.
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx STEPS=15
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
bt default $all8 --matmul-probe 8192
MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=5 bt no-cuda-graphs-ops5 $all8
# Kernel timestamps (CUPTI) of 2 warm-up and 3 timed steps.
cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
cupti_h=$(find -L "$cuda_home" -name cupti.h 2>/dev/null | head -1)
cupti_so=$(find -L "$cuda_home" -name 'libcupti.so*' 2>/dev/null | head -1)
note "cupti: ${cupti_h:-none} ${cupti_so:-none}"
mkdir -p $R/kt
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I"$cuda_home/include" -I"$(dirname "$cupti_h")" "$cupti_so" \
  -Wl,-rpath,"$(dirname "$cupti_so")" -o /tmp/g/ktrace.so > $R/kt/build.log 2>&1; note "ktrace build exit $?"
for frac in 1.0 0.0625; do
  [ -f /tmp/g/ktrace.so ] || break
  KTRACE_OUT=$R/kt/kernels_16x250_$frac.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so timeout 90 \
    scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --cases 16x250 --decoder-fraction $frac \
    --decoder-rule hf --modes compiled --warmup 2 --steps 3 > $R/kt/run_$frac.log 2>&1
  note "ktrace $frac exit $?: $(wc -l < $R/kt/kernels_16x250_$frac.tsv) kernels"; gzip -f $R/kt/kernels_16x250_$frac.tsv; pack
done
if [ ! -s $R/kt/kernels_16x250_1.0.tsv.gz ] || [ "$(zcat $R/kt/kernels_16x250_1.0.tsv.gz | wc -l)" -lt 100 ]; then
  NSYS=$(command -v nsys || ls -d /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ] && [ $(left) -gt 200 ]; then
    timeout 120 $NSYS profile -t cuda --cuda-graph-trace=node -o /tmp/g/nsys_1 -f true scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm \
      bench-train --size csm1b --dtype bf16 --cases 16x250 --decoder-fraction 1.0 --decoder-rule hf --modes compiled \
      --warmup 2 --steps 3 > $R/kt/nsys.log 2>&1
    note "nsys exit $?"
    timeout 60 $NSYS stats -r cuda_gpu_kern_sum --format csv -o $R/kt/nsys_1 /tmp/g/nsys_1.nsys-rep >> $R/kt/nsys.log 2>&1; pack
  fi
fi
bt dtile-128 --cases 16x250,8x130 --decoder-fraction 1.0,0.0625 --decoder-attention-tile 128
for ops in 2 10; do
  [ $(left) -gt 60 ] && MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=$ops bt no-cuda-graphs-ops$ops --cases 16x250,8x130 --decoder-fraction 0.0625,1.0
done
for v in default no-cuda-graphs-ops5; do
  [ $(left) -gt 60 ] || break
  ( [ $v = default ] || export MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=5
    timeout 90 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-generate --size csm-1b --frames 100 --dtype bf16 --json > $R/gen_$v.json 2> $R/gen_$v.log )
  note "generation $v exit $?: $(tail -c 300 $R/gen_$v.json)"
done
[ $(left) -gt 60 ] && bt default-2 $all8
du -sh /tmp/ptx 2>/dev/null | tee -a $R/progress.txt
(cd /tmp && tar -czf $OUT/ptx.tgz ptx) 2>/dev/null
pack; ls -la $OUT
