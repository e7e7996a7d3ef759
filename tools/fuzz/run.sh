#!/usr/bin/env bash
# Fuzzes every parser (VBP frames and streams, WAL segments, MANIFEST edits, SSTable blocks
# and files, payloads, the catalog, HNSW side-car files, vortexctl's input) with cargo-fuzz (libFuzzer + AddressSanitizer).
#
#   tools/fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds each, every target
#
# Runs each target for SECONDS on the committed corpus (tools/fuzz/corpus/TARGET), which
# grows with what the fuzzer finds; a crash leaves its input in tools/fuzz/artifacts/TARGET
# and fails the script. Installs cargo-fuzz if missing. Toolchain: see common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
source fuzz/common.sh
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for target in "${targets[@]}"; do
  echo "==> fuzzing ${target} for ${seconds} s"
  log=$(mktemp)
  if ! cargo "${toolchain[@]}" fuzz run "$target" -O -- \
      -max_total_time="$seconds" -max_len="${max_len[$target]:-4096}" \
      -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target ${target} failed: see the input in tools/fuzz/artifacts/${target}/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
  grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
  rm -f "$log"
done
