//! The HNSW side-car index loader on arbitrary files; see `vortex_tools::fuzz::hnsw_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::hnsw_file(data);
});
