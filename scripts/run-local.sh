#!/usr/bin/env bash
# Starts a local 6-node Redis Cluster (ports 7000-7005) and slotmux in front of it on 6380.
# Ctrl-C stops slotmux and the cluster. Installs redis-server when missing (as root).
#   PORT=6380 CLUSTER_PORT=7000 scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PORT=${PORT:-6380}
CLUSTER_PORT=${CLUSTER_PORT:-7000}
DIR=${DIR:-$PWD/.slotmux-run}

ensure_redis
ensure_cargo
cargo build --release --bin slotmux
start_cluster "$DIR" "$CLUSTER_PORT"
trap 'stop_cluster "$DIR"' EXIT
echo "cluster up on 127.0.0.1:${CLUSTER_PORT}-$((CLUSTER_PORT + 5)); slotmux on 127.0.0.1:${PORT}"
echo "try: redis-cli -p ${PORT}   (Ctrl-C here stops everything)"
./target/release/slotmux --listen "127.0.0.1:${PORT}" \
  --seeds "127.0.0.1:${CLUSTER_PORT},127.0.0.1:$((CLUSTER_PORT + 1))" \
  --metrics-listen "127.0.0.1:${METRICS_PORT:-9898}"
