//! Searches verify the rows they rank (issue #23 item 4): an index over the caller's mapped
//! rows with their per-unit checksums (`Hnsw::check_rows_with`, as the shard gives an
//! SSTable's vector region) never ranks a row whose unit fails; the search fails with
//! `IndexError::Corrupt` naming the unit, and the owner's hook hears of it. Before, a bit
//! flipped in the rows moved or dropped that point from the answer without a word.

mod common;

use common::{uniform, Random};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use vortex_index::checksums::UNIT_BYTES;
use vortex_index::{
    vector_stride, BuildParams, Hnsw, IndexError, Mapping, Metric, Quantization, RowChecksums,
    RowDamage, Store,
};

const SEED: u64 = 0xC4EC_2026_1207;

/// Where the rows start in the file (as an SSTable's vector region does, unit-aligned).
const REGION: usize = 4096;

/// Writes `values` as rows of `vector_stride(dim)` floats at [`REGION`], zero-padded to a
/// whole unit, then 100 other bytes; maps the rows. Returns them and each unit's CRC32C.
fn region(path: &Path, dim: usize, values: &[f32]) -> (Store<f32>, Vec<u32>) {
    let stride = vector_stride(dim);
    let mut rows = Vec::new();
    for row in values.chunks_exact(dim) {
        let mut padded = row.to_vec();
        padded.resize(stride, 0.0);
        rows.extend(padded.iter().flat_map(|x| x.to_le_bytes()));
    }
    rows.resize(rows.len().next_multiple_of(UNIT_BYTES), 0);
    let crcs = rows.chunks_exact(UNIT_BYTES).map(crc32c::crc32c).collect();
    let mut bytes = vec![0xAAu8; REGION];
    bytes.extend(&rows);
    bytes.extend([0x55u8; 100]);
    std::fs::write(path, &bytes).unwrap();
    let mapping = Arc::new(Mapping::of(&std::fs::File::open(path).unwrap()).unwrap());
    let store = Store::mapped(&mapping, REGION, values.len() / dim * stride).unwrap();
    (store, crcs)
}

/// Flips one bit of byte `offset` of the file, in place (a mapping of it sees the change).
fn flip(path: &Path, offset: usize) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset as u64).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset as u64).unwrap();
}

/// Damage the hook heard of.
type Heard = Arc<Mutex<Vec<RowDamage>>>;

fn checksums(crcs: Vec<u32>, dim: usize) -> (Arc<RowChecksums>, Heard) {
    let heard: Heard = Arc::default();
    let sink = Arc::clone(&heard);
    let hook = Box::new(move |damage: &RowDamage| sink.lock().unwrap().push(*damage));
    (Arc::new(RowChecksums::new(crcs, dim, Some(hook))), heard)
}

fn params(quantization: Quantization) -> BuildParams {
    BuildParams {
        metric: Metric::L2,
        m: 12,
        ef_construction: 64,
        quantization,
        seed: SEED,
        ..BuildParams::default()
    }
}

/// The unit holding byte 5 of `node`'s vector.
fn unit_of(node: usize, dim: usize) -> usize {
    (node * vector_stride(dim) * 4 + 5) / UNIT_BYTES
}

/// For `f32` walks and `i8` re-ranks, rows that straddle units (dim 100) and rows that do
/// not (dim 32): intact rows give the same answers with checks as without, and a search
/// that reads a damaged row fails naming its unit, whichever node it was.
#[test]
fn a_search_never_ranks_a_row_whose_unit_fails_its_checksum() {
    eprintln!("seed {SEED:#x}");
    let directory = tempfile::tempdir().unwrap();
    let mut random = Random::new(SEED);
    for (dim, quantization) in [
        (100, Quantization::None),
        (32, Quantization::None),
        (100, Quantization::ScalarI8),
    ] {
        let count = 600;
        let values = uniform(count, dim, SEED ^ dim as u64);
        let path = directory
            .path()
            .join(format!("rows-{dim}-{quantization:?}"));
        let (rows, crcs) = region(&path, dim, &values);
        let plain = Hnsw::build(dim, &values, None, &params(quantization)).unwrap();
        let mut checked = Hnsw::build_over(dim, rows, None, &params(quantization)).unwrap();
        let (sums, heard) = checksums(crcs, dim);
        checked.check_rows_with(Arc::clone(&sums)).unwrap();
        let what = format!("dim {dim}, {quantization:?}");
        for query in 0..20 {
            let query = &values[query * 7 * dim..(query * 7 + 1) * dim];
            assert_eq!(
                checked.search(query, 10, 64).unwrap(),
                plain.search(query, 10, 64).unwrap(),
                "{what}"
            );
        }
        assert!(sums.verified_units() > 0, "{what}");
        // Letting the pages go forgets what verified: the next read may come from disk.
        checked.release_pages();
        assert_eq!(sums.verified_units(), 0, "{what}");
        assert!(heard.lock().unwrap().is_empty(), "{what}");

        // A bit flipped in a row no search read since: the first search near it fails.
        let node = random.below(count);
        flip(&path, REGION + node * vector_stride(dim) * 4 + 5);
        let query = &values[node * dim..(node + 1) * dim];
        match checked.search(query, 10, 64) {
            Err(IndexError::Corrupt(damage)) => {
                assert_eq!(damage.unit, unit_of(node, dim), "{what}: node {node}");
                assert_ne!(damage.computed, Some(damage.stored), "{what}");
            }
            other => panic!("{what}: node {node} damaged, the search answered {other:?}"),
        }
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard.len(), 1, "{what}: {heard:?}");
        assert_eq!(heard[0].unit, unit_of(node, dim), "{what}");
        // The damaged unit never verifies, so every search that reads it fails again.
        assert!(matches!(
            checked.search(query, 10, 64),
            Err(IndexError::Corrupt(_))
        ));
        // A copy of a vector in that unit is refused too; one elsewhere is not.
        assert!(matches!(
            checked.checked_vector(node as u32),
            Err(IndexError::Corrupt(_))
        ));
        let mut row = vec![0.0; dim];
        assert!(matches!(
            checked.read_vector(node as u32, &mut row),
            Err(IndexError::Corrupt(_))
        ));
        let far = (node + count / 2) % count;
        if unit_of(far, dim) != unit_of(node, dim) {
            assert!(checked.checked_vector(far as u32).unwrap().is_some());
            assert!(checked.read_vector(far as u32, &mut row).unwrap());
        }
    }
}

/// The checks cost one bit test per row once its unit verified: many threads searching at
/// once verify each unit at most once between them (plus the few they race on) and all
/// agree with the unchecked index.
#[test]
fn concurrent_searches_share_what_verified() {
    let directory = tempfile::tempdir().unwrap();
    let dim = 64;
    let count = 2000;
    let values = uniform(count, dim, SEED);
    let path = directory.path().join("rows");
    let (rows, crcs) = region(&path, dim, &values);
    let units = crcs.len();
    let plain = Hnsw::build(dim, &values, None, &params(Quantization::None)).unwrap();
    let mut checked = Hnsw::build_over(dim, rows, None, &params(Quantization::None)).unwrap();
    let (sums, _) = checksums(crcs, dim);
    checked.check_rows_with(Arc::clone(&sums)).unwrap();
    let mismatches = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (checked, plain, values, mismatches) = (&checked, &plain, &values, &mismatches);
            scope.spawn(move || {
                for query in 0..200 {
                    let at = (query * 13 + thread * 101) % count;
                    let query = &values[at * dim..(at + 1) * dim];
                    if checked.search(query, 10, 64).unwrap()
                        != plain.search(query, 10, 64).unwrap()
                    {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(mismatches.load(Ordering::Relaxed), 0);
    let verified = sums.verified_units();
    assert!(verified > 0 && verified <= units, "{verified} of {units}");
}

/// Checksums that do not cover every row, or rows the index owns, are refused.
#[test]
fn checksums_must_cover_the_caller_s_mapped_rows() {
    let directory = tempfile::tempdir().unwrap();
    let dim = 16;
    let values = uniform(300, dim, SEED);
    let (rows, mut crcs) = region(&directory.path().join("rows"), dim, &values);
    crcs.pop();
    let mut index = Hnsw::build_over(dim, rows, None, &params(Quantization::None)).unwrap();
    let short = Arc::new(RowChecksums::new(crcs.clone(), dim, None));
    assert!(matches!(
        index.check_rows_with(short),
        Err(IndexError::InvalidParameter(_))
    ));
    let mut owned = Hnsw::build(dim, &values, None, &params(Quantization::None)).unwrap();
    let any = Arc::new(RowChecksums::new(vec![0; 64], dim, None));
    assert!(matches!(
        owned.check_rows_with(any),
        Err(IndexError::InvalidParameter(_))
    ));
}
