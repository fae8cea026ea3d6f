#!/usr/bin/env bash
# Socket.IO compatibility tests: the real npm socket.io-client against a real parley binary.
# Needs node >= 20 and npm. Uses $PARLEY_BIN, else target/debug/parley under $CARGO_TARGET_DIR
# or the repo (built here if missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$repo/tests/parley-bin.sh"
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
exec node --test --test-concurrency=1 "$@"
