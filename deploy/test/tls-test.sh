#!/usr/bin/env bash
# tls-test.sh: the TLS pieces of deploy/ for real, on loopback, without root.
#
#   1. The openssl recipe of deploy/README.md (the block between the
#      tls-recipe markers, run as it is written; its `kubectl create secret`
#      line runs against a stub that checks the three files) makes a CA and
#      the node certificate for the namespace "slotmux".
#   2. openssl checks the certificate: chain, server AND client purpose, the
#      names slotmux (redis-headless.slotmux.svc) and apps (slotmux.slotmux.svc)
#      check.
#   3. Six Redis nodes start through the real entrypoint.sh with REDIS_TLS=yes
#      (TLS only; a wrapper adds --bind 127.0.0.1, so nothing listens beyond
#      loopback), from a directory laid out as the kubelet mounts a Secret
#      (files -> ..data/ -> a timestamped directory).
#      Plain connections and TLS without a client certificate are refused.
#   4. The real bootstrap.sh creates the cluster over TLS, and a second run
#      leaves it alone; probe.sh liveness/readiness pass on all six; the real
#      prestop.sh hands a master over to its replica.
#   5. Rotation: with the cluster-meet.sh sidecar loop running for one node,
#      a new certificate is swapped in as the kubelet does (one rename of
#      ..data): that node serves it within a pass, while a node without a
#      sidecar still serves the old one (Redis does not watch files). A key
#      that does not match its certificate changes nothing on Redis.
#
# Needs redis-server + redis-cli 7 built with TLS, openssl, timeout.
# Run: bash deploy/test/tls-test.sh   (about 20 s; exits non-zero on failure)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy="$(cd "$here/.." && pwd)"
redis_dir="$deploy/redis"
work="$(mktemp -d)"
declare -a PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   - $1"; }
bad() { failed=$((failed + 1)); echo "FAIL - $1"; }
die() { echo "FAIL - $1"; echo "tls-test: stopped after $passed passed, $((failed + 1)) failed"; exit 1; }

for t in redis-server redis-cli openssl timeout; do
    command -v "$t" > /dev/null || die "'$t' is required"
done
# Into a variable first: `redis-cli --help | grep -q` under pipefail fails when grep exits
# early and redis-cli gets SIGPIPE (seen in CI).
cli_help=$(redis-cli --help 2>&1 || true)
case $cli_help in
    *--tls*) ;;
    *) die "this redis-cli has no TLS support" ;;
esac

# --- 1. the README's recipe ----------------------------------------------------
recipe="$work/recipe.sh"
awk '/<!-- tls-recipe:begin/ { on = 1; next } /<!-- tls-recipe:end/ { on = 0 } on && !/^```/' "$deploy/README.md" > "$recipe"
grep -q 'openssl x509 -req' "$recipe" || die "no openssl recipe between the tls-recipe markers of deploy/README.md"
mkdir -p "$work/bin" "$work/recipe"
cat > "$work/bin/kubectl" << 'EOF'
#!/usr/bin/env bash
# stub: accept `kubectl -n NS create secret generic redis-tls --from-file=...` with existing files
echo "$*" > kubectl.args
[[ " $* " == *" create secret generic redis-tls "* ]] || { echo "stub kubectl: unexpected: $*" >&2; exit 1; }
for f in tls.crt tls.key ca.crt; do
    [[ " $* " == *" --from-file=$f "* && -s "$f" ]] || { echo "stub kubectl: $f missing" >&2; exit 1; }
done
EOF
chmod +x "$work/bin/kubectl"
if (cd "$work/recipe" && PATH="$work/bin:$PATH" bash -euo pipefail "$recipe") > "$work/recipe.log" 2>&1; then
    ok "README recipe: CA, certificate and the kubectl create secret line ($(cat "$work/recipe/redis-tls/kubectl.args"))"
else
    cat "$work/recipe.log"; die "the README's openssl recipe failed"
fi
certs="$work/recipe/redis-tls"

# --- 2. the certificate ----------------------------------------------------------
check_cert() { # check_cert NAME openssl-verify-args...
    local name="$1"; shift
    if openssl verify -x509_strict -CAfile "$certs/ca.crt" "$@" "$certs/tls.crt" > "$work/verify.log" 2>&1; then ok "certificate: $name"
    else bad "certificate: $name: $(cat "$work/verify.log")"; fi
}
check_cert "server certificate for redis-headless.slotmux.svc (SLOTMUX_BACKEND_TLS_SERVER_NAME)" -purpose sslserver -verify_hostname redis-headless.slotmux.svc
check_cert "client certificate (cluster bus, replication, slotmux to Redis)" -purpose sslclient
check_cert "server certificate for slotmux.slotmux.svc (apps)" -purpose sslserver -verify_hostname slotmux.slotmux.svc
check_cert "server certificate for redis-0.redis-headless.slotmux.svc" -purpose sslserver -verify_hostname redis-0.redis-headless.slotmux.svc
if openssl verify -CAfile "$certs/ca.crt" -verify_hostname redis-headless.other.svc "$certs/tls.crt" > /dev/null 2>&1; then
    bad "certificate: must not be valid for another namespace's name"
else ok "certificate: not valid for redis-headless.other.svc"; fi

# --- 3. six TLS-only nodes, kubelet-style Secret directory ------------------------
secret="$work/secret" # what the kubelet makes of a Secret volume
mkdir -p "$secret/..v1"
cp "$certs/tls.crt" "$certs/tls.key" "$certs/ca.crt" "$secret/..v1/"
ln -s ..v1 "$secret/..data"
for f in tls.crt tls.key ca.crt; do ln -s "..data/$f" "$secret/$f"; done
swap_secret() { # swap_secret NEWDIR: the kubelet's atomic update (rename of ..data)
    ln -s "$1" "$secret/..data_tmp"
    mv -T "$secret/..data_tmp" "$secret/..data"
}
export REDIS_TLS=yes REDIS_TLS_CERT_FILE="$secret/tls.crt" REDIS_TLS_KEY_FILE="$secret/tls.key" REDIS_TLS_CA_CERT_FILE="$secret/ca.crt"
TLS=(--tls --cert "$REDIS_TLS_CERT_FILE" --key "$REDIS_TLS_KEY_FILE" --cacert "$REDIS_TLS_CA_CERT_FILE")

printf '#!/bin/sh\nexec redis-server "$@" --bind 127.0.0.1\n' > "$work/bin/redis-server-loopback"
chmod +x "$work/bin/redis-server-loopback"

port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
cli() { local p="$1"; shift; timeout 5 redis-cli "${TLS[@]}" -h 127.0.0.1 -p "$p" "$@" 2> /dev/null | tr -d '\r'; }
# start_nodes: six nodes on free loopback ports (PORTS); returns 2 when a
# port was taken meanwhile (other tests run on this machine: try other ports)
start_nodes() {
    local b="" all i p _try _i
    for _try in 1 2 3 4 5 6 7 8 9 10; do
        b=$((21000 + RANDOM % 8000)) all=1
        for i in 0 1 2 3 4 5; do port_free $((b + i)) && port_free $((b + i + 10000)) || all=0; done
        ((all)) && break
        b=""
    done
    [[ -n "$b" ]] || die "no free loopback ports found"
    base="$b" PORTS=() PIDS=()
    rm -rf "$work/pv"
    for i in 0 1 2 3 4 5; do
        p=$((base + i)); PORTS+=("$p")
        mkdir -p "$work/pv/redis-$i"
        POD_IP=127.0.0.1 HOSTNAME="redis-$i" REDIS_PORT="$p" DATA_DIR="$work/pv/redis-$i" \
            REDIS_CONF="$redis_dir/redis.conf" REDIS_MAXMEMORY=32mb REDIS_SERVER="$work/bin/redis-server-loopback" \
            bash "$redis_dir/entrypoint.sh" > "$work/redis-$i.log" 2>&1 &
        PIDS+=("$!")
    done
    for i in 0 1 2 3 4 5; do
        for _i in $(seq 1 50); do [[ "$(cli "${PORTS[$i]}" PING)" == PONG ]] && break; sleep 0.1; done
        [[ "$(cli "${PORTS[$i]}" PING)" == PONG ]] && continue
        if grep -q 'Address already in use' "$work/redis-$i.log"; then
            for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
            for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
            return 2
        fi
        cat "$work/redis-$i.log"; die "redis-$i does not answer PING over TLS"
    done
}
started=0
for _attempt in 1 2 3 4 5; do
    rc=0; start_nodes || rc=$?
    if ((rc == 0)); then started=1; break; fi
    echo "     (a port was taken meanwhile; trying other ports)"
done
((started)) || die "could not start six nodes (ports kept being taken)"
ok "six nodes started TLS-only through entrypoint.sh (ports ${PORTS[*]}, bus +10000)"
if grep -q 'TLS only on port' "$work/redis-0.log"; then ok "entrypoint.sh logs the TLS mode"; else bad "entrypoint.sh: no TLS log line"; fi
p0="${PORTS[0]}"
got="$(for k in port tls-port tls-cluster tls-replication tls-auth-clients; do cli "$p0" CONFIG GET "$k"; done | paste -sd' ')"
if [[ "$got" == "port 0 tls-port $p0 tls-cluster yes tls-replication yes tls-auth-clients yes" ]]; then
    ok "redis: $got"
else bad "redis TLS settings: $got"; fi
if [[ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$p0" PING 2> /dev/null)" == PONG ]]; then bad "a plain connection must be refused"
else ok "plain connection refused"; fi
if [[ "$(timeout 5 redis-cli --tls --cacert "$REDIS_TLS_CA_CERT_FILE" -h 127.0.0.1 -p "$p0" PING 2> /dev/null)" == PONG ]]; then
    bad "TLS without a client certificate must be refused"
else ok "TLS without a client certificate refused (tls-auth-clients yes)"; fi

# --- 4. bootstrap, probes, preStop over TLS ---------------------------------------
nodes=""; for p in "${PORTS[@]}"; do nodes+="127.0.0.1:$p "; done
boot() { BOOTSTRAP_NODES="$nodes" BOOTSTRAP_TIMEOUT=60 BOOTSTRAP_SETTLE_TIMEOUT=60 bash "$redis_dir/bootstrap.sh" >> "$work/bootstrap.log" 2>&1; }
if boot; then ok "bootstrap.sh created the cluster over TLS"; else cat "$work/bootstrap.log"; die "bootstrap.sh failed over TLS"; fi
if boot && grep -q 'NOT creating anything' "$work/bootstrap.log"; then ok "bootstrap.sh re-run: existing cluster left alone"
else bad "bootstrap.sh re-run"; fi
if cli "$p0" CLUSTER NODES | awk '{ print $2 }' | grep "^127.0.0.1:$p0@$((p0 + 10000))$" > /dev/null; then
    ok "CLUSTER NODES announces the TLS port and its bus port (127.0.0.1:$p0@$((p0 + 10000)))"
else bad "CLUSTER NODES: $(cli "$p0" CLUSTER NODES)"; fi
probes_ok=1
for i in 0 1 2 3 4 5; do
    REDIS_PORT="${PORTS[$i]}" bash "$redis_dir/probe.sh" liveness > "$work/probe.log" 2>&1 || { probes_ok=0; bad "liveness redis-$i: $(cat "$work/probe.log")"; }
    for _i in $(seq 1 40); do REDIS_PORT="${PORTS[$i]}" bash "$redis_dir/probe.sh" readiness > "$work/probe.log" 2>&1 && break; sleep 0.5; done
    REDIS_PORT="${PORTS[$i]}" bash "$redis_dir/probe.sh" readiness > "$work/probe.log" 2>&1 || { probes_ok=0; bad "readiness redis-$i: $(cat "$work/probe.log")"; }
done
((probes_ok)) && ok "probe.sh liveness and readiness pass on all six over TLS"
if env -u REDIS_TLS REDIS_PORT="$p0" bash "$redis_dir/probe.sh" liveness > /dev/null 2>&1; then
    bad "without REDIS_TLS the probe must talk plain (and fail against a TLS-only node)"
else ok "without REDIS_TLS the scripts stay plain (plain probe fails against a TLS-only node)"; fi

role_of() { cli "$1" INFO replication | awk -F: '$1 == "role" { print $2 }'; }
m=""
for i in 0 1 2 3 4 5; do if [[ "$(role_of "${PORTS[$i]}")" == master ]]; then m="$i"; break; fi; done
[[ -n "$m" ]] || die "no master found"
for _i in $(seq 1 40); do # its replica must be linked before a coordinated failover
    cli "${PORTS[$m]}" INFO replication | grep '^slave0:.*state=online' > /dev/null && break; sleep 0.5
done
# ... and healthy in the master's CLUSTER NODES, which is what prestop.sh reads: the cluster
# bus may see it a moment after replication does (seen once in CI: "no healthy replica").
m_id="$(cli "${PORTS[$m]}" CLUSTER MYID)"
for _i in $(seq 1 40); do
    nodes="$(cli "${PORTS[$m]}" CLUSTER NODES)"
    awk -v me="$m_id" '$4 == me && ("," $3 ",") ~ /,slave,/ && $3 !~ /fail|noaddr|handshake/ && $8 == "connected" { found = 1 } END { exit !found }' <<< "$nodes" && break
    sleep 0.5
done
HOSTNAME="redis-$m" REDIS_PORT="${PORTS[$m]}" bash "$redis_dir/prestop.sh" > "$work/prestop.log" 2>&1 || true
if [[ "$(role_of "${PORTS[$m]}")" == slave ]] && grep -q 'handover done' "$work/prestop.log"; then
    ok "prestop.sh: master redis-$m handed over to its replica over TLS"
else bad "prestop.sh over TLS: $(cat "$work/prestop.log")"; fi

# --- 5. rotation --------------------------------------------------------------------
serial_of() { # the serial of the certificate a node serves
    openssl s_client -connect "127.0.0.1:$1" -cert "$REDIS_TLS_CERT_FILE" -key "$REDIS_TLS_KEY_FILE" \
        -CAfile "$REDIS_TLS_CA_CERT_FILE" < /dev/null 2> /dev/null | openssl x509 -noout -serial 2> /dev/null
}
wait_log() { # wait_log PATTERN SECONDS: until the sidecar's log shows PATTERN
    local _i
    for _i in $(seq 1 $(($2 * 10))); do grep -q "$1" "$work/meet.log" && return 0; sleep 0.1; done
    return 1
}
# The sidecar loop for redis-0 (PEER_HOSTS: itself only), one pass a second.
HOSTNAME=redis-0 REDIS_PORT="$p0" PEER_HOSTS=127.0.0.1 MEET_INTERVAL=1 HEARTBEAT_FILE="$work/hb" \
    bash "$redis_dir/cluster-meet.sh" run > "$work/meet.log" 2>&1 &
meet_pid=$!; PIDS+=("$meet_pid")
if wait_log 'loaded its certificate files' 10; then ok "cluster-meet.sh (TLS): had Redis (re)load the files once at start"
else bad "cluster-meet.sh start: $(cat "$work/meet.log")"; fi
old_serial="$(serial_of "$p0")"
mkdir -p "$work/secret/..v2"
cp "$certs/ca.crt" "$certs/tls.key" "$work/secret/..v2/"
(cd "$certs" && openssl x509 -req -sha256 -days 365 -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -extfile tls.ext -out "$work/secret/..v2/tls.crt") > /dev/null 2>&1 || die "could not issue the renewed certificate"
new_serial="serial=$(openssl x509 -in "$work/secret/..v2/tls.crt" -noout -serial | cut -d= -f2)"
swap_secret ..v2
if wait_log 'certificate files changed' 10 && [[ "$(serial_of "$p0")" == "$new_serial" && "$new_serial" != "$old_serial" ]]; then
    ok "rotation: within a sidecar pass redis-0 serves the renewed certificate ($old_serial -> $new_serial)"
else bad "rotation: redis-0 serves $(serial_of "$p0"), expected $new_serial; $(tail -n 3 "$work/meet.log")"; fi
if [[ "$(serial_of "${PORTS[1]}")" == "$old_serial" ]]; then
    ok "rotation: redis-1, whose sidecar is not running, still serves the old one (Redis does not watch files)"
else bad "rotation: redis-1 serves $(serial_of "${PORTS[1]}")"; fi
if REDIS_PORT="$p0" bash "$redis_dir/probe.sh" readiness > /dev/null 2>&1; then ok "rotation: probes pass with the renewed certificate"
else bad "readiness after rotation"; fi

# A broken update (a key that does not match the certificate): Redis keeps
# serving what it has; once the Secret is right again, nothing is lost.
mkdir -p "$work/secret/..v3"
cp "$work/secret/..v2/"* "$work/secret/..v3/"
openssl ecparam -name prime256v1 -genkey -noout -out "$work/secret/..v3/tls.key" 2> /dev/null
swap_secret ..v3
wait_log 'no answer from the local Redis' 10 || bad "cluster-meet.sh: the broken files were not reported: $(tail -n 3 "$work/meet.log")"
if [[ "$(serial_of "$p0")" == "$new_serial" ]]; then bad "serial_of must fail with the mismatched key"; fi
swap_secret ..v2
if [[ "$(serial_of "$p0")" == "$new_serial" ]] && kill -0 "$meet_pid" 2> /dev/null; then
    ok "rotation: a mismatched key changed nothing on Redis (still serving the renewed certificate), the sidecar keeps running"
else bad "rotation: after a bad key redis-0 serves $(serial_of "$p0"); sidecar alive: $(kill -0 "$meet_pid" 2> /dev/null && echo yes || echo no)"; fi
kill "$meet_pid" 2> /dev/null || true

echo "tls-test: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
