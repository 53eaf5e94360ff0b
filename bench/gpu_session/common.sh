# Sourced by callN.sh: a time budget, a progress log and results re-packed
# into $OUT so that a call cut off still returns what it measured.
set -uo pipefail
T0=$(date +%s); LIMIT=${LIMIT:-570}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
R=/tmp/r; mkdir -p $R /tmp/g
pack() { (cd /tmp && tar -czf $OUT/r$CALL.tgz r) 2>/dev/null; }
note() { echo "[call $CALL, $(( $(date +%s) - T0 )) s, $(left) left] $*" | tee -a $R/progress.txt; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
rate() { for f in $R/torch_matmul.json /tmp/full/torch_matmul.json; do [ -f $f ] && { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tflops'])" $f; return; }; done; echo 0; }
# One csm bench-train run of the compiled step, tagged; 3 warm-up steps and
# STEPS timed (default 15).
bt() { local tag=$1; shift; timeout $(( $(left) - 10 )) scripts/gpu-check.sh /tmp/g/cuda ${CSM_BIN:-/tmp/g/csm} bench-train --size csm1b --dtype bf16 \
  --decoder-rule hf --modes compiled --warmup 3 --steps ${STEPS:-15} --peak-tflops $(rate) --json-dir $R --tag $tag "$@" >> $R/csm_$tag.log 2>&1
  note "$tag exit $?"; grep -h "csm bench-train: Csm1b" $R/csm_$tag.log | tail -8; pack; }
# The peer (transformers + peft) under torch.compile at the given cases,
# until DEADLINE seconds before the call's limit.
peer() { local cases=$1 stop=$2
  timeout $(( $(left) - stop + 5 )) python3 bench/peer/train_step.py --mode same-work --device cuda --dtype bfloat16 \
    --cases $cases --warmup 3 --steps 15 --compile --deadline-epoch $(( T0 + LIMIT - stop )) \
    --json-dir $R --tag compiled >> $R/peer_compiled.log 2>&1
  note "peer compiled ($cases) exit $?"; grep -E "^== case|step s median|skip" $R/peer_compiled.log | tail -12; pack; }
# Call 2's start: libmlx from the two carried parts (.gpuA's, copied by
# call 1, and .gpuB's), csm of .gpuB/commit.txt, and an earlier build to
# compare with (prepare.sh's BASE_BIN) where one was carried.
assemble() {
  if [ ! -d /tmp/g/cuda/mlx ]; then
    cat /tmp/g/cuda.aa .gpuB/cuda.ab > /tmp/g/cuda.tar.xz && mkdir -p /tmp/g/cuda && tar -C /tmp/g/cuda -xJf /tmp/g/cuda.tar.xz \
      && rm /tmp/g/cuda.tar.xz || { note "assembly failed"; return 1; }
  fi
  xz -dc .gpuB/csm.xz > /tmp/g/csm && chmod +x /tmp/g/csm || { note "csm failed"; return 1; }
  grep -aq "(commit $(cat .gpuB/commit.txt))" /tmp/g/csm || { note "csm is not the build of $(cat .gpuB/commit.txt)"; return 1; }
  [ ! -f .gpuB/csm_base.xz ] || { xz -dc .gpuB/csm_base.xz > /tmp/g/csm_base && chmod +x /tmp/g/csm_base; }
  cp .gpuB/commit.txt $R/; note "assembled, csm of $(cat .gpuB/commit.txt)"
}
