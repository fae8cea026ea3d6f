#!/usr/bin/env bash
# Starts the Socket.IO baseline on 127.0.0.1.
#   start.sh 1   one process on $PORT (default 3100); in-process history store, no Redis
#                (REDIS=1 start.sh 1: a private redis-server for history, as the seed)
#   start.sh 3   three processes on $PORT..$PORT+2 with @socket.io/redis-adapter and the
#                history in a private redis-server on 127.0.0.1:$REDIS_PORT (default 6390),
#                started here and stopped when this script exits
# Other settings pass through the environment: PUSH_LOOKUP=0/1, PARLEY_JWT_SECRET, ...
# Prints "redis <pid>" when it starts one, then "ready <pid>..." (the Node processes) once every
# process answers /healthz; Ctrl-C or SIGTERM stops all.
set -euo pipefail
cd "$(dirname "$0")"
N=${1:-1}
PORT=${PORT:-3100}
REDIS_PORT=${REDIS_PORT:-6390}
case "$N" in ''|*[!0-9]*) echo "usage: $0 N (processes)" >&2; exit 2;; esac
[ -d node_modules ] || npm ci --no-audit --no-fund >&2

pids=()
redis_dir=""
cleanup() {
  trap - EXIT INT TERM
  # Node processes first (they hold Redis connections), the redis-server last.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  [ -n "$redis_dir" ] && rm -rf "$redis_dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

use_redis=0
if [ "$N" -gt 1 ] || [ "${REDIS:-0}" = 1 ]; then use_redis=1; fi
if [ "$use_redis" = 1 ]; then
  command -v redis-server >/dev/null || {
    echo "redis-server missing: apt-get install -y --no-install-recommends redis-server" >&2; exit 1; }
  redis_dir=$(mktemp -d)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$redis_dir" --daemonize no --loglevel warning &
  pids+=($!)
  echo "redis $!"
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null
  export REDIS_PORT
  [ "$N" -gt 1 ] && export ADAPTER=1
else
  unset REDIS_PORT
fi

node_pids=()
for i in $(seq 0 $((N - 1))); do
  PORT=$((PORT + i)) node server.js &
  pids+=($!)
  node_pids+=($!)
done
for i in $(seq 0 $((N - 1))); do
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$((PORT + i))/healthz" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$((PORT + i))/healthz" >/dev/null
done
echo "ready ${node_pids[*]}"
wait -n "${pids[@]}"
echo "a baseline process exited; stopping the rest" >&2
exit 1
