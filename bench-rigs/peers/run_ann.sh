#!/usr/bin/env bash
# The whole ANN comparison on one dataset, in one run: our index (f32 walk, then i8 walk with
# f32 re-rank), then hnswlib, FAISS and USearch, then the report (markdown table + PNG plot).
#
#   bench-rigs/peers/run_ann.sh DATASET_DIR [EF_LIST]
#
# DATASET_DIR comes from `vortex-bench dataset` (base.fvecs, query.fvecs, groundtruth.ivecs,
# meta.json). Every engine builds with M = 16, ef_construction = 200 on 2 threads and searches
# on one thread, best of 3 timed passes per ef. Results: bench-rigs/results/<dataset>/.
# Run nothing else on the machine meanwhile: build times and QPS are wall-clock.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data=${1:?usage: run_ann.sh DATASET_DIR [EF_LIST]}
ef=${2:-10,16,24,32,48,64,128,256}
results=$root/bench-rigs/results
name=$(basename "$data")
python=$root/bench-rigs/.venv/bin/python

"$root/bench-rigs/peers/setup.sh"
(cd "$root" && cargo build --release -p vortex-bench)
bench=$root/target/release/vortex-bench

for quantization in none i8; do
    "$bench" ann --data "$data" --ef "$ef" --quantization "$quantization" --filter-percent 1 \
        --out "$results"
done
"$python" "$root/bench-rigs/peers/ann_peers.py" --data "$data" --engines hnswlib,faiss,usearch \
    --ef "$ef" --m 16 --ef-construction 200 --build-threads 2 --out "$results"
"$python" "$root/bench-rigs/peers/report.py" --results "$results/$name" \
    --out-md "$results/$name/report.md" --out-png "$results/$name/recall-qps.png" \
    --command "bench-rigs/peers/run_ann.sh $*"
