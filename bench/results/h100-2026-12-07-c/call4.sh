#!/usr/bin/env bash
# Second round, call 2 of 2 (same warm machine): libmlx's second half and
# csm in .gpuB. gpu-check (csm's SwiGLU backward kernel against the
# formula), csm at every case with the kernel (the default) and without it,
# in turn, three times; kernel traces at 16 x 250; then the peer's other
# cases until the call's limit.
CALL=4; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
timeout 120 scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm gpu-check --seconds 0.5 > $R/gpu_check.log 2>&1; note "gpu-check exit $?"
grep -E "SwiGLU|passed|error" $R/gpu_check.log
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
bt kern $all8 --matmul-probe 8192
bt nokern $all8 --swiglu-kernel false
mkdir -p $R/kt
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I/usr/local/cuda/include -I/usr/local/cuda/targets/x86_64-linux/include \
  /usr/local/cuda/targets/x86_64-linux/lib/libcupti.so* -Wl,-rpath,/usr/local/cuda/targets/x86_64-linux/lib -o /tmp/g/ktrace.so > $R/kt/build.log 2>&1
for frac in 1.0 0.0625; do
  [ -f /tmp/g/ktrace.so ] && [ $(left) -gt 200 ] || break
  KTRACE_OUT=$R/kt/kernels_16x250_$frac.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so timeout 90 \
    scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --cases 16x250 --decoder-fraction $frac \
    --decoder-rule hf --modes compiled --warmup 2 --steps 3 > $R/kt/run_$frac.log 2>&1
  note "ktrace $frac exit $?: $(wc -l < $R/kt/kernels_16x250_$frac.tsv) kernels"; gzip -f $R/kt/kernels_16x250_$frac.tsv; pack
done
for i in 2 3; do
  [ $(left) -gt 200 ] && bt kern-$i $all8
  [ $(left) -gt 200 ] && bt nokern-$i $all8 --swiglu-kernel false
done
[ $(left) -gt 90 ] && peer 8x130:1.0,8x130:0.0625,4x500:1.0,4x500:0.0625,1x130:0.0625,1x130:1.0 15
(cd /tmp && tar -czf $OUT/ptx.tgz ptx) 2>/dev/null
pack
