//! The load generator (issue #8): many VBP connections against a running dataplane, a mix
//! of searches and upserts, latencies in HdrHistograms.
//!
//! - **Closed loop**: each connection sends its next request as soon as the last one was
//!   answered; the QPS is what the server sustains at that concurrency.
//! - **Open loop**: requests are scheduled at a fixed total rate, spread evenly over the
//!   connections, and each latency is measured from the request's *scheduled* time, so a
//!   server that falls behind shows it in the latency (no coordinated omission: a late
//!   answer delays the next send, and that delay is counted, as wrk2 does).
//!
//! The collection `load` is created and filled with `points` random vectors first (an
//! existing one of the same dimension and size is reused), and the run waits until the
//! server reports no index build or compaction pending (its `Stats` counters). Searches ask
//! for the `k` nearest of a random vector; upserts write one random point over the existing
//! ids (so the mix's upserts add flush and index work during the run, as they would).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};
use vortex_vbp::client::{Client, ClientError, ClientOptions};
use vortex_vbp::message::{
    counters_sum, CollectionSpec, Metric, Search, Upsert, VectorType, BACKGROUND_WORK_COUNTERS,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `host:port` of the dataplane.
    pub address: String,
    /// Connections, one thread each.
    pub connections: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// `None`: closed loop; `Some(rate)`: open loop at `rate` requests per second in all.
    pub rate: Option<f64>,
    /// Percent of requests that are searches (the rest upserts).
    pub search_percent: u32,
    /// Vector dimension.
    pub dim: u32,
    /// Points loaded first.
    pub points: u64,
    /// Neighbours per search.
    pub k: u32,
    /// Beam width per search (0: the server's default).
    pub ef: u32,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// A run's result.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub command: String,
    pub mode: String,
    pub connections: usize,
    pub seconds: f64,
    pub target_rate: Option<f64>,
    pub achieved_qps: f64,
    pub errors: u64,
    /// THROTTLED answers, each retried after the server's advised wait (the request's
    /// latency includes the waits).
    pub throttled: u64,
    pub search: Latency,
    pub upsert: Latency,
    pub all: Latency,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_vector(state: &mut u64, dim: u32) -> Vec<f32> {
    (0..dim)
        .map(|_| (splitmix(state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn latency(histogram: &Histogram<u64>) -> Latency {
    Latency {
        requests: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5) as f64,
        p99_us: histogram.value_at_quantile(0.99) as f64,
        p999_us: histogram.value_at_quantile(0.999) as f64,
        max_us: histogram.max() as f64,
    }
}

fn connect(address: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(&[address], ClientOptions::default())?)
}

/// Creates and fills the collection.
fn prepare(config: &LoadConfig) -> anyhow::Result<()> {
    let client = connect(&config.address)?;
    let spec = CollectionSpec {
        name: "load".into(),
        dimension: config.dim,
        metric: Metric::L2,
        m: 16,
        ef_construction: 100,
        vector_type: VectorType::F32,
    };
    match client.describe_collection("load") {
        Ok(info) if info.spec.dimension == config.dim && info.points >= config.points => {
            return settle(&client);
        }
        Ok(info) if info.spec.dimension == config.dim => {}
        Ok(_) => {
            client.drop_collection("load")?;
            client.create_collection(spec)?;
        }
        Err(_) => client.create_collection(spec)?,
    }
    let mut state = 0x10AD_u64;
    let batch = 500u64;
    let mut start = 0;
    while start < config.points {
        let end = (start + batch).min(config.points);
        let ids: Vec<u64> = (start..end).collect();
        let vectors = ids
            .iter()
            .flat_map(|_| random_vector(&mut state, config.dim))
            .collect();
        let request = Upsert {
            collection: "load".into(),
            dimension: config.dim,
            ids,
            vectors,
            payloads: Vec::new(),
        };
        loop {
            // THROTTLED whole or in part: the whole batch again (upserts are idempotent).
            match client.upsert(request.clone()) {
                Ok(_) => break,
                Err(error) => match error.retry_after() {
                    Some(retry_after) => {
                        std::thread::sleep(retry_after.max(Duration::from_millis(1)))
                    }
                    None => return Err(error.into()),
                },
            }
        }
        start = end;
    }
    settle(&client)
}

/// Waits (up to two minutes) until the server reports no index build or compaction pending,
/// so that the measurement does not share the cores with the load's own background work.
fn settle(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy = counters_sum(&client.stats()?, &BACKGROUND_WORK_COUNTERS);
        if busy == 0 || Instant::now() > deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One connection's share.
struct Share {
    search: Histogram<u64>,
    upsert: Histogram<u64>,
    errors: u64,
    /// THROTTLED answers (each retried after the advised wait).
    throttled: u64,
    /// The first error's text, printed once with the result.
    first_error: Option<String>,
}

fn worker(config: &LoadConfig, index: usize, started: Instant) -> anyhow::Result<Share> {
    let client = connect(&config.address)?;
    let mut share = Share {
        search: histogram(),
        upsert: histogram(),
        errors: 0,
        throttled: 0,
        first_error: None,
    };
    let mut state = 0xBE_u64 + index as u64;
    let deadline = started + Duration::from_secs_f64(config.seconds);
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(config.connections as f64 / rate));
    // Spread the connections' schedules over one interval.
    let mut scheduled = started
        + interval.map_or(Duration::ZERO, |interval| {
            interval.mul_f64(index as f64 / config.connections as f64)
        });
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let from = match interval {
            Some(interval) => {
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                let from = scheduled;
                scheduled += interval;
                if from >= deadline {
                    break;
                }
                from
            }
            None => now,
        };
        let is_search = (splitmix(&mut state) % 100) < u64::from(config.search_percent);
        let vector = random_vector(&mut state, config.dim);
        let id = splitmix(&mut state) % config.points.max(1);
        // THROTTLED is retried after the wait the server advises, as a client would; the
        // latency runs from the first send (or the scheduled time), so it shows.
        let outcome = loop {
            let outcome = if is_search {
                client
                    .search(Search {
                        collection: "load".into(),
                        vector: vector.clone(),
                        k: config.k,
                        ef: config.ef,
                        filter: None,
                        with_payload: false,
                    })
                    .map(|_| ())
            } else {
                client
                    .upsert(Upsert {
                        collection: "load".into(),
                        dimension: config.dim,
                        ids: vec![id],
                        vectors: vector.clone(),
                        payloads: Vec::new(),
                    })
                    .map(|_| ())
            };
            match outcome.as_ref().err().and_then(ClientError::retry_after) {
                Some(retry_after) if Instant::now() < deadline => {
                    share.throttled += 1;
                    std::thread::sleep(retry_after.min(deadline - Instant::now()));
                }
                _ => break outcome,
            }
        };
        let micros = from.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        match outcome {
            Ok(()) => {
                let histogram = if is_search {
                    &mut share.search
                } else {
                    &mut share.upsert
                };
                let _ = histogram.record(micros);
            }
            Err(error) => {
                share.errors += 1;
                share.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    Ok(share)
}

/// Runs the load.
pub fn run(config: &LoadConfig, command: &str) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(config.connections > 0, "--connections must be positive");
    anyhow::ensure!(config.search_percent <= 100, "--search-percent is 0 to 100");
    prepare(config)?;
    let started = Instant::now() + Duration::from_millis(200);
    let shares: Vec<anyhow::Result<Share>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.connections)
            .map(|index| scope.spawn(move || worker(config, index, started)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let (mut search, mut upsert, mut all) = (histogram(), histogram(), histogram());
    let mut errors = 0;
    let mut throttled = 0;
    for share in shares {
        let share = share?;
        search.add(&share.search)?;
        upsert.add(&share.upsert)?;
        all.add(&share.search)?;
        all.add(&share.upsert)?;
        errors += share.errors;
        throttled += share.throttled;
        if let Some(error) = share.first_error {
            eprintln!("a connection's first error (of {}): {error}", share.errors);
        }
    }
    Ok(LoadResult {
        command: command.to_owned(),
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        connections: config.connections,
        seconds: elapsed,
        target_rate: config.rate,
        achieved_qps: all.len() as f64 / elapsed,
        errors,
        throttled,
        search: latency(&search),
        upsert: latency(&upsert),
        all: latency(&all),
    })
}

/// The result as Markdown.
pub fn render(result: &LoadResult) -> String {
    let mut out = format!(
        "`{}`\n\n{} loop, {} connections, {:.1} s{}: {:.0} requests/s achieved, {} errors, {} THROTTLED (retried)\n\n\
         | requests | count | p50 µs | p99 µs | p99.9 µs | max µs |\n|---|---:|---:|---:|---:|---:|\n",
        result.command,
        result.mode,
        result.connections,
        result.seconds,
        result
            .target_rate
            .map(|rate| format!(" at {rate:.0}/s offered"))
            .unwrap_or_default(),
        result.achieved_qps,
        result.errors,
        result.throttled
    );
    for (name, latency) in [
        ("search", &result.search),
        ("upsert", &result.upsert),
        ("all", &result.all),
    ] {
        out.push_str(&format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            latency.requests, latency.p50_us, latency.p99_us, latency.p999_us, latency.max_us
        ));
    }
    out
}
