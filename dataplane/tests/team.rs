//! A team of LEUs in one process, each on its own thread, ring, shard and port: writes land
//! on the LEU that owns each point (whichever LEU the client reached), searches are
//! answered over every LEU's points, and a stop leaves every acknowledged write
//! on its owner's disk. Searches run whole on the LEU that received them (over every LEU's
//! published view) or, as the other spread, fanned out and gathered: both find the exact top
//! k and see every acknowledged write at once, whichever LEU owns it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use vortex_config::SearchSpread;
use vortex_dataplane::handover::team;
use vortex_dataplane::routing::Ring;
use vortex_dataplane::server::{serve, ServeReport, ServerConfig};
use vortex_shard::{Shard, ShardOptions};
use vortex_test_support::Rng;
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::message::{
    CollectionSpec, Metric, Payload, PayloadField, PayloadValue, Search, Upsert, VectorType,
};

const LEUS: usize = 3;
const VNODES: u16 = 256;
const DIM: usize = 8;

struct Team {
    addresses: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ServeReport>>,
}

fn start(dir: &Path) -> Team {
    start_with(dir, ServerConfig::default())
}

fn start_with(dir: &Path, config: ServerConfig) -> Team {
    start_with_options(dir, config, |_| ShardOptions::default())
}

/// A team whose LEU `leu` opens its shard with `options(leu)`.
fn start_with_options(
    dir: &Path,
    config: ServerConfig,
    options: impl Fn(u16) -> ShardOptions,
) -> Team {
    let links = team(Ring::new(LEUS, VNODES).unwrap(), 64).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut addresses = Vec::new();
    let mut threads = Vec::new();
    for links in links {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addresses.push(listener.local_addr().unwrap());
        let shard_dir = dir.join(format!("leu-{}", links.leu));
        let (stop, config) = (Arc::clone(&stop), config.clone());
        let options = options(links.leu);
        threads.push(std::thread::spawn(move || {
            let (shard, _) = Shard::open(&shard_dir, options).unwrap();
            serve(vec![listener], shard, links, config, stop).unwrap()
        }));
    }
    Team {
        addresses,
        stop,
        threads,
    }
}

impl Team {
    fn client(&self, leu: usize) -> Client {
        Client::connect(&[self.addresses[leu].to_string()], ClientOptions::default()).unwrap()
    }

    fn stop(self) -> Vec<ServeReport> {
        self.stop.store(true, Ordering::Release);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn spec() -> CollectionSpec {
    CollectionSpec {
        name: "docs".into(),
        dimension: DIM as u32,
        metric: Metric::L2,
        m: 16,
        ef_construction: 128,
        vector_type: VectorType::F32,
    }
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[test]
fn points_live_on_their_owners_and_whole_searches_find_the_exact_top_k() {
    points_live_on_their_owners_and_searches_find_the_exact_top_k(SearchSpread::Whole);
}

#[test]
fn points_live_on_their_owners_and_fanned_out_searches_gather_the_exact_top_k() {
    points_live_on_their_owners_and_searches_find_the_exact_top_k(SearchSpread::FanOut);
}

/// Writes through every LEU, then searches through every LEU: whole on the receiving LEU over
/// every LEU's published view, or fanned out to every LEU and gathered.
fn points_live_on_their_owners_and_searches_find_the_exact_top_k(spread: SearchSpread) {
    let seed: u64 = std::env::var("VORTEX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7EA3);
    println!("seed {seed} (VORTEX_TEST_SEED to repeat)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let running = start_with(
        dir.path(),
        ServerConfig {
            search: spread,
            ..ServerConfig::default()
        },
    );
    let clients: Vec<Client> = (0..LEUS).map(|leu| running.client(leu)).collect();
    clients[1].create_collection(spec()).unwrap();
    for client in &clients {
        assert!(
            client.create_collection(spec()).is_err(),
            "it exists everywhere"
        );
    }

    // 1,200 points with random ids, in batches written through every LEU in turn.
    let mut points: Vec<(u64, Vec<f32>)> = Vec::new();
    for batch in 0..12 {
        let ids: Vec<u64> = (0..100).map(|_| rng.next()).collect();
        let vectors: Vec<Vec<f32>> = ids
            .iter()
            .map(|_| (0..DIM).map(|_| rng.unit()).collect())
            .collect();
        let written = clients[batch % LEUS]
            .upsert(Upsert {
                collection: "docs".into(),
                dimension: DIM as u32,
                ids: ids.clone(),
                vectors: vectors.concat(),
                payloads: Vec::new(),
            })
            .unwrap();
        assert_eq!(written, 100);
        points.extend(ids.into_iter().zip(vectors));
    }
    // Deletes through another LEU than wrote them.
    let deleted: Vec<u64> = points.iter().step_by(10).map(|(id, _)| *id).collect();
    assert_eq!(
        clients[2].delete("docs", deleted.clone()).unwrap(),
        deleted.len() as u32
    );
    points.retain(|(id, _)| !deleted.contains(id));
    for client in &clients {
        assert_eq!(client.count("docs", None).unwrap(), points.len() as u64);
        assert_eq!(
            client.describe_collection("docs").unwrap().points,
            points.len() as u64
        );
        let listed = client.list_collections().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].points, points.len() as u64);
    }

    // Get: request order, from any LEU, deleted ids absent.
    let asked: Vec<u64> = vec![points[5].0, deleted[0], points[900].0, points[17].0];
    let got = clients[0].get("docs", asked.clone()).unwrap();
    let got_ids: Vec<u64> = got.iter().map(|p| p.id).collect();
    assert_eq!(got_ids, vec![asked[0], asked[2], asked[3]]);

    // Searches at a wide beam: every LEU's answer is the exact top 10 of all points.
    for query in 0..30 {
        let vector: Vec<f32> = (0..DIM).map(|_| rng.unit()).collect();
        let mut exact: Vec<(f32, u64)> =
            points.iter().map(|(id, v)| (l2(&vector, v), *id)).collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let expected: Vec<u64> = exact.iter().take(10).map(|&(_, id)| id).collect();
        // Every other search asks to be fanned out (the FAN_OUT flag), whatever the spread.
        let hits = clients[query % LEUS]
            .search_spread(
                Search {
                    collection: "docs".into(),
                    vector,
                    k: 10,
                    ef: 400,
                    filter: None,
                    with_payload: false,
                },
                query % 2 == 1,
            )
            .unwrap();
        let found: Vec<u64> = hits.iter().map(|hit| hit.id).collect();
        assert_eq!(found, expected, "query {query} (seed {seed})");
    }

    // Read your writes across LEUs: a point acknowledged through one LEU (owned by any) is
    // found at once by a search through another.
    for round in 0..12u64 {
        let id = rng.next();
        let vector: Vec<f32> = (0..DIM).map(|_| 2.0 + rng.unit()).collect();
        let through = (round % LEUS as u64) as usize;
        clients[through]
            .upsert(Upsert {
                collection: "docs".into(),
                dimension: DIM as u32,
                ids: vec![id],
                vectors: vector.clone(),
                payloads: Vec::new(),
            })
            .unwrap();
        let written = vector.clone();
        let hits = clients[(through + 1) % LEUS]
            .search(Search {
                collection: "docs".into(),
                vector,
                k: 1,
                ef: 64,
                filter: None,
                with_payload: false,
            })
            .unwrap();
        assert_eq!(hits.first().map(|hit| hit.id), Some(id), "round {round}");
        assert_eq!(hits[0].distance, 0.0);
        points.push((id, written));
    }

    let stats = clients[0].stats().unwrap();
    assert_eq!(
        stats.iter().map(|s| s.leu).collect::<Vec<_>>(),
        (0..LEUS as u16).collect::<Vec<_>>()
    );
    drop(clients);
    let reports = running.stop();
    assert!(reports.iter().all(|r| r.handed_over > 0), "{reports:?}");
    match spread {
        // 15 + 12 searches run whole where they were received; the 15 flagged fanned out.
        SearchSpread::Whole => assert_eq!(
            reports.iter().map(|r| r.whole_searches).sum::<u64>(),
            27,
            "{reports:?}"
        ),
        SearchSpread::FanOut => assert!(reports.iter().all(|r| r.whole_searches == 0)),
    }
    assert!(
        reports.iter().all(|r| r.served_for_others > 0),
        "{reports:?}"
    );

    // On disk, each LEU holds exactly the points it owns.
    let ring = Ring::new(LEUS, VNODES).unwrap();
    let ids: Vec<u64> = points.iter().map(|(id, _)| *id).collect();
    for leu in 0..LEUS {
        let (shard, _) = Shard::open(
            &dir.path().join(format!("leu-{leu}")),
            ShardOptions::default(),
        )
        .unwrap();
        let owned: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&id| ring.leu_of(id) == leu)
            .collect();
        let held = shard.get("docs", &ids, false, false).unwrap();
        let held: Vec<u64> = held.iter().map(|p| p.id).collect();
        assert_eq!(held, owned, "LEU {leu}");
        assert_eq!(
            shard.describe_collection("docs").unwrap().points,
            owned.len() as u64
        );
    }
}

/// The client library learns the LEU map from a stats request and sends each point's
/// writes and reads to its owner's own port: the LEUs hand nothing over for them.
#[test]
fn a_shard_aware_client_sends_points_to_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path());
    let first = running.client(0);
    first.create_collection(spec()).unwrap();
    let handed_over = |client: &Client| -> u64 {
        client
            .stats()
            .unwrap()
            .iter()
            .flat_map(|leu| leu.counters.iter())
            .filter(|c| c.name == "handed_over")
            .map(|c| c.value)
            .sum()
    };
    let sharded = vortex_vbp::sharded::ShardedClient::connect(
        &running.addresses[1].to_string(),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(sharded.ring(), &Ring::new(LEUS, VNODES).unwrap());
    for leu in 0..LEUS {
        assert_eq!(sharded.address(leu), Some(running.addresses[leu]));
    }
    let before = handed_over(&first);
    let ids: Vec<u64> = (0..600u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let vectors: Vec<f32> = ids
        .iter()
        .flat_map(|&id| (0..DIM).map(move |d| ((id >> (d * 4)) & 0xF) as f32))
        .collect();
    let written = sharded
        .upsert(Upsert {
            collection: "docs".into(),
            dimension: DIM as u32,
            ids: ids.clone(),
            vectors: vectors.clone(),
            payloads: Vec::new(),
        })
        .unwrap();
    assert_eq!(written, 600);
    let asked = vec![ids[7], ids[300], 12345, ids[0]];
    let got: Vec<u64> = sharded
        .get("docs", asked.clone())
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(got, vec![ids[7], ids[300], ids[0]]);
    assert_eq!(sharded.delete("docs", ids[..100].to_vec()).unwrap(), 100);
    // Stats, counts and searches may be handed over; the writes and gets above were not.
    let after = handed_over(&first);
    assert_eq!(
        after,
        before + (LEUS as u64 - 1),
        "only the stats request fanned out"
    );
    assert_eq!(first.count("docs", None).unwrap(), 500);
    let hits = sharded
        .search(Search {
            collection: "docs".into(),
            vector: vectors[300 * DIM..301 * DIM].to_vec(),
            k: 1,
            ef: 64,
            filter: None,
            with_payload: false,
        })
        .unwrap();
    assert_eq!(hits[0].distance, 0.0);
    drop((first, sharded));
    running.stop();
}

/// A scattered write is applied on every owner or on none: with one handler slot per LEU
/// for clients, writers on every LEU keep the slots taken, yet the parts one LEU hands to
/// another always find a slot of their own. Each writer rewrites the same 12 points (spread
/// over the LEUs) with its batch number and does not retry a THROTTLED batch; at the end
/// each writer's points all hold one batch number, the last one acknowledged.
#[test]
fn a_scattered_write_is_applied_on_every_owner_or_on_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        handlers_max: 1,
        ..ServerConfig::default()
    };
    let team = start_with(dir.path(), config);
    team.client(0).create_collection(spec()).unwrap();
    let throttled = std::sync::atomic::AtomicU64::new(0);
    let last_acked: Vec<u64> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..6u64)
            .map(|writer| {
                let (team, throttled) = (&team, &throttled);
                scope.spawn(move || {
                    let client = team.client(writer as usize % LEUS);
                    let ids: Vec<u64> = (0..12).map(|j| writer * 1000 + j).collect();
                    let mut last = u64::MAX;
                    for batch in 0..40u64 {
                        let upsert = Upsert {
                            collection: "docs".into(),
                            dimension: DIM as u32,
                            ids: ids.clone(),
                            vectors: vec![batch as f32; ids.len() * DIM],
                            payloads: Vec::new(),
                        };
                        match client.upsert(upsert) {
                            Ok(_) => last = batch,
                            Err(vortex_vbp::client::ClientError::Throttled { .. }) => {
                                throttled.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(other) => panic!("writer {writer}: {other}"),
                        }
                    }
                    last
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(
        throttled.load(Ordering::Relaxed) > 0,
        "the writers never found the slots taken"
    );
    let client = team.client(1);
    assert!(
        last_acked.iter().any(|&last| last != u64::MAX),
        "no writer got a batch through"
    );
    for (writer, &last) in last_acked.iter().enumerate() {
        let ids: Vec<u64> = (0..12).map(|j| writer as u64 * 1000 + j).collect();
        let points = client.get("docs", ids).unwrap();
        if last == u64::MAX {
            // Every batch of this writer was THROTTLED (a busy machine can do that to one
            // writer of six): then none of them may have been applied, even in part.
            assert!(
                points.is_empty(),
                "writer {writer}: a refused batch was applied"
            );
            continue;
        }
        assert_eq!(points.len(), 12);
        for point in points {
            assert_eq!(
                point.vector[0], last as f32,
                "writer {writer}: point {} holds batch {} but the last batch acknowledged was {last}",
                point.id, point.vector[0]
            );
        }
    }
    team.stop();
}

/// Issue #23 item 10, what docs/VBP.md now states of writes across three LEUs: an upsert
/// that names an id twice keeps its last vector and counts every id sent; a delete counts
/// the points that existed (an id named twice once, a missing one not at all); a cosine
/// collection stores, and gets back, unit vectors.
#[test]
fn duplicate_ids_delete_counts_and_cosine_vectors_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let team = start(dir.path());
    let client = team.client(0);
    client.create_collection(spec()).unwrap();
    let vector = |value: f32| vec![value; DIM];
    // Ids 1..=20 (on every LEU), then id 5 again with another vector, in one batch.
    let mut ids: Vec<u64> = (1..=20).collect();
    ids.push(5);
    let mut vectors: Vec<f32> = (1..=20).flat_map(|id| vector(id as f32)).collect();
    vectors.extend(vector(99.0));
    let written = client
        .upsert(Upsert {
            collection: "docs".into(),
            dimension: DIM as u32,
            ids,
            vectors,
            payloads: Vec::new(),
        })
        .unwrap();
    assert_eq!(written, 21, "every id sent is counted");
    let got = client.get("docs", vec![5]).unwrap();
    assert_eq!(
        got[0].vector,
        vector(99.0),
        "the last of an id's vectors wins"
    );

    // 3 twice, 4, and 1,000 (never written): two points existed.
    let deleted = client.delete("docs", vec![3, 3, 4, 1000]).unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(client.count("docs", None).unwrap(), 18);

    let cosine = CollectionSpec {
        name: "angles".into(),
        metric: Metric::Cosine,
        ..spec()
    };
    client.create_collection(cosine).unwrap();
    client
        .upsert(Upsert {
            collection: "angles".into(),
            dimension: DIM as u32,
            ids: vec![7],
            vectors: vector(3.0),
            payloads: Vec::new(),
        })
        .unwrap();
    let got = client.get("angles", vec![7]).unwrap();
    let norm: f32 = got[0].vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-6,
        "a cosine vector comes back unit: {norm}"
    );
    drop(client);
    team.stop();
}

/// Issue #23 item 10: `connections_max` is the appliance's limit, as docs/CONFIG.md says,
/// not each LEU's: with 4 allowed over three LEUs, a fifth connection is refused whichever
/// LEU it reaches, and once one closes another is served.
#[test]
fn the_connection_limit_counts_every_leus_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        connections_max: 4,
        ..ServerConfig::default()
    };
    let team = start_with(dir.path(), config);
    let open: Vec<Client> = [0, 0, 1, 2]
        .iter()
        .map(|&leu| {
            let client = team.client(leu);
            client.ping().unwrap();
            client
        })
        .collect();
    for leu in 0..LEUS {
        let refused = Client::connect(&[team.addresses[leu].to_string()], ClientOptions::default())
            .and_then(|client| client.ping());
        assert!(
            refused.is_err(),
            "a fifth connection was served by LEU {leu}"
        );
    }
    drop(open);
    // The closed connections are noticed and reaped by their LEUs: then one more is served.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let served = Client::connect(&[team.addresses[2].to_string()], ClientOptions::default())
            .and_then(|client| client.ping());
        if served.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection served after the others closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    team.stop();
}

/// What a writer of the test below expects each of its points to hold: `Some(value)` (every
/// component of its vector), or `None` (absent).
type Expected = std::collections::HashMap<u64, Option<f32>>;

/// The writes an answer says were applied, applied to `expected`: all of `ids` for a
/// success, none for an error, all but `failed_ids` for `Partial` (whose parts that failed
/// must not have been applied in part: nothing here fails with `Internal`).
fn account(
    expected: &mut Expected,
    ids: &[u64],
    value: Option<f32>,
    answer: &Result<u32, vortex_vbp::client::ClientError>,
) -> &'static str {
    use vortex_vbp::client::ClientError;
    let (kind, failed): (_, &[u64]) = match answer {
        Ok(_) => ("applied", &[]),
        Err(ClientError::Partial {
            failed_ids, cause, ..
        }) => {
            assert!(
                !failed_ids.is_empty() && failed_ids.len() < ids.len(),
                "a partial answer names some ids, not none or all: {answer:?}"
            );
            assert!(
                !matches!(**cause, ClientError::Server { ref message, .. } if message.contains("Internal")),
                "{cause}"
            );
            ("partial", failed_ids)
        }
        Err(ClientError::Throttled { .. }) => ("throttled", ids),
        Err(ClientError::Server { .. }) => ("refused", ids),
        Err(other) => panic!("unexpected answer: {other}"),
    };
    for id in ids {
        if !failed.contains(id) {
            expected.insert(*id, value);
        }
    }
    kind
}

/// Issue #23 item 8: every answer to a write whose ids live on several LEUs leaves the
/// data exactly as it says. Before, a batch with one point over the record limit was
/// refused with InvalidArgument after the other LEUs had applied their parts, and a part
/// THROTTLED on one LEU made the whole answer THROTTLED although the others were written.
///
/// Three LEUs; LEU 2's MemTable is tiny and its compactions slow, so that its parts are
/// often THROTTLED while the others' are taken. Four writers (three plain clients on
/// different LEUs, one shard-aware client), each on its own 120 points, send batches of up
/// to 24 of them: upserts with a new value each time, some with one point whose payload is
/// over the record limit or whose vector is not finite, and deletes. After every answer the
/// writer reads its points back and checks each against what the answers so far said. A
/// plain client's bad batch must be refused whole (the LEU that read it checks all of it
/// before any part runs); the shard-aware client, which splits batches itself, may get
/// `Partial`.
#[test]
fn every_answer_to_a_write_across_leus_leaves_the_data_as_it_says() {
    use vortex_vbp::client::ClientError;
    use vortex_vbp::sharded::ShardedClient;
    let seed = vortex_test_support::announced_seed();
    let dir = tempfile::tempdir().unwrap();
    let team = start_with_options(dir.path(), ServerConfig::default(), |leu| {
        let mut options = ShardOptions::default();
        if leu == 2 {
            // Flushes of 24 points, and level 0 stopped at 3 tables compacted at 16 KiB/s:
            // flushes wait, and the MemTable fills to its THROTTLED mark, every few seconds.
            options.store.memtable_entries_max = 24;
            options.store.l0_compaction_trigger = 2;
            options.store.l0_stop = 3;
            options.store.compaction_bytes_per_second = 16 << 10;
        }
        options
    });
    team.client(0).create_collection(spec()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let tallies: Vec<std::collections::BTreeMap<&str, u64>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4u64)
            .map(|writer| {
                let team = &team;
                scope.spawn(move || {
                    let mut rng = Rng(seed ^ (writer + 1).wrapping_mul(0x9E37_79B9));
                    let sharded = writer == 3;
                    let plain = team.client(writer as usize % LEUS);
                    let split = sharded.then(|| {
                        let address = team.addresses[0].to_string();
                        ShardedClient::connect(&address, ClientOptions::default()).unwrap()
                    });
                    let reader = team.client((writer as usize + 1) % LEUS);
                    let points: Vec<u64> = (0..120).map(|j| writer * 1000 + j).collect();
                    let mut expected: Expected = points.iter().map(|&id| (id, None)).collect();
                    let mut tally = std::collections::BTreeMap::new();
                    let mut round = 0u64;
                    // At least 300 rounds, then on until the server has answered Partial
                    // (LEU 2 THROTTLED while the others took their parts) a few times.
                    while round < 300
                        || (tally.get("partial").copied().unwrap_or(0) < 3
                            && std::time::Instant::now() < deadline)
                    {
                        round += 1;
                        let mut ids: Vec<u64> = (0..1 + rng.next() % 24)
                            .map(|_| points[(rng.next() % 120) as usize])
                            .collect();
                        ids.sort_unstable();
                        ids.dedup();
                        let kind = rng.next() % 10;
                        let value = (writer * 100_000 + round) as f32;
                        // 6: one point's payload over the record limit (512 KiB; frames
                        // are checked whole, but this only by the point's owner);
                        // 7: one non-finite component (refused with the frame).
                        let bad = (kind == 6 || kind == 7)
                            .then(|| (rng.next() % ids.len() as u64) as usize);
                        let answer = if kind >= 8 {
                            match &split {
                                Some(split) => split.delete("docs", ids.clone()),
                                None => plain.delete("docs", ids.clone()),
                            }
                        } else {
                            let mut vectors = vec![value; ids.len() * DIM];
                            let mut payloads = Vec::new();
                            match bad {
                                Some(bad) if kind == 6 => {
                                    payloads = vec![Payload { fields: Vec::new() }; ids.len()];
                                    payloads[bad].fields = (0..9)
                                        .map(|field| PayloadField {
                                            key: format!("text{field}"),
                                            value: PayloadValue::Str("x".repeat(60_000)),
                                        })
                                        .collect();
                                }
                                Some(bad) => vectors[bad * DIM + DIM / 2] = f32::NAN,
                                None => {}
                            }
                            let upsert = Upsert {
                                collection: "docs".into(),
                                dimension: DIM as u32,
                                ids: ids.clone(),
                                vectors,
                                payloads,
                            };
                            match &split {
                                Some(split) => split.upsert(upsert),
                                None => plain.upsert(upsert),
                            }
                        };
                        if bad.is_some() {
                            let whole = matches!(answer, Err(ClientError::Server { .. }));
                            let partial = matches!(answer, Err(ClientError::Partial { .. }));
                            // Throttled before its check is possible: the receiver's
                            // handler slots or its queue to another LEU were full.
                            let throttled = matches!(answer, Err(ClientError::Throttled { .. }));
                            assert!(
                                whole || throttled || (sharded && partial),
                                "writer {writer} round {round}: a bad batch answered {answer:?}"
                            );
                        }
                        let new = (kind < 8).then_some(value);
                        let kind = account(&mut expected, &ids, new, &answer);
                        *tally.entry(kind).or_insert(0) += 1;
                        if bad.is_some() {
                            *tally.entry("bad batches").or_insert(0) += 1;
                        }
                        // The points as they are now, against what the answers said.
                        let got = loop {
                            match reader.get("docs", points.clone()) {
                                Err(error) if error.retry_after().is_some() => {
                                    std::thread::sleep(std::time::Duration::from_millis(2))
                                }
                                got => break got.unwrap(),
                            }
                        };
                        let held: std::collections::HashMap<u64, f32> =
                            got.iter().map(|p| (p.id, p.vector[0])).collect();
                        for &id in &points {
                            assert_eq!(
                                held.get(&id).copied(),
                                expected[&id],
                                "writer {writer} round {round} (seed {seed}): point {id} after \
                                 the answer {answer:?} to a write of {ids:?}"
                            );
                        }
                    }
                    tally
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    println!("per writer (the last is shard-aware): {tallies:?}");
    let total = |writers: std::ops::Range<usize>, kind: &str| -> u64 {
        writers
            .map(|w| tallies[w].get(kind).copied().unwrap_or(0))
            .sum()
    };
    assert!(total(0..3, "refused") > 0, "no bad batch was refused whole");
    assert!(
        total(0..3, "partial") > 0,
        "LEU 2 never refused a part the others took (seed {seed})"
    );
    assert!(
        total(3..4, "partial") > 0,
        "the shard-aware client never split a failure"
    );
    assert!(total(0..4, "applied") > 0);
    // Every Partial answer the server sent is counted, on the LEU that sent it.
    let sent: u64 = team
        .client(0)
        .stats()
        .unwrap()
        .iter()
        .map(|leu| leu.counter("partial_answers").unwrap())
        .sum();
    assert_eq!(sent, total(0..3, "partial"));
    team.stop();
}
