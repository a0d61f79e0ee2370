#!/usr/bin/env bash
# bootstrap.sh: create the Redis Cluster once, idempotently.
#
# Run by the Kubernetes Job deploy/k8s/redis-bootstrap-job.yaml (and by the
# netns simulation). It needs no Kubernetes API access: it talks to the Redis
# pods over the network by their stable DNS names (headless Service with
# publishNotReadyAddresses, so names resolve before the pods are Ready).
#
#   1. Waits, with exponential backoff and a bounded total time, until every
#      node in BOOTSTRAP_NODES resolves and answers PING.
#   2. If EVERY node is empty (knows only itself, no slots, no keys), runs
#        redis-cli --cluster create <ip:port>... --cluster-replicas R --cluster-yes
#      and waits (bounded) until all nodes report cluster_state:ok with all
#      16384 slots served.
#   3. If ANY node already has slots or knows other nodes, the cluster exists:
#      it changes nothing, reports the state (waiting a bounded time for it to
#      become healthy, e.g. while the cluster-meet sidecars heal IP changes)
#      and exits 0. A broken existing cluster is an operator's job
#      (redis-cli --cluster check/fix), never something to re-create.
#
# Exit codes: 0 created or already present; 1 timed out / create failed
# (the Job retries up to backoffLimit); 2 bad configuration.
#
# Environment:
#   BOOTSTRAP_NODES        required: host[:port] list, space- or comma-separated,
#                          e.g. "redis-0.redis-headless ... redis-5.redis-headless"
#   BOOTSTRAP_REPLICAS     replicas per master (default 1)
#   BOOTSTRAP_TIMEOUT      total seconds to wait for the nodes (default 600)
#   BOOTSTRAP_SETTLE_TIMEOUT seconds to wait for cluster_state:ok afterwards (default 120)
#   BOOTSTRAP_MAX_BACKOFF  longest sleep between attempts (default 30)
#   CMD_TIMEOUT            seconds per redis-cli call (default 5)
#   REDIS_CLI              redis-cli binary (default redis-cli)
# Password: redis-cli reads it from REDISCLI_AUTH when the cluster uses one.
# TLS: REDIS_TLS=yes and the certificate files (redis-tls.sh); the Job then
# presents the certificate as client certificate to every node.
set -euo pipefail

BOOTSTRAP_NODES="${BOOTSTRAP_NODES:-}"
BOOTSTRAP_REPLICAS="${BOOTSTRAP_REPLICAS:-1}"
BOOTSTRAP_TIMEOUT="${BOOTSTRAP_TIMEOUT:-600}"
BOOTSTRAP_SETTLE_TIMEOUT="${BOOTSTRAP_SETTLE_TIMEOUT:-120}"
BOOTSTRAP_MAX_BACKOFF="${BOOTSTRAP_MAX_BACKOFF:-30}"
CMD_TIMEOUT="${CMD_TIMEOUT:-5}"
REDIS_CLI="${REDIS_CLI:-redis-cli}"

log() { printf '%s bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $1"; exit "${2:-1}"; }

# shellcheck source-path=SCRIPTDIR
# shellcheck source=redis-tls.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-tls.sh"
redis_tls_init || die "bad TLS settings" 2

for v in BOOTSTRAP_REPLICAS BOOTSTRAP_TIMEOUT BOOTSTRAP_SETTLE_TIMEOUT BOOTSTRAP_MAX_BACKOFF CMD_TIMEOUT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v='${!v}' must be a non-negative integer" 2
done
[[ -n "$BOOTSTRAP_NODES" ]] || die "BOOTSTRAP_NODES is empty (expected e.g. 'redis-0.redis-headless:6379 ...')" 2

hosts=() ports=()
for n in ${BOOTSTRAP_NODES//,/ }; do
    if [[ "$n" =~ ^(.+):([0-9]+)$ && "$n" != *::* ]]; then
        hosts+=("${BASH_REMATCH[1]}"); ports+=("${BASH_REMATCH[2]}")
    else
        hosts+=("$n"); ports+=(6379)
    fi
done
count="${#hosts[@]}"
min=$((3 * (BOOTSTRAP_REPLICAS + 1)))
((count >= min)) || die "$count node(s) given; 3 masters with $BOOTSTRAP_REPLICAS replica(s) each need at least $min" 2

rcli() { # rcli HOST PORT CMD... with a hard time limit
    local h="$1" p="$2"; shift 2
    timeout "$CMD_TIMEOUT" "$REDIS_CLI" "${REDIS_CLI_TLS[@]}" -h "$h" -p "$p" "$@" 2>/dev/null | tr -d '\r'
}
info_field() { # info_field NAME < INFO text
    awk -F: -v k="$1" '$1 == k { print $2; exit }'
}
resolve() { # first address of a name (an IP stays as it is)
    getent ahosts "$1" 2>/dev/null | awk 'NR == 1 { print $1 }'
}

start="$(date +%s)"
deadline=$((start + BOOTSTRAP_TIMEOUT))
delay=1
sleep_backoff() { # never a busy loop; never past the deadline
    local now left
    now="$(date +%s)"; left=$((deadline - now))
    ((left > 0)) || return 1
    ((delay <= left)) || delay="$left"
    sleep "$delay"
    delay=$((delay * 2)); ((delay <= BOOTSTRAP_MAX_BACKOFF)) || delay="$BOOTSTRAP_MAX_BACKOFF"
}

# --- 1. wait for every node ------------------------------------------------
log "waiting for $count nodes: ${hosts[*]} (timeout ${BOOTSTRAP_TIMEOUT}s)"
attempt=0
while true; do
    attempt=$((attempt + 1))
    missing=()
    ips=()
    for i in "${!hosts[@]}"; do
        ip="$(resolve "${hosts[$i]}")" || ip=""
        if [[ -z "$ip" ]]; then missing+=("${hosts[$i]}(no DNS yet)"); continue; fi
        reply="$(rcli "$ip" "${ports[$i]}" PING)" || reply=""
        if [[ "$reply" != "PONG" ]]; then missing+=("${hosts[$i]}($ip: ${reply:-no answer})"); continue; fi
        ips+=("$ip")
    done
    if ((${#missing[@]} == 0)); then break; fi
    log "attempt $attempt: ${#missing[@]}/$count not ready: ${missing[*]}; retrying in ${delay}s"
    sleep_backoff || die "gave up after ${BOOTSTRAP_TIMEOUT}s: not ready: ${missing[*]}"
done
log "all $count nodes answer PING after $(($(date +%s) - start))s"

# --- 2. survey ---------------------------------------------------------------
empty=0 in_cluster=0
for i in "${!hosts[@]}"; do
    ci="$(rcli "${ips[$i]}" "${ports[$i]}" CLUSTER INFO)" || die "CLUSTER INFO failed on ${hosts[$i]} (is cluster-enabled yes?)"
    known="$(info_field cluster_known_nodes <<< "$ci")"
    assigned="$(info_field cluster_slots_assigned <<< "$ci")"
    keys="$(rcli "${ips[$i]}" "${ports[$i]}" DBSIZE)" || keys="?"
    log "  ${hosts[$i]} ${ips[$i]}:${ports[$i]} known_nodes=${known:-?} slots_assigned=${assigned:-?} keys=$keys"
    if [[ "$known" == 1 && "$assigned" == 0 && "$keys" == 0 ]]; then
        empty=$((empty + 1))
    else
        in_cluster=$((in_cluster + 1))
    fi
done

healthy_all() { # every node: cluster_state:ok, all slots served, sees every node
    local i ci k
    for i in "${!hosts[@]}"; do
        ci="$(rcli "${ips[$i]}" "${ports[$i]}" CLUSTER INFO)" || return 1
        [[ "$(info_field cluster_state <<< "$ci")" == ok ]] || return 1
        [[ "$(info_field cluster_slots_ok <<< "$ci")" == 16384 ]] || return 1
        k="$(info_field cluster_known_nodes <<< "$ci")"
        [[ "$k" =~ ^[0-9]+$ ]] && ((k >= count)) || return 1
    done
}
wait_healthy() { # bounded by BOOTSTRAP_SETTLE_TIMEOUT, with backoff
    deadline=$(($(date +%s) + BOOTSTRAP_SETTLE_TIMEOUT)); delay=1
    until healthy_all; do
        sleep_backoff || return 1
    done
}

if ((in_cluster > 0)); then
    log "$in_cluster of $count nodes already belong to a cluster (or hold data): NOT creating anything"
    if wait_healthy; then
        log "existing cluster is healthy (cluster_state:ok, 16384 slots served on all $count nodes); nothing to do"
    else
        log "WARNING: existing cluster did not become healthy within ${BOOTSTRAP_SETTLE_TIMEOUT}s; leaving it alone."
        log "WARNING: inspect with: redis-cli --cluster check ${ips[0]}:${ports[0]}  (see deploy/README.md, Repairing)"
        timeout 30 "$REDIS_CLI" "${REDIS_CLI_TLS[@]}" --cluster check "${ips[0]}:${ports[0]}" >&2 || true
        ((empty == 0)) || log "WARNING: $empty node(s) are empty and not in the cluster: add them with redis-cli --cluster add-node"
    fi
    exit 0
fi

# --- 3. create ---------------------------------------------------------------
addrs=()
for i in "${!hosts[@]}"; do
    addrs+=("${ips[$i]}:${ports[$i]}")   # redis-cli splits at the last ':' (IPv6 works unbracketed)
done
log "all $count nodes are empty: creating the cluster: ${addrs[*]} with $BOOTSTRAP_REPLICAS replica(s) per master"
if ! timeout 300 "$REDIS_CLI" "${REDIS_CLI_TLS[@]}" --cluster create "${addrs[@]}" --cluster-replicas "$BOOTSTRAP_REPLICAS" --cluster-yes >&2; then
    die "redis-cli --cluster create failed (the Job retries; a half-created cluster needs redis-cli --cluster fix)"
fi
if wait_healthy; then
    log "cluster created and healthy after $(($(date +%s) - start))s"
else
    die "cluster created but not healthy within ${BOOTSTRAP_SETTLE_TIMEOUT}s"
fi
