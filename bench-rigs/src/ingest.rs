//! Searches while loading (issue #22's "during ingest" target): a dataset loaded over VBP
//! at full speed into a running dataplane while other connections search it, in windows of
//! a few seconds, each at one beam width in turn; then, in the same run, the settled
//! appliance at the same beam widths. The target compares the two: QPS at recall@k ≥ 0.90
//! while loading against settled QPS at the same recall.
//!
//! Recall while loading is measured against the points that exist: every answer is kept
//! with the load's *acknowledged prefix* when the search was sent (the rows `0..prefix`,
//! every batch of which was acknowledged, so durable and visible), and scored afterwards
//! against the exact nearest neighbours among those rows alone. Rows acknowledged past the
//! prefix (another loader's batch ahead of a slower one's) or during the search's flight
//! may be found too, and then count as misses: the figure errs low, by at most a few batches
//! of the load.

use crate::dataset::Dataset;
use crate::serve::{self, AnnPoint, Latency, BATCH, COLLECTION};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vortex_index::{Kernels, Metric};
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::message::VectorType;
use vortex_vbp::sharded::ShardedClient;

/// One run of the rig.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The dataplane's `host:port`.
    pub address: String,
    /// The dataset directory (from `dataset`).
    pub data: PathBuf,
    /// Beam widths, one per window in turn while loading; each also measured settled.
    pub efs: Vec<u32>,
    /// Loading connections (threads).
    pub load_connections: usize,
    /// Searching connections (threads).
    pub search_connections: usize,
    /// Seconds per window while loading, and per beam width once settled.
    pub window_seconds: f64,
    /// The first `pool` queries of the dataset are the ones searched while loading.
    pub pool: usize,
    pub k: usize,
    pub m: u32,
    pub ef_construction: u32,
    /// Before the settled measurement, wait for every LEU's idle merge too.
    pub merged: bool,
}

/// The load's acknowledged prefix: the rows `0..prefix()` were all acknowledged.
#[derive(Debug)]
pub struct Acknowledged {
    rows: usize,
    /// Batches acknowledged past the prefix, by batch number, and the prefix in batches.
    ahead: Mutex<(usize, BTreeSet<usize>)>,
    prefix_rows: AtomicUsize,
}

impl Acknowledged {
    /// Nothing acknowledged yet, of a load of `rows` rows.
    pub fn new(rows: usize) -> Self {
        Acknowledged {
            rows,
            ahead: Mutex::new((0, BTreeSet::new())),
            prefix_rows: AtomicUsize::new(0),
        }
    }

    /// The batch of rows `start..` (a multiple of [`BATCH`]) was acknowledged.
    pub fn acknowledge(&self, start: usize) {
        let mut guard = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        let (prefix, ahead) = &mut *guard;
        ahead.insert(start / BATCH);
        while ahead.remove(prefix) {
            *prefix += 1;
        }
        self.prefix_rows
            .store((*prefix * BATCH).min(self.rows), Ordering::Release);
    }

    /// Rows `0..` this were all acknowledged.
    pub fn prefix(&self) -> usize {
        self.prefix_rows.load(Ordering::Acquire)
    }
}

/// The base rows in order of distance to one query (ties by row): the exact neighbours
/// among any prefix of the rows are the first of these below it.
pub fn nearest_order(metric: Metric, dataset: &Dataset, query: &[f32]) -> Vec<u32> {
    let kernels = Kernels::active();
    let mut scored: Vec<(f32, u32)> = dataset
        .base
        .values
        .chunks_exact(dataset.base.dim)
        .enumerate()
        .map(|(row, vector)| (metric.distance(kernels, query, vector), row as u32))
        .collect();
    scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, row)| row).collect()
}

/// Of `hits`, how many are among the exact `k` nearest of the rows `0..prefix` (`order`
/// from [`nearest_order`]); and how many there are to find (`k`, or fewer rows).
pub fn found_in_prefix(order: &[u32], prefix: usize, k: usize, hits: &[u32]) -> (usize, usize) {
    let truth: Vec<u32> = order
        .iter()
        .copied()
        .filter(|&row| (row as usize) < prefix)
        .take(k)
        .collect();
    let found = hits.iter().filter(|hit| truth.contains(hit)).count();
    (found, truth.len())
}

/// One window of searches while loading, as measured.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub ef: u32,
    /// The acknowledged prefix when the window opened and closed, in rows.
    pub loaded_from: usize,
    pub loaded_to: usize,
    pub seconds: f64,
    pub searches: u64,
    pub qps: f64,
    /// Mean recall@k of the window's answers against their prefixes' exact neighbours.
    pub recall: f64,
    pub latency: Latency,
    pub errors: u64,
}

/// One beam width while loading (every window at it together) beside the same settled.
#[derive(Debug, Clone, Serialize)]
pub struct EfRow {
    pub ef: u32,
    pub during_searches: u64,
    pub during_qps: f64,
    pub during_recall: f64,
    pub settled: AnnPoint,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub dataset: String,
    pub command: String,
    pub load_connections: usize,
    pub search_connections: usize,
    pub k: usize,
    pub load_seconds: f64,
    /// Rows per second of the load (with the searches running beside it).
    pub load_rows_per_s: f64,
    /// From the end of the load until settled (no build, compaction or merge due).
    pub settle_seconds: f64,
    pub windows: Vec<Window>,
    pub efs: Vec<EfRow>,
    /// The best QPS at recall@k ≥ 0.90 while loading, and settled (the target:
    /// the first ≥ 30 % of the second).
    pub during_qps_at_090: Option<f64>,
    pub settled_qps_at_090: Option<f64>,
}

/// What one window's searching connections brought back: per answer, the query (index in
/// the pool), the prefix when it was sent, and its hits (`k` slots, `u32::MAX` for none).
struct Answers {
    queries: Vec<(u32, u32)>,
    hits: Vec<u32>,
    times: hdrhistogram::Histogram<u64>,
    errors: u64,
}

fn search_window(
    config: &IngestConfig,
    dataset: &Dataset,
    acknowledged: &Acknowledged,
    ef: u32,
) -> anyhow::Result<(Answers, f64)> {
    let next = AtomicUsize::new(0);
    let pool = config.pool.clamp(1, dataset.queries.len());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(config.window_seconds);
    let shares: Vec<anyhow::Result<Answers>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.search_connections.max(1))
            .map(|_| {
                let next = &next;
                scope.spawn(move || -> anyhow::Result<Answers> {
                    let client = ShardedClient::connect(&config.address, ClientOptions::default())?;
                    let mut share = Answers {
                        queries: Vec::new(),
                        hits: Vec::new(),
                        times: serve::histogram(),
                        errors: 0,
                    };
                    while Instant::now() < deadline {
                        let query = next.fetch_add(1, Ordering::Relaxed) % pool;
                        let prefix = acknowledged.prefix();
                        let (answer, ns) =
                            serve::timed_search(&client, dataset, query, config.k, ef);
                        match answer {
                            Ok(hits) => {
                                let _ = share.times.record(ns.max(1));
                                share.queries.push((query as u32, prefix as u32));
                                let mut slots = hits.iter().map(|hit| hit.id as u32);
                                share.hits.extend(
                                    (0..config.k).map(|_| slots.next().unwrap_or(u32::MAX)),
                                );
                            }
                            // Before the collection's first write reaches an LEU, or while
                            // the dataplane refuses: counted, not scored.
                            Err(_) => share.errors += 1,
                        }
                    }
                    Ok(share)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a searching thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Answers {
        queries: Vec::new(),
        hits: Vec::new(),
        times: serve::histogram(),
        errors: 0,
    };
    for share in shares {
        let share = share?;
        all.queries.extend(share.queries);
        all.hits.extend(share.hits);
        all.times.add(&share.times)?;
        all.errors += share.errors;
    }
    Ok((all, elapsed))
}

/// Runs the rig: create, load while searching, settle, search settled.
pub fn run(config: &IngestConfig, command: &str) -> anyhow::Result<IngestResult> {
    anyhow::ensure!(!config.efs.is_empty(), "--ef names no beam width");
    anyhow::ensure!(config.window_seconds > 0.0, "--seconds must be positive");
    let dataset = Dataset::load(&config.data)?;
    let metric = dataset.meta.metric()?;
    let client = Client::connect(&[config.address.as_str()], ClientOptions::default())?;
    if client.describe_collection(COLLECTION).is_ok() {
        client.drop_collection(COLLECTION)?;
    }
    serve::create(
        &client,
        &dataset,
        (config.m, config.ef_construction, VectorType::F32),
    )?;

    let acknowledged = Acknowledged::new(dataset.base.len());
    let loading = AtomicBool::new(true);
    let started = Instant::now();
    let mut raw_windows = Vec::new();
    let load_seconds = std::thread::scope(|scope| -> anyhow::Result<f64> {
        let loader = scope.spawn(|| {
            let sent = serve::send_rows(
                &config.address,
                &dataset,
                config.load_connections,
                &|start, _| acknowledged.acknowledge(start),
            );
            loading.store(false, Ordering::Release);
            sent.map(|()| started.elapsed().as_secs_f64())
        });
        let mut turn = 0;
        while loading.load(Ordering::Acquire) {
            let ef = config.efs[turn % config.efs.len()];
            turn += 1;
            let from = acknowledged.prefix();
            let (answers, seconds) = search_window(config, &dataset, &acknowledged, ef)?;
            // A window the load ended in is not one "while loading".
            if loading.load(Ordering::Acquire) {
                raw_windows.push((ef, from, acknowledged.prefix(), seconds, answers));
            }
        }
        loader
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the loader panicked")))
    })?;
    eprintln!(
        "loaded {} rows in {load_seconds:.1} s beside {} windows of searches",
        dataset.base.len(),
        raw_windows.len()
    );
    let settling = Instant::now();
    serve::settle(&client, config.merged)?;
    let settle_seconds = settling.elapsed().as_secs_f64();
    let mut settled = Vec::new();
    for &ef in &config.efs {
        settled.push(serve::measure(
            &client,
            &config.address,
            &dataset,
            ef,
            config.search_connections,
            config.window_seconds,
            config.k,
        )?);
    }

    // Scored after the run, so the exact answers cost the measured appliance nothing.
    let pool = config.pool.clamp(1, dataset.queries.len());
    let orders: Vec<Vec<u32>> = (0..pool)
        .map(|query| nearest_order(metric, &dataset, dataset.queries.row(query)))
        .collect();
    let windows: Vec<Window> = raw_windows
        .into_iter()
        .map(|(ef, from, to, seconds, answers)| {
            let (mut found, mut wanted) = (0usize, 0usize);
            for (answer, &(query, prefix)) in answers.queries.iter().enumerate() {
                let hits = &answers.hits[answer * config.k..(answer + 1) * config.k];
                let (f, w) =
                    found_in_prefix(&orders[query as usize], prefix as usize, config.k, hits);
                found += f;
                wanted += w;
            }
            let searches = answers.queries.len() as u64;
            Window {
                ef,
                loaded_from: from,
                loaded_to: to,
                seconds,
                searches,
                qps: searches as f64 / seconds,
                recall: found as f64 / wanted.max(1) as f64,
                latency: serve::latency(&answers.times),
                errors: answers.errors,
            }
        })
        .collect();
    let efs: Vec<EfRow> = config
        .efs
        .iter()
        .zip(settled)
        .map(|(&ef, settled)| {
            let at: Vec<&Window> = windows.iter().filter(|w| w.ef == ef).collect();
            let searches: u64 = at.iter().map(|w| w.searches).sum();
            let seconds: f64 = at.iter().map(|w| w.seconds).sum();
            // Weighted by searches: the recall of every answer at this ef while loading.
            let recall = at.iter().map(|w| w.recall * w.searches as f64).sum::<f64>()
                / searches.max(1) as f64;
            EfRow {
                ef,
                during_searches: searches,
                during_qps: if seconds > 0.0 {
                    searches as f64 / seconds
                } else {
                    0.0
                },
                during_recall: recall,
                settled,
            }
        })
        .collect();
    let best = |pairs: &mut dyn Iterator<Item = (f64, f64)>| {
        pairs
            .filter(|&(recall, _)| recall >= 0.90)
            .map(|(_, qps)| qps)
            .fold(None, |best: Option<f64>, qps| {
                Some(best.map_or(qps, |b| b.max(qps)))
            })
    };
    let during_qps_at_090 = best(
        &mut efs
            .iter()
            .filter(|row| row.during_searches > 0)
            .map(|row| (row.during_recall, row.during_qps)),
    );
    let settled_qps_at_090 = best(&mut efs.iter().map(|row| (row.settled.recall, row.settled.qps)));
    Ok(IngestResult {
        dataset: dataset.meta.name.clone(),
        command: command.to_owned(),
        load_connections: config.load_connections,
        search_connections: config.search_connections,
        k: config.k,
        load_seconds,
        load_rows_per_s: dataset.base.len() as f64 / load_seconds,
        settle_seconds,
        windows,
        efs,
        during_qps_at_090,
        settled_qps_at_090,
    })
}

/// The result as Markdown: the headline ratio, one row per beam width, one per window.
pub fn render(result: &IngestResult) -> String {
    let mut out = String::new();
    let k = result.k;
    out.push_str(&format!(
        "load: {:.1} s ({:.0} rows/s, {} connections) beside {} searching connections; settled {:.1} s later\n\n",
        result.load_seconds,
        result.load_rows_per_s,
        result.load_connections,
        result.search_connections,
        result.settle_seconds
    ));
    match (result.during_qps_at_090, result.settled_qps_at_090) {
        (Some(during), Some(settled)) => out.push_str(&format!(
            "QPS at recall@{k} ≥ 0.90: {during:.0} while loading, {settled:.0} settled: {:.2} (target ≥ 0.30)\n\n",
            during / settled
        )),
        _ => out.push_str(&format!(
            "QPS at recall@{k} ≥ 0.90: no beam width reached it while loading or settled\n\n"
        )),
    }
    out.push_str(&format!(
        "| ef | searches while loading | QPS | recall@{k} | settled QPS | recall@{k} | while loading / settled |\n|---:|---:|---:|---:|---:|---:|---:|\n"
    ));
    for row in &result.efs {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.4} | {:.0} | {:.4} | {:.2} |\n",
            row.ef,
            row.during_searches,
            row.during_qps,
            row.during_recall,
            row.settled.qps,
            row.settled.recall,
            row.during_qps / row.settled.qps.max(f64::MIN_POSITIVE)
        ));
    }
    out.push_str(&format!(
        "\n| window | loaded (rows) | ef | QPS | recall@{k} | p50 µs | p99 µs | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|\n"
    ));
    for (number, w) in result.windows.iter().enumerate() {
        out.push_str(&format!(
            "| {number} | {}–{} | {} | {:.0} | {:.4} | {:.0} | {:.0} | {} |\n",
            w.loaded_from,
            w.loaded_to,
            w.ef,
            w.qps,
            w.recall,
            w.latency.p50_us,
            w.latency.p99_us,
            w.errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_what_every_batch_below_it_acknowledged() {
        let rows = 3 * BATCH + 10;
        let acknowledged = Acknowledged::new(rows);
        assert_eq!(acknowledged.prefix(), 0);
        acknowledged.acknowledge(BATCH);
        acknowledged.acknowledge(3 * BATCH);
        assert_eq!(acknowledged.prefix(), 0, "batch 0 is still out");
        acknowledged.acknowledge(0);
        assert_eq!(acknowledged.prefix(), 2 * BATCH);
        acknowledged.acknowledge(2 * BATCH);
        assert_eq!(
            acknowledged.prefix(),
            rows,
            "the last, short batch ends the load"
        );
    }

    #[test]
    fn truth_in_a_prefix_skips_the_rows_beyond_it() {
        // Rows by distance: 5, 1, 7, 0, 3, 2 (then 4, 6).
        let order = [5, 1, 7, 0, 3, 2, 4, 6];
        // The rows 0..4: nearest are 1, 0, 3.
        assert_eq!(found_in_prefix(&order, 4, 3, &[1, 0, 3]), (3, 3));
        // Row 5 exists, but not in the prefix: a miss, as is a slot with nothing.
        assert_eq!(found_in_prefix(&order, 4, 3, &[5, 1, u32::MAX]), (1, 3));
        // Fewer rows than k: only those are wanted.
        assert_eq!(found_in_prefix(&order, 2, 3, &[1, 0]), (2, 2));
        assert_eq!(found_in_prefix(&order, 0, 3, &[]), (0, 0));
    }
}
