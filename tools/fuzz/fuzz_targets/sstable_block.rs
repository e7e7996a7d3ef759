//! SSTable data blocks on arbitrary bytes; see `vortex_tools::fuzz::sstable_block`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vortex_tools::fuzz::sstable_block(data);
});
