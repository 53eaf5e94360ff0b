#!/usr/bin/env bash
# The README's first command: installs prerequisites, builds the `csm` tool
# and runs the product's main job on an embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -p csm-cli
exec target/release/csm info "$@"
