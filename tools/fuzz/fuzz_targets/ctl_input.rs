//! vortexctl's input parsers (.npy headers, JSON filters, payloads and JSON Lines points)
//! on arbitrary bytes; see `vortex_tools::fuzz::ctl_input`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::ctl_input(data);
});
