#!/usr/bin/env bash
# Wall time of `csm voice` by stage (issue 21): 10 minutes of espeak-ng
# speech as long MP3 files without transcripts, CSM-1B shape with random
# weights, random Mimi, a random Whisper large-v3-turbo shape, the real
# speaker encoder; 500 steps at batch 8. A benchmark, not a test.
#
#   bench/voice/run.sh prepare PACK_DIR
#       HERE (needs espeak-ng, ffmpeg, python3): writes PACK_DIR/audio/*.mp3
#       (about 10 minutes in 5 files), the Llama 3.2 tokenizer, openai-whisper's
#       multilingual.tiktoken and resemblyzer's pretrained.pt (from
#       target/test-data/ and tests/fixtures/): about 30 MB in all.
#   bench/voice/run.sh run PACK_DIR OUT_DIR CSM_BINARY [STEPS] [BATCH]
#       ON THE TARGET (no internet; no espeak-ng or ffmpeg needed): writes the
#       random models under OUT_DIR/models-csm1b (csm bench-voice-models), runs
#       `csm voice` with explicit paths (so no download stage), STEPS (500)
#       at batch BATCH (8), and writes OUT_DIR/voice-bench.json: the run's
#       summary.json (seconds per stage, in all) with the machine and the
#       settings. Logs: OUT_DIR/*.log.
#   bench/voice/run.sh continue PACK_DIR OUT_DIR CSM_BINARY [STEPS] [BATCH]
#       Continues a `run` that was stopped (e.g. `timeout -s INT`, as a
#       machine with a per-command time limit needs): the same `csm voice`
#       call on the same OUT_DIR, which resumes each stage; the stage
#       seconds in voice-bench.json add up both parts (wall_s is this part's).
#   bench/voice/run.sh run-tiny PACK_DIR OUT_DIR CSM_BINARY
#       The run part at tiny scale (the demo's CSM, Whisper tiny shape, one
#       epoch of at least 4 steps at batch 8, scored at step 0 and at the end,
#       one short voice prompt) to check the script on a CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

cmd=${1:?usage: bench/voice/run.sh prepare PACK_DIR | run PACK_DIR OUT_DIR CSM_BINARY [STEPS] [BATCH] | continue PACK_DIR OUT_DIR CSM_BINARY [STEPS] [BATCH] | run-tiny PACK_DIR OUT_DIR CSM_BINARY}

prepare() {
  local pack=$1
  mkdir -p "$pack/audio"
  local tmp
  tmp=$(mktemp -d)
  # 5 files of about 2 minutes: the same sentences, varied by the file
  # number and espeak-ng's speed, so each file is its own recording.
  local sentences=(
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells."
    "A journey of a thousand miles begins with a single step, taken on a cold morning."
    "Peter Piper picked a peck of pickled peppers from the garden behind the old mill."
    "All that glitters is not gold, and not all those who wander are lost in the woods."
    "The rain in Spain stays mainly in the plain, or so the old song would have us believe."
    "Early to bed and early to rise makes a man healthy, wealthy and rather tired of proverbs."
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood all afternoon?"
    "The five boxing wizards jump quickly over the fence before the bell rings again."
    "Sphinx of black quartz, judge my vow, said the traveller to the silent statue."
    "Every cloud has a silver lining, though some clouds are simply grey all the way through."
    "We walked along the river until the lights of the town came on one by one."
  )
  for f in 1 2 3 4 5; do
    : > "$tmp/text$f.txt"
    # The 12 sentences, then the first 8 again: about 2 minutes.
    for s in "${sentences[@]}" "${sentences[@]:0:8}"; do
      echo "Part $f. $s" >> "$tmp/text$f.txt"
    done
    espeak-ng -s $((150 + 5 * f)) -f "$tmp/text$f.txt" -w "$tmp/talk$f.wav"
    ffmpeg -loglevel error -y -i "$tmp/talk$f.wav" -ar 22050 -b:a 32k "$pack/audio/talk$f.mp3"
  done
  rm -rf "$tmp"
  cp "$root/target/test-data/llama3.2-tokenizer.json" "$pack/tokenizer.json"
  cp "$root/target/test-data/resemblyzer-pretrained.pt" "$pack/pretrained.pt"
  python3 -m zipfile -e "$root/tests/fixtures/whisper/multilingual.tiktoken.zip" "$pack"
  python3 - "$pack" <<'EOF'
import subprocess, sys, pathlib, json
pack = pathlib.Path(sys.argv[1])
total = 0.0
for f in sorted((pack / "audio").glob("*.mp3")):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "csv=p=0", str(f)], capture_output=True, text=True, check=True)
    total += float(out.stdout)
size = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
print(json.dumps({"audio_minutes": round(total / 60, 2), "pack_bytes": size}))
EOF
}

run() {
  local pack=$1 out=$2 csm=$3 steps=$4 batch=$5 tiny=$6 fresh=$7
  mkdir -p "$out"
  # One folder per scale: bench-voice-models keeps files already there, so
  # a `run` after a `run-tiny` on the same OUT_DIR must not find tiny ones.
  local models="$out/models-csm1b" extra=()
  [ "$tiny" = 1 ] && models="$out/models-tiny"
  if [ "$tiny" = 1 ]; then
    [ "$fresh" = 1 ] && "$csm" bench-voice-models --dir "$models" --tiny --whisper-size tiny \
      --tiktoken "$pack/multilingual.tiktoken" 2>&1 | tee "$out/models.log"
    extra=(--tokenizer-path "$models/csm-1b/tokenizer.json" --voice-prompt "Hi." --save-every "$steps")
  else
    [ "$fresh" = 1 ] && "$csm" bench-voice-models --dir "$models" \
      --tiktoken "$pack/multilingual.tiktoken" 2>&1 | tee "$out/models.log"
    extra=(--tokenizer-path "$pack/tokenizer.json")
  fi
  if [ "$fresh" = 1 ]; then
    rm -rf "$out/voice"
  elif [ ! -f "$out/voice/voice.json" ]; then
    echo "error: $out/voice/voice.json not found: nothing to continue; use \`run\` first" >&2
    exit 1
  fi
  local start=$SECONDS
  # Greedy Whisper (no temperature fallback: a random model would retry
  # every window at six temperatures) in English, as a real user's run
  # with --language would be.
  "$csm" --log-level warning voice "$pack/audio" --output-dir "$out/voice" \
    --model-path "$models/csm-1b" --mimi-path "$models/mimi.safetensors" \
    --whisper-model "$models/whisper" --speaker-encoder "$pack/pretrained.pt" \
    --language en --temperature 0 --steps "$steps" --batch-size "$batch" \
    "${extra[@]}" 2>&1 | tee -i -a "$out/voice.log"
  local wall=$((SECONDS - start))
  "$csm" info > "$out/info.log" 2>&1 || true
  python3 - "$out" "$wall" <<'EOF' || cp "$out/voice/summary.json" "$out/voice-bench.json"
import json, sys, pathlib, platform
out = pathlib.Path(sys.argv[1])
summary = json.loads((out / "voice" / "summary.json").read_text())
state = json.loads((out / "voice" / "voice.json").read_text())
result = {
    "wall_s": int(sys.argv[2]),
    "stage_seconds": summary["stage_seconds"],
    "total_seconds": summary["total_seconds"],
    "steps": summary["steps"],
    "minutes_used": summary["minutes_used"],
    "utterances": summary["utterances"],
    "settings": {s["name"]: s["value"] for s in state["settings"]},
    "device": state["device"],
    "host": platform.node(),
    "info": (out / "info.log").read_text(),
}
(out / "voice-bench.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: result[k] for k in ("stage_seconds", "total_seconds", "steps")}, indent=2))
EOF
}

case $cmd in
  prepare) prepare "${2:?PACK_DIR}" ;;
  run) run "${2:?PACK_DIR}" "${3:?OUT_DIR}" "${4:?CSM_BINARY}" "${5:-500}" "${6:-8}" 0 1 ;;
  continue) run "${2:?PACK_DIR}" "${3:?OUT_DIR}" "${4:?CSM_BINARY}" "${5:-500}" "${6:-8}" 0 0 ;;
  run-tiny) run "${2:?PACK_DIR}" "${3:?OUT_DIR}" "${4:?CSM_BINARY}" 4 8 1 1 ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
