//! How much freed memory the C allocator may keep (glibc's malloc, which Rust's `System`
//! allocator is on Linux).
//!
//! glibc adapts its thresholds to the program: each time a large block allocated with
//! `mmap` is freed, it raises the size from which it uses `mmap` (up to 32 MiB) and the free
//! space it keeps at the top of an arena before giving it back (up to 64 MiB). A node that
//! builds graphs allocates and frees many blocks of a few to tens of MiB on several threads,
//! so after its first builds each thread's arena kept up to 64 MiB it no longer used: about
//! 470 MiB of an `i8` node's 830 MiB of heap after loading 100,000 × 768 over 2 LEUs
//! (`malloc_stats`, docs/BENCHMARKS.md). Under `mlockall` that memory cannot even be
//! trimmed (`madvise` refuses locked pages). Fixed thresholds turn the adaptation off:
//! blocks from [`MMAP_FROM_BYTES`] are mapped on their own and unmapped when freed, and an
//! arena gives back free space above [`KEEP_AT_MOST_BYTES`] at its top.

/// Blocks from this size are mapped on their own (`M_MMAP_THRESHOLD`): a freed one goes
/// back to the system at once. Below it the arenas serve: a search's scratch, a request's
/// buffers.
pub const MMAP_FROM_BYTES: usize = 1 << 20;

/// Free space an arena keeps at its top before trimming it (`M_TRIM_THRESHOLD`).
pub const KEEP_AT_MOST_BYTES: usize = 8 << 20;

/// Fixes the allocator's thresholds (see the module documentation); call once, early (blocks
/// allocated before keep the old rules). False where the allocator is not glibc's or refused
/// a value.
pub fn bound_retention() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |parameter: libc::c_int, value: usize| {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: `mallopt` only sets the allocator's tunables, under its own lock, with
            // parameters glibc defines; no memory is touched.
            unsafe { libc::mallopt(parameter, value) == 1 }
        };
        set(libc::M_MMAP_THRESHOLD, MMAP_FROM_BYTES)
            && set(libc::M_TRIM_THRESHOLD, KEEP_AT_MOST_BYTES)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the thresholds fixed, a large block freed goes back to the system: the
    /// process's resident memory falls by its size (it would stay with glibc's adaptation,
    /// once an earlier free had raised the threshold above it).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_freed_leaves_the_resident_set() {
        assert!(bound_retention());
        let resident_kib = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|line| line.strip_prefix("RssAnon:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        // What raises glibc's adaptive threshold: a 24 MiB block mapped and freed.
        drop(std::hint::black_box(vec![1u8; 24 << 20]));
        let before = resident_kib();
        let block = std::hint::black_box(vec![1u8; 16 << 20]);
        let held = resident_kib();
        drop(block);
        let after = resident_kib();
        eprintln!("RssAnon: {before} kB, {held} kB holding 16 MiB, {after} kB after the free");
        assert!(held >= before + 15 * 1024, "the block was not resident");
        assert!(
            after + 15 * 1024 <= held,
            "16 MiB freed and still resident: {held} kB -> {after} kB"
        );
    }
}
