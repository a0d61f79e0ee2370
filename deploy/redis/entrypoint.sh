#!/usr/bin/env bash
# Start one Redis Cluster node so that it rejoins its cluster with a NEW IP.
#
# A pod that is restarted or rescheduled keeps its PersistentVolume (node ID,
# slots, epochs in nodes.conf) but gets a new IP. Redis would otherwise start
# believing it still has the old one. Before starting redis-server this script
# rewrites the address of the `myself` line of nodes.conf to $POD_IP, keeping
# the port, the cluster-bus port and the optional Redis 7 `,hostname` suffix:
#     <id> <ip>:<port>@<cport>[,<hostname>] myself,master ...
# and starts Redis with --cluster-announce-ip "$POD_IP" so every gossip packet
# carries the new address. Peers that still have the old IP learn the new one
# when this node pings them (single restart), or when cluster-meet.sh, the
# sidecar, re-MEETs them at their current IPs (several or all pods restarted).
#
# Environment (defaults are the container's; the netns simulation overrides):
#   POD_IP         required: this pod's IP (Downward API status.podIP)
#   HOSTNAME       pod name, e.g. redis-3 (set by Kubernetes)
#   REDIS_CONF     config file              (default /etc/redis/redis.conf)
#   DATA_DIR       the pod's volume         (default /data)
#   REDIS_PORT     client port              (default 6379; bus = port+10000)
#   REDIS_SERVER   redis-server binary      (default: redis-server from PATH)
#   CLUSTER_ANNOUNCE_HOSTNAME  optional stable DNS name announced to peers
#   REDIS_MAXMEMORY            optional, e.g. 384mb
#   REDIS_PASSWORD             optional: requirepass + masterauth (the other
#                              scripts then need REDISCLI_AUTH set to it)
#   REDIS_TLS                  optional, yes|no (default no): TLS only (see
#                              redis-tls.sh): port 0, tls-port REDIS_PORT,
#                              tls-cluster yes, tls-replication yes and the
#                              REDIS_TLS_CERT_FILE / _KEY_FILE / _CA_CERT_FILE
#   REDIS_TLS_AUTH_CLIENTS     with TLS: yes|optional|no (default yes: every
#                              client presents a certificate of the CA)
set -euo pipefail

log() { printf '%s entrypoint[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${HOSTNAME:-?}" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# shellcheck source-path=SCRIPTDIR
# shellcheck source=redis-tls.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-tls.sh"
redis_tls_init || die "bad TLS settings"

REDIS_CONF="${REDIS_CONF:-/etc/redis/redis.conf}"
DATA_DIR="${DATA_DIR:-/data}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
POD_IP="${POD_IP:-}"
HOSTNAME="${HOSTNAME:-$(hostname)}"

[[ -n "$POD_IP" ]] || die "POD_IP is not set. In Kubernetes set it from the Downward API (env: POD_IP, valueFrom.fieldRef.fieldPath: status.podIP)."
[[ "$POD_IP" =~ ^[0-9A-Fa-f.:]+$ ]] || die "POD_IP='$POD_IP' does not look like an IP address"
[[ "$REDIS_PORT" =~ ^[0-9]+$ ]] || die "REDIS_PORT='$REDIS_PORT' is not a number"
[[ -f "$REDIS_CONF" ]] || die "config file '$REDIS_CONF' not found"
[[ -d "$DATA_DIR" ]] || die "data directory '$DATA_DIR' does not exist (is the volume mounted?)"
[[ -w "$DATA_DIR" ]] || die "data directory '$DATA_DIR' is not writable by uid $(id -u) (fsGroup?)"
if redis_tls_on; then # checked before nodes.conf is touched
    auth_clients="${REDIS_TLS_AUTH_CLIENTS:-yes}"
    [[ "$auth_clients" =~ ^(yes|no|optional)$ ]] || die "REDIS_TLS_AUTH_CLIENTS='$auth_clients': expected yes, no or optional"
    for f in "$REDIS_TLS_CERT_FILE" "$REDIS_TLS_KEY_FILE" "$REDIS_TLS_CA_CERT_FILE"; do
        [[ -r "$f" ]] || die "REDIS_TLS=yes but '$f' is missing or not readable by uid $(id -u) (is the Secret redis-tls mounted? see deploy/README.md, TLS)"
    done
fi

# Guard against a volume that belongs to another pod (e.g. a hand-made PV bound
# to the wrong claim): two pods with one node ID would corrupt the cluster.
owner_file="$DATA_DIR/.slotmux-pod-name"
if [[ -f "$owner_file" ]]; then
    owner="$(cat "$owner_file")"
    [[ "$owner" == "$HOSTNAME" ]] || die "volume $DATA_DIR belongs to pod '$owner', not '$HOSTNAME'; refusing to start"
else
    printf '%s\n' "$HOSTNAME" > "$owner_file"
fi

nodes_conf="$DATA_DIR/nodes.conf"
if [[ -s "$nodes_conf" ]]; then
    tmp="$nodes_conf.tmp.$$"
    # Field 2 is ip:port@cport or ip:port@cport,hostname. The IP may be IPv6
    # (colons) or empty (node never learned it), so split at the LAST ':' before
    # the '@'. Only the line whose flags (field 3) contain `myself` is touched.
    if ! awk -v newip="$POD_IP" '
        BEGIN { done = 0; bad = 0 }
        {
            if (NF >= 3 && ("," $3 ",") ~ /,myself,/) {
                addr = $2; host = ""
                c = index(addr, ",")
                if (c > 0) { host = substr(addr, c); addr = substr(addr, 1, c - 1) }
                at = index(addr, "@")
                if (at == 0) { print "nodes.conf: no @cport in: " $0 > "/dev/stderr"; bad = 1; exit }
                hostport = substr(addr, 1, at - 1); cport = substr(addr, at)
                colon = 0
                for (i = length(hostport); i > 0; i--) if (substr(hostport, i, 1) == ":") { colon = i; break }
                if (colon == 0) { print "nodes.conf: no :port in: " $0 > "/dev/stderr"; bad = 1; exit }
                old = substr(hostport, 1, colon - 1)
                $2 = newip substr(hostport, colon) cport host
                printf "old=%s new=%s\n", old, newip > "/dev/stderr"
                done++
            }
            print
        }
        END {
            if (bad) exit 2
            if (done != 1) { print "nodes.conf: expected exactly one myself line, found " done > "/dev/stderr"; exit 3 }
        }
    ' "$nodes_conf" > "$tmp"; then
        rm -f "$tmp"
        die "could not rewrite the myself line of $nodes_conf (left unchanged)"
    fi
    cp -p "$nodes_conf" "$nodes_conf.bak"
    mv -f "$tmp" "$nodes_conf"
    log "rewrote myself address in $nodes_conf to $POD_IP (previous copy: nodes.conf.bak)"
else
    log "no $nodes_conf yet: starting as a new, empty node (the bootstrap Job creates the cluster)"
fi

args=(
    "$REDIS_CONF"
    --dir "$DATA_DIR"
)
if redis_tls_on; then
    # TLS only: no plain port; the client port, the cluster bus (port + 10000)
    # and replication all use TLS with the mounted certificate.
    args+=(
        --port 0
        --tls-port "$REDIS_PORT"
        --tls-cluster yes
        --tls-replication yes
        --tls-cert-file "$REDIS_TLS_CERT_FILE"
        --tls-key-file "$REDIS_TLS_KEY_FILE"
        --tls-ca-cert-file "$REDIS_TLS_CA_CERT_FILE"
        --tls-auth-clients "$auth_clients"
    )
    log "TLS only on port $REDIS_PORT (cluster bus and replication too; client certificates: $auth_clients)"
else
    args+=(--port "$REDIS_PORT")
fi
args+=(--cluster-announce-ip "$POD_IP")
if [[ -n "${CLUSTER_ANNOUNCE_HOSTNAME:-}" ]]; then
    args+=(--cluster-announce-hostname "$CLUSTER_ANNOUNCE_HOSTNAME")
fi
if [[ -n "${REDIS_MAXMEMORY:-}" ]]; then
    args+=(--maxmemory "$REDIS_MAXMEMORY")
fi
if [[ -n "${REDIS_PASSWORD:-}" ]]; then
    # Clients (slotmux, scripts) and replicas (masterauth) need the password.
    args+=(--requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD")
    log "password authentication enabled (requirepass/masterauth from REDIS_PASSWORD)"
fi

log "starting $REDIS_SERVER as $HOSTNAME ip=$POD_IP port=$REDIS_PORT dir=$DATA_DIR"
# exec: redis-server becomes PID 1 of the container and receives SIGTERM itself.
exec "$REDIS_SERVER" "${args[@]}"
