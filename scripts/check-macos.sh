#!/usr/bin/env bash
# macOS check lane: `cargo check` and `cargo clippy -D warnings` of every
# crate (src-tauri included, all targets) for aarch64-apple-darwin, from
# Linux, so the code behind `cfg(target_os = "macos")` compiles and lints.
#
# A type-check, not a build: mlx-sys generates only its bindings (no MLX
# wheel, no CMake, nothing links: `bindings_only` in crates/mlx-sys/build.rs).
# Not checked here: the Metal build, linking, the .app/.dmg (the macos-14 job
# of .github/workflows/ci.yml does those), and the C of ring and
# objc2-exception-helper and libz-sys (see below).
#
# Own target dir (target/macos-check), so the Linux build is never
# invalidated. Where the target's standard library cannot be installed
# (no rustup, no network), prints a line starting with SKIPPED: and exits 0.
# Usage: scripts/check-macos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-apple-darwin
START=$(date +%s)

if ! command -v rustup >/dev/null; then
  echo "SKIPPED: macOS check lane: rustup not found, so the $TARGET standard library cannot be installed"
  exit 0
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  if ! out=$(rustup target add "$TARGET" 2>&1); then
    echo "SKIPPED: macOS check lane: \`rustup target add $TARGET\` failed: $(tail -1 <<<"$out")"
    exit 0
  fi
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/macos-check
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}
# Also automatic for a macOS target on a non-macOS host; explicit here.
export MLX_SYS_BINDINGS_ONLY=1
# tauri-build copies bundle.macOS.frameworks (libmlx.dylib from the mlx-metal
# wheel) next to the binary; there is no wheel in this mode.
export TAURI_CONFIG='{"bundle":{"macOS":{"frameworks":[]}}}'
# Only build scripts and proc macros become machine code in a check:
# unoptimized and without debug info, the cold check took 4m39s, not 15m.
export CARGO_PROFILE_DEV_OPT_LEVEL=0 CARGO_PROFILE_DEV_DEBUG=0
args=(--workspace --all-targets --target "$TARGET"
  --config 'profile.dev.package."*".opt-level=0')
# These build scripts compile C, assembly or Objective-C for the target (ring,
# objc2-exception-helper; libz-sys builds zlib from source when it finds no
# zlib for the target, where macOS has its own),
# which needs Apple's clang and SDK: a `links` override replaces each one (its
# library only matters when linking, which a check never does). So that code
# is not compiled here; their Rust is.
links=$(cargo metadata --format-version 1 --filter-platform "$TARGET" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] in ("ring", "objc2-exception-helper", "libz-sys") and p.get("links"):
        print(p["links"])')
for l in $links; do
  args+=(--config "target.$TARGET.$l.rustc-link-lib=[]")
done

echo "==> cargo check --workspace --all-targets --target $TARGET"
cargo check "${args[@]}"
echo "==> cargo clippy --workspace --all-targets --target $TARGET -- -D warnings"
cargo clippy "${args[@]}" -- -D warnings
echo "PASS: macOS check lane ($TARGET, $CARGO_TARGET_DIR) in $(($(date +%s) - START)) s"
