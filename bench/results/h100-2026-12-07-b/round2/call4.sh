#!/usr/bin/env bash
# Second round, call 2 of 2 (same warm machine): the rest of libmlx, csm
# (SwiGLU backward, frame embeddings, the bf16 LoRA lever) and the first
# round's csm (15ec211) travel in .gpuB. Both at every case, in turn,
# twice; the lever; the new one's kernels at 16x250 under bench/ktrace.
CALL=4; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx STEPS=15
[ -d /tmp/ptx ] || tar -C /tmp -xzf /tmp/g/ptx.tgz
if [ ! -x /tmp/g/csm ]; then
  cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
    && rm /tmp/g/cuda.tar.xz && xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm \
    && xz -dc .gpuB/csm-old.xz > /tmp/g/csm-old && chmod +x /tmp/g/csm-old || { note "assembly failed"; exit 1; }
fi
note "assembled, matmul $(rate), ptx cache $(ls /tmp/ptx | wc -l) files"
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
old() { local tag=$1; shift; timeout $(( $(left) - 10 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm-old bench-train --size csm1b --dtype bf16 \
  --decoder-rule hf --modes compiled --warmup 3 --steps 15 --peak-tflops $(rate) --json-dir $R --tag $tag "$@" >> $R/csm_$tag.log 2>&1
  note "$tag exit $?"; grep -h "csm bench-train: Csm1b" $R/csm_$tag.log | tail -8; pack; }
bt new $all8
old old $all8
bt lora-bf16 $all8 --lora-activation-dtype true
cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I/usr/local/cuda/include -I/usr/local/cuda/targets/x86_64-linux/include \
  /usr/local/cuda/targets/x86_64-linux/lib/libcupti.so* -Wl,-rpath,/usr/local/cuda/targets/x86_64-linux/lib -o /tmp/g/ktrace.so > $R/ktrace_build.log 2>&1
mkdir -p $R/kt
for frac in 1.0 0.0625; do
  [ -f /tmp/g/ktrace.so ] || break
  KTRACE_OUT=$R/kt/kernels_16x250_$frac.tsv CUDA_INJECTION64_PATH=/tmp/g/ktrace.so timeout 90 \
    scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --cases 16x250 --decoder-fraction $frac \
    --decoder-rule hf --modes compiled --warmup 2 --steps 3 > $R/kt/run_$frac.log 2>&1
  note "ktrace $frac exit $?: $(wc -l < $R/kt/kernels_16x250_$frac.tsv) kernels"; gzip -f $R/kt/kernels_16x250_$frac.tsv; pack
done
[ $(left) -gt 40 ] && bt new-2 $all8
[ $(left) -gt 40 ] && old old-2 $all8
(cd /tmp && tar -czf $OUT/ptx.tgz ptx) 2>/dev/null
pack
