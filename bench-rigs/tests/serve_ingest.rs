//! The during-ingest rig end to end against a real dataplane (two LEUs, whole searches):
//! searches run while the load does, every answer is scored against the rows acknowledged
//! when it was sent, and the settled measurement follows in the same run.

use vortex_bench::dataset::{self, DatasetMeta};
use vortex_bench::ingest::{self, IngestConfig};
use vortex_config::{ApplianceConfig, LeuConfig, LeuCount, MemoryLockPolicy, Topology};
use vortex_dataplane::appliance::{Appliance, Ports};

#[test]
fn searches_while_loading_are_scored_against_what_was_loaded() {
    let directory = tempfile::tempdir().unwrap();
    let meta = DatasetMeta {
        name: "ingest-smoke".into(),
        metric: "l2".into(),
        n: 30_000,
        dim: 16,
        queries: 40,
        clusters: 8,
        seed: 11,
    };
    let data = directory.path().join("ingest-smoke");
    dataset::generate(&meta, &data, 2).unwrap();

    let mut config = ApplianceConfig {
        leu: LeuConfig {
            count: LeuCount::Fixed(2),
            ..LeuConfig::default()
        },
        ..ApplianceConfig::default()
    };
    config.memory.lock = MemoryLockPolicy::Off;
    let topology = Topology::discover().unwrap();
    let mapping = match config.plan_leus(&topology) {
        Ok(mapping) => mapping,
        Err(_) => {
            config.leu.count = LeuCount::Auto;
            config.plan_leus(&topology).unwrap()
        }
    };
    let store = directory.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let appliance =
        Appliance::start(&config, &mapping, &store, Ports::Ephemeral, "the test").unwrap();

    let rig = IngestConfig {
        address: appliance.address().to_string(),
        data,
        efs: vec![16, 64],
        load_connections: 2,
        search_connections: 1,
        window_seconds: 0.05,
        pool: 40,
        k: 10,
        m: 12,
        ef_construction: 100,
        merged: false,
    };
    let result = ingest::run(&rig, "the test").unwrap();
    let rendered = ingest::render(&result);
    println!("{rendered}");

    assert!(
        !result.windows.is_empty(),
        "30,000 rows over VBP took less than one 50 ms window"
    );
    for window in &result.windows {
        assert!(window.loaded_from <= window.loaded_to && window.loaded_to <= meta.n);
        assert!((0.0..=1.0).contains(&window.recall), "{window:?}");
    }
    let searched: u64 = result.windows.iter().map(|w| w.searches).sum();
    assert!(searched > 0, "no search answered while loading");
    // Fresh rows are scanned exactly and segments walked at ef 64 on a small set: what the
    // searches find is what was loaded, scored against the prefix, not the whole set (which
    // the early windows could not reach).
    let during = &result.efs[1];
    if during.during_searches > 0 {
        assert!(
            during.during_recall >= 0.8,
            "recall while loading at ef 64: {}",
            during.during_recall
        );
    }
    let settled = &result.efs[1].settled;
    assert_eq!(settled.errors, 0);
    assert!(
        settled.recall >= 0.95,
        "settled recall at ef 64: {}",
        settled.recall
    );
    assert!(result.settled_qps_at_090.is_some());
    assert!(rendered.contains("while loading / settled"));
    appliance.stop().unwrap();
}
