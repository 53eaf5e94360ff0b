#!/usr/bin/env bash
# "What fits where" (README): peak memory of a CSM-1B LoRA training step
# (r8 on q/v, 150 frames: 20 text + 130 audio, depth decoder on 1/16) at
# batch 1, 4 and 8, with and without a quantized base (--quantize 4 / 8)
# and gradient checkpointing. One process per case, so each peak is its own;
# a case that does not fit (out of memory, killed) is recorded and the
# sweep goes on.
#
#   bench/memory_table.sh OUTDIR DTYPE CSM...
#
# DTYPE is f32 (CPU) or bf16 (GPU); CSM... runs csm, e.g.
#   bench/memory_table.sh bench/results/cpu-memory f32 target/release/csm
#   bench/memory_table.sh bench/results/h100-memory bf16 scripts/gpu-check.sh CUDA_DIR target/release/csm
# BATCHES (default "1 4 8") and MODES (default "plain gc q4 q4gc q8 q8gc")
# narrow the sweep. Prints the table (bench/memory_table.py) at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/memory_table.sh OUTDIR DTYPE CSM...}
dtype=${2:?DTYPE (f32 or bf16)}
shift 2
[ $# -gt 0 ] || { echo "CSM command missing" >&2; exit 2; }
mkdir -p "$out"
for b in ${BATCHES:-1 4 8}; do
  for mode in ${MODES:-plain gc q4 q4gc q8 q8gc}; do
    flags=()
    case $mode in
      plain) ;;
      gc) flags=(--grad-checkpoint) ;;
      q4) flags=(--quantize 4) ;;
      q4gc) flags=(--quantize 4 --grad-checkpoint) ;;
      q8) flags=(--quantize 8) ;;
      q8gc) flags=(--quantize 8 --grad-checkpoint) ;;
      *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    name="b${b}_${mode}"
    echo "# $(date -u +%FT%TZ) $name (load average $(cut -d' ' -f1-3 /proc/loadavg), $(free -g | awk '/Mem:/ {print $7}') GB available)"
    if "$@" bench-train --size csm1b --dtype "$dtype" --batch-size "$b" "${flags[@]}" \
      --steps "${STEPS:-2}" --warmup "${WARMUP:-1}" --json "$out/$name.json" >"$out/$name.log" 2>&1; then
      tail -n 1 "$out/$name.log"
    else
      status=$?
      echo "$name failed (exit $status): $(tail -n 2 "$out/$name.log" | tr '\n' ' ')"
      printf '{"case": "%s", "failed": true, "exit": %d}\n' "$name" "$status" >"$out/$name.json"
    fi
  done
done
python3 bench/memory_table.py "$out"
