#!/usr/bin/env bash
# probe.sh: liveness and readiness checks of one Redis Cluster node.
#
#   probe.sh liveness   the redis-server process answers PING. A node that is
#                       still loading its AOF (-LOADING) or whose cluster is
#                       down (-CLUSTERDOWN/-MASTERDOWN) is alive: restarting
#                       it would only make things worse.
#   probe.sh readiness  this node is part of a HEALTHY cluster:
#                         - PONG and not loading,
#                         - cluster_state:ok and all 16384 slots served,
#                         - a replica is linked to its master and not syncing.
#                       Readiness gates the StatefulSet rolling update (the
#                       next pod restarts only when the cluster healed and the
#                       restarted replica has synced) and the
#                       PodDisruptionBudget (no voluntary eviction while the
#                       cluster is degraded). It does NOT gate discovery: the
#                       headless Service publishes not-ready pods, so the
#                       bootstrap Job, the cluster-meet sidecars and slotmux
#                       can find pods before the cluster exists (no deadlock).
#
# The reason for a failure is printed; the kubelet shows it in pod events.
# Environment: REDIS_PORT (default 6379), CMD_TIMEOUT (default 3), REDIS_CLI.
# Password: redis-cli reads it from REDISCLI_AUTH when the cluster uses one.
# TLS: REDIS_TLS=yes and the certificate files (redis-tls.sh).
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
CMD_TIMEOUT="${CMD_TIMEOUT:-3}"
REDIS_CLI="${REDIS_CLI:-redis-cli}"
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
# shellcheck source-path=SCRIPTDIR
# shellcheck source=redis-tls.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-tls.sh"
redis_tls_init || exit 2

rcli() { timeout "$CMD_TIMEOUT" "$REDIS_CLI" "${REDIS_CLI_TLS[@]}" -h "$REDIS_HOST" -p "$REDIS_PORT" "$@" 2>&1 | tr -d '\r'; }
field() { awk -F: -v k="$1" '$1 == k { print $2; exit }'; }
fail() { echo "not ready: $*"; exit 1; }

mode="${1:-}"
case "$mode" in
    liveness)
        reply="$(rcli PING)" || { echo "no answer from redis on port $REDIS_PORT: $reply"; exit 1; }
        case "$reply" in
            # It answered: alive (NOAUTH/WRONGPASS = a password mix-up, which
            # a restart would not fix; readiness reports it instead).
            PONG | LOADING* | CLUSTERDOWN* | MASTERDOWN* | BUSY* | NOAUTH* | WRONGPASS*) exit 0 ;;
            *) echo "unexpected PING reply: $reply"; exit 1 ;;
        esac
        ;;
    readiness)
        reply="$(rcli PING)" || fail "no answer from redis on port $REDIS_PORT"
        [[ "$reply" == PONG ]] || fail "PING replied: $reply"
        info="$(rcli INFO)" || fail "INFO failed"
        [[ "$(field loading <<< "$info")" == 0 ]] || fail "still loading the data set"
        ci="$(rcli CLUSTER INFO)" || fail "CLUSTER INFO failed"
        state="$(field cluster_state <<< "$ci")"
        [[ "$state" == ok ]] || fail "cluster_state:$state (cluster not created yet, or degraded)"
        slots_ok="$(field cluster_slots_ok <<< "$ci")"
        [[ "$slots_ok" == 16384 ]] || fail "only ${slots_ok:-?} of 16384 slots are served"
        if [[ "$(field role <<< "$info")" == slave ]]; then
            [[ "$(field master_link_status <<< "$info")" == up ]] || fail "replica: link to master is down"
            [[ "$(field master_sync_in_progress <<< "$info")" == 0 ]] || fail "replica: full sync in progress"
        fi
        exit 0
        ;;
    *)
        echo "usage: $0 liveness|readiness" >&2
        exit 2
        ;;
esac
