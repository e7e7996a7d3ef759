//! The appliance with two LEUs and its index tier: points written through both LEUs settle
//! into segments on each, the tier builds one node graph over them (stats say so, and that
//! nothing more is due), and every search, run whole on whichever LEU received it, matches
//! exact search: after overwrites and deletes too, which the node graph must not answer
//! for any more.

use std::time::{Duration, Instant};
use vortex_config::{ApplianceConfig, LeuConfig, LeuCount, MemoryLockPolicy, Topology};
use vortex_dataplane::appliance::{Appliance, Ports};
use vortex_test_support::{test_seed, Rng};
use vortex_vbp::client::ClientOptions;
use vortex_vbp::message::{
    CollectionSpec, LeuStats, Metric, Payload, PayloadField, PayloadValue, Search, Upsert,
    VectorType,
};
use vortex_vbp::sharded::ShardedClient;

const DIM: usize = 12;

fn counter(stats: &[LeuStats], name: &str) -> u64 {
    stats
        .iter()
        .flat_map(|leu| &leu.counters)
        .filter(|c| c.name == name)
        .map(|c| c.value)
        .sum()
}

fn payload_of(id: u64) -> Payload {
    Payload {
        fields: vec![PayloadField {
            key: "id".into(),
            value: PayloadValue::Int(id as i64),
        }],
    }
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Checks 20 searches against exact search over `points`; returns how many matched exactly
/// (hits are always checked to be live, at their current distance).
fn exact_searches(client: &ShardedClient, points: &[(u64, Vec<f32>)], rng: &mut Rng) -> usize {
    (0..20)
        .filter(|_| {
            let query: Vec<f32> = (0..DIM).map(|_| rng.signed_unit()).collect();
            let mut exact: Vec<(f32, u64)> =
                points.iter().map(|(id, v)| (l2(&query, v), *id)).collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let hits = client
                .search(Search {
                    collection: "docs".into(),
                    vector: query.clone(),
                    k: 10,
                    ef: 200,
                    filter: None,
                    with_payload: true,
                })
                .unwrap();
            for hit in &hits {
                // Each point's payload names it: the node graph's hits fetch theirs from the
                // LEU that owns them.
                assert_eq!(
                    hit.payload,
                    Some(payload_of(hit.id)),
                    "payload of {}",
                    hit.id
                );
                let (_, vector) = points
                    .iter()
                    .find(|(id, _)| *id == hit.id)
                    .unwrap_or_else(|| panic!("hit {} is not a live point", hit.id));
                let expected = l2(&query, vector);
                assert!(
                    (hit.distance - expected).abs() <= 1e-4 * (1.0 + expected),
                    "hit {} at {}, its current vector at {expected}",
                    hit.id,
                    hit.distance
                );
            }
            hits.iter()
                .map(|hit| hit.id)
                .eq(exact.iter().take(10).map(|(_, id)| *id))
        })
        .count()
}

/// Waits until the tier has built `builds` node graphs or more and none is due.
fn wait_for_tier(client: &ShardedClient, builds: u64) -> Vec<LeuStats> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = client.any().stats().unwrap();
        // Every LEU reports the tier's count; each one's is the same.
        let built = counter(&stats, "node_graph_builds") / stats.len() as u64;
        // Idle, every MemTable is flushed (whole searches), and the tier folds it in.
        if built >= builds
            && counter(&stats, "node_graphs_due") == 0
            && counter(&stats, "memtable_points") == 0
        {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "the tier did not settle: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_index_tier_builds_one_graph_over_both_leus_and_searches_stay_exact() {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ApplianceConfig {
        leu: LeuConfig {
            count: LeuCount::Fixed(2),
            ..LeuConfig::default()
        },
        ..ApplianceConfig::default()
    };
    config.memory.lock = MemoryLockPolicy::Off;
    let topology = Topology::discover().unwrap();
    // Two LEUs whatever the machine has: sharing its cores is fine for this test.
    let mapping = match config.plan_leus(&topology) {
        Ok(mapping) => mapping,
        Err(_) => {
            config.leu.count = LeuCount::Auto;
            config.plan_leus(&topology).unwrap()
        }
    };
    let appliance =
        Appliance::start(&config, &mapping, dir.path(), Ports::Ephemeral, "the test").unwrap();
    let client =
        ShardedClient::connect(&appliance.address().to_string(), ClientOptions::default()).unwrap();
    client
        .any()
        .create_collection(CollectionSpec {
            name: "docs".into(),
            dimension: DIM as u32,
            metric: Metric::L2,
            m: 12,
            ef_construction: 100,
            vector_type: VectorType::F32,
        })
        .unwrap();
    let mut points: Vec<(u64, Vec<f32>)> = Vec::new();
    let write = |points: &[(u64, Vec<f32>)]| {
        client
            .upsert(Upsert {
                collection: "docs".into(),
                dimension: DIM as u32,
                ids: points.iter().map(|(id, _)| *id).collect(),
                vectors: points.iter().flat_map(|(_, v)| v.clone()).collect(),
                payloads: points.iter().map(|(id, _)| payload_of(*id)).collect(),
            })
            .unwrap();
    };
    for batch in 0..6u64 {
        let fresh: Vec<(u64, Vec<f32>)> = (0..500)
            .map(|i| {
                (
                    batch * 500 + i,
                    (0..DIM).map(|_| rng.signed_unit()).collect(),
                )
            })
            .collect();
        write(&fresh);
        points.extend(fresh);
    }
    // An idle second flushes each LEU's MemTable into a segment: two graphs to walk, which
    // the tier replaces with one.
    let stats = wait_for_tier(&client, 1);
    let leus = stats.len();
    assert!(
        exact_searches(&client, &points, &mut rng) >= 19,
        "settled searches"
    );

    // Overwrites and deletes: the node graph still holds the old versions, which must not
    // come back, whether the writes are fresh (in MemTables) or flushed.
    let overwritten: Vec<(u64, Vec<f32>)> = points
        .iter()
        .step_by(7)
        .map(|(id, _)| (*id, (0..DIM).map(|_| rng.signed_unit()).collect()))
        .collect();
    write(&overwritten);
    for (id, vector) in &overwritten {
        points.iter_mut().find(|(p, _)| p == id).unwrap().1 = vector.clone();
    }
    let deleted: Vec<u64> = points
        .iter()
        .skip(3)
        .step_by(11)
        .map(|(id, _)| *id)
        .collect();
    client.delete("docs", deleted.clone()).unwrap();
    points.retain(|(id, _)| !deleted.contains(id));
    assert!(
        exact_searches(&client, &points, &mut rng) >= 19,
        "fresh writes over the node graph"
    );
    let stats = wait_for_tier(&client, 1);
    assert!(
        exact_searches(&client, &points, &mut rng) >= 19,
        "flushed writes over the node graph"
    );
    let whole = counter(&stats, "whole_searches");
    assert!(whole >= 40, "searches ran whole: {whole}");
    // Nothing more due: the tier saves its node graph (under the data directory's `tier/`).
    let saved = || {
        std::fs::read_dir(dir.path().join("tier")).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.path().join("meta").exists() && !e.file_name().to_string_lossy().contains('.')
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saved() {
        assert!(Instant::now() < deadline, "the node graph was not saved");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(client);
    appliance.stop().unwrap();

    // Restarted, the saved node graph answers at once: settled with no graph built.
    let appliance =
        Appliance::start(&config, &mapping, dir.path(), Ports::Ephemeral, "the test").unwrap();
    let client =
        ShardedClient::connect(&appliance.address().to_string(), ClientOptions::default()).unwrap();
    let stats = wait_for_tier(&client, 0);
    assert_eq!(
        counter(&stats, "node_graph_builds"),
        0,
        "the restarted tier built a graph instead of loading the saved one"
    );
    assert!(
        exact_searches(&client, &points, &mut rng) >= 19,
        "searches over the loaded node graph"
    );
    drop(client);
    appliance.stop().unwrap();
    println!("{leus} LEU(s); {whole} whole searches");
}
