#!/usr/bin/env bash
# Call 3 (and 4, if needed; same warm machine): waits for call 2's
# bench/run_gpu.sh and brings its output back.
CALL=${CALL:-3}; . bench/gpu_calls/common.sh
while [ ! -f /tmp/full.rc ] && [ $(left) -gt 25 ]; do sleep 5; done
note "run_gpu.sh $( [ -f /tmp/full.rc ] && echo "ended $(cat /tmp/full.rc)" || echo "still running"): $(grep '^== \[' /tmp/full.log | tail -1)"
cp /tmp/full.log /tmp/full/run_gpu.log 2>/dev/null
rm -f /tmp/full/ktrace.so /tmp/full/prof/peer_eager_*
(cd /tmp && tar -czf $OUT/full.tgz full) ; pack
tail -70 /tmp/full.log
