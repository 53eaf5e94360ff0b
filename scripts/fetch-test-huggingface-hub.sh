#!/usr/bin/env bash
# Installs PyPI huggingface_hub (pinned) into target/test-data/huggingface_hub
# for csm-hub's interop test (crates/csm-hub/tests/python_interop.rs, which
# runs this script itself): Python downloads from the mock hub into a cache
# that ours reads offline, and the other way round.
#   PYTHONPATH=target/test-data/huggingface_hub python3 -c 'import huggingface_hub'
# Idempotent: does nothing when that version is already there. `pip install
# --target` leaves the system Python untouched (and needs no venv package).
set -euo pipefail

version="2.4.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/target/test-data/huggingface_hub"
marker="$dest/.installed-$version"
# Tests running in parallel call this at once: one installs, the others wait.
mkdir -p "$root/target/test-data"
exec 9>"$root/target/test-data/.huggingface_hub.lock"
flock 9
if [[ -f "$marker" ]]; then
    echo "huggingface_hub $version already in $dest"
    exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "error: '$python -m pip' is not available: install python3-pip (scripts/setup.sh does)" >&2
    exit 1
fi
rm -rf "$dest.tmp"
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dest.tmp" "huggingface_hub==$version"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
touch "$marker"
echo "installed huggingface_hub $version into $dest"
