#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 20) and prints
# each target's executions. Stable Rust: cargo-fuzz needs unstable flags,
# which RUSTC_BOOTSTRAP=1 allows; no sanitizer (it needs nightly's std).
# A crash fails the script and leaves its input in fuzz/artifacts/.
# Overflow checks are on (fuzz/Cargo.toml's release profile, and
# -C overflow-checks=yes here): an unchecked size or offset is a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="${RUSTFLAGS:-} -C overflow-checks=yes"
targets=$(cargo fuzz list)
cargo fuzz build -s none -O
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  if ! cargo fuzz run -s none -O "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: target $t FAILED (input in fuzz/artifacts/$t)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz: $t: ${runs:-?} executions in ${secs}s, no crash"
  rm -f "$log"
done
