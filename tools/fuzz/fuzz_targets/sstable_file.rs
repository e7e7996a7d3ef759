//! Whole SSTable files on arbitrary bytes; see `vortex_tools::fuzz::sstable_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::sstable_file(data);
});
