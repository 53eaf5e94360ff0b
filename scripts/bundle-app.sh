#!/usr/bin/env bash
# Builds the Linux bundles of CSM Studio with the project's Tauri CLI and
# proves the .deb works on its own:
#   1. `tauri build --bundles deb` (release; --debug reuses the E2E's debug
#      build); beforeBundleCommand stages libmlx & co (scripts/stage-mlx-libs.sh)
#   2. dpkg-deb -x into a temp dir; the package must hold usr/bin/csm-app and
#      usr/lib/csm-studio/libmlx.so, and depend on libopenblas0-pthread
#   3. the binary's RUNPATH starts with $ORIGIN/../lib/csm-studio, and ldd
#      resolves libmlx.so (and its lapack/gfortran/quadmath) inside the tree
#   4. with the build's wheel cache (~/.cache/csm-mlx) hidden by an empty
#      bind mount (private mount namespace: other processes keep seeing it),
#      ldd still resolves everything, and the binary starts under Xvfb and
#      stays up for 10 s; LD_DEBUG=libs shows where libmlx.so came from; a
#      screenshot of the window goes to $OUT/launch.png
#   5. --e2e: the whole tauri-driver E2E (tests/e2e) against the extracted
#      binary, cache still hidden (screenshots to $OUT, not docs/images)
#   --bundle-only: `tauri bundle` around the binary already in target/<profile>
#      (scripts/test-app.sh uses `--debug --bundle-only` on the E2E's binary)
#   6. --appimage: also `tauri build --bundles appimage` (tauri downloads
#      linuxdeploy from GitHub; fails without network access to github.com)
# Usage: scripts/bundle-app.sh [--debug] [--bundle-only] [--e2e] [--appimage]
# Needs (Debian 12): the app build deps (docs/desktop-app.md), patchelf,
# xvfb, imagemagick; root or unprivileged user namespaces for `unshare -m`.
# The last line is PASS or the failing check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=release
E2E=0
APPIMAGE=0
ACTION=build
for a in "$@"; do
  case $a in
    --debug) PROFILE=debug ;;
    --bundle-only) ACTION=bundle ;;
    --e2e) E2E=1 ;;
    --appimage) APPIMAGE=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo; echo "==> $* ($(date +%T))"; }
for tool in patchelf readelf dpkg-deb xvfb-run unshare import identify; do
  command -v $tool >/dev/null || fail "$tool is not installed (apt-get install patchelf binutils dpkg xvfb util-linux imagemagick)"
done
export PATH="$HOME/.cargo/bin:$PATH"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/bundle-check
rm -rf "$OUT"
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

DEBUG_FLAG=
[ "$PROFILE" = debug ] && DEBUG_FLAG=--debug
step "tauri $ACTION $DEBUG_FLAG --bundles deb"
T0=$(date +%s)
rm -rf "$TARGET/$PROFILE/bundle/deb"
npm --prefix ui run tauri -- $ACTION $DEBUG_FLAG --bundles deb
BUILD_SECS=$(( $(date +%s) - T0 ))

shopt -s nullglob
debs=("$TARGET/$PROFILE/bundle/deb/"*.deb)
[ ${#debs[@]} = 1 ] || fail "expected one .deb in $TARGET/$PROFILE/bundle/deb, found ${#debs[@]}"
DEB=${debs[0]}
echo "built $DEB ($(du -h "$DEB" | cut -f1)) in ${BUILD_SECS} s"

step "package contents"
dpkg-deb -I "$DEB" | sed -n '/Package:/,$p'
dpkg-deb -c "$DEB" | grep -E 'usr/(bin|lib)/' || true
grep -q 'libopenblas0-pthread' <<<"$(dpkg-deb -f "$DEB" Depends)" || fail "$DEB does not depend on libopenblas0-pthread"
TREE=$WORK/root
dpkg-deb -x "$DEB" "$TREE"
BIN=$TREE/usr/bin/csm-app
LIBS=$TREE/usr/lib/csm-studio
[ -x "$BIN" ] || fail "$DEB has no usr/bin/csm-app"
[ -f "$LIBS/libmlx.so" ] || fail "$DEB has no usr/lib/csm-studio/libmlx.so (was scripts/stage-mlx-libs.sh run as beforeBundleCommand?)"

step "RUNPATH and ldd of the extracted binary"
readelf -d "$BIN" | grep -E 'RUNPATH|RPATH|NEEDED.*mlx'
readelf -d "$LIBS/libmlx.so" | grep -E 'RUNPATH|RPATH|NEEDED'
runpath=$(readelf -d "$BIN" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
[[ $runpath == '$ORIGIN/../lib/csm-studio:'* ]] || fail "RUNPATH of usr/bin/csm-app is '$runpath', expected \$ORIGIN/../lib/csm-studio first"
check_ldd() { # $1: label
  local out
  out=$(ldd "$BIN")
  grep -E 'mlx|lapack|gfortran|quadmath|blas|not found' <<<"$out" || true
  if grep -q 'not found' <<<"$out"; then fail "$1: unresolved libraries"; fi
  grep -q "libmlx.so => $TREE/usr/bin/../lib/csm-studio/libmlx.so" <<<"$out" ||
    fail "$1: libmlx.so does not resolve inside the extracted package"
  for lib in liblapack gfortran quadmath; do
    grep -q "$lib[^ ]* => $TREE/" <<<"$out" || fail "$1: $lib does not resolve inside the extracted package"
  done
  if grep -q 'csm-mlx' <<<"$out"; then fail "$1: something resolves from the csm-mlx wheel cache"; fi
  local blas
  blas=$(sed -n 's/.*libblas.so.3 => \([^ ]*\).*/\1/p' <<<"$out")
  [[ -n $blas && $(readlink -f "$blas") == *openblas* ]] ||
    fail "$1: libblas.so.3 resolves to '$blas', not OpenBLAS (install libopenblas0-pthread)"
  echo "$1: OK (BLAS: $(readlink -f "$blas"))"
}
check_ldd "ldd"

CACHE=${CSM_MLX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/csm-mlx}
step "with $CACHE hidden: ldd, launch under Xvfb (10 s), LD_DEBUG"
mkdir -p "$WORK/empty" "$WORK/home" "$WORK/data"
export BIN TREE WORK CACHE OUT
# Everything below runs in a private mount namespace in which $CACHE is an
# empty folder, so nothing can be loaded from the build's wheel.
hidden() {
  # Not root: a user namespace (-r) lets the bind mount happen anyway.
  local ns=(-m --propagation private)
  [ "$(id -u)" = 0 ] || ns+=(-r)
  unshare "${ns[@]}" bash -euo pipefail -c '
    if [ -d "$CACHE" ]; then mount --bind "$WORK/empty" "$CACHE"; fi
    [ -z "$(ls -A "$CACHE" 2>/dev/null)" ] || { echo "could not hide $CACHE" >&2; exit 1; }
    '"$1"
}
hidden "$(declare -f check_ldd fail); check_ldd 'ldd with the wheel cache hidden'"
hidden '
  export HOME=$WORK/home XDG_DATA_HOME=$WORK/data LANG=en_US.UTF-8
  xvfb-run -a -s "-screen 0 1280x1024x24" bash -c "
    LD_DEBUG=libs LD_DEBUG_OUTPUT=$WORK/ld \"$BIN\" > $WORK/app.log 2>&1 &
    pid=\$!
    sleep 10
    if ! kill -0 \$pid 2>/dev/null; then echo \"the app exited within 10 s:\"; cat $WORK/app.log; exit 1; fi
    import -window root $OUT/launch.png
    kill \$pid; wait \$pid 2>/dev/null || true
  "
'
colors=$(identify -format %k "$OUT/launch.png")
[ "$colors" -gt 50 ] || fail "the window looks blank ($colors colors in $OUT/launch.png)"
grep -h 'calling init: .*libmlx.so' "$WORK"/ld.* | head -1 | sed 's/^ *[0-9]*: *//' | tee "$OUT/libmlx-loaded-from.txt"
grep -qh "calling init: $TREE/usr/bin/../lib/csm-studio/libmlx.so" "$WORK"/ld.* ||
  fail "LD_DEBUG does not show libmlx.so loaded from the extracted package"
echo "launched for 10 s with the wheel cache hidden; screenshot: $OUT/launch.png"

if [ "$E2E" = 1 ]; then
  step "E2E (tests/e2e) on the extracted binary, wheel cache hidden"
  npm --prefix tests/e2e ci --no-audit --no-fund
  mkdir -p "$WORK/e2e/home" "$WORK/e2e/data"
  cat > "$WORK/e2e/home/.asoundrc" <<ASOUND
pcm.!default { type file slave.pcm "null" file "$WORK/e2e/sink.raw" format "raw" }
ctl.!default { type hw card 0 }
ASOUND
  T1=$(date +%s)
  hidden '
    export HOME=$WORK/e2e/home XDG_DATA_HOME=$WORK/e2e/data XDG_CACHE_HOME=$WORK/e2e/cache LANG=en_US.UTF-8 \
      CSM_APP_BIN=$BIN CSM_E2E_RUNS=$WORK/e2e/data/dev.csmstudio.app/runs CSM_E2E_SINK=$WORK/e2e/sink.raw \
      CSM_E2E_SHOTS=$OUT WORK=$WORK/e2e
    xvfb-run -a -s "-screen 0 1280x1024x24" tests/e2e/run.sh
  ' || { tail -50 "$WORK/e2e/tauri-driver.log" >&2; fail "E2E on the extracted .deb binary"; }
  echo "E2E on the extracted binary passed in $(( $(date +%s) - T1 )) s"
fi

if [ "$APPIMAGE" = 1 ]; then
  step "tauri build $DEBUG_FLAG --bundles appimage"
  npm --prefix ui run tauri -- build $DEBUG_FLAG --bundles appimage ||
    fail "AppImage bundling failed (tauri downloads linuxdeploy and its plugins from github.com; see the error above)"
  ls -la "$TARGET/$PROFILE/bundle/appimage/"
fi

echo "PASS: $DEB ($(du -h "$DEB" | cut -f1)), tauri $ACTION ${BUILD_SECS} s"
