#!/usr/bin/env bash
# Browser tests: headless Chromium (Debian's package, installed here with apt when missing)
# driven by playwright-core (npm) against a real parley binary: the WebSocket API with the
# token as a subprotocol, and socket.io-client's browser bundle (polling, then WebSocket,
# cross-origin). Needs node >= 20 and npm. Uses $PARLEY_BIN, else target/debug/parley under
# $CARGO_TARGET_DIR or the repo (built here if missing); $CHROMIUM to use another browser.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$repo/tests/parley-bin.sh"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
  echo "browser tests: installing Debian's chromium" >&2
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get install -y --no-install-recommends chromium >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends chromium >&2; }
fi
"$CHROMIUM" --version
# The harness (node start-up, tokens) is the Socket.IO suite's.
(cd "$here/../socketio" && npm ci --no-audit --no-fund --loglevel=error)
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
exec node --test --test-concurrency=1 "$@"
