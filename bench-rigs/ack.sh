#!/usr/bin/env bash
# Write acknowledgement latency and throughput, side by side for several builds of the
# dataplane (issue #22 item 6: the WAL on the LEU's ring). For each build in BINS, ROUNDS
# times in alternation: a fresh dataplane with LEUS LEUs on loopback, then `vortex-bench load`
# with only single-point upserts (closed loop) at each of CONNECTIONS for SECONDS; prints one
# line per run (QPS, p50, p99 in µs) and leaves the JSON under OUT.
#
#   BINS="before:/tmp/old after:target/release" bench-rigs/ack.sh
set -euo pipefail

BINS=${BINS:-current:target/release}
LEUS=${LEUS:-1}
CONNECTIONS=${CONNECTIONS:-1 8}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-2}
POINTS=${POINTS:-20000}
WORK=${WORK:-/tmp/vortex-ack}
OUT=${OUT:-bench-rigs/results/ack}
PORT=${PORT:-7830}
CLIENT=${CLIENT:-target/release/vortex-bench}

mkdir -p "$OUT" "$WORK"
for round in $(seq "$ROUNDS"); do
    for entry in $BINS; do
        label=${entry%%:*}
        bin=${entry#*:}
        rm -rf "$WORK/data"
        cat >"$WORK/config.toml" <<EOF
[network]
port = $PORT
leu_port_base = $((PORT + 10))
[storage]
data_dir = "$WORK/data"
[leu]
count = $LEUS
EOF
        "$bin/vortex-dataplane" run --config "$WORK/config.toml" >"$WORK/dataplane.log" 2>&1 &
        dataplane=$!
        for _ in $(seq 100); do
            grep -q "vortex-dataplane ready" "$WORK/dataplane.log" && break
            sleep 0.1
        done
        for connections in $CONNECTIONS; do
            dir="$OUT/$label-round$round"
            "$CLIENT" load --address "127.0.0.1:$PORT" --connections "$connections" \
                --seconds "$SECONDS_PER_RUN" --search-percent 0 --points "$POINTS" \
                --out "$dir" >/dev/null 2>"$WORK/load.log" || { cat "$WORK/load.log"; exit 1; }
            json=$(ls -t "$dir"/load/*.json | head -1)
            python3 - "$label" "$round" "$connections" "$json" <<'PY'
import json, sys
label, rnd, conns, path = sys.argv[1:]
r = json.load(open(path))
u = r["upsert"]
print(f"{label:>10} round {rnd} {conns:>3} conn: {r['achieved_qps']:>8.0f} upserts/s"
      f"  p50 {u['p50_us']:>7.1f} us  p99 {u['p99_us']:>7.1f} us  errors {r['errors']}  THROTTLED {r['throttled']}")
PY
        done
        kill -INT "$dataplane"
        wait "$dataplane" || true
    done
done
