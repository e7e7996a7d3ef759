# Shared by run.sh and minimize.sh (sourced from tools/): the targets, each target's largest
# input, and the toolchain (nightly when rustup has one, else stable with RUSTC_BOOTSTRAP=1:
# stable ships the sanitizer runtimes; cargo-fuzz only needs the -Z flags unlocked).
all_targets=(validator stream wal_log manifest sstable_block sstable_file payload catalog hnsw_file ctl_input)
declare -A max_len=([validator]=4096 [stream]=16384 [wal_log]=70000 [manifest]=4096 [sstable_block]=9000 [sstable_file]=40000 [payload]=4096 [catalog]=8192 [hnsw_file]=16384 [ctl_input]=4096)
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
