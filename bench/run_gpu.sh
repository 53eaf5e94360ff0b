#!/usr/bin/env bash
# Training at realistic batch sizes on an NVIDIA GPU (issue 19): csm (the
# mlx-cuda-13 wheel's libmlx) beside transformers + peft, eager and under
# torch.compile, on the same card in one run; then the comparison table.
#
#   bench/run_gpu.sh OUTDIR CUDA_DIR CSM_BINARY      10-15 minutes on an H100
#   bench/run_gpu.sh --quick OUTDIR [CSM_BINARY]    CPU smoke run, --size tiny
#
# CUDA_DIR is the unpacked mlx-cuda-13 wheel (scripts/gpu-check.sh finds the
# NVIDIA libraries). python3 (or $PY) needs torch, transformers, peft and
# psutil. Cases: B identical rows of 20 text + A audio + 1 EOS frames,
# B x A in {1x130, 8x130, 4x500, 16x250}, the depth decoder on 1/16 and on
# every frame (transformers' -101 rule for both tools, so both do the same
# work), CSM-1B shape, random weights, bf16, LoRA r8 on q_proj/v_proj of both
# stacks, 3 warm-up steps and 15 timed (median; 5 were too few for the
# small cases on 2026-12-07). In OUTDIR: one JSON per run, the log of every
# command (*.log) and table.md.
#
# Order: the matmul rate (PyTorch, 8192^3 bf16), csm's cases (compiled,
# then plain, one process each), csm's levers one at a time, the peer eager (one
# process), the peer under torch.compile with what is left of BUDGET_S
# (default 800 s from the script's start: on 2026-12-07 the compiled peer
# began at 201 s and ended at 621 s; cases in order of interest, each
# compiled afresh; a case cut off by the budget is reported as not
# measured), csm's packing case
# (16 rows of mixed lengths, padded and packed; PACKING=0 skips it),
# generation with and without CUDA graphs, the kernels of csm's steps (16 x 250
# on 1/16 and every frame, 8 x 130 on every frame)
# (bench/ktrace, where a C compiler and CUPTI are found) beside the peer's
# (torch.profiler), with the host's CUDA calls (bench/host_gaps.py), the
# tables.
#
# CSM_ARGS: more `csm bench-train` flags for every csm run (word-split),
# e.g. CSM_ARGS="--mlp-pieces 2" to measure a setting as if it were
# the default. LEVERS=0 skips the levers (about 4 minutes on an H100);
# EXTRAS=0 skips what follows the peer (packing, generation, kernel traces:
# 74 s of a 586 s run on an H100, 2026-12-07); PLAIN=0 skips csm's plain
# step and the peer's eager mode (54 s for the peer's there), leaving the
# compiled columns of the table.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
out=${1:?usage: bench/run_gpu.sh OUTDIR CUDA_DIR CSM_BINARY | bench/run_gpu.sh --quick OUTDIR [CSM_BINARY]}
if [ $quick = 1 ]; then
  csm=${2:-target/debug/csm}
  cuda=
else
  cuda=${2:?CUDA_DIR (the unpacked mlx-cuda-13 wheel)}
  csm=${3:?CSM_BINARY}
fi
PY=${PY:-python3}
budget=${BUDGET_S:-800}
read -r -a extra <<< "${CSM_ARGS:-}"
start=$(date +%s)
mkdir -p "$out"
echo "${CSM_ARGS:-}" > "$out/csm_args.txt"

if [ $quick = 1 ]; then
  g() { "$csm" "$@"; }
  size=tiny; dtype=f32; pdev=(--device cpu --dtype float32 --size tiny); mm=1024; pdtype=float32
  peer_compile_cases=1x130:0.0625
else
  g() { scripts/gpu-check.sh "$cuda" "$csm" "$@"; }
  size=csm1b; dtype=bf16; pdev=(--device cuda --dtype bfloat16); mm=8192; pdtype=bfloat16
  peer_compile_cases=16x250:0.0625,8x130:0.0625,8x130:1.0,4x500:0.0625,16x250:1.0,1x130:0.0625,4x500:1.0,1x130:1.0
fi
cases=1x130,8x130,4x500,16x250
steps=(--warmup 3 --steps 15)
elapsed() { echo $(( $(date +%s) - start )); }
log() { echo "== [$(elapsed) s] $*"; }

log "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/device.txt" \
  || (grep -m1 "model name" /proc/cpuinfo | tee "$out/device.txt")

log "PyTorch matmul rate"
device=cuda; [ $quick = 1 ] && device=cpu
$PY bench/peer/matmul.py --device $device --dtype $pdtype --n $mm --json "$out/torch_matmul.json" 2>&1 | tee "$out/torch_matmul.log" | tail -1
rate=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['tflops'])" "$out/torch_matmul.json")

modes=(compiled plain); [ "${PLAIN:-1}" = 0 ] && modes=(compiled)
log "csm: every case, ${modes[*]} (one process each)"
# One process per mode, as the peer runs: on 2026-12-07 (ninth session)
# the compiled steps of a process that also ran the plain ones took up to
# 0.013 s of host time a step instead of mostly 0.005-0.007 s, and up to
# 1.4x as long, on the same machine.
: > "$out/csm.log"
for mode in "${modes[@]}"; do
  probe=(); [ $mode = compiled ] && probe=(--matmul-probe $mm)
  g bench-train --size $size --dtype $dtype --cases $cases --decoder-fraction 0.0625,1.0 --decoder-rule hf \
    --modes $mode "${steps[@]}" ${probe[@]+"${probe[@]}"} --peak-tflops "$rate" --json-dir "$out" ${extra[@]+"${extra[@]}"} \
    2>&1 | tee -a "$out/csm.log" | grep "csm bench-train" || true
done

log "csm: the levers one at a time (compiled; 16 x 250 at 1/16, and the memory levers at 8 x 130 on every frame)"
lever() {
  local tag=$1 shape=$2 frac=$3
  shift 3
  g bench-train --size $size --dtype $dtype --cases "$shape" --decoder-fraction "$frac" --decoder-rule hf \
    --modes compiled "${steps[@]}" --peak-tflops "$rate" --json-dir "$out" --tag "$tag" ${extra[@]+"${extra[@]}"} "$@" \
    2>&1 | tee -a "$out/csm_levers.log" | grep "csm bench-train" || true
}
if [ "${LEVERS:-1}" = 0 ]; then
  log "csm: levers skipped (LEVERS=0)"
else
  if [ $quick = 1 ]; then
    # Off by default on the CPU: switched on.
    lever tile-128 16x250 0.0625 --attention-tile 128
    lever lean 16x250 0.0625 --lean-swiglu true --lean-lora true
    lever lean 8x130 1.0 --lean-swiglu true --lean-lora true
    lever grouped 16x250 0.0625 --lean-lora true --grouped-proj true
  else
    # On by default on CUDA: switched off.
    lever tile-0 16x250 0.0625 --attention-tile 0
    lever lean-off 16x250 0.0625 --lean-swiglu false --lean-lora false
    lever lean-off 8x130 1.0 --lean-swiglu false --lean-lora false
    lever grouped-off 16x250 0.0625 --grouped-proj false
    lever grouped-off 8x130 0.0625 --grouped-proj false
    lever grouped-off 8x130 1.0 --grouped-proj false
    # On by default on CUDA since 2026-12-07 (sixth session): each switched
    # off, and the four together.
    lever aligned-off 16x250 1.0 --aligned-heads false
    lever swiglu-kernel-off 16x250 1.0 --cuda-swiglu-grad false
    lever rope-kernel-off 16x250 1.0 --cuda-rope false
    lever ce-plain 16x250 1.0 --cross-entropy plain
    for frac in 0.0625 1.0; do
      lever four-off 8x130 $frac --aligned-heads false --cuda-swiglu-grad false --cuda-rope false --cross-entropy plain
      lever four-off 16x250 $frac --aligned-heads false --cuda-swiglu-grad false --cuda-rope false --cross-entropy plain
    done
    # The adapters' rank-r products added by a CUDA kernel (on by default on
    # CUDA since 2026-12-07, eighth session), switched off.
    lever cuda-lora-off 16x250 1.0 --cuda-lora false
    lever cuda-lora-off 8x130 1.0 --cuda-lora false
    lever cuda-lora-off 16x250 0.0625 --cuda-lora false
    # The depth decoder's MLPs in 2 pieces (on by default on CUDA since
    # 2026-12-07, ninth session), whole.
    lever mlp-pieces-1 8x130 1.0 --mlp-pieces 1
    lever mlp-pieces-1 16x250 1.0 --mlp-pieces 1
  fi
  lever ce-fused 16x250 0.0625 --cross-entropy fused
  lever ce-fused 8x130 1.0 --cross-entropy fused
  lever exact-shapes 16x250 0.0625 --no-buckets
  # Each step's graph built after the step before ended (the device idles
  # while the host builds it), against the default pipeline.
  lever pipeline-off 16x250 0.0625 --pipeline false
  lever pipeline-off 8x130 0.0625 --pipeline false
  # Without CUDA graphs (plain stream launches): level with the default at
  # 2, 5 and 10 ops a commit on 2026-12-07, with up to 1.6x the memory on
  # every frame; one case keeps watch.
  MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=5 lever no-cuda-graphs-ops5 16x250 0.0625
  # LoRA's products in bf16 rather than f32 (off by default).
  lever lora-bf16 16x250 1.0 --lora-activation-dtype true
  lever lora-bf16 8x130 1.0 --lora-activation-dtype true
  lever no-levers 16x250 0.0625 --cross-entropy plain --attention-tile 0 --lean-swiglu false \
    --lean-lora false --grouped-proj false --aligned-heads false --cuda-swiglu-grad false \
    --cuda-rope false --no-buckets
fi

if [ "${PLAIN:-1}" = 0 ]; then
  log "peer: eager skipped (PLAIN=0)"
else
  log "peer: every case, eager"
  peer_cases=1x130:0.0625,8x130:0.0625,4x500:0.0625,16x250:0.0625,1x130:1.0,8x130:1.0,4x500:1.0,16x250:1.0
  $PY bench/peer/train_step.py --mode same-work "${pdev[@]}" --cases $peer_cases "${steps[@]}" \
    --json-dir "$out" --tag eager --profile-dir "$out/prof" > "$out/peer_eager.log" 2>&1 || echo "peer eager failed: see $out/peer_eager.log"
  grep -E "^== case|step s median" "$out/peer_eager.log" || true
fi

left=$(( budget - $(elapsed) ))
if [ $left -gt 30 ]; then
  log "peer: torch.compile, $left s left"
  # The deadline makes the script skip a case it cannot finish by the
  # previous case's duration; timeout cuts the last one off.
  deadline=$(( start + budget ))
  timeout --kill-after=15 $left $PY bench/peer/train_step.py --mode same-work "${pdev[@]}" \
    --cases $peer_compile_cases "${steps[@]}" --compile --deadline-epoch $deadline --json-dir "$out" --tag compiled --profile-dir "$out/prof" \
    > "$out/peer_compiled.log" 2>&1 || echo "peer torch.compile stopped (exit $?): see $out/peer_compiled.log"
  grep -E "^== case|step s median|first warm-up" "$out/peer_compiled.log" || true
else
  log "peer: torch.compile skipped, no time left ($left s)"
fi

# Packing (after the peer, so that its time budget is not spent here):
# mixed lengths, the same utterances padded and packed, compiled; PACKING=0
# skips it. Two traces, about a minute or two on an H100.
if [ "${PACKING:-1}" = 1 ] && [ "${EXTRAS:-1}" = 1 ]; then
  log "csm: packing, 16 rows of 60/130/250 audio frames, padded and packed"
  g bench-train --size $size --dtype $dtype --cases 16x0 --lengths 60,130,250 --layouts padded,packed \
    --decoder-fraction 0.0625 --decoder-rule csm --modes compiled "${steps[@]}" --peak-tflops "$rate" \
    --json-dir "$out" ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/csm_packing.log" | grep "csm bench-train" || true
fi

if [ $quick = 0 ] && [ "${EXTRAS:-1}" = 1 ]; then
  log "csm: generation (100 frames), default and without CUDA graphs (5 ops a commit)"
  for v in default no-cuda-graphs-ops5; do
    ( [ $v = default ] || export MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=5
      # gpu-check.sh's first line names the card; the JSON is the rest.
      g bench-generate --size csm-1b --frames 100 --dtype bf16 --json 2> "$out/gen_$v.log" | grep -v '^# ' > "$out/gen_$v.json" ) \
      || echo "generation ($v) failed: see $out/gen_$v.log"
    $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(f'  {sys.argv[2]}: {d[\"ms_per_frame\"]:.1f} ms/frame, peak {d[\"peak_memory_bytes\"]/1e9:.2f} GB')" \
      "$out/gen_$v.json" $v 2>/dev/null || true
  done

  # Every kernel of a few compiled steps, timestamped by CUPTI (Nsight
  # Compute profiled none of a csm run in 330 s on 2026-12-07).
  # CUPTI's header and library lie in extras/CUPTI or in targets/*/ of a
  # toolkit, depending on how it was installed: found, not assumed.
  cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
  cupti_h=$(find -L "$cuda_home" -name cupti.h 2>/dev/null | head -1)
  cupti_so=$(find -L "$cuda_home" -name 'libcupti.so*' 2>/dev/null | head -1)
  if [ -n "$cupti_h" ] && [ -n "$cupti_so" ] && cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I"$cuda_home/include" \
    -I"$(dirname "$cupti_h")" "$cupti_so" -Wl,-rpath,"$(dirname "$cupti_so")" -o "$out/ktrace.so" \
    > "$out/ktrace_build.log" 2>&1; then
    log "csm: the kernels of 5 steps (bench/ktrace)"
    # 8 x 130 on every frame beside 16 x 250: the two differ by a fixed
    # ~3 ms a step against the peer (2026-12-07, sixth session).
    for run in 16x250:0.0625 16x250:1.0 8x130:1.0; do
      shape=${run%%:*} frac=${run##*:}
      KTRACE_OUT="$out/kernels_${shape}_$frac.tsv" KTRACE_API_OUT="$out/api_${shape}_$frac.tsv" \
        CUDA_INJECTION64_PATH="$(cd "$out" && pwd)/ktrace.so" \
        g bench-train --size $size --dtype $dtype --cases $shape --decoder-fraction $frac --decoder-rule hf \
        --modes compiled --warmup 2 --steps 3 ${extra[@]+"${extra[@]}"} > "$out/ktrace_${shape}_$frac.log" 2>&1 || echo "trace failed: see $out/ktrace_${shape}_$frac.log"
      peer_trace="$out/prof/peer_compiled_${shape}_$frac.trace.json.gz"
      [ -f "$peer_trace" ] || peer_trace="$out/prof/peer_eager_${shape}_$frac.trace.json.gz"
      if [ -f "$peer_trace" ]; then
        $PY bench/kernel_table.py --csm "$out/kernels_${shape}_$frac.tsv" --peer "$peer_trace" \
          | tee "$out/kernels_${shape}_$frac.md" || true
      fi
      # Where the GPU idled and what the host did then (graphs rebuilt, ...).
      $PY bench/host_gaps.py --kernels "$out/kernels_${shape}_$frac.tsv" --api "$out/api_${shape}_$frac.tsv" \
        > "$out/host_gaps_${shape}_$frac.txt" 2>&1 || true
      gzip -f "$out/kernels_${shape}_$frac.tsv" "$out/api_${shape}_$frac.tsv" 2>/dev/null || true
    done
  else
    echo "bench/ktrace not built (CUPTI header: '${cupti_h:-none}', library: '${cupti_so:-none}'): see $out/ktrace_build.log"
  fi
fi

log "table"
$PY bench/gpu_table.py "$out" | tee "$out/table.md"
log "done"
