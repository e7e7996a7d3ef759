//! The LSM benchmark (issue #6): random upserts of fixed-size values, then random point
//! lookups, on our store and on `fjall` (an established embedded LSM store in Rust), same
//! workload, same durability, same process, one after the other.
//!
//! Durability is matched: our store acknowledges a write once its WAL record is durable
//! (`O_DIRECT | O_DSYNC` or `fdatasync`); the loop keeps `batch` writes outstanding and waits
//! for them as a group. For fjall each group of `batch` inserts is followed by
//! `Keyspace::persist(PersistMode::SyncData)`, the same group commit.
//!
//! Keys are point ids drawn uniformly from `0..keys` in collection 1 (so about 37 % of
//! upserts overwrite). Our value is a `value_bytes` vector (it lands in the SSTables' vector
//! region) with an empty payload; fjall's is the same bytes, pseudo-random so that neither
//! engine gains from compression (fjall compresses its blocks with LZ4; we do not). Write amplification is the
//! process's `write_bytes` from `/proc/self/io` (what reached the block layer, WAL or
//! journal included, background threads included) over the keys and values written; ours is
//! also given from the store's own counters. Lookups draw from the same key space (about 37 %
//! were never written: misses, which exercise the bloom filters), after the load and with
//! background work left running as it was. Both engines may end the load with compaction
//! debt; for ours the run then waits until no compaction is due and reports how long that
//! took and the write amplification with the debt paid (fjall has no such call).

use crate::disk_bytes;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vortex_io::RingConfig;
use vortex_storage::{DirectIo, Key, PosixEnv, StorageError, Store, StoreOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct LsmBenchConfig {
    /// Scratch directory (its `vortex/` and `fjall/` are replaced).
    pub dir: PathBuf,
    /// Upserts.
    pub ops: u64,
    /// Key space.
    pub keys: u64,
    /// Value bytes.
    pub value_bytes: usize,
    /// Writes per group commit.
    pub batch: usize,
    /// Point lookups after the load.
    pub lookups: u64,
    /// Which engines: `vortex`, `fjall`.
    pub engines: Vec<String>,
}

/// One engine's result.
#[derive(Debug, Clone, Serialize)]
pub struct LsmRun {
    pub engine: String,
    pub ops: u64,
    pub value_bytes: usize,
    pub load_seconds: f64,
    pub upserts_per_second: f64,
    /// Bytes the process wrote to the block layer during the load, per user byte.
    pub write_amplification: f64,
    /// Our store's own count (WAL + flushes + compactions), where there is one.
    pub write_amplification_internal: Option<f64>,
    pub lookups: u64,
    pub lookups_per_second: f64,
    pub lookup_misses: u64,
    /// Bytes on disk at the end.
    pub disk_bytes: u64,
    /// Ours: level-0 tables when the load ended (compaction debt).
    pub l0_tables_after_load: Option<usize>,
    /// Ours: seconds until no flush or compaction was due any more, after the lookups.
    pub settle_seconds: Option<f64>,
    /// Ours: write amplification with that debt paid.
    pub write_amplification_settled: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LsmResult {
    pub command: String,
    pub runs: Vec<LsmRun>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The process's bytes written to storage so far.
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The workload: the `index`th upsert's point id and value.
struct Workload {
    keys: u64,
    value: Vec<u8>,
    state: u64,
}

impl Workload {
    fn new(keys: u64, value_bytes: usize) -> Self {
        Workload {
            keys,
            value: vec![0u8; value_bytes],
            state: 42,
        }
    }

    fn next(&mut self) -> (u64, &[u8]) {
        let point = splitmix(&mut self.state) % self.keys;
        // Incompressible, like an embedding: fjall compresses blocks (LZ4), we do not.
        for chunk in self.value.chunks_mut(8) {
            let word = splitmix(&mut self.state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        (point, &self.value)
    }
}

/// Runs the load: `write_group(workload, n)` writes `n` upserts and returns once they are
/// durable. Returns the seconds it took and the block-layer bytes written per user byte.
fn load(
    config: &LsmBenchConfig,
    mut write_group: impl FnMut(&mut Workload, u64) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let mut workload = Workload::new(config.keys, config.value_bytes);
    let written_before = write_bytes();
    let started = Instant::now();
    let mut done = 0u64;
    while done < config.ops {
        let group = (config.batch as u64).min(config.ops - done);
        write_group(&mut workload, group)?;
        done += group;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        seconds,
        (write_bytes() - written_before) as f64 / user_bytes(config),
    ))
}

fn user_bytes(config: &LsmBenchConfig) -> f64 {
    (config.ops * (12 + config.value_bytes as u64)) as f64
}

/// Random point lookups over the key space: `get(point)` says whether it was found.
/// Returns lookups per second and misses.
fn lookups(
    config: &LsmBenchConfig,
    mut get: impl FnMut(u64) -> anyhow::Result<bool>,
) -> anyhow::Result<(f64, u64)> {
    let mut probe = 7u64;
    let mut misses = 0;
    let started = Instant::now();
    for _ in 0..config.lookups {
        if !get(splitmix(&mut probe) % config.keys)? {
            misses += 1;
        }
    }
    Ok((
        config.lookups as f64 / started.elapsed().as_secs_f64(),
        misses,
    ))
}

fn fjall_key(point: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&1u32.to_be_bytes());
    key[4..].copy_from_slice(&point.to_be_bytes());
    key
}

fn run_vortex(config: &LsmBenchConfig) -> anyhow::Result<LsmRun> {
    let dir = config.dir.join("vortex");
    let _ = std::fs::remove_dir_all(&dir);
    let env = PosixEnv::new(&RingConfig::plain(256), DirectIo::Auto)?;
    let options = StoreOptions {
        scrub_bytes_per_second: 0,
        compaction_bytes_per_second: 0,
        ..StoreOptions::default()
    };
    let (mut store, _) = Store::open(env, &dir, options, Default::default())?;
    let written_before = write_bytes();
    let (load_seconds, write_amplification) = load(config, |workload, group| {
        let mut last = 0;
        for _ in 0..group {
            let (point, value) = workload.next();
            let key = Key {
                collection: 1,
                point,
            };
            loop {
                match store.put(key, value, &[]) {
                    Ok(sequence) => {
                        last = sequence;
                        break;
                    }
                    Err(StorageError::Throttled(_)) => {
                        store.poll(Some(Duration::from_millis(1)))?;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        while store.poll(Some(Duration::from_millis(5)))? < last {}
        Ok(())
    })?;
    let internal = store.stats().write_amplification();
    let l0_tables = store.stats().levels[0].tables;
    let (lookups_per_second, misses) = lookups(config, |point| {
        let key = Key {
            collection: 1,
            point,
        };
        Ok(store.get(&key)?.is_some())
    })?;
    let settling = Instant::now();
    store.wait_idle()?;
    let settle_seconds = settling.elapsed().as_secs_f64();
    let settled = (write_bytes() - written_before) as f64 / user_bytes(config);
    let stats = store.stats();
    eprintln!("vortex levels after settling: {:?}", stats.levels);
    store.close()?;
    Ok(LsmRun {
        engine: "vortex".into(),
        ops: config.ops,
        value_bytes: config.value_bytes,
        load_seconds,
        upserts_per_second: config.ops as f64 / load_seconds,
        write_amplification,
        write_amplification_internal: Some(internal),
        lookups: config.lookups,
        lookups_per_second,
        lookup_misses: misses,
        disk_bytes: disk_bytes(&dir),
        l0_tables_after_load: Some(l0_tables),
        settle_seconds: Some(settle_seconds),
        write_amplification_settled: Some(settled),
    })
}

fn run_fjall(config: &LsmBenchConfig) -> anyhow::Result<LsmRun> {
    let dir = config.dir.join("fjall");
    let _ = std::fs::remove_dir_all(&dir);
    let keyspace = fjall::Config::new(&dir).open().context("fjall open")?;
    let items = keyspace
        .open_partition("items", fjall::PartitionCreateOptions::default())
        .context("fjall partition")?;
    let (load_seconds, write_amplification) = load(config, |workload, group| {
        for _ in 0..group {
            let (point, value) = workload.next();
            items.insert(fjall_key(point), value)?;
        }
        keyspace.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    })?;
    let (lookups_per_second, misses) =
        lookups(config, |point| Ok(items.get(fjall_key(point))?.is_some()))?;
    drop(items);
    drop(keyspace);
    Ok(LsmRun {
        engine: "fjall".into(),
        ops: config.ops,
        value_bytes: config.value_bytes,
        load_seconds,
        upserts_per_second: config.ops as f64 / load_seconds,
        write_amplification,
        write_amplification_internal: None,
        lookups: config.lookups,
        lookups_per_second,
        lookup_misses: misses,
        disk_bytes: disk_bytes(&dir),
        l0_tables_after_load: None,
        settle_seconds: None,
        write_amplification_settled: None,
    })
}

/// Runs the engines asked for, in order.
pub fn run(config: &LsmBenchConfig, command: &str) -> anyhow::Result<LsmResult> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating {}", config.dir.display()))?;
    let mut runs = Vec::new();
    for engine in &config.engines {
        let run = match engine.as_str() {
            "vortex" => run_vortex(config)?,
            "fjall" => run_fjall(config)?,
            other => anyhow::bail!("unknown engine `{other}`: use vortex or fjall"),
        };
        eprintln!("{run:?}");
        runs.push(run);
        let _ = std::fs::remove_dir_all(config.dir.join(engine));
    }
    Ok(LsmResult {
        command: command.to_owned(),
        runs,
    })
}

/// A Markdown table with ratios against fjall.
pub fn render(result: &LsmResult) -> String {
    let mut out = format!("`{}`\n\n", result.command);
    out.push_str(
        "| engine | upserts/s | write amp. (block layer) | lookups/s | disk bytes |\n\
         |---|---|---|---|---|\n",
    );
    for run in &result.runs {
        out.push_str(&format!(
            "| {} | {:.0} | {:.2}{} | {:.0} | {} |\n",
            run.engine,
            run.upserts_per_second,
            run.write_amplification,
            run.write_amplification_internal
                .map_or(String::new(), |w| format!(" (internal {w:.2})")),
            run.lookups_per_second,
            run.disk_bytes
        ));
    }
    for run in &result.runs {
        if let (Some(l0), Some(settle), Some(settled)) = (
            run.l0_tables_after_load,
            run.settle_seconds,
            run.write_amplification_settled,
        ) {
            out.push_str(&format!(
                "\n{}: {l0} level-0 tables when the load ended; {settle:.1} s more to pay that \
                 compaction debt, after which write amplification is {settled:.2}\n",
                run.engine
            ));
        }
    }
    let find = |name: &str| result.runs.iter().find(|run| run.engine == name);
    if let (Some(ours), Some(theirs)) = (find("vortex"), find("fjall")) {
        out.push_str(&format!(
            "\nratios vortex/fjall: upserts/s {:.2}×, write amplification {:.2}×, lookups/s {:.2}×\n",
            ours.upserts_per_second / theirs.upserts_per_second,
            ours.write_amplification / theirs.write_amplification.max(f64::MIN_POSITIVE),
            ours.lookups_per_second / theirs.lookups_per_second
        ));
    }
    out
}
