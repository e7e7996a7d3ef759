//! MANIFEST edits on arbitrary bytes; see `vortex_tools::fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::manifest(data);
});
