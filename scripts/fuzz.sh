#!/usr/bin/env bash
# Fuzzes slotmux's byte parsers with cargo-fuzz (libFuzzer); the targets are in fuzz/ (see
# fuzz/README.md). For each target: first every input in fuzz/regressions/<target>/ once, then
# fuzzing from the named seeds in fuzz/corpus/<target>/ for a bounded time. Exits non-zero if
# any target crashed (a panic or a failed assertion); the input is in fuzz/artifacts/<target>/.
#   scripts/fuzz.sh                       all targets, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh      5 minutes each
#   FUZZ_SECONDS=0 scripts/fuzz.sh        regressions and seeds only, no fuzzing
#   scripts/fuzz.sh reply_scanner         one target
# Installs cargo-fuzz (from crates.io) when missing. Runs on stable Rust: with `-s none` (no
# sanitizer) cargo-fuzz passes no `-Z` flag to rustc, so RUSTC_BOOTSTRAP is not needed.
# `-a` keeps debug assertions on, so integer overflow in the parsers is a crash too.
# New inputs libFuzzer finds go to fuzz/target/corpus/<target>/ (ignored by git, kept between
# runs), so the checked-in seed corpus stays as written by fuzz/seeds.py.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-25}"
FUZZ_NICE="${FUZZ_NICE:-10}"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
RSS_LIMIT_MB=2048
ALL_TARGETS=(request_scanner reply_scanner classify)

case "$FUZZ_SECONDS" in
  '' | *[!0-9]*)
    echo "FUZZ_SECONDS must be a whole number of seconds, not '$FUZZ_SECONDS'" >&2
    exit 2
    ;;
esac

targets=("${ALL_TARGETS[@]}")
if [ "$#" -gt 0 ]; then
  targets=("$@")
fi
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "unknown fuzz target '$t' (known: ${ALL_TARGETS[*]})" >&2
    exit 2
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust from your distribution or rustup" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io (takes a minute or two)"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
echo "== $(cargo fuzz --version), $(rustc --version)"

# Same flags for the build and every run, so `cargo fuzz run` finds the build up to date.
build_flags=(-s none -a)

echo "== cargo fuzz build ${build_flags[*]}"
start=$SECONDS
nice -n "$FUZZ_NICE" cargo fuzz build "${build_flags[@]}"
echo "   built in $((SECONDS - start)) s"

mkdir -p fuzz/target/logs
failed=()
for t in "${targets[@]}"; do
  regressions=()
  if [ -d "fuzz/regressions/$t" ]; then
    while IFS= read -r -d '' f; do
      regressions+=("$f")
    done < <(find "fuzz/regressions/$t" -type f -print0 | sort -z)
  fi
  if [ "${#regressions[@]}" -gt 0 ]; then
    echo "== $t: ${#regressions[@]} regression input(s)"
    if ! nice -n "$FUZZ_NICE" cargo fuzz run "${build_flags[@]}" "$t" "${regressions[@]}" -- \
      -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$FUZZ_TIMEOUT" >"fuzz/target/logs/$t-regressions.log" 2>&1; then
      echo "   FAILED: see fuzz/target/logs/$t-regressions.log"
      grep -E -A 8 'panicked at|ERROR: libFuzzer' "fuzz/target/logs/$t-regressions.log" | head -n 30 ||
        tail -n 30 "fuzz/target/logs/$t-regressions.log"
      grep -E '^Running: ' "fuzz/target/logs/$t-regressions.log" | tail -n 1 | sed 's/^/   last input: /' || true
      failed+=("$t (regressions)")
    fi
  fi

  corpus="fuzz/target/corpus/$t"
  mkdir -p "$corpus"
  if [ "$FUZZ_SECONDS" -eq 0 ]; then
    limit=(-runs=0)
    echo "== $t: seed corpus only"
  else
    limit=(-max_total_time="$FUZZ_SECONDS")
    echo "== $t: fuzzing for $FUZZ_SECONDS s"
  fi
  log="fuzz/target/logs/$t.log"
  if nice -n "$FUZZ_NICE" cargo fuzz run "${build_flags[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
    "${limit[@]}" -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$FUZZ_TIMEOUT" -print_final_stats=1 \
    >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed 's/^/   /' || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" | sed 's/^/   /' || true
  else
    echo "   CRASH or failure: see $log; the input is in fuzz/artifacts/$t/"
    grep -E -A 12 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -n 40 || tail -n 40 "$log"
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== FAILED: ${failed[*]}"
  exit 1
fi
echo "== all fuzz targets passed (${targets[*]})"
