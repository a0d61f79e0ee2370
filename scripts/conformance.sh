#!/usr/bin/env bash
# Conformance run (issue 13): Redis 7.0.15's own Tcl test suite (Debian's source package `redis`:
# its tests/ and runtest) run file by file, in `--cluster-mode` against an external server, through
#   slotmux    - the binary in SLOTMUX_BIN in front of a local 6-node cluster (3 masters + 3 replicas)
#   reference  - a 1-node Redis Cluster (one redis-server, cluster-enabled, owning all 16384 slots)
# and compared: per file, tests passed/failed on each, and every test that passes on the reference
# but fails (or does not run) through slotmux, with its error.
#
# Usage:
#   SLOTMUX_BIN=target/release/slotmux scripts/conformance.sh               whole suite, both targets
#   SLOTMUX_BIN=... scripts/conformance.sh unit/multi unit/type/string      some files, both targets
#   SLOTMUX_BIN=... CI=1 scripts/conformance.sh                             CI gate (see below)
#
# CI=1: runs only the files in scripts/conformance-ci.txt (or FILES / the arguments), only through
# slotmux, and exits 1 if a test fails there (or a file times out, or slotmux dies) that is not
# listed in scripts/conformance-known-failures.txt (lines "unit/FILE<TAB>test name[<TAB>note]", #
# comments; a note starting with "flaky" marks a test that fails only sometimes, one starting with
# "hangs" or "skip" a test that CI=1 does not run: it can wait forever, or it breaks the tests after
# it (e.g. it leaves a master running a script), so that the gate stays deterministic).
# A file with unexpected failures is run once more (CI_RETRIES=1) and only failures that repeat
# count, so one timing-sensitive test on a busy machine does not fail the build by itself.
#
# Knobs (environment):
#   SLOTMUX_BIN       the slotmux binary (required; the script never builds it)
#   CONFORMANCE_DIR   cache, servers' data and results (default target/conformance)
#   REDIS_SRC         an unpacked Redis 7.0 source tree to use instead of Debian's (needs tests/, runtest)
#   REDIS_DEB_VERSION the Debian source version to fetch (default: the installed redis-server's
#                     version if Debian has its source, else the newest 7.0.15 one)
#   BASE_PORT         default 7600: cluster BASE..BASE+5 (bus +10000), slotmux BASE+10,
#                     reference BASE+20, the suite's own test server in BASE+100..BASE+131
#   FILES             space-separated unit files ("unit/type/string unit/multi"); default: every
#                     file in unit/ and unit/type/ except the ones skipped below
#   TARGETS           "slotmux reference" (default; CI=1: "slotmux")
#   TAGS              the --tags filter (default: the needs:* tags that want a local server process)
#   FILE_TIMEOUT      seconds one file may take on one target (default 600; CI=1: 180). Through
#                     slotmux, when the reference ran first, at most TIMEOUT_FACTOR (5) times the
#                     reference's time, but not under TIMEOUT_MIN (120) seconds
#   SKIPFILE          a file of test names to skip (the suite's --skipfile: one a line, /REGEX
#                     for a pattern), e.g. to get past a test that leaves a master busy
#   RESTART=always    fresh cluster, reference and slotmux before every file (default: only when a
#                     file left them broken; data, scripts, functions and config are reset anyway)
#   RERUN=1           full runs: re-run through slotmux each file with regressions, and mark the
#                     tests that pass the second time as flaky (default 1; 0 disables)
#   KEEP=1            leave the servers and slotmux running at the end
# Output: $CONFORMANCE_DIR/results/: summary.md, files.tsv (per file and target: passed, failed,
# errors, ignored, seconds, exit), tests.tsv (target, file, outcome, test, message), regressions.tsv
# (file, test, slotmux outcome: failed/missing/error/flaky, message, n: the nth test of that name
# in the file), logs/<target>/<file>.log (the suite's raw output).
# Needs: tclsh 8.5+, redis-server/redis-cli 7.0, and (to fetch the suite) apt-get and dpkg-source;
# as root, the script installs tcl, redis-server/redis-tools and dpkg-dev when missing. It never
# changes the system's apt sources: it reads Debian's deb-src entries from a private apt state in
# $CONFORMANCE_DIR/apt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

CI=${CI:-0}
CONFORMANCE_DIR=${CONFORMANCE_DIR:-$ROOT/target/conformance}
mkdir -p "$CONFORMANCE_DIR"
CONFORMANCE_DIR=$(cd "$CONFORMANCE_DIR" && pwd)
BASE_PORT=${BASE_PORT:-7600}
SLOTMUX_PORT=$((BASE_PORT + 10))
REF_PORT=$((BASE_PORT + 20))
SUITE_BASEPORT=$((BASE_PORT + 132)) # the suite listens on a free port in [baseport-32, baseport)
TAGS=${TAGS:--needs:repl -needs:debug -needs:save -needs:local-process -needs:config-maxmemory -needs:latency -needs:pfdebug -needs:reset -needs:config-resetstat}
RESTART=${RESTART:-onfailure}
KEEP=${KEEP:-0}
CI_LIST=${CI_LIST:-$ROOT/scripts/conformance-ci.txt}
KNOWN_FAILURES=${KNOWN_FAILURES:-$ROOT/scripts/conformance-known-failures.txt}
TIMEOUT_FACTOR=${TIMEOUT_FACTOR:-5}
TIMEOUT_MIN=${TIMEOUT_MIN:-120}
if [ "$CI" = 1 ]; then
  TARGETS=${TARGETS:-slotmux}
  FILE_TIMEOUT=${FILE_TIMEOUT:-180}
  RERUN=${RERUN:-0}
  CI_RETRIES=${CI_RETRIES:-1}
else
  TARGETS=${TARGETS:-slotmux reference}
  FILE_TIMEOUT=${FILE_TIMEOUT:-600}
  RERUN=${RERUN:-1}
  CI_RETRIES=0
fi
CUR_TIMEOUT=$FILE_TIMEOUT
SKIP_ARGS=()
if [ -n "${SKIPFILE:-}" ]; then SKIP_ARGS=(--skipfile "$(cd "$(dirname "$SKIPFILE")" && pwd)/$(basename "$SKIPFILE")"); fi
RUN_DIR=$CONFORMANCE_DIR/run
RES=$CONFORMANCE_DIR/results
CLUSTER_DIR=$RUN_DIR/cluster
REF_DIR=$RUN_DIR/reference
CLUSTER_PORTS=()
for i in 0 1 2 3 4 5; do CLUSTER_PORTS+=($((BASE_PORT + i))); done

log() { echo "[conformance $(date +%T)] $*" >&2; }
die() {
  log "error: $*"
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Tools and the suite

[ -n "${SLOTMUX_BIN:-}" ] || die "set SLOTMUX_BIN to a slotmux binary (e.g. cargo build --release; SLOTMUX_BIN=target/release/slotmux)"
[ -x "$SLOTMUX_BIN" ] || die "SLOTMUX_BIN=$SLOTMUX_BIN is not an executable"
SLOTMUX_BIN=$(cd "$(dirname "$SLOTMUX_BIN")" && pwd)/$(basename "$SLOTMUX_BIN")

apt_install() { # apt_install COMMAND PACKAGE...: installs the packages when COMMAND is missing (root only)
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing $* with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (Debian/Ubuntu: apt-get install -y $*)"
}

ensure_redis
apt_install tclsh tcl
apt_install timeout coreutils

# fetch_suite: sets SUITE to an unpacked Redis source tree holding tests/ and runtest.
fetch_suite() {
  if [ -n "${REDIS_SRC:-}" ]; then
    SUITE=$(cd "$REDIS_SRC" && pwd)
    if [ ! -x "$SUITE/runtest" ] || [ ! -d "$SUITE/tests/unit" ]; then die "REDIS_SRC=$REDIS_SRC has no runtest or tests/unit"; fi
    return 0
  fi
  local src=$CONFORMANCE_DIR/src apt=$CONFORMANCE_DIR/apt existing
  existing=$(find "$src" -maxdepth 2 -name runtest -path '*/redis-7.0.15/*' 2>/dev/null | head -n 1 || true)
  if [ -n "$existing" ] && [ -d "$(dirname "$existing")/tests/unit" ]; then
    SUITE=$(dirname "$existing")
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: set REDIS_SRC to an unpacked redis-7.0.15 source tree"
  apt_install dpkg-source dpkg-dev
  log "fetching Debian's source package redis (private apt state in $apt)"
  mkdir -p "$apt/etc" "$apt/state/lists/partial" "$apt/cache/archives/partial" "$src"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror=${DEBIAN_MIRROR:-http://deb.debian.org}
  cat >"$apt/etc/sources.list" <<EOF
deb-src [signed-by=$keyring] $mirror/debian bookworm main
deb-src [signed-by=$keyring] $mirror/debian bookworm-updates main
deb-src [signed-by=$keyring] $mirror/debian-security bookworm-security main
EOF
  local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o "Dir::Etc::SourceParts=$apt/etc/none"
    -o "Dir::State=$apt/state" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=$(id -un)")
  apt-get "${opts[@]}" update -qq >"$apt/update.log" 2>&1 || {
    cat "$apt/update.log" >&2
    die "apt-get update of the private deb-src state failed"
  }
  local versions want=${REDIS_DEB_VERSION:-}
  versions=$(apt-cache "${opts[@]}" showsrc redis | awk '/^Version: /{print $2}' | grep '7\.0\.15' || true)
  [ -n "$versions" ] || die "Debian has no redis 7.0.15 source package in the configured suites"
  if [ -z "$want" ]; then
    local installed
    installed=$(dpkg-query -W -f='${Version}' redis-server 2>/dev/null || true)
    if [ -n "$installed" ] && grep -qxF "$installed" <<<"$versions"; then
      want=$installed
    else
      want=$(sort -V <<<"$versions" | tail -n 1)
    fi
  fi
  log "apt-get source redis=$want"
  (cd "$src" && apt-get "${opts[@]}" source -qq "redis=$want" >"$apt/source.log" 2>&1) || {
    cat "$apt/source.log" >&2
    die "apt-get source redis=$want failed"
  }
  SUITE=$src/redis-7.0.15
  [ -x "$SUITE/runtest" ] || die "no runtest in $SUITE"
  echo "$want" >"$src/VERSION"
}
fetch_suite
# A few tests exec src/redis-*; point them at the installed binaries.
mkdir -p "$SUITE/src"
for b in redis-server redis-cli redis-benchmark; do
  if [ ! -e "$SUITE/src/$b" ] && command -v "$b" >/dev/null 2>&1; then ln -s "$(command -v "$b")" "$SUITE/src/$b"; fi
done
SUITE_VERSION=$(cat "$CONFORMANCE_DIR/src/VERSION" 2>/dev/null || echo "from $SUITE")

# The files to run. Skipped: unit/cluster/* (each test starts its own local cluster of servers:
# all tagged external:skip), unit/moduleapi/* (needs the suite's test modules built and loaded
# into the servers: runtest-moduleapi), unit/type/list-common (a helper, not a test file).
if [ $# -gt 0 ]; then
  FILES="$*"
elif [ -z "${FILES:-}" ] && [ "$CI" = 1 ]; then
  [ -f "$CI_LIST" ] || die "CI=1 needs $CI_LIST (one unit file a line) or FILES"
  FILES=$(sed -e 's/#.*//' "$CI_LIST" | xargs)
elif [ -z "${FILES:-}" ]; then
  FILES=$(cd "$SUITE/tests" && printf '%s\n' unit/*.tcl unit/type/*.tcl | sed 's/\.tcl$//' | grep -v '^unit/type/list-common$' | xargs)
fi
for f in $FILES; do [ -f "$SUITE/tests/$f.tcl" ] || die "no such test file: tests/$f.tcl"; done

# ---------------------------------------------------------------------------------------------
# Servers

SLOTMUX_PID=
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
rcli() { timeout 10 redis-cli -p "$1" "${@:2}" 2>&1 | tr -d '\r'; }

check_ports_free() {
  local p
  for p in "${CLUSTER_PORTS[@]}" "$SLOTMUX_PORT" "$REF_PORT"; do
    if port_busy "$p"; then die "port $p is in use (stop what listens there or set BASE_PORT)"; fi
  done
}

start_reference() {
  rm -rf "$REF_DIR"
  mkdir -p "$REF_DIR"
  redis-server --port "$REF_PORT" --bind 127.0.0.1 --daemonize yes --dir "$REF_DIR" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --appendonly no --save '' --logfile "$REF_DIR/redis.log" --pidfile "$REF_DIR/redis.pid"
  wait_for 50 redis-cli -p "$REF_PORT" ping || die "the reference node did not start"
  rcli "$REF_PORT" cluster addslotsrange 0 16383 >/dev/null
  wait_for 100 sh -c "redis-cli -p $REF_PORT cluster info | grep -q cluster_state:ok" ||
    die "the reference cluster did not become ok"
}

stop_reference() {
  if [ -f "$REF_DIR/redis.pid" ]; then kill "$(cat "$REF_DIR/redis.pid")" 2>/dev/null || true; fi
}

start_slotmux() {
  "$SLOTMUX_BIN" --listen "127.0.0.1:$SLOTMUX_PORT" \
    --seeds "127.0.0.1:${CLUSTER_PORTS[0]},127.0.0.1:${CLUSTER_PORTS[1]}" \
    --metrics-listen off >>"$RUN_DIR/slotmux.log" 2>&1 &
  SLOTMUX_PID=$!
  wait_for 100 sh -c "redis-cli -p $SLOTMUX_PORT set conformance:probe 1 | grep -q OK" ||
    die "slotmux did not answer on $SLOTMUX_PORT (see $RUN_DIR/slotmux.log)"
  rcli "$SLOTMUX_PORT" del conformance:probe >/dev/null
}

stop_slotmux() {
  if [ -n "$SLOTMUX_PID" ]; then
    kill "$SLOTMUX_PID" 2>/dev/null || true
    wait "$SLOTMUX_PID" 2>/dev/null || true
    SLOTMUX_PID=
  fi
}

wait_pids_gone() {
  local pidfile pid n=0
  for pidfile in "$@"; do
    # The server removes its pid file as it exits: gone between the test and the read is fine.
    pid=$(cat "$pidfile" 2>/dev/null) || continue
    while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do
      sleep 0.1
      n=$((n + 1))
    done
    kill -9 "$pid" 2>/dev/null || true
  done
}

start_slotmux_cluster() {
  rm -rf "$CLUSTER_DIR"
  start_cluster "$CLUSTER_DIR" "$BASE_PORT" || die "could not start the cluster (see $CLUSTER_DIR)"
  start_slotmux
}

stop_all() {
  stop_slotmux
  stop_cluster "$CLUSTER_DIR"
  stop_reference
  wait_pids_gone "$CLUSTER_DIR"/*/redis.pid "$REF_DIR/redis.pid"
}

# Each node's `CONFIG GET *` when fresh, to undo the CONFIG SETs a file left behind.
snapshot_config() {
  local p
  for p in "$@"; do rcli "$p" --raw config get '*' >"$RUN_DIR/config.$p"; done
}

# restore_config PORT: CONFIG SET every parameter whose value differs from the snapshot.
restore_config() {
  local p=$1 key val
  rcli "$p" --raw config get '*' >"$RUN_DIR/config.$p.now"
  awk 'NR==FNR { if (FNR % 2) k = $0; else base[k] = $0; next }
       FNR % 2 { k = $0; next }
       (k in base) && base[k] != $0 { printf "%s\t%s\n", k, base[k] }' \
    "$RUN_DIR/config.$p" "$RUN_DIR/config.$p.now" |
    while IFS=$'\t' read -r key val; do
      echo "$(date +%T) node $p: config set $key '$val' (was changed)" >>"$RUN_DIR/repairs.log"
      rcli "$p" config set "$key" "$val" >/dev/null || true
    done
}

# A node is healthy when it answers PING (after SCRIPT KILL / FUNCTION KILL / CLIENT UNPAUSE).
node_ok() {
  local p=$1 r
  r=$(rcli "$p" ping)
  if [ "$r" != PONG ]; then
    echo "$(date +%T) node $p answered '$r': SCRIPT KILL, FUNCTION KILL" >>"$RUN_DIR/repairs.log"
    rcli "$p" script kill >/dev/null || true
    rcli "$p" function kill >/dev/null || true
    sleep 0.2
    r=$(rcli "$p" ping)
  fi
  rcli "$p" client unpause >/dev/null || true
  [ "$r" = PONG ]
}

# reset_target TARGET: after a file, kill running scripts, undo config changes, flush data,
# scripts and functions, and restart what is broken. Logs what it did to repairs.log.
reset_target() {
  local target=$1 file=$2 p broken=0 why=""
  if [ "$target" = slotmux ]; then
    for p in "${CLUSTER_PORTS[@]}"; do
      if ! node_ok "$p"; then
        broken=1
        why="$why node $p does not answer PING;"
      fi
    done
    if [ -z "$SLOTMUX_PID" ] || ! kill -0 "$SLOTMUX_PID" 2>/dev/null; then
      broken=1
      why="$why slotmux exited;"
      echo "slotmux exited during $file" >>"$RES/slotmux-exits.txt"
    fi
    if [ $broken = 0 ]; then
      for p in "${CLUSTER_PORTS[@]}"; do restore_config "$p"; done
      for p in "${CLUSTER_PORTS[@]}"; do
        if ! rcli "$p" cluster info | grep -q cluster_state:ok; then
          broken=1
          why="$why node $p: cluster_state not ok;"
        fi
      done
    fi
    if [ $broken = 0 ]; then
      # Through slotmux, as the suite itself does between its blocks.
      [ "$(rcli "$SLOTMUX_PORT" flushall)" = OK ] || {
        broken=1
        why="$why FLUSHALL through slotmux failed;"
      }
      rcli "$SLOTMUX_PORT" function flush >/dev/null || true
      rcli "$SLOTMUX_PORT" script flush >/dev/null || true
      [ "$(rcli "$SLOTMUX_PORT" ping)" = PONG ] || {
        broken=1
        why="$why PING through slotmux failed;"
      }
    fi
    if [ $broken = 1 ] || [ "$RESTART" = always ]; then
      [ $broken = 1 ] && echo "$(date +%T) after $file: restarting cluster and slotmux:$why" >>"$RUN_DIR/repairs.log"
      [ $broken = 1 ] && log "after $file: restarting the cluster and slotmux:$why"
      stop_slotmux
      stop_cluster "$CLUSTER_DIR"
      wait_pids_gone "$CLUSTER_DIR"/*/redis.pid
      start_slotmux_cluster
      snapshot_config "${CLUSTER_PORTS[@]}"
    fi
  else
    if node_ok "$REF_PORT"; then
      restore_config "$REF_PORT"
      rcli "$REF_PORT" flushall >/dev/null
      rcli "$REF_PORT" function flush >/dev/null
      rcli "$REF_PORT" script flush >/dev/null
      rcli "$REF_PORT" cluster info | grep -q cluster_state:ok || {
        broken=1
        why="cluster_state not ok"
      }
    else
      broken=1
      why="does not answer PING"
    fi
    if [ $broken = 1 ] || [ "$RESTART" = always ]; then
      [ $broken = 1 ] && echo "$(date +%T) after $file: restarting the reference: $why" >>"$RUN_DIR/repairs.log"
      stop_reference
      wait_pids_gone "$REF_DIR/redis.pid"
      start_reference
      snapshot_config "$REF_PORT"
    fi
  fi
}

cleanup() {
  if [ "$KEEP" = 1 ]; then
    log "KEEP=1: cluster on ${CLUSTER_PORTS[0]}-${CLUSTER_PORTS[5]}, slotmux on $SLOTMUX_PORT (pid $SLOTMUX_PID), reference on $REF_PORT"
    return
  fi
  # The run's verdict is already decided: stopping must not change the exit status.
  stop_all || true
}

# ---------------------------------------------------------------------------------------------
# Parsing the suite's output

# parse_log LOG: one line per outcome: OUTCOME<TAB>TEST<TAB>MESSAGE, OUTCOME one of ok, err (a
# test failed), error (an error outside any test aborted the rest of its block), ignore/skip.
parse_log() {
  awk '
    function clean(s) { gsub(/\t/, " ", s); return substr(s, 1, 400) }
    function done_err() {
      if (!inerr) return
      m = l1
      if (l2 != "" && (m == "" || index(l2, m) > 0)) m = l2
      if (m == "" && head != "") m = head
      print kind "\t" clean(name) "\t" clean(m)
      inerr = 0
    }
    { gsub(/\r/, ""); gsub(/\033\[[0-9;]*m/, "") }
    /^\[ok\]: / { done_err(); s = substr($0, 7); sub(/ \([0-9]+ ms\)$/, "", s); print "ok\t" clean(s) "\t"; next }
    /^\[err\]: / {
      done_err(); inerr = 1; l1 = ""; l2 = ""; s = substr($0, 8)
      if (s ~ / in tests\/unit\/.*\.tcl$/) { sub(/ in tests\/unit\/[^ ]*\.tcl$/, "", s); kind = "err"; name = s; head = "" }
      else { kind = "error"; name = "(outside any test: the rest of its block did not run)"; head = s; l1 = s }
      next
    }
    /^\[exception\]: / { done_err(); inerr = 1; kind = "error"; name = "(exception: the file stopped)"; head = substr($0, 14); l1 = head; l2 = ""; next }
    /^\[ignore\]: / { done_err(); print "ignore\t" clean(substr($0, 11)) "\t"; next }
    /^\[skip\]: / { done_err(); print "skip\t" clean(substr($0, 9)) "\t"; next }
    /^\[[0-9]+\/[0-9]+ done\]: / || /^Testing unit/ || /^ +The End$/ || /^\[ready\]: / || /^\[(timeout|TIMEOUT)\]/ { done_err(); next }
    inerr && $0 != "" {
      if (kind == "error" && l1 == head && l2 == "") { l2 = $0; next }
      if (l1 == "") l1 = $0; else if (l2 == "") l2 = $0
    }
    END { done_err() }
  ' "$1"
}

# ---------------------------------------------------------------------------------------------
# Running

mkdir -p "$RUN_DIR" "$RES/logs/slotmux" "$RES/logs/reference"
: >"$RUN_DIR/repairs.log"
# CI=1: the allow-listed tests noted "hangs" or "skip" do not run (the suite takes one --skipfile).
if [ "$CI" = 1 ] && [ -f "$KNOWN_FAILURES" ]; then
  {
    if [ -n "${SKIPFILE:-}" ]; then cat "$SKIPFILE"; fi
    awk -F'\t' '!/^#/ && $3 ~ /^(hangs|skip)/ { print $2 }' "$KNOWN_FAILURES"
  } >"$RUN_DIR/skip.txt"
  if [ -s "$RUN_DIR/skip.txt" ]; then SKIP_ARGS=(--skipfile "$RUN_DIR/skip.txt"); fi
fi
rm -f "$RES/slotmux-exits.txt"
check_ports_free
trap cleanup EXIT
case " $TARGETS " in *" slotmux "*)
  log "starting a 6-node cluster on ${CLUSTER_PORTS[0]}-${CLUSTER_PORTS[5]} and slotmux ($SLOTMUX_BIN) on $SLOTMUX_PORT"
  start_slotmux_cluster
  snapshot_config "${CLUSTER_PORTS[@]}"
  ;;
esac
case " $TARGETS " in *" reference "*)
  log "starting the 1-node reference cluster on $REF_PORT"
  start_reference
  snapshot_config "$REF_PORT"
  ;;
esac

# run_file TARGET FILE LOG [LABEL]: runs one file; appends FILE LABEL passed failed errors
# ignored seconds exit to files.tsv and its outcomes to tests.tsv (LABEL defaults to TARGET).
run_file() {
  local target=$1 file=$2 logf=$3 label=${4:-$1} port start secs rc=0
  if [ "$target" = slotmux ]; then port=$SLOTMUX_PORT; else port=$REF_PORT; fi
  mkdir -p "$(dirname "$logf")"
  start=$(date +%s)
  (cd "$SUITE" && TERM=dumb timeout -k 10 "$CUR_TIMEOUT" ./runtest --host 127.0.0.1 --port "$port" \
    --cluster-mode --durable --baseport "$SUITE_BASEPORT" --single "$file" --tags "$TAGS" "${SKIP_ARGS[@]}") \
    >"$logf" 2>&1 </dev/null || rc=$?
  secs=$(($(date +%s) - start))
  parse_log "$logf" >"$logf.tsv"
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    printf 'error\t(file timed out after %ss: the rest of it did not run)\t\n' "$CUR_TIMEOUT" >>"$logf.tsv"
  elif [ $rc != 0 ] && ! grep -q '^\[[0-9]*/[0-9]* done\]' "$logf"; then
    printf 'error\t(the suite exited with %s before finishing the file)\t%s\n' "$rc" "$(tail -n 1 "$logf" | tr '\t' ' ')" >>"$logf.tsv"
  fi
  reset_target "$target" "$file"
  # A slotmux that died during the file is an error of that file.
  if [ "$target" = slotmux ] && [ -f "$RES/slotmux-exits.txt" ] && grep -qxF "slotmux exited during $file" "$RES/slotmux-exits.txt"; then
    printf 'error\t(slotmux exited during this file)\t%s\n' "$(tail -n 3 "$RUN_DIR/slotmux.log" | tr '\t\n' '  ')" >>"$logf.tsv"
  fi
  awk -F'\t' -v f="$file" -v t="$label" -v s="$secs" -v rc="$rc" '
    { n[$1]++ } END { printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", f, t, n["ok"], n["err"], n["error"], n["ignore"] + n["skip"], s, rc }' \
    "$logf.tsv" >>"$RES/files.tsv"
  awk -F'\t' -v f="$file" -v t="$label" 'BEGIN { OFS = "\t" } { print t, f, $1, $2, $3 }' "$logf.tsv" >>"$RES/tests.tsv"
  log "$(awk -F'\t' -v f="$file" -v t="$label" -v s="$secs" -v rc="$rc" '{ n[$1]++ }
    END { printf "%-28s %-15s passed %3d  failed %3d  errors %d  (%ss, exit %s)", f, t, n["ok"], n["err"], n["error"], s, rc }' "$logf.tsv")"
}

# regressions FILE [SLOTMUX_TSV]: tests that pass on the reference and fail (or do not run)
# through slotmux: FILE, TEST, failed|missing|error, MESSAGE, N (the test is the Nth of that name
# in the file: a name can repeat, e.g. once per encoding, and tests are matched by name and N).
regressions() {
  local file=$1 smtsv=${2:-$RES/logs/slotmux/$1.log.tsv}
  awk -F'\t' -v f="$file" '
    { part = (FILENAME == ARGV[1]) ? 1 : 2 }
    $1 != "ok" && $1 != "err" && $1 != "error" { next }
    part == 1 { if ($1 == "ok") { k = $2 SUBSEP (++rn[$2]); refok[k] = 1; order[++no] = k } else if ($1 == "error") nre++; next }
    part == 2 { if ($1 == "error") { errs[++ne] = $3; ename[ne] = $2; if ($2 ~ /^\(file timed out/) timedout = $2; next } k = $2 SUBSEP (++sn[$2]); smo[k] = $1; smm[k] = $3 }
    END {
      # Errors outside any test that the reference does not have.
      if (nre == 0) for (i = 1; i <= ne; i++) print f "\t" ename[i] "\terror\t" errs[i] "\t" i
      for (i = 1; i <= no; i++) if (order[i] in smo) lastran = i
      for (i = 1; i <= no; i++) {
        k = order[i]; split(k, a, SUBSEP)
        if (!(k in smo)) {
          why = "(did not run through slotmux)"
          if (ne > 0) why = why " " (errs[1] != "" ? errs[1] : ename[1])
          # After a time-out, the first test that did not finish is the one that hung.
          if (timedout != "" && !hungseen && i > lastran) { why = "(hung: it was running when the " substr(timedout, 2); hungseen = 1 }
          print f "\t" a[1] "\tmissing\t" why "\t" a[2]
        } else if (smo[k] == "err") print f "\t" a[1] "\tfailed\t" smm[k] "\t" a[2]
      }
    }' "$RES/logs/reference/$file.log.tsv" "$smtsv"
}

printf 'file\ttarget\tpassed\tfailed\terrors\tignored\tseconds\texit\n' >"$RES/files.tsv"
printf 'target\tfile\toutcome\ttest\tmessage\n' >"$RES/tests.tsv"
printf 'file\ttest\tslotmux\tmessage\tn\n' >"$RES/regressions.tsv"
: >"$RES/unexpected.tsv"
RUN_START=$(date +%s)
NFILES=$(wc -w <<<"$FILES")
log "suite: Debian redis $SUITE_VERSION ($SUITE); $NFILES files; targets: $TARGETS; tags: $TAGS"

# known_failure FILE TEST: whether the allow-list lists it (lines FILE<TAB>TEST[<TAB>NOTE]).
known_failure() {
  [ -f "$KNOWN_FAILURES" ] && awk -F'\t' -v f="$1" -v t="$2" '$1 == f && $2 == t { found = 1 } END { exit !found }' "$KNOWN_FAILURES"
}

# unexpected_failures FILE LOGTSV: failures through slotmux not in the allow-list.
unexpected_failures() {
  local file=$1 tsv=$2 outcome name msg
  while IFS=$'\t' read -r outcome name msg; do
    case $outcome in err | error) ;; *) continue ;; esac
    known_failure "$file" "$name" || printf '%s\t%s\t%s\n' "$file" "$name" "$msg"
  done <"$tsv"
}

for file in $FILES; do
  # The reference first: its time bounds slotmux's (a file hanging through slotmux then costs
  # minutes, not FILE_TIMEOUT).
  CUR_TIMEOUT=$FILE_TIMEOUT
  case " $TARGETS " in *" reference "*)
    run_file reference "$file" "$RES/logs/reference/$file.log"
    ref_secs=$(awk -F'\t' -v f="$file" '$1 == f && $2 == "reference" { s = $7 } END { print s + 0 }' "$RES/files.tsv")
    CUR_TIMEOUT=$((ref_secs * TIMEOUT_FACTOR))
    [ "$CUR_TIMEOUT" -ge "$TIMEOUT_MIN" ] || CUR_TIMEOUT=$TIMEOUT_MIN
    [ "$CUR_TIMEOUT" -le "$FILE_TIMEOUT" ] || CUR_TIMEOUT=$FILE_TIMEOUT
    ;;
  esac
  case " $TARGETS " in *" slotmux "*) run_file slotmux "$file" "$RES/logs/slotmux/$file.log" ;; esac
  CUR_TIMEOUT=$FILE_TIMEOUT
  if [ "$CI" = 1 ]; then
    unexpected_failures "$file" "$RES/logs/slotmux/$file.log.tsv" >"$RUN_DIR/unexpected.now"
    try=0
    while [ -s "$RUN_DIR/unexpected.now" ] && [ $try -lt "$CI_RETRIES" ]; do
      try=$((try + 1))
      log "$file: $(wc -l <"$RUN_DIR/unexpected.now") unexpected failure(s); running it again (retry $try)"
      run_file slotmux "$file" "$RES/logs/slotmux/$file.retry$try.log" slotmux-retry$try
      unexpected_failures "$file" "$RES/logs/slotmux/$file.retry$try.log.tsv" >"$RUN_DIR/unexpected.retry"
      # Only failures seen every time count.
      awk -F'\t' 'FILENAME == ARGV[1] { again[$1 FS $2] = 1; next } ($1 FS $2) in again' \
        "$RUN_DIR/unexpected.retry" "$RUN_DIR/unexpected.now" >"$RUN_DIR/unexpected.both" || true
      mv "$RUN_DIR/unexpected.both" "$RUN_DIR/unexpected.now"
    done
    cat "$RUN_DIR/unexpected.now" >>"$RES/unexpected.tsv"
  fi
  if [ -f "$RES/logs/reference/$file.log.tsv" ] && [ -f "$RES/logs/slotmux/$file.log.tsv" ]; then
    regressions "$file" >"$RUN_DIR/reg.now"
    if [ -s "$RUN_DIR/reg.now" ] && [ "$RERUN" = 1 ] && ! grep -q '^error.(file timed out' "$RES/logs/slotmux/$file.log.tsv"; then
      # Once more through slotmux: a regression that passes the second time is flaky.
      log "$file: $(wc -l <"$RUN_DIR/reg.now") regression(s); running it through slotmux again to tell flaky ones"
      run_file slotmux "$file" "$RES/logs/slotmux/$file.rerun.log" slotmux-rerun
      regressions "$file" "$RES/logs/slotmux/$file.rerun.log.tsv" >"$RUN_DIR/reg.rerun"
      awk -F'\t' -v OFS='\t' 'FILENAME == ARGV[1] { again[$2 FS $5] = 1; next } { if (!(($2 FS $5) in again)) $3 = "flaky"; print }' \
        "$RUN_DIR/reg.rerun" "$RUN_DIR/reg.now" >"$RUN_DIR/reg.flag"
      mv "$RUN_DIR/reg.flag" "$RUN_DIR/reg.now"
    fi
    cat "$RUN_DIR/reg.now" >>"$RES/regressions.tsv"
  fi
done
RUN_SECS=$(($(date +%s) - RUN_START))

# ---------------------------------------------------------------------------------------------
# Report

{
  echo "# Conformance run: Redis's own test suite through slotmux"
  echo
  echo "- suite: Debian source package redis $SUITE_VERSION, \`./runtest --host 127.0.0.1 --port PORT --cluster-mode --durable --single FILE --tags '$TAGS'\`"
  echo "- slotmux: \`$SLOTMUX_BIN\` in front of a 6-node cluster (3 masters + 3 replicas) of $(redis-server --version | awk '{print $3}' | tr -d 'v=')"
  echo "- reference: a 1-node cluster (one redis-server, cluster-enabled, all 16384 slots)"
  echo "- $(date -u +%FT%TZ), $NFILES files, ${RUN_SECS}s in all, each file limited to ${FILE_TIMEOUT}s; RESTART=$RESTART"
  echo
  echo "| file | slotmux passed | slotmux failed | slotmux errors | reference passed | reference failed | regressions | seconds (slotmux/reference) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  awk -F'\t' 'NR == FNR { if (FNR > 1) reg[$1]++; next }
    FNR == 1 { next }
    $2 == "slotmux" { sp[$1] = $3; sf[$1] = $4; se[$1] = $5; ss[$1] = $7; if (!($1 in seen)) { seen[$1] = 1; ord[++n] = $1 } }
    $2 == "reference" { rp[$1] = $3; rf[$1] = $4; re[$1] = $5; rs[$1] = $7; if (!($1 in seen)) { seen[$1] = 1; ord[++n] = $1 } }
    END {
      for (i = 1; i <= n; i++) {
        f = ord[i]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s/%s |\n", f, (f in sp) ? sp[f] : "-", (f in sf) ? sf[f] : "-", (f in se) ? se[f] : "-",
          (f in rp) ? rp[f] : "-", (f in rf) ? rf[f] : "-", (f in reg) ? reg[f] : 0, (f in ss) ? ss[f] : "-", (f in rs) ? rs[f] : "-"
        tsp += sp[f]; tsf += sf[f]; tse += se[f]; trp += rp[f]; trf += rf[f]; treg += reg[f]
      }
      printf "| **all** | **%d** | **%d** | **%d** | **%d** | **%d** | **%d** | |\n", tsp, tsf, tse, trp, trf, treg
    }' "$RES/regressions.tsv" "$RES/files.tsv"
  echo
  if [ "$(wc -l <"$RES/regressions.tsv")" -gt 1 ]; then
    echo "## Tests that pass on the reference and fail through slotmux"
    echo
    echo "\"flaky\": failed the first time, passed when the file was run again."
    echo
    awk -F'\t' 'NR > 1 {
        if ($1 != last) { printf "\n### %s\n\n", $1; last = $1 }
        m = $4; gsub(/\|/, "\\|", m)
        printf "- [%s] %s: `%s`\n", $3, $2, m
      }' "$RES/regressions.tsv"
    echo
  fi
  if [ -f "$RES/slotmux-exits.txt" ]; then
    echo "## slotmux exited"
    echo
    sed 's/^/- /' "$RES/slotmux-exits.txt"
    echo
  fi
  if [ -s "$RUN_DIR/repairs.log" ]; then
    echo "## Repairs between files"
    echo
    sed 's/^/- /' "$RUN_DIR/repairs.log"
    echo
  fi
  if [ "$CI" = 1 ]; then
    echo "## Unexpected failures (not in $(basename "$KNOWN_FAILURES"))"
    echo
    if [ -s "$RES/unexpected.tsv" ]; then sed 's/^/- /; s/\t/: /g' "$RES/unexpected.tsv"; else echo "none"; fi
  fi
} >"$RES/summary.md"
cp "$RUN_DIR/repairs.log" "$RES/repairs.log"
log "done in ${RUN_SECS}s: $RES/summary.md"
column -t -s $'\t' "$RES/files.tsv" >&2 || true

if [ "$CI" = 1 ]; then
  # Allow-listed failures that did not happen: the list wants pruning (not an error).
  if [ -f "$KNOWN_FAILURES" ]; then
    sed -e '/^#/d' -e '/^$/d' "$KNOWN_FAILURES" | while IFS=$'\t' read -r kf kt knote; do
      case " $FILES " in *" $kf "*) ;; *) continue ;; esac
      case $knote in flaky* | hangs* | skip*) continue ;; esac
      if ! awk -F'\t' -v t="$kt" '($1 == "err" || $1 == "error") && $2 == t { found = 1 } END { exit !found }' \
        "$RES/logs/slotmux/$kf.log.tsv" 2>/dev/null; then
        log "note: $kf \"$kt\" is listed in $(basename "$KNOWN_FAILURES") but passed: remove it from the list"
      fi
    done
  fi
  if [ -s "$RES/unexpected.tsv" ]; then
    log "FAILED: tests failing through slotmux that $(basename "$KNOWN_FAILURES") does not list:"
    sed 's/^/  /' "$RES/unexpected.tsv" >&2
    exit 1
  fi
  log "conformance: no unexpected failures in $NFILES files"
fi
