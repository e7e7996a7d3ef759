//! Replays the committed fuzz corpus (`tools/fuzz/corpus/<target>/`) through the fuzz
//! targets' bodies on stable Rust, so every input the fuzzer kept, and every crash input
//! saved as a regression (`tools/fuzz/regressions/<target>/`), runs in `cargo test`.
//! Also checks that the seed inputs are in the corpus (`VORTEX_WRITE_SEEDS=1` writes them).

use std::path::{Path, PathBuf};
use vortex_tools::fuzz;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn replay<T>(kind: &str, target: &str, run: fn(&[u8]) -> T) -> usize {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).expect("readable corpus file");
        // A panic here names the input: replay it with
        // `cargo +nightly fuzz run <target> <path>` from tools/.
        eprintln!("replaying {}", path.display());
        let _ = run(&data);
    }
    paths.len()
}

/// The seeds include HNSW files, whose graphs depend on the last bits of the distances and
/// so on the SIMD level: they are made at the scalar level, which every machine has. On
/// another level this test runs itself again in a child forced to scalar.
#[test]
fn seeds_are_in_the_corpus() {
    if std::env::var("VORTEX_SIMD_LEVEL").as_deref() != Ok("scalar") {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "seeds_are_in_the_corpus", "--test-threads", "1"])
            .env("VORTEX_SIMD_LEVEL", "scalar")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the seeds at the scalar level: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    let write = std::env::var_os("VORTEX_WRITE_SEEDS").is_some();
    for (target, name, data) in fuzz::seeds() {
        let path = fuzz_dir()
            .join("corpus")
            .join(target)
            .join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &data).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; run VORTEX_WRITE_SEEDS=1 cargo test -p vortex-tools --test fuzz_corpus",
                path.display()
            )
        });
        assert_eq!(
            stored,
            data,
            "{} is stale: run VORTEX_WRITE_SEEDS=1 cargo test -p vortex-tools --test fuzz_corpus",
            path.display()
        );
    }
}

#[test]
fn seeds_exercise_the_accepting_paths() {
    let mut accepted = 0;
    let mut frames = 0;
    for (target, name, data) in fuzz::seeds() {
        match target {
            "validator" => {
                assert!(fuzz::validator(&data), "seed {name} is refused");
                accepted += 1;
            }
            "wal_log" => {
                assert_eq!(fuzz::wal_log(&data), 4, "{name}");
            }
            "manifest" => {
                assert!(fuzz::manifest(&data), "{name}");
            }
            "sstable_block" => {
                assert_eq!(fuzz::sstable_block(&data), 3, "{name}");
            }
            "payload" => {
                assert!(fuzz::payload(&data) > 0, "{name}");
            }
            "catalog" => {
                assert_eq!(fuzz::catalog(&data), 2, "{name}");
            }
            "hnsw_file" => {
                assert_eq!(fuzz::hnsw_file(&data), 40, "{name}");
            }
            "sstable_file" => {
                assert_eq!(fuzz::sstable_file(&data), 40, "{name}");
            }
            "stream" => {
                let decoded = fuzz::stream(&data);
                // Every sample request, plus the large search.
                assert_eq!(decoded, vortex_vbp::samples::requests().len() + 1, "{name}");
                frames += decoded;
            }
            "ctl_input" => {
                assert!(fuzz::ctl_input(&data) > 0, "{name}");
            }
            other => panic!("unknown target {other}"),
        }
    }
    assert!(accepted > 0 && frames > 0);
    // And a refusal: a flipped body byte without resealing.
    let mut broken = fuzz::seeds()
        .into_iter()
        .find(|(target, name, _)| *target == "validator" && name.ends_with("sealed"))
        .map(|(_, _, data)| data)
        .expect("a mode-0 validator seed");
    let last = broken.len() - 1;
    broken[last] ^= 0x40;
    assert!(!fuzz::validator(&broken));
}

/// Replays a target's corpus and regressions; the corpus must not be empty.
fn replay_target<T>(target: &str, run: fn(&[u8]) -> T) {
    let count = replay("corpus", target, run) + replay("regressions", target, run);
    assert!(count > 0, "the {target} corpus is empty");
}

#[test]
fn validator_corpus_replays() {
    replay_target("validator", fuzz::validator);
}

#[test]
fn stream_corpus_replays() {
    replay_target("stream", fuzz::stream);
}

#[test]
fn wal_log_corpus_replays() {
    replay_target("wal_log", fuzz::wal_log);
}

#[test]
fn manifest_corpus_replays() {
    replay_target("manifest", fuzz::manifest);
}

#[test]
fn a_damaged_manifest_is_refused_not_a_panic() {
    let seed = fuzz::seeds()
        .into_iter()
        .find(|(target, _, _)| *target == "manifest")
        .map(|(_, _, data)| data)
        .expect("a manifest seed");
    // A flipped bit in the first edit, with a valid edit after it: an error.
    let mut broken = seed.clone();
    broken[20] ^= 1;
    assert!(!fuzz::manifest(&broken));
    // A truncated last edit: ignored, the first one stands.
    assert!(fuzz::manifest(&seed[..seed.len() - 3]));
}

#[test]
fn sstable_block_corpus_replays() {
    replay_target("sstable_block", fuzz::sstable_block);
}

#[test]
fn sstable_file_corpus_replays() {
    replay_target("sstable_file", fuzz::sstable_file);
}

#[test]
fn a_damaged_table_is_refused_or_quarantined_not_a_panic() {
    let mut input = vec![0u8];
    input.extend_from_slice(&fuzz::sample_table());
    assert_eq!(fuzz::sstable_file(&input), 40);
    // A flipped bit in the first data block: opening works, reading it does not.
    let mut damaged = input.clone();
    damaged[1 + 40] ^= 0x20;
    assert_eq!(fuzz::sstable_file(&damaged), 0);
    // A flipped bit in the footer, resealed: the decoder refuses the layout.
    let mut footer = input.clone();
    let at = footer.len() - 4096 + 20;
    footer[at] ^= 0x01;
    footer[0] = fuzz::TABLE_MODE_SEAL;
    assert_eq!(fuzz::sstable_file(&footer), 0);
}

#[test]
fn ctl_input_corpus_replays() {
    replay_target("ctl_input", fuzz::ctl_input);
}

#[test]
fn payload_corpus_replays() {
    replay_target("payload", fuzz::payload);
}

#[test]
fn catalog_corpus_replays() {
    replay_target("catalog", fuzz::catalog);
}

#[test]
fn hnsw_file_corpus_replays() {
    replay_target("hnsw_file", fuzz::hnsw_file);
}
