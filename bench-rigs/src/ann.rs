//! The recall/QPS harness for our index, writing the same JSON as the peers' script
//! (`bench-rigs/peers/ann_peers.py`) so that `peers/report.py` tables and plots both.
//!
//! Build: on `build_threads` threads, timed wall-clock; memory is the growth of the resident
//! set across the build (the dataset is already loaded, as it is for the peers). Search: the
//! queries one after another on one thread, each timed, after one untimed warm-up pass at
//! the same `ef`; QPS is queries over the summed time of a timed pass. The timed pass runs
//! `repeats` times and the fastest is kept (latencies from that pass): this machine is shared
//! and noisy, and best-of-N is the least noisy estimate of what an engine can do. The peers'
//! script does the same.

use crate::dataset::Dataset;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use vortex_index::{
    BuildParams, Hnsw, Kernels, NodeSet, Quantization, SearchParams, SearchScratch,
};

/// One harness run.
#[derive(Debug, Clone)]
pub struct AnnConfig {
    /// The dataset directory.
    pub data: PathBuf,
    /// Beam widths to search with.
    pub ef: Vec<usize>,
    /// Graph degree.
    pub m: usize,
    /// Beam width of the build.
    pub ef_construction: usize,
    /// Build threads.
    pub build_threads: usize,
    /// Results per query.
    pub k: usize,
    /// The walk's vector type.
    pub quantization: Quantization,
    /// Re-rank factor for the quantized walk.
    pub rerank_factor: usize,
    /// Timed passes per `ef`; the fastest is kept.
    pub repeats: usize,
    /// Also measure filtered search with this percentage of the nodes allowed (at
    /// [`FILTERED_EF`]).
    pub filter_percent: Option<f64>,
    /// Build over the rows in a file and measure with and without their checksums
    /// ([`checked_pair`]).
    pub checked_rows: bool,
    /// Where `<dataset>/<engine>.json` goes.
    pub out: PathBuf,
}

/// One `ef` of a run.
#[derive(Debug, Clone, Serialize)]
pub struct AnnRun {
    pub ef: usize,
    pub recall_at_10: f64,
    pub qps: f64,
    pub latency_us_mean: f64,
    pub latency_us_p99: f64,
}

/// The beam width of the filtered measurement.
pub const FILTERED_EF: usize = 64;

/// Filtered search: a pseudo-random subset of the nodes (unrelated to the clusters) as a
/// `NodeSet`, recall against the exact top-k among the allowed nodes.
#[derive(Debug, Clone, Serialize)]
pub struct FilteredRun {
    pub percent: f64,
    pub allowed: usize,
    pub ef: usize,
    pub recall_at_10: f64,
    pub qps: f64,
    pub latency_us_mean: f64,
    pub latency_us_p99: f64,
}

/// The host a run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub cpu: String,
    pub cores: usize,
}

/// A whole run, in the peers' schema.
#[derive(Debug, Clone, Serialize)]
pub struct AnnResult {
    pub engine: String,
    pub engine_version: String,
    pub dataset: String,
    pub metric: String,
    pub n: usize,
    pub dim: usize,
    pub queries: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub build_threads: usize,
    pub build_seconds: f64,
    pub memory_bytes: i64,
    pub bytes_per_vector: f64,
    pub index_bytes: usize,
    pub search_threads: usize,
    pub repeats: usize,
    pub simd_level: String,
    pub rerank_factor: Option<usize>,
    pub runs: Vec<AnnRun>,
    /// With `--checked-rows`: the same graph over the same mapped rows, searched without
    /// their checksums, each ef measured just before the checked one.
    pub unchecked_runs: Option<Vec<AnnRun>>,
    pub filtered: Option<FilteredRun>,
    pub host: Host,
    pub date: String,
}

/// The resident set of this process, in bytes.
pub fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page_bytes.max(1)
}

/// This process's proportional resident bytes (PSS) by what they map, from
/// `/proc/self/smaps`: SSTable files (`.sst`), side-car index files (`.hnsw`), other files,
/// and anonymous memory (heap, stacks). Unlike the resident set, a file page mapped twice
/// (the store's mapping of a table and the index's mapping of its vector region) counts
/// once, half in each mapping: the memory the process really holds.
pub fn resident_by_kind() -> ResidentByKind {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut kinds = ResidentByKind::default();
    let mut current = 3usize;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = fields.nth(4).unwrap_or_default();
            current = if path.ends_with(".sst") {
                0
            } else if path.ends_with(".hnsw") {
                1
            } else if path.starts_with('/') {
                2
            } else {
                3
            };
        } else if first == "Pss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let slot = match current {
                0 => &mut kinds.tables,
                1 => &mut kinds.indexes,
                2 => &mut kinds.other_files,
                _ => &mut kinds.anonymous,
            };
            *slot += kib * 1024;
        }
    }
    kinds
}

/// Proportional resident bytes by kind of mapping ([`resident_by_kind`]).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ResidentByKind {
    pub tables: u64,
    pub indexes: u64,
    pub other_files: u64,
    pub anonymous: u64,
}

impl ResidentByKind {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.tables + self.indexes + self.other_files + self.anonymous
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|date| date.trim().to_string())
        .unwrap_or_default()
}

/// Runs the harness on our index and writes the result file; returns the result and its path.
pub fn run(config: &AnnConfig) -> anyhow::Result<(AnnResult, PathBuf)> {
    let dataset = Dataset::load(&config.data)
        .with_context(|| format!("loading the dataset in {}", config.data.display()))?;
    let metric = dataset.meta.metric()?;
    anyhow::ensure!(
        config.k <= dataset.truth.dim,
        "k = {} but the ground truth has {} neighbours per query",
        config.k,
        dataset.truth.dim
    );
    let params = BuildParams {
        metric,
        m: config.m,
        ef_construction: config.ef_construction,
        threads: config.build_threads,
        quantization: config.quantization,
        ..BuildParams::default()
    };

    let before = resident_bytes();
    let started = Instant::now();
    let rows_dir = tempfile::tempdir()?;
    let (index, unchecked) = if config.checked_rows {
        let (plain, checked) = checked_pair(&dataset, &params, rows_dir.path())?;
        (checked, Some(plain))
    } else {
        (
            Hnsw::build(dataset.meta.dim, &dataset.base.values, None, &params)?,
            None,
        )
    };
    let build_seconds = started.elapsed().as_secs_f64();
    let memory_bytes = resident_bytes() - before;
    eprintln!(
        "built {} × {} in {build_seconds:.1} s; resident +{:.1} MiB",
        dataset.meta.n,
        dataset.meta.dim,
        memory_bytes as f64 / (1 << 20) as f64
    );

    let mut scratch = SearchScratch::new();
    let mut runs = Vec::new();
    let mut unchecked_runs = Vec::new();
    for &ef in &config.ef {
        if let Some(plain) = &unchecked {
            let run = measure(plain, &dataset, config, ef, &mut scratch)?;
            eprintln!("{}  (without checksums)", run.line(config.k));
            unchecked_runs.push(run);
        }
        let run = measure(&index, &dataset, config, ef, &mut scratch)?;
        eprintln!("{}", run.line(config.k));
        runs.push(run);
    }

    let filtered = match config.filter_percent {
        Some(percent) => Some(filtered_run(&index, &dataset, config, percent)?),
        None => None,
    };

    let quantized = config.quantization == Quantization::ScalarI8;
    let engine = match (quantized, config.checked_rows) {
        (false, false) => "vortex",
        (true, false) => "vortex-i8",
        (false, true) => "vortex-checked",
        (true, true) => "vortex-i8-checked",
    };
    let result = AnnResult {
        engine: engine.into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        dataset: dataset.meta.name.clone(),
        metric: dataset.meta.metric.clone(),
        n: dataset.meta.n,
        dim: dataset.meta.dim,
        queries: dataset.meta.queries,
        m: config.m,
        ef_construction: config.ef_construction,
        build_threads: config.build_threads,
        build_seconds,
        memory_bytes,
        bytes_per_vector: memory_bytes as f64 / dataset.meta.n as f64,
        index_bytes: index.memory_bytes(),
        search_threads: 1,
        repeats: config.repeats.max(1),
        simd_level: vortex_index::Kernels::active().level.name().into(),
        rerank_factor: quantized.then_some(config.rerank_factor),
        runs,
        unchecked_runs: unchecked.is_some().then_some(unchecked_runs),
        filtered,
        host: Host {
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        date: today(),
    };
    let directory = config.out.join(&result.dataset);
    std::fs::create_dir_all(&directory)?;
    let path = directory.join(format!("{}.json", result.engine));
    std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((result, path))
}

impl AnnRun {
    /// The run as one line of the log.
    fn line(&self, k: usize) -> String {
        format!(
            "ef {:>4}: recall@{k} {:.4}  {:>9.0} QPS  mean {:.1} µs  p99 {:.1} µs",
            self.ef, self.recall_at_10, self.qps, self.latency_us_mean, self.latency_us_p99
        )
    }
}

/// Searches every query of `dataset` with beam `ef`: one pass to warm up, then
/// `config.repeats` timed passes, the fastest kept.
fn measure(
    index: &Hnsw,
    dataset: &Dataset,
    config: &AnnConfig,
    ef: usize,
    scratch: &mut SearchScratch,
) -> anyhow::Result<AnnRun> {
    let search = SearchParams {
        k: config.k,
        ef,
        rerank_factor: config.rerank_factor,
    };
    let mut results = Vec::with_capacity(config.k);
    for query in dataset.queries.values.chunks_exact(dataset.meta.dim) {
        index.search_with(scratch, query, &search, None, &mut results)?;
    }
    let mut latencies_ns = Vec::with_capacity(dataset.queries.len());
    let mut best_ns: Option<Vec<u64>> = None;
    let mut hits = 0usize;
    for _ in 0..config.repeats.max(1) {
        latencies_ns.clear();
        hits = 0;
        for (q, query) in dataset
            .queries
            .values
            .chunks_exact(dataset.meta.dim)
            .enumerate()
        {
            let started = Instant::now();
            index.search_with(scratch, query, &search, None, &mut results)?;
            latencies_ns.push(started.elapsed().as_nanos() as u64);
            let truth = &dataset.truth.row(q)[..config.k];
            hits += results
                .iter()
                .filter(|found| truth.contains(&(found.node as i32)))
                .count();
        }
        let total: u64 = latencies_ns.iter().sum();
        if best_ns
            .as_ref()
            .is_none_or(|best| total < best.iter().sum::<u64>())
        {
            best_ns = Some(latencies_ns.clone());
        }
    }
    let mut latencies_ns = best_ns.unwrap_or_default();
    let total_ns: u64 = latencies_ns.iter().sum();
    let p99 = p99_ns(&mut latencies_ns);
    let queries = dataset.queries.len() as f64;
    Ok(AnnRun {
        ef,
        recall_at_10: hits as f64 / (queries * config.k as f64),
        qps: queries / (total_ns as f64 / 1e9),
        latency_us_mean: total_ns as f64 / queries / 1e3,
        latency_us_p99: p99 as f64 / 1e3,
    })
}

/// The base vectors written to a file under `dir` as an SSTable's vector region lies (rows
/// of `vector_stride(dim)` floats from a 4 KiB offset, zero-padded to whole 4 KiB units), a
/// graph built over them in place, and the same graph loaded again over a second mapping of
/// them with the units' CRC32C verified as searches read them (`Hnsw::check_rows_with`, as
/// the shard's segment graphs are). Returns (without checksums, with).
pub fn checked_pair(
    dataset: &Dataset,
    params: &BuildParams,
    dir: &std::path::Path,
) -> anyhow::Result<(Hnsw, Hnsw)> {
    use vortex_index::checksums::UNIT_BYTES;
    use vortex_index::{vector_stride, Mapping, RowChecksums, Store};
    let dim = dataset.meta.dim;
    let stride = vector_stride(dim);
    let mut values = dataset.base.values.clone();
    if params.metric.normalizes() {
        for row in values.chunks_exact_mut(dim) {
            vortex_index::metric::normalize(row);
        }
    }
    let mut region = Vec::with_capacity(values.len() / dim * stride * 4 + UNIT_BYTES);
    for row in values.chunks_exact(dim) {
        region.extend(row.iter().flat_map(|x| x.to_le_bytes()));
        region.resize(region.len() + (stride - dim) * 4, 0);
    }
    region.resize(region.len().next_multiple_of(UNIT_BYTES), 0);
    let crcs: Vec<u32> = region
        .chunks_exact(UNIT_BYTES)
        .map(crc32c::crc32c)
        .collect();
    let path = dir.join("rows");
    let mut bytes = vec![0u8; UNIT_BYTES];
    bytes.extend(&region);
    drop(region);
    std::fs::write(&path, &bytes)?;
    drop(bytes);
    let rows = || -> anyhow::Result<Store<f32>> {
        let mapping = Arc::new(Mapping::of(&std::fs::File::open(&path)?)?);
        Store::mapped(&mapping, UNIT_BYTES, values.len() / dim * stride)
            .context("the rows do not fit their file")
    };
    let plain = Hnsw::build_over(dim, rows()?, None, params)?;
    let graph = dir.join("graph.hnsw");
    plain.save(&graph)?;
    let mut checked = Hnsw::load_over(&graph, rows()?)?;
    checked.check_rows_with(Arc::new(RowChecksums::new(crcs, dim, None)))?;
    Ok((plain, checked))
}

/// The 99th percentile of `latencies_ns` (nearest rank; sorts them), 0 when empty.
fn p99_ns(latencies_ns: &mut [u64]) -> u64 {
    crate::percentile_ns(latencies_ns, 99)
}

/// Whether the filtered measurement allows `node`: a hash of the id, so that the allowed set
/// has nothing to do with the clusters.
fn allowed(node: u32, percent: f64) -> bool {
    let hash = u64::from(node).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((hash % 1_000_000) as f64) < percent * 10_000.0
}

/// Filtered search at [`FILTERED_EF`] with `percent` % of the nodes allowed.
fn filtered_run(
    index: &Hnsw,
    dataset: &Dataset,
    config: &AnnConfig,
    percent: f64,
) -> anyhow::Result<FilteredRun> {
    anyhow::ensure!(
        percent > 0.0 && percent <= 100.0,
        "--filter-percent must be in (0, 100]"
    );
    let metric = dataset.meta.metric()?;
    let set: NodeSet = (0..dataset.base.len() as u32)
        .filter(|&node| allowed(node, percent))
        .collect();
    let kernels = Kernels::active();
    let dim = dataset.meta.dim;
    let search = SearchParams {
        k: config.k,
        ef: FILTERED_EF,
        rerank_factor: config.rerank_factor,
    };
    let mut scratch = SearchScratch::new();
    let mut results = Vec::with_capacity(config.k);
    let mut latencies_ns = Vec::with_capacity(dataset.queries.len());
    let mut hits = 0usize;
    let mut expected = 0usize;
    let mut exact: Vec<(f32, u32)> = Vec::with_capacity(set.len());
    for query in dataset.queries.values.chunks_exact(dim) {
        let started = Instant::now();
        index.search_with(&mut scratch, query, &search, Some(&set), &mut results)?;
        latencies_ns.push(started.elapsed().as_nanos() as u64);
        // The exact answer among the allowed nodes (the dataset's vectors are stored as the
        // index stores them: cosine sets are normalised already).
        exact.clear();
        for node in (0..dataset.base.len() as u32).filter(|&node| set.contains(node)) {
            let distance = metric.distance(kernels, query, dataset.base.row(node as usize));
            exact.push((distance, node));
        }
        let k = config.k.min(exact.len());
        if k > 0 {
            exact.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        }
        let truth = &exact[..k];
        expected += k;
        hits += results
            .iter()
            .filter(|found| truth.iter().any(|&(_, node)| node == found.node))
            .count();
        anyhow::ensure!(
            results.iter().all(|found| set.contains(found.node)),
            "a filtered search returned a node the filter refuses"
        );
    }
    let total_ns: u64 = latencies_ns.iter().sum();
    let queries = dataset.queries.len() as f64;
    let run = FilteredRun {
        percent,
        allowed: set.len(),
        ef: FILTERED_EF,
        recall_at_10: hits as f64 / expected.max(1) as f64,
        qps: queries / (total_ns as f64 / 1e9),
        latency_us_mean: total_ns as f64 / queries / 1e3,
        latency_us_p99: p99_ns(&mut latencies_ns) as f64 / 1e3,
    };
    eprintln!(
        "filtered ({percent} % = {} nodes allowed), ef {}: recall@{} {:.4}  {:.0} QPS  p99 {:.1} µs",
        run.allowed, FILTERED_EF, config.k, run.recall_at_10, run.qps, run.latency_us_p99
    );
    Ok(run)
}
