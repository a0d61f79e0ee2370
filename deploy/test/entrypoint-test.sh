#!/usr/bin/env bash
# Unit test of deploy/redis/entrypoint.sh's nodes.conf rewrite and of the
# redis-server arguments it builds, plain and with REDIS_TLS=yes (no root, no
# network, no Redis needed: redis-server is replaced by a stub that prints its
# arguments). Run: bash deploy/test/entrypoint-test.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
entry="$here/../redis/entrypoint.sh"
conf="$here/../redis/redis.conf"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

stub="$work/redis-server-stub"
printf '#!/usr/bin/env bash\nprintf "ARGS:"; printf " %%s" "$@"; printf "\\n"\n' > "$stub"
chmod +x "$stub"

passed=0 failed=0
ok()  { passed=$((passed + 1)); echo "ok   - $1"; }
bad() { failed=$((failed + 1)); echo "FAIL - $1"; }

# run_case NAME POD_IP INPUT EXPECTED [extra env...]
run_case() {
    local name="$1" ip="$2" input="$3" expected="$4"; shift 4
    local d="$work/$name"
    mkdir -p "$d"
    printf '%s' "$input" > "$d/nodes.conf"
    if ! env "$@" POD_IP="$ip" HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" \
        bash "$entry" > "$d/out" 2> "$d/err"; then
        bad "$name: entrypoint failed: $(cat "$d/err")"; return
    fi
    if [[ "$(cat "$d/nodes.conf")" == "$expected" ]]; then ok "$name"; else
        bad "$name: got:"; cat "$d/nodes.conf"; echo "expected:"; printf '%s\n' "$expected"
    fi
}

others='e5f6 10.1.0.2:6379@16379 master - 0 1700000000000 2 connected 5461-10922
vars currentEpoch 6 lastVoteEpoch 0'

run_case ipv4 10.9.9.9 \
"a1b2 10.1.0.1:6379@16379 myself,master - 0 1700000000000 1 connected 0-5460
$others
" \
"a1b2 10.9.9.9:6379@16379 myself,master - 0 1700000000000 1 connected 0-5460
$others"

run_case hostname-form 10.9.9.9 \
"e5f6 10.1.0.2:6379@16379,redis-1.redis-headless master - 0 1700000000000 2 connected 5461-10922
a1b2 10.1.0.1:6379@16379,redis-0.redis-headless myself,slave e5f6 0 1700000000000 2 connected
vars currentEpoch 6 lastVoteEpoch 0
" \
"e5f6 10.1.0.2:6379@16379,redis-1.redis-headless master - 0 1700000000000 2 connected 5461-10922
a1b2 10.9.9.9:6379@16379,redis-0.redis-headless myself,slave e5f6 0 1700000000000 2 connected
vars currentEpoch 6 lastVoteEpoch 0"

run_case empty-ip 10.9.9.9 \
"a1b2 :6379@16379 myself,master - 0 0 0 connected
vars currentEpoch 0 lastVoteEpoch 0
" \
"a1b2 10.9.9.9:6379@16379 myself,master - 0 0 0 connected
vars currentEpoch 0 lastVoteEpoch 0"

run_case ipv6 fd00::99 \
"a1b2 fd00::1:6379@16379 myself,master - 0 0 1 connected 0-5460
" \
"a1b2 fd00::99:6379@16379 myself,master - 0 0 1 connected 0-5460"

run_case other-port 10.9.9.9 \
"a1b2 10.1.0.1:7001@17001 myself,master - 0 0 1 connected 0-16383
" \
"a1b2 10.9.9.9:7001@17001 myself,master - 0 0 1 connected 0-16383"

# --- failure cases ---------------------------------------------------------
d="$work/no-pod-ip"; mkdir -p "$d"
if env -u POD_IP HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" bash "$entry" > /dev/null 2> "$d/err"; then
    bad "missing POD_IP must fail"
elif grep -q 'POD_IP is not set' "$d/err"; then ok "missing POD_IP fails clearly"; else bad "missing POD_IP message: $(cat "$d/err")"; fi

d="$work/two-myself"; mkdir -p "$d"
printf 'a 1.1.1.1:6379@16379 myself,master - 0 0 1 connected\nb 1.1.1.2:6379@16379 myself,master - 0 0 1 connected\n' > "$d/nodes.conf"
cp "$d/nodes.conf" "$d/orig"
if POD_IP=10.9.9.9 HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" bash "$entry" > /dev/null 2>&1; then
    bad "two myself lines must fail"
elif cmp -s "$d/nodes.conf" "$d/orig" && ! ls "$d"/nodes.conf.tmp.* > /dev/null 2>&1; then ok "two myself lines: refused, file untouched"
else bad "two myself lines: file changed or temp left"; fi

d="$work/fresh"; mkdir -p "$d"
if out="$(POD_IP=10.9.9.9 HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" \
    CLUSTER_ANNOUNCE_HOSTNAME=redis-0.redis-headless REDIS_MAXMEMORY=100mb bash "$entry" 2> /dev/null)" \
    && [[ ! -e "$d/nodes.conf" ]] \
    && [[ "$out" == "ARGS: $conf --dir $d --port 6379 --cluster-announce-ip 10.9.9.9 --cluster-announce-hostname redis-0.redis-headless --maxmemory 100mb" ]]; then
    ok "fresh volume: starts with the expected arguments"
else bad "fresh volume: $out"; fi

if POD_IP=10.9.9.9 HOSTNAME=redis-1 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" bash "$entry" > /dev/null 2> "$d/err2"; then
    bad "volume of another pod must be refused"
elif grep -q "belongs to pod 'redis-0'" "$d/err2"; then ok "volume of another pod is refused"; else bad "owner message: $(cat "$d/err2")"; fi

if POD_IP='10.0.0.1;rm' HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" bash "$entry" > /dev/null 2>&1; then
    bad "garbage POD_IP must fail"
else ok "garbage POD_IP is refused"; fi

# --- optional TLS (REDIS_TLS=yes, deploy/k8s/tls) ----------------------------
tls="$work/tls"; mkdir -p "$tls"
for f in tls.crt tls.key ca.crt; do echo dummy > "$tls/$f"; done
tls_env=(REDIS_TLS=yes REDIS_TLS_CERT_FILE="$tls/tls.crt" REDIS_TLS_KEY_FILE="$tls/tls.key" REDIS_TLS_CA_CERT_FILE="$tls/ca.crt")

d="$work/tls-fresh"; mkdir -p "$d"
if out="$(env "${tls_env[@]}" POD_IP=10.9.9.9 HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" bash "$entry" 2> /dev/null)" \
    && [[ "$out" == "ARGS: $conf --dir $d --port 0 --tls-port 6379 --tls-cluster yes --tls-replication yes --tls-cert-file $tls/tls.crt --tls-key-file $tls/tls.key --tls-ca-cert-file $tls/ca.crt --tls-auth-clients yes --cluster-announce-ip 10.9.9.9" ]]; then
    ok "TLS: TLS-only arguments (port 0, tls-port, cluster bus + replication, client certificates required)"
else bad "TLS arguments: $out"; fi

run_case tls-rewrite 10.9.9.9 \
"a1b2 10.1.0.1:6379@16379 myself,master - 0 0 1 connected 0-16383
" \
"a1b2 10.9.9.9:6379@16379 myself,master - 0 0 1 connected 0-16383" "${tls_env[@]}"

d="$work/tls-missing"; mkdir -p "$d"
printf 'a 1.1.1.1:6379@16379 myself,master - 0 0 1 connected\n' > "$d/nodes.conf"; cp "$d/nodes.conf" "$d/orig"
if env "${tls_env[@]}" REDIS_TLS_KEY_FILE="$tls/missing.key" POD_IP=10.9.9.9 HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" \
    REDIS_SERVER="$stub" bash "$entry" > /dev/null 2> "$d/err"; then
    bad "TLS: a missing key file must fail"
elif grep -q 'missing.key. is missing' "$d/err" && cmp -s "$d/nodes.conf" "$d/orig"; then ok "TLS: a missing key file is refused before nodes.conf is touched"
else bad "TLS: missing key file: $(cat "$d/err")"; fi

d="$work/tls-typo"; mkdir -p "$d"
if env REDIS_TLS=true POD_IP=10.9.9.9 HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" REDIS_SERVER="$stub" bash "$entry" > /dev/null 2> "$d/err"; then
    bad "TLS: REDIS_TLS=true (not yes/no) must fail"
elif grep -q "REDIS_TLS='true': expected yes or no" "$d/err"; then ok "TLS: REDIS_TLS other than yes/no is refused"
else bad "TLS: REDIS_TLS typo message: $(cat "$d/err")"; fi

if env "${tls_env[@]}" REDIS_TLS_AUTH_CLIENTS=maybe POD_IP=10.9.9.9 HOSTNAME=redis-0 REDIS_CONF="$conf" DATA_DIR="$d" \
    REDIS_SERVER="$stub" bash "$entry" > /dev/null 2>&1; then
    bad "TLS: REDIS_TLS_AUTH_CLIENTS=maybe must fail"
else ok "TLS: a bad REDIS_TLS_AUTH_CLIENTS is refused"; fi

echo "entrypoint-test: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
