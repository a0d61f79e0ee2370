#!/usr/bin/env bash
# prestop.sh: before a Redis master pod stops, hand its slots to a replica.
#
# Kubernetes runs this (lifecycle.preStop) before sending SIGTERM. If this node
# is a master that serves slots and has a healthy replica, it asks that replica
# for a coordinated CLUSTER FAILOVER (the master pauses writes, the replica
# catches up to the same offset and takes over: no acknowledged write is
# lost) and waits, bounded, until this node has become a replica. Clients
# (slotmux) get -MOVED to the new master and follow it. Without this, a
# stopping master's slots would be unavailable for cluster-node-timeout plus
# the election (about 5-10 s) until its replica noticed and took over.
#
# It never fails the shutdown: on any problem it logs and exits 0, and the
# node then stops as it would have anyway (its replica fails over by itself).
# Environment: REDIS_PORT (default 6379), PRESTOP_TIMEOUT (default 20 s),
# CMD_TIMEOUT (default 3), REDIS_CLI, PRESTOP_LOG_TO (optional extra log file).
# Password: redis-cli reads it from REDISCLI_AUTH when the cluster uses one.
# TLS: REDIS_TLS=yes and the certificate files (redis-tls.sh).
set -uo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
PRESTOP_TIMEOUT="${PRESTOP_TIMEOUT:-20}"
CMD_TIMEOUT="${CMD_TIMEOUT:-3}"
REDIS_CLI="${REDIS_CLI:-redis-cli}"

PRESTOP_LOG_TO="${PRESTOP_LOG_TO:-}"

# A preStop hook's output is not in the container log. In the pod,
# PRESTOP_LOG_TO=/proc/1/fd/1 (redis-server's stdout) makes `kubectl logs`
# show what happened; elsewhere it stays unset and only stderr is used.
log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) prestop[${HOSTNAME:-?}]: $*"
    printf '%s\n' "$line" >&2
    if [[ -n "$PRESTOP_LOG_TO" && -w "$PRESTOP_LOG_TO" ]]; then printf '%s\n' "$line" > "$PRESTOP_LOG_TO" 2>/dev/null || true; fi
}
# shellcheck source-path=SCRIPTDIR
# shellcheck source=redis-tls.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-tls.sh"
redis_tls_init || { log "bad TLS settings; nothing handed over"; exit 0; }
rcli() { local h="$1" p="$2"; shift 2; timeout "$CMD_TIMEOUT" "$REDIS_CLI" "${REDIS_CLI_TLS[@]}" -h "$h" -p "$p" "$@" 2>/dev/null | tr -d '\r'; }
role() { rcli 127.0.0.1 "$REDIS_PORT" INFO replication | awk -F: '$1 == "role" { print $2; exit }'; }

nodes="$(rcli 127.0.0.1 "$REDIS_PORT" CLUSTER NODES)" || { log "redis not answering; nothing to hand over"; exit 0; }
myline="$(awk '("," $3 ",") ~ /,myself,/' <<< "$nodes")"
[[ -n "$myline" ]] || { log "no cluster yet; nothing to hand over"; exit 0; }
read -r myid _ myflags _ <<< "$myline"
if [[ ",$myflags," != *,master,* ]]; then log "replica: nothing to hand over"; exit 0; fi
if (($(awk '{ print NF }' <<< "$myline") <= 8)); then log "master without slots: nothing to hand over"; exit 0; fi

# A healthy replica of mine: flags slave without fail, master field = my ID, link connected.
replica="$(awk -v me="$myid" '$4 == me && ("," $3 ",") ~ /,slave,/ && $3 !~ /fail|noaddr|handshake/ && $8 == "connected" { print $2; exit }' <<< "$nodes")"
if [[ -z "$replica" ]]; then
    log "WARNING: master $myid has no healthy replica: its slots will be unavailable until it is back"
    exit 0
fi
addr="${replica%%,*}"; addr="${addr%%@*}"
r_ip="${addr%:*}"; r_port="${addr##*:}"
log "master $myid: asking replica $r_ip:$r_port for CLUSTER FAILOVER"
if [[ "$(rcli "$r_ip" "$r_port" CLUSTER FAILOVER)" != OK ]]; then
    log "WARNING: CLUSTER FAILOVER refused by $r_ip:$r_port; stopping anyway"
    exit 0
fi
end=$(($(date +%s) + PRESTOP_TIMEOUT))
while (($(date +%s) < end)); do
    if [[ "$(role)" == slave ]]; then
        log "handover done: this node is now a replica of $r_ip:$r_port"
        exit 0
    fi
    sleep 0.5
done
log "WARNING: failover did not complete within ${PRESTOP_TIMEOUT}s; stopping anyway"
exit 0
