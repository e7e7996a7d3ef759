//! The shard's catalog decoder on arbitrary bytes; see `vortex_tools::fuzz::catalog`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::catalog(data);
});
