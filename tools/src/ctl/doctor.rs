//! `vortexctl doctor`: checks the host against the appliance config and says, for each
//! check, pass / warn / fail and the fix. What is observed ([`Host`], read from `/proc`,
//! `/sys`, a probe file and a test ring) is kept apart from the judgement
//! ([`evaluate`]), so the rules are tested on made-up hosts.

use serde::Serialize;
use vortex_config::{
    ApplianceConfig, BlockDevice, DirectIoAlignment, MemoryLockPolicy, NetworkBackend,
    ThreadMapping,
};
use vortex_io::{MemlockLimit, RingConfig, RingDriver, RingSetup, SetupFlag};

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Pass,
    /// Works, but slower or less predictable than it could be.
    Warn,
    /// The appliance will not start, or not as configured.
    Fail,
}

impl Verdict {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do, when not a pass.
    pub fix: Option<String>,
}

/// What the host looks like.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// A ring set up as the config asks, or why it could not be.
    pub ring: Result<RingSetup, String>,
    /// The soft `RLIMIT_MEMLOCK`.
    pub memlock: MemlockLimit,
    /// Whether this process has `CAP_IPC_LOCK` (root does): the limit does not bind it.
    pub ipc_lock: bool,
    /// Huge pages reserved (`HugePages_Total`), if readable.
    pub hugepages: Option<u64>,
    /// Each LEU's CPU and whether the kernel isolates it.
    pub leu_cpus: Vec<(u32, bool)>,
    /// Why the config's LEU plan does not fit this machine, if it does not.
    pub mapping_error: Option<String>,
    /// The data directory and its Direct I/O alignment, or why it could not be probed.
    pub direct_io: (String, Result<DirectIoAlignment, String>),
    /// `/sys/kernel/mm/transparent_hugepage/enabled`'s chosen mode, if present.
    pub thp: Option<String>,
    /// Each LEU CPU's frequency governor, where cpufreq is exposed.
    pub governors: Vec<(u32, Option<String>)>,
    /// Online CPUs on this machine.
    pub cpus_online: usize,
    /// The PID of the process that holds the data directory's lock now (`Some(0)`: held,
    /// PID unknown), or why that could not be read.
    pub data_dir_holder: Result<Option<u32>, String>,
    /// The configured ports that cannot be bound now, with the error.
    pub ports_taken: Vec<(std::net::SocketAddr, String)>,
}

/// The directory to probe for Direct I/O: `data_dir`, or its nearest existing ancestor
/// while it does not exist yet (doctor creates nothing), and how to name it.
fn probe_target(data_dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let mut dir = data_dir.to_path_buf();
    if dir.is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            dir = cwd.join(dir);
        }
    }
    let mut probe = dir.as_path();
    while !probe.is_dir() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let name = if probe == dir {
        data_dir.display().to_string()
    } else {
        format!(
            "{} (not created yet; probed {})",
            data_dir.display(),
            probe.display()
        )
    };
    (probe.to_path_buf(), name)
}

/// Reads the host. `mapping` is the config's LEU plan, or why it does not fit.
pub fn observe(
    config: &ApplianceConfig,
    mapping: Result<&ThreadMapping, String>,
    data_dir: &std::path::Path,
    cpus_online: usize,
) -> Host {
    let ports = configured_ports(config, mapping.as_ref().map_or(1, |m| m.leus.len().max(1)));
    let (mapping, mapping_error) = match mapping {
        Ok(mapping) => (mapping.leus.clone(), None),
        Err(error) => (Vec::new(), Some(error)),
    };
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let ring = RingDriver::<()>::new(&RingConfig::from_config(&config.io_uring))
        .map(|ring| ring.setup().clone())
        .map_err(|e| e.to_string());
    let hugepages = read("/proc/meminfo").and_then(|meminfo| {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix("HugePages_Total:"))
            .and_then(|n| n.trim().parse().ok())
    });
    let (probe_dir, dir_name) = probe_target(data_dir);
    let direct_io = BlockDevice::for_path(&probe_dir)
        .and_then(|device| DirectIoAlignment::probe(&probe_dir, device.as_ref()))
        .map_err(|e| e.to_string());
    let thp = read("/sys/kernel/mm/transparent_hugepage/enabled").and_then(|modes| {
        modes
            .split_whitespace()
            .find(|mode| mode.starts_with('['))
            .map(|mode| mode.trim_matches(['[', ']']).to_owned())
    });
    Host {
        kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".to_owned()),
        ring,
        memlock: MemlockLimit::current(),
        ipc_lock: vortex_io::memlock::has_ipc_lock(),
        cpus_online,
        data_dir_holder: if data_dir.is_dir() {
            vortex_storage::DirLock::holder(data_dir).map_err(|e| e.to_string())
        } else {
            Ok(None)
        },
        ports_taken: ports
            .into_iter()
            .filter_map(|address| {
                // A plain bind (std sets SO_REUSEADDR) fails while anything listens there,
                // as the dataplane's claim on its shared port does.
                std::net::TcpListener::bind(address)
                    .err()
                    .map(|error| (address, error.to_string()))
            })
            .collect(),
        hugepages,
        leu_cpus: mapping.iter().map(|l| (l.cpu, l.isolated)).collect(),
        mapping_error,
        direct_io: (dir_name, direct_io),
        thp,
        governors: mapping
            .iter()
            .map(|l| {
                let path = format!(
                    "/sys/devices/system/cpu/cpu{}/cpufreq/scaling_governor",
                    l.cpu
                );
                (l.cpu, read(&path))
            })
            .collect(),
    }
}

/// The ports a config listens on: the shared one, then one per LEU.
fn configured_ports(config: &ApplianceConfig, leus: usize) -> Vec<std::net::SocketAddr> {
    let host = config.network.listen_address;
    std::iter::once(config.network.port)
        .chain(
            (0..leus).filter_map(|leu| {
                u16::try_from(usize::from(config.network.leu_port_base) + leu).ok()
            }),
        )
        .map(|port| std::net::SocketAddr::new(host, port))
        .collect()
}

/// `major.minor` of a kernel release string.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Memory an appliance of `leus` LEUs locks at least: each LEU's receive pool (64 MiB)
/// and ring, plus the process (a rough floor; mapped segments come on top).
pub fn memlock_needed(leus: usize) -> u64 {
    (leus as u64) * (80 << 20) + (256 << 20)
}

fn cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Judges `host` against `config`.
pub fn evaluate(host: &Host, config: &ApplianceConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name, verdict, detail: String, fix: Option<String>| {
        checks.push(Check {
            name,
            verdict,
            detail,
            fix,
        })
    };

    match &host.mapping_error {
        Some(error) => check(
            "LEU mapping",
            Verdict::Fail,
            error.clone(),
            Some("set [leu] count or cores to fit this machine (docs/CONFIG.md)".to_owned()),
        ),
        None => check(
            "LEU mapping",
            Verdict::Pass,
            format!(
                "{} LEU(s) on CPU(s) {}",
                host.leu_cpus.len(),
                cpu_list(&host.leu_cpus.iter().map(|(c, _)| *c).collect::<Vec<_>>())
            ),
            None,
        ),
    }

    match kernel_version(&host.kernel) {
        None => check(
            "kernel",
            Verdict::Warn,
            format!("cannot read the version of `{}`", host.kernel),
            Some("run on Linux 6.1 or later".to_owned()),
        ),
        Some(v) if v < (5, 19) => check(
            "kernel",
            Verdict::Fail,
            format!(
                "{}: serving needs 5.19 (multishot accept; timed waits need 5.11)",
                host.kernel
            ),
            Some("upgrade to Linux 6.1 or later (INSTALL.md, Supported kernels)".to_owned()),
        ),
        Some(v) if v < (6, 1) => check(
            "kernel",
            Verdict::Warn,
            format!(
                "{}: runs, with fallbacks (multishot receive and zero-copy send need 6.0, DEFER_TASKRUN 6.1)",
                host.kernel
            ),
            Some("upgrade to Linux 6.1 or later for every io_uring feature in use".to_owned()),
        ),
        Some(_) => check(
            "kernel",
            Verdict::Pass,
            format!("{}: every io_uring feature in use is there", host.kernel),
            None,
        ),
    }

    match &host.ring {
        Err(error) => check(
            "io_uring",
            Verdict::Fail,
            format!("cannot set up a ring: {error}"),
            Some("io_uring may be disabled (sysctl kernel.io_uring_disabled = 0 enables it) or blocked by seccomp in a container".to_owned()),
        ),
        Ok(setup) => {
            let accepted: Vec<&str> = setup.accepted.iter().map(|f| f.name()).collect();
            let refused: Vec<String> = setup
                .refused
                .iter()
                .map(|(flag, why)| format!("{} ({why})", flag.name()))
                .collect();
            let missing_core = !setup.uses(SetupFlag::SingleIssuer) || !setup.feature_ext_arg;
            check(
                "io_uring",
                if missing_core { Verdict::Warn } else { Verdict::Pass },
                format!(
                    "{} SQ / {} CQ entries; flags {}{}",
                    setup.sq_entries,
                    setup.cq_entries,
                    if accepted.is_empty() { "none".to_owned() } else { accepted.join(" ") },
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!("; not in use: {}", refused.join(", "))
                    }
                ),
                missing_core.then(|| "a newer kernel (6.1+) gives SINGLE_ISSUER and DEFER_TASKRUN".to_owned()),
            );
        }
    }

    let needed = memlock_needed(host.leu_cpus.len().max(1));
    let enough = host.ipc_lock
        || match host.memlock {
            MemlockLimit::Unlimited => true,
            MemlockLimit::Bytes(bytes) => bytes >= needed,
            MemlockLimit::Unknown => false,
        };
    let policy = match config.memory.lock {
        MemoryLockPolicy::Required => "required",
        MemoryLockPolicy::Try => "try",
        MemoryLockPolicy::Off => "off",
    };
    let raise = "raise it: LimitMEMLOCK=infinity in the systemd unit (deploy/systemd), or `ulimit -l unlimited` before starting, or grant CAP_IPC_LOCK".to_owned();
    // `required` refuses any finite limit without CAP_IPC_LOCK (locking every future
    // mapping would fail the process once it outgrew the limit), however large.
    let unbounded = host.ipc_lock || host.memlock == MemlockLimit::Unlimited;
    let (verdict, fix) = match config.memory.lock {
        MemoryLockPolicy::Off => (Verdict::Pass, None),
        MemoryLockPolicy::Try if enough => (Verdict::Pass, None),
        MemoryLockPolicy::Try => (Verdict::Warn, Some(raise)),
        MemoryLockPolicy::Required if unbounded => (Verdict::Pass, None),
        MemoryLockPolicy::Required => (Verdict::Fail, Some(raise)),
    };
    check(
        "memlock",
        verdict,
        format!(
            "RLIMIT_MEMLOCK {}{} (memory.lock = \"{policy}\"; at least {} MiB wanted for {} LEU(s))",
            host.memlock,
            if host.ipc_lock { ", not binding: CAP_IPC_LOCK" } else { "" },
            needed >> 20,
            host.leu_cpus.len()
        ),
        fix,
    );

    let dpdk = config.network.backend == NetworkBackend::Dpdk;
    match host.hugepages {
        Some(0) | None if dpdk => check(
            "hugepages",
            Verdict::Fail,
            "none reserved, and the DPDK backend needs them".to_owned(),
            Some(
                "reserve them: hugepagesz=2M hugepages=1024 on the kernel command line".to_owned(),
            ),
        ),
        Some(pages) => check(
            "hugepages",
            Verdict::Pass,
            format!("{pages} reserved; the io_uring backend does not need them"),
            None,
        ),
        None => check(
            "hugepages",
            Verdict::Pass,
            "not reported; the io_uring backend does not need them".to_owned(),
            None,
        ),
    }

    let shared: Vec<u32> = host
        .leu_cpus
        .iter()
        .filter(|(_, isolated)| !isolated)
        .map(|(cpu, _)| *cpu)
        .collect();
    if shared.is_empty() {
        check(
            "isolated cores",
            Verdict::Pass,
            format!(
                "every LEU CPU is isolated ({})",
                cpu_list(&host.leu_cpus.iter().map(|(c, _)| *c).collect::<Vec<_>>())
            ),
            None,
        );
    } else if host.leu_cpus.len() >= host.cpus_online {
        // Isolating every CPU would leave the kernel, the clients and everything else no
        // CPU to run on: never suggest it.
        check(
            "isolated cores",
            Verdict::Warn,
            format!(
                "the LEUs use every CPU of this machine ({}), so none can be isolated: the \
                 scheduler runs other work beside them",
                host.cpus_online
            ),
            Some(
                "fine for development; for serving, use a machine with three or more cores, \
                 where [leu] count = \"auto\" leaves CPU 0's core to the system, and isolate \
                 the LEU CPUs (INSTALL.md)"
                    .to_owned(),
            ),
        );
    } else {
        let list = cpu_list(&shared);
        check(
            "isolated cores",
            Verdict::Warn,
            format!("LEU CPU(s) {list} are not isolated: the scheduler runs other work there"),
            Some(format!(
                "isolcpus=managed_irq,domain,{list} nohz_full={list} rcu_nocbs={list} on the kernel command line (INSTALL.md)"
            )),
        );
    }

    let (dir, direct_io) = &host.direct_io;
    match direct_io {
        Ok(alignment) if alignment.supported() => check(
            "direct I/O",
            Verdict::Pass,
            format!(
                "{dir}: O_DIRECT with {}-byte buffers and {}-byte offsets",
                alignment.memory_bytes, alignment.offset_bytes
            ),
            None,
        ),
        Ok(_) => check(
            "direct I/O",
            Verdict::Warn,
            format!("{dir}: the filesystem refuses O_DIRECT (tmpfs?): the WAL goes through the page cache"),
            Some("put [storage] data_dir on ext4 or XFS on a local NVMe device".to_owned()),
        ),
        Err(error) => check(
            "direct I/O",
            Verdict::Fail,
            format!("{dir}: cannot probe: {error}"),
            Some("make [storage] data_dir a writable directory".to_owned()),
        ),
    }

    match &host.data_dir_holder {
        Ok(None) => check(
            "data directory",
            Verdict::Pass,
            format!("{dir}: no process holds it"),
            None,
        ),
        Ok(Some(pid)) => {
            check(
                "data directory",
                Verdict::Fail,
                format!(
                "{dir}: held by {} (a dataplane serving it, or a tool): a second one is refused",
                if *pid == 0 { "another process".to_owned() } else { format!("process {pid}") }
            ),
                Some(
                    "stop that process first, or set [storage] data_dir to another directory"
                        .to_owned(),
                ),
            )
        }
        Err(error) => check(
            "data directory",
            Verdict::Fail,
            format!("{dir}: cannot read its lock: {error}"),
            Some("make [storage] data_dir a directory this user can write".to_owned()),
        ),
    }

    if host.ports_taken.is_empty() {
        check(
            "ports",
            Verdict::Pass,
            format!(
                "{}:{} and the LEU ports from {} are free",
                config.network.listen_address, config.network.port, config.network.leu_port_base
            ),
            None,
        );
    } else {
        let taken: Vec<String> = host
            .ports_taken
            .iter()
            .map(|(address, error)| format!("{address} ({error})"))
            .collect();
        check(
            "ports",
            Verdict::Fail,
            format!("cannot be bound: {}: the dataplane would not start", taken.join(", ")),
            Some("stop what listens there (another dataplane?), or change [network] port and leu_port_base (and listen_address, if this host does not have it)".to_owned()),
        );
    }

    match host.thp.as_deref() {
        Some("always") => check(
            "transparent huge pages",
            Verdict::Warn,
            "always: khugepaged compaction can stall an LEU for milliseconds".to_owned(),
            Some("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or transparent_hugepage=madvise on the kernel command line)".to_owned()),
        ),
        Some(mode) => check(
            "transparent huge pages",
            Verdict::Pass,
            mode.to_owned(),
            None,
        ),
        None => check(
            "transparent huge pages",
            Verdict::Pass,
            "not available".to_owned(),
            None,
        ),
    }

    let slow: Vec<u32> = host
        .governors
        .iter()
        .filter(|(_, governor)| governor.as_deref().is_some_and(|g| g != "performance"))
        .map(|(cpu, _)| *cpu)
        .collect();
    if host.governors.iter().all(|(_, g)| g.is_none()) {
        check(
            "CPU frequency governor",
            Verdict::Pass,
            "cpufreq not exposed (a VM, or the firmware decides)".to_owned(),
            None,
        );
    } else if slow.is_empty() {
        check(
            "CPU frequency governor",
            Verdict::Pass,
            "performance on every LEU CPU".to_owned(),
            None,
        );
    } else {
        let list = cpu_list(&slow);
        check(
            "CPU frequency governor",
            Verdict::Warn,
            format!("LEU CPU(s) {list} are not on `performance`: clock ramps add latency"),
            Some(format!("cpupower -c {list} frequency-set -g performance")),
        );
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_host() -> Host {
        Host {
            kernel: "6.18.4-generic".into(),
            ring: Ok(RingSetup {
                accepted: vec![SetupFlag::SingleIssuer, SetupFlag::DeferTaskrun],
                refused: Vec::new(),
                sq_entries: 256,
                cq_entries: 512,
                inflight_max: 256,
                feature_nodrop: true,
                feature_ext_arg: true,
            }),
            memlock: MemlockLimit::Unlimited,
            ipc_lock: false,
            hugepages: Some(0),
            leu_cpus: vec![(2, true), (3, true)],
            mapping_error: None,
            direct_io: (
                "/data".into(),
                Ok(DirectIoAlignment {
                    memory_bytes: 512,
                    offset_bytes: 4096,
                    source: vortex_config::DirectIoSource::Statx,
                }),
            ),
            thp: Some("madvise".into()),
            governors: vec![
                (2, Some("performance".into())),
                (3, Some("performance".into())),
            ],
            cpus_online: 8,
            data_dir_holder: Ok(None),
            ports_taken: Vec::new(),
        }
    }

    fn verdict(checks: &[Check], name: &str) -> (Verdict, Option<String>) {
        let check = checks.iter().find(|c| c.name == name).unwrap();
        (check.verdict, check.fix.clone())
    }

    #[test]
    fn a_well_set_host_passes_everything() {
        let checks = evaluate(&good_host(), &ApplianceConfig::default());
        assert_eq!(checks.len(), 11);
        for check in &checks {
            assert_eq!(check.verdict, Verdict::Pass, "{check:?}");
            assert!(check.fix.is_none());
        }
    }

    #[test]
    fn each_problem_is_named_with_its_fix() {
        let config = ApplianceConfig::default();
        let mut host = good_host();
        host.kernel = "5.10.0".into();
        host.leu_cpus = vec![(2, true), (3, false)];
        host.thp = Some("always".into());
        host.governors[1].1 = Some("powersave".into());
        host.memlock = MemlockLimit::Bytes(64 << 10);
        host.ring = Err("Operation not permitted".into());
        let checks = evaluate(&host, &config);
        assert_eq!(verdict(&checks, "kernel").0, Verdict::Fail);
        assert_eq!(verdict(&checks, "io_uring").0, Verdict::Fail);
        let (isolated, fix) = verdict(&checks, "isolated cores");
        assert_eq!(isolated, Verdict::Warn);
        assert!(fix.unwrap().contains("isolcpus=managed_irq,domain,3"));
        assert_eq!(verdict(&checks, "transparent huge pages").0, Verdict::Warn);
        let (governor, fix) = verdict(&checks, "CPU frequency governor");
        assert_eq!(governor, Verdict::Warn);
        assert!(fix.unwrap().contains("-c 3 "));
        assert_eq!(
            verdict(&checks, "memlock").0,
            Verdict::Warn,
            "lock = try warns"
        );
        let mut required = config.clone();
        required.memory.lock = MemoryLockPolicy::Required;
        assert_eq!(
            verdict(&evaluate(&host, &required), "memlock").0,
            Verdict::Fail
        );
        host.memlock = MemlockLimit::Bytes(64 << 30);
        assert_eq!(
            verdict(&evaluate(&host, &required), "memlock").0,
            Verdict::Fail,
            "required refuses any finite limit"
        );
        assert_eq!(
            verdict(&evaluate(&host, &config), "memlock").0,
            Verdict::Pass
        );
        host.ipc_lock = true;
        assert_eq!(
            verdict(&evaluate(&host, &required), "memlock").0,
            Verdict::Pass,
            "root"
        );
        host.kernel = "5.15.0-91-generic".into();
        assert_eq!(
            verdict(&evaluate(&host, &config), "kernel").0,
            Verdict::Fail
        );
        host.kernel = "6.0.9".into();
        assert_eq!(
            verdict(&evaluate(&host, &config), "kernel").0,
            Verdict::Warn
        );
    }

    /// Issue #21: on a two-CPU machine whose two LEUs take both CPUs, doctor suggested
    /// isolating every CPU; it must leave the system one.
    #[test]
    fn isolating_every_cpu_is_never_suggested() {
        let mut host = good_host();
        host.leu_cpus = vec![(0, false), (1, false)];
        host.cpus_online = 2;
        let (verdict_found, fix) = verdict(
            &evaluate(&host, &ApplianceConfig::default()),
            "isolated cores",
        );
        assert_eq!(verdict_found, Verdict::Warn);
        let fix = fix.unwrap();
        assert!(!fix.contains("isolcpus"), "{fix}");
        assert!(fix.contains("three or more cores"), "{fix}");
        // With a CPU to spare, the fix names the LEU CPUs only.
        host.cpus_online = 4;
        host.leu_cpus = vec![(1, false), (2, true), (3, false)];
        let (_, fix) = verdict(
            &evaluate(&host, &ApplianceConfig::default()),
            "isolated cores",
        );
        assert!(fix.unwrap().contains("isolcpus=managed_irq,domain,1,3 "));
    }

    /// A config that cannot start fails: its data directory held, or a port taken.
    #[test]
    fn a_held_data_directory_or_a_taken_port_fails() {
        let mut host = good_host();
        host.data_dir_holder = Ok(Some(4242));
        host.ports_taken = vec![("127.0.0.1:7700".parse().unwrap(), "Address in use".into())];
        let checks = evaluate(&host, &ApplianceConfig::default());
        let data = checks.iter().find(|c| c.name == "data directory").unwrap();
        assert_eq!(data.verdict, Verdict::Fail);
        assert!(data.detail.contains("process 4242"), "{data:?}");
        let ports = checks.iter().find(|c| c.name == "ports").unwrap();
        assert_eq!(ports.verdict, Verdict::Fail);
        assert!(ports.detail.contains("127.0.0.1:7700"), "{ports:?}");
    }

    #[test]
    fn hugepages_matter_only_to_dpdk_and_an_unprobeable_data_dir_fails() {
        let mut config = ApplianceConfig::default();
        config.network.backend = NetworkBackend::Dpdk;
        let mut host = good_host();
        assert_eq!(
            verdict(&evaluate(&host, &config), "hugepages").0,
            Verdict::Fail
        );
        host.direct_io.1 = Err("permission denied".into());
        host.mapping_error = Some("asks for 4 LEUs; this machine has 2 cores".into());
        let checks = evaluate(&host, &ApplianceConfig::default());
        assert_eq!(verdict(&checks, "LEU mapping").0, Verdict::Fail);
        assert_eq!(verdict(&checks, "hugepages").0, Verdict::Pass);
        assert_eq!(verdict(&checks, "direct I/O").0, Verdict::Fail);
    }
}
