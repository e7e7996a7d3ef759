//! The shard against an oracle: random upserts, overwrites, deletes, flushes, compactions,
//! filters and reopens (seeded; the seed is printed), every search checked against exact
//! brute force over a model of the live points.

use std::collections::BTreeMap;
use std::path::Path;
use vortex_index::metric::normalize;
use vortex_shard::payload::matches;
use vortex_shard::{SearchRequest, Shard, ShardOptions};
use vortex_storage::StoreOptions;
use vortex_test_support::{test_seed, Rng};
use vortex_vbp::message::{
    CollectionSpec, Filter, FilterNode, Metric, Payload, PayloadField, PayloadValue, VectorType,
};

fn options() -> ShardOptions {
    ShardOptions {
        store: StoreOptions {
            memtable_bytes: 24 << 10,
            table_bytes_target: 32 << 10,
            // Full merges still leave several tables (and side-cars) to check.
            merged_table_bytes: 64 << 10,
            l0_compaction_trigger: 3,
            l0_stop: 10,
            level1_bytes: 96 << 10,
            level_multiplier: 3,
            compaction_bytes_per_second: 0,
            scrub_bytes_per_second: 0,
            ..StoreOptions::default()
        },
        // One build thread (the default, said here because a test below relies on it): a
        // rebuilt side-car is then the same graph, and answers do not change across it.
        index_build_threads: 1,
    }
}

fn open(dir: &Path) -> Shard {
    Shard::open(dir, options()).unwrap().0
}

struct Collection {
    spec: CollectionSpec,
    points: BTreeMap<u64, (Vec<f32>, Payload)>,
}

fn spec(name: &str, dimension: u32, metric: Metric, vector_type: VectorType) -> CollectionSpec {
    CollectionSpec {
        name: name.into(),
        dimension,
        metric,
        m: 8,
        ef_construction: 64,
        vector_type,
    }
}

fn payload_for(group: i64, rng: &mut Rng) -> Payload {
    Payload {
        fields: vec![
            PayloadField {
                key: "group".into(),
                value: PayloadValue::Int(group),
            },
            PayloadField {
                key: "score".into(),
                value: PayloadValue::Float(rng.signed_unit() as f64),
            },
        ],
    }
}

fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    match metric {
        Metric::L2 => a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum(),
        Metric::Ip => -dot(a, b),
        Metric::Cosine => {
            let norm = |x: &[f32]| dot(x, x).sqrt().max(f32::MIN_POSITIVE);
            1.0 - dot(a, b) / (norm(a) * norm(b))
        }
    }
}

/// A random filter over the payloads' `group` (int) and `score` (float) fields.
fn random_filter(rng: &mut Rng) -> Filter {
    let group = |rng: &mut Rng| FilterNode::Eq {
        field: "group".into(),
        value: PayloadValue::Int(rng.below(4) as i64),
    };
    let score = |rng: &mut Rng| FilterNode::Range {
        field: "score".into(),
        min: Some(rng.signed_unit() as f64),
        max: None,
        min_inclusive: true,
        max_inclusive: false,
    };
    let nodes = match rng.below(5) {
        0 => vec![group(rng)],
        1 => vec![score(rng)],
        2 => vec![group(rng), FilterNode::Not(0)],
        3 => vec![group(rng), score(rng), FilterNode::And(vec![0, 1])],
        _ => vec![
            group(rng),
            FilterNode::In {
                field: "group".into(),
                values: vec![PayloadValue::Float(1.0), PayloadValue::Int(3)],
            },
            FilterNode::Or(vec![0, 1]),
        ],
    };
    Filter { nodes }
}

/// Checks one search; returns whether the top-k ids equal the exact ones.
fn check_search(
    shard: &Shard,
    collection: &Collection,
    query: &[f32],
    filter: Option<&Filter>,
    context: &str,
) -> bool {
    let k = 10;
    let hits = shard
        .search(&SearchRequest {
            collection: &collection.spec.name,
            vector: query,
            k,
            ef: 400,
            filter,
            with_payload: true,
        })
        .unwrap_or_else(|e| panic!("{context}: search: {e}"));
    let metric = collection.spec.metric;
    let admitted = |payload: &Payload| filter.is_none_or(|f| matches(f, Some(payload)));
    let mut exact: Vec<(f32, u64)> = collection
        .points
        .iter()
        .filter(|(_, (_, payload))| admitted(payload))
        .map(|(id, (vector, _))| (distance(metric, query, vector), *id))
        .collect();
    exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    exact.truncate(k);
    // Never a deleted or stale point: every hit is live, with its current distance and
    // payload.
    for hit in &hits {
        let Some((vector, payload)) = collection.points.get(&hit.id) else {
            panic!("{context}: hit {} is not a live point", hit.id);
        };
        let expected = distance(metric, query, vector);
        assert!(
            (hit.distance - expected).abs() <= 1e-3 * (1.0 + expected.abs()),
            "{context}: hit {} at {} but its current vector is at {expected} (stale?)",
            hit.id,
            hit.distance
        );
        assert_eq!(
            hit.payload.as_ref(),
            Some(payload),
            "{context}: payload of {}",
            hit.id
        );
        assert!(
            admitted(payload),
            "{context}: hit {} fails the filter",
            hit.id
        );
    }
    assert_eq!(hits.len(), exact.len(), "{context}: hit count");
    let mut got: Vec<u64> = hits.iter().map(|h| h.id).collect();
    let mut want: Vec<u64> = exact.iter().map(|(_, id)| *id).collect();
    got.sort_unstable();
    want.sort_unstable();
    got == want
}

#[test]
fn searches_match_exact_search_over_a_model_through_writes_flushes_and_reopens() {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut shard = open(dir.path());
    let mut collections = vec![
        Collection {
            spec: spec("plain", 8, Metric::L2, VectorType::F32),
            points: BTreeMap::new(),
        },
        Collection {
            spec: spec("quantized", 12, Metric::Cosine, VectorType::I8),
            points: BTreeMap::new(),
        },
    ];
    for collection in &collections {
        shard.create_collection(collection.spec.clone()).unwrap();
    }
    let (mut searches, mut exact_matches) = (0u32, 0u32);
    // Flushes and compactions published, over every open.
    let mut background = 0u64;
    for step in 0..700u32 {
        let context = format!("seed {seed} step {step}");
        let which = rng.below(2) as usize;
        let collection = &mut collections[which];
        let name = collection.spec.name.clone();
        let dimension = collection.spec.dimension as usize;
        match rng.below(100) {
            0..=54 => {
                let count = 1 + rng.below(24) as usize;
                let ids: Vec<u64> = (0..count).map(|_| rng.below(400)).collect();
                let mut vectors = Vec::new();
                let mut payloads = Vec::new();
                for &id in &ids {
                    let vector: Vec<f32> = (0..dimension).map(|_| rng.signed_unit()).collect();
                    let payload = payload_for(rng.below(4) as i64, &mut rng);
                    vectors.extend_from_slice(&vector);
                    // Cosine collections keep (and return) unit vectors.
                    let mut stored = vector;
                    if collection.spec.metric == Metric::Cosine {
                        normalize(&mut stored);
                    }
                    collection.points.insert(id, (stored, payload.clone()));
                    payloads.push(payload);
                }
                // Duplicate ids in one batch: the last wins, as in the model.
                loop {
                    match shard.upsert(&name, &ids, &vectors, &payloads) {
                        Ok(_) => break,
                        Err(error) if error.is_throttled() => {
                            shard
                                .poll(Some(std::time::Duration::from_millis(5)))
                                .unwrap();
                        }
                        Err(error) => panic!("{context}: upsert: {error}"),
                    }
                }
            }
            55..=69 => {
                let ids: Vec<u64> = (0..1 + rng.below(8)).map(|_| rng.below(400)).collect();
                for id in &ids {
                    collection.points.remove(id);
                }
                shard.delete(&name, &ids).unwrap();
            }
            70..=89 => {
                shard.sync().unwrap();
                let query: Vec<f32> = (0..dimension).map(|_| rng.signed_unit()).collect();
                let filter = (rng.below(2) == 0).then(|| random_filter(&mut rng));
                searches += 1;
                if check_search(&shard, collection, &query, filter.as_ref(), &context) {
                    exact_matches += 1;
                }
                let info = shard.describe_collection(&name).unwrap();
                assert_eq!(
                    info.points,
                    collection.points.len() as u64,
                    "{context}: count"
                );
                let probe = rng.below(400);
                let got = shard.get(&name, &[probe], true, true).unwrap();
                match collection.points.get(&probe) {
                    Some((vector, payload)) => {
                        assert_eq!(got.len(), 1, "{context}: get {probe}");
                        assert_eq!(&got[0].vector, vector, "{context}: get {probe}");
                        assert_eq!(got[0].payload.as_ref(), Some(payload));
                    }
                    None => assert!(got.is_empty(), "{context}: get of deleted {probe}"),
                }
            }
            90..=93 => shard.flush().unwrap(),
            94..=95 => shard.compact_all().unwrap(),
            _ => {
                shard.sync().unwrap();
                let store = shard.stats().store;
                background += store.flushes + store.compactions;
                shard.close().unwrap();
                shard = open(dir.path());
            }
        }
    }
    shard.sync().unwrap();
    for collection in &collections {
        let info = shard.describe_collection(&collection.spec.name).unwrap();
        assert_eq!(
            info.points,
            collection.points.len() as u64,
            "seed {seed}: count"
        );
    }
    // Graphs of flushed tables are built in the background: every one is there after this.
    shard.wait_idle().unwrap();
    let verified = shard.verify_indexes().unwrap();
    let stats = shard.stats();
    assert_eq!(verified, stats.indexes, "seed {seed}: every index checked");
    println!("{searches} searches, {exact_matches} exact; stats {stats:?}");
    background += stats.store.flushes + stats.store.compactions;
    assert!(background > 0, "seed {seed}: no segment was ever written");
    assert!(
        exact_matches as f64 >= 0.99 * searches as f64,
        "seed {seed}: only {exact_matches} of {searches} searches equal exact search"
    );
}

#[test]
fn dropped_collections_are_gone_and_reclaimed_and_names_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = open(dir.path());
    shard
        .create_collection(spec("docs", 4, Metric::L2, VectorType::F32))
        .unwrap();
    let ids: Vec<u64> = (0..200).collect();
    let vectors: Vec<f32> = (0..800).map(|i| i as f32).collect();
    shard.upsert("docs", &ids, &vectors, &[]).unwrap();
    shard.flush().unwrap();
    assert!(shard.stats().segments > 0);
    shard.drop_collection("docs").unwrap();
    assert_eq!(
        shard.stats().segments,
        0,
        "its segments are removed at once"
    );
    assert!(shard.get("docs", &[1], true, false).is_err());
    shard
        .create_collection(spec("docs", 4, Metric::L2, VectorType::F32))
        .unwrap();
    assert!(shard.get("docs", &[1], true, false).unwrap().is_empty());
    shard.sync().unwrap();
    shard.close().unwrap();
    let shard = open(dir.path());
    assert!(shard.get("docs", &[1], true, false).unwrap().is_empty());
    assert_eq!(shard.describe_collection("docs").unwrap().points, 0);
    let listed = shard.list_collections().unwrap();
    assert_eq!(listed.len(), 1);
}

#[test]
fn bad_requests_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = open(dir.path());
    shard
        .create_collection(spec("c", 3, Metric::L2, VectorType::F32))
        .unwrap();
    let error = shard.upsert("c", &[1], &[1.0, 2.0], &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "collection \"c\" has dimension 3; the 1 point(s) sent have vectors of dimension 2"
    );
    // Finite, but every distance to it would be infinite: refused, stored or asked.
    let error = shard.upsert("c", &[9], &[3e38, 0.0, 0.0], &[]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("point 9 is too long: its squared length 9.00e76"),
        "{error}"
    );
    let error = shard
        .search(&SearchRequest {
            collection: "c",
            vector: &[3e38, 3e38, 3e38],
            k: 1,
            ef: 0,
            filter: None,
            with_payload: false,
        })
        .unwrap_err();
    assert!(
        error.to_string().contains("the query is too long")
            && error.to_string().contains("overflow"),
        "{error}"
    );
    let error = shard
        .upsert("c", &[1, 2], &[1.0, 2.0, 3.0], &[])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "3 floats do not make 2 vectors of one dimension (collection \"c\" has dimension 3)"
    );
    let error = shard
        .upsert("c", &[1], &[1.0, f32::NAN, 0.0], &[])
        .unwrap_err();
    assert!(error.to_string().contains("NaN"), "{error}");
    let error = shard
        .upsert("nope", &[1], &[1.0, 2.0, 3.0], &[])
        .unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    let error = shard
        .search(&SearchRequest {
            collection: "c",
            vector: &[1.0],
            k: 5,
            ef: 0,
            filter: None,
            with_payload: false,
        })
        .unwrap_err();
    assert!(error.to_string().contains("dimension is 3"), "{error}");
    let error = shard
        .create_collection(spec("c", 3, Metric::L2, VectorType::F32))
        .unwrap_err();
    assert!(error.to_string().contains("exists already"), "{error}");
}

#[test]
fn side_cars_hold_no_vector_copy_and_damaged_ones_are_rebuilt_at_open() {
    let seed = test_seed();
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let dimension = 64usize;
    let mut shard = open(dir.path());
    shard
        .create_collection(spec(
            "wide",
            dimension as u32,
            Metric::Cosine,
            VectorType::F32,
        ))
        .unwrap();
    let count = 1200u64;
    for batch in (0..count).collect::<Vec<_>>().chunks(40) {
        let vectors: Vec<f32> = (0..batch.len() * dimension)
            .map(|_| rng.signed_unit())
            .collect();
        shard.upsert("wide", batch, &vectors, &[]).unwrap();
        shard.sync().unwrap();
        shard.wait_idle().unwrap();
    }
    shard.sync().unwrap();
    shard.flush().unwrap();
    shard.compact_all().unwrap();
    let queries: Vec<Vec<f32>> = (0..20)
        .map(|_| (0..dimension).map(|_| rng.signed_unit()).collect())
        .collect();
    let search = |shard: &Shard| -> Vec<Vec<(u64, f32)>> {
        queries
            .iter()
            .map(|query| {
                let request = SearchRequest {
                    collection: "wide",
                    vector: query,
                    k: 10,
                    ef: 128,
                    filter: None,
                    with_payload: false,
                };
                let hits = shard.search(&request).unwrap();
                hits.iter().map(|hit| (hit.id, hit.distance)).collect()
            })
            .collect()
    };
    let before = search(&shard);
    assert!(shard.verify_indexes().unwrap() > 0);
    // Compactions started their outputs' graphs from their inputs' graphs.
    let stats = shard.stats();
    eprintln!(
        "index nodes: {} inserted, {} carried",
        stats.index_nodes_inserted, stats.index_nodes_carried
    );
    assert!(stats.index_nodes_carried > 0);
    // Unit vectors come back from a get.
    let got = shard.get("wide", &[7], true, false).unwrap();
    let norm: f32 = got[0].vector.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-4, "stored norm² {norm}");
    shard.close().unwrap();

    // Every side-car is far smaller than the vectors of its table: they are not copied.
    let indexes = dir.path().join("indexes");
    let mut sidecars: Vec<_> = std::fs::read_dir(&indexes)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "hnsw"))
        .collect();
    sidecars.sort();
    assert!(sidecars.len() >= 2, "{sidecars:?}");
    let total: u64 = sidecars
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        total < count * dimension as u64 * 4 / 2,
        "side-cars take {total} bytes for {count} vectors of {dimension} floats"
    );

    // One side-car gone, one damaged: both rebuilt after open (searched exactly until
    // then), and answers do not change.
    std::fs::remove_file(&sidecars[0]).unwrap();
    let mut bytes = std::fs::read(&sidecars[1]).unwrap();
    let middle = bytes.len() / 2; // inside the layer-0 links
    bytes[middle] ^= 0x40;
    std::fs::write(&sidecars[1], &bytes).unwrap();
    let (mut shard, report) = Shard::open(dir.path(), options()).unwrap();
    assert_eq!(report.indexes_rebuilt, 2);
    assert_eq!(search(&shard), before);
    shard.wait_idle().unwrap();
    assert_eq!(shard.stats().index_build_backlog, 0);
    assert_eq!(search(&shard), before);
    assert!(shard.verify_indexes().unwrap() >= 2);
    shard.close().unwrap();
    let (_, report) = Shard::open(dir.path(), options()).unwrap();
    assert_eq!(report.indexes_rebuilt, 0, "rebuilt side-cars were saved");
}

/// A batch is admitted whole or refused with THROTTLED before its first write, so a client
/// that retries whole batches always gets through and the WAL holds each batch about once;
/// a batch the WAL could never take at once is refused with an error, not THROTTLED forever.
#[test]
fn throttled_batches_write_nothing_and_retried_batches_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ShardOptions::default();
    options.store.wal.batch_bytes_max = 256 << 10; // batches up to 128 KiB
    options.store.wal.record_bytes_max = 64 << 10;
    let (mut shard, _) = Shard::open(dir.path(), options).unwrap();
    let dimension = 256usize;
    shard
        .create_collection(spec("big", dimension as u32, Metric::L2, VectorType::F32))
        .unwrap();
    let batch = 100usize; // ~104 KiB of records
    let mut throttled = 0;
    for round in 0..60u64 {
        let ids: Vec<u64> = (0..batch as u64).map(|i| round * 1000 + i).collect();
        let vectors: Vec<f32> = (0..batch * dimension)
            .map(|i| (round as f32) + i as f32 * 1e-3)
            .collect();
        let last = loop {
            match shard.upsert("big", &ids, &vectors, &[]) {
                Ok(sequence) => break sequence,
                Err(error) if error.is_throttled() => {
                    throttled += 1;
                    assert!(throttled < 100_000, "no progress: {error}");
                    shard
                        .poll(Some(std::time::Duration::from_millis(1)))
                        .unwrap();
                }
                Err(error) => panic!("upsert: {error}"),
            }
        };
        // Only every third batch waits for its acknowledgement: the others meet a busy WAL.
        if round % 3 == 2 {
            while shard
                .poll(Some(std::time::Duration::from_millis(5)))
                .unwrap()
                < last
            {}
        }
    }
    shard.sync().unwrap();
    let stats = shard.stats();
    let record_bytes = 60 * batch as u64 * (16 + dimension as u64 * 4);
    assert!(
        stats.store.user_bytes <= record_bytes,
        "{} bytes logged for {record_bytes} bytes of batches: a refused batch wrote",
        stats.store.user_bytes
    );
    for round in [0u64, 31, 59] {
        let got = shard.get("big", &[round * 1000 + 99], true, false).unwrap();
        assert_eq!(
            got[0].vector[0],
            round as f32 + 99.0 * dimension as f32 * 1e-3
        );
    }
    let ids: Vec<u64> = (0..200).collect();
    let error = shard
        .upsert("big", &ids, &vec![0.5; 200 * dimension], &[])
        .unwrap_err();
    assert!(
        !error.is_throttled() && error.to_string().contains("split it"),
        "{error}"
    );
    eprintln!("{throttled} THROTTLED answers");
}

/// A cosine vector so small that its norm's inverse overflows `f32` is still stored as a
/// finite unit vector: it used to become infinities and NaNs that failed every flush.
#[test]
fn tiny_cosine_vectors_are_stored_finite_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = open(dir.path());
    shard
        .create_collection(spec("tiny", 4, Metric::Cosine, VectorType::F32))
        .unwrap();
    shard
        .upsert(
            "tiny",
            &[1, 2],
            &[1e-39, 0.0, 0.0, 0.0, 0.0, 2e-39, 0.0, 0.0],
            &[],
        )
        .unwrap();
    shard.sync().unwrap();
    shard.flush().unwrap();
    assert_eq!(shard.stats().store.background_errors, 0);
    let got = shard.get("tiny", &[1], true, false).unwrap();
    assert_eq!(got[0].vector, vec![1.0, 0.0, 0.0, 0.0]);
    let hits = shard
        .search(&SearchRequest {
            collection: "tiny",
            vector: &[0.0, 3.0, 0.0, 0.0],
            k: 1,
            ef: 0,
            filter: None,
            with_payload: false,
        })
        .unwrap();
    assert_eq!(hits[0].id, 2);
    assert!(hits[0].distance.abs() < 1e-6);
}
