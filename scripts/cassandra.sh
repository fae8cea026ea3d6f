#!/usr/bin/env bash
# Runs one real Apache Cassandra 5.0 node on 127.0.0.1 for Parley's CQL tests: the jars come from
# Maven Central (no tarball, no Docker), the JVM is OpenJDK 17 (never 24+: Cassandra's
# ThreadAwareSecurityManager needs System.setSecurityManager).
#
# Usage: scripts/cassandra.sh start|stop|status|wait|resolve|clean
#   start    resolve the jars (cached), start the daemon in the background, wait until CQL answers.
#            Already running: says so and exits 0.
#   stop     graceful stop (SIGTERM: Cassandra drains), SIGKILL after PARLEY_CASSANDRA_STOP_TIMEOUT s.
#   status   exit 0 and print the version when our node answers CQL; 3 when it is not running;
#            1 when the process is up but CQL does not answer (yet).
#   wait     wait until CQL answers (PARLEY_CASSANDRA_TIMEOUT s), exit 1 on time-out.
#   resolve  only download/resolve the jars into the cache.
#   clean    stop, then delete the data dir.
# Exit codes: 0 ok, 1 failure, 2 usage, 3 not running (status).
#
# Environment (all optional):
#   PARLEY_CACHE_DIR               cache root; jars go to $PARLEY_CACHE_DIR/cassandra  (~/.cache/parley)
#   PARLEY_CASSANDRA_DIR           data, logs, conf and pid file                      (/tmp/parley-cassandra)
#   PARLEY_CASSANDRA_PORT          CQL native port                                    (9042)
#   PARLEY_CASSANDRA_STORAGE_PORT  inter-node port, bound to 127.0.0.1 only           (7000)
#   PARLEY_CASSANDRA_JMX_PORT      local JMX port (nodetool)                          (7199)
#   PARLEY_CASSANDRA_HEAP          -Xms/-Xmx                                          (1G)
#   PARLEY_CASSANDRA_TIMEOUT       seconds to wait for CQL in start/wait              (240)
#   PARLEY_CASSANDRA_STOP_TIMEOUT  seconds to wait for a graceful stop                (60)
#   CASSANDRA_VERSION              org.apache.cassandra:cassandra-all version         (5.0.8)
#   JAVA17_HOME                    a Java 17 (or 11) home             (/usr/lib/jvm/java-17-openjdk-amd64)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ASSETS="$HERE/cassandra"
VERSION="${CASSANDRA_VERSION:-5.0.8}"
CACHE="${PARLEY_CACHE_DIR:-${HOME:-/root}/.cache/parley}/cassandra"
DIR="${PARLEY_CASSANDRA_DIR:-/tmp/parley-cassandra}"
PORT="${PARLEY_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${PARLEY_CASSANDRA_STORAGE_PORT:-7000}"
JMX_PORT="${PARLEY_CASSANDRA_JMX_PORT:-7199}"
HEAP="${PARLEY_CASSANDRA_HEAP:-1G}"
TIMEOUT="${PARLEY_CASSANDRA_TIMEOUT:-240}"
STOP_TIMEOUT="${PARLEY_CASSANDRA_STOP_TIMEOUT:-60}"
PIDFILE="$DIR/cassandra.pid"
CLASSPATH_FILE="$CACHE/classpath-$VERSION.txt"

log() { echo "cassandra.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_java() {
  local c
  for c in "${JAVA17_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk* \
           /usr/lib/jvm/temurin-17* /usr/lib/jvm/java-11-openjdk*; do
    if [ -n "$c" ] && [ -x "$c/bin/java" ]; then JAVA_HOME17="$c"; return 0; fi
  done
  die "no Java 17 found (set JAVA17_HOME). Cassandra 5.0 runs on Java 11 or 17 only; apt-get install openjdk-17-jdk-headless"
}

# Resolves cassandra-all and its runtime dependencies into $CACHE/m2 and writes the classpath
# (absolute jar paths in that local repository) to $CLASSPATH_FILE. Skipped when that file exists
# and every jar in it is still there.
resolve() {
  mkdir -p "$CACHE"
  if [ -s "$CLASSPATH_FILE" ] && classpath_complete; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  find_java
  # One resolver at a time per cache (concurrent CI jobs on one machine).
  exec 8>"$CACHE/.resolve.lock"
  flock 8
  if [ -s "$CLASSPATH_FILE" ] && classpath_complete; then exec 8>&-; return 0; fi
  log "resolving org.apache.cassandra:cassandra-all:$VERSION from Maven Central into $CACHE (once)"
  local t0=$SECONDS tmp="$CLASSPATH_FILE.tmp"
  # cassandra-parent's pom logs "[ERROR] 'dependencies.dependency.systemPath' ... ${jmc5.path}";
  # that line is harmless, the build still succeeds.
  if ! JAVA_HOME="$JAVA_HOME17" mvn -B -q -f "$ASSETS/pom.xml" \
        -Dmaven.repo.local="$CACHE/m2" -Dcassandra.version="$VERSION" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath \
        -DincludeScope=runtime -Dmdep.outputFile="$tmp" >"$CACHE/mvn.log" 2>&1; then
    tail -n 40 "$CACHE/mvn.log" >&2
    die "maven could not resolve cassandra-all:$VERSION (log: $CACHE/mvn.log)"
  fi
  local n; n=$(tr ':' '\n' <"$tmp" | grep -c '\.jar$' || true)
  # Guard against Maven silently dropping the transitive dependencies (invalid parent pom).
  [ "$n" -ge 60 ] || die "only $n jars resolved for cassandra-all:$VERSION; expected ~100 (log: $CACHE/mvn.log)"
  grep -q "cassandra-all-$VERSION.jar" "$tmp" || die "cassandra-all-$VERSION.jar missing from the classpath"
  mv "$tmp" "$CLASSPATH_FILE"
  exec 8>&-
  log "resolved $n jars in $((SECONDS - t0)) s ($(du -sh "$CACHE/m2" | cut -f1) in $CACHE/m2)"
}

classpath_complete() {
  local jar
  while IFS= read -r jar; do [ -f "$jar" ] || return 1; done < <(tr ':' '\n' <"$CLASSPATH_FILE")
}

write_conf() {
  mkdir -p "$DIR"/{conf,data,logs,triggers,tmp}
  sed -e "s/@NATIVE_PORT@/$PORT/g" -e "s/@STORAGE_PORT@/$STORAGE_PORT/g" \
    "$ASSETS/cassandra.yaml" >"$DIR/conf/cassandra.yaml"
  cp "$ASSETS/logback.xml" "$DIR/conf/logback.xml"
}

our_pid() {  # prints the pid of our running daemon, or fails
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # The pid may have been reused by another process since: check it is our daemon.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "CassandraDaemon" || return 1
  echo "$pid"
}

probe() {  # prints the server version when CQL answers on 127.0.0.1:$PORT
  if command -v python3 >/dev/null; then
    python3 "$ASSETS/cql_probe.py" 127.0.0.1 "$PORT" 3 2>/dev/null
  else
    # No python: an OPTIONS frame must be answered by a SUPPORTED frame (opcode 0x06).
    local reply
    reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT; printf '\x04\x00\x00\x01\x05\x00\x00\x00\x00' >&3; head -c 5 <&3 | od -An -tx1" 2>/dev/null) || return 1
    [[ "$reply" == *" 84 "*" 06"* ]] && echo "unknown"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

show_logs() {
  local f
  for f in "$DIR/logs/stdout.log" "$DIR/logs/system.log"; do
    [ -f "$f" ] && { log "--- last 60 lines of $f"; tail -n 60 "$f" >&2; }
  done
  return 0
}

wait_ready() {
  local pid="${1:-}" t0=$SECONDS v
  while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
    if v=$(probe); then echo "$v"; return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "the Cassandra process (pid $pid) exited during start-up"
      show_logs; rm -f "$PIDFILE"; return 1
    fi
    sleep 1
  done
  log "CQL did not answer on 127.0.0.1:$PORT within $TIMEOUT s"
  show_logs
  [ -n "$pid" ] && log "the process (pid $pid) is left running: '$0 wait' to keep waiting, '$0 stop' to end it"
  return 1
}

start() {
  local pid v
  if pid=$(our_pid); then
    log "already running (pid $pid); waiting for CQL"
    v=$(wait_ready "$pid") || exit 1
    echo "cassandra $v ready on 127.0.0.1:$PORT (pid $pid)"; return 0
  fi
  if v=$(probe); then
    log "a CQL server not started by this script already answers on 127.0.0.1:$PORT; using it"
    echo "cassandra $v ready on 127.0.0.1:$PORT (foreign)"; return 0
  fi
  local p
  for p in "$PORT" "$STORAGE_PORT" "$JMX_PORT"; do
    port_busy "$p" && die "port 127.0.0.1:$p is in use by another process (set PARLEY_CASSANDRA_*PORT)"
  done
  resolve
  find_java
  write_conf
  local cp jamm opts=()
  cp=$(cat "$CLASSPATH_FILE")
  jamm=$(tr ':' '\n' <"$CLASSPATH_FILE" | grep '/jamm-[^/]*\.jar$' | head -n 1)
  [ -n "$jamm" ] || die "jamm jar not on the classpath"
  mapfile -t opts < <(grep -v '^[[:space:]]*\(#\|$\)' "$ASSETS/jvm17.options")
  local t0=$SECONDS
  # setsid: the daemon must not die with the caller's process group (CI steps, test harnesses).
  setsid "$JAVA_HOME17/bin/java" \
    -Xms"$HEAP" -Xmx"$HEAP" "${opts[@]}" \
    -XX:HeapDumpPath="$DIR/logs" \
    -javaagent:"$jamm" \
    -Dcassandra.jmx.local.port="$JMX_PORT" \
    -Dcassandra.config="file://$DIR/conf/cassandra.yaml" \
    -Dcassandra.storagedir="$DIR/data" \
    -Dcassandra.logdir="$DIR/logs" \
    -Dcassandra.triggers_dir="$DIR/triggers" \
    -Dlogback.configurationFile="$DIR/conf/logback.xml" \
    -Djava.io.tmpdir="$DIR/tmp" \
    -cp "$DIR/conf:$cp" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >"$DIR/logs/stdout.log" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  log "started pid $pid (data $DIR, heap $HEAP); waiting up to $TIMEOUT s for CQL on 127.0.0.1:$PORT"
  v=$(wait_ready "$pid") || exit 1
  echo "cassandra $v ready on 127.0.0.1:$PORT (pid $pid) after $((SECONDS - t0)) s"
}

stop() {
  local pid
  if ! pid=$(our_pid); then rm -f "$PIDFILE"; log "not running"; return 0; fi
  log "stopping pid $pid (SIGTERM, Cassandra drains)"
  kill -TERM "$pid" 2>/dev/null || true
  local t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - t0)) -lt "$STOP_TIMEOUT" ]; do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after $STOP_TIMEOUT s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PIDFILE"
  log "stopped after $((SECONDS - t0)) s"
}

status() {
  local pid v
  if ! pid=$(our_pid); then
    if v=$(probe); then echo "foreign CQL server $v on 127.0.0.1:$PORT"; return 0; fi
    echo "stopped"; exit 3
  fi
  if v=$(probe); then echo "running: cassandra $v on 127.0.0.1:$PORT (pid $pid)"; return 0; fi
  echo "starting: pid $pid, CQL not answering yet on 127.0.0.1:$PORT"; exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  wait) v=$(wait_ready "$(our_pid || true)") || exit 1; echo "cassandra $v ready on 127.0.0.1:$PORT" ;;
  resolve) resolve; echo "$CLASSPATH_FILE" ;;
  clean) stop; rm -rf "$DIR"; log "removed $DIR" ;;
  *) echo "usage: $0 start|stop|status|wait|resolve|clean" >&2; exit 2 ;;
esac
