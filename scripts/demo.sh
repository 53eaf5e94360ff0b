#!/usr/bin/env bash
# The README's first command: installs prerequisites, builds the `csm` tool
# and runs the product's main job on an embedded default: a small CSM, a
# Mimi codec and an espeak-ng dataset built locally, fine-tuned with LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -p csm-cli
target/release/csm info --seconds 1
exec target/release/csm demo "$@"
