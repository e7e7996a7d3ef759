//! `vortex-bench`: the benchmark front end.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use vortex_bench::ann::{self, AnnConfig};
use vortex_bench::dataset::{self, DatasetMeta};
use vortex_bench::ingest;
use vortex_bench::load;
use vortex_bench::lsm::{self, LsmBenchConfig};
use vortex_bench::nop::{self, NopBenchConfig, NopMode};
use vortex_bench::serve;
use vortex_bench::shard::{self, ShardBenchConfig};
use vortex_bench::wal::{self, WalBenchConfig};
use vortex_config::{ApplianceConfig, LeuCount, Topology};
use vortex_index::Quantization;
use vortex_io::RingConfig;
use vortex_storage::DirectIo;

#[derive(Debug, Parser)]
#[command(name = "vortex-bench", version, about = "VORTEX benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// io_uring NOP round trips per LEU and the context switches during the run.
    Nop {
        /// Appliance config for the LEU mapping and ring settings (default: built-in).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override the LEU count.
        #[arg(long)]
        leus: Option<u16>,
        /// Measured seconds per mode.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// NOPs per submission.
        #[arg(long, default_value_t = 32)]
        batch: u32,
        /// Also run with SQPOLL (a kernel thread per ring; needs a spare CPU per LEU).
        #[arg(long)]
        sqpoll: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate a clustered Gaussian-mixture dataset with exact top-100 ground truth
    /// (base.fvecs, query.fvecs, groundtruth.ivecs, meta.json).
    Dataset {
        /// A named set: `clustered-128-l2` (1,000,000 × 128, l2), `clustered-384-cosine`
        /// (200,000 × 384, cosine) or `clustered-768-cosine` (100,000 × 768, cosine).
        #[arg(long)]
        preset: String,
        /// Base vectors (default: the preset's); a different count adds `-N` to the name.
        #[arg(long)]
        n: Option<usize>,
        /// Query vectors.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        /// Where the dataset's directory is made.
        #[arg(long, default_value = "bench-rigs/data")]
        out: PathBuf,
        /// Threads for generation and ground truth (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Load a running dataplane over VBP: many connections, a search/upsert mix, closed
    /// loop (each connection sends when answered) or open loop (a fixed arrival rate,
    /// latency from the scheduled time), HdrHistogram percentiles.
    Load {
        /// The dataplane's `host:port`.
        #[arg(long, default_value = "127.0.0.1:7700")]
        address: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Open loop at this many requests per second in all (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Percent of searches; the rest are single-point upserts.
        #[arg(long, default_value_t = 90)]
        search_percent: u32,
        #[arg(long, default_value_t = 128)]
        dim: u32,
        /// Points loaded before the measurement.
        #[arg(long, default_value_t = 20_000)]
        points: u64,
        #[arg(long, default_value_t = 10)]
        k: u32,
        #[arg(long, default_value_t = 64)]
        ef: u32,
        /// The JSON result is written to OUT/load/<mode>-<connections>.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// A dataset served by a running dataplane over loopback: loaded over VBP, then its
    /// queries on many connections (closed loop) at each ef: QPS, latency, recall@k and the
    /// reactor's loop-iteration times; `peers/chroma_server.py` does the same for Chroma.
    ServeAnn {
        /// The dataplane's `host:port`.
        #[arg(long, default_value = "127.0.0.1:7700")]
        address: String,
        /// The dataset directory (from `dataset`).
        #[arg(long)]
        data: PathBuf,
        /// Beam widths, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
        ef: Vec<u32>,
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Measured seconds per ef.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 16)]
        m: u32,
        #[arg(long, default_value_t = 200)]
        ef_construction: u32,
        /// Store the collection's vectors as scalar-quantized `i8` (the graph walk compares
        /// codes, then re-ranks in `f32`; docs/INDEX.md).
        #[arg(long)]
        i8: bool,
        /// Before searching, wait until every LEU has merged its segments (the dataplane's
        /// idle merge, a few seconds after the last write), as a settled appliance serves.
        #[arg(long)]
        merged: bool,
        /// The JSON result is written to OUT/serve/<dataset>/<engine>.json (`vortex`, or
        /// `vortex-i8` with `--i8`).
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// A dataset loaded over VBP at full speed into a running dataplane while other
    /// connections search it (windows of `--seconds`, one beam width each in turn), then the
    /// same beam widths settled: QPS and recall@k while loading against settled (issue
    /// #22's during-ingest target). Recall while loading is scored against the exact
    /// neighbours among the rows acknowledged when each search was sent.
    ServeIngest {
        /// The dataplane's `host:port`.
        #[arg(long, default_value = "127.0.0.1:7700")]
        address: String,
        /// The dataset directory (from `dataset`).
        #[arg(long)]
        data: PathBuf,
        /// Beam widths, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
        ef: Vec<u32>,
        /// Loading connections.
        #[arg(long, default_value_t = 2)]
        load_connections: usize,
        /// Searching connections.
        #[arg(long, default_value_t = 2)]
        search_connections: usize,
        /// Seconds per window while loading, and per beam width settled.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// The first POOL queries are searched while loading (each is scored against every
        /// prefix of the load, so its distances to every row are kept: POOL × rows × 4
        /// bytes).
        #[arg(long, default_value_t = 100)]
        pool: usize,
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 16)]
        m: u32,
        #[arg(long, default_value_t = 200)]
        ef_construction: u32,
        /// Before the settled measurement, wait for every LEU's idle merge too.
        #[arg(long)]
        merged: bool,
        /// The JSON result is written to OUT/serve/<dataset>/ingest.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// VBP ping round trips on one connection against a running dataplane, beside the
    /// loopback floor: a minimal TCP echo of 64-byte messages, blocking and busy-polled.
    Floor {
        /// The dataplane's `host:port`.
        #[arg(long, default_value = "127.0.0.1:7700")]
        address: String,
        /// Measured seconds per row.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// The JSON result is written to OUT/serve/floor.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// Recall@10, QPS and latency of our index on a dataset, in the peers' result format.
    Ann {
        /// The dataset directory (from `dataset`).
        #[arg(long)]
        data: PathBuf,
        /// Beam widths, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
        ef: Vec<usize>,
        #[arg(long, default_value_t = 16)]
        m: usize,
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        #[arg(long, default_value_t = 2)]
        build_threads: usize,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// `none` (walk on f32) or `i8` (walk on codes, re-rank with f32).
        #[arg(long, default_value = "none")]
        quantization: String,
        /// With `i8`: re-rank the best k × this many candidates.
        #[arg(long, default_value_t = 4)]
        rerank_factor: usize,
        /// Timed passes per ef (the fastest is kept).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Also measure filtered search (ef 64) with this percentage of the nodes allowed.
        #[arg(long)]
        filter_percent: Option<f64>,
        /// Build over the rows written to a file (as an SSTable's vector region, which the
        /// shard's graphs search in place) and measure each ef with and without the rows'
        /// checksums verified by the searches (engine `vortex-checked`).
        #[arg(long)]
        checked_rows: bool,
        /// Results go to OUT/<dataset>/<engine>.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// Durable WAL appends/s and p50/p99 ack latency by record size and concurrent appenders,
    /// beside a write + fdatasync loop on the same file system (the floor).
    Wal {
        /// A scratch directory on the file system under test (its `wal/` and `floor/` are
        /// replaced).
        #[arg(long, default_value = "bench-rigs/data/wal-bench")]
        dir: PathBuf,
        /// Record payload sizes in bytes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "128,1024,4096")]
        record_bytes: Vec<usize>,
        /// Concurrent appenders, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        appenders: Vec<usize>,
        /// Measured seconds per configuration.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Buffered writes + fdatasync instead of O_DIRECT | O_DSYNC.
        #[arg(long)]
        buffered: bool,
        /// The JSON result is written to OUT/wal/wal.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// Random upserts then point lookups on our LSM store and on fjall, same workload and
    /// durability (group commits of --batch writes), with write amplification and ratios.
    Lsm {
        /// A scratch directory (its `vortex/` and `fjall/` are replaced, then removed).
        #[arg(long, default_value = "bench-rigs/data/lsm-bench")]
        dir: PathBuf,
        /// Upserts.
        #[arg(long, default_value_t = 10_000_000)]
        ops: u64,
        /// Key space (default: --ops).
        #[arg(long)]
        keys: Option<u64>,
        /// Value bytes.
        #[arg(long, default_value_t = 512)]
        value_bytes: usize,
        /// Writes per group commit.
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Point lookups after the load.
        #[arg(long, default_value_t = 1_000_000)]
        lookups: u64,
        /// Engines, in order.
        #[arg(long, value_delimiter = ',', default_value = "vortex,fjall")]
        engines: Vec<String>,
        /// The JSON result is written to OUT/lsm/lsm.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
    /// A dataset ingested into one shard (side-car indexes built in the background): ingest
    /// rate, QPS and recall@10 during and after ingest, time to ready, bytes per vector.
    Shard {
        /// The dataset directory (from `dataset`).
        #[arg(long, default_value = "bench-rigs/data/clustered-128-l2-100000")]
        data: PathBuf,
        /// Scratch directory for the shard (replaced, then removed).
        #[arg(long, default_value = "bench-rigs/data/shard-bench")]
        dir: PathBuf,
        /// Points per upsert.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Beam widths after ingest, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,128")]
        ef: Vec<usize>,
        /// Queries at each tenth of the load.
        #[arg(long, default_value_t = 100)]
        queries_during: usize,
        #[arg(long, default_value_t = 16)]
        m: u16,
        #[arg(long, default_value_t = 100)]
        ef_construction: u16,
        /// Index vectors as i8 (re-ranked with f32).
        #[arg(long)]
        quantized: bool,
        /// Point ids scattered over the key space (row × an odd constant) instead of the
        /// row numbers in order: every flush then overlaps every segment, as with hashed ids.
        #[arg(long)]
        scattered_ids: bool,
        /// The JSON result is written to OUT/shard/<dataset>.json.
        #[arg(long, default_value = "bench-rigs/results")]
        out: PathBuf,
    },
}

/// Writes `result` as pretty JSON to `dir/name` and says where.
fn write_result(
    dir: &std::path::Path,
    name: &str,
    result: &impl serde::Serialize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(result)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // The engines' warnings and errors (a failing flush, say) reach stderr; RUST_LOG
    // widens them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::Nop {
            config,
            leus,
            seconds,
            batch,
            sqpoll,
            json,
        } => {
            let mut appliance = match &config {
                Some(path) => ApplianceConfig::load(path)?,
                None => ApplianceConfig::default(),
            };
            if let Some(count) = leus {
                appliance.leu.count = LeuCount::Fixed(count);
                appliance.leu.cores.clear();
            }
            let topology = Topology::discover()?;
            let mapping = appliance
                .plan_leus(&topology)
                .context("planning the LEUs")?;
            anyhow::ensure!(seconds > 0.0, "--seconds must be positive");
            let bench = NopBenchConfig {
                mapping,
                ring: RingConfig::from_config(&appliance.io_uring),
                batch,
                duration: Duration::from_secs_f64(seconds),
                warmup: Duration::from_millis(500),
            };
            let mut modes = vec![NopMode::Tuned, NopMode::Plain];
            if sqpoll {
                modes.push(NopMode::Sqpoll);
            }
            let results: Vec<_> = modes
                .into_iter()
                .map(|mode| nop::run_mode(&bench, mode))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                print!("{}", nop::render(&results, &command_line));
            }
        }
        Command::Dataset {
            preset,
            n,
            queries,
            out,
            threads,
        } => {
            let (metric, default_n, dim, clusters, seed) = match preset.as_str() {
                "clustered-128-l2" => ("l2", 1_000_000, 128, 1024, 128),
                "clustered-384-cosine" => ("cosine", 200_000, 384, 512, 384),
                "clustered-768-cosine" => ("cosine", 100_000, 768, 256, 768),
                other => anyhow::bail!(
                    "unknown preset `{other}`: use clustered-128-l2, clustered-384-cosine or \
                     clustered-768-cosine"
                ),
            };
            let count = n.unwrap_or(default_n);
            let name = if count == default_n {
                preset.clone()
            } else {
                format!("{preset}-{count}")
            };
            let meta = DatasetMeta {
                name: name.clone(),
                metric: metric.into(),
                n: count,
                dim,
                queries,
                clusters,
                seed,
            };
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let directory = out.join(&name);
            let started = std::time::Instant::now();
            dataset::generate(&meta, &directory, threads)?;
            eprintln!(
                "{}: {count} × {dim} {metric}, {queries} queries, ground truth in {:.1} s",
                directory.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Ann {
            data,
            ef,
            m,
            ef_construction,
            build_threads,
            k,
            quantization,
            rerank_factor,
            repeats,
            filter_percent,
            checked_rows,
            out,
        } => {
            let quantization = match quantization.as_str() {
                "none" | "f32" => Quantization::None,
                "i8" => Quantization::ScalarI8,
                other => anyhow::bail!("unknown quantization `{other}`: use none or i8"),
            };
            let config = AnnConfig {
                data,
                ef,
                m,
                ef_construction,
                build_threads,
                k,
                quantization,
                rerank_factor,
                repeats,
                filter_percent,
                checked_rows,
                out,
            };
            eprintln!("{command_line}");
            let (_, path) = ann::run(&config)?;
            eprintln!("wrote {}", path.display());
        }
        Command::Wal {
            dir,
            record_bytes,
            appenders,
            seconds,
            buffered,
            out,
        } => {
            let config = WalBenchConfig {
                dir,
                record_bytes,
                appenders,
                seconds,
                direct: if buffered {
                    DirectIo::Off
                } else {
                    DirectIo::Auto
                },
            };
            eprintln!("{command_line}");
            let result = wal::run(&config, &command_line)?;
            let dir = out.join("wal");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let name = if buffered {
                "wal-buffered.json"
            } else {
                "wal.json"
            };
            let path = dir.join(name);
            std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        Command::Lsm {
            dir,
            ops,
            keys,
            value_bytes,
            batch,
            lookups,
            engines,
            out,
        } => {
            anyhow::ensure!(ops > 0 && batch > 0, "--ops and --batch must be positive");
            let config = LsmBenchConfig {
                dir,
                ops,
                keys: keys.unwrap_or(ops).max(1),
                value_bytes,
                batch,
                lookups,
                engines,
            };
            eprintln!("{command_line}");
            let result = lsm::run(&config, &command_line)?;
            print!("{}", lsm::render(&result));
            write_result(&out.join("lsm"), "lsm.json", &result)?;
        }
        Command::Load {
            address,
            connections,
            seconds,
            rate,
            search_percent,
            dim,
            points,
            k,
            ef,
            out,
        } => {
            let config = load::LoadConfig {
                address,
                connections,
                seconds,
                rate,
                search_percent,
                dim,
                points,
                k,
                ef,
            };
            eprintln!("{command_line}");
            let result = load::run(&config, &command_line)?;
            print!("{}", load::render(&result));
            write_result(
                &out.join("load"),
                &format!("{}-{}.json", result.mode, result.connections),
                &result,
            )?;
        }
        Command::ServeAnn {
            address,
            data,
            ef,
            connections,
            seconds,
            k,
            m,
            ef_construction,
            i8,
            merged,
            out,
        } => {
            eprintln!("{command_line}");
            let result = serve::ann(
                &address,
                &data,
                &ef,
                connections,
                seconds,
                k,
                m,
                ef_construction,
                i8,
                merged,
                &command_line,
            )?;
            println!(
                "| ef | recall@{k} | QPS | p50 µs | p99 µs | p99.9 µs | loop p99 µs (per LEU) |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---|");
            for point in &result.points {
                let loops: Vec<String> = point
                    .loop_jitter
                    .iter()
                    .map(|l| format!("{:.0}", l.p99_us))
                    .collect();
                println!(
                    "| {} | {:.4} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    point.ef,
                    point.recall,
                    point.qps,
                    point.latency.p50_us,
                    point.latency.p99_us,
                    point.latency.p999_us,
                    loops.join(", ")
                );
            }
            write_result(
                &out.join("serve").join(&result.dataset),
                &format!("{}.json", result.engine),
                &result,
            )?;
        }
        Command::ServeIngest {
            address,
            data,
            ef,
            load_connections,
            search_connections,
            seconds,
            pool,
            k,
            m,
            ef_construction,
            merged,
            out,
        } => {
            eprintln!("{command_line}");
            let config = ingest::IngestConfig {
                address,
                data,
                efs: ef,
                load_connections,
                search_connections,
                window_seconds: seconds,
                pool,
                k,
                m,
                ef_construction,
                merged,
            };
            let result = ingest::run(&config, &command_line)?;
            print!("{}", ingest::render(&result));
            write_result(
                &out.join("serve").join(&result.dataset),
                "ingest.json",
                &result,
            )?;
        }
        Command::Floor {
            address,
            seconds,
            out,
        } => {
            eprintln!("{command_line}");
            let rows = vec![
                serve::ping(&address, seconds)?,
                serve::raw_ping(&address, seconds)?,
                serve::echo(seconds, false)?,
                serve::echo(seconds, true)?,
            ];
            print!("{}", serve::render_floor(&rows));
            write_result(&out.join("serve"), "floor.json", &rows)?;
        }
        Command::Shard {
            data,
            dir,
            batch,
            ef,
            queries_during,
            m,
            ef_construction,
            quantized,
            scattered_ids,
            out,
        } => {
            shard::check_data(&data)?;
            anyhow::ensure!(
                batch > 0 && !ef.is_empty(),
                "--batch and --ef must be given"
            );
            let config = ShardBenchConfig {
                data,
                dir,
                batch,
                ef,
                queries_during,
                m,
                ef_construction,
                quantized,
                scattered_ids,
            };
            eprintln!("{command_line}");
            let result = shard::run(&config, &command_line)?;
            print!("{}", shard::render(&result));
            write_result(
                &out.join("shard"),
                &format!(
                    "{}{}.json",
                    result.dataset,
                    if scattered_ids { "-scattered" } else { "" }
                ),
                &result,
            )?;
        }
    }
    Ok(())
}
