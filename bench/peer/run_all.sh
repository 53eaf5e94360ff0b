#!/usr/bin/env bash
# Runs every peer measurement once, on a QUIET machine, and leaves the JSON in $OUTDIR.
# Usage: bench/peer/run_all.sh [THREADS] [OUTDIR]        (CPU, float32)
#        DEVICE=cuda DTYPE=bfloat16 bench/peer/run_all.sh 0 OUTDIR   (GPU)
# Each command is independent; see bench/peer/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/root/venvs/csm-fixtures/bin/python}
THREADS=${1:-$(nproc)}
OUTDIR=${2:-bench/peer/results/$(date -u +%Y%m%dT%H%M%SZ)}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-float32}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
mkdir -p "$OUTDIR"
common=(--threads "$THREADS" --device "$DEVICE" --dtype "$DTYPE")
set -x
"$PY" bench/peer/train_step.py --mode same-work --decoder-fraction 0.0625 --steps "$STEPS" --warmup "$WARMUP" "${common[@]}" --json "$OUTDIR/train_same_work_r0.0625.json" | tee "$OUTDIR/train_same_work_r0.0625.txt"
"$PY" bench/peer/train_step.py --mode same-work --decoder-fraction 1.0    --steps "$STEPS" --warmup "$WARMUP" "${common[@]}" --json "$OUTDIR/train_same_work_r1.0.json"    | tee "$OUTDIR/train_same_work_r1.0.txt"
"$PY" bench/peer/train_step.py --mode defaults                            --steps "$STEPS" --warmup "$WARMUP" "${common[@]}" --json "$OUTDIR/train_defaults.json"         | tee "$OUTDIR/train_defaults.txt"
"$PY" bench/peer/generate.py --frames 25 --runs 3 "${common[@]}" --json "$OUTDIR/generate_f25.json" | tee "$OUTDIR/generate_f25.txt"
"$PY" bench/peer/generate.py --frames 25 --runs 3 --greedy "${common[@]}" --json "$OUTDIR/generate_f25_greedy.json" | tee "$OUTDIR/generate_f25_greedy.txt"
