#!/usr/bin/env bash
# Shrinks each target's committed corpus to the inputs that keep its coverage
# (`cargo fuzz cmin`). Every CI run's fuzzing adds a few hundred inputs, which the tests
# replay; run this now and then and commit the result.
#
#   tools/fuzz/minimize.sh [TARGET...]     default: every target
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(validator stream wal_log manifest sstable_block sstable_file payload catalog hnsw_file)
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
declare -A max_len=([validator]=4096 [stream]=16384 [wal_log]=70000 [manifest]=4096 [sstable_block]=9000 [sstable_file]=40000 [payload]=4096 [catalog]=8192 [hnsw_file]=16384)
for target in "${targets[@]}"; do
  before=$(ls "fuzz/corpus/$target" | wc -l)
  cargo "${toolchain[@]}" fuzz cmin "$target" -O -- \
      -max_len="${max_len[$target]:-4096}" -timeout=10 >/dev/null 2>&1
  echo "${target}: ${before} -> $(ls "fuzz/corpus/$target" | wc -l) inputs"
done
# cmin keeps the inputs under their hashes: put the generated, named seeds back.
git checkout -- 'fuzz/corpus/*/seed-*' 2>/dev/null || true
