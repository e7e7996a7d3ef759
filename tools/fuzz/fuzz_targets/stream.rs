//! The stream decoder on arbitrary byte streams cut at arbitrary places; see
//! `vortex_tools::fuzz::stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::stream(data);
});
