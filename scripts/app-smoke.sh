#!/usr/bin/env bash
# Starts the real desktop app under Xvfb and saves a screenshot: checks that the
# window renders (CSP, capabilities, LANG guard) with the embedded ui/dist.
# Needs: xvfb, imagemagick (docs/gui.md §1.1). Usage: scripts/app-smoke.sh [out.png]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/app-smoke.png}"
bin="$root/target/debug/csm-app"
if [[ ! -x "$bin" ]]; then
  (cd "$root/ui" && npm run tauri -- build --debug --no-bundle)
fi
# LANG=C.UTF-8 (this box's default) is exactly the case the UI's locale guard handles;
# run with it on purpose so a regression shows up as a blank window.
LANG="${SMOKE_LANG:-C.UTF-8}" xvfb-run -a -s "-screen 0 1280x860x24" sh -c "
  '$bin' & pid=\$!
  sleep \${SMOKE_WAIT:-10}
  import -window root '$out'
  kill \$pid
"
echo "screenshot: $out"
