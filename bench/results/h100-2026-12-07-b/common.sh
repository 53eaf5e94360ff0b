# Sourced by callN.sh: a time budget, a progress log and results re-packed
# into $OUT so that a call cut off still returns what it measured.
set -uo pipefail
T0=$(date +%s); LIMIT=${LIMIT:-560}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
R=/tmp/r; mkdir -p $R /tmp/g
pack() { (cd /tmp && tar -czf $OUT/r$CALL.tgz r) 2>/dev/null; }
note() { echo "[call $CALL, $(( $(date +%s) - T0 )) s, $(left) left] $*" | tee -a $R/progress.txt; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
g() { scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm "$@"; }
rate() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tflops'])" $R/torch_matmul.json 2>/dev/null || echo 0; }
# One csm bench-train run of the compiled step, tagged; STEPS timed steps
# (default 5) after 3 warm-up steps.
bt() { local tag=$1; shift; timeout $(( $(left) - 10 )) bash -c "$(declare -f g); g bench-train --size csm1b --dtype bf16 --decoder-rule hf --modes compiled --warmup 3 --steps ${STEPS:-5} --peak-tflops $(rate) --json-dir $R --tag $tag $*" >> $R/csm_$tag.log 2>&1; note "$tag exit $?"; grep -h "csm bench-train: Csm1b" $R/csm_$tag.log | tail -4; pack; }
