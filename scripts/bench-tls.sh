#!/usr/bin/env bash
# TLS cost benchmark (issue 15): redis-benchmark (50 clients, --threads 2, SET and GET at
# pipeline 1 and 16) against, in one run with interleaved rounds:
#   cluster          a plain 6-node cluster directly (`redis-benchmark --cluster`)
#   cluster-tls      a TLS-only 6-node cluster directly (`--cluster --tls`, tls-cluster yes)
#   slotmux          slotmux in front of the plain cluster (plain on both sides)
#   slotmux-tls      slotmux with TLS on both sides, in front of the TLS cluster
#   slotmux-tls-back plain clients (a sidecar on localhost), TLS to the TLS cluster
# and reports the median throughput, p50/p99, and slotmux's CPU per request (/proc/PID/stat),
# with each TLS row's ratio to its plain counterpart.
#
# Usage:   scripts/bench-tls.sh                 (about 6 minutes on 2 cores)
# Knobs:   REPS=3 DUR=4 (target seconds per run) SKIP_BUILD=1 SLOTMUX_BIN=target/release/slotmux
#          BASE_PORT=7700 OUT=target/bench-tls WRITE_DOCS=1 (rewrite the generated section of
#          docs/BENCHMARKS.md between its tls markers)
# Needs: redis-server/redis-benchmark 7 built with TLS (Debian's are), openssl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

REPS=${REPS:-3}
DUR=${DUR:-4}
BASE=${BASE_PORT:-7700}
OUT=${OUT:-target/bench-tls}
BIN=${SLOTMUX_BIN:-target/release/slotmux}
CLIENTS=50
THREADS=2
KEYSPACE=100000
log() { echo "[bench-tls $(date +%T)] $*" >&2; }

ensure_redis
if [ -z "${SKIP_BUILD:-}" ]; then
  ensure_cargo
  cargo build --release --quiet --bin slotmux
fi
[ -x "$BIN" ] || { echo "no slotmux binary at $BIN" >&2; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_cluster "$TMP/plain"
  for f in "$TMP"/tls/*/redis.pid; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  [ -n "${KEEP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

# Certificates: a CA, one for the nodes (DNS name only), one for clients and slotmux.
C="$TMP/certs"
mkdir -p "$C"
(
  cd "$C"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout ca.key \
    -out ca.crt -days 2 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  for name in node client; do
    san="DNS:$name.bench.test"
    [ "$name" = client ] && san="DNS:localhost,IP:127.0.0.1"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san" >"$name.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$name.key" \
      -out "$name.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
      -days 2 -extfile "$name.ext" 2>/dev/null
  done
)
TLS_CLI=(--tls --cacert "$C/ca.crt" --cert "$C/client.crt" --key "$C/client.key")

PLAIN=$BASE
TLSB=$((BASE + 10))
log "starting a plain cluster on $PLAIN.. and a TLS cluster on $TLSB.."
start_cluster "$TMP/plain" "$PLAIN"
for i in 0 1 2 3 4 5; do
  port=$((TLSB + i))
  mkdir -p "$TMP/tls/$port"
  redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 --daemonize yes \
    --tls-cert-file "$C/node.crt" --tls-key-file "$C/node.key" --tls-ca-cert-file "$C/ca.crt" \
    --tls-cluster yes --tls-replication yes \
    --dir "$TMP/tls/$port" --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout 2000 --appendonly no --save '' \
    --logfile "$TMP/tls/$port/redis.log" --pidfile "$TMP/tls/$port/redis.pid"
done
for i in 0 1 2 3 4 5; do
  wait_for 50 redis-cli "${TLS_CLI[@]}" -p $((TLSB + i)) ping || { echo "TLS node did not start" >&2; exit 1; }
done
nodes=()
for i in 0 1 2 3 4 5; do nodes+=("127.0.0.1:$((TLSB + i))"); done
redis-cli "${TLS_CLI[@]}" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$TMP/tls-create.log" 2>&1 ||
  { cat "$TMP/tls-create.log" >&2; exit 1; }
for i in 0 1 2 3 4 5; do
  wait_for 100 sh -c "redis-cli ${TLS_CLI[*]} -p $((TLSB + i)) cluster info | grep -q cluster_state:ok" ||
    { echo "TLS cluster not ok" >&2; exit 1; }
done

declare -A PID PORTARGS
BACK_TLS=(--backend-tls --backend-tls-ca-cert-file "$C/ca.crt" --backend-tls-cert-file "$C/client.crt"
  --backend-tls-key-file "$C/client.key" --backend-tls-server-name node.bench.test)
start_slotmux() { # start_slotmux NAME PORT ARGS...
  local name=$1 port=$2
  shift 2
  "$BIN" --listen "127.0.0.1:$port" --metrics-listen off "$@" >"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("$!")
}
start_slotmux slotmux $((BASE + 20)) --seeds "127.0.0.1:$PLAIN"
start_slotmux slotmux-tls $((BASE + 21)) --seeds "127.0.0.1:$TLSB" "${BACK_TLS[@]}" \
  --tls-listen "127.0.0.1:$((BASE + 22))" --tls-cert-file "$C/client.crt" --tls-key-file "$C/client.key" \
  --tls-ca-cert-file "$C/ca.crt"
start_slotmux slotmux-tls-back $((BASE + 23)) --seeds "127.0.0.1:$TLSB" "${BACK_TLS[@]}"
PORTARGS[cluster]="--cluster -p $PLAIN"
PORTARGS[cluster-tls]="--cluster ${TLS_CLI[*]} -p $TLSB"
PORTARGS[slotmux]="-p $((BASE + 20))"
PORTARGS[slotmux-tls]="${TLS_CLI[*]} -p $((BASE + 22))"
PORTARGS[slotmux-tls-back]="-p $((BASE + 23))"
for t in slotmux slotmux-tls-back; do
  wait_for 100 sh -c "redis-cli ${PORTARGS[$t]} set warm 1 | grep -q OK" || { cat "$TMP/$t.log" >&2; exit 1; }
done
wait_for 100 sh -c "redis-cli ${PORTARGS[slotmux-tls]} set warm 1 | grep -q OK" || { cat "$TMP/slotmux-tls.log" >&2; exit 1; }

TARGETS=(cluster cluster-tls slotmux slotmux-tls slotmux-tls-back)
TESTS=(set_p1 get_p1 set_p16 get_p16)
RAW="$OUT/raw.tsv"
printf 'rep\ttest\ttarget\tn\trps\tp50_ms\tp99_ms\tcpu_s\n' >"$RAW"
declare -A EST
for rep in $(seq 1 "$REPS"); do
  # Rotate the order every repetition, so no target always runs first or last.
  order=("${TARGETS[@]:$((rep % ${#TARGETS[@]}))}" "${TARGETS[@]:0:$((rep % ${#TARGETS[@]}))}")
  for test in "${TESTS[@]}"; do
    for t in "${order[@]}"; do
      pipe=1
      case $test in *_p16) pipe=16 ;; esac
      est=${EST[$test,$t]:-$([ $pipe = 1 ] && echo 40000 || echo 300000)}
      n=$(python3 -c "print(max(20000, int($est * $DUR) // 1000 * 1000))")
      read -ra conn <<<"${PORTARGS[$t]}"
      pid=${PID[$t]:-}
      u0=0 s0=0
      if [ -n "$pid" ]; then read -r u0 s0 <<<"$(awk '{print $14, $15}' "/proc/$pid/stat")"; fi
      redis-benchmark "${conn[@]}" -c $CLIENTS --threads $THREADS -P "$pipe" -r $KEYSPACE -n "$n" \
        -t "${test%_*}" --csv >"$TMP/out.csv" 2>"$TMP/err.txt" || { cat "$TMP/err.txt" >&2; exit 1; }
      cpu=""
      if [ -n "$pid" ]; then
        read -r u1 s1 <<<"$(awk '{print $14, $15}' "/proc/$pid/stat")"
        cpu=$(python3 -c "import os; print(($u1 + $s1 - $u0 - $s0) / os.sysconf('SC_CLK_TCK'))")
      fi
      line=$(grep '^"' "$TMP/out.csv" | tail -n 1)
      # "test","rps","avg","min","p50","p95","p99","max"
      IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$(echo "$line" | tr -d '"')"
      EST[$test,$t]=$rps
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$test" "$t" "$n" "$rps" "$p50" "$p99" "$cpu" >>"$RAW"
      log "rep $rep $test $t: $rps req/s p50 $p50 p99 $p99 cpu ${cpu:-n/a}s"
    done
  done
done

V_REDIS=$(redis-server --version | awk '{print $3}' | cut -d= -f2)
python3 - "$RAW" "$OUT/report.md" "$REPS" "$DUR" "$V_REDIS" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" <<'EOF'
import csv, statistics, sys
raw, out, reps, dur, vredis, head = sys.argv[1:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
def cells(test, target, key):
    return [float(r[key]) for r in rows if r["test"] == test and r["target"] == target and r[key]]
def med(test, target, key):
    v = cells(test, target, key)
    return statistics.median(v) if v else None
def cpu_us(test, target):
    per = [float(r["cpu_s"]) / float(r["n"]) * 1e6 for r in rows
           if r["test"] == test and r["target"] == target and r["cpu_s"]]
    return statistics.median(per) if per else None
tests = ["set_p1", "get_p1", "set_p16", "get_p16"]
targets = ["cluster", "cluster-tls", "slotmux", "slotmux-tls", "slotmux-tls-back"]
plain_of = {"cluster-tls": "cluster", "slotmux-tls": "slotmux", "slotmux-tls-back": "slotmux"}
L = []
L.append(f"Run at {head}: redis-server {vredis}, 50 clients, `--threads 2`, {reps} interleaved "
         f"repetitions of about {dur} s per cell, medians. Two 6-node clusters (plain and TLS-only) "
         "on one 2-core machine; slotmux with its default single worker.")
L.append("")
L.append("| target | " + " | ".join(tests) + " |")
L.append("|---" * (len(tests) + 1) + "|")
for t in targets:
    cellv = []
    for test in tests:
        rps = med(test, t, "rps")
        s = "-" if rps is None else f"{rps/1000:.1f}k"
        if t in plain_of and rps:
            base = med(test, plain_of[t], "rps")
            if base:
                s += f" ({rps/base:.2f}x)"
        cellv.append(s)
    L.append(f"| {t} | " + " | ".join(cellv) + " |")
L.append("")
L.append("Throughput in requests/s; in brackets the ratio to the same row without TLS "
         "(cluster-tls to cluster; slotmux-tls and slotmux-tls-back to slotmux).")
L.append("")
L.append("| target | " + " | ".join(f"{t} p50/p99 ms" for t in tests) + " |")
L.append("|---" * (len(tests) + 1) + "|")
for t in targets:
    L.append(f"| {t} | " + " | ".join(
        f"{med(test, t, 'p50_ms'):.3f} / {med(test, t, 'p99_ms'):.3f}" for test in tests) + " |")
L.append("")
L.append("| slotmux CPU per request (µs) | " + " | ".join(tests) + " |")
L.append("|---" * (len(tests) + 1) + "|")
for t in ["slotmux", "slotmux-tls", "slotmux-tls-back"]:
    vals = []
    for test in tests:
        c = cpu_us(test, t)
        s = "-" if c is None else f"{c:.2f}"
        if t != "slotmux" and c:
            b = cpu_us(test, "slotmux")
            if b:
                s += f" ({c/b:.2f}x)"
        vals.append(s)
    L.append(f"| {t} | " + " | ".join(vals) + " |")
open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
EOF
if [ -n "${WRITE_DOCS:-}" ]; then
  python3 - "$OUT/report.md" docs/BENCHMARKS.md <<'EOF'
import sys
rep, doc = sys.argv[1:]
text = open(doc).read()
begin, end = "<!-- tls:begin -->", "<!-- tls:end -->"
body = open(rep).read()
if begin in text and end in text:
    a = text.index(begin) + len(begin)
    b = text.index(end)
    text = text[:a] + "\n" + body + text[b:]
else:
    text += "\n## TLS cost (scripts/bench-tls.sh)\n\n" + begin + "\n" + body + end + "\n"
open(doc, "w").write(text)
EOF
  log "docs/BENCHMARKS.md updated"
fi
