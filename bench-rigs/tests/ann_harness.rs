//! The ANN harness end to end on a small generated set: the dataset round-trips, our index
//! finds the ground truth, and the result file has the fields the peers' report reads.

use vortex_bench::ann::{self, AnnConfig};
use vortex_bench::dataset::{self, DatasetMeta};
use vortex_index::Quantization;

#[test]
fn a_small_run_writes_a_result_the_report_can_read() {
    let directory = tempfile::tempdir().unwrap();
    let meta = DatasetMeta {
        name: "smoke".into(),
        metric: "l2".into(),
        n: 3000,
        dim: 16,
        queries: 50,
        clusters: 8,
        seed: 7,
    };
    let data = directory.path().join("smoke");
    dataset::generate(&meta, &data, 2).unwrap();
    for (quantization, checked_rows) in [
        (Quantization::None, false),
        (Quantization::ScalarI8, false),
        (Quantization::None, true),
        (Quantization::ScalarI8, true),
    ] {
        let config = AnnConfig {
            data: data.clone(),
            ef: vec![16, 128],
            m: 12,
            ef_construction: 100,
            build_threads: 2,
            k: 10,
            quantization,
            rerank_factor: 4,
            repeats: 2,
            filter_percent: Some(1.0),
            checked_rows,
            out: directory.path().join("results"),
        };
        let (result, path) = ann::run(&config).unwrap();
        assert_eq!(result.runs.len(), 2);
        // The checks change no answer: the same recall with and without them.
        match &result.unchecked_runs {
            Some(unchecked) => {
                assert!(checked_rows);
                let recalls = |runs: &[ann::AnnRun]| -> Vec<f64> {
                    runs.iter().map(|run| run.recall_at_10).collect()
                };
                assert_eq!(recalls(unchecked), recalls(&result.runs));
                assert!(result.engine.ends_with("-checked"), "{}", result.engine);
            }
            None => assert!(!checked_rows),
        }
        let best = result.runs.last().unwrap();
        assert!(
            best.recall_at_10 >= 0.98,
            "recall {} at ef 128",
            best.recall_at_10
        );
        assert!(best.qps > 0.0 && best.latency_us_p99 >= best.latency_us_mean * 0.0);
        let filtered = result.filtered.as_ref().unwrap();
        assert!(
            filtered.recall_at_10 >= 0.95,
            "filtered recall {}",
            filtered.recall_at_10
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in [
            "engine",
            "engine_version",
            "dataset",
            "metric",
            "n",
            "dim",
            "queries",
            "m",
            "ef_construction",
            "build_threads",
            "build_seconds",
            "memory_bytes",
            "bytes_per_vector",
            "search_threads",
            "repeats",
            "runs",
            "host",
            "date",
        ] {
            assert!(json.get(key).is_some(), "result file lacks `{key}`");
        }
        assert_eq!(json["runs"][0]["ef"], 16);
        assert!(json["runs"][0]["recall_at_10"].is_number());
    }
    // A dataset whose files disagree is refused.
    std::fs::write(data.join("query.fvecs"), [16, 0, 0, 0]).unwrap();
    let error = dataset::Dataset::load(&data).unwrap_err();
    assert!(format!("{error:#}").contains("query.fvecs"), "{error:#}");
}
