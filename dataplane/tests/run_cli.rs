//! Process-level tests of `vortex-dataplane run`: the real binary starts, says it is ready,
//! serves a client, stops on SIGTERM with exit status 0 after syncing, and a restart finds
//! every acknowledged write; a port already taken is a clear error.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::message::{CollectionSpec, Metric, Upsert, VectorType};

const BINARY: &str = env!("CARGO_BIN_EXE_vortex-dataplane");

/// A free loopback port (taken and released: good enough on a test machine).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    write_config_with(dir, port, 1)
}

fn write_config_with(dir: &Path, port: u16, leus: usize) -> std::path::PathBuf {
    let path = dir.join("vortex.toml");
    let text = format!(
        "[network]\nport = {port}\nleu_port_base = {}\n[storage]\ndata_dir = \"{}\"\n[leu]\ncount = {leus}\n[memory]\nlock = \"off\"\n",
        port + 1,
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary and waits for its readiness line.
fn start(config: &Path) -> (Child, String) {
    let mut child = Command::new(BINARY)
        .args(["run", "--config"])
        .arg(config)
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("skipped: two LEUs need two CPUs, this machine has {cpus}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The shared port, then one port per LEU just above it.
    let port = free_port();
    let config = write_config_with(dir.path(), port, 2);
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
        let own = [format!("127.0.0.1:{}", port + 1 + leu)];
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
