#!/usr/bin/env bash
# Copies the MLX shared libraries the app binary was linked against into
# src-tauri/mlx/linux/, ready for the Linux bundles (tauri.linux.conf.json
# ships them as /usr/lib/csm-studio/*; the binary's RUNPATH starts with
# $ORIGIN/../lib/csm-studio, see src-tauri/build.rs).
#
# Tauri runs this as `beforeBundleCommand` (after cargo, before bundling);
# scripts/bundle-app.sh relies on that. It can also be run by hand:
#   scripts/stage-mlx-libs.sh [path/to/csm-app]
#
# What is staged, from the mlx-cpu wheel that mlx-sys unpacked:
#   libmlx.so, and the wheel's private liblapack/libgfortran/libquadmath
#   (Debian has no packages with these hashed sonames).
# The wheel's libblas is NOT shipped: libmlx.so and liblapack are patched to
# need Debian's `libblas.so.3` (OpenBLAS from the `libopenblas0-pthread`
# dependency of the .deb, through Debian's BLAS alternative), and libmlx.so's
# RPATH is set to $ORIGIN so it finds the staged libraries beside it.
# Needs readelf (binutils) and patchelf (`apt-get install patchelf`).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/src-tauri/mlx/linux"

fail() {
  echo "stage-mlx-libs: $*" >&2
  exit 1
}

bin=${1:-}
if [[ -z $bin ]]; then
  profile=release
  [[ ${TAURI_ENV_DEBUG:-false} == true ]] && profile=debug
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  if [[ -n ${TAURI_ENV_TARGET_TRIPLE:-} && -x $target_dir/$TAURI_ENV_TARGET_TRIPLE/$profile/csm-app ]]; then
    bin=$target_dir/$TAURI_ENV_TARGET_TRIPLE/$profile/csm-app
  else
    bin=$target_dir/$profile/csm-app
  fi
fi
[[ -x $bin ]] || fail "$bin is not a built csm-app binary; build it first (npm --prefix ui run tauri -- build)"
command -v patchelf >/dev/null || fail "patchelf is not installed; run: apt-get install patchelf"
command -v readelf >/dev/null || fail "readelf is not installed; run: apt-get install binutils"

# The wheel's lib dir is the RUNPATH entry of the binary that holds libmlx.so.
runpath=$(readelf -d "$bin" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
[[ -n $runpath ]] || fail "$bin has no RUNPATH; src-tauri/build.rs sets one, rebuild the app"
[[ $runpath == '$ORIGIN/../lib/csm-studio:'* ]] ||
  fail "$bin RUNPATH is '$runpath', expected it to start with \$ORIGIN/../lib/csm-studio (src-tauri/build.rs); rebuild the app"
lib_dir=
IFS=: read -r -a entries <<<"$runpath"
for d in "${entries[@]}"; do
  if [[ $d != '$ORIGIN'* && -f $d/libmlx.so ]]; then
    lib_dir=$d
    break
  fi
done
[[ -n $lib_dir ]] || fail "no RUNPATH entry of $bin ($runpath) holds libmlx.so; rebuild so mlx-sys unpacks its wheel"
wheel_libs=$(cd "$lib_dir/../../mlx_cpu.libs" 2>/dev/null && pwd) ||
  fail "$lib_dir/../../mlx_cpu.libs is missing: $lib_dir is not an unpacked mlx-cpu wheel"

rm -rf "$out"
mkdir -p "$out"
cp "$lib_dir/libmlx.so" "$out/"
# Everything libmlx.so needs from the wheel's private folder, except BLAS.
for lib in $(readelf -d "$lib_dir/libmlx.so" "$wheel_libs"/*.so* |
  sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u); do
  case $lib in
    libblas-*) ;;
    *) if [[ -f $wheel_libs/$lib ]]; then cp -L "$wheel_libs/$lib" "$out/"; fi ;;
  esac
done
for f in "$out"/*; do
  chmod 0644 "$f"
  blas=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(libblas-[^]]*\)\]/\1/p')
  if [[ -n $blas ]]; then patchelf --replace-needed "$blas" libblas.so.3 "$f"; fi
done
patchelf --set-rpath '$ORIGIN' "$out/libmlx.so"

# Every dependency must resolve: the staged files, or Debian's own libraries.
if missing=$(ldd "$out"/*.so* | grep 'not found'); then
  fail "staged libraries have unresolved dependencies:
$missing"
fi
echo "stage-mlx-libs: staged $(ls "$out" | tr '\n' ' ')from $lib_dir into $out"
