#!/usr/bin/env bash
# NVIDIA benchmark: csm (CUDA libmlx) beside transformers + peft on the same
# card in the same session, bf16, CSM-1B shape with random weights; then the
# whole demo pipeline on the GPU.
#
#   bench/run_h100.sh OUTDIR CUDA_DIR CSM_BINARY [DEMO_DATA]
#
# CUDA_DIR is the unpacked mlx-cuda-13 wheel (scripts/gpu-check.sh finds the
# NVIDIA libraries); python3 needs torch (CUDA), transformers and peft.
# DEMO_DATA, when given, is a demo dataset (audio/ + transcripts/) to reuse,
# for machines without espeak-ng.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/run_h100.sh OUTDIR CUDA_DIR CSM_BINARY [DEMO_DATA]}
cuda=${2:?CUDA_DIR}
csm=${3:?CSM_BINARY}
demo_data=${4:-}
mkdir -p "$out"
g() { scripts/gpu-check.sh "$cuda" "$csm" "$@"; }

g gpu-check
for f in 0.0625 1.0; do
  g bench-train --size csm1b --dtype bf16 --decoder-fraction "$f" --steps 10 --warmup 3 --json "$out/csm_train_$f.json"
done
python3 bench/peer/train_step.py --mode same-work --decoder-frames 8 --device cuda --dtype bfloat16 --steps 10 --warmup 3 --json "$out/peer_train_0.0625.json"
python3 bench/peer/train_step.py --mode same-work --decoder-fraction 1.0 --device cuda --dtype bfloat16 --steps 10 --warmup 3 --json "$out/peer_train_1.0.json"
g bench-generate --size csm-1b --frames 100 --dtype bf16 --json > "$out/csm_gen.json"
python3 bench/peer/generate.py --frames 100 --device cuda --dtype bfloat16 --json "$out/peer_gen.json"

# The whole demo (model, codec, encoding, training, samples, outputs).
demo=$(mktemp -d)
if [ -n "$demo_data" ]; then
  mkdir -p "$demo/data" && cp -r "$demo_data"/. "$demo/data/"
fi
start=$(date +%s%N)
g demo --dir "$demo" 2>&1 | tail -25
echo "demo wall time: $(( ($(date +%s%N) - start) / 1000000 )) ms"
ls "$demo"/run* "$demo"/runs 2>/dev/null | head -20 || true
