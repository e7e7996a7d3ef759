//! The LayoutValidator on arbitrary frames; see `vortex_tools::fuzz::validator`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::validator(data);
});
