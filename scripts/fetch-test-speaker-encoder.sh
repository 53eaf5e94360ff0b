#!/usr/bin/env bash
# Fetches resemblyzer's speaker-encoder weights (resemblyzer/pretrained.pt
# inside the PyPI wheel resemblyzer==0.1.4) into target/test-data/ for the
# speaker tests (crates/csm-core/tests/speaker_*.rs):
#   CSM_TEST_SPEAKER_ENCODER=target/test-data/resemblyzer-pretrained.pt cargo nextest run -p csm-core --test speaker_parity
# The file's SHA-256 is checked. Idempotent: does nothing when it is there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$root/target/test-data"
dest="$dest_dir/resemblyzer-pretrained.pt"
sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
if [[ -s "$dest" ]]; then
    echo "$dest already present"
    exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" resemblyzer==0.1.4
wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "pip downloaded no wheel into $work" >&2
    exit 1
fi
mkdir -p "$dest_dir"
"$python" - "$wheel" "$dest.tmp" "$sha256" <<'PY'
import hashlib, sys, zipfile
wheel, out, want = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read("resemblyzer/pretrained.pt")
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"resemblyzer/pretrained.pt has SHA-256 {got}, expected {want}")
with open(out, "wb") as f:
    f.write(data)
PY
mv "$dest.tmp" "$dest"
echo "wrote $dest (from $(basename "$wheel"))"
