#!/usr/bin/env bash
# Runs slotmux's whole test suite: formatting, lints, unit tests, integration tests against
# real Redis Clusters, Redis's own test suite through slotmux, and the deploy/ checks. Installs
# what is missing (as root: redis-server and openssl with apt-get, the Python redis client with pip).
#   scripts/test.sh                everything
#   QUICK=1 scripts/test.sh        skip the deploy/ network-namespace simulation
#   SKIP_FUZZ=1 scripts/test.sh    skip the bounded fuzz run (FUZZ_SECONDS per target, default 15)
#   SKIP_CONFORMANCE=1 scripts/test.sh   skip Redis's own test suite through slotmux
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_redis
ensure_openssl
ensure_cargo
# The benches' end-to-end allocation count needs a real redis-server: here it must not skip.
export SLOTMUX_REQUIRE_REDIS=1

# redis-py with its default settings (RESP3 via HELLO 3) is one of the clients we test.
if ! python3 -c 'import redis' >/dev/null 2>&1; then
  if command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q redis >/dev/null 2>&1 || echo "warning: pip install redis failed; the redis-py test will be skipped" >&2
  fi
fi
if python3 -c 'import redis' >/dev/null 2>&1; then
  export SLOTMUX_REQUIRE_PY=1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets 2>&1
# Redis's own test suite through slotmux (the files in scripts/conformance-ci.txt, against a
# release build): fails on any failure not listed in scripts/conformance-known-failures.txt.
if [ -z "${SKIP_CONFORMANCE:-}" ]; then
  echo "== scripts/conformance.sh (CI=1: Redis's own tests through slotmux)"
  cargo build --release --quiet --bin slotmux
  SLOTMUX_BIN="$PWD/target/release/slotmux" CI=1 scripts/conformance.sh
fi
# A bounded fuzz run of the byte scanners (cargo-fuzz on stable; installed when missing).
if [ -z "${SKIP_FUZZ:-}" ] && [ -x scripts/fuzz.sh ]; then
  echo "== scripts/fuzz.sh (FUZZ_SECONDS=${FUZZ_SECONDS:=15} per target)"
  FUZZ_SECONDS="$FUZZ_SECONDS" scripts/fuzz.sh
fi
if [ -x deploy/validate.sh ]; then
  echo "== deploy/validate.sh"
  deploy/validate.sh
fi
if [ -z "${QUICK:-}" ] && [ -x deploy/test/netns-sim.sh ]; then
  echo "== deploy/test/netns-sim.sh"
  cargo build --quiet --bin slotmux
  SLOTMUX_BIN="$PWD/target/debug/slotmux" deploy/test/netns-sim.sh
fi
echo "== all tests passed"
