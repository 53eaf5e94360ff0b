#!/usr/bin/env bash
# 2026-12-06 19:40 UTC, AMD EPYC (2 cores, 24 GB), OPENBLAS_CORETYPE not set: OpenBLAS picks its Cooperlake kernels for this CPU (csm info)
bench/voice/run.sh prepare /tmp/vpack
nice -n 19 bench/voice/run.sh run /tmp/vpack /tmp/vbench /tmp/csm-bench 20 8   # /tmp/csm-bench: target/release/csm built 19:07 UTC
