//! The shard crash loop: SIGKILL a process that upserts and deletes points while flushes,
//! side-car index builds and compactions run, again and again; after every kill, open the
//! shard and check that no acknowledged write is missing, that every segment's index agrees
//! with its SSTable, and that searches return live points at their current distances.
//!
//! ```text
//! vortex-shard-crashloop [--cycles N] [--seed S] [--dir DIR] [--kill-after-ms-max M]
//! ```
//!
//! Op `X` upserts (or, for one op in seven, deletes) point `splitmix(X) mod 3000` of the
//! collection `crash` (16-d, l2), its vector and payload functions of `X`. The child prints
//! `issued LAST` before each batch of 32 ops and `ack FIRST LAST` once the batch is durable;
//! the MemTable is capped at 256 entries, so segments and their indexes are built all the
//! time.

#[path = "../../../storage/src/bin/shared/crashloop.rs"]
mod crashloop;

use crashloop::{kill_cycle, number, splitmix, value, write_batches, Knowledge, LoopArgs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vortex_shard::{SearchRequest, Shard, ShardOptions};
use vortex_storage::StoreOptions;
use vortex_vbp::message::{
    CollectionSpec, Metric, Payload, PayloadField, PayloadValue, VectorType,
};

const POINTS: u64 = 3_000;
const BATCH: u64 = 32;
const DIMENSION: usize = 16;
const COLLECTION: &str = "crash";
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(30);
const CYCLE_OPS: u64 = 100_000_000;

fn options() -> ShardOptions {
    ShardOptions {
        store: StoreOptions {
            memtable_entries_max: 256,
            table_bytes_target: 64 << 10,
            l0_compaction_trigger: 3,
            l0_stop: 12,
            level1_bytes: 256 << 10,
            level_multiplier: 4,
            compaction_bytes_per_second: 0,
            scrub_bytes_per_second: 0,
            ..StoreOptions::default()
        },
        ..ShardOptions::default()
    }
}

fn operation(op: u64) -> (u64, bool) {
    let mut state = op;
    (splitmix(&mut state) % POINTS, op.is_multiple_of(7))
}

fn vector_of(op: u64) -> Vec<f32> {
    let mut state = op ^ 0x5851_F42D_4C95_7F2D;
    (0..DIMENSION)
        .map(|_| (splitmix(&mut state) >> 40) as f32 / (1u64 << 24) as f32)
        .collect()
}

fn payload_of(op: u64) -> Payload {
    Payload {
        fields: vec![PayloadField {
            key: "op".into(),
            value: PayloadValue::Int(op as i64),
        }],
    }
}

fn open(dir: &Path) -> Result<Shard, String> {
    let (mut shard, _) = Shard::open(dir, options()).map_err(|error| format!("open: {error}"))?;
    if shard.describe_collection(COLLECTION).is_err() {
        shard
            .create_collection(CollectionSpec {
                name: COLLECTION.into(),
                dimension: DIMENSION as u32,
                metric: Metric::L2,
                m: 8,
                ef_construction: 32,
                vector_type: VectorType::F32,
            })
            .map_err(|error| format!("create: {error}"))?;
    }
    Ok(shard)
}

fn main() -> ExitCode {
    crashloop::run(child, parent)
}

fn child(args: &[String]) -> Result<(), String> {
    let dir = PathBuf::from(value(args, "--dir").ok_or("child needs --dir")?);
    let op = number(args, "--op-start", 1)?;
    let mut shard = open(&dir)?;
    write_batches(&mut shard, op, BATCH, CHILD_LIFETIME_MAX, write, poll)
}

/// Op `op` on the shard: its sequence number, or `None` when THROTTLED.
fn write(shard: &mut Shard, op: u64) -> Result<Option<u64>, String> {
    let (point, delete) = operation(op);
    let result = if delete {
        shard.delete(COLLECTION, &[point])
    } else {
        shard.upsert(COLLECTION, &[point], &vector_of(op), &[payload_of(op)])
    };
    match result {
        Ok(sequence) => Ok(Some(sequence)),
        Err(error) if error.is_throttled() => Ok(None),
        Err(error) => Err(format!("write: {error}")),
    }
}

fn poll(shard: &mut Shard, wait: Duration) -> Result<u64, String> {
    shard
        .poll(Some(wait))
        .map_err(|error| format!("poll: {error}"))
}

fn check(knowledge: &Knowledge, shard: &Shard, random: &mut u64) -> Result<usize, String> {
    let ids: Vec<u64> = (0..POINTS).collect();
    let found = shard
        .get(COLLECTION, &ids, true, true)
        .map_err(|error| format!("get: {error}"))?;
    let mut found = found.into_iter().peekable();
    for point in 0..POINTS {
        let record = found.next_if(|record| record.id == point);
        let op = match record {
            Some(record) => {
                let Some(PayloadValue::Int(op)) = record
                    .payload
                    .as_ref()
                    .and_then(|p| p.fields.first())
                    .map(|f| f.value.clone())
                else {
                    return Err(format!("point {point}: payload without an op"));
                };
                let op = op as u64;
                if record.vector != vector_of(op) {
                    return Err(format!("point {point}: op {op}'s vector is damaged"));
                }
                Some(op)
            }
            None => None,
        };
        knowledge.check_point(point, op)?;
    }
    let indexes = shard
        .verify_indexes()
        .map_err(|error| format!("index check: {error}"))?;
    for _ in 0..5 {
        let query = vector_of(splitmix(random));
        let hits = shard
            .search(&SearchRequest {
                collection: COLLECTION,
                vector: &query,
                k: 10,
                ef: 200,
                filter: None,
                with_payload: false,
            })
            .map_err(|error| format!("search: {error}"))?;
        for hit in hits {
            let live = shard
                .get(COLLECTION, &[hit.id], true, false)
                .map_err(|error| error.to_string())?;
            let Some(record) = live.first() else {
                return Err(format!("search returned deleted point {}", hit.id));
            };
            let current: f32 = record
                .vector
                .iter()
                .zip(&query)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            if (current - hit.distance).abs() > 1e-4 * (1.0 + current) {
                return Err(format!(
                    "search returned a stale version of point {}",
                    hit.id
                ));
            }
        }
    }
    Ok(indexes)
}

fn parent(args: &[String]) -> Result<(), String> {
    // Kept whole until the end: it owns the scratch directory.
    let settings = LoopArgs::parse(args, "shard", 400)?;
    let (cycles, seed, kill_after_ms_max) =
        (settings.cycles, settings.seed, settings.kill_after_ms_max);
    let dir = settings.dir.clone();
    let mut random = seed;
    let mut knowledge = Knowledge::new(BATCH, operation);
    let mut indexes_checked = 0;
    let started = Instant::now();
    for cycle in 0..cycles {
        let delay_ms = 30 + splitmix(&mut random) % kill_after_ms_max;
        kill_cycle(&dir, cycle * CYCLE_OPS + 1, delay_ms, &mut knowledge)
            .map_err(|error| format!("cycle {cycle}: {error}; seed {seed}"))?;
        let shard = open(&dir).map_err(|error| format!("cycle {cycle}: {error}; seed {seed}"))?;
        let checked = check(&knowledge, &shard, &mut random)
            .map_err(|error| format!("cycle {cycle}: {error}; seed {seed}"))?;
        indexes_checked += checked;
        if cycle % 5 == 0 || cycle + 1 == cycles {
            println!(
                "cycle {cycle}: killed after {delay_ms} ms; {} ops acknowledged so far; {checked} \
                 segment indexes agree with their tables",
                knowledge.acknowledged_ops
            );
        }
        shard.close().map_err(|error| format!("close: {error}"))?;
    }
    println!(
        "ok: {cycles} SIGKILL cycles, {} ops acknowledged and all present; {indexes_checked} \
         segment indexes checked against their tables; {:.1} s",
        knowledge.acknowledged_ops,
        started.elapsed().as_secs_f64()
    );
    if knowledge.acknowledged_ops == 0 || indexes_checked == 0 {
        return Err("nothing was acknowledged or indexed: the loop tested nothing".to_owned());
    }
    Ok(())
}
