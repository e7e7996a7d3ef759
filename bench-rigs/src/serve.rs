//! Serving benchmarks over loopback (issue #8's performance section):
//!
//! - [`ann`]: a dataset loaded into a running dataplane, then its queries sent over many
//!   connections (closed loop) at each beam width: QPS, latency percentiles and recall@k
//!   against the exact neighbours, plus the reactor's loop-iteration times during the run
//!   (from the dataplane's stats). `peers/chroma_server.py` measures the Chroma server the
//!   same way on the same files.
//! - [`ping`]: VBP ping round trips on one connection.
//! - [`echo`]: the loopback floor, a minimal TCP echo of 64-byte messages (TCP_NODELAY),
//!   with blocking sockets and with both sides busy-polling non-blocking sockets.

use crate::dataset::Dataset;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vortex_vbp::client::{Client, ClientError, ClientOptions};
use vortex_vbp::message::{
    counters_sum, CollectionSpec, Metric, Search, Upsert, VectorType, BACKGROUND_WORK_COUNTERS,
};
use vortex_vbp::sharded::ShardedClient;

/// The collection the ANN benchmark fills.
pub(crate) const COLLECTION: &str = "ann";

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

pub(crate) fn latency(histogram: &Histogram<u64>) -> Latency {
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: histogram.max() as f64 / 1000.0,
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The reactor's loop-iteration times of one LEU during a run: the difference of its
/// histogram buckets (`loop_le_ns_*` counters) read before and after, so startup and
/// loading do not count. Percentiles are bucket tops (within 12.5 %).
#[derive(Debug, Clone, Serialize)]
pub struct LoopJitter {
    pub leu: u16,
    pub iterations: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub throttled_entered: u64,
}

/// Each LEU's loop-time buckets (top in ns → iterations) and THROTTLED entries.
type LoopReading = Vec<(u16, std::collections::BTreeMap<u64, u64>, u64)>;

fn loop_reading(client: &Client) -> anyhow::Result<LoopReading> {
    Ok(client
        .stats()?
        .iter()
        .map(|leu| {
            let buckets = leu
                .counters
                .iter()
                .filter_map(|c| {
                    let top = c.name.strip_prefix("loop_le_ns_")?.parse::<u64>().ok()?;
                    Some((top, c.value))
                })
                .collect();
            let throttled = leu.counter("throttled_entered").unwrap_or(0);
            (leu.leu, buckets, throttled)
        })
        .collect())
}

fn loop_jitter(before: &LoopReading, after: &LoopReading) -> Vec<LoopJitter> {
    after
        .iter()
        .map(|(leu, buckets, throttled)| {
            let earlier = before.iter().find(|(l, _, _)| l == leu);
            let window: Vec<(u64, u64)> = buckets
                .iter()
                .map(|(&top, &count)| {
                    let then = earlier
                        .and_then(|(_, b, _)| b.get(&top))
                        .copied()
                        .unwrap_or(0);
                    (top, count.saturating_sub(then))
                })
                .filter(|&(_, count)| count > 0)
                .collect();
            let total: u64 = window.iter().map(|&(_, count)| count).sum();
            let quantile = |q: f64| {
                let rank = ((q * total as f64).ceil() as u64).max(1);
                let mut seen = 0;
                for &(top, count) in &window {
                    seen += count;
                    if seen >= rank {
                        return top as f64 / 1000.0;
                    }
                }
                0.0
            };
            LoopJitter {
                leu: *leu,
                iterations: total,
                p50_us: quantile(0.5),
                p99_us: quantile(0.99),
                p999_us: quantile(0.999),
                max_us: window.last().map_or(0.0, |&(top, _)| top as f64 / 1000.0),
                throttled_entered: throttled - earlier.map_or(0, |(_, _, t)| *t).min(*throttled),
            }
        })
        .collect()
}

/// One beam width's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct AnnPoint {
    pub ef: u32,
    pub recall: f64,
    pub qps: f64,
    pub queries: u64,
    pub errors: u64,
    pub latency: Latency,
    /// The reactor's loop-iteration times during this run, per LEU.
    pub loop_jitter: Vec<LoopJitter>,
}

/// The ANN serving result.
#[derive(Debug, Clone, Serialize)]
pub struct AnnResult {
    pub engine: String,
    pub dataset: String,
    pub command: String,
    pub connections: usize,
    pub seconds_per_ef: f64,
    pub k: usize,
    pub load_seconds: f64,
    pub points: Vec<AnnPoint>,
}

/// Sends until the answer is not THROTTLED (whole or in part), waiting the server's hint, doubled on each
/// further THROTTLED up to 64 times it (many loaders retrying at the hint's pace kept the
/// LEUs busy receiving batches they could only refuse).
pub(crate) fn retrying<T>(
    mut attempt: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut backoff = 1u32;
    loop {
        // A write partly THROTTLED (`Partial`) is sent again whole: upserts are idempotent.
        match attempt() {
            Err(error) => match error.retry_after() {
                Some(retry_after) => {
                    std::thread::sleep(retry_after.max(Duration::from_millis(1)) * backoff);
                    backoff = (backoff * 2).min(64);
                }
                None => return Err(error),
            },
            done => return done,
        }
    }
}

/// Loads `dataset` into the collection (unless it already holds it) from `connections`
/// threads, each sending batches of 1,000 points straight to their owning LEUs (the
/// shard-aware client), and waits until the dataplane reports no index build or compaction
/// pending; with `merged`, also until every LEU has merged its segments (the idle merge
/// starts a few seconds after the last write).
fn load(
    client: &Client,
    address: &str,
    dataset: &Dataset,
    spec: (u32, u32, VectorType),
    connections: usize,
    merged: bool,
) -> anyhow::Result<f64> {
    let n = dataset.base.len() as u64;
    let started = Instant::now();
    match client.describe_collection(COLLECTION) {
        Ok(info)
            if info.points == n
                && info.spec.dimension as usize == dataset.meta.dim
                && info.spec.vector_type == spec.2 =>
        {
            eprintln!("collection `{COLLECTION}` already holds the {n} points");
            settle(client, merged)?;
            return Ok(0.0);
        }
        Ok(_) => client.drop_collection(COLLECTION)?,
        Err(_) => {}
    }
    create(client, dataset, spec)?;
    let loaded = AtomicUsize::new(0);
    send_rows(address, dataset, connections, &|start, end| {
        let total = loaded.fetch_add(end - start, Ordering::Relaxed) + end - start;
        if total % 100_000 < BATCH {
            eprintln!(
                "loaded {total} of {n} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    let loaded_in = started.elapsed().as_secs_f64();
    for leu in client.stats()? {
        let counters: Vec<String> = leu
            .counters
            .iter()
            .filter(|c| {
                c.name.starts_with("throttled")
                    || c.name.starts_with("closed_")
                    || matches!(c.name.as_str(), "requests_answered" | "handed_over")
            })
            .map(|c| format!("{} {}", c.name, c.value))
            .collect();
        eprintln!(
            "after the load ({loaded_in:.1} s), LEU {}: {}",
            leu.leu,
            counters.join(", ")
        );
    }
    settle(client, merged)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Creates the benchmark's collection for `dataset` (`spec`: m, ef_construction, vector
/// type).
pub(crate) fn create(
    client: &Client,
    dataset: &Dataset,
    spec: (u32, u32, VectorType),
) -> anyhow::Result<()> {
    let (m, ef_construction, vector_type) = spec;
    client.create_collection(CollectionSpec {
        name: COLLECTION.into(),
        dimension: dataset.meta.dim as u32,
        metric: match dataset.meta.metric.as_str() {
            "l2" => Metric::L2,
            "cosine" => Metric::Cosine,
            other => anyhow::bail!("metric `{other}`: expected l2 or cosine"),
        },
        m: u16::try_from(m)?,
        ef_construction: u16::try_from(ef_construction)?,
        vector_type,
    })?;
    Ok(())
}

/// Points per upsert batch of the loaders.
pub(crate) const BATCH: usize = 1000;

/// Sends the dataset's rows, in batches of [`BATCH`] taken in order, from `connections`
/// threads, each straight to the owning LEUs (the shard-aware client), retrying THROTTLED;
/// `acked(start, end)` runs once each batch is acknowledged (durable).
pub(crate) fn send_rows(
    address: &str,
    dataset: &Dataset,
    connections: usize,
    acked: &(dyn Fn(usize, usize) + Sync),
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let dim = dataset.meta.dim;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..connections.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let client = ShardedClient::connect(address, ClientOptions::default())?;
                    loop {
                        let start = next.fetch_add(BATCH, Ordering::Relaxed);
                        if start >= dataset.base.len() {
                            return Ok(());
                        }
                        let end = (start + BATCH).min(dataset.base.len());
                        let upsert = Upsert {
                            collection: COLLECTION.into(),
                            dimension: dim as u32,
                            ids: (start as u64..end as u64).collect(),
                            vectors: dataset.base.values[start * dim..end * dim].to_vec(),
                            payloads: Vec::new(),
                        };
                        retrying(|| client.upsert(upsert.clone()))?;
                        acked(start, end);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a loading thread panicked")))?;
        }
        Ok(())
    })
}

/// Waits (up to half an hour: a full merge of 1 M points builds its graph on one thread)
/// until no index build or compaction is pending and, with `merged`, no LEU has an idle
/// merge due (each merged its segments since the last write).
pub(crate) fn settle(client: &Client, merged: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut said = Instant::now();
    loop {
        let stats = client.stats()?;
        let busy = counters_sum(&stats, &BACKGROUND_WORK_COUNTERS);
        let unmerged = if merged {
            counters_sum(&stats, &["idle_merge_due"])
        } else {
            0
        };
        if busy == 0 && unmerged == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!("gave up waiting: {busy} index builds and compactions, {unmerged} LEUs to merge; measuring anyway");
            return Ok(());
        }
        if said.elapsed() > Duration::from_secs(5) {
            said = Instant::now();
            eprintln!("waiting for {busy} index builds and compactions, {unmerged} LEUs to merge");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Query `query` of `dataset` on `client` (retrying THROTTLED), and the nanoseconds its
/// answer took.
pub(crate) fn timed_search(
    client: &ShardedClient,
    dataset: &Dataset,
    query: usize,
    k: usize,
    ef: u32,
) -> (Result<Vec<vortex_vbp::message::Hit>, ClientError>, u64) {
    let sent = Instant::now();
    let answer = retrying(|| {
        client.search(Search {
            collection: COLLECTION.into(),
            vector: dataset.queries.row(query).to_vec(),
            k: k as u32,
            ef,
            filter: None,
            with_payload: false,
        })
    });
    (answer, sent.elapsed().as_nanos() as u64)
}

/// One connection's share of a run: latencies, true neighbours found, queries answered,
/// errors.
type Share = (Histogram<u64>, usize, u64, u64);

/// Runs the ANN serving benchmark.
#[allow(clippy::too_many_arguments)]
pub fn ann(
    address: &str,
    data: &Path,
    efs: &[u32],
    connections: usize,
    seconds: f64,
    k: usize,
    m: u32,
    ef_construction: u32,
    i8: bool,
    merged: bool,
    command: &str,
) -> anyhow::Result<AnnResult> {
    anyhow::ensure!(connections > 0, "--connections must be positive");
    let dataset = Dataset::load(data)?;
    let client = Client::connect(&[address], ClientOptions::default())?;
    let load_seconds = load(
        &client,
        address,
        &dataset,
        (
            m,
            ef_construction,
            if i8 { VectorType::I8 } else { VectorType::F32 },
        ),
        connections,
        merged,
    )?;
    let mut points = Vec::new();
    for &ef in efs {
        points.push(measure(
            &client,
            address,
            &dataset,
            ef,
            connections,
            seconds,
            k,
        )?);
    }
    Ok(AnnResult {
        engine: if i8 { "vortex-i8" } else { "vortex" }.into(),
        dataset: dataset.meta.name.clone(),
        command: command.to_owned(),
        connections,
        seconds_per_ef: seconds,
        k,
        load_seconds,
        points,
    })
}

/// One closed-loop run at `ef` on `connections` connections for `seconds`: the dataset's
/// queries in turn, recall@k against its exact neighbours.
pub(crate) fn measure(
    client: &Client,
    address: &str,
    dataset: &Dataset,
    ef: u32,
    connections: usize,
    seconds: f64,
    k: usize,
) -> anyhow::Result<AnnPoint> {
    let next = AtomicUsize::new(0);
    let before = loop_reading(client)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let shares: Vec<anyhow::Result<Share>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                let next = &next;
                scope.spawn(move || -> anyhow::Result<_> {
                    // Shard-aware: one connection per LEU, searches sent to them in
                    // turn, so every LEU receives its share whatever the port spread.
                    let client = ShardedClient::connect(address, ClientOptions::default())?;
                    let mut times = histogram();
                    let (mut found, mut asked, mut errors) = (0usize, 0u64, 0u64);
                    while Instant::now() < deadline {
                        let query = next.fetch_add(1, Ordering::Relaxed) % dataset.queries.len();
                        let (answer, ns) = timed_search(&client, dataset, query, k, ef);
                        match answer {
                            Ok(hits) => {
                                let _ = times.record(ns.max(1));
                                let truth = &dataset.truth.row(query)[..k];
                                found += hits
                                    .iter()
                                    .filter(|hit| truth.contains(&(hit.id as i32)))
                                    .count();
                                asked += 1;
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    Ok((times, found, asked, errors))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut times = histogram();
    let (mut found, mut asked, mut errors) = (0usize, 0u64, 0u64);
    for share in shares {
        let (share_times, share_found, share_asked, share_errors) = share?;
        times.add(&share_times)?;
        found += share_found;
        asked += share_asked;
        errors += share_errors;
    }
    let point = AnnPoint {
        ef,
        recall: found as f64 / (asked.max(1) as f64 * k as f64),
        qps: asked as f64 / elapsed,
        queries: asked,
        errors,
        latency: latency(&times),
        loop_jitter: loop_jitter(&before, &loop_reading(client)?),
    };
    eprintln!(
        "ef {ef}: recall@{k} {:.4}, {:.0} QPS, p50 {:.0} µs, p99 {:.0} µs",
        point.recall, point.qps, point.latency.p50_us, point.latency.p99_us
    );
    Ok(point)
}

/// A round-trip measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTrips {
    pub name: String,
    pub round_trips: u64,
    pub per_second: f64,
    pub latency: Latency,
}

fn round_trips(
    name: &str,
    seconds: f64,
    mut once: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<RoundTrips> {
    let mut times = histogram();
    // Warm-up, untimed.
    for _ in 0..1000 {
        once()?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let sent = Instant::now();
        once()?;
        let _ = times.record((sent.elapsed().as_nanos() as u64).max(1));
    }
    Ok(RoundTrips {
        name: name.to_owned(),
        round_trips: times.len(),
        per_second: times.len() as f64 / started.elapsed().as_secs_f64(),
        latency: latency(&times),
    })
}

/// VBP pings on one connection.
pub fn ping(address: &str, seconds: f64) -> anyhow::Result<RoundTrips> {
    let client = Client::connect(&[address], ClientOptions::default())?;
    round_trips("vortex VBP ping", seconds, || {
        client.ping()?;
        Ok(())
    })
}

/// VBP pings on one blocking socket, without the client library (whose reader thread
/// hands each answer over): the server's own share of a round trip, beside the echo.
pub fn raw_ping(address: &str, seconds: f64) -> anyhow::Result<RoundTrips> {
    use vortex_vbp::header::{FrameHeader, HEADER_BYTES};
    let mut socket = TcpStream::connect(address)?;
    socket.set_nodelay(true)?;
    let frame = vortex_vbp::codec::Request::Ping(vortex_vbp::message::Ping { nonce: 7 })
        .encode(1)?
        .to_vec();
    let mut answer = vec![0u8; 4096];
    round_trips("vortex VBP ping, blocking socket", seconds, || {
        socket.write_all(&frame)?;
        socket.read_exact(&mut answer[..HEADER_BYTES])?;
        let header = FrameHeader::parse(&answer[..HEADER_BYTES])
            .ok_or_else(|| anyhow::anyhow!("not a VBP frame"))?;
        let total = usize::try_from(header.frame_length())?;
        anyhow::ensure!(total <= answer.len(), "answer of {total} bytes");
        socket.read_exact(&mut answer[HEADER_BYTES..total])?;
        Ok(())
    })
}

/// The loopback floor: 64-byte echoes, blocking (`busy_poll` false) or with both sides
/// spinning on non-blocking sockets.
pub fn echo(seconds: f64, busy_poll: bool) -> anyhow::Result<RoundTrips> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(busy_poll)?;
        let mut message = [0u8; 64];
        loop {
            if !exchange_read(&mut socket, &mut message)? {
                return Ok(());
            }
            exchange_write(&mut socket, &message)?;
        }
    });
    let mut socket = TcpStream::connect(address)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(busy_poll)?;
    let message = [7u8; 64];
    let mut answer = [0u8; 64];
    let name = if busy_poll {
        "TCP echo, busy-polled"
    } else {
        "TCP echo, blocking"
    };
    let result = round_trips(name, seconds, || {
        exchange_write(&mut socket, &message)?;
        anyhow::ensure!(exchange_read(&mut socket, &mut answer)?, "echo closed");
        Ok(())
    });
    drop(socket);
    let _ = server.join();
    result
}

/// Reads exactly `buffer.len()` bytes, spinning on `WouldBlock`; false at end of stream.
fn exchange_read(socket: &mut TcpStream, buffer: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match socket.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

fn exchange_write(socket: &mut TcpStream, buffer: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < buffer.len() {
        match socket.write(&buffer[written..]) {
            Ok(n) => written += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The pings beside the echo floors, as Markdown, each row's p50 over the blocking echo's.
pub fn render_floor(rows: &[RoundTrips]) -> String {
    let floor = rows
        .iter()
        .find(|row| row.name == "TCP echo, blocking")
        .map_or(1.0, |row| row.latency.p50_us);
    let mut out = String::from(
        "| round trip | count | per s | p50 µs | p99 µs | p50 / blocking echo p50 |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.2} |\n",
            row.name,
            row.round_trips,
            row.per_second,
            row.latency.p50_us,
            row.latency.p99_us,
            row.latency.p50_us / floor.max(1e-9)
        ));
    }
    out
}
