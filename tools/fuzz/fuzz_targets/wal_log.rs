//! The WAL's log reader and BOOT_REPLAY on arbitrary segment bytes; see
//! `vortex_tools::fuzz::wal_log`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::wal_log(data);
});
