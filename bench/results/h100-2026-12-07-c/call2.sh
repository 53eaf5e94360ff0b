#!/usr/bin/env bash
# Call 2 of 2 (same warm machine): the rest of libmlx and csm travel in
# .gpuB. csm at every case: the new defaults (RoPE as one expression on the
# tokens-first layout, gate and up as one product), both off (the previous
# build's step), each alone; a kernel trace of 16 x 250; both again; then
# any peer case call 1 did not reach.
CALL=2; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
off="--lean-rope false --fused-gate-up false"
bt new $all8 --matmul-probe 8192
bt base $all8 $off
bt rope $all8 --fused-gate-up false
bt gateup $all8 --lean-rope false
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I/usr/local/cuda/include -I/usr/local/cuda/targets/x86_64-linux/include \
  /usr/local/cuda/targets/x86_64-linux/lib/libcupti.so* -Wl,-rpath,/usr/local/cuda/targets/x86_64-linux/lib -o /tmp/g/ktrace.so > $R/ktrace_build.log 2>&1
mkdir -p $R/kt
for frac in 1.0 0.0625; do
  [ -f /tmp/g/ktrace.so ] && [ $(left) -gt 120 ] || break
  KTRACE_OUT=$R/kt/kernels_16x250_$frac.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so timeout 90 \
    scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --cases 16x250 --decoder-fraction $frac \
    --decoder-rule hf --modes compiled --warmup 2 --steps 3 > $R/kt/run_$frac.log 2>&1
  note "ktrace $frac exit $?: $(wc -l < $R/kt/kernels_16x250_$frac.tsv) kernels"; gzip -f $R/kt/kernels_16x250_$frac.tsv; pack
done
for i in 2 3; do
  [ $(left) -gt 100 ] && bt new-$i $all8
  [ $(left) -gt 100 ] && bt base-$i $all8 $off
done
# Peer cases call 1 did not reach.
todo=$(python3 - <<'PY'
import os
want = ["16x250:1.0","8x130:1.0","16x250:0.0625","8x130:0.0625","4x500:0.0625","4x500:1.0","1x130:0.0625","1x130:1.0"]
have = os.listdir("/tmp/r")
print(",".join(c for c in want if not any(f.startswith("peer_compiled_%s_%s" % (c.split(":")[0], c.split(":")[1].rstrip("0").rstrip(".") if c.endswith(".0") else c.split(":")[1])) for f in have)))
PY
)
note "peer todo: ${todo:-none}"
[ -n "$todo" ] && [ $(left) -gt 90 ] && peer $todo 15
(cd /tmp && tar -czf $OUT/ptx.tgz ptx) 2>/dev/null
pack; ls -la $R | head -80
