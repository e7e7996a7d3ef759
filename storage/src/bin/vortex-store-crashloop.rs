//! The store crash loop: SIGKILL a process that writes to the LSM store while flushes and
//! compactions run, again and again, and check after every kill that the store opens
//! consistent and holds every acknowledged write.
//!
//! ```text
//! vortex-store-crashloop [--cycles N] [--seed S] [--dir DIR] [--kill-after-ms-max M]
//! ```
//!
//! The child writes numbered operations (op `X` puts or deletes a key that is a function of
//! `X`; a put's vector and payload are functions of `X` too) in batches. Before a batch it
//! prints `issued LAST`; once the batch is durable, `ack FIRST LAST`. Its store has a tiny
//! MemTable and tiny levels, so flushes and compactions run all the time, and its side-car
//! hook takes 30 ms per table (as an index build would), so a kill often lands between a
//! table being written and being published. The parent kills the child after a random
//! delay, then opens the store itself and checks every key: the value is the last
//! acknowledged operation on it or one issued after it, never older, never invented, and a
//! missing key is explained by a delete. Leftover tables removed at open show the kill
//! interrupted a flush or a compaction; the run reports how often.

#[path = "shared/crashloop.rs"]
mod crashloop;

use crashloop::{kill_cycle, number, splitmix, value, write_batches, Knowledge, LoopArgs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vortex_io::RingConfig;
use vortex_storage::sstable::table::Table;
use vortex_storage::store::{CompactionHook, StoreHooks};
use vortex_storage::wal::WalOptions;
use vortex_storage::{DirectIo, Key, PosixEnv, StorageError, Store, StoreOptions};

/// Keys written (points 0..KEYS, spread over two collections).
const KEYS: u64 = 4_000;
/// Operations per acknowledged batch.
const BATCH: u64 = 64;
/// How long a child writes at most if nobody kills it.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(30);
/// Op numbers of cycle `c` start at `c × CYCLE_OPS + 1`.
const CYCLE_OPS: u64 = 100_000_000;

fn options() -> StoreOptions {
    StoreOptions {
        wal: WalOptions {
            segment_bytes_target: 1 << 20,
            ..WalOptions::default()
        },
        memtable_bytes: 192 << 10,
        table_bytes_target: 96 << 10,
        l0_compaction_trigger: 3,
        l0_stop: 12,
        level1_bytes: 512 << 10,
        level_multiplier: 4,
        compaction_bytes_per_second: 0,
        scrub_bytes_per_second: 0,
        ..StoreOptions::default()
    }
}

/// The side-car builder's stand-in: takes a while, as an index build would.
struct SlowSideCar;

impl CompactionHook for SlowSideCar {
    fn table_written(&self, _table: &Table) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(30));
        Ok(())
    }
}

/// What operation `op` does: its point, and whether it deletes.
fn operation(op: u64) -> (u64, bool) {
    let mut state = op;
    (splitmix(&mut state) % KEYS, op.is_multiple_of(5))
}

/// The key of a point: two collections, by parity.
fn key_of(point: u64) -> Key {
    Key {
        collection: 1 + (point % 2) as u32,
        point,
    }
}

/// The vector and payload operation `op` puts.
fn content(op: u64) -> (Vec<u8>, Vec<u8>) {
    let mut state = op ^ 0xA076_1D64_78BD_642F;
    let vector: Vec<u8> = (0..8)
        .flat_map(|_| (splitmix(&mut state) as u32).to_le_bytes())
        .collect();
    let mut payload = op.to_le_bytes().to_vec();
    let extra = splitmix(&mut state) % 600;
    while (payload.len() as u64) < 8 + extra {
        payload.extend_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    payload.truncate(8 + extra as usize);
    (vector, payload)
}

fn open(dir: &Path, hooks: StoreHooks) -> Result<(Store<PosixEnv>, usize), String> {
    let env = PosixEnv::new(&RingConfig::plain(256), DirectIo::Auto)
        .map_err(|error| format!("io_uring: {error}"))?;
    let (store, report) =
        Store::open(env, dir, options(), hooks).map_err(|error| format!("open: {error}"))?;
    if report.quarantined > 0 {
        return Err(format!("{} tables quarantined at open", report.quarantined));
    }
    Ok((store, report.orphans_removed))
}

fn main() -> ExitCode {
    crashloop::run(child, parent)
}

/// The child: write batches until killed.
fn child(args: &[String]) -> Result<(), String> {
    let dir = PathBuf::from(value(args, "--dir").ok_or("child needs --dir")?);
    let op = number(args, "--op-start", 1)?;
    let hooks = StoreHooks {
        compaction: Arc::new(SlowSideCar),
        ..StoreHooks::default()
    };
    let (mut store, _) = open(&dir, hooks)?;
    write_batches(&mut store, op, BATCH, CHILD_LIFETIME_MAX, write, poll)
}

/// Op `op` on the store: its sequence number, or `None` when THROTTLED.
fn write(store: &mut Store<PosixEnv>, op: u64) -> Result<Option<u64>, String> {
    let (point, delete) = operation(op);
    let key = key_of(point);
    let result = if delete {
        store.delete(key)
    } else {
        let (vector, payload) = content(op);
        store.put(key, &vector, &payload)
    };
    match result {
        Ok(sequence) => Ok(Some(sequence)),
        Err(StorageError::Throttled(_)) => Ok(None),
        Err(error) => Err(format!("write: {error}")),
    }
}

fn poll(store: &mut Store<PosixEnv>, wait: Duration) -> Result<u64, String> {
    store
        .poll(Some(wait))
        .map_err(|error| format!("poll: {error}"))
}

/// Checks every key of the store against what was acknowledged.
fn check(knowledge: &Knowledge, store: &Store<PosixEnv>) -> Result<(), String> {
    for point in 0..KEYS {
        let key = key_of(point);
        let found = store
            .get(&key)
            .map_err(|error| format!("get {key:?}: {error}"))?;
        let op = match found {
            Some(found) => {
                let op = found
                    .payload
                    .first_chunk::<8>()
                    .map(|b| u64::from_le_bytes(*b))
                    .ok_or_else(|| format!("{key:?}: payload without an op number"))?;
                let (vector, payload) = content(op);
                if found.vector != vector || found.payload != payload {
                    return Err(format!("{key:?}: op {op}'s content is damaged"));
                }
                Some(op)
            }
            None => None,
        };
        knowledge.check_point(point, op)?;
    }
    // A scan sees exactly what gets see.
    for collection in 1..=2 {
        let mut after = None;
        loop {
            let page = store
                .scan(collection, after, 500)
                .map_err(|error| format!("scan: {error}"))?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (point, found) in page {
                let key = Key { collection, point };
                let got = store.get(&key).map_err(|error| error.to_string())?;
                if got.as_ref() != Some(&found) {
                    return Err(format!("scan and get disagree on {key:?}"));
                }
            }
        }
    }
    Ok(())
}

fn parent(args: &[String]) -> Result<(), String> {
    // Kept whole until the end: it owns the scratch directory.
    let settings = LoopArgs::parse(args, "store", 400)?;
    let (cycles, seed, kill_after_ms_max) =
        (settings.cycles, settings.seed, settings.kill_after_ms_max);
    let dir = settings.dir.clone();
    let mut random = seed;
    let mut knowledge = Knowledge::new(BATCH, operation);
    let mut interrupted = 0u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        let delay_ms = 20 + splitmix(&mut random) % kill_after_ms_max;
        kill_cycle(&dir, cycle * CYCLE_OPS + 1, delay_ms, &mut knowledge)
            .map_err(|error| format!("cycle {cycle}: {error}; seed {seed}"))?;
        let (store, orphans) = open(&dir, StoreHooks::default())
            .map_err(|error| format!("cycle {cycle}: {error}; seed {seed}"))?;
        if orphans > 0 {
            interrupted += 1;
        }
        check(&knowledge, &store)
            .map_err(|error| format!("cycle {cycle}: {error}; seed {seed}"))?;
        let stats = store.stats();
        if cycle % 5 == 0 || cycle + 1 == cycles {
            let tables: Vec<usize> = stats.levels.iter().map(|level| level.tables).collect();
            println!(
                "cycle {cycle}: killed after {delay_ms} ms; {} ops acknowledged so far; tables \
                 per level {tables:?}; leftovers removed {orphans}",
                knowledge.acknowledged_ops
            );
        }
        store.close().map_err(|error| format!("close: {error}"))?;
    }
    println!(
        "ok: {cycles} SIGKILL cycles, {} ops acknowledged and all present; {interrupted} kills \
         interrupted a flush or compaction; {:.1} s",
        knowledge.acknowledged_ops,
        started.elapsed().as_secs_f64()
    );
    if knowledge.acknowledged_ops == 0 {
        return Err("no write was ever acknowledged: the loop tested nothing".to_owned());
    }
    Ok(())
}
