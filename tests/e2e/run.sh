#!/usr/bin/env bash
# Inside Xvfb: start tauri-driver, run the WebdriverIO script, stop the driver.
# scripts/test-app.sh sets the environment (see e2e.mjs).
# Usage: run.sh [SCRIPT] — SCRIPT defaults to e2e.mjs (the whole flow); a step
# file that also runs on its own (speakers.mjs) can be given instead.
set -uo pipefail
cd "$(dirname "$0")"
# The mock hub (mock-hub.mjs, started by e2e.mjs) gets its port here: the app
# reads HF_ENDPOINT when tauri-driver starts it. Hub cache and token file are
# the test's own ($HF_HOME under the private XDG_CACHE_HOME); no token, cache
# or offline setting of the caller's environment reaches the app.
CSM_E2E_HUB_PORT=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
export CSM_E2E_HUB_PORT HF_ENDPOINT=http://127.0.0.1:$CSM_E2E_HUB_PORT HF_HOME=${XDG_CACHE_HOME:?}/huggingface
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_TOKEN_PATH HF_HUB_CACHE HUGGINGFACE_HUB_CACHE HF_ASSETS_CACHE \
  HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HTTPS_PROXY https_proxy ALL_PROXY all_proxy
tauri-driver --port 4444 > "${WORK:-/tmp}/tauri-driver.log" 2>&1 &
driver=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/4444) 2>/dev/null && break; sleep 0.2; done
rc=0
node "${1:-e2e.mjs}" || rc=$?
kill "$driver" 2>/dev/null || true
wait "$driver" 2>/dev/null || true
exit $rc
