//! Process-level tests of `vortex-dataplane run`: the real binary starts, says it is ready,
//! serves a client, stops on SIGTERM with exit status 0 after syncing, and a restart finds
//! every acknowledged write; a port already taken is a clear error; a second server on the
//! same data directory or the same shared port is refused and the first keeps its data; an
//! ordinary user's 8 MiB memlock limit does not stop it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::message::{CollectionSpec, Metric, Search, Upsert, VectorType};

const BINARY: &str = env!("CARGO_BIN_EXE_vortex-dataplane");

/// Tests that open many connections (each takes an ephemeral port, the range `free_port`
/// picks from) run alone: each other test holds this shared, those exclusively, so that a
/// port another test chose is not taken meanwhile as a client's source port.
static PORTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    PORTS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    PORTS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A free loopback port (taken and released: good enough on a test machine).
fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports, each held until all are chosen.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    write_config_with(dir, port, 1)
}

/// The first of `count` consecutive loopback ports that are free now, none of them `not`
/// (the LEUs' own ports: `port + 1` of a free `port` may be another test's).
fn free_port_run(count: usize, not: u16) -> u16 {
    for _ in 0..1000 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        let ports = u32::from(base)..u32::from(base) + count as u32;
        if ports.contains(&u32::from(not)) || ports.end > u32::from(u16::MAX) {
            continue;
        }
        let rest: Vec<_> = ports
            .skip(1)
            .map(|port| TcpListener::bind(("127.0.0.1", port as u16)))
            .collect();
        if rest.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no run of {count} free ports");
}

/// The `leu_port_base` a config written by [`write_config_with`] gives.
fn leu_port_base(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("leu_port_base = "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap()
}

fn write_config_with(dir: &Path, port: u16, leus: usize) -> std::path::PathBuf {
    let path = dir.join("vortex.toml");
    let text = format!(
        "[network]\nport = {port}\nleu_port_base = {}\n[storage]\ndata_dir = \"{}\"\n[leu]\ncount = {leus}\n[memory]\nlock = \"off\"\n",
        free_port_run(leus, port),
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Adds `[limits] stop_timeout_s = seconds` to the config at `path`.
fn with_stop_timeout(path: &Path, seconds: u32) {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(&format!("[limits]\nstop_timeout_s = {seconds}\n"));
    std::fs::write(path, text).unwrap();
}

/// A config of one LEU with these ports and data directory, written into `dir` as `name`.
fn config_at(dir: &Path, name: &str, port: u16, leu_port: u16, data_dir: &Path) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "[network]\nport = {port}\nleu_port_base = {leu_port}\n[storage]\ndata_dir = \"{}\"\n\
         [leu]\ncount = 1\n[memory]\nlock = \"off\"\n",
        data_dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary and waits for its readiness line.
fn start(config: &Path) -> (Child, String) {
    start_command(Command::new(BINARY).args(["run", "--config"]).arg(config))
}

/// Starts a prepared `run` command and waits for its readiness line. The child is killed
/// when the test's thread ends (`PR_SET_PDEATHSIG`), so that a test that fails before it
/// stops its server leaves none running (holding ports, and the pipes of a caller reading
/// the test's output).
fn start_command(command: &mut Command) -> (Child, String) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe
    // syscall (prctl), touching no locks or allocations.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .next()
        .expect("a readiness line")
        .expect("readable stdout");
    assert!(
        ready.starts_with("vortex-dataplane ready: serving VBP on"),
        "{ready}"
    );
    // Keep draining stdout so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, ready)
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    // SAFETY: sends SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary expecting exit status 1; its stderr.
fn run_failing(config: &Path) -> String {
    let output = Command::new(BINARY)
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_serves_stops_on_sigterm_and_keeps_acknowledged_writes() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let (child, ready) = start(&config);
    assert!(ready.contains(&format!("127.0.0.1:{port}")), "{ready}");
    let endpoint = [format!("127.0.0.1:{port}")];
    let client = Client::connect(&endpoint, ClientOptions::default()).unwrap();
    client
        .create_collection(CollectionSpec {
            name: "docs".into(),
            dimension: 4,
            metric: Metric::Cosine,
            m: 8,
            ef_construction: 32,
            vector_type: VectorType::F32,
        })
        .unwrap();
    let ids: Vec<u64> = (0..300).collect();
    let upsert = Upsert {
        collection: "docs".into(),
        dimension: 4,
        ids: ids.clone(),
        vectors: ids
            .iter()
            .flat_map(|&id| [1.0, id as f32, 0.5, 0.25])
            .collect(),
        payloads: Vec::new(),
    };
    assert_eq!(client.upsert(upsert).unwrap(), 300);
    drop(client);
    let status = terminate(child);
    assert_eq!(status.code(), Some(0), "{status:?}");

    let (child, _) = start(&config);
    let client = Client::connect(&endpoint, ClientOptions::default()).unwrap();
    assert_eq!(client.count("docs", None).unwrap(), 300);
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_config(dir.path(), port);
    let stderr = run_failing(&config);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

fn docs_upsert(ids: std::ops::Range<u64>) -> Upsert {
    let ids: Vec<u64> = ids.collect();
    Upsert {
        collection: "docs".into(),
        dimension: 4,
        vectors: ids
            .iter()
            .flat_map(|&id| [1.0, id as f32, 0.5, 0.25])
            .collect(),
        ids,
        payloads: Vec::new(),
    }
}

#[test]
fn two_leus_share_a_port_have_their_own_and_refuse_another_layout() {
    let _ports = shared();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("skipped: two LEUs need two CPUs, this machine has {cpus}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The shared port, and one port per LEU from `leu_port_base`.
    let port = free_port();
    let config = write_config_with(dir.path(), port, 2);
    let base = leu_port_base(&config);
    let (child, ready) = start(&config);
    assert!(ready.contains("2 LEU(s)"), "{ready}");
    let shared = [format!("127.0.0.1:{port}")];
    let client = Client::connect(&shared, ClientOptions::default()).unwrap();
    client
        .create_collection(CollectionSpec {
            name: "docs".into(),
            dimension: 4,
            metric: Metric::L2,
            m: 8,
            ef_construction: 32,
            vector_type: VectorType::F32,
        })
        .unwrap();
    assert_eq!(client.upsert(docs_upsert(0..500)).unwrap(), 500);
    for leu in 0..2u16 {
        let own = [format!("127.0.0.1:{}", base + leu)];
        let direct = Client::connect(&own, ClientOptions::default()).unwrap();
        assert_eq!(direct.count("docs", None).unwrap(), 500, "LEU {leu}");
        assert_eq!(direct.get("docs", vec![3, 499, 7]).unwrap().len(), 3);
    }
    let stats = client.stats().unwrap();
    assert_eq!(stats.len(), 2);
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));

    // Both LEUs' data comes back.
    let (child, _) = start(&config);
    let client = Client::connect(&shared, ClientOptions::default()).unwrap();
    assert_eq!(client.count("docs", None).unwrap(), 500);
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));

    // The same data directory with one LEU would misplace points: refused, saying why.
    let config = write_config_with(dir.path(), port, 1);
    let stderr = run_failing(&config);
    assert!(stderr.contains("another LEU layout"), "{stderr}");
}

fn docs_spec() -> CollectionSpec {
    CollectionSpec {
        name: "docs".into(),
        dimension: 4,
        metric: Metric::L2,
        m: 8,
        ef_construction: 32,
        vector_type: VectorType::F32,
    }
}

/// Issue #21: a second server on the same data directory used to start, serve, and leave
/// the directory unreadable (its WAL segments removed by the other). Now it is refused
/// before it reads or writes anything, naming the holder, and the first keeps serving all
/// of its data, before and after a restart.
#[test]
fn a_second_server_on_the_same_data_directory_is_refused_and_the_first_keeps_its_data() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let [port, other_port, leu_port, other_leu_port] = free_ports::<4>();
    let first_config = config_at(dir.path(), "first.toml", port, leu_port, &data);
    let (first, _) = start(&first_config);
    let endpoint = [format!("127.0.0.1:{port}")];
    let client = Client::connect(&endpoint, ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    assert_eq!(client.upsert(docs_upsert(0..400)).unwrap(), 400);
    let files_before = list_files(&data);

    let second_config = config_at(dir.path(), "second.toml", other_port, other_leu_port, &data);
    let stderr = run_failing(&second_config);
    assert!(
        stderr.contains(&format!("is in use by process {}", first.id())),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // It touched nothing: the same files, and the first server answers for all its points
    // and takes more writes.
    assert_eq!(list_files(&data), files_before);
    assert_eq!(client.count("docs", None).unwrap(), 400);
    assert_eq!(client.upsert(docs_upsert(400..500)).unwrap(), 100);
    drop(client);
    assert_eq!(terminate(first).code(), Some(0));

    // Once the first has stopped, the directory opens (here under the second config) with
    // every acknowledged write.
    let (again, _) = start(&second_config);
    let client = Client::connect(
        &[format!("127.0.0.1:{other_port}")],
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(client.count("docs", None).unwrap(), 500);
    assert_eq!(client.get("docs", vec![0, 250, 499]).unwrap().len(), 3);
    drop(client);
    assert_eq!(terminate(again).code(), Some(0));
}

/// Issue #21: with another data directory and its own LEU ports but the same shared port, a
/// second server used to join the first's SO_REUSEPORT group, and the kernel split clients
/// between two servers holding different data. Now it is refused, naming the first, and
/// leaves nothing in its data directory; every client of the port reaches the first.
#[test]
fn a_second_server_on_the_same_port_is_refused_and_every_client_reaches_the_first() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let [port, leu_port] = free_ports::<2>();
    let first_config = config_at(
        dir.path(),
        "first.toml",
        port,
        leu_port,
        &dir.path().join("first"),
    );
    let (first, _) = start(&first_config);
    let endpoint = [format!("127.0.0.1:{port}")];
    let client = Client::connect(&endpoint, ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    assert_eq!(client.upsert(docs_upsert(0..50)).unwrap(), 50);

    let second_data = dir.path().join("second");
    // Even the same LEU port: the shared port's claim is checked first, and names the first.
    let second_config = config_at(dir.path(), "second.toml", port, leu_port, &second_data);
    let stderr = run_failing(&second_config);
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: another VORTEX dataplane (process {})",
            first.id()
        )),
        "{stderr}"
    );
    assert!(
        !second_data.join("LAYOUT").exists(),
        "a failed start leaves no LAYOUT"
    );
    assert!(!second_data.join("leu-0").exists());
    for attempt in 0..8 {
        let fresh = Client::connect(&endpoint, ClientOptions::default()).unwrap();
        assert_eq!(
            fresh.count("docs", None).unwrap(),
            50,
            "connection {attempt}"
        );
    }
    drop(client);
    assert_eq!(terminate(first).code(), Some(0));
}

/// Issue #21: as an ordinary user (RLIMIT_MEMLOCK 8 MiB, no CAP_IPC_LOCK), `memory.lock =
/// "try"` used to lock every future mapping, and the next LEU thread could not get a stack
/// (`cannot start an LEU thread: Resource temporarily unavailable`). Now it locks what fits,
/// says so once, and serves.
#[test]
fn an_ordinary_users_memlock_limit_does_not_stop_the_server() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let [port, leu_port] = free_ports::<2>();
    let leus = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let config = dir.path().join("user.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\nport = {port}\nleu_port_base = {leu_port}\n[storage]\ndata_dir = \"{}\"\n\
             [leu]\ncount = {leus}\n[memory]\nlock = \"try\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped());
    vortex_test_support::process::as_ordinary_user(&mut command, 8 << 20);
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let warnings =
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    std::thread::spawn(move || for _ in lines {});
    if !ready.starts_with("vortex-dataplane ready") {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "not ready: {ready:?}; stderr: {:?}",
            warnings.join().unwrap()
        );
    }
    let client = Client::connect(&[format!("127.0.0.1:{port}")], ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    assert_eq!(client.upsert(docs_upsert(0..200)).unwrap(), 200);
    assert_eq!(client.count("docs", None).unwrap(), 200);
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
    let warnings = warnings.join().unwrap();
    let partial: Vec<_> = warnings
        .iter()
        .filter(|line| line.contains("memory is locked only in part"))
        .collect();
    assert_eq!(partial.len(), 1, "warned once: {warnings:?}");
    assert!(
        partial[0].contains("RLIMIT_MEMLOCK = 8 MiB"),
        "{warnings:?}"
    );
}

/// The files under `dir`, with their sizes.
fn list_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                files.push((entry.path(), metadata.len()));
            }
        }
    }
    files.sort();
    files
}

/// Issue #21: a data directory this user cannot write was refused only when the first LEU
/// opened its shard, with exit status 1; docs/CONFIG.md says 2. Now `run` refuses it at the
/// start, status 2, one line, and writes nothing into it.
#[test]
fn a_data_directory_the_user_cannot_write_is_a_config_error() {
    let _ports = shared();
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let [port, leu_port] = free_ports::<2>();
    let config = config_at(dir.path(), "c.toml", port, leu_port, &data);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: geteuid reads nothing of ours.
    let root = unsafe { libc::geteuid() } == 0;
    // As `nobody`, the binary must be reachable: a copy in a directory anyone may enter
    // (the checkout may live under a private home directory).
    let binary = dir.path().join("vortex-dataplane");
    std::fs::copy(BINARY, &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(&binary);
    command.args(["run", "--config"]).arg(&config);
    if root {
        // Root may write anywhere: run the binary as `nobody` (the directory stays root's).
        command.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let output = output_retrying(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("storage.data_dir"), "{stderr}");
    assert!(stderr.contains("is not writable by this user"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing written"
    );
}

/// Issue #21: `run` without `--config` says that it runs on the built-in defaults and where
/// the data goes (before it binds anything, so this holds even if port 7700 is taken here).
#[test]
fn run_without_a_config_says_it_uses_the_defaults_and_where_the_data_goes() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .arg("run")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let _ = terminate(child);
    let data = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("vortex-data");
    assert!(
        first.contains("no --config given: running with the built-in defaults"),
        "{first}"
    );
    assert!(
        first.ends_with(&format!("data in {}", data.display())),
        "{first}"
    );
}

/// Runs `command`, trying again while the kernel says the just-copied binary is busy (another
/// test thread's fork may hold its descriptor until that child execs: ETXTBSY).
fn output_retrying(command: &mut Command) -> std::process::Output {
    for _ in 0..100 {
        match command.output() {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
    panic!("the binary stayed busy");
}

/// Issue #21: a start that fails after it wrote LAYOUT (here the second LEU cannot open its
/// shard: `leu-1` is a file) leaves the data directory as it found it: no LAYOUT, no
/// `leu-0` made by this start, and what was there before untouched.
#[test]
fn a_failed_start_leaves_no_layout_and_no_empty_shards_behind() {
    let _ports = shared();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("skipped: two LEUs need two CPUs, this machine has {cpus}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config_with(dir.path(), port, 2);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("leu-1"), b"in the way").unwrap();
    let stderr = run_failing(&config);
    assert!(stderr.contains("cannot open the shard"), "{stderr}");
    assert!(stderr.contains("leu-1"), "{stderr}");
    assert!(!data.join("LAYOUT").exists(), "LAYOUT left behind");
    assert!(!data.join("leu-0").exists(), "an empty shard left behind");
    assert_eq!(std::fs::read(data.join("leu-1")).unwrap(), b"in the way");
    // Once the obstacle is gone, the same directory starts.
    std::fs::remove_file(data.join("leu-1")).unwrap();
    let (child, ready) = start(&config);
    assert!(ready.contains("2 LEU(s)"), "{ready}");
    assert_eq!(terminate(child).code(), Some(0));
}

/// Issue #23 item 9: a start right after a SIGKILL must not fail on "Address already in
/// use" (the dead process's sockets can outlive it for a moment: its io_uring holds the
/// listeners until the kernel has torn the ring down). 50 cycles of start, a client that
/// writes, SIGKILL and an immediate restart, two LEUs: every start serves, and every write
/// acknowledged before a kill is there after it.
#[test]
fn fifty_restarts_right_after_sigkill_all_serve() {
    let _ports = alone();
    let dir = tempfile::tempdir().unwrap();
    let [port, _, _] = free_ports::<3>();
    let config = write_config_with(dir.path(), port, 2);
    let address = format!("127.0.0.1:{port}");
    let mut acknowledged = 0u64;
    let mut slowest = Duration::ZERO;
    for cycle in 0..50u64 {
        let started = Instant::now();
        let (mut child, _) = start(&config);
        slowest = slowest.max(started.elapsed());
        let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
        if cycle == 0 {
            client.create_collection(docs_spec()).unwrap();
        }
        assert_eq!(
            client.count("docs", None).unwrap(),
            acknowledged,
            "cycle {cycle}: the writes acknowledged before the kills"
        );
        let batch = cycle * 10..cycle * 10 + 10;
        assert_eq!(client.upsert(docs_upsert(batch)).unwrap(), 10);
        acknowledged += 10;
        // Killed with the client still connected: its connection and the LEUs' armed
        // receives and accepts are in flight.
        child.kill().unwrap();
        child.wait().unwrap();
        drop(client);
    }
    eprintln!("50 restarts after SIGKILL; the slowest start took {slowest:?}");
}

/// Issue #23 item 2: SIGTERM in the middle of a load (two writers on two LEUs, flushes and
/// their index builds running) exits within 5 s with status 0, and a restart finds every
/// write that was acknowledged.
#[test]
fn sigterm_during_a_load_exits_within_five_seconds_and_keeps_every_acknowledged_write() {
    let _ports = alone();
    let dir = tempfile::tempdir().unwrap();
    let [port, _, _] = free_ports::<3>();
    let config = write_config_with(dir.path(), port, 2);
    let address = format!("127.0.0.1:{port}");
    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    let acknowledged = std::sync::Mutex::new(Vec::<u64>::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let took = std::thread::scope(|scope| {
        for writer in 0..2u64 {
            let (address, acknowledged, stop) = (&address, &acknowledged, &stop);
            scope.spawn(move || {
                let client =
                    Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
                let mut next = writer * 10_000_000;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    match client.upsert(docs_upsert(next..next + 500)) {
                        Ok(written) => {
                            assert_eq!(written, 500);
                            acknowledged.lock().unwrap().extend(next..next + 500);
                            next += 500;
                        }
                        Err(vortex_vbp::client::ClientError::Throttled { retry_after, .. }) => {
                            std::thread::sleep(retry_after)
                        }
                        // The server went away: the answer never came, so it proves nothing.
                        Err(_) => break,
                    }
                }
            });
        }
        // Long enough for several flushes and their graphs.
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        let status = terminate(child);
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(status.code(), Some(0), "{status:?}");
        took
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    eprintln!(
        "SIGTERM during a load of {} acknowledged points: exited after {took:?}",
        acknowledged.len()
    );
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    assert!(
        acknowledged.len() >= 1000,
        "too little was loaded to test a stop mid-load"
    );

    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    let found = client.count("docs", None).unwrap();
    assert!(
        found >= acknowledged.len() as u64,
        "{found} of {} kept",
        acknowledged.len()
    );
    for chunk in acknowledged.chunks(2000) {
        let points = client.get("docs", chunk.to_vec()).unwrap();
        assert_eq!(points.len(), chunk.len(), "an acknowledged write is gone");
    }
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
}

/// Issue #23 item 2: SIGTERM right after a load, while the LEUs merge their level-0 tables
/// and build the merged tables' graphs (and the index tier its node graph), ends the
/// process within `[limits] stop_timeout_s` (2 s here): the merge and the builds are abandoned, to be redone, and a
/// restart finds every point. Exit status 0 (a clean stop), or 3 if the stop's own bound
/// had to end it (then as after a crash, losing nothing acknowledged).
#[test]
fn sigterm_in_the_middle_of_a_merge_exits_within_the_configured_bound() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config_with(dir.path(), port, 2);
    with_stop_timeout(&config, 2);
    let address = format!("127.0.0.1:{port}");
    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    const DIM: usize = 48;
    const POINTS: u64 = 40_000;
    client
        .create_collection(CollectionSpec {
            name: "docs".into(),
            dimension: DIM as u32,
            metric: Metric::L2,
            m: 16,
            ef_construction: 200,
            vector_type: VectorType::F32,
        })
        .unwrap();
    let vector = |id: u64| -> Vec<f32> {
        (0..DIM as u64)
            .map(|j| ((id.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) % 1000) as f32)
            .collect()
    };
    for start in (0..POINTS).step_by(1000) {
        let ids: Vec<u64> = (start..start + 1000).collect();
        let upsert = Upsert {
            collection: "docs".into(),
            dimension: DIM as u32,
            vectors: ids.iter().flat_map(|&id| vector(id)).collect(),
            ids,
            payloads: Vec::new(),
        };
        loop {
            match client.upsert(upsert.clone()) {
                Ok(_) => break,
                Err(error) => match error.retry_after() {
                    Some(wait) => std::thread::sleep(wait),
                    None => panic!("{error}"),
                },
            }
        }
    }
    // The load leaves level-0 tables to merge into level 1, with the merged table's graph
    // to build, and the index tier a node graph: catch them at it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let caught = loop {
        let stats = client.stats().unwrap();
        let merging = vortex_vbp::message::counters_sum(&stats, &["pending_compactions"]);
        let busy = vortex_vbp::message::counters_sum(
            &stats,
            &vortex_vbp::message::BACKGROUND_WORK_COUNTERS,
        );
        if merging > 0 {
            break busy;
        }
        assert!(Instant::now() < deadline, "no merge began: {stats:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(client);
    let started = Instant::now();
    let status = terminate(child);
    let took = started.elapsed();
    eprintln!(
        "SIGTERM during a merge ({caught} units of background work left): exit {:?} after \
         {took:?}",
        status.code()
    );
    assert!(
        matches!(status.code(), Some(0 | 3)),
        "{status:?}: neither a clean stop nor the bound's"
    );
    // The bound, plus what a busy 2-core machine takes to schedule the exit.
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");

    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    assert_eq!(client.count("docs", None).unwrap(), POINTS);
    for start in (0..POINTS).step_by(4000) {
        let ids: Vec<u64> = (start..start + 4000).collect();
        let points = client.get("docs", ids).unwrap();
        assert_eq!(points.len(), 4000);
        for point in points {
            assert_eq!(point.vector, vector(point.id), "point {}", point.id);
        }
    }
    drop(client);
    assert!(matches!(terminate(child).code(), Some(0 | 3)));
}

/// Issue #23 item 2: a client that sends requests with large answers and never reads them
/// cannot hold a stop: the LEUs give up on its answers at half of `stop_timeout_s` (2 s
/// here) and the process exits 0 within the bound.
#[test]
fn a_client_that_never_reads_cannot_hold_a_stop_past_its_bound() {
    use std::io::Write as _;
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    with_stop_timeout(&config, 2);
    let address = format!("127.0.0.1:{port}");
    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    for start in (0..8000).step_by(2000) {
        client.upsert(docs_upsert(start..start + 2000)).unwrap();
    }
    drop(client);
    // 64 gets of 8,000 points each (about 0.3 MB an answer), never read.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let get = vortex_vbp::codec::Request::Get(vortex_vbp::message::Get {
        collection: "docs".into(),
        ids: (0..8000).collect(),
        with_vectors: true,
        with_payload: true,
    });
    for request_id in 1..=64 {
        stream.write_all(&get.encode(request_id).unwrap()).unwrap();
    }
    // Let the answers fill both sockets' buffers.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = terminate(child);
    let took = started.elapsed();
    eprintln!(
        "SIGTERM with a client not reading: exit {:?} after {took:?}",
        status.code()
    );
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        took >= Duration::from_millis(900),
        "the drain gave up at once: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
    drop(stream);
}

/// A stopped node (its config, address and directory) with `docs` and `other` (ids 0..300
/// each, `docs_upsert`'s vectors), merged into one table per collection; the first table's path, the byte of its vector
/// region that holds the exponent of slot 0's first float (id 0's 1.0, which a flip of bit 2
/// makes 0.0039), and the names of its collection and of the other one.
struct TwoTables {
    _ports: std::sync::RwLockReadGuard<'static, ()>,
    _dir: tempfile::TempDir,
    config: PathBuf,
    address: String,
    table: PathBuf,
    vector_byte: u64,
    fenced: &'static str,
    served: &'static str,
}

fn two_tables() -> TwoTables {
    let ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let address = format!("127.0.0.1:{port}");
    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    client
        .create_collection(CollectionSpec {
            name: "other".into(),
            ..docs_spec()
        })
        .unwrap();
    client.upsert(docs_upsert(0..300)).unwrap();
    let other = |ids: std::ops::Range<u64>| Upsert {
        collection: "other".into(),
        ..docs_upsert(ids)
    };
    client.upsert(other(0..300)).unwrap();
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
    // The writes are in the WAL (and maybe a table or two of idle flushes): merged into one
    // table per collection through the LEU's shard directly.
    let shard_dir = dir.path().join("data").join("leu-0");
    {
        let (mut shard, _) =
            vortex_shard::Shard::open(&shard_dir, vortex_shard::ShardOptions::default()).unwrap();
        shard.compact_all().unwrap(); // one table per collection
        shard.wait_idle().unwrap();
        shard.close().unwrap();
    }
    let mut tables = vortex_test_support::files::sorted_entries(&shard_dir.join("store/tables"));
    // One table per collection.
    let table = vortex_storage::sstable::table::Table::open(
        &vortex_storage::PosixFiles::shared(),
        &tables[0],
        0,
    )
    .unwrap();
    let (collection, data_end) = (table.footer().collection, table.footer().data_end);
    drop(table);
    // Collection ids count from 0 in the order of creation.
    let (fenced, served) = if collection == 0 {
        ("docs", "other")
    } else {
        ("other", "docs")
    };
    TwoTables {
        _ports: ports,
        _dir: dir,
        config,
        address,
        table: tables.swap_remove(0),
        vector_byte: data_end + 3,
        fenced,
        served,
    }
}

/// A search of `collection` near id 0 (`docs_upsert`'s vectors).
fn search_near_0(collection: &str) -> Search {
    Search {
        collection: collection.into(),
        vector: vec![1.0, 0.0, 0.5, 0.25],
        k: 3,
        ef: 32,
        filter: None,
        with_payload: false,
    }
}

/// Issue #23 item 4: a bit flipped in an SSTable no longer keeps the dataplane from
/// starting. It starts with that table fenced: a get of its ids and a search of its
/// collection answer `Fenced` naming the collection and the range, the collection's other
/// ids and the other collections are served, writes go on, and stats count the table.
#[test]
fn a_damaged_table_is_fenced_and_the_node_starts_and_serves_the_rest() {
    let two = two_tables();
    vortex_test_support::files::flip(&two.table, two.vector_byte);
    let (child, _) = start(&two.config);
    let client = Client::connect(&[two.address.as_str()], ClientOptions::default()).unwrap();
    // A vector region is not read at a start (the scrubber reads it in the background):
    // the first read of the damaged vector finds it.
    let error = client.get(two.fenced, vec![0]).unwrap_err().to_string();
    assert!(
        error.contains("Fenced") && error.contains(two.fenced) && error.contains("points 0 to 299"),
        "{error}"
    );
    let error = client
        .search(search_near_0(two.fenced))
        .unwrap_err()
        .to_string();
    assert!(error.contains("Fenced"), "{error}");
    let hits = client.search(search_near_0(two.served)).unwrap();
    assert_eq!(hits[0].id, 0);
    assert_eq!(client.get(two.served, vec![5, 6]).unwrap().len(), 2);
    client.upsert(docs_upsert(500..510)).unwrap();
    let stats = client.stats().unwrap();
    assert_eq!(
        vortex_vbp::message::counters_sum(&stats, &["fenced_tables"]),
        1
    );
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
}

/// Issue #23 item 4, as the issue saw it: a bit flipped in a vector region while the node
/// runs, and a search is the first to read it. Before, that search left the damaged point
/// out of its answer (or ranked it at a wrong distance), with no error. Now it answers
/// `Fenced` naming the range, or (where the node's index tier searched a verified copy of
/// the rows) the true answer; never a wrong one. The rest is served.
#[test]
fn a_search_never_answers_from_a_vector_damaged_while_the_node_runs() {
    let two = two_tables();
    let (child, _) = start(&two.config);
    let client = Client::connect(&[two.address.as_str()], ClientOptions::default()).unwrap();
    vortex_test_support::files::flip(&two.table, two.vector_byte);
    match client.search(search_near_0(two.fenced)) {
        Err(error) => {
            let error = error.to_string();
            assert!(
                error.contains("Fenced") && error.contains("points 0 to 299"),
                "{error}"
            );
        }
        Ok(hits) => {
            eprintln!("answered from a verified copy: {hits:?}");
            assert_eq!(hits[0].id, 0, "{hits:?}");
            assert_eq!(hits[0].distance, 0.0, "{hits:?}");
        }
    }
    let hits = client.search(search_near_0(two.served)).unwrap();
    assert_eq!((hits[0].id, hits[0].distance), (0, 0.0));
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
}

/// Issue #23 item 5: `vortex-dataplane repair`, offline. A bit flips in a vector unit of a
/// stopped node's table (64 points share the unit); the repair names exactly those 64 ids as
/// lost, keeps every other point, moves the damaged file aside, and the restarted node has no
/// fenced table and serves every other point with its vector, searches included. Refused
/// while a dataplane holds the directory; a second run finds nothing to do.
#[test]
fn repair_keeps_every_point_that_verifies_and_names_the_ids_it_lost() {
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let address = format!("127.0.0.1:{port}");
    let repair = || {
        let output = Command::new(BINARY)
            .args(["repair", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    };
    // What docs_upsert writes for `id`.
    let vector = |id: u64| vec![1.0, id as f32, 0.5, 0.25];
    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    for start in (0..3000).step_by(500) {
        client.upsert(docs_upsert(start..start + 500)).unwrap();
    }
    drop(client);
    // A dataplane holds the directory: the repair is refused.
    let (code, text) = repair();
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(terminate(child).code(), Some(0));
    let shard_dir = dir.path().join("data").join("leu-0");
    {
        let (mut shard, _) =
            vortex_shard::Shard::open(&shard_dir, vortex_shard::ShardOptions::default()).unwrap();
        shard.compact_all().unwrap(); // one table, ids in slot order
        shard.wait_idle().unwrap();
        shard.close().unwrap();
    }
    let tables: Vec<PathBuf> = std::fs::read_dir(shard_dir.join("store/tables"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert_eq!(tables.len(), 1, "{tables:?}");
    let table = vortex_storage::sstable::table::Table::open(
        &vortex_storage::PosixFiles::shared(),
        &tables[0],
        0,
    )
    .unwrap();
    let data_end = table.footer().data_end;
    assert_eq!(
        table.region_points().unwrap(),
        (0..3000).collect::<Vec<u64>>()
    );
    drop(table);
    // Unit 2 of the region: slots 128 to 191 (4 floats, padded to 64 bytes a slot).
    vortex_test_support::files::flip(&tables[0], data_end + 2 * 4096 + 5);

    let (code, text) = repair();
    eprintln!("{text}");
    assert_eq!(code, Some(0), "{text}");
    let lost: Vec<String> = (128..192).map(|id: u64| id.to_string()).collect();
    assert!(
        text.contains(&format!(
            "lost, their vectors damaged (deleted): 64 point(s): {}\n",
            lost.join(" ")
        )),
        "{text}"
    );
    assert!(text.contains("collection `docs` (ids 0..=2999)"), "{text}");
    assert!(
        text.contains("1 damaged table(s) found, 1 repaired, 0 left fenced"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(shard_dir.join("store/lost+found"))
            .unwrap()
            .count(),
        1
    );

    let (child, _) = start(&config);
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    assert!(client.fenced().unwrap().is_empty());
    assert_eq!(client.count("docs", None).unwrap(), 3000 - 64);
    let points = client.get("docs", (0..3000).collect()).unwrap();
    assert_eq!(points.len(), 3000 - 64);
    for point in &points {
        assert!(
            !(128..192).contains(&point.id),
            "point {} was lost",
            point.id
        );
        assert_eq!(point.vector, vector(point.id), "point {}", point.id);
    }
    let hits = client
        .search(Search {
            collection: "docs".into(),
            vector: vector(1000),
            k: 3,
            ef: 32,
            filter: None,
            with_payload: false,
        })
        .unwrap();
    assert_eq!(hits[0].id, 1000);
    drop(client);
    assert_eq!(terminate(child).code(), Some(0));
    let (code, text) = repair();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("0 damaged table(s) found"), "{text}");
}

/// The node of [`a_node_on_a_full_disk_serves_reads_and_takes_writes_once_space_frees`]:
/// a shell in a user and mount namespace of its own (`unshare -rm`, no privilege needed)
/// that mounts a small tmpfs on the data directory and runs the dataplane on it twice,
/// printing `pid N` before each run and `exit N` after.
struct Namespaced {
    shell: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    /// The data directory as this process reaches it (through the shell's root).
    data: PathBuf,
}

impl Namespaced {
    fn start(config: &Path, data: &Path, size_mib: u32) -> Namespaced {
        let script = format!(
            "mount -t tmpfs -o size={size_mib}m tmpfs '{data}' || {{ echo 'no mount'; exit 90; }}\n\
             for run in 1 2; do\n\
               '{BINARY}' run --config '{config}' &\n\
               echo \"pid $!\"\n\
               wait $!\n\
               echo \"exit $?\"\n\
             done\n",
            data = data.display(),
            config = config.display()
        );
        let mut shell = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux) runs");
        let lines = BufReader::new(shell.stdout.take().unwrap()).lines();
        let through_root = PathBuf::from(format!("/proc/{}/root", shell.id()))
            .join(data.strip_prefix("/").unwrap());
        Namespaced {
            shell,
            lines,
            data: through_root,
        }
    }

    /// The next line the shell or the dataplane printed.
    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("the namespaced shell ended early")
            .unwrap()
    }

    /// Waits for the next run's pid and readiness line; its pid.
    fn ready(&mut self) -> i32 {
        let pid = self.line();
        assert_ne!(
            pid, "no mount",
            "cannot mount a tmpfs in a user and mount namespace of our own (`unshare -rm`): \
             this test needs user namespaces (sysctl user.max_user_namespaces > 0)"
        );
        let pid: i32 = pid
            .strip_prefix("pid ")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("not a pid line: {pid}"));
        let ready = self.line();
        assert!(
            ready.starts_with("vortex-dataplane ready: serving VBP on"),
            "the start failed: {ready}"
        );
        pid
    }

    /// SIGTERM to the run `pid`; its exit status as the shell saw it.
    fn stop(&mut self, pid: i32) -> String {
        // SAFETY: sends SIGTERM to a process this test started (through the shell).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        loop {
            let line = self.line();
            if let Some(status) = line.strip_prefix("exit ") {
                return status.to_owned();
            }
        }
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// Issue #23 item 11, disk full, against the real binary on a real full file system (a
/// 24 MiB tmpfs filled by a ballast file). While it runs full: writes fail with an error,
/// reads go on, nothing acknowledged is lost, and once the ballast goes writes are taken
/// again within seconds (before: read-only until a restart). A restart on a full disk comes
/// up (before: `cannot open the shard …: append …/MANIFEST-…: No space left on device`,
/// exit 1, nothing served): it serves every acknowledged point and answers writes
/// `Unavailable`, saying the disk takes no writes; once the ballast goes, writes are taken
/// again, without a restart.
#[test]
fn a_node_on_a_full_disk_serves_reads_and_takes_writes_once_space_frees() {
    use std::io::Write as _;
    let _ports = shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let address = format!("127.0.0.1:{port}");
    let mut node = Namespaced::start(&config, &data, 24);
    let first = node.ready();
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    client.create_collection(docs_spec()).unwrap();
    let mut acknowledged = Vec::new();
    for start in (0..2000).step_by(500) {
        client.upsert(docs_upsert(start..start + 500)).unwrap();
        acknowledged.extend(start..start + 500);
    }
    // The ballast fills the disk; writes then fail, with an error.
    let ballast = node.data.join("ballast");
    let fill = |client: &Client, acknowledged: &mut Vec<u64>, ids: std::ops::Range<u64>| {
        let mut file = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0x5Au8; 1 << 20];
        let full = loop {
            if let Err(error) = file.write_all(&chunk).and_then(|()| file.sync_data()) {
                break error;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
        for start in ids.step_by(500) {
            match client.upsert(docs_upsert(start..start + 500)) {
                Ok(_) => acknowledged.extend(start..start + 500),
                Err(error) => return error.to_string(),
            }
        }
        panic!("a full disk took every write");
    };
    // Writes are taken again within seconds of the ballast's removal.
    let resume = |client: &Client, acknowledged: &mut Vec<u64>, ids: std::ops::Range<u64>| {
        std::fs::remove_file(&ballast).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.upsert(docs_upsert(ids.clone())) {
                Ok(_) => break,
                Err(error) => {
                    assert!(Instant::now() < deadline, "writes not taken again: {error}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        acknowledged.extend(ids);
    };
    let failed = fill(&client, &mut acknowledged, 10_000..20_000);
    eprintln!("a write on the full disk: {failed}");
    let check_reads = |client: &Client, acknowledged: &[u64], what: &str| {
        for ids in acknowledged.chunks(1000) {
            let points = client.get("docs", ids.to_vec()).unwrap();
            assert_eq!(
                points.len(),
                ids.len(),
                "{what}: acknowledged points missing"
            );
        }
        let hits = client.search(search_near_0("docs")).unwrap();
        assert_eq!((hits[0].id, hits[0].distance), (0, 0.0), "{what}");
    };
    check_reads(&client, &acknowledged, "full, running");
    // Room again: writes are taken again without a restart.
    resume(&client, &mut acknowledged, 20_000..20_010);
    check_reads(&client, &acknowledged, "room again");
    // Full again, and stopped.
    let failed = fill(&client, &mut acknowledged, 40_000..50_000);
    eprintln!("a write on the disk full again: {failed}");
    check_reads(&client, &acknowledged, "full again");
    drop(client);
    let status = node.stop(first);
    eprintln!("the first run, stopped on the full disk, exited {status}");

    // The restart on the full disk comes up and serves reads.
    let second = node.ready();
    let client = Client::connect(&[address.as_str()], ClientOptions::default()).unwrap();
    check_reads(&client, &acknowledged, "restarted full");
    let refused = client
        .upsert(docs_upsert(30_000..30_010))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("Unavailable") && refused.contains("the disk takes no writes"),
        "{refused}"
    );
    resume(&client, &mut acknowledged, 30_000..30_010);
    check_reads(&client, &acknowledged, "space freed");
    drop(client);
    assert_eq!(node.stop(second), "0");
}
