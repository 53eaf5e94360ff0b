# Call 3 on machine G, typed inline (the last of the device time): the
# decoder's MLPs in 3 pieces, twice, and 1 piece between (cut off by the
# time limit), every frame only.
CALL=3 LIMIT=95 OUT=$OUT bash -c '. bench/gpu_calls/common.sh; for t in p3r1:3 p1r3:1 p3r2:3; do tag=${t%%:*}; n=${t##*:}; timeout $(( $(left) - 8 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm bench-train --size csm1b --dtype bf16 --decoder-rule hf --warmup 3 --steps 15 --json-dir $R --tag $tag --cases 1x130,8x130,4x500,16x250 --decoder-fraction 1.0 --modes compiled --mlp-pieces $n >> $R/csm_$tag.log 2>&1; note "$tag exit $?"; grep -h "Compiled on" $R/csm_$tag.log | sed "s/ LoRA,//; s/, [0-9.]* frames.s.*loss/ loss/; s/, weights.*peak/ peak/; s/, max RSS.*//"; pack; done'
