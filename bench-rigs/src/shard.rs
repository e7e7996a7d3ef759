//! The shard benchmark (issue #7): ingest a dataset into one shard with side-car indexes
//! built in the background, search while ingest runs and after it settles, restart, and
//! measure what each vector costs.
//!
//! - **Ingest**: upserts in batches of `batch`, each acknowledged (durable) before the next;
//!   flushes, side-car HNSW builds and compactions run on the store's background pool.
//! - **Search during ingest**: at each tenth of the load, `queries_during` queries at the
//!   first `ef`; recall@10 against exact top-10 over the points ingested so far (brute
//!   force), and queries per second.
//! - **After ingest**: the time until no flush or compaction is due (index builds included),
//!   then QPS and recall@10 (against the dataset's ground truth) for each `ef`.
//! - **Restart**: close, reopen; time to ready (catalog, WAL replay, side-cars mapped,
//!   payload indexes and superseded sets rebuilt).
//! - **Bytes per vector**: disk (tables plus side-cars) per vector, and the growth of the
//!   process's resident set across the reopen and a search pass, per vector; also its
//!   proportional set (PSS, which counts a file page mapped twice once) by kind of mapping.
//!
//! One thread queries (an LEU's view); the background pool has its default two threads.

use crate::ann::{resident_by_kind, resident_bytes};
use crate::dataset::Dataset;
use crate::disk_bytes;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vortex_shard::{SearchRequest, Shard, ShardOptions};
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

/// What to run.
#[derive(Debug, Clone)]
pub struct ShardBenchConfig {
    /// The dataset directory (from `vortex-bench dataset`).
    pub data: PathBuf,
    /// Scratch directory for the shard (replaced).
    pub dir: PathBuf,
    /// Points per upsert.
    pub batch: usize,
    /// Beam widths after ingest.
    pub ef: Vec<usize>,
    /// Queries at each tenth of the load.
    pub queries_during: usize,
    /// HNSW `m` and `ef_construction`.
    pub m: u16,
    pub ef_construction: u16,
    /// Index vectors as `i8`.
    pub quantized: bool,
    /// Ids scattered over the key space (see [`point_id`]) instead of rows in order.
    pub scattered_ids: bool,
}

/// The point id of dataset row `row`: the row itself, or scattered over the key space by an
/// odd multiplier (a bijection on `u64`), as hashed ids would be.
fn point_id(row: usize, scattered: bool) -> u64 {
    if scattered {
        (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    } else {
        row as u64
    }
}

/// Proportional resident bytes (PSS) per vector, by kind of mapping (see
/// `resident_by_kind`).
#[derive(Debug, Clone, Serialize)]
pub struct ResidentParts {
    /// Everything.
    pub total: f64,
    /// SSTable mappings (the vector region the graphs read, and data blocks).
    pub tables: f64,
    /// Side-car index mappings (links, labels, codes).
    pub indexes: f64,
    /// Heap: MemTable, payload indexes, key lists, search scratch.
    pub anonymous: f64,
}

/// Search figures at one point.
#[derive(Debug, Clone, Serialize)]
pub struct SearchFigures {
    pub points: usize,
    pub ef: usize,
    pub queries: usize,
    pub qps: f64,
    pub recall_at_10: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ShardResult {
    pub command: String,
    pub dataset: String,
    pub points: usize,
    pub dim: usize,
    pub ingest_seconds: f64,
    pub ingest_points_per_second: f64,
    pub settle_seconds: f64,
    pub during_ingest: Vec<SearchFigures>,
    pub after_ingest: Vec<SearchFigures>,
    pub segments: usize,
    pub time_to_ready_ms: f64,
    pub disk_bytes_per_vector: f64,
    pub resident_bytes_per_vector: f64,
    /// The resident growth per vector by kind of mapping.
    pub resident_parts: ResidentParts,
    pub scattered_ids: bool,
    /// Graph nodes inserted, and carried over from earlier graphs, by index builds.
    pub index_nodes_inserted: u64,
    pub index_nodes_carried: u64,
}

fn metric_of(name: &str) -> anyhow::Result<Metric> {
    Ok(match name {
        "l2" => Metric::L2,
        "ip" => Metric::Ip,
        "cosine" => Metric::Cosine,
        other => anyhow::bail!("unknown metric {other}"),
    })
}

fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        Metric::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        Metric::Ip => -dot,
        Metric::Cosine => {
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-30);
            1.0 - dot / (norm(a) * norm(b))
        }
    }
}

/// Runs `queries` and returns (qps, recall@10) against `truth(query) -> top-10 ids`.
fn measure(
    shard: &Shard,
    data: &Dataset,
    queries: usize,
    ef: usize,
    truth: &dyn Fn(usize) -> Vec<u64>,
) -> anyhow::Result<(f64, f64)> {
    let queries = queries.min(data.queries.len());
    let mut hits_total = 0usize;
    let mut elapsed = Duration::ZERO;
    for query in 0..queries {
        let started = Instant::now();
        let hits = shard.search(&SearchRequest {
            collection: "bench",
            vector: data.queries.row(query),
            k: 10,
            ef,
            filter: None,
            with_payload: false,
        })?;
        elapsed += started.elapsed();
        let want = truth(query);
        hits_total += hits.iter().filter(|hit| want.contains(&hit.id)).count();
    }
    Ok((
        queries as f64 / elapsed.as_secs_f64().max(1e-9),
        hits_total as f64 / (queries * 10).max(1) as f64,
    ))
}

/// Runs the benchmark.
pub fn run(config: &ShardBenchConfig, command: &str) -> anyhow::Result<ShardResult> {
    let data = Dataset::load(&config.data)?;
    let metric = metric_of(&data.meta.metric)?;
    let dim = data.meta.dim;
    let count = data.base.len();
    let _ = std::fs::remove_dir_all(&config.dir);
    let (mut shard, _) = Shard::open(&config.dir, ShardOptions::default())?;
    shard.create_collection(CollectionSpec {
        name: "bench".into(),
        dimension: dim as u32,
        metric,
        m: config.m,
        ef_construction: config.ef_construction,
        vector_type: if config.quantized {
            VectorType::I8
        } else {
            VectorType::F32
        },
    })?;
    let first_ef = config.ef.first().copied().unwrap_or(64);
    let mut during = Vec::new();
    let mut ingest_time = Duration::ZERO;
    let mut next_probe = count / 10;
    let mut loaded = 0usize;
    while loaded < count {
        let end = (loaded + config.batch).min(count);
        let ids: Vec<u64> = (loaded..end)
            .map(|row| point_id(row, config.scattered_ids))
            .collect();
        let vectors = &data.base.values[loaded * dim..end * dim];
        let started = Instant::now();
        let last = loop {
            match shard.upsert("bench", &ids, vectors, &[]) {
                Ok(sequence) => break sequence,
                Err(error) if error.is_throttled() => {
                    shard.poll(Some(Duration::from_millis(2)))?;
                }
                Err(error) => return Err(error.into()),
            }
        };
        while shard.poll(Some(Duration::from_millis(5)))? < last {}
        ingest_time += started.elapsed();
        loaded = end;
        if loaded >= next_probe && loaded < count && config.queries_during > 0 {
            next_probe += count / 10;
            let ingested = loaded;
            let truth = |query: usize| -> Vec<u64> {
                let q = data.queries.row(query);
                let mut scored: Vec<(f32, u64)> = (0..ingested)
                    .map(|row| {
                        let id = point_id(row, config.scattered_ids);
                        (distance(metric, q, data.base.row(row)), id)
                    })
                    .collect();
                let nth = 9.min(scored.len() - 1);
                scored.select_nth_unstable_by(nth, |a, b| a.0.total_cmp(&b.0));
                scored.truncate(10);
                scored.into_iter().map(|(_, id)| id).collect()
            };
            let (qps, recall) = measure(&shard, &data, config.queries_during, first_ef, &truth)?;
            eprintln!("{ingested} ingested: {qps:.0} QPS, recall@10 {recall:.3} (ef {first_ef})");
            during.push(SearchFigures {
                points: ingested,
                ef: first_ef,
                queries: config.queries_during,
                qps,
                recall_at_10: recall,
            });
        }
    }
    let settling = Instant::now();
    shard.wait_idle()?;
    let settle_seconds = settling.elapsed().as_secs_f64();
    let truth = |query: usize| -> Vec<u64> {
        data.truth.row(query)[..10]
            .iter()
            .map(|&row| point_id(row as usize, config.scattered_ids))
            .collect()
    };
    let mut after = Vec::new();
    for &ef in &config.ef {
        let (qps, recall) = measure(&shard, &data, data.queries.len(), ef, &truth)?;
        eprintln!("settled: ef {ef}: {qps:.0} QPS, recall@10 {recall:.3}");
        after.push(SearchFigures {
            points: count,
            ef,
            queries: data.queries.len(),
            qps,
            recall_at_10: recall,
        });
    }
    let stats = shard.stats();
    let segments = stats.segments;
    shard.close()?;
    let resident_before = resident_bytes();
    let kinds_before = resident_by_kind();
    let (shard, report) = Shard::open(&config.dir, ShardOptions::default())?;
    measure(&shard, &data, data.queries.len(), first_ef, &truth)?;
    let resident = (resident_bytes() - resident_before).max(0) as f64;
    let kinds_after = resident_by_kind();
    let per_vector = |after: u64, before: u64| after.saturating_sub(before) as f64 / count as f64;
    let resident_parts = ResidentParts {
        total: per_vector(kinds_after.total(), kinds_before.total()),
        tables: per_vector(kinds_after.tables, kinds_before.tables),
        indexes: per_vector(kinds_after.indexes, kinds_before.indexes),
        anonymous: per_vector(kinds_after.anonymous, kinds_before.anonymous),
    };
    drop(shard);
    let disk = disk_bytes(&config.dir) as f64;
    let result = ShardResult {
        command: command.to_owned(),
        dataset: data.meta.name.clone(),
        points: count,
        dim,
        ingest_seconds: ingest_time.as_secs_f64(),
        ingest_points_per_second: count as f64 / ingest_time.as_secs_f64(),
        settle_seconds,
        during_ingest: during,
        after_ingest: after,
        segments,
        time_to_ready_ms: report.time_to_ready.as_secs_f64() * 1e3,
        disk_bytes_per_vector: disk / count as f64,
        resident_bytes_per_vector: resident / count as f64,
        resident_parts,
        scattered_ids: config.scattered_ids,
        index_nodes_inserted: stats.index_nodes_inserted,
        index_nodes_carried: stats.index_nodes_carried,
    };
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(result)
}

/// The result as Markdown.
pub fn render(result: &ShardResult) -> String {
    let mut out = format!(
        "`{}`\n\n{} × {}: ingest {:.0} points/s ({:.1} s), then {:.1} s until no flush or \
         compaction was due; {} segments; time to ready after a restart {:.0} ms; {:.0} bytes \
         per vector on disk, {:.0} resident set, {:.0} proportional ({:.0} table mappings, {:.0} \
         index mappings, {:.0} heap); ids {}; index builds inserted {} nodes and \
         carried {}\n\n| when | points | ef | QPS | recall@10 |\n|---|---:|---:|---:|---:|\n",
        result.command,
        result.points,
        result.dim,
        result.ingest_points_per_second,
        result.ingest_seconds,
        result.settle_seconds,
        result.segments,
        result.time_to_ready_ms,
        result.disk_bytes_per_vector,
        result.resident_bytes_per_vector,
        result.resident_parts.total,
        result.resident_parts.tables,
        result.resident_parts.indexes,
        result.resident_parts.anonymous,
        if result.scattered_ids {
            "scattered"
        } else {
            "in order"
        },
        result.index_nodes_inserted,
        result.index_nodes_carried
    );
    for (when, figures) in [
        ("during ingest", &result.during_ingest),
        ("settled", &result.after_ingest),
    ] {
        for f in figures {
            out.push_str(&format!(
                "| {when} | {} | {} | {:.0} | {:.3} |\n",
                f.points, f.ef, f.qps, f.recall_at_10
            ));
        }
    }
    out
}

/// Parses the dataset directory argument's existence early, with a clear message.
pub fn check_data(path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.join("meta.json").exists(),
        "{} is not a dataset directory: generate one with `vortex-bench dataset --preset clustered-128-l2 --n 100000`",
        path.display()
    );
    std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(())
}
