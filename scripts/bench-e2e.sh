#!/usr/bin/env bash
# End-to-end load benchmark (issue 7): redis-benchmark with one client shape against
#   slotmux      - the release build in front of a local 6-node cluster (3 masters + 3 replicas)
#   cluster      - the same cluster directly, with `redis-benchmark --cluster` (the reference)
#   standalone   - one plain redis-server (one hop: the physical limit)
#   twemproxy    - nutcracker in front of 3 plain redis-servers (the classic one-hop proxy)
# Tests: SET and GET (random keys, -r 100000), and MGET of 10 keys sharing the hashtag {tag};
# each at pipeline 1 and 16, 50 clients, --threads 2. Targets are interleaved (the order
# rotates every repetition) and every cell is repeated REPS times; the report gives medians.
# Also measured: CPU seconds of slotmux and nutcracker per request (/proc/PID/stat), slotmux's
# resident memory under the 50-client load and with IDLE_CLIENTS idle connections (and
# nutcracker's, for comparison).
#
# Usage:   scripts/bench-e2e.sh              (about 9 minutes on 2 cores)
#          QUICK=1 scripts/bench-e2e.sh      (smoke run: 1 repetition, ~1.5 s runs, 2,000 idle
#                                             clients, about 1.5 minutes)
# Knobs:   REPS=3 DUR=5 (target seconds per run) IDLE_CLIENTS=10000 SKIP_BUILD=1
#          SYSCALLS=0 (skip counting system calls with perf) BASE_PORT=7300 OUT=target/bench-e2e
#          WRITE_DOCS=1 (rewrite the generated section of
#          docs/BENCHMARKS.md between its e2e markers) KEEP=1 (keep the temp dir with logs)
# Needs: redis-server/redis-benchmark 7 (installed with apt-get when root), nutcracker
#        (apt-get install -y nutcracker when root), python3, cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  REPS=${REPS:-1}
  DUR=${DUR:-1.5}
  IDLE_CLIENTS=${IDLE_CLIENTS:-2000}
else
  REPS=${REPS:-3}
  DUR=${DUR:-5}
  IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
fi
CLIENTS=50
THREADS=2
KEYSPACE=100000
OUT=${OUT:-target/bench-e2e}
WRITE_DOCS=${WRITE_DOCS:-0}
BIN=$PWD/target/release/slotmux

log() { echo "[bench-e2e $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools

ensure_redis
ensure_cargo
if ! command -v redis-benchmark >/dev/null 2>&1; then
  echo "redis-benchmark is missing (Debian: apt-get install -y redis-tools)" >&2
  exit 1
fi
if ! command -v nutcracker >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing nutcracker (twemproxy) with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nutcracker >/dev/null
  else
    echo "nutcracker is missing (Debian: sudo apt-get install -y nutcracker)" >&2
    exit 1
  fi
fi
command -v python3 >/dev/null 2>&1 || { echo "python3 is missing" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bin slotmux"
  cargo build --release --bin slotmux
fi
[ -x "$BIN" ] || { echo "$BIN is missing" >&2; exit 1; }

# 10,000 idle clients need more than 10,000 descriptors, in slotmux and in the client script.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard"
if [ "$IDLE_CLIENTS" -gt $((hard - 200)) ]; then
  log "ulimit -Hn is $hard: lowering IDLE_CLIENTS from $IDLE_CLIENTS to $((hard - 200))"
  IDLE_CLIENTS=$((hard - 200))
fi

# ---------------------------------------------------------------------------------------------
# Ports and processes

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A base port with 40 free ports from it (and the cluster bus ports, +10000).
pick_base() {
  local base=$1 p ok
  while [ "$base" -lt 60000 ]; do
    ok=1
    for p in $(seq "$base" $((base + 39))); do
      if port_busy "$p" || port_busy $((p + 10000)); then ok=0; break; fi
    done
    if [ "$ok" = 1 ]; then echo "$base"; return 0; fi
    base=$((base + 100))
  done
  return 1
}

BASE=$(pick_base "${BASE_PORT:-7300}")
CLUSTER_PORT=$BASE            # 6 nodes: BASE..BASE+5
STANDALONE_PORT=$((BASE + 10))
TW_BACKENDS=($((BASE + 11)) $((BASE + 12)) $((BASE + 13)))
TW_PORT=$((BASE + 20))
TW_STATS_PORT=$((BASE + 21))
SLOTMUX_PORT=$((BASE + 30))

TMP=$(mktemp -d "${TMPDIR:-/tmp}/slotmux-bench.XXXXXX")
SLOTMUX_PID=""
TW_PID=""
BG_PID=""

any_alive() {
  local p
  for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null
  [ -n "$SLOTMUX_PID" ] && kill "$SLOTMUX_PID" 2>/dev/null
  [ -n "$TW_PID" ] && kill "$TW_PID" 2>/dev/null
  local f pids=()
  for f in "$TMP"/cluster/*/redis.pid "$TMP"/plain-*/redis.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  stop_cluster "$TMP/cluster"
  for f in "$TMP"/plain-*/redis.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  [ -n "$SLOTMUX_PID" ] && wait "$SLOTMUX_PID" 2>/dev/null
  [ -n "$TW_PID" ] && wait "$TW_PID" 2>/dev/null
  # redis-server exits asynchronously after SIGTERM: wait (bounded) so the ports are free again.
  local tries=50
  while [ "$tries" -gt 0 ] && any_alive "${pids[@]}"; do
    sleep 0.1
    tries=$((tries - 1))
  done
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_plain() {
  local port=$1 dir="$TMP/plain-$1"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
    --appendonly no --save '' --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
  wait_for 50 redis-cli -p "$port" ping || { echo "redis-server on $port did not start" >&2; return 1; }
}

log "ports: cluster $CLUSTER_PORT-$((CLUSTER_PORT + 5)), standalone $STANDALONE_PORT," \
  "twemproxy $TW_PORT -> ${TW_BACKENDS[*]}, slotmux $SLOTMUX_PORT; temp dir $TMP"
start_cluster "$TMP/cluster" "$CLUSTER_PORT"
start_plain "$STANDALONE_PORT"
for p in "${TW_BACKENDS[@]}"; do start_plain "$p"; done

cat >"$TMP/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$TW_PORT
  hash: fnv1a_64
  hash_tag: "{}"
  distribution: ketama
  redis: true
  preconnect: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
   - 127.0.0.1:${TW_BACKENDS[0]}:1
   - 127.0.0.1:${TW_BACKENDS[1]}:1
   - 127.0.0.1:${TW_BACKENDS[2]}:1
EOF
nutcracker -t -c "$TMP/nutcracker.yml" >/dev/null 2>&1 ||
  { nutcracker -t -c "$TMP/nutcracker.yml"; exit 1; }
start_nutcracker() {
  nutcracker -c "$TMP/nutcracker.yml" -o "$TMP/nutcracker.log" -v 4 \
    -s "$TW_STATS_PORT" -a 127.0.0.1 -p "$TMP/nutcracker.pid" &
  TW_PID=$!
  wait_for 50 redis-cli -p "$TW_PORT" set bench:probe 1 || { echo "nutcracker did not start" >&2; exit 1; }
}

start_slotmux() {
  RUST_LOG=warn "$BIN" --listen "127.0.0.1:$SLOTMUX_PORT" \
    --seeds "127.0.0.1:$CLUSTER_PORT,127.0.0.1:$((CLUSTER_PORT + 1))" \
    --metrics-listen off --maxclients 20000 >>"$TMP/slotmux.log" 2>&1 &
  SLOTMUX_PID=$!
  wait_for 100 sh -c "redis-cli -p $SLOTMUX_PORT set bench:probe 1 | grep -q OK" ||
    { echo "slotmux did not start"; cat "$TMP/slotmux.log"; exit 1; } >&2
}

# stop_proc PID: SIGTERM and wait for it (bounded by slotmux's drain timeout).
stop_proc() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

start_nutcracker
start_slotmux

# Values for the MGET keys where one name means one key (the cluster-mode run rewrites {tag}
# per client to a tag of the node it talks to, so its keys are others, missing ones).
MGET_KEYS=()
for i in $(seq 1 10); do MGET_KEYS+=("{tag}:k$i"); done
for p in "$SLOTMUX_PORT" "$STANDALONE_PORT" "$TW_PORT"; do
  args=()
  for k in "${MGET_KEYS[@]}"; do args+=("$k" xxx); done
  redis-cli -p "$p" mset "${args[@]}" >/dev/null
done

# ---------------------------------------------------------------------------------------------
# Measurement helpers

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # "utime stime" of PID, in clock ticks
  awk '{print $14, $15}' "/proc/$1/stat"
}
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }

target_args() { # the redis-benchmark connection arguments of a target
  case $1 in
  slotmux) echo "-p $SLOTMUX_PORT" ;;
  cluster) echo "--cluster -p $CLUSTER_PORT" ;;
  standalone) echo "-p $STANDALONE_PORT" ;;
  twemproxy) echo "-p $TW_PORT" ;;
  esac
}
target_pid() {
  case $1 in
  slotmux) echo "$SLOTMUX_PID" ;;
  twemproxy) echo "$TW_PID" ;;
  *) echo "" ;;
  esac
}

TARGETS=(slotmux cluster standalone twemproxy)
TESTS=(set_p1 get_p1 mget_p1 set_p16 get_p16 mget_p16)
declare -A EST # requests/s estimate per test,target: sizes -n so each run lasts ~DUR seconds
guess() {
  case $1 in
  *_p1) echo 50000 ;;
  mget_p16) echo 200000 ;;
  *_p16) echo 400000 ;;
  esac
}

RAW="$TMP/raw.tsv"
printf 'rep\ttest\ttarget\tn\trps\tavg_ms\tp50_ms\tp95_ms\tp99_ms\tmax_ms\tcpu_s\tsys_s\tseconds\trss_kib\n' >"$RAW"

run_one() { # run_one REP TEST TARGET
  local rep=$1 test=$2 target=$3 pipe=1 est n pid t0 t1 u0="" s0="" u1 s1 rss="" csv line cpu="" sys=""
  local secs conn
  case $test in *_p16) pipe=16 ;; esac
  est=${EST[$test,$target]:-$(guess "$test")}
  n=$(python3 -c "print(max(20000, int($est * $DUR) // 1000 * 1000))")
  pid=$(target_pid "$target")
  read -ra conn <<<"$(target_args "$target")"
  local cmd=(redis-benchmark "${conn[@]}" -c "$CLIENTS" --threads "$THREADS"
    -P "$pipe" -r "$KEYSPACE" -n "$n" --csv)
  case $test in
  set_*) cmd+=(-t set) ;;
  get_*) cmd+=(-t get) ;;
  mget_*) cmd+=(MGET "${MGET_KEYS[@]}") ;;
  esac
  if [ "$rep" = 1 ]; then echo "${cmd[*]}" >>"$TMP/commands.txt"; fi
  if [ -n "$pid" ]; then read -r u0 s0 <<<"$(cpu_ticks "$pid")"; fi
  t0=$(date +%s.%N)
  "${cmd[@]}" >"$TMP/out.csv" 2>"$TMP/err.txt" &
  BG_PID=$!
  if [ "$target" = slotmux ]; then
    # Resident memory in the middle of the run (the 50 clients are connected and busy).
    sleep "$(python3 -c "print($DUR / 2)")"
    if kill -0 "$BG_PID" 2>/dev/null; then rss=$(rss_kib "$pid"); fi
  fi
  wait "$BG_PID" || { cat "$TMP/err.txt" >&2; BG_PID=""; return 1; }
  BG_PID=""
  t1=$(date +%s.%N)
  if [ -n "$pid" ]; then
    read -r u1 s1 <<<"$(cpu_ticks "$pid")"
    cpu=$(python3 -c "print(($u1 + $s1 - $u0 - $s0) / $CLK_TCK)")
    sys=$(python3 -c "print(($s1 - $s0) / $CLK_TCK)")
  fi
  secs=$(python3 -c "print(round($t1 - $t0, 2))")
  line=$(grep '^"' "$TMP/out.csv" | tail -n 1)
  csv=$(python3 -c 'import csv,sys; r=next(csv.reader([sys.argv[1]])); print("\t".join(r[1:]))' "$line")
  # csv: rps avg min p50 p95 p99 max
  local rps avg p50 p95 p99 max
  IFS=$'\t' read -r rps avg _ p50 p95 p99 max <<<"$csv"
  EST[$test,$target]=$rps
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$test" "$target" "$n" \
    "$rps" "$avg" "$p50" "$p95" "$p99" "$max" "$cpu" "$sys" "$secs" "$rss" >>"$RAW"
  log "rep $rep $test $target: $rps req/s p50 ${p50} ms p99 ${p99} ms${cpu:+ cpu ${cpu}s} (${secs}s)"
}

# ---------------------------------------------------------------------------------------------
# Idle clients (first, while the proxies are fresh): open N plain TCP connections, then send one
# PING on each; RSS at each step.

cat >"$TMP/idle.py" <<'EOF'
import resource, socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def settle():
    # RSS stops moving once the server has registered every connection.
    last, same = -1, 0
    for _ in range(100):
        time.sleep(0.1)
        r = rss()
        same = same + 1 if r == last else 0
        last = r
        if same >= 5:
            break
    return last
before = settle()
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
connected = settle()
for s in socks:
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
for s in socks:
    got = b""
    while not got.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            raise SystemExit("connection closed by the server")
        got += chunk
    assert got == b"+PONG\r\n", got
pinged = settle()
for s in socks:
    s.close()
closed = settle()
# A second round shows whether the memory of the first is reused (retained, not leaked).
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
again = settle()
for s in socks:
    s.close()
print(before, connected, pinged, closed, again)
EOF

idle_test() { # idle_test PORT PID -> "before connected pinged closed reconnected" (KiB)
  python3 "$TMP/idle.py" "$1" "$IDLE_CLIENTS" "$2"
}
log "idle clients: $IDLE_CLIENTS connections to slotmux"
read -r SM_IDLE_BEFORE SM_IDLE_CONNECTED SM_IDLE_PINGED SM_IDLE_CLOSED SM_IDLE_AGAIN \
  <<<"$(idle_test "$SLOTMUX_PORT" "$SLOTMUX_PID")"
log "slotmux RSS KiB: before $SM_IDLE_BEFORE, connected $SM_IDLE_CONNECTED, after one PING each" \
  "$SM_IDLE_PINGED, all closed $SM_IDLE_CLOSED, connected again $SM_IDLE_AGAIN"
log "idle clients: $IDLE_CLIENTS connections to nutcracker"
read -r TW_IDLE_BEFORE TW_IDLE_CONNECTED TW_IDLE_PINGED TW_IDLE_CLOSED TW_IDLE_AGAIN \
  <<<"$(idle_test "$TW_PORT" "$TW_PID")"
log "nutcracker RSS KiB: before $TW_IDLE_BEFORE, connected $TW_IDLE_CONNECTED, after one PING each" \
  "$TW_IDLE_PINGED, all closed $TW_IDLE_CLOSED, connected again $TW_IDLE_AGAIN"

# Fresh proxies for the load runs, so their memory under load is not the idle test's leftover.
stop_proc "$SLOTMUX_PID"
stop_proc "$TW_PID"
start_nutcracker
start_slotmux
SLOTMUX_RSS_LOAD_START=$(rss_kib "$SLOTMUX_PID")

# ---------------------------------------------------------------------------------------------
# Load runs: for each repetition, for each test, every target (rotating the order).

for rep in $(seq 1 "$REPS"); do
  for test in "${TESTS[@]}"; do
    for k in 0 1 2 3; do
      run_one "$rep" "$test" "${TARGETS[$(((k + rep - 1) % 4))]}"
    done
  done
done
SLOTMUX_HWM_LOAD=$(hwm_kib "$SLOTMUX_PID")
SLOTMUX_RSS_AFTER_LOAD=$(rss_kib "$SLOTMUX_PID")

# ---------------------------------------------------------------------------------------------
# System calls per request (needs `perf` with access to the syscall tracepoints, e.g. as root):
# one more GET run per proxy and pipeline depth, counted with `perf stat -p`. Most of a proxy's
# CPU at P1 is in the kernel; these counts say how much of that is inherent (one read and one
# write per client request) and how much is the proxy's own choice (backend batching, wake-ups).

SYSC="$TMP/syscalls.tsv"
printf 'test\ttarget\tn\tevent\tcount\n' >"$SYSC"
SC_EVENTS=""
for e in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait futex; do
  SC_EVENTS="$SC_EVENTS${SC_EVENTS:+,}syscalls:sys_enter_$e"
done
SC_EVENTS="$SC_EVENTS,context-switches"
syscall_run() { # syscall_run TEST TARGET
  local test=$1 target=$2 pipe=1 est n pid perf_pid conn
  case $test in *_p16) pipe=16 ;; esac
  est=${EST[$test,$target]:-$(guess "$test")}
  n=$(python3 -c "print(max(20000, int($est * $DUR) // 1000 * 1000))")
  pid=$(target_pid "$target")
  read -ra conn <<<"$(target_args "$target")"
  perf stat -x, -e "$SC_EVENTS" -p "$pid" -o "$TMP/perf.txt" &
  perf_pid=$!
  sleep 0.5
  redis-benchmark "${conn[@]}" -c "$CLIENTS" --threads "$THREADS" -P "$pipe" -r "$KEYSPACE" \
    -n "$n" -t get --csv >/dev/null 2>&1
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  awk -F, -v t="$test" -v tg="$target" -v n="$n" \
    '/^[0-9]/ {ev=$3; sub(/^syscalls:sys_enter_/, "", ev); printf "%s\t%s\t%s\t%s\t%s\n", t, tg, n, ev, $1}' \
    "$TMP/perf.txt" >>"$SYSC"
  log "syscalls counted: $test $target ($n requests)"
}
if [ "${SYSCALLS:-1}" = 1 ] && command -v perf >/dev/null 2>&1 &&
  perf stat -e syscalls:sys_enter_writev true >/dev/null 2>&1; then
  for test in get_p1 get_p16; do
    for target in slotmux twemproxy; do syscall_run "$test" "$target"; done
  done
else
  log "perf with syscall tracepoints is not available: system calls are not counted"
fi

# ---------------------------------------------------------------------------------------------
# Report

mkdir -p "$OUT"
cp "$RAW" "$OUT/raw.tsv"
cp "$TMP/commands.txt" "$OUT/commands.txt"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  REV="$REV (with uncommitted changes in src/)"
fi
export REV REPS DUR CLIENTS THREADS KEYSPACE IDLE_CLIENTS QUICK
export SLOTMUX_HWM_LOAD SLOTMUX_RSS_AFTER_LOAD
export SM_IDLE_BEFORE SM_IDLE_CONNECTED SM_IDLE_PINGED SM_IDLE_CLOSED SM_IDLE_AGAIN SLOTMUX_RSS_LOAD_START
export TW_IDLE_BEFORE TW_IDLE_CONNECTED TW_IDLE_PINGED TW_IDLE_CLOSED TW_IDLE_AGAIN
export MACHINE_CPU MACHINE_KERNEL MACHINE_NPROC V_REDIS V_NUTCRACKER V_RUSTC V_BENCH
MACHINE_CPU=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
MACHINE_KERNEL=$(uname -r)
MACHINE_NPROC=$(nproc)
V_REDIS=$(redis-server --version | awk '{print $3}' | sed 's/^v=//')
V_NUTCRACKER=$(nutcracker --version 2>&1 | awk '/nutcracker-/{sub(/.*nutcracker-/, ""); print; exit}')
V_RUSTC=$(rustc --version)
V_BENCH=$(redis-benchmark --version | awk '{print $2}')

cp "$SYSC" "$OUT/syscalls.tsv"
python3 - "$RAW" "$TMP/commands.txt" "$SYSC" >"$OUT/results.md" <<'EOF'
import csv, os, statistics, sys
raw, cmds, sysc = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
sc_rows = list(csv.DictReader(open(sysc), delimiter="\t"))
E = os.environ
targets = ["slotmux", "cluster", "standalone", "twemproxy"]
tests = ["set_p1", "get_p1", "mget_p1", "set_p16", "get_p16", "mget_p16"]
label = {"set_p1": "SET, P1", "get_p1": "GET, P1", "mget_p1": "MGET 10 keys, P1",
         "set_p16": "SET, P16", "get_p16": "GET, P16", "mget_p16": "MGET 10 keys, P16"}
def cell(test, target, key):
    v = [float(r[key]) for r in rows if r["test"] == test and r["target"] == target and r[key] != ""]
    return v
def med(test, target, key):
    v = cell(test, target, key)
    return statistics.median(v) if v else None
out = []
p = out.append
p(f"Generated by `scripts/bench-e2e.sh`{' (QUICK=1 smoke run)' if E['QUICK'] == '1' else ''}: "
  f"slotmux {E['REV']}, {E['REPS']} repetition(s) of every cell, ~{E['DUR']} s per run, "
  f"{E['CLIENTS']} clients, `--threads {E['THREADS']}`, random keys over {E['KEYSPACE']}.")
p("")
p(f"- Machine: {E['MACHINE_NPROC']} vCPU, {E['MACHINE_CPU']}, Linux {E['MACHINE_KERNEL']} "
  "(shared with other work while measuring: see the noise note)")
p(f"- Versions: redis-server {E['V_REDIS']}, redis-benchmark {E['V_BENCH']}, "
  f"nutcracker {E['V_NUTCRACKER']}, {E['V_RUSTC']}")
p("")
p("### Throughput (requests/s, median; ratio to the direct cluster in brackets)")
p("")
p("| test | " + " | ".join(targets) + " |")
p("|---|" + "---:|" * len(targets))
for t in tests:
    ref = med(t, "cluster", "rps")
    cells = []
    for tg in targets:
        m = med(t, tg, "rps")
        if m is None:
            cells.append("-")
        elif ref:
            cells.append(f"{m:,.0f} ({m / ref:.2f}x)")
        else:
            cells.append(f"{m:,.0f}")
    p(f"| {label[t]} | " + " | ".join(cells) + " |")
p("")
p("Every run (requests/s per repetition, in run order):")
p("")
p("| test | " + " | ".join(targets) + " |")
p("|---|" + "---|" * len(targets))
for t in tests:
    p(f"| {label[t]} | " + " | ".join(
        " / ".join(f"{v/1000:.0f}k" for v in cell(t, tg, "rps")) for tg in targets) + " |")
p("")
p("### Latency (ms, median over repetitions of redis-benchmark's p50 / p99)")
p("")
p("| test | " + " | ".join(targets) + " | slotmux p99 / cluster p99 |")
p("|---|" + "---:|" * (len(targets) + 1))
for t in tests:
    cells = []
    for tg in targets:
        a, b = med(t, tg, "p50_ms"), med(t, tg, "p99_ms")
        cells.append("-" if a is None else f"{a:.3f} / {b:.3f}")
    s, c = med(t, "slotmux", "p99_ms"), med(t, "cluster", "p99_ms")
    cells.append(f"{s / c:.2f}x" if s and c else "-")
    p(f"| {label[t]} | " + " | ".join(cells) + " |")
p("")
p("### Proxy CPU per request (µs of the proxy's own user+system CPU; median over repetitions)")
p("")
p("| test | slotmux µs/request (= CPU s per 1M requests) | of which kernel | twemproxy µs/request | of which kernel |")
p("|---|---:|---:|---:|---:|")
def cpu_per(t, tg, key):
    v = [float(r[key]) / float(r["n"]) * 1e6 for r in rows
         if r["test"] == t and r["target"] == tg and r[key] != ""]
    return statistics.median(v) if v else None
for t in tests:
    cells = []
    for tg in ("slotmux", "twemproxy"):
        a, s = cpu_per(t, tg, "cpu_s"), cpu_per(t, tg, "sys_s")
        cells += ["-", "-"] if a is None else [f"{a:.2f}", f"{s:.2f} ({s / a * 100:.0f}%)" if a else "-"]
    p(f"| {label[t]} | " + " | ".join(cells) + " |")
p("")
p("For MGET one request is one MGET of 10 keys. CPU comes from /proc/PID/stat (10 ms ticks) "
  "around each run, so it includes the proxy's work for redis-benchmark's start-up CONFIG GET.")
p("")
if sc_rows:
    p("### System calls per request (GET, one extra run per cell, counted with `perf stat`)")
    p("")
    groups = {"reads": ("read", "readv", "recvfrom", "recvmsg"),
              "writes": ("write", "writev", "sendto", "sendmsg"),
              "epoll waits": ("epoll_wait", "epoll_pwait"), "futex": ("futex",),
              "context switches": ("context-switches",)}
    p("| test | proxy | " + " | ".join(groups) + " | all system calls |")
    p("|---|---|" + "---:|" * (len(groups) + 1))
    for t in ("get_p1", "get_p16"):
        for tg in ("slotmux", "twemproxy"):
            sel = [r for r in sc_rows if r["test"] == t and r["target"] == tg]
            if not sel:
                continue
            n = float(sel[0]["n"])
            def count(names):
                return sum(float(r["count"]) for r in sel if r["event"] in names)
            cells = [f"{count(names) / n:.3f}" for names in groups.values()]
            total = sum(count(names) for g, names in groups.items() if g != "context switches")
            p(f"| {label[t]} | {tg} | " + " | ".join(cells) + f" | {total / n:.2f} |")
    p("")
    p("A proxy needs at least one read and one write per client request at P1 (the client "
      "waits for each reply); what it adds beyond that is its backend traffic (shared by many "
      "requests when batched) and its waits.")
    p("")
p("### Resident memory")
p("")
rss_load = [float(r["rss_kib"]) for r in rows if r["target"] == "slotmux" and r["rss_kib"] != ""]
n = int(E["IDLE_CLIENTS"])
def per(a, b):
    return (float(b) - float(a)) / n
mib = lambda k: f"{int(E[k]) / 1024:.1f} MiB"
p("Idle clients (on freshly started proxies):")
p("")
p("| | slotmux | twemproxy |")
p("|---|---:|---:|")
p(f"| fresh (backend connections open, no client) | {mib('SM_IDLE_BEFORE')} | {mib('TW_IDLE_BEFORE')} |")
p(f"| {n:,} idle clients connected | {mib('SM_IDLE_CONNECTED')} | {mib('TW_IDLE_CONNECTED')} |")
p(f"| the same after one PING each | {mib('SM_IDLE_PINGED')} | {mib('TW_IDLE_PINGED')} |")
p(f"| **per idle client, connected** | **{per(E['SM_IDLE_BEFORE'], E['SM_IDLE_CONNECTED']):.1f} KiB** | {per(E['TW_IDLE_BEFORE'], E['TW_IDLE_CONNECTED']):.1f} KiB |")
p(f"| **per idle client, after one PING** | **{per(E['SM_IDLE_BEFORE'], E['SM_IDLE_PINGED']):.1f} KiB** | {per(E['TW_IDLE_BEFORE'], E['TW_IDLE_PINGED']):.1f} KiB |")
p(f"| all {n:,} closed | {mib('SM_IDLE_CLOSED')} | {mib('TW_IDLE_CLOSED')} |")
p(f"| {n:,} connected again (memory reused, not leaked, if close to the first round) | {mib('SM_IDLE_AGAIN')} | {mib('TW_IDLE_AGAIN')} |")
p("")
p("Under load (slotmux restarted after the idle test):")
p("")
p("| | slotmux |")
p("|---|---:|")
p(f"| at start | {mib('SLOTMUX_RSS_LOAD_START')} |")
if rss_load:
    p(f"| 50 clients under load (largest mid-run sample) | {max(rss_load) / 1024:.1f} MiB |")
p(f"| peak over the load runs (VmHWM) | {mib('SLOTMUX_HWM_LOAD')} |")
p(f"| after the load runs (clients gone) | {mib('SLOTMUX_RSS_AFTER_LOAD')} |")
p("")
p("### Commands (first repetition; `-n` is sized from the previous run of the same cell)")
p("")
p("```")
for line in open(cmds):
    p(line.rstrip())
p("```")
print("\n".join(out))
EOF

log "results: $OUT/results.md (raw runs: $OUT/raw.tsv)"
cat "$OUT/results.md"

if [ "$WRITE_DOCS" = 1 ] && [ -f docs/BENCHMARKS.md ] && grep -q '<!-- e2e:begin -->' docs/BENCHMARKS.md; then
  python3 - docs/BENCHMARKS.md "$OUT/results.md" <<'EOF'
import sys
doc, res = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
a = text.index("<!-- e2e:begin -->") + len("<!-- e2e:begin -->")
b = text.index("<!-- e2e:end -->")
open(doc, "w").write(text[:a] + "\n" + res + "\n" + text[b:])
EOF
  log "rewrote the generated section of docs/BENCHMARKS.md"
fi
