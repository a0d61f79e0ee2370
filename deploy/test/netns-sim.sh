#!/usr/bin/env bash
# netns-sim.sh: run the Kubernetes recipe of deploy/ for real on one machine.
#
# Six "pods", each a network namespace with its own IP on a Linux bridge, run
# the REAL deploy/redis/entrypoint.sh + redis.conf (redis-server) and the REAL
# cluster-meet.sh sidecar, each with its own data directory as "persistent
# volume". Pod DNS names (redis-N.redis-headless, and redis-headless resolving
# to every pod, as the headless Service with publishNotReadyAddresses does)
# come from a per-namespace hosts file that `ip netns exec` bind-mounts over
# /etc/hosts (/etc/netns/<ns>/hosts), rewritten in place when IPs change, as
# cluster DNS would be. The REAL bootstrap.sh creates the cluster (and is run
# again to prove it is idempotent). slotmux runs in its own namespace, like an
# app pod with the slotmux sidecar, with --seeds naming the pods.
#
# Scenarios (all with NEW pod IPs, keys checked through slotmux each time):
#   A  one master pod deleted gracefully (preStop handover + SIGTERM) and
#      recreated with a new IP;
#   B  one master pod crashes (SIGKILL), recreated with a new IP;
#   C  all six pods stopped (SIGTERM) and recreated with new IPs;
#   D  all six pods killed (SIGKILL) and recreated with their IPs PERMUTED
#      (every pod gets an address another pod had: stale addresses now lead to
#      the wrong node);
#   E  a replica pod comes back with an EMPTY volume (new node ID): the
#      sidecars must not join it on their own; the README's repair procedure
#      (CLUSTER FORGET + redis-cli --cluster add-node) is run and checked.
#   R  (SIM_TLS=1 only) certificate rotation: a renewed certificate is swapped
#      into the "Secret" directory as the kubelet does (rename of ..data);
#      every node (through its cluster-meet sidecar) and slotmux's listener
#      must serve it, without a restart, while keys stay readable.
# Printed: seconds from the restart to cluster_state:ok with 16384 slots
# served on every node, to a full mesh, and to all keys readable via slotmux.
#
# Requirements: root, `ip netns`, redis-server + redis-cli (7.x), curl, and a
# slotmux binary ($SLOTMUX_BIN, default target/debug/slotmux under the repo
# root). Not root or no netns: prints SKIP and exits 0.
# SIM_REDIS_ONLY=1 checks keys with `redis-cli -c` instead of slotmux (for
# verifying the Redis side when no slotmux binary exists yet).
#
# Traffic stays inside namespaces this script creates (10.213.0.0/24 on a
# bridge in its own "node" namespace; the root namespace gets no address or
# route in that range). Everything is bounded by SIM_TIMEOUT and torn down by
# a trap on exit, failure or signal.
#
# Environment: SLOTMUX_BIN, SIM_REDIS_ONLY (0), SIM_KEYS (1000),
# SIM_TIMEOUT (900 s overall), SIM_HEAL_TIMEOUT (120 s per scenario),
# SIM_SCENARIOS ("A B C D E", with SIM_TLS=1 "A B C D E R"), SIM_KEEP (1 = keep the work dir with logs),
# SIM_MEET (0 = no cluster-meet sidecar: control experiment, C and D must fail),
# SIM_PASSWORD (run the cluster with requirepass/masterauth, slotmux with
# SLOTMUX_BACKEND_PASSWORD, as with the optional redis-auth Secret),
# SIM_TLS (1 = everything over TLS as with the deploy/k8s/tls overlay: a CA
# and a certificate for the namespace "sim" made with openssl, REDIS_TLS=yes
# for every script, redis-cli --tls for every check, slotmux with
# --listen off --tls-listen :6380 and --backend-tls; needs openssl).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
redis_dir="$repo/deploy/redis"

SIM_TIMEOUT="${SIM_TIMEOUT:-900}"
SIM_HEAL_TIMEOUT="${SIM_HEAL_TIMEOUT:-120}"
SIM_KEYS="${SIM_KEYS:-1000}"
SIM_REDIS_ONLY="${SIM_REDIS_ONLY:-0}"
SIM_TLS="${SIM_TLS:-0}"
if [[ "$SIM_TLS" == 1 ]]; then SIM_SCENARIOS="${SIM_SCENARIOS:-A B C D E R}"; else SIM_SCENARIOS="${SIM_SCENARIOS:-A B C D E}"; fi
SIM_KEEP="${SIM_KEEP:-0}"
SIM_MEET="${SIM_MEET:-1}"
SIM_PASSWORD="${SIM_PASSWORD:-}"
# With a password every redis-cli below (scripts included) authenticates via
# REDISCLI_AUTH, as the pods do with the optional redis-auth Secret.
if [[ -n "$SIM_PASSWORD" ]]; then export REDISCLI_AUTH="$SIM_PASSWORD"; fi
SLOTMUX_BIN="${SLOTMUX_BIN:-target/debug/slotmux}"
[[ "$SLOTMUX_BIN" == /* ]] || SLOTMUX_BIN="$repo/$SLOTMUX_BIN"

say() { printf '%s sim: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
skip() { echo "SKIP netns-sim: $*"; exit 0; }
die() { say "FAIL: $*" >&2; exit 1; }

# --- preconditions -----------------------------------------------------------
[[ "$(id -u)" -eq 0 ]] || skip "needs root (network namespaces); run as root to simulate"
command -v ip > /dev/null || skip "iproute2 'ip' not installed"
ip netns list > /dev/null 2>&1 || skip "'ip netns' is not available here"
for t in redis-server redis-cli curl timeout flock getent awk python3; do
    command -v "$t" > /dev/null || die "'$t' is required (apt-get install -y redis-server redis-tools curl)"
done
if [[ "$SIM_TLS" == 1 ]]; then command -v openssl > /dev/null || die "SIM_TLS=1 needs openssl"; fi
if [[ "$SIM_REDIS_ONLY" != 1 && ! -x "$SLOTMUX_BIN" ]]; then
    die "slotmux binary not found at $SLOTMUX_BIN: build it (cargo build) or set SLOTMUX_BIN; SIM_REDIS_ONLY=1 checks the Redis side alone"
fi

# --- overall time limit: re-run ourselves under timeout(1) -------------------
if [[ -z "${SIM_CHILD:-}" ]]; then
    rc=0
    SIM_CHILD=1 timeout --kill-after=60 "$SIM_TIMEOUT" bash "${BASH_SOURCE[0]}" "$@" || rc=$?
    if [[ "$rc" -eq 124 ]]; then echo "netns-sim: FAIL: overall timeout of ${SIM_TIMEOUT}s reached"; fi
    exit "$rc"
fi

exec 9> /tmp/slotmux-netns-sim.lock
flock -n 9 || die "another netns-sim.sh is running"

P=smxsim                    # prefix of every namespace we create
NODE_NS="$P-node"           # holds the bridge (the "Kubernetes node")
PROXY_NS="$P-proxy"         # slotmux + test client (an app pod with the sidecar)
PROXY_IP=10.213.0.200
NET_PREFIX=10.213.0
N=6
SEEDS="redis-0.redis-headless:6379,redis-1.redis-headless:6379,redis-2.redis-headless:6379,redis-3.redis-headless:6379,redis-4.redis-headless:6379,redis-5.redis-headless:6379"

work="$(mktemp -d /tmp/slotmux-netns-sim.XXXXXX)"

# --- TLS (SIM_TLS=1): the overlay's setup ----------------------------------------
# Every script started below inherits REDIS_TLS and the file paths (as the
# containers get them from the overlay); every redis-cli check uses CLI_TLS.
CLI_TLS=()
SLOTMUX_CLIENT_PORT=6379
if [[ "$SIM_TLS" == 1 ]]; then
    tls_ca="$work/tls-ca"       # the CA and the openssl inputs (not mounted in pods)
    tls_dir="$work/tls-secret"  # what the kubelet makes of the Secret: files -> ..data/ -> ..vN/
    mkdir -p "$tls_ca" "$tls_dir/..v1"
    ( # as deploy/README.md, "TLS", for the namespace "sim"
        cd "$tls_ca"
        openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 30 \
            -subj "/CN=slotmux sim CA" -keyout ca.key -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        printf '%s\n' "basicConstraints = critical,CA:FALSE" "keyUsage = critical,digitalSignature" \
            "extendedKeyUsage = serverAuth,clientAuth" \
            "subjectAltName = DNS:redis-headless.sim.svc, DNS:*.redis-headless.sim.svc.cluster.local, DNS:slotmux.sim.svc, DNS:localhost, IP:127.0.0.1" > tls.ext
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=redis-headless.sim.svc" -keyout tls.key -out tls.csr
        openssl x509 -req -sha256 -days 30 -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -extfile tls.ext -out tls.crt
    ) > "$work/tls.log" 2>&1 || { cat "$work/tls.log"; die "could not make the TLS certificates"; }
    cp "$tls_ca/tls.crt" "$tls_ca/tls.key" "$tls_ca/ca.crt" "$tls_dir/..v1/"
    ln -s ..v1 "$tls_dir/..data"
    for f in tls.crt tls.key ca.crt; do ln -s "..data/$f" "$tls_dir/$f"; done
    export REDIS_TLS=yes REDIS_TLS_CERT_FILE="$tls_dir/tls.crt" REDIS_TLS_KEY_FILE="$tls_dir/tls.key" REDIS_TLS_CA_CERT_FILE="$tls_dir/ca.crt"
    CLI_TLS=(--tls --cert "$REDIS_TLS_CERT_FILE" --key "$REDIS_TLS_KEY_FILE" --cacert "$REDIS_TLS_CA_CERT_FILE")
    SLOTMUX_CLIENT_PORT=6380
fi
declare -a POD_IP=() REDIS_PID=() MEET_PID=() prev=()
SLOTMUX_PID="" TRAFFIC_PID=""
next_ip=11
veth_gen=0

pod_ns() { echo "$P-redis-$1"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# --- teardown ----------------------------------------------------------------
kill_ns_pids() { # processes we started inside our namespaces
    local ns="$1" pid
    for pid in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$pid" 2> /dev/null || true; done
}
teardown_all() {
    local ns pid
    for pid in "${REDIS_PID[@]}" "${MEET_PID[@]}" "$SLOTMUX_PID" "$TRAFFIC_PID"; do
        if [[ -n "$pid" ]]; then kill -KILL "$pid" 2> /dev/null || true; fi
    done
    for ns in $(ip netns list 2> /dev/null | awk -v p="$P-" 'index($1, p) == 1 { print $1 }'); do
        kill_ns_pids "$ns"
        ip netns del "$ns" 2> /dev/null || true
    done
    rm -rf /etc/netns/"$P"-* # hosts files (also of pods that were down at the time)
    rmdir /etc/netns 2> /dev/null || true # only if empty (we may have created it)
    { wait || true; } 2> /dev/null
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ "$rc" -ne 0 ]]; then
        say "failed (rc=$rc); last log lines:"
        for f in "$work"/logs/*.log; do
            [[ -f "$f" ]] || continue
            echo "----- $(basename "$f")"; tail -n 15 "$f"
        done
    fi
    teardown_all
    if [[ "$SIM_KEEP" == 1 ]]; then say "logs kept in $work"; else rm -rf "$work"; fi
    ip netns list 2> /dev/null | grep -q "^$P-" && echo "WARNING: namespaces left behind" >&2
    exit "$rc"
}
trap on_exit EXIT
trap 'say "signal received"; exit 130' INT TERM

teardown_all # leftovers of an earlier run that was killed hard
mkdir -p "$work/logs" "$work/pv"

# --- network -----------------------------------------------------------------
write_hosts() { # cluster DNS: rewrite every namespace's hosts file IN PLACE
    local i content ns
    content="127.0.0.1 localhost"$'\n'
    for i in $(seq 0 $((N - 1))); do
        [[ -n "${POD_IP[$i]:-}" ]] || continue
        content+="${POD_IP[$i]} redis-$i.redis-headless redis-$i.redis-headless.sim.svc.cluster.local"$'\n'
        content+="${POD_IP[$i]} redis-headless"$'\n'
    done
    for ns in "$PROXY_NS" $(for i in $(seq 0 $((N - 1))); do pod_ns "$i"; done); do
        mkdir -p "/etc/netns/$ns"
        # `>` truncates the same inode: running processes see the new content.
        printf '%s' "$content" > "/etc/netns/$ns/hosts"
        [[ -f "/etc/netns/$ns/resolv.conf" ]] || printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "/etc/netns/$ns/resolv.conf"
    done
}

net_up() {
    ip netns add "$NODE_NS"
    ip -n "$NODE_NS" link set lo up
    ip -n "$NODE_NS" link add br0 type bridge
    ip -n "$NODE_NS" link set br0 up
    ip netns add "$PROXY_NS"
    ip -n "$PROXY_NS" link set lo up
    ip link add eth0 netns "$PROXY_NS" type veth peer name vproxy netns "$NODE_NS"
    ip -n "$NODE_NS" link set vproxy master br0 up
    ip -n "$PROXY_NS" addr add "$PROXY_IP/24" dev eth0
    ip -n "$PROXY_NS" link set eth0 up
}

# Announce a new pod's address with a gratuitous ARP, as the CNI bridge plugin
# does for a new pod. With IPs reused by other pods (scenario D) neighbours
# would otherwise keep sending to the old MAC until their ARP entry expires
# (30-60 s). (The kernel's arp_notify fires before the veth carrier is up.)
garp() { # garp NS IP
    local _i
    for _i in $(seq 1 20); do # wait for carrier (LOWER_UP), at most 2 s
        ip -n "$1" link show eth0 | grep -q LOWER_UP && break
        sleep 0.1
    done
    ip netns exec "$1" python3 - eth0 "$2" << 'PY' || say "warning: gratuitous ARP for $2 failed"
import socket, struct, sys, time
ifname, ip = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4][:6]
ipb = socket.inet_aton(ip)
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ipb + b"\x00" * 6 + ipb
for _ in range(2):
    s.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp)
    time.sleep(0.1)
PY
}

# --- pods --------------------------------------------------------------------
alloc_ip() { NEW_IP="$NET_PREFIX.$next_ip"; next_ip=$((next_ip + 1)); } # sets NEW_IP (no subshell)

pod_start() { # pod_start I IP
    local i="$1" ip="$2" ns
    ns="$(pod_ns "$i")"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # A fresh peer name for every incarnation: the kernel destroys the old
    # pair asynchronously after `ip netns del`.
    veth_gen=$((veth_gen + 1))
    ip link add eth0 netns "$ns" type veth peer name "vr$i-$veth_gen" netns "$NODE_NS"
    ip -n "$NODE_NS" link set "vr$i-$veth_gen" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    garp "$ns" "$ip"
    POD_IP[i]="$ip"
    write_hosts
    mkdir -p "$work/pv/redis-$i"
    ip netns exec "$ns" env POD_IP="$ip" HOSTNAME="redis-$i" REDIS_CONF="$redis_dir/redis.conf" \
        DATA_DIR="$work/pv/redis-$i" CLUSTER_ANNOUNCE_HOSTNAME="redis-$i.redis-headless" REDIS_MAXMEMORY=64mb \
        REDIS_PASSWORD="$SIM_PASSWORD" \
        bash "$redis_dir/entrypoint.sh" >> "$work/logs/redis-$i.log" 2>&1 &
    REDIS_PID[i]=$!
    disown "$!" # reaped by bash all the same; no "Killed" job notices
    local meet=(bash "$redis_dir/cluster-meet.sh" run)
    # SIM_MEET=0 runs a do-nothing sidecar instead: the control experiment
    # showing that a full restart with new IPs does not heal without it.
    [[ "$SIM_MEET" != 0 ]] || meet=(sleep infinity)
    ip netns exec "$ns" env HOSTNAME="redis-$i" HEADLESS_SERVICE=redis-headless MEET_INTERVAL=5 \
        HEARTBEAT_FILE="$work/meet-$i.heartbeat" "${meet[@]}" >> "$work/logs/meet-$i.log" 2>&1 &
    MEET_PID[i]=$!
    disown "$!"
}

wait_gone() { # wait_gone PID SECONDS: poll until the process is gone, SIGKILL at the end
    local pid="$1" _i
    for _i in $(seq 1 $(($2 * 10))); do
        kill -0 "$pid" 2> /dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
}
pod_signal() { # pod_signal I graceful|term|kill
    local i="$1" how="$2" ns
    ns="$(pod_ns "$i")"
    if [[ "$how" == graceful ]]; then # what the kubelet does: preStop hook, then SIGTERM
        ip netns exec "$ns" env HOSTNAME="redis-$i" bash "$redis_dir/prestop.sh" >> "$work/logs/redis-$i.log" 2>&1 || true
    fi
    if [[ "$how" == kill ]]; then
        kill -KILL "${REDIS_PID[$i]}" "${MEET_PID[$i]}" 2> /dev/null || true
    else
        kill -TERM "${REDIS_PID[$i]}" "${MEET_PID[$i]}" 2> /dev/null || true
    fi
}
ns_del() { # delete a namespace once nothing runs in it (a leftover child, e.g. the sidecar's sleep, would keep it busy)
    local ns="$1" _i
    for _i in $(seq 1 50); do
        kill_ns_pids "$ns"
        if [[ -z "$(ip netns pids "$ns" 2> /dev/null)" ]] && ip netns del "$ns" 2> /dev/null; then return 0; fi
        sleep 0.1
    done
    die "could not delete namespace $ns"
}
pod_reap() { # pod_reap I: wait (30 s = terminationGracePeriodSeconds), then delete the "pod"
    local i="$1"
    wait_gone "${REDIS_PID[$i]}" 30
    wait_gone "${MEET_PID[$i]}" 5
    ns_del "$(pod_ns "$i")"
    POD_IP[i]=""
}
pod_stop() { pod_signal "$1" "$2"; pod_reap "$1"; }

# --- observation (from the proxy namespace, as an app pod would) -------------
pcli() { timeout 5 ip netns exec "$PROXY_NS" redis-cli "${CLI_TLS[@]}" "$@" 2> /dev/null | tr -d '\r'; }
pcli_t() { local t="$1"; shift; timeout "$t" ip netns exec "$PROXY_NS" redis-cli "${CLI_TLS[@]}" "$@" 2> /dev/null | tr -d '\r'; }
pcli_noauth_t() { local t="$1"; shift; timeout "$t" env -u REDISCLI_AUTH ip netns exec "$PROXY_NS" redis-cli "${CLI_TLS[@]}" "$@" 2> /dev/null | tr -d '\r'; }
node_cli() { local i="$1"; shift; pcli -h "${POD_IP[$i]}" -p 6379 "$@"; }

# "cluster ok" on EVERY node: cluster_state:ok, 16384 slots served, exactly N
# nodes known, every link connected and nobody flagged fail/pfail/noaddr.
# (cluster_state:ok alone is not enough: a node restarted from nodes.conf
# reports ok from its stale view before it has even reached a peer.)
cluster_ok_all() {
    local i ci nodes
    for i in $(seq 0 $((N - 1))); do
        ci="$(node_cli "$i" CLUSTER INFO)" || return 1
        grep -qx 'cluster_state:ok' <<< "$ci" || return 1
        grep -qx 'cluster_slots_ok:16384' <<< "$ci" || return 1
        grep -qx "cluster_known_nodes:$N" <<< "$ci" || return 1
        nodes="$(node_cli "$i" CLUSTER NODES)" || return 1
        awk '$3 ~ /fail|noaddr|handshake/ || $8 != "connected" { bad = 1 } END { exit bad }' <<< "$nodes" || return 1
    done
}
replicas_ok_all() { # 3 masters with slots, each replica linked to its master and not syncing
    local i nodes repl
    for i in $(seq 0 $((N - 1))); do
        nodes="$(node_cli "$i" CLUSTER NODES)" || return 1
        [[ "$(awk '$3 ~ /master/ && NF > 8' <<< "$nodes" | grep -c .)" -eq 3 ]] || return 1
        repl="$(node_cli "$i" INFO replication)" || return 1
        if grep -qx 'role:slave' <<< "$repl"; then
            grep -qx 'master_link_status:up' <<< "$repl" || return 1
            grep -qx 'master_sync_in_progress:0' <<< "$repl" || return 1
        fi
    done
}

ENTRY=redis-0.redis-headless # first node `redis-cli -c` asks (SIM_REDIS_ONLY=1)
key_cli() { # key_cli TIMEOUT: the client path under test, commands on stdin
    if [[ "$SIM_REDIS_ONLY" == 1 ]]; then
        # redis-cli -c prints "-> Redirected to slot ..." lines: drop them
        pcli_t "$1" -c -h "$ENTRY" -p 6379 | grep -v '^-> Redirected'
    else # slotmux at 127.0.0.1:6379 in the proxy namespace (the sidecar pattern)
        pcli_noauth_t "$1" -h 127.0.0.1 -p "$SLOTMUX_CLIENT_PORT"   # slotmux itself asks clients for no password
    fi
}
write_keys() {
    local got
    got="$(seq 1 "$SIM_KEYS" | awk -v t="$token" '{ printf "SET sim:key:%d v-%s-%d\n", $1, t, $1 }' | key_cli 60 | grep -cx OK || true)"
    [[ "$got" -eq "$SIM_KEYS" ]] || die "only $got of $SIM_KEYS SETs answered OK"
}
keys_ok() { # all keys readable with the right values
    local expected got
    expected="$(seq 1 "$SIM_KEYS" | awk -v t="$token" '{ printf "v-%s-%d\n", t, $1 }')"
    # a short time limit per attempt: a hung attempt must not hide the recovery time
    got="$(seq 1 "$SIM_KEYS" | awk '{ printf "GET sim:key:%d\n", $1 }' | key_cli 5)" || return 1
    [[ "$got" == "$expected" ]]
}

# wait_until NAME START CHECK... : poll (0.5 s) until CHECK passes; prints seconds since START
wait_until() {
    local name="$1" t0="$2" end; shift 2
    end=$(($(date +%s) + SIM_HEAL_TIMEOUT))
    until "$@"; do
        (($(date +%s) < end)) || die "$name not reached within ${SIM_HEAL_TIMEOUT}s"
        sleep 0.5
    done
    secs "$t0" "$(now)"
}

master_pod() { # index of a pod that is currently a master with slots
    local i
    for i in $(seq 0 $((N - 1))); do
        if node_cli "$i" CLUSTER NODES | awk '$3 ~ /myself/ && $3 ~ /master/ && NF > 8 { f = 1 } END { exit !f }'; then
            echo "$i"; return
        fi
    done
    return 1
}
replica_pod() { # index of a pod that is currently a replica
    local i
    for i in $(seq 0 $((N - 1))); do
        if [[ "$(role_of "$i")" == slave ]]; then echo "$i"; return; fi
    done
    return 1
}
role_of() { node_cli "$1" INFO replication | awk -F: '$1 == "role" { print $2 }'; }

start_slotmux() {
    local auth=() listen=(--listen 0.0.0.0:6379)
    [[ -z "$SIM_PASSWORD" ]] || auth=(SLOTMUX_BACKEND_PASSWORD="$SIM_PASSWORD")
    if [[ "$SIM_TLS" == 1 ]]; then # as deploy/k8s/tls/slotmux-deployment-tls.yaml
        listen=(--listen off --tls-listen 0.0.0.0:6380 --tls-cert-file "$REDIS_TLS_CERT_FILE" --tls-key-file "$REDIS_TLS_KEY_FILE"
            --tls-auth-clients no --backend-tls --backend-tls-ca-cert-file "$REDIS_TLS_CA_CERT_FILE"
            --backend-tls-cert-file "$REDIS_TLS_CERT_FILE" --backend-tls-key-file "$REDIS_TLS_KEY_FILE"
            --backend-tls-server-name redis-headless.sim.svc)
    fi
    ip netns exec "$PROXY_NS" env RUST_LOG=info "${auth[@]}" \
        "$SLOTMUX_BIN" "${listen[@]}" --seeds "$SEEDS" \
        --metrics-listen 0.0.0.0:9898 --log-format text >> "$work/logs/slotmux.log" 2>&1 &
    SLOTMUX_PID=$!
}
slotmux_ready() {
    kill -0 "$SLOTMUX_PID" 2> /dev/null || die "slotmux exited (see log above)"
    timeout 3 ip netns exec "$PROXY_NS" curl -fsS -o /dev/null http://127.0.0.1:9898/readyz 2> /dev/null
}

declare -a REPORT=()
report() { REPORT+=("$(printf '%-44s %12s %12s %12s' "$@")"); }
via() { if [[ "$SIM_REDIS_ONLY" == 1 ]]; then echo 'via redis-cli -c'; else echo 'through slotmux'; fi; }
heal() { # heal LABEL T0: wait for health and keys, record the times
    local label="$1" t0="$2" t_ok t_keys t_repl
    t_keys="$(wait_until "$label: all $SIM_KEYS keys readable" "$t0" keys_ok)"
    say "$label: all $SIM_KEYS keys readable $(via) after ${t_keys}s"
    t_ok="$(wait_until "$label: cluster ok" "$t0" cluster_ok_all)"
    say "$label: cluster_state:ok + 16384 slots served + all 6 nodes connected, on every node, after ${t_ok}s"
    t_repl="$(wait_until "$label: replicas synced" "$t0" replicas_ok_all)"
    say "$label: 3 masters, every replica linked and synced after ${t_repl}s"
    report "$label" "$t_ok" "$t_keys" "$t_repl"
}

# ============================================================================
say "work dir $work; redis $(redis-server --version | awk '{ print $3 }'); slotmux: $([[ "$SIM_REDIS_ONLY" == 1 ]] && echo 'not used (SIM_REDIS_ONLY=1)' || echo "$SLOTMUX_BIN")$([[ "$SIM_TLS" == 1 ]] && echo '; TLS everywhere (SIM_TLS=1)')"
net_up
for i in $(seq 0 $((N - 1))); do alloc_ip; pod_start "$i" "$NEW_IP"; done
say "6 pods started: ${POD_IP[*]}"

bootstrap() {
    ip netns exec "$PROXY_NS" env BOOTSTRAP_NODES="${SEEDS//,/ }" BOOTSTRAP_TIMEOUT=120 BOOTSTRAP_SETTLE_TIMEOUT=60 \
        bash "$redis_dir/bootstrap.sh" >> "$work/logs/bootstrap.log" 2>&1
}
t0="$(now)"
bootstrap || die "bootstrap.sh failed"
say "bootstrap.sh created the cluster in $(secs "$t0" "$(now)")s"
t0="$(now)"
bootstrap || die "second bootstrap.sh run failed"
grep -q 'NOT creating anything' "$work/logs/bootstrap.log" || die "second bootstrap.sh run did not recognise the existing cluster"
say "bootstrap.sh re-run: recognised the existing cluster, changed nothing, exit 0 ($(secs "$t0" "$(now)")s)"
wait_until "initial cluster" "$t0" cluster_ok_all > /dev/null
wait_until "initial replication" "$t0" replicas_ok_all > /dev/null

for i in $(seq 0 $((N - 1))); do
    ip netns exec "$(pod_ns "$i")" bash "$redis_dir/probe.sh" readiness > /dev/null || die "readiness probe fails on redis-$i"
done
say "readiness probe (probe.sh readiness) passes on all 6 pods"
if [[ "$SIM_TLS" == 1 ]]; then
    [[ "$(timeout 5 ip netns exec "$PROXY_NS" redis-cli -h "${POD_IP[0]}" -p 6379 PING 2> /dev/null)" != PONG ]] || die "TLS set but redis-0 answers in plain text"
    [[ "$(timeout 5 ip netns exec "$PROXY_NS" redis-cli --tls --cacert "$REDIS_TLS_CA_CERT_FILE" -h "${POD_IP[0]}" -p 6379 PING 2> /dev/null)" != PONG ]] \
        || die "TLS set but redis-0 answers without a client certificate"
    say "TLS only: redis-0 refuses plain connections and TLS without a client certificate; the cluster was created and checked over TLS"
fi
if [[ -n "$SIM_PASSWORD" ]]; then
    [[ "$(pcli_noauth_t 5 -h "${POD_IP[0]}" -p 6379 PING)" == NOAUTH* ]] || die "password set but redis-0 answers without AUTH"
    say "password authentication is enforced (PING without AUTH: NOAUTH)"
fi

token="$(date +%s)-$$"
if [[ "$SIM_REDIS_ONLY" != 1 ]]; then
    start_slotmux
    t0="$(now)"
    wait_until "slotmux /readyz" "$t0" slotmux_ready > /dev/null
    say "slotmux is ready (/readyz 200) after $(secs "$t0" "$(now)")s"
    if [[ "$SIM_TLS" == 1 ]]; then
        [[ "$(timeout 5 ip netns exec "$PROXY_NS" redis-cli -h 127.0.0.1 -p 6379 PING 2> /dev/null)" != PONG ]] || die "slotmux answers in plain text on 6379 (--listen off)"
        # the README's connect command: only the CA, no client certificate
        [[ "$(timeout 5 ip netns exec "$PROXY_NS" redis-cli --tls --cacert "$REDIS_TLS_CA_CERT_FILE" -h 127.0.0.1 -p 6380 PING 2> /dev/null)" == PONG ]] \
            || die "redis-cli --tls --cacert ca.crt -p 6380 PING does not answer PONG"
        say "slotmux: TLS only (nothing on 6379); redis-cli --tls --cacert ca.crt -p 6380 PING answers PONG"
    fi
fi
write_keys
keys_ok || die "keys written but not read back"
say "wrote and read back $SIM_KEYS keys"

# A client hammering the client path while a scenario runs: every 0.2 s three
# GETs (keys on different shards), each attempt limited to 2 s. Counts attempts
# whose answers were not all right (errors, timeouts, wrong values).
traffic_start() {
    local f="$work/traffic"
    rm -f "$f.stop"; printf '0 0\n' > "$f.count"
    (
        ok=0 bad=0
        while [[ ! -e "$f.stop" ]]; do
            if [[ "$(printf 'GET sim:key:1\nGET sim:key:2\nGET sim:key:3\n' | key_cli 2 | tr '\n' ' ')" == "v-$token-1 v-$token-2 v-$token-3 " ]]; then
                ok=$((ok + 1))
            else
                bad=$((bad + 1))
            fi
            printf '%d %d\n' "$ok" "$bad" > "$f.count"
            sleep 0.2
        done
    ) &
    TRAFFIC_PID=$!
}
traffic_stop() { # prints "bad/total"
    local ok bad
    touch "$work/traffic.stop"
    wait "$TRAFFIC_PID" || true
    read -r ok bad < "$work/traffic.count"
    echo "$bad/$((ok + bad))"
}

for s in $SIM_SCENARIOS; do
    case "$s" in
        A)
            m="$(master_pod)" || die "no master found"
            old="${POD_IP[$m]}"
            say "scenario A: delete master pod redis-$m gracefully (preStop handover, SIGTERM), recreate it with a new IP"
            traffic_start
            pod_stop "$m" graceful
            t0="$(now)"
            alloc_ip; pod_start "$m" "$NEW_IP"
            say "scenario A: redis-$m recreated: $old -> ${POD_IP[$m]}"
            heal "A: 1 master, graceful, new IP" "$t0"
            errs="$(traffic_stop)"
            say "scenario A: redis-$m is now a $(role_of "$m"); client attempts that failed during the whole scenario: $errs"
            report "   (client attempts failed, whole scenario)" "" "$errs" ""
            ;;
        B)
            m="$(master_pod)" || die "no master found"
            old="${POD_IP[$m]}"
            say "scenario B: master pod redis-$m crashes (SIGKILL); its node is gone until the replica took over"
            traffic_start
            t0="$(now)"
            pod_stop "$m" kill
            t_fo="$(wait_until "B: failover (all keys readable without redis-$m)" "$t0" keys_ok)"
            say "scenario B: replica promoted, all $SIM_KEYS keys readable $(via) ${t_fo}s after the crash"
            report "B: master crash -> replica failover" "" "$t_fo" ""
            t0="$(now)"
            alloc_ip; pod_start "$m" "$NEW_IP"
            say "scenario B: redis-$m recreated: $old -> ${POD_IP[$m]}"
            heal "B: crashed master back, new IP" "$t0"
            errs="$(traffic_stop)"
            say "scenario B: redis-$m is now a $(role_of "$m"); client attempts that failed during the whole scenario: $errs"
            report "   (client attempts failed, whole scenario)" "" "$errs" ""
            ;;
        C | D)
            if [[ "$s" == C ]]; then
                say "scenario C: delete all 6 pods (SIGTERM), recreate them with new IPs"
                how="term"
            else
                say "scenario D: kill all 6 pods (SIGKILL), recreate them with their IPs PERMUTED"
                how="kill"
            fi
            prev=("${POD_IP[@]}")
            for i in $(seq 0 $((N - 1))); do pod_signal "$i" "$how"; done
            for i in $(seq 0 $((N - 1))); do pod_reap "$i"; done
            t0="$(now)"
            for i in $(seq 0 $((N - 1))); do
                if [[ "$s" == C ]]; then alloc_ip; else NEW_IP="${prev[$(((i + 1) % N))]}"; fi
                pod_start "$i" "$NEW_IP"
            done
            say "scenario $s: IPs ${prev[*]} -> ${POD_IP[*]}"
            if [[ "$s" == C ]]; then heal "C: all 6 deleted, new IPs" "$t0"; else heal "D: all 6 killed, IPs permuted" "$t0"; fi
            ;;
        E)
            # The "Repairing: a pod lost its volume" procedure of deploy/README.md.
            r="$(replica_pod)" || die "no replica found"
            old_id="$(node_cli "$r" CLUSTER MYID)"
            say "scenario E: replica pod redis-$r comes back with an EMPTY volume (new node ID) and a new IP"
            # redis-cli -c must not start at the emptied node (it is in no cluster)
            ENTRY="redis-$(((r + 1) % N)).redis-headless"
            pod_stop "$r" kill
            rm -rf "${work:?}/pv/redis-$r"
            alloc_ip; pod_start "$r" "$NEW_IP"
            t0="$(now)"
            wait_until "E: redis-$r answers" "$t0" node_cli "$r" PING > /dev/null
            sleep 12 # > 2 sidecar passes: they must NOT join the unknown node
            node_cli "$r" CLUSTER INFO | grep -qx 'cluster_known_nodes:1' \
                || die "E: the sidecars joined a node with an unknown ID on their own"
            grep -q "not joining it automatically" "$work"/logs/meet-*.log || die "E: no sidecar reported the unknown node"
            say "scenario E: sidecars reported the unknown node and left it alone; repairing as the README says"
            keys_ok || die "E: keys not readable while one replica is missing"
            t0="$(now)"
            for i in $(seq 0 $((N - 1))); do
                [[ "$i" -eq "$r" ]] || [[ "$(node_cli "$i" CLUSTER FORGET "$old_id")" == OK ]] || die "E: CLUSTER FORGET on redis-$i failed"
            done
            pcli_t 60 --cluster add-node "${POD_IP[$r]}:6379" "${POD_IP[$(((r + 1) % N))]}:6379" --cluster-slave \
                >> "$work/logs/repair.log" || die "E: redis-cli --cluster add-node failed"
            heal "E: empty volume, FORGET + add-node" "$t0"
            ENTRY=redis-0.redis-headless
            ;;
        R)
            [[ "$SIM_TLS" == 1 ]] || die "scenario R needs SIM_TLS=1"
            serial_at() { # serial_at IP PORT: serial of the certificate served there
                timeout 5 ip netns exec "$PROXY_NS" openssl s_client -connect "$1:$2" -cert "$REDIS_TLS_CERT_FILE" \
                    -key "$REDIS_TLS_KEY_FILE" -CAfile "$REDIS_TLS_CA_CERT_FILE" < /dev/null 2> /dev/null \
                    | openssl x509 -noout -serial 2> /dev/null
            }
            all_serve() { # all_serve SERIAL: every node and slotmux (unless SIM_REDIS_ONLY) serve it
                local i
                for i in $(seq 0 $((N - 1))); do [[ "$(serial_at "${POD_IP[$i]}" 6379)" == "$1" ]] || return 1; done
                [[ "$SIM_REDIS_ONLY" == 1 || "$(serial_at 127.0.0.1 6380)" == "$1" ]]
            }
            old_serial="serial=$(openssl x509 -in "$REDIS_TLS_CERT_FILE" -noout -serial | cut -d= -f2)"
            all_serve "$old_serial" || die "R: not every node serves the current certificate $old_serial"
            mkdir -p "$tls_dir/..v2"
            (cd "$tls_ca" && openssl x509 -req -sha256 -days 30 -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                -extfile tls.ext -out "$tls_dir/..v2/tls.crt") > /dev/null 2>&1 || die "R: could not renew the certificate"
            cp "$tls_ca/tls.key" "$tls_ca/ca.crt" "$tls_dir/..v2/"
            new_serial="serial=$(openssl x509 -in "$tls_dir/..v2/tls.crt" -noout -serial | cut -d= -f2)"
            say "scenario R: renewed certificate ($old_serial -> $new_serial) swapped in as the kubelet does"
            traffic_start
            t0="$(now)"
            ln -s ..v2 "$tls_dir/..data_tmp" && mv -T "$tls_dir/..data_tmp" "$tls_dir/..data"
            t_all="$(wait_until "R: every node$([[ "$SIM_REDIS_ONLY" == 1 ]] || echo ' and slotmux') serving the renewed certificate" "$t0" all_serve "$new_serial")"
            say "scenario R: every node$([[ "$SIM_REDIS_ONLY" == 1 ]] || echo ' and slotmux:6380') serve the renewed certificate after ${t_all}s, without a restart"
            keys_ok || die "R: keys not readable after the rotation"
            errs="$(traffic_stop)"
            say "scenario R: all $SIM_KEYS keys readable; client attempts that failed during the rotation: $errs"
            report "R: certificate rotation (all serve the new one)" "" "$t_all" ""
            report "   (client attempts failed, whole scenario)" "" "$errs" ""
            ;;
        *) die "unknown scenario '$s'" ;;
    esac
done

t0="$(now)"
bootstrap || die "bootstrap.sh re-run after the restarts failed"
say "bootstrap.sh re-run after the restarts: exit 0, existing cluster left alone ($(secs "$t0" "$(now)")s)"
for i in $(seq 0 $((N - 1))); do
    ip netns exec "$(pod_ns "$i")" bash "$redis_dir/probe.sh" readiness > /dev/null || die "readiness probe fails on redis-$i at the end"
    ip netns exec "$(pod_ns "$i")" bash "$redis_dir/probe.sh" liveness > /dev/null || die "liveness probe fails on redis-$i at the end"
done
say "liveness and readiness probes pass on all 6 pods"

if [[ "$SIM_REDIS_ONLY" != 1 ]]; then
    metrics="$(timeout 3 ip netns exec "$PROXY_NS" curl -fsS http://127.0.0.1:9898/metrics)" || die "GET /metrics failed"
    say "slotmux /metrics: $(grep -vc '^#' <<< "$metrics") sample lines"
    timeout 3 ip netns exec "$PROXY_NS" curl -fsS -o /dev/null http://127.0.0.1:9898/healthz || die "GET /healthz failed"
    t0="$(now)"
    kill -TERM "$SLOTMUX_PID"
    rc=0
    for _ in $(seq 1 150); do kill -0 "$SLOTMUX_PID" 2> /dev/null || break; sleep 0.1; done
    kill -0 "$SLOTMUX_PID" 2> /dev/null && die "slotmux still running 15 s after SIGTERM (drain-timeout is 10 s)"
    wait "$SLOTMUX_PID" || rc=$?
    SLOTMUX_PID=""
    [[ "$rc" -eq 0 ]] || die "slotmux exited with $rc after SIGTERM (expected 0)"
    say "slotmux drained and exited 0 on SIGTERM after $(secs "$t0" "$(now)")s"
fi

echo
echo "netns-sim recovery times (seconds from the restart; keys via $([[ "$SIM_REDIS_ONLY" == 1 ]] && echo 'redis-cli -c' || echo slotmux)$([[ "$SIM_TLS" == 1 ]] && echo ', all over TLS')):"
printf '%-44s %12s %12s %12s\n' "scenario" "cluster ok" "keys ok" "replicas ok"
printf '%s\n' "${REPORT[@]}"
echo "netns-sim: $(wc -w <<< "$SIM_SCENARIOS") passed, 0 failed"
