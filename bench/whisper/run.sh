#!/usr/bin/env bash
# Whisper transcription speed: csm (MLX) beside transformers on the same
# recording, the same model shapes (random weights) and the same work, in
# one run; prints the real-time factor (RTF = compute s / audio s) of each
# and the ratio. See bench/whisper/README.md.
#
#   bench/whisper/run.sh OUTDIR [--sizes "tiny large-v3-turbo"] [--seconds 120]
#       [--tokens 100] [--device cpu|cuda] [--csm BINARY] [--cuda-dir DIR]
#       [--python PY] [--threads N] [--audio WAV] [--repeat R]
#
# CPU (here):  bench/whisper/run.sh bench/results/cpu-DATE-whisper
# NVIDIA GPU:  bench/whisper/run.sh OUT --device cuda --cuda-dir /tmp/mlx-cuda-13 \
#                  --csm target/release/csm --python python3 --sizes "tiny large-v3-turbo"
#   (--cuda-dir: the unpacked mlx-cuda-13 wheel, as for scripts/gpu-check.sh,
#   which runs csm with that libmlx; python needs torch with CUDA and
#   transformers. No network: the weights are random, built on each side.)
#
# Equal work: consecutive 30 s windows, each decoding exactly --tokens tokens
# greedily with end of text suppressed (a random model would otherwise stop
# or run on at random), f32 on both sides, batch 1. --repeat R runs the two
# sides R times, alternating; the table takes each side's fastest run (on a
# shared machine the least disturbed one) and shows the slowest beside it.
# --threads "2 1" runs the peer with each torch thread count (on a loaded
# machine torch's 2 threads can be 6x slower than 1); its fastest counts.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bench/whisper/run.sh OUTDIR [options]}
shift
sizes="tiny" seconds=120 tokens=100 device=cpu csm="" cuda_dir="" audio="" repeat=1
py=/root/venvs/csm-fixtures/bin/python
[ -x "$py" ] || py=python3
threads=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) sizes=$2 ;;
    --seconds) seconds=$2 ;;
    --tokens) tokens=$2 ;;
    --device) device=$2 ;;
    --csm) csm=$2 ;;
    --cuda-dir) cuda_dir=$2 ;;
    --python) py=$2 ;;
    --threads) threads=$2 ;;
    --audio) audio=$2 ;;
    --repeat) repeat=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
mkdir -p "$out"
if [ -z "$csm" ]; then
  cargo build --release -p csm-cli
  csm=target/release/csm
fi
if [ "$device" = cuda ]; then
  [ -n "$cuda_dir" ] || { echo "--device cuda needs --cuda-dir (the unpacked mlx-cuda-13 wheel)" >&2; exit 2; }
  ours() { scripts/gpu-check.sh "$cuda_dir" "$csm" "$@"; }
else
  ours() { "$csm" "$@"; }
fi

# The vocabulary (openai-whisper's multilingual.tiktoken, a test fixture).
"$py" -m zipfile -e tests/fixtures/whisper/multilingual.tiktoken.zip "$out"
# The recording: espeak-ng speech with pauses, 16 kHz mono 16-bit.
if [ -z "$audio" ]; then
  audio=$out/speech16k.wav
  tmp=$(mktemp -d)
  i=0
  for s in "This recording is made for the transcription benchmark." \
           "It has sentences and pauses, as a podcast or a voice memo would." \
           "Whisper reads thirty seconds at a time and writes what it hears." \
           "Numbers like twenty three and four hundred are spoken too."; do
    espeak-ng -w "$tmp/s$i.wav" "$s"
    sox "$tmp/s$i.wav" -r 16000 -b 16 -c 1 "$tmp/p$i.wav" pad 0 0.8
    i=$((i + 1))
  done
  sox "$tmp"/p*.wav "$tmp/round.wav"
  # Repeat the round until it covers --seconds, then cut there.
  round=$(soxi -D "$tmp/round.wav")
  reps=$("$py" -c "import math; print(max(0, math.ceil($seconds / $round) - 1))")
  sox "$tmp/round.wav" "$audio" repeat "$reps" trim 0 "$seconds"
  rm -r "$tmp"
fi

{
  echo "# $(date -u +%FT%TZ) $(uname -m) device=$device"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg) (uptime: $(uptime | sed 's/.*load average/load average/'))"
  [ "$device" = cuda ] && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  ours info 2>&1 | grep -E 'MLX version|backend|default device|BLAS' || true
  echo "# audio: $audio, $(soxi -D "$audio" 2>/dev/null || echo '?') s; $tokens tokens per 30 s window; peer threads $threads"
} | tee "$out/machine.txt"

dtype_peer=float32
for size in $sizes; do
  for r in $(seq 1 "$repeat"); do
    ours bench-transcribe --size "$size" --audio "$audio" --tiktoken "$out/multilingual.tiktoken" \
      --tokens "$tokens" --json | tail -n 1 > "$out/csm_${size}_r$r.json"
    for t in $threads; do
      "$py" bench/whisper/peer.py --size "$size" --audio "$audio" --tokens "$tokens" \
        --device "$device" --dtype "$dtype_peer" --threads "$t" \
        --json "$out/peer_${size}_t${t}_r$r.json" > /dev/null 2> "$out/peer_${size}_t${t}_r$r.log"
    done
    echo "# $size run $r done, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
"$py" bench/whisper/compare.py "$out" | tee "$out/summary.txt"
