//! `vortexctl demo`: the quickstart. Starts the appliance in-process on loopback (the dev
//! config, a temporary data directory, ports the kernel chooses), creates a collection,
//! loads a generated clustered dataset over VBP with a progress bar, waits for the index
//! builds, runs searches, and prints a few results, recall@k against exact search and the
//! latency percentiles; then stops the appliance cleanly (WALs synced) and removes the data.

use super::{retrying, CtlError};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vortex_config::{ApplianceConfig, LeuCount, Topology};
use vortex_dataplane::appliance::{Appliance, Ports};
use vortex_index::random::SplitMix;
use vortex_index::Kernels;
use vortex_io::memlock;
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::message::{
    counters_sum, CollectionSpec, Metric, Search, Upsert, VectorType, BACKGROUND_WORK_COUNTERS,
};
use vortex_vbp::sharded::ShardedClient;

/// The dev config the demo runs (loopback, two LEUs, memory lock "try").
pub const DEV_CONFIG: &str = include_str!("../../../firmware-config/examples/dev.toml");
const COLLECTION: &str = "demo";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Points generated and loaded.
    pub points: usize,
    /// Their dimension.
    pub dimension: usize,
    /// Queries searched (and checked against exact search).
    pub queries: usize,
    /// Neighbours per query.
    pub k: usize,
    /// The search beam width.
    pub ef: u32,
    /// Connections loading at once.
    pub connections: usize,
    /// The generator's seed.
    pub seed: u64,
    /// Keep the data here instead of a temporary directory (removed at the end).
    pub data_dir: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            points: 100_000,
            dimension: 128,
            queries: 200,
            k: 10,
            ef: 64,
            connections: 2,
            seed: 42,
            data_dir: None,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// Mean recall@k against exact search.
    pub recall: f64,
    /// Search latency percentiles (p50, p99, p99.9, max), in microseconds.
    pub latency_us: [f64; 4],
    /// Points loaded per second.
    pub load_rate: f64,
}

/// Points around 64 random centres: `count` rows of `dimension`, flat.
fn clustered(rng: &mut SplitMix, centres: &[f32], dimension: usize, count: usize) -> Vec<f32> {
    let clusters = centres.len() / dimension;
    let mut out = Vec::with_capacity(count * dimension);
    for _ in 0..count {
        let centre = (rng.next_u64() % clusters as u64) as usize;
        let centre = &centres[centre * dimension..(centre + 1) * dimension];
        out.extend(centre.iter().map(|c| c + 0.25 * rng.gaussian()));
    }
    out
}

/// The exact `k` nearest rows of `base` to each query (squared L2, the index's SIMD
/// kernel), by a full scan on two threads.
fn exact(base: &[f32], queries: &[f32], dimension: usize, k: usize) -> Vec<Vec<u64>> {
    let l2 = Kernels::active().l2_squared;
    let one = |query: &[f32]| -> Vec<u64> {
        let mut scored: Vec<(f32, u64)> = base
            .chunks_exact(dimension)
            .enumerate()
            .map(|(id, row)| (l2(row, query), id as u64))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored.truncate(k);
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, id)| id).collect()
    };
    let rows: Vec<&[f32]> = queries.chunks_exact(dimension).collect();
    let half = rows.len().div_ceil(2);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| rows[half..].iter().map(|q| one(q)).collect::<Vec<_>>());
        let mut first: Vec<Vec<u64>> = rows[..half].iter().map(|q| one(q)).collect();
        first.extend(second.join().unwrap_or_default());
        first
    })
}

fn step(out: &mut impl Write, n: usize, text: impl std::fmt::Display) {
    let _ = writeln!(out, "[{n}/6] {text}");
    let _ = out.flush();
}

/// Runs the demo, writing its account to `out`.
pub fn run(options: &DemoOptions, out: &mut impl Write) -> Result<DemoReport, CtlError> {
    let DemoOptions {
        points,
        dimension,
        queries,
        k,
        ef,
        ..
    } = *options;
    let within = |value: usize, max: usize| (1..=max).contains(&value);
    if !within(points, 10_000_000)
        || !within(dimension, 4096)
        || !within(queries, 100_000)
        || !within(k, 10_000)
    {
        return Err(CtlError::usage(
            "--points 1 to 10,000,000, --dimension 1 to 4,096, --queries 1 to 100,000, -k 1 to 10,000",
        ));
    }
    let _ = writeln!(
        out,
        "VORTEX demo: {points} × {dimension} clustered vectors (l2), {queries} queries, k = {k}, ef = {ef}"
    );

    // 1. The appliance, in this process.
    let mut config = ApplianceConfig::from_toml_str(DEV_CONFIG, "the dev config")
        .map_err(|e| CtlError::runtime(e.to_string()))?;
    let (data_dir, temporary) = match &options.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("vortex-demo-")
                .tempdir()
                .map_err(|e| {
                    CtlError::runtime(format!("cannot make a temporary directory: {e}"))
                })?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    config.storage.data_dir = data_dir.clone();
    let topology = Topology::discover().map_err(|e| CtlError::runtime(e.to_string()))?;
    let mapping = match config.plan_leus(&topology) {
        Ok(mapping) => mapping,
        Err(_) => {
            // Fewer cores than the dev config's two LEUs: one per core there is.
            config.leu.count = LeuCount::Auto;
            config
                .plan_leus(&topology)
                .map_err(|e| CtlError::runtime(e.to_string()))?
        }
    };
    let data_dir = config.prepare_data_dir().map_err(|error| match error {
        // Only --data-dir can make the dev config's data directory unusable.
        vortex_config::Error::Invalid(invalid) => {
            CtlError::usage(format!("--data-dir: {}", invalid.message))
        }
        other => CtlError::runtime(other.to_string()),
    })?;
    // Under `try`, a limit too low to lock everything is said in one warning and the demo
    // goes on.
    memlock::apply(config.memory.lock).map_err(|e| CtlError::runtime(e.to_string()))?;
    let appliance = Appliance::start(
        &config,
        &mapping,
        &data_dir,
        Ports::Ephemeral,
        "the dev config",
    )
    .map_err(CtlError::runtime)?;
    let address = appliance.address().to_string();
    step(
        out,
        1,
        format_args!(
            "dataplane started: {} LEU(s) on {address}, data in {}",
            appliance.leu_ports().len(),
            data_dir.display()
        ),
    );
    let result = exercise(options, &address, out);
    let stopped = appliance.stop().map_err(CtlError::runtime);
    let report = result?;
    let stopped = stopped?;
    step(
        out,
        6,
        format_args!(
            "dataplane stopped cleanly: {} requests answered, WALs synced{}",
            stopped.answered,
            if temporary.is_some() {
                ", temporary data removed"
            } else {
                ""
            }
        ),
    );
    drop(temporary);
    let _ = writeln!(
        out,
        "\nNext: run the server on its own and talk to it with vortexctl (README.md, \"Run the server\")."
    );
    Ok(report)
}

/// Steps 2 to 5 against a running appliance at `address`.
fn exercise(
    options: &DemoOptions,
    address: &str,
    out: &mut impl Write,
) -> Result<DemoReport, CtlError> {
    let DemoOptions {
        points,
        dimension,
        queries,
        k,
        ef,
        connections,
        seed,
        ..
    } = *options;
    let client_options = ClientOptions {
        request_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    let client = Client::connect(&[address], client_options).map_err(CtlError::from_client)?;
    // A kept data directory (`--data-dir`) may hold an earlier demo's collection: start over.
    if client.describe_collection(COLLECTION).is_ok() {
        client
            .drop_collection(COLLECTION)
            .map_err(CtlError::from_client)?;
    }
    client
        .create_collection(CollectionSpec {
            name: COLLECTION.into(),
            dimension: dimension as u32,
            metric: Metric::L2,
            m: 16,
            ef_construction: 200,
            vector_type: VectorType::F32,
        })
        .map_err(CtlError::from_client)?;
    step(
        out,
        2,
        format_args!("collection `{COLLECTION}` created (dimension {dimension}, l2, M 16, ef_construction 200)"),
    );

    let mut rng = SplitMix::new(seed);
    let centres: Vec<f32> = (0..64 * dimension)
        .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
        .collect();
    let base = clustered(&mut rng, &centres, dimension, points);
    let query_rows = clustered(&mut rng, &centres, dimension, queries);
    let bar = ProgressBar::new(points as u64).with_style(
        ProgressStyle::with_template("      {bar:40} {pos}/{len} points ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let batch = 1000usize.min(super::input::rows_within_budget(dimension));
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let loaded: Result<(), CtlError> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<(), CtlError> {
                    let client = ShardedClient::connect(address, client_options)
                        .map_err(CtlError::from_client)?;
                    loop {
                        let first = next.fetch_add(batch, Ordering::Relaxed);
                        if first >= points {
                            return Ok(());
                        }
                        let last = (first + batch).min(points);
                        let upsert = Upsert {
                            collection: COLLECTION.into(),
                            dimension: dimension as u32,
                            ids: (first as u64..last as u64).collect(),
                            vectors: base[first * dimension..last * dimension].to_vec(),
                            payloads: Vec::new(),
                        };
                        retrying(|| client.upsert(upsert.clone()))
                            .map_err(CtlError::from_client)?;
                        bar.inc((last - first) as u64);
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(CtlError::runtime("a loader panicked")))
        })
    });
    bar.finish_and_clear();
    loaded?;
    let load_seconds = started.elapsed().as_secs_f64();
    let load_rate = points as f64 / load_seconds.max(1e-9);
    step(
        out,
        3,
        format_args!(
            "loaded {points} points over VBP in {load_seconds:.1} s ({load_rate:.0} points/s)"
        ),
    );

    let waited = Instant::now();
    settle(&client, Duration::from_secs(900))?;
    let truth = exact(&base, &query_rows, dimension, k);
    step(
        out,
        4,
        format_args!(
            "indexed: background index builds done in {:.1} s; exact neighbours computed by a full scan",
            waited.elapsed().as_secs_f64()
        ),
    );

    let mut latencies = Vec::with_capacity(queries);
    let mut found = 0usize;
    let mut shown = Vec::new();
    let searched = Instant::now();
    for (index, query) in query_rows.chunks_exact(dimension).enumerate() {
        let search = Search {
            collection: COLLECTION.into(),
            vector: query.to_vec(),
            k: k as u32,
            ef,
            filter: None,
            with_payload: false,
        };
        let asked = Instant::now();
        let hits = retrying(|| client.search(search.clone())).map_err(CtlError::from_client)?;
        latencies.push(asked.elapsed());
        let truth = &truth[index];
        found += hits.iter().filter(|hit| truth.contains(&hit.id)).count();
        if index < 3 {
            shown.push((hits, truth.clone()));
        }
    }
    let qps = queries as f64 / searched.elapsed().as_secs_f64().max(1e-9);
    let recall = found as f64 / (queries * k.min(points)) as f64;
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1e6
    };
    let latency_us = [at(0.5), at(0.99), at(0.999), at(1.0)];
    step(
        out,
        5,
        format_args!("searched {queries} queries on one connection ({qps:.0} queries/s):"),
    );
    for (index, (hits, truth)) in shown.iter().enumerate() {
        let listed: Vec<String> = hits
            .iter()
            .take(5)
            .map(|hit| format!("{} ({:.3})", hit.id, hit.distance))
            .collect();
        let exact: Vec<String> = truth.iter().take(5).map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "      query {index}: {}  (exact: {})",
            listed.join(", "),
            exact.join(", ")
        );
    }
    let _ = writeln!(out, "      recall@{k} against exact search: {recall:.4}");
    let _ = writeln!(
        out,
        "      latency: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
        latency_us[0], latency_us[1], latency_us[2], latency_us[3]
    );
    Ok(DemoReport {
        recall,
        latency_us,
        load_rate,
    })
}

/// Waits until no LEU has an index build or compaction pending.
fn settle(client: &Client, limit: Duration) -> Result<(), CtlError> {
    let deadline = Instant::now() + limit;
    let spinner = ProgressBar::new_spinner().with_message("building indexes");
    loop {
        let stats = client.stats().map_err(CtlError::from_client)?;
        let pending = counters_sum(&stats, &BACKGROUND_WORK_COUNTERS);
        if pending == 0 {
            spinner.finish_and_clear();
            return Ok(());
        }
        if Instant::now() > deadline {
            spinner.finish_and_clear();
            return Err(CtlError::runtime(format!(
                "index builds still pending after {limit:?}"
            )));
        }
        spinner.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
}
