# Call 5 (same warm machine, sent inline as the run's command; kept here):
CALL=5; . bench/gpu_calls/common.sh
export MLX_PTX_CACHE_DIR=/tmp/ptx
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
old() { local tag=$1; shift; timeout $(( $(left) - 10 )) scripts/gpu-check.sh /tmp/g/cuda /tmp/g/csm-old bench-train --size csm1b --dtype bf16 --decoder-rule hf --modes compiled --warmup 3 --steps 15 --peak-tflops $(rate) --json-dir $R --tag $tag "$@" >> $R/csm_$tag.log 2>&1; note "$tag exit $?"; pack; }
export STEPS=15
bt lora-bf16-2 $all8
old old-3 $all8
bt new-3 $all8
