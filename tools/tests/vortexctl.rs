//! `vortexctl` as a user runs it: the real binary against an appliance started in this
//! process (the dev config, ephemeral ports, a temporary data directory), and the
//! quickstart demo end to end.

use std::path::Path;
use std::process::{Command, Output};
use vortex_config::{ApplianceConfig, LeuCount, Topology};
use vortex_dataplane::appliance::{Appliance, Ports};
use vortex_tools::ctl::demo::DEV_CONFIG;

fn vortexctl(address: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vortexctl"))
        .env_remove("VORTEX_ADDRESS")
        .arg("--address")
        .arg(address)
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs and expects exit `code`; returns stdout and stderr together.
fn expect(address: &str, args: &[&str], code: i32) -> String {
    let output = vortexctl(address, args);
    let all = text(&output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "vortexctl {args:?}:\n{all}"
    );
    all
}

fn start(dir: &Path, leus: u16) -> Appliance {
    let mut config = ApplianceConfig::from_toml_str(DEV_CONFIG, "dev").unwrap();
    config.storage.data_dir = dir.to_owned();
    config.leu.count = LeuCount::Fixed(leus);
    config.memory.lock = vortex_config::MemoryLockPolicy::Off;
    let topology = Topology::discover().unwrap();
    let mapping = config.plan_leus(&topology).unwrap_or_else(|_| {
        config.leu.count = LeuCount::Fixed(1);
        config.plan_leus(&topology).unwrap()
    });
    Appliance::start(&config, &mapping, dir, Ports::Ephemeral, "test").unwrap()
}

/// The one JSON array a `--json` list prints.
fn json_array(text: &str) -> Vec<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"));
    value
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not an array: {text}"))
}

fn write_fvecs(path: &Path, rows: impl Iterator<Item = Vec<f32>>) {
    let mut bytes = Vec::new();
    for row in rows {
        bytes.extend((row.len() as i32).to_le_bytes());
        for x in row {
            bytes.extend(x.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Every command against a running server, and the errors a user meets, each with its
/// documented exit code.
#[test]
fn every_command_works_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let appliance = start(dir.path(), 2);
    let address = appliance.address().to_string();
    let a = address.as_str();

    assert!(expect(a, &["ping", "--count", "2"], 0).contains("pong from"));
    // The demo on a data directory a running appliance holds (this process's): refused,
    // naming the holder, before it touches anything.
    let held = expect(
        a,
        &[
            "demo",
            "--points",
            "10",
            "--queries",
            "1",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        1,
    );
    assert!(
        held.contains(&format!("is in use by process {}", std::process::id())),
        "{held}"
    );
    expect(a, &["collection", "create", "docs", "--dimension", "4"], 0);
    let exists = expect(a, &["collection", "create", "docs", "--dimension", "4"], 1);
    assert!(exists.contains("exists"), "{exists}");

    // 300 rows from .fvecs (ids 0..300), 3 from JSON Lines with payloads, 2 from .npy.
    let fvecs = files.path().join("base.fvecs");
    write_fvecs(&fvecs, (0..300).map(|i| vec![i as f32, 0.0, 0.0, 1.0]));
    let loaded = expect(
        a,
        &["load", "docs", fvecs.to_str().unwrap(), "--batch", "64"],
        0,
    );
    assert!(loaded.contains("loaded 300 points"), "{loaded}");
    let jsonl = files.path().join("tagged.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": 1000, \"vector\": [1000, 0, 0, 1], \"payload\": {\"color\": \"red\", \"size\": 3}}\n\
         {\"id\": 1001, \"vector\": [1001, 0, 0, 1], \"payload\": {\"color\": \"blue\", \"size\": 5}}\n\
         {\"id\": 1002, \"vector\": [1002, 0, 0, 1], \"payload\": {\"color\": \"red\", \"size\": 9}}\n",
    )
    .unwrap();
    expect(a, &["load", "docs", jsonl.to_str().unwrap()], 0);
    let npy = files.path().join("more.npy");
    let values: Vec<u8> = [2000.0f32, 0.0, 0.0, 1.0, 2001.0, 0.0, 0.0, 1.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bytes = vortex_tools::ctl::input::npy_file("<f4", "(2, 4)", &values);
    std::fs::write(&npy, bytes).unwrap();
    expect(
        a,
        &["load", "docs", npy.to_str().unwrap(), "--start-id", "2000"],
        0,
    );
    assert_eq!(expect(a, &["count", "docs"], 0).trim(), "305");
    let described = expect(a, &["collection", "describe", "docs", "--json"], 0);
    assert!(described.contains("\"points\":305"), "{described}");
    assert!(expect(a, &["collection", "list"], 0).contains("docs"));

    // Search by vector, by a file's row, with a filter; get; upsert; delete.
    let hits = expect(
        a,
        &[
            "search",
            "docs",
            "--vector",
            "[10.2, 0, 0, 1]",
            "-k",
            "3",
            "--json",
        ],
        0,
    );
    let ids: Vec<u64> = json_array(&hits)
        .iter()
        .filter_map(|hit| hit["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![10, 11, 9]);
    let by_row = expect(
        a,
        &[
            "search",
            "docs",
            "--vector-file",
            fvecs.to_str().unwrap(),
            "--row",
            "42",
            "-k",
            "1",
            "--json",
        ],
        0,
    );
    assert!(by_row.contains("\"id\":42"), "{by_row}");
    let filtered = expect(
        a,
        &["search", "docs", "--vector", "[1001, 0, 0, 1]", "-k", "5", "--payload", "--filter",
          "{\"and\": [{\"field\": \"color\", \"eq\": \"red\"}, {\"field\": \"size\", \"gte\": 4}]}", "--json"],
        0,
    );
    assert!(
        filtered.contains("\"id\":1002") && !filtered.contains("\"id\":1000"),
        "{filtered}"
    );
    assert!(filtered.contains("\"color\":\"red\""), "{filtered}");
    let got = expect(a, &["get", "docs", "1001", "7", "--json"], 0);
    assert!(
        got.contains("\"id\":1001") && got.contains("\"blue\"") && got.contains("\"id\":7"),
        "{got}"
    );
    // `--json` is one JSON document everywhere: an array for lists, an object for one.
    assert_eq!(json_array(&got).len(), 2);
    assert_eq!(
        json_array(&expect(a, &["collection", "list", "--json"], 0)).len(),
        1
    );
    let stats_json = expect(a, &["stats", "--interval", "0.1", "--json"], 0);
    assert_eq!(json_array(&stats_json).len(), appliance.leu_ports().len());
    let one: serde_json::Value = serde_json::from_str(described.trim()).unwrap();
    assert_eq!(one["name"], "docs");
    expect(
        a,
        &[
            "upsert",
            "docs",
            "--id",
            "5000",
            "--vector",
            "[5, 5, 5, 5]",
            "--payload",
            "{\"new\": true}",
        ],
        0,
    );
    assert!(expect(a, &["get", "docs", "5000"], 0).contains("\"new\":true"));
    // Two of the three ids exist: the answer counts what was deleted.
    let deleted = expect(a, &["delete", "docs", "5000", "1000", "99999"], 0);
    assert!(
        deleted.contains("deleted 2 point(s) (durable); 1 id(s) did not exist"),
        "{deleted}"
    );
    assert_eq!(expect(a, &["count", "docs"], 0).trim(), "304");

    let stats = expect(a, &["stats", "--interval", "0.2"], 0);
    let rows = stats
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(
        rows,
        appliance.leu_ports().len(),
        "one row per LEU:\n{stats}"
    );
    assert!(
        stats.contains("memtable MiB") && stats.contains("THROTTLED"),
        "{stats}"
    );
    assert!(expect(a, &["stats", "--interval", "0.1", "--json"], 0).contains("requests_answered"));

    // The errors a user meets: each says what to do, with its exit code.
    let bad_filter = expect(
        a,
        &[
            "search",
            "docs",
            "--vector",
            "[1,2,3,4]",
            "--filter",
            "{\"field\": \"a\", \"like\": 1}",
        ],
        2,
    );
    assert!(bad_filter.contains("unknown key(s) like"), "{bad_filter}");
    assert!(expect(a, &["stats", "--interval", "nan"], 2).contains("--interval"));
    for args in [
        &["search", "docs", "--vector", "[1,2,3,4]", "-k", "0"][..],
        &["search", "docs", "--vector", "[]"],
        &["search", "docs", "--row", "3"],
        &["--timeout", "0", "ping"],
        &["upsert", "docs", "--id", "1", "--vector", "[1, null]"],
    ] {
        expect(a, args, 2);
    }
    let directory = files.path().join("dir.jsonl");
    std::fs::create_dir(&directory).unwrap();
    let not_file = expect(a, &["load", "docs", directory.to_str().unwrap()], 2);
    assert!(not_file.contains("not a regular file"), "{not_file}");
    let overflow = files.path().join("two.fvecs");
    write_fvecs(&overflow, (0..2).map(|_| vec![1.0, 2.0, 3.0, 4.0]));
    let start = u64::MAX.to_string();
    let too_far = expect(
        a,
        &[
            "load",
            "docs",
            overflow.to_str().unwrap(),
            "--start-id",
            &start,
        ],
        2,
    );
    assert!(too_far.contains("--start-id"), "{too_far}");
    let no_query = expect(a, &["search", "docs"], 2);
    assert!(no_query.contains("--vector"), "{no_query}");
    let wrong_dim = expect(a, &["upsert", "docs", "--id", "1", "--vector", "[1, 2]"], 1);
    assert!(
        wrong_dim.contains(
            "collection \"docs\" has dimension 4; the 1 point(s) sent have vectors of dimension 2"
        ),
        "{wrong_dim}"
    );
    // Issue #21's rough edges, each a clear error with its exit code.
    let both = expect(
        a,
        &["search", "docs", "--vector", "[1,2,3,4]", "--row", "3"],
        2,
    );
    assert!(both.contains("--row"), "{both}");
    let overflow = expect(
        a,
        &["search", "docs", "--vector", "[3e38, 3e38, 3e38, 3e38]"],
        1,
    );
    assert!(
        overflow.contains("the query is too long") && overflow.contains("overflow"),
        "{overflow}"
    );
    let negative = expect(
        a,
        &["upsert", "docs", "--id", "-1", "--vector", "[1,2,3,4]"],
        2,
    );
    assert!(
        negative.contains("not `-1`") && !negative.contains("tip:"),
        "{negative}"
    );
    let nohost = expect("nohost", &["ping"], 3);
    assert!(
        nohost.contains("HOST:PORT") && !nohost.contains("start one"),
        "{nohost}"
    );
    // A reader that has gone away (`vortexctl … | head`): a quiet exit, no panic. The
    // pipe's read end is closed before vortexctl starts, so its first line meets EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let closed = Command::new(env!("CARGO_BIN_EXE_vortexctl"))
        .args(["--address", a, "collection", "list"])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(0), "{}", text(&closed));
    assert!(closed.stderr.is_empty(), "{}", text(&closed));
    assert!(expect(a, &["count", "nope"], 1).contains("nope"));
    let junk = files.path().join("junk.fvecs");
    std::fs::write(&junk, b"not vectors at all").unwrap();
    assert!(
        expect(a, &["load", "docs", junk.to_str().unwrap()], 2).contains("is this an .fvecs file")
    );
    let empty = files.path().join("empty.jsonl");
    std::fs::write(&empty, b"\n\n").unwrap();
    assert!(expect(a, &["load", "docs", empty.to_str().unwrap()], 2).contains("holds no points"));
    let unknown = files.path().join("points.bin");
    std::fs::write(&unknown, b"x").unwrap();
    assert!(expect(a, &["load", "docs", unknown.to_str().unwrap()], 2).contains("--format"));
    expect(a, &["collection", "drop", "docs"], 0);
    assert!(!expect(a, &["collection", "list"], 0).contains("docs"));

    appliance.stop().unwrap();
    let refused = expect(a, &["ping"], 3);
    assert!(
        refused.contains(a) && refused.contains("vortex-dataplane -- run"),
        "{refused}"
    );
}

/// The README's quickstart, smaller: the demo starts an appliance, loads, searches, reports
/// recall against exact search and latency percentiles, and stops cleanly.
#[test]
fn the_quickstart_demo_runs_end_to_end() {
    let output = Command::new(env!("CARGO_BIN_EXE_vortexctl"))
        .args([
            "demo",
            "--points",
            "4000",
            "--dimension",
            "16",
            "--queries",
            "40",
        ])
        .output()
        .unwrap();
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    for step in 1..=6 {
        assert!(
            all.contains(&format!("[{step}/6]")),
            "step {step} missing:\n{all}"
        );
    }
    let recall: f64 = all
        .lines()
        .find_map(|line| line.trim().strip_prefix("recall@10 against exact search: "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no recall line:\n{all}"));
    assert!(recall >= 0.9, "recall {recall}:\n{all}");
    assert!(all.contains("latency: p50"), "{all}");
    assert!(
        all.contains("stopped cleanly") && all.contains("temporary data removed"),
        "{all}"
    );
}

/// With `--data-dir` the demo keeps its data, and a second run over it starts over.
#[test]
fn the_demo_keeps_its_data_where_asked_and_runs_again_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    for run in 0..2 {
        let output = Command::new(env!("CARGO_BIN_EXE_vortexctl"))
            .args([
                "demo",
                "--points",
                "1000",
                "--dimension",
                "8",
                "--queries",
                "10",
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let all = text(&output);
        assert!(output.status.success(), "run {run}:\n{all}");
        assert!(!all.contains("temporary data removed"), "{all}");
        assert!(data.join("LAYOUT").exists(), "run {run}: the data stays");
    }
}

/// Writes a one-LEU config at `config` with `data` as its data directory, and runs
/// `vortexctl doctor` on it.
fn doctor_on(config: &Path, data: &Path) -> Output {
    std::fs::write(
        config,
        format!(
            "[storage]\ndata_dir = \"{}\"\n[leu]\ncount = 1\n",
            data.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_vortexctl"))
        .args(["doctor", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

/// `doctor` checks the host and prints a verdict per check, each with its fix when not a
/// pass; exit 0 unless something fails.
#[test]
fn doctor_prints_a_verdict_for_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vortex.toml");
    let data = dir.path().join("not").join("yet");
    let output = doctor_on(&config, &data);
    let all = text(&output);
    assert!(!dir.path().join("not").exists(), "doctor creates nothing");
    assert!(all.contains("not created yet; probed"), "{all}");
    for name in [
        "LEU mapping",
        "kernel",
        "io_uring",
        "memlock",
        "hugepages",
        "isolated cores",
        "direct I/O",
        "data directory",
        "ports",
        "transparent huge pages",
        "CPU frequency governor",
    ] {
        assert!(
            all.lines().any(|l| l.contains(name)
                && (l.starts_with("PASS") || l.starts_with("WARN") || l.starts_with("FAIL"))),
            "{name}:\n{all}"
        );
    }
    let failed = all.lines().any(|l| l.starts_with("FAIL"));
    assert_eq!(
        output.status.code(),
        Some(if failed { 1 } else { 0 }),
        "{all}"
    );
    let warns = all
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("FAIL"))
        .count();
    assert_eq!(
        all.matches("fix:").count(),
        warns,
        "every warning has a fix:\n{all}"
    );
    let json = Command::new(env!("CARGO_BIN_EXE_vortexctl"))
        .args(["doctor", "--config", config.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(checks.as_array().map(Vec::len), Some(11));

    // A config that cannot start now fails: here its data directory is held (by this
    // process, as a running dataplane would hold it).
    let held = dir.path().join("held");
    std::fs::create_dir(&held).unwrap();
    let _lock = vortex_storage::DirLock::acquire(&held).unwrap();
    let output = doctor_on(&config, &held);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.lines().any(|l| l.starts_with("FAIL")
            && l.contains("data directory")
            && l.contains(&format!("held by process {}", std::process::id()))),
        "{all}"
    );
}

/// `bench` runs the `vortex-bench` beside `vortexctl` with the arguments as given and exits
/// with its status; without one it says how to build it.
#[test]
fn bench_runs_the_vortex_bench_beside_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("vortexctl");
    std::fs::copy(env!("CARGO_BIN_EXE_vortexctl"), &ctl).unwrap();
    let run = |args: &[&str]| {
        // A file just written may be "busy" for a moment: another test thread's fork can
        // hold its descriptor until that child execs (ETXTBSY); try again.
        for _ in 0..100 {
            match Command::new(&ctl).env("PATH", "").args(args).output() {
                Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
        panic!("{} stayed busy", ctl.display());
    };
    let missing = run(&["bench", "floor", "--seconds", "1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("cargo build --release -p vortex-bench"),
        "{}",
        text(&missing)
    );
    let fake = dir.path().join("vortex-bench");
    std::fs::write(&fake, "#!/bin/sh\necho \"bench got: $*\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut ran = run(&["bench", "serve-ann", "--ef", "16,32", "--merged"]);
    for _ in 0..100 {
        // The same ETXTBSY, met by vortexctl when it runs the script just written.
        if !text(&ran).contains("Text file busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        ran = run(&["bench", "serve-ann", "--ef", "16,32", "--merged"]);
    }
    assert_eq!(ran.status.code(), Some(7), "{}", text(&ran));
    assert!(
        text(&ran).contains("bench got: serve-ann --ef 16,32 --merged"),
        "{}",
        text(&ran)
    );
}

/// The README's session with `vortexctl` ("Run the server, and talk to it"), line by line
/// as a user pastes it (from the repository root, its sample point file included), against
/// a running appliance: every line succeeds (doctor may find this host lacking: 0 or 1).
#[test]
fn the_readmes_vortexctl_lines_work_as_written() {
    let readme = include_str!("../../README.md");
    let lines: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with("alias vortexctl="))
        .skip(1)
        .take_while(|line| line.starts_with("vortexctl "))
        .collect();
    assert!(lines.len() >= 8, "the README's vortexctl lines: {lines:?}");
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path(), 1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for line in &lines {
        let output = Command::new("bash")
            .current_dir(root)
            .env_remove("VORTEX_ADDRESS")
            .arg("-c")
            .arg(format!(
                "vortexctl() {{ \"$VORTEXCTL\" --address {} \"$@\"; }}\n{line}",
                appliance.address()
            ))
            .env("VORTEXCTL", env!("CARGO_BIN_EXE_vortexctl"))
            .output()
            .unwrap();
        let all = text(&output);
        let allowed: &[i32] = if line.starts_with("vortexctl doctor") {
            &[0, 1]
        } else {
            &[0]
        };
        assert!(
            output
                .status
                .code()
                .is_some_and(|code| allowed.contains(&code)),
            "{line}\n{all}"
        );
        if line.starts_with("vortexctl load") {
            assert!(all.contains("loaded 20 points"), "{all}");
        }
        if line.starts_with("vortexctl search") {
            // The upserted point and the sample's red ones, nearest first.
            assert!(all.contains("5 hit(s)"), "{all}");
            assert!(
                all.lines()
                    .nth(1)
                    .is_some_and(|first| first.contains(" 1 ")),
                "{all}"
            );
        }
    }
    appliance.stop().unwrap();
}

/// Issue #23 item 5: `vortexctl scrub` checks every table of every LEU online, now rather
/// than at the scrubber's next pass (an hour away), shows its progress, and says what it
/// found: exit 0 on clean tables; after a bit flips in a table under the running appliance,
/// exit 1 naming one damaged table, which is then fenced, and listed with its collection and
/// id range by the scrub and by `vortexctl fenced` (empty, exit 0, before).
#[test]
fn scrub_checks_every_table_online_and_reports_damage() {
    use vortex_vbp::client::{Client, ClientOptions};
    use vortex_vbp::message::{CollectionSpec, Metric, Upsert, VectorType};
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path(), 1);
    let address = appliance.address().to_string();
    let a = address.as_str();
    let client = Client::connect(&[a], ClientOptions::default()).unwrap();
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
    // More points than a MemTable holds: at least one table is flushed.
    for start in (0..6000u64).step_by(1000) {
        let ids: Vec<u64> = (start..start + 1000).collect();
        let upsert = Upsert {
            collection: "docs".into(),
            dimension: 4,
            vectors: ids
                .iter()
                .flat_map(|&id| [id as f32, 1.0, 2.0, 3.0])
                .collect(),
            ids,
            payloads: Vec::new(),
        };
        while let Err(error) = client.upsert(upsert.clone()) {
            std::thread::sleep(error.retry_after().expect("only THROTTLED is retried"));
        }
    }
    let tables = dir.path().join("leu-0/store/tables");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let table = loop {
        let found = std::fs::read_dir(&tables)
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|e| e == "sst"));
        if let Some(table) = found {
            break table;
        }
        assert!(std::time::Instant::now() < deadline, "no table was flushed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let clean = expect(a, &["scrub"], 0);
    assert!(
        clean.contains("scrub done") && clean.contains("0 table(s) found damaged"),
        "{clean}"
    );
    let none = expect(a, &["fenced"], 0);
    assert!(none.contains("no table is fenced"), "{none}");
    assert_eq!(expect(a, &["fenced", "--json"], 0).trim(), "[]");
    // A bit flips in the vector region, under the running appliance.
    let footer = *vortex_storage::sstable::table::Table::open(
        &vortex_storage::PosixFiles::shared(),
        &table,
        0,
    )
    .unwrap()
    .footer();
    vortex_test_support::files::flip(
        &table,
        footer.section_start(vortex_storage::sstable::table::Section::Vectors) + 5,
    );
    let damaged = expect(a, &["scrub"], 1);
    assert!(damaged.contains("1 table(s) found damaged"), "{damaged}");
    // The table's own range, as its footer says, and its number from its file name.
    let number = vortex_storage::sstable::table::parse_table_name(
        &table.file_name().unwrap().to_string_lossy(),
    )
    .unwrap();
    let line = format!(
        "fenced: collection `docs` ids {}..={} (LEU 0, table {number}): ",
        footer.smallest, footer.largest
    );
    assert!(damaged.contains(&line), "{damaged}");
    let listed = expect(a, &["fenced"], 1);
    assert!(
        listed.contains(&line) && listed.contains("vector"),
        "{listed}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&expect(a, &["fenced", "--json"], 1)).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["collection"], "docs");
    assert_eq!(listed[0]["first"], footer.smallest);
    assert_eq!(listed[0]["last"], footer.largest);
    assert_eq!(listed[0]["table"], number);
    // A client sees the same table.
    let fenced = client.fenced().unwrap();
    assert_eq!(fenced.len(), 1);
    assert_eq!(
        (fenced[0].first, fenced[0].last, fenced[0].table),
        (footer.smallest, footer.largest, number)
    );
    let stats = client.stats().unwrap();
    assert_eq!(
        vortex_vbp::message::counters_sum(&stats, &["fenced_tables"]),
        1
    );
    drop(client);
    appliance.stop().unwrap();
}
