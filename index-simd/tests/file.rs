//! The index file: save → load gives the same answers from a mapped file; every kind of
//! damage is refused with an error that says what is wrong.

mod common;

use common::clustered_split;
use std::sync::Arc;
use vortex_index::hnsw::{FileError, FILE_MAGIC};
use vortex_index::metric::normalize;
use vortex_index::{
    vector_stride, BuildParams, Hnsw, IndexError, Mapping, Metric, Quantization, Store,
};

const SEED: u64 = 0xF11E_2026;

fn params(quantization: Quantization, metric: Metric) -> BuildParams {
    BuildParams {
        metric,
        m: 8,
        ef_construction: 64,
        seed: SEED,
        threads: 1,
        quantization,
        ..BuildParams::default()
    }
}

fn build(quantization: Quantization, metric: Metric) -> (Hnsw, Vec<f32>) {
    let dim = 20;
    let (data, queries) = clustered_split(1500, 40, dim, 6, SEED, metric);
    let params = params(quantization, metric);
    let labels: Vec<u64> = (0..1500).map(|row| row * 3 + 11).collect();
    (
        Hnsw::build(dim, &data, Some(&labels), &params).unwrap(),
        queries,
    )
}

#[test]
fn save_then_load_gives_identical_results_from_a_mapping() {
    eprintln!("seed {SEED:#x}");
    let directory = tempfile::tempdir().unwrap();
    for (quantization, metric) in [
        (Quantization::None, Metric::L2),
        (Quantization::ScalarI8, Metric::Cosine),
        (Quantization::None, Metric::InnerProduct),
    ] {
        let (mut index, queries) = build(quantization, metric);
        for node in (0..1500).step_by(7) {
            index.delete(node).unwrap();
        }
        let path = directory.path().join("segment.hnsw");
        index.save(&path).unwrap();
        let loaded = Hnsw::load(&path).unwrap();
        assert!(loaded.is_mapped());
        assert_eq!(loaded.len(), index.len());
        assert_eq!(loaded.deleted_count(), index.deleted_count());
        assert_eq!(loaded.metric(), metric);
        assert_eq!(loaded.quantizer(), index.quantizer());
        for query in queries.chunks_exact(index.dim()) {
            assert_eq!(
                loaded.search(query, 10, 48).unwrap(),
                index.search(query, 10, 48).unwrap()
            );
        }
        // A loaded index takes deletes and compacts like a built one.
        let mut loaded = loaded;
        loaded.delete(1).unwrap();
        index.delete(1).unwrap();
        let (a, b) = (
            loaded.compact().unwrap().index,
            index.compact().unwrap().index,
        );
        for query in queries.chunks_exact(index.dim()) {
            assert_eq!(
                a.search(query, 10, 48).unwrap(),
                b.search(query, 10, 48).unwrap()
            );
        }
    }
}

fn expect_corrupt(path: &std::path::Path, needle: &str) {
    match Hnsw::load(path) {
        Err(FileError::Corrupt { detail, .. }) => {
            assert!(detail.contains(needle), "expected `{needle}` in `{detail}`")
        }
        Err(other) => panic!("expected corruption ({needle}), got {other}"),
        Ok(_) => panic!("a damaged file ({needle}) loaded"),
    }
}

#[test]
fn damage_anywhere_is_refused_with_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let (index, _) = build(Quantization::ScalarI8, Metric::L2);
    let path = directory.path().join("segment.hnsw");
    index.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let damaged = directory.path().join("damaged.hnsw");

    // A flipped bit in every section (found through the section table) and in the header.
    let section_names = [
        "vectors",
        "quantizer",
        "codes",
        "labels",
        "levels",
        "upper offsets",
        "layer-0 links",
        "upper links",
        "tombstones",
    ];
    for (index, name) in section_names.iter().enumerate() {
        let entry = 80 + index * 24;
        let offset = u64::from_le_bytes(good[entry + 8..entry + 16].try_into().unwrap()) as usize;
        let length = u64::from_le_bytes(good[entry + 16..entry + 24].try_into().unwrap()) as usize;
        assert!(length > 0, "{name} is empty");
        for at in [offset, offset + length / 2, offset + length - 1] {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&damaged, &bytes).unwrap();
            expect_corrupt(&damaged, &format!("{name} section checksum mismatch"));
        }
    }
    for at in [16, 40, 100, 511] {
        let mut bytes = good.clone();
        bytes[at] ^= 1;
        std::fs::write(&damaged, &bytes).unwrap();
        expect_corrupt(&damaged, "header checksum");
    }

    // Truncation anywhere.
    for length in [600, good.len() / 2, good.len() - 1] {
        std::fs::write(&damaged, &good[..length]).unwrap();
        expect_corrupt(&damaged, "runs past the end");
    }
    std::fs::write(&damaged, &good[..300]).unwrap();
    expect_corrupt(&damaged, "ends inside the header");

    // Not an index; another version.
    std::fs::write(&damaged, b"hello, world: not an index at all").unwrap();
    assert!(matches!(
        Hnsw::load(&damaged),
        Err(FileError::NotAnIndex { .. })
    ));
    std::fs::write(&damaged, b"").unwrap();
    assert!(matches!(
        Hnsw::load(&damaged),
        Err(FileError::NotAnIndex { .. })
    ));
    let mut bytes = good.clone();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(&damaged, &bytes).unwrap();
    let error = Hnsw::load(&damaged).unwrap_err();
    assert!(matches!(
        error,
        FileError::UnsupportedVersion {
            found: 3,
            supported: 2,
            ..
        }
    ));
    assert!(error.to_string().contains("version 3"), "{error}");
    // Version 1 (no flags) is still read; a flag it cannot have is refused.
    let reseal = |bytes: &mut Vec<u8>| {
        let checksum = crc32c::crc32c(&bytes[..508]);
        bytes[508..512].copy_from_slice(&checksum.to_le_bytes());
    };
    let mut bytes = good.clone();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut bytes);
    std::fs::write(&damaged, &bytes).unwrap();
    assert!(Hnsw::load(&damaged).is_ok());
    bytes[23] = 1;
    reseal(&mut bytes);
    std::fs::write(&damaged, &bytes).unwrap();
    expect_corrupt(&damaged, "flags");
    let mut bytes = good.clone();
    bytes[23] = 0x80;
    reseal(&mut bytes);
    std::fs::write(&damaged, &bytes).unwrap();
    expect_corrupt(&damaged, "flags");
    assert_eq!(&good[..8], &FILE_MAGIC);

    // Missing file.
    let error = Hnsw::load(&directory.path().join("absent.hnsw")).unwrap_err();
    assert!(matches!(error, FileError::Io { .. }));
    assert!(error.to_string().contains("absent.hnsw"), "{error}");
}

/// A file whose checksums are all valid but whose graph points out of range (a bug or a
/// forger, not bit rot) is refused by the bounds checks, not by a panic in a later search.
#[test]
fn consistent_checksums_do_not_let_out_of_range_links_through() {
    let directory = tempfile::tempdir().unwrap();
    let (index, _) = build(Quantization::None, Metric::L2);
    let path = directory.path().join("segment.hnsw");
    index.save(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // Layer-0 links are section 7 (table entry 6): point node 0's first neighbour past the end.
    let entry = 80 + 6 * 24;
    let offset = u64::from_le_bytes(bytes[entry + 8..entry + 16].try_into().unwrap()) as usize;
    let length = u64::from_le_bytes(bytes[entry + 16..entry + 24].try_into().unwrap()) as usize;
    bytes[offset + 4..offset + 8].copy_from_slice(&100_000u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[offset..offset + length]);
    bytes[entry + 4..entry + 8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&bytes[..508]);
    bytes[508..512].copy_from_slice(&header_crc.to_le_bytes());
    let damaged = directory.path().join("forged.hnsw");
    std::fs::write(&damaged, &bytes).unwrap();
    expect_corrupt(&damaged, "layer-0 links of node 0 out of range");
}

/// Writes `values` as rows of `vector_stride(dim)` floats at a 4 KiB offset into a file (as
/// an SSTable's vector region lies) and maps them.
fn mapped_rows(path: &std::path::Path, dim: usize, values: &[f32]) -> Store<f32> {
    let stride = vector_stride(dim);
    let mut bytes = vec![0xAAu8; 4096];
    for row in values.chunks_exact(dim) {
        let mut padded = row.to_vec();
        padded.resize(stride, 0.0);
        bytes.extend(padded.iter().flat_map(|x| x.to_le_bytes()));
    }
    bytes.extend([0x55u8; 100]);
    std::fs::write(path, &bytes).unwrap();
    let mapping = Arc::new(Mapping::of(&std::fs::File::open(path).unwrap()).unwrap());
    Store::mapped(&mapping, 4096, values.len() / dim * stride).unwrap()
}

#[test]
fn an_index_built_over_mapped_rows_matches_a_copied_one_and_reloads_over_them() {
    eprintln!("seed {SEED:#x}");
    let directory = tempfile::tempdir().unwrap();
    for (quantization, metric) in [
        (Quantization::None, Metric::L2),
        (Quantization::ScalarI8, Metric::Cosine),
        (Quantization::None, Metric::InnerProduct),
    ] {
        let dim = 20;
        let (data, queries) = clustered_split(1500, 40, dim, 6, SEED, metric);
        let mut stored = data.clone();
        if metric.normalizes() {
            stored.chunks_exact_mut(dim).for_each(normalize);
        }
        let params = params(quantization, metric);
        let labels: Vec<u64> = (0..1500).map(|row| row * 3 + 11).collect();
        let copied = Hnsw::build(dim, &data, Some(&labels), &params).unwrap();
        let region = directory.path().join("table.sst");
        let rows = || mapped_rows(&region, dim, &stored);
        let over = Hnsw::build_over(dim, rows(), Some(&labels), &params).unwrap();
        assert!(over.vectors_external() && !copied.vectors_external());
        // One thread: the same graph, so the same answers.
        for query in queries.chunks_exact(dim) {
            assert_eq!(
                over.search(query, 10, 48).unwrap(),
                copied.search(query, 10, 48).unwrap()
            );
        }

        let path = directory.path().join("segment.hnsw");
        over.save(&path).unwrap();
        let own = directory.path().join("own.hnsw");
        copied.save(&own).unwrap();
        let file_bytes = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        assert!(
            file_bytes(&path) + (1500 * vector_stride(dim) * 4) as u64 <= file_bytes(&own),
            "the file leaves the vectors out"
        );
        match Hnsw::load(&path) {
            Err(FileError::Rows { detail, .. }) => assert!(detail.contains("load it with them")),
            other => panic!("loading without the rows: {other:?}"),
        }
        let short = Store::owned(&stored[..dim * 3]);
        match Hnsw::load_over(&path, short) {
            Err(FileError::Rows { detail, .. }) => assert!(detail.contains("floats given")),
            other => panic!("loading over too few rows: {other:?}"),
        }
        match Hnsw::load_over(&own, rows()) {
            Err(FileError::Rows { detail, .. }) => assert!(detail.contains("its own vectors")),
            other => panic!("loading a self-contained file over rows: {other:?}"),
        }
        let loaded = Hnsw::load_over(&path, rows()).unwrap();
        assert!(loaded.vectors_external() && loaded.is_mapped());
        for query in queries.chunks_exact(dim) {
            assert_eq!(
                loaded.search(query, 10, 48).unwrap(),
                copied.search(query, 10, 48).unwrap()
            );
        }
        // Compaction gives a self-contained index.
        let mut loaded = loaded;
        loaded.delete(3).unwrap();
        let compacted = loaded.compact().unwrap().index;
        assert!(!compacted.vectors_external());
        compacted.save(&own).unwrap();
        assert_eq!(Hnsw::load(&own).unwrap().len(), 1499);
    }
}

#[test]
fn rows_that_do_not_fit_are_refused() {
    let dim = 5;
    let params = BuildParams {
        metric: Metric::Cosine,
        threads: 1,
        ..BuildParams::default()
    };
    let stride = vector_stride(dim);
    let mut values = vec![0.0f32; 4 * stride];
    for row in values.chunks_exact_mut(stride) {
        row[0] = 1.0;
    }
    assert!(Hnsw::build_over(dim, Store::owned(&values), None, &params).is_ok());
    values[2 * stride + 1] = 0.5; // row 2 is no longer a unit vector
    let error = Hnsw::build_over(dim, Store::owned(&values), None, &params).unwrap_err();
    assert!(
        error.to_string().contains("row 2 is not a unit vector"),
        "{error}"
    );
    let error =
        Hnsw::build_over(dim, Store::owned(&values[..stride + 3]), None, &params).unwrap_err();
    assert!(error.to_string().contains("not whole rows"), "{error}");
    values[2 * stride + 1] = f32::NAN;
    let error = Hnsw::build_over(dim, Store::owned(&values), None, &params).unwrap_err();
    assert_eq!(error, IndexError::NotFinite { row: 2 });
}
