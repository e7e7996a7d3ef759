//! Running a child process as an ordinary user would.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs `command` as an ordinary user would: its `RLIMIT_MEMLOCK` (soft and hard) lowered to
/// `limit_bytes` and, when the test runs as root, without the capabilities exec would grant
/// (so `CAP_IPC_LOCK` cannot lift the limit).
pub fn as_ordinary_user(command: &mut Command, limit_bytes: u64) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (setrlimit, geteuid, prctl), touching no locks or allocations.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit_bytes as libc::rlim_t,
                rlim_max: limit_bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::geteuid() == 0 {
                // SECBIT_NOROOT | SECBIT_NOROOT_LOCKED: exec no longer grants root every
                // capability, so the child runs without CAP_IPC_LOCK.
                const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
                const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
                if libc::prctl(
                    libc::PR_SET_SECUREBITS,
                    SECBIT_NOROOT | SECBIT_NOROOT_LOCKED,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}
