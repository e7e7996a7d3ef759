#!/usr/bin/env bash
# The dataplane on a many-core host: a dataset served by LEUS pinned LEUs while the client
# runs on other cores (issue #8's performance section; docs/BENCHMARKS.md). One run:
#   1. the dataset (`vortex-bench dataset`, 1 M × 128 by default), unless already there;
#   2. a fresh dataplane with LEUS LEUs pinned to cores 0..LEUS-1;
#   3. `serve-ann --merged` from CLIENT_CORES: the load over VBP from CONNECTIONS shard-aware
#      connections, the wait for the idle merge, then every ef for SECONDS each;
#   4. saturation: ef SATURATION_EF at 1, 4 and SATURATION_CONNECTIONS connections;
#   5. `floor`: VBP ping against the loopback echo, on the same cores.
# OUT (default bench-rigs/results/scale) gets the tables, serve.json and the logs.
# SERVE_FLAGS go to every serve-ann (e.g. `--i8` for a scalar-quantized collection).
# SEARCH is the dataplane's `[leu] search`: "whole" (default) or "fan-out". PRESET names the
# dataset (`vortex-bench dataset --preset`; default clustered-128-l2).
#
#   BIN=target/release LEUS=8 CLIENT_CORES=8-15 bench-rigs/scale.sh
set -euo pipefail

BIN=${BIN:-target/release}
LEUS=${LEUS:-8}
CLIENT_CORES=${CLIENT_CORES:-$LEUS-$(($(nproc) - 1))}
N=${N:-1000000}
QUERIES=${QUERIES:-1000}
DATA=${DATA:-bench-rigs/data}
WORK=${WORK:-/tmp/vortex-scale}
OUT=${OUT:-bench-rigs/results/scale}
CONNECTIONS=${CONNECTIONS:-16}
EFS=${EFS:-16,32,64,128}
SECONDS_PER_EF=${SECONDS_PER_EF:-5}
SATURATION_EF=${SATURATION_EF:-32}
SATURATION_CONNECTIONS=${SATURATION_CONNECTIONS:-64}
PORT=${PORT:-7790}
SERVE_FLAGS=${SERVE_FLAGS:-}
SEARCH=${SEARCH:-whole}
PRESET=${PRESET:-clustered-128-l2}

mkdir -p "$OUT" "$WORK"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/scale.log"; }
name=$PRESET
[ "$N" != 1000000 ] && name="$name-$N"

log "host: $(nproc) cores, $(uname -r); LEUs on 0-$((LEUS - 1)) (search $SEARCH), client on $CLIENT_CORES"
if [ ! -f "$DATA/$name/meta.json" ]; then
    log "generating $name"
    "$BIN/vortex-bench" dataset --preset "$PRESET" --n "$N" --queries "$QUERIES" \
        --out "$DATA" 2>&1 | tail -2 | tee -a "$OUT/scale.log"
fi

rm -rf "$WORK/data"
cores=$(seq -s, 0 $((LEUS - 1)))
cat >"$WORK/config.toml" <<EOF
[network]
port = $PORT
leu_port_base = $((PORT + 10))
[storage]
data_dir = "$WORK/data"
[leu]
count = $LEUS
cores = [$cores]
search = "$SEARCH"
[limits]
connections_max = 1024
EOF
"$BIN/vortex-dataplane" run --config "$WORK/config.toml" >"$OUT/dataplane.log" 2>&1 &
dataplane=$!
trap 'kill -INT $dataplane 2>/dev/null; wait $dataplane 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "vortex-dataplane ready" "$OUT/dataplane.log" && break
    sleep 0.1
done
log "$(grep "vortex-dataplane ready" "$OUT/dataplane.log" | cut -c1-160)"

client() { taskset -c "$CLIENT_CORES" "$BIN/vortex-bench" "$@"; }
log "serve-ann: load, merge, ef $EFS at $CONNECTIONS connections"
client serve-ann --address "127.0.0.1:$PORT" --data "$DATA/$name" --ef "$EFS" \
    --connections "$CONNECTIONS" --seconds "$SECONDS_PER_EF" --merged --out "$WORK/main" $SERVE_FLAGS \
    2>>"$OUT/scale.log" | tee "$OUT/serve.md"
cp "$WORK"/main/serve/"$name"/vortex*.json "$OUT/"
for connections in 1 4 "$SATURATION_CONNECTIONS"; do
    log "saturation: ef $SATURATION_EF at $connections connections"
    client serve-ann --address "127.0.0.1:$PORT" --data "$DATA/$name" --ef "$SATURATION_EF" \
        --connections "$connections" --seconds "$SECONDS_PER_EF" --out "$WORK/c$connections" $SERVE_FLAGS \
        2>>"$OUT/scale.log" | tail -1 | sed "s/^/connections $connections: /" | tee -a "$OUT/saturation.md"
done
log "floor"
client floor --address "127.0.0.1:$PORT" --seconds 2 --out "$WORK" 2>>"$OUT/scale.log" \
    | tee "$OUT/floor.md"
log "done"
