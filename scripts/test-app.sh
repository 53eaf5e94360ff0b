#!/usr/bin/env bash
# Tests of the CSM Studio desktop app, from a fresh Debian 12 machine:
#   1. system packages (docs/gui.md §1.1) and tauri-driver, when missing
#   2. UI: npm ci, svelte-check, vitest, production build (ui/dist)
#   3. Rust command tests (tauri::test mock runtime, no display) incl. a real
#      training run on the demo model
#   4. end to end: the real binary (ui/dist embedded) driven by tauri-driver +
#      WebKitWebDriver under Xvfb: demo assets, a real training run (step
#      counter, loss chart pixels), stop, playback through cpal into an ALSA
#      file sink, History; screenshots into docs/images/app-*.png
#   5. the .deb around that same binary (`tauri bundle --debug`, no second
#      build): extracted, libmlx must resolve inside it, and it must start
#      under Xvfb with the MLX wheel cache hidden (scripts/bundle-app.sh;
#      about 20 s). The release bundle is scripts/bundle-app.sh's job.
# Usage: scripts/test-app.sh [--no-e2e] [--no-install] [--e2e FILE]
#   --e2e FILE  only one E2E file that runs on its own (tests/e2e/FILE, e.g.
#               speakers.mjs): builds the UI and the binary as above but skips
#               vitest, the Rust tests and the .deb; for working on that step.
# Every step fails loudly (set -e); the last line is PASS or the failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
E2E=1
INSTALL=1
ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --no-e2e) E2E=0 ;;
    --no-install) INSTALL=0 ;;
    --e2e)
      ONLY=${2:?--e2e needs a file of tests/e2e}
      [ -f "tests/e2e/$ONLY" ] || { echo "no tests/e2e/$ONLY" >&2; exit 2; }
      shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
step() { echo; echo "==> $* ($(date +%T))"; }
trap 'echo "FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
START=$(date +%s)
ORIG_HOME=$HOME
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$INSTALL" = 1 ]; then
  step "system packages"
  PKGS="libwebkit2gtk-4.1-dev libsoup-3.0-dev librsvg2-dev libayatana-appindicator3-dev libxdo-dev
        libgtk-3-dev libasound2-dev webkit2gtk-driver xvfb espeak-ng build-essential pkg-config curl file
        patchelf imagemagick ffmpeg xdotool python3-gi gir1.2-gtk-3.0"
  MISSING=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$MISSING" ]; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -o DPkg::Lock::Timeout=900
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -o DPkg::Lock::Timeout=900 $MISSING
  fi
  if ! command -v tauri-driver >/dev/null; then
    step "cargo install tauri-driver (about 1-3 min)"
    cargo install tauri-driver --locked --version '^2'
  fi
fi

step "UI: npm ci, check, vitest, build"
npm --prefix ui ci --no-audit --no-fund
npm --prefix ui run check
[ -n "$ONLY" ] || npm --prefix ui test
npm --prefix ui run build

# One feature set for tests and the E2E binary, so cargo builds tauri once.
FEATURES="--features custom-protocol"
step "Rust command tests (cargo test -p csm-app)"
if [ -n "$ONLY" ]; then
  cargo test -p csm-app $FEATURES --no-run
else
  cargo test -p csm-app $FEATURES -- --nocapture 2>&1 | grep -v '^ALSA lib' || exit 1
fi

if [ "$E2E" = 0 ]; then
  echo "PASS (without E2E) in $(( $(date +%s) - START )) s"
  exit 0
fi

# The binary cargo test built for the integration tests (same features, ui/dist
# embedded); a separate `cargo build` would compile tauri a second time, because
# the dev-dependency's `test` feature is unified only into test builds.
step "app binary (built by cargo test, ui/dist embedded)"
BIN=$ROOT/target/debug/csm-app
[ -x "$BIN" ] || { echo "missing $BIN" >&2; exit 1; }

step "E2E: tauri-driver + WebKitWebDriver under Xvfb"
npm --prefix tests/e2e ci --no-audit --no-fund
# resemblyzer's weights for the run's voice scores (the E2E puts them in its hub cache).
scripts/fetch-test-speaker-encoder.sh
WORK=$(mktemp -d)
# A private HOME/XDG_DATA_HOME: fresh app data (the demo is built on first use)
# and an ~/.asoundrc whose default PCM writes raw f32 samples to a file (no sound card needed).
mkdir -p "$WORK/home" "$WORK/data"
cat > "$WORK/home/.asoundrc" <<ASOUND
pcm.!default { type file slave.pcm "null" file "$WORK/sink.raw" format "raw" }
ctl.!default { type hw card 0 }
ASOUND
mkdir -p docs/images
trap 'rm -rf "$WORK"' EXIT
export HOME=$WORK/home XDG_DATA_HOME=$WORK/data XDG_CACHE_HOME=$WORK/cache LANG=en_US.UTF-8 \
  CSM_APP_BIN=$BIN CSM_E2E_RUNS=$WORK/data/dev.csmstudio.app/runs CSM_E2E_SINK=$WORK/sink.raw \
  CSM_E2E_SHOTS=$ROOT/docs/images WORK
# -screen: a 1280x900 window fits (xvfb-run's default is 1280x1024x24).
if ! xvfb-run -a -s "-screen 0 1280x1024x24" tests/e2e/run.sh ${ONLY:+"$ONLY"}; then
  echo "--- tauri-driver log" >&2; tail -50 "$WORK/tauri-driver.log" >&2
  exit 1
fi

if [ -n "$ONLY" ]; then
  echo "PASS (E2E $ONLY only) in $(( $(date +%s) - START )) s"
  exit 0
fi

step "debug .deb of the E2E binary: extract, ldd, launch with the MLX cache hidden"
(
  export HOME=$ORIG_HOME
  unset XDG_DATA_HOME XDG_CACHE_HOME
  scripts/bundle-app.sh --debug --bundle-only
)
rm -rf "$ROOT/target/debug/bundle"
echo "PASS in $(( $(date +%s) - START )) s"
