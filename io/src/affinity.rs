//! Pinning threads to CPUs, and reading back where the kernel lets them run.
//!
//! Verification reads `/proc/self/task/<tid>/status` rather than asking `sched_getaffinity`
//! in the thread itself: it is what an operator's tools (`ps`, `taskset -p`) see, so it
//! checks the pinning from outside the thread that did it.

use std::io;
use std::path::Path;
use vortex_config::CpuSet;

/// Pins the calling thread to `cpu` alone.
pub fn pin_current_thread(cpu: u32) -> io::Result<()> {
    let word_bits = u64::BITS as usize;
    let index = cpu as usize;
    let mut mask = vec![0u64; index / word_bits + 1];
    mask[index / word_bits] |= 1 << (index % word_bits);
    let bytes = mask.len() * std::mem::size_of::<u64>();
    // SAFETY: `mask` is a live, writable buffer of `bytes` bytes; pid 0 means this thread.
    let result =
        unsafe { libc::sched_setaffinity(0, bytes, mask.as_ptr().cast::<libc::cpu_set_t>()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets the calling thread run on every CPU the process may use (the main thread's set):
/// for threads that a pinned LEU spawns for background work (flushes, merges, the
/// scrubber), which would otherwise inherit the LEU's one CPU and compete with it there
/// while other cores sit idle.
pub fn unpin_current_thread() -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity fills it for the
    // process's main thread (pid = the process id), sched_setaffinity reads it for this
    // thread (0); both are given the set's size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut allowed) != 0
            || libc::sched_setaffinity(0, size, &allowed) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Gives the calling thread the lowest normal priority (nice 19): background work that must
/// yield to the LEUs whenever they want the CPU, yet still progresses under full load
/// (`SCHED_IDLE` would not run at all while every core is busy). On Linux the nice value is
/// per thread.
pub fn lower_current_thread_priority() -> io::Result<()> {
    set_current_thread_nice(19)
}

/// Sets the calling thread's nice value (0 normal, 19 lowest; a thread it spawns later
/// inherits it). Raising priority (below the current value) needs privileges; lowering
/// never does.
pub fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority with PRIO_PROCESS and who = 0 sets the calling thread's nice value;
    // it reads nothing through pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's id of the calling thread (what `/proc/self/task/` lists).
pub fn current_thread_id() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    tid as u32
}

/// The CPUs thread `tid` of this process may run on, from procfs.
pub fn allowed_cpus_of_thread(tid: u32) -> io::Result<CpuSet> {
    let path = format!("/proc/self/task/{tid}/status");
    let text = std::fs::read_to_string(Path::new(&path))?;
    parse_cpus_allowed(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} has no readable Cpus_allowed_list line"),
        )
    })
}

/// The thread's name from procfs (`comm`).
pub fn thread_name(tid: u32) -> io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))?;
    Ok(text.trim().to_owned())
}

/// Extracts `Cpus_allowed_list` from a procfs status text.
pub fn parse_cpus_allowed(status: &str) -> Option<CpuSet> {
    status.lines().find_map(|line| {
        let list = line.strip_prefix("Cpus_allowed_list:")?;
        CpuSet::parse_list(list).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_text() {
        let status =
            "Name:\tleu-0\nCpus_allowed:\t1\nCpus_allowed_list:\t0-2,5\nMems_allowed:\t1\n";
        assert_eq!(parse_cpus_allowed(status).unwrap().to_string(), "0-2,5");
        assert!(parse_cpus_allowed("Name:\tx\n").is_none());
        assert!(parse_cpus_allowed("Cpus_allowed_list:\tgarbage\n").is_none());
    }

    #[test]
    fn a_pinned_thread_reads_back_its_cpu() {
        let cpu = vortex_config::Topology::discover().unwrap().cpus[0].id;
        let allowed = std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            allowed_cpus_of_thread(current_thread_id()).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(allowed.as_slice(), &[cpu]);
    }

    #[test]
    fn pinning_to_a_missing_cpu_fails() {
        let error = std::thread::spawn(|| pin_current_thread(8000).unwrap_err())
            .join()
            .unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_status_text_never_panics(text in "(?s).{0,200}") {
            let _ = parse_cpus_allowed(&text);
        }
    }
}
