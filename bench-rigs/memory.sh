#!/usr/bin/env bash
# Resident memory of a served collection (issue #22 item 5): a fresh dataplane with LEUS
# LEUs, the dataset loaded over VBP and merged (`serve-ann --merged`), searched at EF for
# SECONDS, then the process's memory from /proc: the resident set split into anonymous
# memory (heap: graphs, codes, MemTables, buffers) and file pages (mapped tables and
# side-car files a search touched), the proportional set, which counts a file page mapped
# twice once, and the anonymous memory on transparent huge pages. Printed as one Markdown
# row (kB, then bytes per vector): name, flags, LEUs, RSS before the load, RSS, RssAnon,
# RssFile, Pss_Anon, Pss_File, AnonHugePages, RSS growth per vector, RssAnon growth per
# vector, PSS growth per vector.
#
# LOCK is `[memory] lock` (default "try", which locks every page the process maps where
# nothing bounds locking: root, or CAP_IPC_LOCK).
#
#   SERVE_FLAGS=--i8 NAME=clustered-768-cosine bench-rigs/memory.sh
set -euo pipefail

BIN=${BIN:-target/release}
LEUS=${LEUS:-2}
DATA=${DATA:-bench-rigs/data}
NAME=${NAME:-clustered-128-l2-100000}
WORK=${WORK:-/tmp/vortex-memory}
OUT=${OUT:-bench-rigs/results/memory}
PORT=${PORT:-7890}
EF=${EF:-32}
SECONDS_SEARCHING=${SECONDS_SEARCHING:-5}
SERVE_FLAGS=${SERVE_FLAGS:-}
LOCK=${LOCK:-try}

mkdir -p "$OUT" "$WORK"
rm -rf "$WORK/data"
cat >"$WORK/config.toml" <<EOF
[network]
port = $PORT
leu_port_base = $((PORT + 10))
[storage]
data_dir = "$WORK/data"
[leu]
count = $LEUS
[memory]
lock = "$LOCK"
EOF
"$BIN/vortex-dataplane" run --config "$WORK/config.toml" >"$OUT/dataplane.log" 2>&1 &
dataplane=$!
trap 'kill -INT $dataplane 2>/dev/null; wait $dataplane 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "vortex-dataplane ready" "$OUT/dataplane.log" && break
    sleep 0.1
done

# kB fields of /proc/PID/status and smaps_rollup.
field() { awk -v f="$1:" '$1 == f { print $2 }' "$2"; }
snapshot() {
    local status=/proc/$dataplane/status rollup=/proc/$dataplane/smaps_rollup
    echo "$(field VmRSS $status) $(field RssAnon $status) $(field RssFile $status)" \
        "$(field Pss_Anon $rollup) $(field Pss_File $rollup) $(field AnonHugePages $rollup)"
}
read -r rss0 anon0 file0 _ _ _ <<<"$(snapshot)"

"$BIN/vortex-bench" serve-ann --address "127.0.0.1:$PORT" --data "$DATA/$NAME" --ef "$EF" \
    --seconds "$SECONDS_SEARCHING" --merged --out "$WORK/serve" $SERVE_FLAGS \
    >"$OUT/serve.md" 2>"$OUT/serve.log"
read -r rss anon file pss_anon pss_file huge <<<"$(snapshot)"

rows=$(awk -F'[ ,:]+' '/"n"/ { print $3; exit }' "$DATA/$NAME/meta.json")
per() { echo $(( ($1) * 1024 / rows )); }
flags="${SERVE_FLAGS:-f32} lock=$LOCK"
echo "| $NAME | $flags | $LEUS | $rss0 | $rss | $anon | $file | $pss_anon | $pss_file | $huge | $(per "$rss - rss0") | $(per "$anon - anon0") | $(per "$pss_anon + pss_file - anon0 - file0") |" \
    | tee -a "$OUT/memory.md"
