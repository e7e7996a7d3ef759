//! The crash loops in CI: 20 SIGKILL cycles of a process writing to the WAL on real files,
//! each restart checking that every acknowledged record is back, in order, with nothing
//! invented; and 20 of a process writing to the LSM store while flushes and compactions run.
//! The extended runs are the same binaries with `--cycles 500` (docs/STORAGE.md).

#[test]
fn twenty_sigkill_cycles_lose_no_acknowledged_record() {
    vortex_test_support::run_crash_loop(env!("CARGO_BIN_EXE_vortex-wal-crashloop"), 20, 200);
}

/// The store's crash loop in CI: 20 SIGKILL cycles of a process writing to the LSM store while
/// flushes and compactions run; after each, the store opens consistent and holds every
/// acknowledged write. Kills must have interrupted flushes or compactions, or the loop tested
/// less than it claims.
#[test]
fn twenty_sigkills_during_flushes_and_compactions_lose_no_acknowledged_write() {
    let stdout =
        vortex_test_support::run_crash_loop(env!("CARGO_BIN_EXE_vortex-store-crashloop"), 20, 300);
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("ok: 20 SIGKILL cycles"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let interrupted: u64 = summary
        .split("; ")
        .find_map(|part| part.strip_suffix(" kills interrupted a flush or compaction"))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        interrupted > 0,
        "no kill landed in a flush or compaction: {summary}"
    );
}
