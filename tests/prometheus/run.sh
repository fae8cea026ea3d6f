#!/usr/bin/env bash
# End-to-end test: a REAL Prometheus server scrapes a REAL parley node's /metrics.
#
# What it checks (everything on 127.0.0.1, ephemeral ports, a temp dir removed on exit):
#   1. the node starts (embedded store, development JWT secret) and GET /healthz answers 200;
#   2. one native WebSocket session (token minted by `parley token`, i.e. signed with the same
#      development secret) joins `lobby` and sends a message; it stays open during the scrapes;
#   3. `promtool check metrics` parses the node's /metrics: a parse error fails the test, lint
#      findings (naming conventions) are printed as WARN and do not;
#   4. Prometheus (scrape_interval 1s, job `parley`) answers through /api/v1/query:
#        up{job="parley"} == 1
#        websocket_connections_total{job="parley"} >= 1              (a gauge: open sessions)
#        websocket_messages_total{job="parley",direction="inbound",event="sendMessage"} >= 1
#      and /api/v1/targets shows the target with health "up" and an empty lastError.
#
# Needs: bash, curl, node (>= 20; uses the `ws` package of tests/socketio/node_modules when
# present, else node's built-in WebSocket), and Prometheus + promtool: from PATH when installed,
# else Debian's `prometheus` package fetched once with `apt-get download` and unpacked with
# `dpkg-deb -x` (never installed; as scripts/validate-deploy does for promtool) into
# ${PARLEY_CACHE_DIR:-~/.cache/parley}/deploy-tools/prometheus. That first fetch needs root or
# sudo and the Debian mirror; every later run is offline. The parley binary: see
# tests/parley-bin.sh ($PARLEY_BIN, else target/debug/parley, built if missing).
#
# Usage: tests/prometheus/run.sh          (PROM_WAIT_SECS=30: how long to wait for Prometheus)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
WAIT_SECS="${PROM_WAIT_SECS:-30}"
TOOLS="${PARLEY_CACHE_DIR:-${HOME:-/root}/.cache/parley}/deploy-tools"

# --- the parley binary -------------------------------------------------------------------------
source "$repo/tests/parley-bin.sh"
bin="$PARLEY_BIN"
[[ -x "$bin" ]] || { echo "FAIL: no parley binary at $bin" >&2; exit 1; }
# A stray PARLEY_* of the caller's shell (PARLEY_HISTORY, PARLEY_JWT_SECRET, PARLEY_CONFIG...)
# must not change the node under test.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^PARLEY_' || true)

# --- temp dir, processes, cleanup --------------------------------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/parley-prom.XXXXXX")"
pids=()
cleanup() {
  local pid i
  # Stop in reverse start order: the client, Prometheus, then the node.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }
show_log() {
  [[ -s "$2" ]] || return 0
  echo "----- last 25 lines of $1 -----"
  tail -n 25 "$2" | strip_ansi
}
fail() {
  echo "FAIL: $*"
  show_log "parley log" "$tmp/parley.log"
  show_log "prometheus log" "$tmp/prometheus.log"
  show_log "websocket client log" "$tmp/ws.log"
  exit 1
}
pass() { echo "PASS: $*"; }
alive() { kill -0 "$1" 2>/dev/null; }

# --- Prometheus and promtool (Debian package, unpacked, never installed) -----------------------
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="__none__"; fi
fi
apt_get() {
  if [[ "$SUDO" = "__none__" ]]; then
    echo "need root (or sudo) to apt-get $*" >&2; exit 2
  fi
  if [[ ! -e "$tmp/.apt-updated" ]]; then
    $SUDO apt-get update -qq >&2 && touch "$tmp/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get "$@"
}
# deb_tool PACKAGE BINARY: unpacks a Debian package into $TOOLS/PACKAGE (no install: no
# dependencies, no service started) and prints the path of BINARY inside it.
deb_tool() {
  local pkg=$1 bin=$2 dir="$TOOLS/$1"
  if [[ ! -x "$dir/root/usr/bin/$bin" ]]; then
    rm -rf "$dir" && mkdir -p "$dir"
    # `apt-get download` writes to the current directory; _apt cannot write to private dirs.
    chmod 755 "$dir"
    echo "fetching the Debian package $pkg (unpacked into $dir)" >&2
    (cd "$dir" && apt_get download -q "$pkg" >/dev/null 2>&1) || (cd "$dir" && apt_get download "$pkg" >&2)
    dpkg-deb -x "$dir"/"${pkg}"_*.deb "$dir/root"
    rm -f "$dir"/*.deb
  fi
  echo "$dir/root/usr/bin/$bin"
}
mkdir -p "$TOOLS"
if command -v prometheus >/dev/null; then prometheus=$(command -v prometheus); else prometheus=$(deb_tool prometheus prometheus); fi
if command -v promtool >/dev/null; then promtool=$(command -v promtool); else promtool=$(deb_tool prometheus promtool); fi
command -v node >/dev/null || { echo "FAIL: node is needed (the WebSocket client)"; exit 1; }
command -v curl >/dev/null || { echo "FAIL: curl is needed"; exit 1; }

echo "parley:     $bin ($("$bin" --version 2>&1))"
echo "prometheus: $prometheus ($("$prometheus" --version 2>&1 | head -n1))"
echo "promtool:   $promtool ($("$promtool" --version 2>&1 | head -n1))"
echo "node:       $(node --version)"

# --- 1. the node -------------------------------------------------------------------------------
"$bin" --listen 127.0.0.1:0 --data-dir "$tmp/data" >"$tmp/parley.out" 2>"$tmp/parley.log" &
parley_pid=$!
pids+=("$parley_pid")
addr=""
for _ in $(seq 200); do   # 20 s
  addr=$(sed -n 's/^parley listening on \([0-9.]*:[0-9]*\).*/\1/p' "$tmp/parley.out" | head -n1)
  [[ -n "$addr" ]] && break
  alive "$parley_pid" || fail "parley exited before listening"
  sleep 0.1
done
[[ -n "$addr" ]] || fail "parley did not print its address within 20 s"
code=""
for _ in $(seq 100); do   # 10 s
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/healthz" || true)
  [[ "$code" = 200 ]] && break
  sleep 0.1
done
[[ "$code" = 200 ]] || fail "GET http://$addr/healthz answered '$code', not 200"
pass "parley listening on $addr, /healthz 200"

# --- 2. one WebSocket session, kept open ---------------------------------------------------------
token=$("$bin" token --user prom-e2e --name "Prometheus E2E" --ttl 10m) || fail "parley token failed"
node_flags=()
if [[ ! -d "$repo/tests/socketio/node_modules/ws" ]] \
   && ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
  node_flags=(--experimental-websocket)
fi
node "${node_flags[@]}" "$here/ws-client.cjs" "$addr" "$token" 100 >"$tmp/ws.out" 2>"$tmp/ws.log" &
ws_pid=$!
pids+=("$ws_pid")
for _ in $(seq 150); do   # 15 s
  grep -q '^READY' "$tmp/ws.out" && break
  alive "$ws_pid" || fail "the WebSocket client exited: $(cat "$tmp/ws.log")"
  sleep 0.1
done
grep -q '^READY' "$tmp/ws.out" || fail "no joinRoom + sendMessage acks within 15 s"
pass "WebSocket session open, joined lobby, message stored ($(head -n1 "$tmp/ws.out"))"

# --- 3. the node's /metrics, linted by promtool ------------------------------------------------
curl -fsS --max-time 5 "http://$addr/metrics" >"$tmp/metrics.txt" || fail "GET /metrics failed"
for name in websocket_connections_total websocket_messages_total; do
  grep -q "^$name[ {]" "$tmp/metrics.txt" || fail "/metrics has no $name sample"
done
echo "node /metrics: $(grep -cv '^\(#\|$\)' "$tmp/metrics.txt") samples, $(grep -c '^# TYPE' "$tmp/metrics.txt") families"
lint_rc=0
lint=$("$promtool" check metrics <"$tmp/metrics.txt" 2>&1) || lint_rc=$?
# promtool exits 0 when clean, 3 for lint findings only, 1 ("error while linting: text format
# parsing error ...") when the exposition does not parse.
if [[ $lint_rc -ne 0 && $lint_rc -ne 3 ]] || grep -qiE 'error while linting|parsing error' <<<"$lint"; then
  printf '%s\n' "$lint" | sed 's/^/      /'
  fail "promtool check metrics: /metrics does not parse (exit $lint_rc)"
fi
if [[ $lint_rc -eq 3 || -n "$lint" ]]; then
  while IFS= read -r line; do [[ -n "$line" ]] && echo "WARN: promtool lint: $line"; done <<<"$lint"
  pass "promtool check metrics: parses ($(grep -c . <<<"$lint") lint finding(s), printed as WARN)"
else
  pass "promtool check metrics: clean"
fi

# --- 4. Prometheus scrapes it ------------------------------------------------------------------
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: parley
    metrics_path: /metrics
    static_configs:
      - targets: ["$addr"]
EOF
"$promtool" check config "$tmp/prometheus.yml" >/dev/null 2>&1 \
  || fail "promtool check config rejects the test's prometheus.yml: $("$promtool" check config "$tmp/prometheus.yml" 2>&1)"

free_port() {
  node -e 'const s = require("node:net").createServer();
           s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
prom=""
for attempt in 1 2 3; do   # another process may take the free port before Prometheus binds it
  pport=$(free_port)
  (cd "$tmp" && exec "$prometheus" --config.file="$tmp/prometheus.yml" \
      --storage.tsdb.path="$tmp/tsdb" --web.listen-address="127.0.0.1:$pport" \
      >"$tmp/prometheus.log" 2>&1) &
  prom_pid=$!
  pids+=("$prom_pid")
  for _ in $(seq 150); do   # 15 s
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$pport/-/ready" || true)
    [[ "$code" = 200 ]] && { prom="http://127.0.0.1:$pport"; break; }
    alive "$prom_pid" || break
    sleep 0.1
  done
  [[ -n "$prom" ]] && break
  if ! alive "$prom_pid" && grep -q 'address already in use' "$tmp/prometheus.log" && [[ $attempt -lt 3 ]]; then
    echo "port $pport was taken; retrying"; continue
  fi
  fail "Prometheus did not become ready on 127.0.0.1:$pport"
done
pass "Prometheus ready on $prom"

# query EXPR: the value of the first sample of an instant query ("" when the result is empty).
query() {
  curl -fsS --max-time 3 -G "$prom/api/v1/query" --data-urlencode "query=$1" 2>/dev/null \
    | node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
        const j = JSON.parse(s);
        if (j.status !== "success") process.exit(1);
        const r = j.data.result;
        console.log(r.length ? r[0].value[1] : "");
      });'
}
deadline=$((SECONDS + WAIT_SECS))
# expect EXPR OP THRESHOLD: polls until the value satisfies OP (== or >=), else fails.
expect() {
  local expr=$1 op=$2 want=$3 v=""
  while :; do
    v=$(query "$expr" || true)
    if [[ -n "$v" ]] && awk -v v="$v" -v w="$want" -v op="$op" \
        'BEGIN { exit !((op == "==") ? (v + 0 == w + 0) : (v + 0 >= w + 0)) }'; then
      pass "Prometheus: $expr = $v ($op $want)"
      return 0
    fi
    ((SECONDS < deadline)) || fail "Prometheus: $expr = '${v:-<no data>}' after ${WAIT_SECS}s, wanted $op $want"
    sleep 0.5
  done
}
expect 'up{job="parley"}' == 1
expect 'websocket_connections_total{job="parley"}' '>=' 1
expect 'websocket_messages_total{job="parley",direction="inbound",event="sendMessage"}' '>=' 1

target=""
while :; do
  target=$(curl -fsS --max-time 3 "$prom/api/v1/targets?state=active" 2>/dev/null \
    | node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
        const t = JSON.parse(s).data.activeTargets.filter((t) => t.labels.job === "parley");
        if (t.length !== 1) { console.log(`BAD ${t.length} targets of job parley`); return; }
        const x = t[0], ok = x.health === "up" && x.lastError === "";
        console.log(`${ok ? "OK" : "BAD"} scrapeUrl=${x.scrapeUrl} health=${x.health} ` +
          `lastError=${JSON.stringify(x.lastError)} lastScrapeDuration=${x.lastScrapeDuration}s`);
      });' || true)
  [[ "$target" = OK* ]] && break
  ((SECONDS < deadline)) || fail "/api/v1/targets: ${target:-no answer}"
  sleep 0.5
done
[[ "$target" = *"scrapeUrl=http://$addr/metrics "* ]] || fail "/api/v1/targets: unexpected target: $target"
pass "/api/v1/targets: ${target#OK }"

samples=$(query 'scrape_samples_scraped{job="parley"}' || true)
alive "$parley_pid" || fail "parley exited during the test"
echo "Prometheus scraped ${samples:-?} samples per scrape"
echo "PASS: all checks (${SECONDS}s)"
