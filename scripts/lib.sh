#!/usr/bin/env bash
# Shared helpers for slotmux's scripts: installing what is missing, and a local Redis Cluster.
# Sourced, not run.

# Installs redis-server/redis-cli (Debian's redis-server 7.0 and redis-tools) when missing.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server and redis-tools with apt-get..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
    # Debian's package may start a system redis on 6379; slotmux's scripts do not need it.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop redis-server >/dev/null 2>&1 || true; fi
    pkill -f '^/usr/bin/redis-server 127.0.0.1:6379' >/dev/null 2>&1 || true
  else
    echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install -y redis-server redis-tools)" >&2
    return 1
  fi
}

# Installs openssl (the TLS tests make their certificates with it) when missing.
ensure_openssl() {
  if command -v openssl >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing openssl with apt-get..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "openssl is missing: install it (Debian/Ubuntu: sudo apt-get install -y openssl)" >&2
    return 1
  fi
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust from your distribution or rustup" >&2
    return 1
  fi
}

# start_cluster DIR BASE_PORT: six redis-server processes (ports BASE..BASE+5), formed into a
# cluster of 3 masters with one replica each, unless they already form one.
start_cluster() {
  local dir=$1 base=$2 i port
  mkdir -p "$dir"
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    if redis-cli -p "$port" ping >/dev/null 2>&1; then continue; fi
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
      --dir "$dir/$port" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000 --appendonly no --save '' \
      --logfile "$dir/$port/redis.log" --pidfile "$dir/$port/redis.pid"
  done
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    wait_for 50 redis-cli -p "$port" ping || { echo "node $port did not start" >&2; return 1; }
  done
  if [ "$(redis-cli -p "$base" cluster info | tr -d '\r' | awk -F: '/cluster_slots_assigned/{print $2}')" != "16384" ]; then
    local nodes=()
    for i in 0 1 2 3 4 5; do nodes+=("127.0.0.1:$((base + i))"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
      { cat "$dir/create.log" >&2; return 1; }
  fi
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    wait_for 100 sh -c "redis-cli -p $port cluster info | grep -q cluster_state:ok" ||
      { echo "cluster did not become ok on $port" >&2; return 1; }
  done
}

stop_cluster() {
  local dir=$1 pidfile
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
}

# wait_for TRIES CMD...: runs CMD every 0.1 s until it succeeds, at most TRIES times.
wait_for() {
  local tries=$1
  shift
  while [ "$tries" -gt 0 ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
    tries=$((tries - 1))
  done
  return 1
}
