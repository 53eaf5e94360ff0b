#!/usr/bin/env bash
# Issue 19: MLX_MAX_MB_PER_BUFFER at real batch sizes (csm sets 32 MB, chosen at batch 1).
set -uo pipefail
T0=$(date +%s); LIMIT=${LIMIT:-330}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
R=/tmp/r9; mkdir -p $R
pack() { tar -C /tmp -czf $OUT/r.tgz r9 2>/dev/null; }
cd /tmp/g && cat q.aa q.ab | tar -x && mkdir -p cuda && tar -C cuda -xJf stage/cuda.tar.xz && xz -dc stage/csm.xz > csm && chmod +x csm && cd - >/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/device.txt
g() { scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm "$@"; }
echo "[$(left) s left] start" >> $R/progress.txt
for mb in 32 4096 128 512 32; do
  [ $(left) -gt 45 ] || break
  MLX_MAX_MB_PER_BUFFER=$mb timeout $(( $(left) - 10 )) bash -c "$(declare -f g); g bench-train --size csm1b --dtype bf16 --cases 16x250,8x130 --decoder-fraction 0.0625,1.0 --decoder-rule hf --modes compiled --warmup 3 --steps 5 --json-dir $R --tag mb$mb" >> $R/mb$mb.log 2>&1
  echo "[$(left) s left] mb $mb exit $?" >> $R/progress.txt
  pack
done
grep -h "csm bench-train: Csm1b" $R/*.log | sed 's/ (min.*MFU)//' >> $R/progress.txt
pack
# Then, on the same warm machine (second call):
# R=/tmp/r9; g() { scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm "$@"; }; for mb in 16 8 32 16 8; do MLX_MAX_MB_PER_BUFFER=$mb timeout 40 bash -c "$(declare -f g); g bench-train --size csm1b --dtype bf16 --cases 16x250,8x130 --decoder-fraction 0.0625,1.0 --decoder-rule hf --modes compiled --warmup 3 --steps 5 --json-dir $R/b --tag mb$mb" 2>&1 | grep "csm bench-train: Csm1b"; done
