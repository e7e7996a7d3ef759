#!/usr/bin/env bash
# Shrinks each target's committed corpus to the inputs that keep its coverage
# (`cargo fuzz cmin`). Every CI run's fuzzing adds a few hundred inputs, which the tests
# replay; run this now and then and commit the result.
#
#   tools/fuzz/minimize.sh [TARGET...]     default: every target
set -euo pipefail
cd "$(dirname "$0")/.."

source fuzz/common.sh
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
  before=$(ls "fuzz/corpus/$target" | wc -l)
  cargo "${toolchain[@]}" fuzz cmin "$target" -O -- \
      -max_len="${max_len[$target]:-4096}" -timeout=10 >/dev/null 2>&1
  echo "${target}: ${before} -> $(ls "fuzz/corpus/$target" | wc -l) inputs"
done
# cmin keeps the inputs under their hashes: put the generated, named seeds back.
git checkout -- 'fuzz/corpus/*/seed-*' 2>/dev/null || true
