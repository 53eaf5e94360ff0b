#!/usr/bin/env bash
# Call 3 of the second machine (same warm machine as call4.sh and
# call5.sh), run inline: csm with and without the grouped projections,
# every case, twice each in turn; then the peer under torch.compile at
# every case.
export LIMIT=540; CALL=6; . bench/gpu_calls/common.sh; export MLX_PTX_CACHE_DIR=/tmp/ptx
all8="--cases 1x130,8x130,4x500,16x250 --decoder-fraction 0.0625,1.0"
for i in 1 2; do bt grouped-$i $all8 >/dev/null; bt plain-$i $all8 --grouped-proj false > /dev/null; done
peer 16x250:0.0625,8x130:0.0625,8x130:1.0,16x250:1.0,4x500:0.0625,4x500:1.0,1x130:0.0625,1x130:1.0 12 > /dev/null; pack; tail -8 $R/progress.txt
