#!/usr/bin/env bash
# End-to-end load benchmark (issue 7): redis-benchmark with one client shape against
#   slotmux      - the release build in front of a local 6-node cluster (3 masters + 3 replicas);
#                  or several builds side by side (VARIANTS, below), one target row each
#   cluster      - the same cluster directly, with `redis-benchmark --cluster` (the reference)
#   standalone   - one plain redis-server (one hop: the physical limit)
#   twemproxy    - nutcracker in front of 3 plain redis-servers (the classic one-hop proxy)
#   predixy      - predixy (C++ Redis Cluster proxy, 1 worker thread) in front of the same cluster,
#                  when PREDIXY_BIN names a binary (the row is skipped otherwise)
# Tests: SET and GET (random keys, -r 100000), and MGET of 10 keys sharing the hashtag {tag};
# each at pipeline 1 and 16, 50 clients, --threads 2. Targets are interleaved (the order
# rotates every repetition) and every cell is repeated REPS times; the report gives medians.
# Also measured: CPU seconds of every proxy (each slotmux variant, nutcracker, predixy) per
# request (/proc/PID/stat), their resident memory under the 50-client load and with
# IDLE_CLIENTS idle connections, system calls per request (perf), and how many backend
# commands one client MGET becomes.
#
# Pinned cores (PINNED=1, the default on machines with 2+ CPUs and taskset): after all the
# other runs, the cluster's redis-servers are pinned to CPU 0 (`taskset -a -p -c 0` on their
# PIDs) and every proxy on the cluster (each slotmux variant, predixy) is started afresh under
# `taskset -c 1`; redis-benchmark runs under `taskset -c 0` with `--threads 1` (it has one core).
# SET and GET at P1 and P16 are then measured against these proxies and against the direct
# cluster on CPU 0 alone (the reference of that table): what a sidecar with a core of its own
# gets. The pinned runs come last, interleaved among themselves (rotating order, REPS
# repetitions), so no other row runs with pinned nodes; the nodes' affinities are restored
# afterwards. A slotmux variant without --threads sees one CPU under taskset and starts one
# worker thread.
#
# Usage:   scripts/bench-e2e.sh              (about 9 minutes on 2 cores with one slotmux;
#                                             about 15 with 2 variants, predixy and pinned rows)
#          QUICK=1 scripts/bench-e2e.sh      (smoke run: 1 repetition, ~1.5 s runs, 2,000 idle
#                                             clients; about 3 minutes with 2 variants + predixy)
# Paired A/B of two builds (same cluster, interleaved, one row each, plus a table of the
# per-repetition ratios of each variant to the first one):
#          SKIP_BUILD=1 VARIANTS="main=/work/baseline/slotmux-9958f7a new=target/release/slotmux" \
#            PREDIXY_BIN=/work/peers/predixy/predixy scripts/bench-e2e.sh
# Knobs:   REPS=3 DUR=5 (target seconds per run) IDLE_CLIENTS=10000 SKIP_BUILD=1
#          SYSCALLS=0 (skip counting system calls with perf) BASE_PORT=7300 OUT=target/bench-e2e
#          WRITE_DOCS=1 (rewrite the generated section of
#          docs/BENCHMARKS.md between its e2e markers) KEEP=1 (keep the temp dir with logs)
#          VARIANTS="NAME=BINARY[@ARG[@ARG...]] ..." slotmux builds to compare, space-separated;
#            NAME is [A-Za-z0-9_.-]+ (not cluster/standalone/twemproxy/predixy), BINARY is
#            absolute or relative to the repository, and every `@ARG` is one extra slotmux
#            argument, e.g. `one=target/release/slotmux@--threads=1` or
#            `b1=/tmp/slotmux@--backend-connections@1`. At most 10. Unset: one target named
#            `slotmux` running target/release/slotmux (built unless SKIP_BUILD=1; with
#            VARIANTS, cargo builds only when a variant uses target/release/slotmux).
#          PREDIXY_BIN=/path/to/predixy (unset or not executable: no predixy row)
#          PINNED=0 (skip the pinned-core runs) PIN_PROXY_CPU=1 PIN_LOAD_CPU=0
# Ports (from the first free block at BASE_PORT): cluster +0..+5, standalone +10,
#          twemproxy's servers +11..+13, twemproxy +20 (stats +21), predixy +22 (pinned +23),
#          slotmux variants +30.. (pinned +40..).
# Needs: redis-server/redis-benchmark 7 (installed with apt-get when root), nutcracker
#        (apt-get install -y nutcracker when root), python3, cargo (unless SKIP_BUILD=1),
#        taskset (util-linux) for the pinned runs, perf for the system call counts.
#
# Building predixy by hand (outside this repository; the script only takes PREDIXY_BIN).
# predixy 1.0.5 (github.com/joyieldInc/predixy, commit ca1630a) needs `-include ctime` with
# g++ 12, whose headers no longer pull in <ctime> through <string>:
#   git clone https://github.com/joyieldInc/predixy /work/peers/predixy-src
#   make -C /work/peers/predixy-src -j2 LVL="-g -O3 -include ctime"
#   mkdir -p /work/peers/predixy && cp /work/peers/predixy-src/src/predixy /work/peers/predixy/
# The script writes predixy's configuration itself: `WorkerThreads 1`, a ClusterServerPool
# seeded with the first two cluster nodes, reads from masters only, no client timeout,
# warnings and errors logged to a file.
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
PIN_PROXY_CPU=${PIN_PROXY_CPU:-1}
PIN_LOAD_CPU=${PIN_LOAD_CPU:-0}
PIN_THREADS=1

log() { echo "[bench-e2e $(date +%T)] $*" >&2; }
die() { echo "bench-e2e: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Targets: slotmux variants (VARIANTS), predixy (PREDIXY_BIN)

V_NAMES=() # variant names, in VARIANTS order
V_BINS=()  # their binaries (absolute paths)
V_ARGS=()  # their extra arguments, '@'-separated
if [ -n "${VARIANTS:-}" ]; then
  read -ra entries <<<"$VARIANTS"
  for e in "${entries[@]}"; do
    case $e in *=?*) ;; *) die "VARIANTS entry '$e' is not NAME=BINARY[@ARG...]" ;; esac
    name=${e%%=*}
    rest=${e#*=}
    bin=${rest%%@*}
    extra=""
    case $rest in *@*) extra=${rest#*@} ;; esac
    [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "VARIANTS: bad name '$name' (use [A-Za-z0-9_.-])"
    case $name in cluster | standalone | twemproxy | predixy) die "VARIANTS: '$name' is a reserved target name" ;; esac
    for other in "${V_NAMES[@]}"; do
      [ "$other" != "$name" ] || die "VARIANTS: name '$name' given twice"
    done
    case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
    V_NAMES+=("$name")
    V_BINS+=("$bin")
    V_ARGS+=("$extra")
  done
  [ "${#V_NAMES[@]}" -ge 1 ] || die "VARIANTS is empty"
  [ "${#V_NAMES[@]}" -le 10 ] || die "VARIANTS: at most 10 variants"
else
  V_NAMES=(slotmux)
  V_BINS=("$BIN")
  V_ARGS=("")
fi

HAVE_PREDIXY=0
if [ -n "${PREDIXY_BIN:-}" ] && [ -x "${PREDIXY_BIN:-}" ]; then
  case $PREDIXY_BIN in /*) ;; *) PREDIXY_BIN=$PWD/$PREDIXY_BIN ;; esac
  HAVE_PREDIXY=1
elif [ -n "${PREDIXY_BIN:-}" ]; then
  log "PREDIXY_BIN=$PREDIXY_BIN is not an executable file: skipping the predixy row"
else
  log "PREDIXY_BIN is not set: skipping the predixy row"
fi

# ---------------------------------------------------------------------------------------------
# Tools

ensure_redis
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

NEED_BUILD=0
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  for b in "${V_BINS[@]}"; do [ "$b" = "$BIN" ] && NEED_BUILD=1; done
fi
if [ "$NEED_BUILD" = 1 ]; then
  ensure_cargo
  log "cargo build --release --bin slotmux"
  cargo build --release --bin slotmux
fi
for b in "${V_BINS[@]}"; do
  [ -x "$b" ] || { echo "$b is missing" >&2; exit 1; }
done

PINNED=${PINNED:-1}
if [ "$PINNED" = 1 ]; then
  if ! command -v taskset >/dev/null 2>&1; then
    log "taskset is missing (util-linux): skipping the pinned-core runs"
    PINNED=0
  elif [ "$(nproc)" -lt 2 ] || [ "$PIN_PROXY_CPU" = "$PIN_LOAD_CPU" ] ||
    ! taskset -c "$PIN_PROXY_CPU" true 2>/dev/null || ! taskset -c "$PIN_LOAD_CPU" true 2>/dev/null; then
    log "CPUs $PIN_LOAD_CPU and $PIN_PROXY_CPU are not both usable: skipping the pinned-core runs"
    PINNED=0
  fi
fi

# 10,000 idle clients need more than 10,000 descriptors, in the proxies and in the client script.
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

# A base port with 50 free ports from it (and the cluster bus ports, +10000).
pick_base() {
  local base=$1 p ok
  while [ "$base" -lt 60000 ]; do
    ok=1
    for p in $(seq "$base" $((base + 49))); do
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

# Proxies are keyed PHASE:TARGET, PHASE being `main` (the shared runs) or `pin` (pinned cores).
declare -A PROXY_PORT PROXY_PID
PROXY_PORT[main:twemproxy]=$TW_PORT
PROXY_PORT[main:predixy]=$((BASE + 22))
PROXY_PORT[pin:predixy]=$((BASE + 23))
for i in "${!V_NAMES[@]}"; do
  PROXY_PORT[main:${V_NAMES[$i]}]=$((BASE + 30 + i))
  PROXY_PORT[pin:${V_NAMES[$i]}]=$((BASE + 40 + i))
done

TARGETS=("${V_NAMES[@]}" cluster standalone twemproxy) # the shared runs
PROXIES=("${V_NAMES[@]}" twemproxy)                    # processes measured there
PIN_TARGETS=("${V_NAMES[@]}" cluster)                  # the pinned runs
if [ "$HAVE_PREDIXY" = 1 ]; then
  TARGETS+=(predixy)
  PROXIES+=(predixy)
  PIN_TARGETS+=(predixy)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/slotmux-bench.XXXXXX")
BG_PID=""

# alive PID: the process exists and is not a zombie (our exited children are until waited).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
any_alive() {
  local p
  for p in "$@"; do alive "$p" && return 0; done
  return 1
}

# stop_proc PID: SIGTERM, wait up to 15 s (slotmux drains in-flight requests), then SIGKILL.
stop_proc() {
  local pid=$1 tries=150
  kill "$pid" 2>/dev/null || true
  while [ "$tries" -gt 0 ] && alive "$pid"; do
    sleep 0.1
    tries=$((tries - 1))
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null
  local f pid pids=()
  for pid in "${PROXY_PID[@]}"; do
    kill "$pid" 2>/dev/null
    pids+=("$pid")
  done
  for f in "$TMP"/cluster/*/redis.pid "$TMP"/plain-*/redis.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  stop_cluster "$TMP/cluster"
  for f in "$TMP"/plain-*/redis.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  # redis-server exits asynchronously after SIGTERM, slotmux after draining: wait (bounded) so
  # the ports are free again, then SIGKILL whatever is left.
  local tries=100
  while [ "$tries" -gt 0 ] && [ "${#pids[@]}" -gt 0 ] && any_alive "${pids[@]}"; do
    sleep 0.1
    tries=$((tries - 1))
  done
  for pid in "${pids[@]}"; do alive "$pid" && kill -9 "$pid" 2>/dev/null; done
  for pid in "${PROXY_PID[@]}"; do wait "$pid" 2>/dev/null; done
  [ -n "$BG_PID" ] && wait "$BG_PID" 2>/dev/null
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

ports_msg="cluster $CLUSTER_PORT-$((CLUSTER_PORT + 5)), standalone $STANDALONE_PORT,"
ports_msg+=" twemproxy $TW_PORT -> ${TW_BACKENDS[*]}"
for v in "${V_NAMES[@]}"; do ports_msg+=", $v ${PROXY_PORT[main:$v]}"; done
if [ "$HAVE_PREDIXY" = 1 ]; then ports_msg+=", predixy ${PROXY_PORT[main:predixy]}"; fi
log "ports: $ports_msg; temp dir $TMP"
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

if [ "$HAVE_PREDIXY" = 1 ]; then
  # Notice-level logging would write two lines per client connection; keep warnings/errors.
  cat >"$TMP/predixy.conf" <<EOF
Name slotmux-bench
Bind 127.0.0.1:${PROXY_PORT[main:predixy]}
WorkerThreads 1
ClientTimeout 0
LogVerbSample 0
LogDebugSample 0
LogInfoSample 0
LogNoticeSample 0
LogWarnSample 1
LogErrorSample 1
ClusterServerPool {
    MasterReadPriority 100
    StaticSlaveReadPriority 0
    DynamicSlaveReadPriority 0
    Servers {
        + 127.0.0.1:$CLUSTER_PORT
        + 127.0.0.1:$((CLUSTER_PORT + 1))
    }
}
EOF
fi

# wait_ready PORT NAME LOG: a SET through the proxy answers OK (it knows the cluster by then).
wait_ready() {
  wait_for 100 sh -c "redis-cli -p $1 set bench:probe 1 | grep -q OK" ||
    { echo "$2 did not start on port $1"; cat "$3"; exit 1; } >&2
}

# start_proxy PHASE TARGET: starts it (under `taskset -c PIN_PROXY_CPU` when PHASE is pin) and
# records its PID in PROXY_PID[PHASE:TARGET].
start_proxy() {
  local phase=$1 target=$2 port pin=() i extra=() logf
  port=${PROXY_PORT[$phase:$target]}
  if [ "$phase" = pin ]; then pin=(taskset -c "$PIN_PROXY_CPU"); fi
  logf="$TMP/$target-$phase.log"
  case $target in
  twemproxy)
    nutcracker -c "$TMP/nutcracker.yml" -o "$TMP/nutcracker.log" -v 4 \
      -s "$TW_STATS_PORT" -a 127.0.0.1 -p "$TMP/nutcracker.pid" &
    PROXY_PID[$phase:$target]=$!
    logf="$TMP/nutcracker.log"
    ;;
  predixy)
    "${pin[@]}" "$PREDIXY_BIN" "$TMP/predixy.conf" --Bind="127.0.0.1:$port" >>"$logf" 2>&1 &
    PROXY_PID[$phase:$target]=$!
    ;;
  *)
    for i in "${!V_NAMES[@]}"; do [ "${V_NAMES[$i]}" = "$target" ] && break; done
    if [ -n "${V_ARGS[$i]}" ]; then IFS=@ read -ra extra <<<"${V_ARGS[$i]}"; fi
    RUST_LOG=warn "${pin[@]}" "${V_BINS[$i]}" --listen "127.0.0.1:$port" \
      --seeds "127.0.0.1:$CLUSTER_PORT,127.0.0.1:$((CLUSTER_PORT + 1))" \
      --metrics-listen off --maxclients 20000 "${extra[@]}" >>"$logf" 2>&1 &
    PROXY_PID[$phase:$target]=$!
    ;;
  esac
  wait_ready "$port" "$target ($phase)" "$logf"
}
stop_proxy() { # stop_proxy PHASE TARGET
  local key=$1:$2
  if [ -n "${PROXY_PID[$key]:-}" ]; then
    stop_proc "${PROXY_PID[$key]}"
    unset "PROXY_PID[$key]"
  fi
}

for t in "${PROXIES[@]}"; do start_proxy main "$t"; done

# Values for the MGET keys where one name means one key (the cluster-mode run rewrites {tag}
# per client to a tag of the node it talks to, so its keys are others, missing ones).
MGET_KEYS=()
for i in $(seq 1 10); do MGET_KEYS+=("{tag}:k$i"); done
mset_args=()
for k in "${MGET_KEYS[@]}"; do mset_args+=("$k" xxx); done
for p in "${PROXY_PORT[main:${V_NAMES[0]}]}" "$STANDALONE_PORT" "$TW_PORT"; do
  redis-cli -p "$p" mset "${mset_args[@]}" >/dev/null
done

# How many backend commands one client MGET of the 10 keys becomes, per proxy (Redis's
# INFO commandstats on the servers behind it: calls of GET and MGET, after CONFIG RESETSTAT).
backend_reads() { # backend_reads PORT...: calls of GET + MGET on those servers
  local p total=0 c
  for p in "$@"; do
    c=$(redis-cli -p "$p" info commandstats | tr -d '\r' |
      awk -F'[:=,]' '/^cmdstat_(get|mget):/{s += $3} END {print s + 0}')
    total=$((total + c))
  done
  echo "$total"
}
FANOUT="$TMP/fanout.tsv"
printf 'target\tbackend_commands\n' >"$FANOUT"
CLUSTER_PORTS=()
for i in 0 1 2 3 4 5; do CLUSTER_PORTS+=($((CLUSTER_PORT + i))); done
for t in "${PROXIES[@]}"; do
  if [ "$t" = twemproxy ]; then servers=("${TW_BACKENDS[@]}"); else servers=("${CLUSTER_PORTS[@]}"); fi
  for p in "${servers[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
  redis-cli -p "${PROXY_PORT[main:$t]}" mget "${MGET_KEYS[@]}" >/dev/null
  printf '%s\t%s\n' "$t" "$(backend_reads "${servers[@]}")" >>"$FANOUT"
done

# ---------------------------------------------------------------------------------------------
# Measurement helpers

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # "utime stime" of PID, in clock ticks
  awk '{print $14, $15}' "/proc/$1/stat"
}
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
threads_of() { awk '/^Threads:/{print $2}' "/proc/$1/status"; }

# bench_conn PHASE TARGET: the redis-benchmark connection arguments of a target
bench_conn() {
  case $2 in
  cluster) echo "--cluster -p $CLUSTER_PORT" ;;
  standalone) echo "-p $STANDALONE_PORT" ;;
  *) echo "-p ${PROXY_PORT[$1:$2]}" ;;
  esac
}

TESTS=(set_p1 get_p1 mget_p1 set_p16 get_p16 mget_p16)
PIN_TESTS=(set_p1 get_p1 set_p16 get_p16)
declare -A EST # requests/s estimate per phase,test,target: sizes -n so each run lasts ~DUR seconds
guess() {
  case $1 in
  *_p1) echo 50000 ;;
  mget_p16) echo 200000 ;;
  *_p16) echo 400000 ;;
  esac
}
size_n() { # size_n PHASE TEST TARGET: -n for a run of about DUR seconds (a pinned cell's
  # first run is sized from the same cell's shared runs)
  local est=${EST[$1,$2,$3]:-${EST[main,$2,$3]:-$(guess "$2")}}
  python3 -c "print(max(20000, int($est * $DUR) // 1000 * 1000))"
}

RAW="$TMP/raw.tsv"
printf 'rep\ttest\ttarget\tn\trps\tavg_ms\tp50_ms\tp95_ms\tp99_ms\tmax_ms\tcpu_s\tsys_s\tseconds\trss_kib\tphase\n' >"$RAW"
: >"$TMP/commands.txt"

run_one() { # run_one REP PHASE TEST TARGET
  local rep=$1 phase=$2 test=$3 target=$4 pipe=1 threads=$THREADS n pid t0 t1 u0="" s0="" u1 s1
  local rss="" csv line cpu="" sys="" secs conn pre=() tag=$target
  case $test in *_p16) pipe=16 ;; esac
  if [ "$phase" = pin ]; then
    pre=(taskset -c "$PIN_LOAD_CPU")
    threads=$PIN_THREADS
    tag="$target (pinned)"
  fi
  n=$(size_n "$phase" "$test" "$target")
  pid=${PROXY_PID[$phase:$target]:-}
  read -ra conn <<<"$(bench_conn "$phase" "$target")"
  local cmd=("${pre[@]}" redis-benchmark "${conn[@]}" -c "$CLIENTS" --threads "$threads"
    -P "$pipe" -r "$KEYSPACE" -n "$n" --csv)
  case $test in
  set_*) cmd+=(-t set) ;;
  get_*) cmd+=(-t get) ;;
  mget_*) cmd+=(MGET "${MGET_KEYS[@]}") ;;
  esac
  if [ "$rep" = 1 ]; then printf '%-22s %s\n' "$tag:" "${cmd[*]}" >>"$TMP/commands.txt"; fi
  if [ -n "$pid" ]; then read -r u0 s0 <<<"$(cpu_ticks "$pid")"; fi
  t0=$(date +%s.%N)
  "${cmd[@]}" >"$TMP/out.csv" 2>"$TMP/err.txt" &
  BG_PID=$!
  if [ -n "$pid" ]; then
    # Resident memory in the middle of the run (the 50 clients are connected and busy).
    sleep "$(python3 -c "print($DUR / 2)")"
    if alive "$BG_PID"; then rss=$(rss_kib "$pid"); fi
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
  line=$(grep '^"' "$TMP/out.csv" | tail -n 1 || true)
  [ -n "$line" ] || { log "no result from: ${cmd[*]}"; cat "$TMP/out.csv" "$TMP/err.txt" >&2; return 1; }
  csv=$(python3 -c 'import csv,sys; r=next(csv.reader([sys.argv[1]])); print("\t".join(r[1:]))' "$line")
  # csv: rps avg min p50 p95 p99 max
  local rps avg p50 p95 p99 max
  IFS=$'\t' read -r rps avg _ p50 p95 p99 max <<<"$csv"
  EST[$phase,$test,$target]=$rps
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$test" "$target" "$n" \
    "$rps" "$avg" "$p50" "$p95" "$p99" "$max" "$cpu" "$sys" "$secs" "$rss" "$phase" >>"$RAW"
  log "rep $rep $test $tag: $rps req/s p50 ${p50} ms p99 ${p99} ms${cpu:+ cpu ${cpu}s} (${secs}s)"
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

IDLE="$TMP/idle.tsv"
printf 'target\tbefore\tconnected\tpinged\tclosed\tagain\n' >"$IDLE"
for t in "${PROXIES[@]}"; do
  log "idle clients: $IDLE_CLIENTS connections to $t"
  read -r i_before i_connected i_pinged i_closed i_again \
    <<<"$(python3 "$TMP/idle.py" "${PROXY_PORT[main:$t]}" "$IDLE_CLIENTS" "${PROXY_PID[main:$t]}")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$i_before" "$i_connected" "$i_pinged" "$i_closed" \
    "$i_again" >>"$IDLE"
  log "$t RSS KiB: before $i_before, connected $i_connected, after one PING each" \
    "$i_pinged, all closed $i_closed, connected again $i_again"
done

# Fresh proxies for the load runs, so their memory under load is not the idle test's leftover.
MEM="$TMP/mem.tsv"
printf 'target\tstart\thwm\tafter\tthreads\n' >"$MEM"
declare -A RSS_START THREADS_OF
for t in "${PROXIES[@]}"; do
  stop_proxy main "$t"
  start_proxy main "$t"
  RSS_START[$t]=$(rss_kib "${PROXY_PID[main:$t]}")
  THREADS_OF[main:$t]=$(threads_of "${PROXY_PID[main:$t]}")
done

# ---------------------------------------------------------------------------------------------
# Load runs: for each repetition, for each test, every target (rotating the order).

NT=${#TARGETS[@]}
for rep in $(seq 1 "$REPS"); do
  for test in "${TESTS[@]}"; do
    for k in $(seq 0 $((NT - 1))); do
      run_one "$rep" main "$test" "${TARGETS[$(((k + rep - 1) % NT))]}"
    done
  done
done
for t in "${PROXIES[@]}"; do
  pid=${PROXY_PID[main:$t]}
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "${RSS_START[$t]}" "$(hwm_kib "$pid")" "$(rss_kib "$pid")" \
    "${THREADS_OF[main:$t]}" >>"$MEM"
done

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
  local test=$1 target=$2 pipe=1 n pid perf_pid conn
  case $test in *_p16) pipe=16 ;; esac
  n=$(size_n main "$test" "$target")
  pid=${PROXY_PID[main:$target]}
  read -ra conn <<<"$(bench_conn main "$target")"
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
    for target in "${PROXIES[@]}"; do syscall_run "$test" "$target"; done
  done
else
  log "perf with syscall tracepoints is not available: system calls are not counted"
fi

# ---------------------------------------------------------------------------------------------
# Pinned cores (last, so that no other row runs with pinned nodes): the cluster's nodes and
# redis-benchmark on PIN_LOAD_CPU, each proxy started afresh on PIN_PROXY_CPU.

for t in "${PROXIES[@]}"; do stop_proxy main "$t"; done
if [ "$PINNED" = 1 ]; then
  declare -A NODE_MASK
  NODE_PIDS=()
  for f in "$TMP"/cluster/*/redis.pid; do NODE_PIDS+=("$(cat "$f")"); done
  for pid in "${NODE_PIDS[@]}"; do
    NODE_MASK[$pid]=$(taskset -p "$pid" | awk '{print $NF}')
    taskset -a -p -c "$PIN_LOAD_CPU" "$pid" >/dev/null
  done
  log "pinned: cluster nodes (${NODE_PIDS[*]}) and redis-benchmark on CPU $PIN_LOAD_CPU," \
    "proxies on CPU $PIN_PROXY_CPU"
  for t in "${PIN_TARGETS[@]}"; do
    [ "$t" = cluster ] && continue
    start_proxy pin "$t"
    THREADS_OF[pin:$t]=$(threads_of "${PROXY_PID[pin:$t]}")
    printf '%s\t\t\t\t%s\n' "pin:$t" "${THREADS_OF[pin:$t]}" >>"$MEM"
  done
  NP=${#PIN_TARGETS[@]}
  for rep in $(seq 1 "$REPS"); do
    for test in "${PIN_TESTS[@]}"; do
      for k in $(seq 0 $((NP - 1))); do
        run_one "$rep" pin "$test" "${PIN_TARGETS[$(((k + rep - 1) % NP))]}"
      done
    done
  done
  for t in "${PIN_TARGETS[@]}"; do [ "$t" = cluster ] || stop_proxy pin "$t"; done
  for pid in "${NODE_PIDS[@]}"; do taskset -a -p "${NODE_MASK[$pid]}" "$pid" >/dev/null; done
  log "pinned runs done; cluster nodes' affinity restored"
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

# What each target is (the report's first table).
TINFO="$TMP/targets.tsv"
printf 'target\tbinary\targs\tsha256\tversion\tport\n' >"$TINFO"
for i in "${!V_NAMES[@]}"; do
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${V_NAMES[$i]}" "${V_BINS[$i]}" "${V_ARGS[$i]//@/ }" \
    "$(sha256sum "${V_BINS[$i]}" | cut -c1-12)" "$("${V_BINS[$i]}" --version 2>&1 | awk '/^slotmux /{print; exit}')" \
    "${PROXY_PORT[main:${V_NAMES[$i]}]}" >>"$TINFO"
done
if [ "$HAVE_PREDIXY" = 1 ]; then
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' predixy "$PREDIXY_BIN" "" \
    "$(sha256sum "$PREDIXY_BIN" | cut -c1-12)" "$("$PREDIXY_BIN" -v 2>&1 | awk '{print $NF; exit}')" \
    "${PROXY_PORT[main:predixy]}" >>"$TINFO"
fi

export REV REPS DUR CLIENTS THREADS KEYSPACE IDLE_CLIENTS QUICK PIN_PROXY_CPU PIN_LOAD_CPU PIN_THREADS
export MACHINE_CPU MACHINE_KERNEL MACHINE_NPROC V_REDIS V_NUTCRACKER V_RUSTC V_BENCH
export MAIN_TARGETS PIN_TARGETS_S VARIANT_NAMES PROXY_NAMES PINNED_RAN
MACHINE_CPU=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
MACHINE_KERNEL=$(uname -r)
MACHINE_NPROC=$(nproc)
V_REDIS=$(redis-server --version | awk '{print $3}' | sed 's/^v=//')
V_NUTCRACKER=$(nutcracker --version 2>&1 | awk '/nutcracker-/{sub(/.*nutcracker-/, ""); print; exit}')
V_RUSTC=$(rustc --version 2>/dev/null || echo "rustc unknown")
V_BENCH=$(redis-benchmark --version | awk '{print $2}')
MAIN_TARGETS="${TARGETS[*]}"
PIN_TARGETS_S="${PIN_TARGETS[*]}"
VARIANT_NAMES="${V_NAMES[*]}"
PROXY_NAMES="${PROXIES[*]}"
PINNED_RAN=$PINNED

cp "$SYSC" "$OUT/syscalls.tsv"
python3 - "$RAW" "$TMP/commands.txt" "$SYSC" "$IDLE" "$MEM" "$TINFO" "$FANOUT" >"$OUT/results.md" <<'EOF'
import csv, os, statistics, sys
raw, cmds, sysc, idle_f, mem_f, tinfo_f, fanout_f = sys.argv[1:8]
def tsv(path):
    return list(csv.DictReader(open(path), delimiter="\t"))
all_rows = tsv(raw)
rows = [r for r in all_rows if r["phase"] == "main"]
pin_rows = [r for r in all_rows if r["phase"] == "pin"]
sc_rows = tsv(sysc)
idle = {r["target"]: r for r in tsv(idle_f)}
mem = {r["target"]: r for r in tsv(mem_f)}
tinfo = {r["target"]: r for r in tsv(tinfo_f)}
fanout = {r["target"]: r for r in tsv(fanout_f)}
E = os.environ
targets = E["MAIN_TARGETS"].split()
variants = E["VARIANT_NAMES"].split()
proxies = E["PROXY_NAMES"].split()
pin_targets = E["PIN_TARGETS_S"].split() if E["PINNED_RAN"] == "1" else []
pin_proxies = [t for t in pin_targets if t != "cluster"]
tests = ["set_p1", "get_p1", "mget_p1", "set_p16", "get_p16", "mget_p16"]
pin_tests = ["set_p1", "get_p1", "set_p16", "get_p16"]
label = {"set_p1": "SET, P1", "get_p1": "GET, P1", "mget_p1": "MGET 10 keys, P1",
         "set_p16": "SET, P16", "get_p16": "GET, P16", "mget_p16": "MGET 10 keys, P16"}
def cell(test, target, key, rs=None):
    rs = rows if rs is None else rs
    return [float(r[key]) for r in rs if r["test"] == test and r["target"] == target and r[key] != ""]
def med(test, target, key, rs=None):
    v = cell(test, target, key, rs)
    return statistics.median(v) if v else None
def cpu_per(t, tg, key, rs=None):
    rs = rows if rs is None else rs
    v = [float(r[key]) / float(r["n"]) * 1e6 for r in rs
         if r["test"] == t and r["target"] == tg and r[key] != ""]
    return statistics.median(v) if v else None
def hdr(cols, align="---:|"):
    p("| test | " + " | ".join(cols) + " |")
    p("|---|" + align * len(cols))
def tput_table(rs, tlist, ts, ref_name):
    hdr(tlist)
    for t in ts:
        ref = med(t, "cluster", "rps", rs)
        cells = []
        for tg in tlist:
            m = med(t, tg, "rps", rs)
            if m is None:
                cells.append("-")
            elif ref:
                cells.append(f"{m:,.0f} ({m / ref:.2f}x)")
            else:
                cells.append(f"{m:,.0f}")
        p(f"| {label[t]} | " + " | ".join(cells) + " |")
def cpu_table(rs, plist, ts):
    cols = []
    for tg in plist:
        cols += [f"{tg} µs/request", "of which kernel"]
    hdr(cols)
    for t in ts:
        cells = []
        for tg in plist:
            a, s = cpu_per(t, tg, "cpu_s", rs), cpu_per(t, tg, "sys_s", rs)
            cells += ["-", "-"] if a is None else [f"{a:.2f}", f"{s:.2f} ({s / a * 100:.0f}%)" if a else f"{s:.2f}"]
        p(f"| {label[t]} | " + " | ".join(cells) + " |")
def lat_table(rs, tlist, ts, ratio_for):
    hdr(tlist + [f"{v} p99 / cluster p99" for v in ratio_for])
    for t in ts:
        cells = []
        for tg in tlist:
            a, b = med(t, tg, "p50_ms", rs), med(t, tg, "p99_ms", rs)
            cells.append("-" if a is None else f"{a:.3f} / {b:.3f}")
        c = med(t, "cluster", "p99_ms", rs)
        for v in ratio_for:
            s = med(t, v, "p99_ms", rs)
            cells.append(f"{s / c:.2f}x" if s and c else "-")
        p(f"| {label[t]} | " + " | ".join(cells) + " |")

out = []
p = out.append
p(f"Generated by `scripts/bench-e2e.sh`{' (QUICK=1 smoke run)' if E['QUICK'] == '1' else ''}: "
  f"repository at {E['REV']}, {E['REPS']} repetition(s) of every cell, ~{E['DUR']} s per run, "
  f"{E['CLIENTS']} clients, `--threads {E['THREADS']}`, random keys over {E['KEYSPACE']}.")
p("")
p(f"- Machine: {E['MACHINE_NPROC']} vCPU, {E['MACHINE_CPU']}, Linux {E['MACHINE_KERNEL']} "
  "(shared with other work while measuring: see the noise note)")
vers = (f"- Versions: redis-server {E['V_REDIS']}, redis-benchmark {E['V_BENCH']}, "
        f"nutcracker {E['V_NUTCRACKER']}")
if "predixy" in tinfo:
    vers += f", {tinfo['predixy']['version']}"
p(vers + f", {E['V_RUSTC']}")
p("")
p("### Targets")
p("")
p("| target | what | binary (sha256, first 12) | OS threads under load |")
p("|---|---|---|---:|")
def threads(tg):
    parts = []
    if tg in mem and mem[tg]["threads"]:
        parts.append(mem[tg]["threads"])
    if f"pin:{tg}" in mem and mem[f"pin:{tg}"]["threads"]:
        parts.append(f"{mem[f'pin:{tg}']['threads']} pinned")
    return ", ".join(parts) or "-"
for tg in targets:
    if tg in variants:
        i = tinfo[tg]
        what = f"slotmux {i['version'].replace('slotmux', '').strip() or ''}".strip()
        args = f" `{i['args']}`" if i["args"] else ""
        p(f"| {tg} | {what} in front of the 6-node cluster{args} | `{i['binary']}` ({i['sha256']}) | {threads(tg)} |")
    elif tg == "cluster":
        p("| cluster | the 6-node cluster directly (3 masters, 3 replicas), `redis-benchmark --cluster` | - | - |")
    elif tg == "standalone":
        p("| standalone | one plain redis-server | - | - |")
    elif tg == "twemproxy":
        p(f"| twemproxy | nutcracker {E['V_NUTCRACKER']} in front of 3 plain redis-servers | `nutcracker` | {threads(tg)} |")
    elif tg == "predixy":
        i = tinfo[tg]
        p(f"| predixy | {i['version']} in front of the 6-node cluster, `WorkerThreads 1`, reads from masters | `{i['binary']}` ({i['sha256']}) | {threads(tg)} |")
p("")
if fanout:
    p("Backend commands per client `MGET` of the 10 `{tag}` keys (GET + MGET calls in the servers' "
      "`INFO commandstats`): " + ", ".join(f"{t} {fanout[t]['backend_commands']}" for t in proxies) + ".")
    p("")
p("### Throughput (requests/s, median; ratio to the direct cluster in brackets)")
p("")
tput_table(rows, targets, tests, "cluster")
p("")
p("Every run (requests/s per repetition, in run order):")
p("")
hdr(targets, "---|")
for t in tests:
    p(f"| {label[t]} | " + " | ".join(
        " / ".join(f"{v/1000:.0f}k" for v in cell(t, tg, "rps")) for tg in targets) + " |")
p("")
if len(variants) > 1:
    base = variants[0]
    p(f"### Variants paired against `{base}` (ratio per repetition, same test block; median, then every repetition)")
    p("")
    cols = []
    for v in variants[1:]:
        cols += [f"{v} / {base} requests/s", f"{v} / {base} CPU per request"]
    hdr(cols)
    def per_rep(t, v, key, per_req):
        out_ = []
        reps = sorted({r["rep"] for r in rows}, key=int)
        for rep in reps:
            a = [r for r in rows if r["rep"] == rep and r["test"] == t and r["target"] == v and r[key] != ""]
            b = [r for r in rows if r["rep"] == rep and r["test"] == t and r["target"] == base and r[key] != ""]
            if not a or not b:
                continue
            x, y = float(a[0][key]), float(b[0][key])
            if per_req:
                x, y = x / float(a[0]["n"]), y / float(b[0]["n"])
            if y:
                out_.append(x / y)
        return out_
    for t in tests:
        cells = []
        for v in variants[1:]:
            for key, per_req in (("rps", False), ("cpu_s", True)):
                r_ = per_rep(t, v, key, per_req)
                cells.append("-" if not r_ else f"{statistics.median(r_):.2f}x (" +
                             " / ".join(f"{x:.2f}" for x in r_) + ")")
        p(f"| {label[t]} | " + " | ".join(cells) + " |")
    p("")
    p("Above 1.00x is more throughput, or more CPU per request, than the first variant. "
      "A ratio within the spread of the repetitions is noise.")
    p("")
p("### Latency (ms, median over repetitions of redis-benchmark's p50 / p99)")
p("")
lat_table(rows, targets, tests, variants)
p("")
p("### Proxy CPU per request (µs of the proxy's own user+system CPU; median over repetitions)")
p("")
cpu_table(rows, proxies, tests)
p("")
p("µs per request = CPU seconds per 1M requests. For MGET one request is one MGET of 10 keys. "
  "CPU comes from /proc/PID/stat (10 ms ticks) around each run, so it includes the proxy's work "
  "for redis-benchmark's start-up CONFIG GET (and predixy's cluster refresh every second).")
p("")
if pin_targets:
    pin_ran = sorted({r["rep"] for r in pin_rows})
    p(f"### Pinned cores: proxy on CPU {E['PIN_PROXY_CPU']}, cluster nodes and redis-benchmark on CPU {E['PIN_LOAD_CPU']}")
    p("")
    p(f"Every proxy started afresh under `taskset -c {E['PIN_PROXY_CPU']}`; the cluster's 6 redis-servers "
      f"pinned with `taskset -a -p -c {E['PIN_LOAD_CPU']}` and redis-benchmark run under "
      f"`taskset -c {E['PIN_LOAD_CPU']}` with `--threads {E['PIN_THREADS']}` (it has one core). "
      f"`cluster` here is the direct cluster with everything on CPU {E['PIN_LOAD_CPU']}: "
      "the reference of this table, as a sidecar with a core of its own would compare. "
      "These runs come after all others, interleaved among themselves; the nodes' affinities are "
      "restored afterwards.")
    p("")
    p("Throughput (requests/s, median; ratio to the pinned direct cluster in brackets):")
    p("")
    tput_table(pin_rows, pin_targets, pin_tests, "cluster")
    p("")
    p("Latency (ms, p50 / p99, median):")
    p("")
    lat_table(pin_rows, pin_targets, pin_tests, [v for v in variants if v in pin_targets])
    p("")
    p("Proxy CPU per request (µs, user+system; median):")
    p("")
    cpu_table(pin_rows, pin_proxies, pin_tests)
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
        for tg in proxies:
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
n = int(E["IDLE_CLIENTS"])
def mib(k):
    return f"{int(k) / 1024:.1f} MiB" if k not in ("", None) else "-"
def per(a, b):
    return (float(b) - float(a)) / n
ip = [t for t in proxies if t in idle]
p("Idle clients (on freshly started proxies):")
p("")
p("| | " + " | ".join(ip) + " |")
p("|---|" + "---:|" * len(ip))
def irow(title, f, bold=False):
    b = "**" if bold else ""
    p(f"| {b}{title}{b} | " + " | ".join(f(idle[t]) for t in ip) + " |")
irow("fresh (backend connections open, no client)", lambda r: mib(r["before"]))
irow(f"{n:,} idle clients connected", lambda r: mib(r["connected"]))
irow("the same after one PING each", lambda r: mib(r["pinged"]))
irow("per idle client, connected", lambda r: f"{per(r['before'], r['connected']):.1f} KiB", True)
irow("per idle client, after one PING", lambda r: f"{per(r['before'], r['pinged']):.1f} KiB", True)
irow(f"all {n:,} closed", lambda r: mib(r["closed"]))
irow(f"{n:,} connected again (memory reused, not leaked, if close to the first round)", lambda r: mib(r["again"]))
p("")
p("Under load (every proxy restarted after the idle test):")
p("")
mp = [t for t in proxies if t in mem]
p("| | " + " | ".join(mp) + " |")
p("|---|" + "---:|" * len(mp))
p("| at start | " + " | ".join(mib(mem[t]["start"]) for t in mp) + " |")
def load_rss(t):
    v = [float(r["rss_kib"]) for r in rows if r["target"] == t and r["rss_kib"] != ""]
    return f"{max(v) / 1024:.1f} MiB" if v else "-"
p(f"| {E['CLIENTS']} clients under load (largest mid-run sample) | " + " | ".join(load_rss(t) for t in mp) + " |")
p("| peak over the load runs (VmHWM) | " + " | ".join(mib(mem[t]["hwm"]) for t in mp) + " |")
p("| after the load runs (clients gone) | " + " | ".join(mib(mem[t]["after"]) for t in mp) + " |")
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
