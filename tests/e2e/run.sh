#!/usr/bin/env bash
# Inside Xvfb: start tauri-driver, run the WebdriverIO script, stop the driver.
# scripts/test-app.sh sets the environment (see e2e.mjs).
set -uo pipefail
cd "$(dirname "$0")"
tauri-driver --port 4444 > "${WORK:-/tmp}/tauri-driver.log" 2>&1 &
driver=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/4444) 2>/dev/null && break; sleep 0.2; done
rc=0
node e2e.mjs || rc=$?
kill "$driver" 2>/dev/null || true
wait "$driver" 2>/dev/null || true
exit $rc
