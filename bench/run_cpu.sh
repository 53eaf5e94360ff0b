#!/usr/bin/env bash
# CPU training benchmark: csm (mlx-rs) beside transformers + peft in the same
# run, CSM-1B shape with random weights, f32, LoRA r8 on q_proj/v_proj,
# batch 1, 151 frames. Run it on a quiet machine (nothing else compiling).
#
#   bench/run_cpu.sh OUTDIR [PYTHON]
#
# PYTHON is a Python with torch, transformers and peft (bench/peer/README.md).
# Writes one JSON per run into OUTDIR and prints the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/run_cpu.sh OUTDIR [PYTHON]}
py=${2:-/root/venvs/csm-fixtures/bin/python}
mkdir -p "$out"
csm=target/release/csm
cargo build --release -p csm-cli
echo "# $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg) (run this on a quiet machine)"
threads=$(nproc)
steps=${STEPS:-3}

# The machine's setting (Haswell kernels), as tests and CI use it.
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
$csm bench-train --size csm1b --decoder-fraction 0.0625 --steps "$steps" --json "$out/ours_116_haswell.json"
$csm bench-train --size csm1b --decoder-fraction 1.0 --steps "$steps" --json "$out/ours_1_haswell.json"
# The same step through mx.compile (fixed batch, one trace).
$csm bench-train --size csm1b --decoder-fraction 0.0625 --steps "$steps" --compile --json "$out/ours_116_haswell_compiled.json"
# OpenBLAS's own CPU detection (AVX-512 kernels on this EPYC): checked
# against the Haswell results by the loss printed in the JSON.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $csm bench-train --size csm1b --decoder-fraction 0.0625 --steps "$steps" --json "$out/ours_116_native.json"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $csm bench-train --size csm1b --decoder-fraction 1.0 --steps "$steps" --json "$out/ours_1_native.json"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $csm bench-train --size csm1b --decoder-fraction 0.0625 --steps "$steps" --compile --json "$out/ours_116_native_compiled.json"

"$py" bench/peer/train_step.py --mode same-work --decoder-frames 8 --threads "$threads" --steps "$steps" --json "$out/peer_116.json"
"$py" bench/peer/train_step.py --mode same-work --decoder-fraction 1.0 --threads "$threads" --steps "$steps" --json "$out/peer_1.json"
"$py" bench/peer/train_step.py --mode defaults --threads "$threads" --steps "$steps" --json "$out/peer_defaults.json"

# The many-row kernels csm trains with on AVX2 CPUs, beside sgemm.
g++ -O3 -std=c++20 -fno-trapping-math -o "$out/gemm" bench/gemm.cpp \
  /usr/lib/x86_64-linux-gnu/libopenblas.so.0 -lpthread
"$out/gemm" | tee "$out/gemm.txt"
rm "$out/gemm"

# Generation: 25 frames (2 s of audio), sampling, EOS ignored on both sides.
$csm bench-generate --size csm-1b --frames 25 --dtype f32 --json > "$out/ours_gen.json"
"$py" bench/peer/generate.py --frames 25 --threads "$threads" --json "$out/peer_gen.json"
$csm bench-generate --size csm-1b --frames 25 --dtype bf16 --json > "$out/ours_gen_bf16.json"
"$py" bench/peer/generate.py --frames 25 --threads "$threads" --dtype bfloat16 --json "$out/peer_gen_bf16.json"

python3 bench/compare.py "$out"
