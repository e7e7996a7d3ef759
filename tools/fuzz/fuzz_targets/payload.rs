//! The shard's payload decoder on arbitrary bytes; see `vortex_tools::fuzz::payload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::payload(data);
});
