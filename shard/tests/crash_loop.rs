//! The shard's crash loop in CI: 12 SIGKILL cycles of a process upserting and deleting while
//! flushes, side-car index builds and compactions run; after each, every acknowledged write
//! is back, every segment's index agrees with its SSTable, and searches return live points
//! at their current distances. The extended run is the same binary with `--cycles 500`.

#[test]
fn sigkills_during_ingest_lose_no_acknowledged_write_and_leave_indexes_consistent() {
    vortex_test_support::run_crash_loop(env!("CARGO_BIN_EXE_vortex-shard-crashloop"), 12, 300);
}
