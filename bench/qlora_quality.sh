#!/usr/bin/env bash
# Does a quantized base (QLoRA, --quantize 4/8) hurt? The demo's dataset
# (espeak-ng speech, the demo's small random CSM) trained three times with
# the same seed, data and schedule: full-precision base, 8-bit, 4-bit.
# Prints the validation loss of each at every validation and the final
# ratio to the full-precision run. A benchmark, not a test.
#
#   bench/qlora_quality.sh OUTDIR [CSM]     (CSM defaults to target/debug/csm)
#
# ENCODER=PATH (resemblyzer's pretrained.pt) adds voice scores: the same
# three runs speak two prompts at step 0 and at every checkpoint, and the
# speaker similarity of each (base model, checkpoints, best) is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/qlora_quality.sh OUTDIR [CSM]}
csm=${2:-target/debug/csm}
mkdir -p "$out"
{
  echo "# $(date -u +%FT%TZ) $(uname -m)"
  echo "# cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"
if [ ! -f "$out/demo/model/model.safetensors" ]; then
  "$csm" demo --dir "$out/demo" --epochs 1 > "$out/demo.log" 2>&1
fi
d=$out/demo
voice=(--no-voice-scores)
if [ -n "${ENCODER:-}" ]; then
  voice=(--speaker-encoder "$ENCODER" --voice-prompt "Hello there." --voice-prompt "See you soon." --save-every 20)
fi
for q in none 8 4; do
  flags=()
  [ "$q" = none ] || flags=(--quantize "$q")
  rm -rf "$out/run_$q"
  "$csm" finetune-lora --model-path "$d/model" --audio-dir "$d/data/audio" \
    --transcript-dir "$d/data/transcripts" --output-dir "$out/run_$q" \
    --epochs 12 --batch-size 4 --learning-rate 2e-3 --warmup-steps 2 \
    --val-split 0.2 --val-every 6 --decoder-fraction 1.0 \
    --seed 7 "${voice[@]}" "${flags[@]}" > "$out/run_$q.log" 2>&1
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
val = {}
for q in ["none", "8", "4"]:
    val[q] = {}
    for line in (out / f"run_{q}" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("event") == "validation":
            val[q][r["data"]["step"]] = r["data"]["loss"]
steps = sorted(val["none"])
print("validation loss on the demo (same seed, data, schedule)")
print(f"{'step':>6} {'full precision':>15} {'8-bit base':>11} {'4-bit base':>11}")
for s in steps:
    print(f"{s:>6} {val['none'][s]:>15.4f} {val['8'].get(s, float('nan')):>11.4f} "
          f"{val['4'].get(s, float('nan')):>11.4f}")
last = steps[-1]
for q in ["8", "4"]:
    print(f"{q}-bit base, last validation: {val[q][last] / val['none'][last]:.4f}x the full-precision run's")
voice = {}
for q in ["none", "8", "4"]:
    for line in (out / f"run_{q}" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("event") == "voiceScores":
            d = r["data"]
            voice.setdefault(q, {})[d["step"]] = (d["summary"]["similarity"], d.get("bestStep"))
if voice:
    print("speaker similarity of the spoken prompts (resemblyzer), step 0 = base model")
    steps = sorted(voice["none"])
    print(f"{'step':>6} {'full precision':>15} {'8-bit base':>11} {'4-bit base':>11}")
    for s in steps:
        row = [voice[q].get(s, (float("nan"), None))[0] for q in ["none", "8", "4"]]
        print(f"{s:>6} {row[0]:>15.4f} {row[1]:>11.4f} {row[2]:>11.4f}")
    for q in ["none", "8", "4"]:
        best = voice[q][max(voice[q])][1]
        print(f"{q}: best checkpoint step {best}, similarity {voice[q][best][0]:.4f}")
PY
