#!/usr/bin/env bash
# cluster-meet.sh: sidecar that re-introduces Redis Cluster nodes to each other
# after their IPs changed.
#
# Why: entrypoint.sh fixes a restarted node's OWN address. Its peers keep the
# old IP of that node, and it keeps the old IPs of its peers (nodes.conf). When
# one pod restarts that heals by itself (it pings the others, they update its
# address). When SEVERAL or ALL pods restart with new IPs (node drain, zone
# outage, full cluster restart) every node only knows dead addresses: nobody
# can reach anybody and the cluster stays down forever. This loop, running
# next to each Redis, asks every peer over the client port who it is (node ID)
# and where it is now (its `myself` address) and sends CLUSTER MEET to the
# local node when the local view is stale. MEETing a known node at a new
# address makes Redis replace the old address (it does not add a node).
#
# Safety rules:
#   * acts only when the local node is already part of a cluster
#     (cluster_known_nodes > 1); a fresh node is left to the bootstrap Job,
#     so this never creates or merges clusters on its own;
#   * MEETs only peers whose node ID the local node already knows; a pod
#     whose volume was lost comes back with a NEW ID and is reported, not
#     joined (that needs an operator: see deploy/README.md, "Repairing").
#
# With TLS (REDIS_TLS=yes, see redis-tls.sh) it also keeps the local Redis's
# certificates current: redis-server reads its certificate files only at start
# or on CONFIG SET, so when the mounted Secret changes (Kubernetes swaps the
# files in place) the next pass sends CONFIG SET tls-cert-file/tls-key-file/
# tls-ca-cert-file with the same paths, which makes Redis re-read them (new
# connections then use them; open ones keep their session). It does so once
# at start too, and retries every pass until Redis accepts. The sidecar must
# mount the Secret at the same path as the redis container.
#
# Usage: cluster-meet.sh [run|once|check]
#   run    loop forever, one pass every MEET_INTERVAL seconds (default)
#   once   one pass; exit 0 when no MEET was needed, 10 when MEETs were
#          sent, 20 when the local redis did not answer (the certificate
#          reload, with TLS, does not change the exit code)
#   check  liveness check of a running loop via its heartbeat file
# Environment:
#   HEADLESS_SERVICE  DNS name that resolves to ALL Redis pods, not-ready ones
#                     included (publishNotReadyAddresses) (default redis-headless)
#   PEER_HOSTS        alternatively, an explicit list of peer hosts
#                     (space- or comma-separated); overrides HEADLESS_SERVICE
#   REDIS_PORT        client port of every node (default 6379)
#   MEET_INTERVAL     seconds between passes (default 5)
#   CMD_TIMEOUT       seconds per redis-cli call (default 3)
#   HEARTBEAT_FILE    default /tmp/cluster-meet.heartbeat
#   REDIS_CLI         redis-cli binary (default redis-cli)
# Password: redis-cli reads it from REDISCLI_AUTH when the cluster uses one.
# TLS: REDIS_TLS=yes and the certificate files (redis-tls.sh).
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
HEADLESS_SERVICE="${HEADLESS_SERVICE:-redis-headless}"
PEER_HOSTS="${PEER_HOSTS:-}"
MEET_INTERVAL="${MEET_INTERVAL:-5}"
CMD_TIMEOUT="${CMD_TIMEOUT:-3}"
HEARTBEAT_FILE="${HEARTBEAT_FILE:-/tmp/cluster-meet.heartbeat}"
REDIS_CLI="${REDIS_CLI:-redis-cli}"

log() { printf '%s cluster-meet[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${HOSTNAME:-?}" "$*" >&2; }

# shellcheck source-path=SCRIPTDIR
# shellcheck source=redis-tls.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-tls.sh"
redis_tls_init || { log "bad TLS settings"; exit 2; }

# rcli HOST CMD... : one redis-cli call with a hard time limit.
rcli() {
    local host="$1"; shift
    timeout "$CMD_TIMEOUT" "$REDIS_CLI" "${REDIS_CLI_TLS[@]}" -h "$host" -p "$REDIS_PORT" "$@" 2>/dev/null
}

# Prints "id ip cport flags" for each line of CLUSTER NODES output on stdin.
# Address forms: ip:port@cport and ip:port@cport,hostname; ip may be empty or IPv6.
parse_nodes() {
    awk 'NF >= 3 {
        addr = $2; c = index(addr, ","); if (c > 0) addr = substr(addr, 1, c - 1)
        at = index(addr, "@"); cport = (at > 0) ? substr(addr, at + 1) : ""
        hp = (at > 0) ? substr(addr, 1, at - 1) : addr
        colon = 0
        for (i = length(hp); i > 0; i--) if (substr(hp, i, 1) == ":") { colon = i; break }
        ip = (colon > 0) ? substr(hp, 1, colon - 1) : hp
        if (ip == "") ip = "-"
        if (cport == "") cport = "-"
        print $1, ip, cport, $3
    }'
}

# Addresses of all pods to look at, one per line.
peer_addresses() {
    local h
    if [[ -n "$PEER_HOSTS" ]]; then
        for h in ${PEER_HOSTS//,/ }; do printf '%s\n' "$h"; done
    else
        # All A/AAAA records of the headless Service = every pod, ready or not.
        getent ahosts "$HEADLESS_SERVICE" 2>/dev/null | awk '$2 == "STREAM" { print $1 }' | sort -u || true
    fi
}

declare -A warned=() # node IDs already reported as unknown (warn once, not every pass)
last_note=""
note() { # log a status line only when it changes (no log spam every pass)
    if [[ "$1" != "$last_note" ]]; then log "$1"; last_note="$1"; fi
}

# One reconciliation pass. Returns 0 if nothing had to be done, 10 if MEETs
# were sent, 20 if the local redis is not answering yet.
pass() {
    local info known nodes myid id ip flags peer pinfo p_id p_ip p_cport sent=0 checked=0
    declare -A known_ip=() known_flags=()

    if ! info="$(rcli 127.0.0.1 CLUSTER INFO)"; then
        note "local redis on port $REDIS_PORT not answering yet"
        return 20
    fi
    known="$(printf '%s\n' "$info" | tr -d '\r' | awk -F: '$1 == "cluster_known_nodes" { print $2 }')"
    if [[ -z "$known" || "$known" -le 1 ]]; then
        note "local node is not part of a cluster yet (cluster_known_nodes=${known:-?}); the bootstrap Job creates it"
        return 0
    fi
    nodes="$(rcli 127.0.0.1 CLUSTER NODES | tr -d '\r')" || { note "CLUSTER NODES failed locally"; return 0; }
    myid=""
    while read -r id ip _ flags; do
        known_ip[$id]="$ip"; known_flags[$id]="$flags"
        [[ ",$flags," == *,myself,* ]] && myid="$id"
    done < <(printf '%s\n' "$nodes" | parse_nodes)

    while read -r peer; do
        [[ -n "$peer" ]] || continue
        pinfo="$(rcli "$peer" CLUSTER NODES | tr -d '\r' | parse_nodes | awk '("," $4 ",") ~ /,myself,/')" || pinfo=""
        [[ -n "$pinfo" ]] || continue   # not up (yet): try again next pass
        read -r p_id p_ip p_cport _ <<< "$pinfo"
        [[ "$p_id" != "$myid" ]] || continue
        checked=$((checked + 1))
        if [[ -z "${known_ip[$p_id]+set}" ]]; then
            if [[ -z "${warned[$p_id]+set}" ]]; then
                log "WARNING: $peer is node $p_id which this node does not know (new pod, or volume replaced?); not joining it automatically (redis-cli --cluster add-node)"
                warned[$p_id]=1
            fi
            continue
        fi
        if [[ "$p_ip" == "-" ]]; then
            # The peer does not know its own IP (no announce-ip): use the one we reached it at.
            p_ip="$(getent ahosts "$peer" 2>/dev/null | awk 'NR == 1 { print $1 }')" || true
            [[ -n "$p_ip" ]] || continue
        fi
        [[ "$p_cport" != "-" ]] || p_cport=$((REDIS_PORT + 10000))
        if [[ "${known_ip[$p_id]}" != "$p_ip" || ",${known_flags[$p_id]}," == *,fail,* || ",${known_flags[$p_id]}," == *,noaddr,* ]]; then
            log "peer $p_id is at $p_ip (local view: ${known_ip[$p_id]} flags ${known_flags[$p_id]}): CLUSTER MEET $p_ip $REDIS_PORT $p_cport"
            if rcli 127.0.0.1 CLUSTER MEET "$p_ip" "$REDIS_PORT" "$p_cport" > /dev/null; then
                sent=$((sent + 1))
            else
                log "CLUSTER MEET $p_ip failed; retrying next pass"
            fi
        fi
    done < <(peer_addresses)
    if [[ "$sent" -gt 0 ]]; then
        last_note=""
        return 10
    fi
    note "in sync: $checked reachable peer(s) agree with the local view"
    return 0
}

heartbeat() { date +%s > "$HEARTBEAT_FILE" 2>/dev/null || true; }

# With TLS: make the local Redis re-read its certificate files when their
# content changed since it last did (and once at start). A checksum of the
# contents, not a timestamp: Kubernetes replaces the files by a symlink swap.
tls_loaded="" # checksum of the files the local Redis last (re)loaded
tls_last_note=""
tls_note() { # like note(), with its own memory (not interleaved with pass's)
    if [[ "$1" != "$tls_last_note" ]]; then log "$1"; tls_last_note="$1"; fi
}
tls_reload() {
    redis_tls_on || return 0
    local sum reply
    sum="$(cat "$REDIS_TLS_CERT_FILE" "$REDIS_TLS_KEY_FILE" "$REDIS_TLS_CA_CERT_FILE" 2>/dev/null | cksum)" || {
        tls_note "TLS: cannot read $REDIS_TLS_CERT_FILE, $REDIS_TLS_KEY_FILE or $REDIS_TLS_CA_CERT_FILE (Secret mounted?)"
        return 0
    }
    [[ "$sum" != "$tls_loaded" ]] || return 0
    reply="$(rcli 127.0.0.1 CONFIG SET tls-cert-file "$REDIS_TLS_CERT_FILE" tls-key-file "$REDIS_TLS_KEY_FILE" \
        tls-ca-cert-file "$REDIS_TLS_CA_CERT_FILE" | tr -d '\r')" || reply=""
    if [[ "$reply" == OK ]]; then
        if [[ -n "$tls_loaded" ]]; then
            log "TLS: the certificate files changed: the local Redis re-read them (new connections use them)"
        else
            log "TLS: the local Redis (re)loaded its certificate files"
        fi
        tls_loaded="$sum" tls_last_note=""
    elif [[ -n "$reply" ]]; then
        tls_note "TLS: the local Redis refused the certificate files (it keeps the previous ones; retrying every pass): $reply"
    else
        # Redis still starting, or files redis-cli cannot use either (e.g. a
        # key that does not match its certificate): Redis keeps what it has.
        tls_note "TLS: no answer from the local Redis with these certificate files yet (starting, or unusable files?); retrying every pass"
    fi
}

case "${1:-run}" in
    once)
        rc=0; pass || rc=$?
        tls_reload
        exit "$rc"
        ;;
    check)
        [[ -f "$HEARTBEAT_FILE" ]] || { echo "no heartbeat file $HEARTBEAT_FILE"; exit 1; }
        now="$(date +%s)"; hb="$(cat "$HEARTBEAT_FILE")"
        max=$((MEET_INTERVAL * 6 + 30))
        if [[ "$hb" =~ ^[0-9]+$ ]] && (( now - hb <= max )); then exit 0; fi
        echo "stale or invalid heartbeat '$hb' at $now (max age ${max}s)"; exit 1
        ;;
    run)
        sleeper=""
        trap 'log "terminating"; [[ -z "$sleeper" ]] || kill "$sleeper" 2>/dev/null || true; exit 0' TERM INT
        log "watching peers via ${PEER_HOSTS:-DNS name $HEADLESS_SERVICE} every ${MEET_INTERVAL}s"
        while true; do
            rc=0; pass || rc=$?
            tls_reload
            heartbeat
            # Right after a (re)start redis needs a moment: look again after
            # 1 s rather than a full interval, so a restarted cluster heals fast.
            delay="$MEET_INTERVAL"; [[ "$rc" -ne 20 ]] || delay=1
            # sleep in the background + wait: a TERM is handled at once.
            sleep "$delay" & sleeper=$!
            wait "$sleeper" || true
            sleeper=""
        done
        ;;
    *)
        echo "usage: $0 [run|once|check]" >&2; exit 2
        ;;
esac
