//! Corruption is fenced, not shard-wide (issue #23 item 4): a table that fails its checks,
//! at open or while the shard runs, is quarantined; requests that need it answer
//! `ShardError::Fenced` naming the collection and the id range, and everything else is
//! served: the collection's other tables for gets, the other collections for everything,
//! writes to all. Before, one flipped bit in any part of a table made the open fail.

use std::path::{Path, PathBuf};
use vortex_shard::{SearchRequest, Shard, ShardError, ShardOptions};
use vortex_storage::sstable::table::{Section, Table};
use vortex_test_support::files::{copy_dir, flip, sorted_entries};
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

const DIM: usize = 16;

fn vector(id: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|d| ((id * 31 + d * 7) % 101) as f32 / 101.0)
        .collect()
}

fn spec(name: &str) -> CollectionSpec {
    CollectionSpec {
        name: name.into(),
        dimension: DIM as u32,
        metric: Metric::L2,
        m: 16,
        ef_construction: 64,
        vector_type: VectorType::F32,
    }
}

fn upsert(shard: &mut Shard, name: &str, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    let vectors: Vec<f32> = ids.iter().flat_map(|&id| vector(id)).collect();
    let sequence = shard.upsert(name, &ids, &vectors, &[]).unwrap();
    while shard
        .poll(Some(std::time::Duration::from_millis(1)))
        .unwrap()
        < sequence
    {}
}

fn search(shard: &Shard, name: &str, id: u64) -> Result<Vec<u64>, ShardError> {
    let query = vector(id);
    shard
        .search(&SearchRequest {
            collection: name,
            vector: &query,
            k: 3,
            ef: 64,
            filter: None,
            with_payload: false,
        })
        .map(|hits| hits.iter().map(|hit| hit.id).collect())
}

/// A shard in `dir` with `docs` in two tables (ids 0..300, then 1000..1300) and `other` in
/// one; closed. Returns the path of docs' first table (ids 0..300).
fn build(dir: &Path) -> PathBuf {
    let (mut shard, _) = Shard::open(dir, ShardOptions::default()).unwrap();
    shard.create_collection(spec("docs")).unwrap();
    shard.create_collection(spec("other")).unwrap();
    upsert(&mut shard, "docs", 0..300);
    shard.flush().unwrap();
    upsert(&mut shard, "docs", 1000..1300);
    upsert(&mut shard, "other", 0..300);
    shard.flush().unwrap();
    shard.wait_idle().unwrap();
    shard.close().unwrap();
    let mut tables = tables(dir);
    assert_eq!(tables.len(), 3, "{tables:?}");
    tables.remove(0)
}

/// A byte inside `section` of the table at `path` (in slot 0's vector, id 0, for the vector
/// region).
fn section_offset(path: &Path, section: Section) -> u64 {
    Table::open(&vortex_storage::PosixFiles::shared(), path, 0)
        .unwrap()
        .footer()
        .section_start(section)
        + 5
}

/// What a fenced shard serves and refuses: `docs`' ids 0..300 are fenced.
fn assert_fenced(shard: &mut Shard, what: &str) {
    let fenced = |result: Result<_, ShardError>, doing: &str| match result {
        Err(ShardError::Fenced {
            collection,
            first,
            last,
            ..
        }) => {
            assert_eq!(collection, "docs", "{what}: {doing}");
            assert!(
                first <= 5 && (299..1000).contains(&last),
                "{what}: {doing}: {first}..={last}"
            );
        }
        Err(other) => panic!("{what}: {doing}: {other}"),
        Ok(_) => panic!("{what}: {doing} was answered over a fenced table"),
    };
    fenced(
        shard.get("docs", &[5], true, false).map(|_| ()),
        "a get in the range",
    );
    fenced(search(shard, "docs", 1005).map(|_| ()), "a search");
    fenced(shard.describe_collection("docs").map(|_| ()), "a describe");
    // The rest of docs, and the other collection, are served.
    let got = shard.get("docs", &[1005, 1299], true, false).unwrap();
    assert_eq!(got.len(), 2, "{what}");
    assert_eq!(got[0].vector, vector(1005), "{what}");
    assert_eq!(search(shard, "other", 42).unwrap()[0], 42, "{what}");
    let points = shard.describe_collection("other").unwrap().points;
    assert!((300..=301).contains(&points), "{what}: {points}");
    assert!(shard.list_collections().is_ok(), "{what}");
    assert_eq!(shard.stats().store.quarantined_tables, 1, "{what}");
    // Writes go on, and a newer version of a fenced point is served.
    upsert(shard, "docs", 7..8);
    upsert(shard, "other", 400..401);
    let got = shard.get("docs", &[7], true, false).unwrap();
    assert_eq!(got[0].vector, vector(7), "{what}");
}

/// A flipped bit in any part of a table: the shard opens (before: refused), the table is
/// fenced, and the rest is served.
#[test]
fn a_damaged_table_at_open_is_fenced_and_the_rest_served() {
    let source = tempfile::tempdir().unwrap();
    let damaged = build(source.path());
    for section in Section::ALL {
        let scratch = tempfile::tempdir().unwrap();
        copy_dir(source.path(), scratch.path());
        let path = scratch
            .path()
            .join("store/tables")
            .join(damaged.file_name().unwrap());
        flip(&path, section_offset(&path, section));
        let (mut shard, _) = Shard::open(scratch.path(), ShardOptions::default())
            .unwrap_or_else(|error| panic!("{section}: the open was refused: {error}"));
        assert_fenced(&mut shard, &format!("{section}"));
        shard.close().unwrap();
        // And again after a restart.
        let (mut shard, _) = Shard::open(scratch.path(), ShardOptions::default()).unwrap();
        assert_fenced(&mut shard, &format!("{section}, restarted"));
        shard.close().unwrap();
    }
}

/// A bit flipped in a vector region while the shard runs: the first read of the damaged
/// vector finds it, and from then on that range is fenced, not the shard (before, every
/// search and get answered Internal until a restart, and the restart was refused).
#[test]
fn a_table_damaged_while_serving_is_fenced_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = build(dir.path());
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert_eq!(search(&shard, "docs", 5).unwrap()[0], 5);
    // Slot 0 of the region holds the table's smallest id, 0.
    flip(&damaged, section_offset(&damaged, Section::Vectors));
    match shard.get("docs", &[0], true, false) {
        Err(ShardError::Fenced { .. }) => {}
        other => panic!("the damaged vector was read without an error: {other:?}"),
    }
    assert_fenced(&mut shard, "while serving");
    shard.close().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert_fenced(&mut shard, "restarted");
    shard.close().unwrap();
}

/// A search checks what it ranks: a bit flipped in a vector region while the shard runs,
/// found first by a search (no get read it), fences the range there and then. Before, the
/// segment's graph ranked the damaged vector as it was (a wrong distance, or the point left
/// out), with no error, and kept doing so.
#[test]
fn a_search_that_reads_a_damaged_vector_is_refused_not_misranked() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = build(dir.path());
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    // Slot 0 of the region holds the table's smallest id, 0; the search near it reads it.
    flip(&damaged, section_offset(&damaged, Section::Vectors));
    match search(&shard, "docs", 0) {
        Err(ShardError::Fenced { collection, .. }) => assert_eq!(collection, "docs"),
        other => panic!("a search ranked the damaged vector: {other:?}"),
    }
    assert_fenced(&mut shard, "found by a search");
    shard.close().unwrap();
}

/// The same for a flushed table searched by an exact scan while its graph waits to be
/// built: each row is checked before it is ranked.
#[test]
fn a_table_scanned_before_its_graph_is_built_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    shard.create_collection(spec("docs")).unwrap();
    shard.create_collection(spec("other")).unwrap();
    upsert(&mut shard, "other", 0..300);
    shard.flush().unwrap();
    shard.wait_idle().unwrap();
    let before: Vec<PathBuf> = tables(dir.path());
    shard.hold_index_builds(true);
    upsert(&mut shard, "docs", 0..300);
    shard.flush().unwrap();
    let flushed: Vec<PathBuf> = tables(dir.path())
        .into_iter()
        .filter(|path| !before.contains(path))
        .collect();
    assert_eq!(flushed.len(), 1, "{flushed:?}");
    assert!(
        shard.stats().index_build_backlog > 0,
        "the build was not deferred"
    );
    // The last row of the region: the scan reaches it after every other.
    let table = Table::open(&vortex_storage::PosixFiles::shared(), &flushed[0], 0).unwrap();
    let last =
        table.footer().section_start(Section::Vectors) + 299 * u64::from(table.footer().stride) + 3;
    drop(table);
    flip(&flushed[0], last);
    match search(&shard, "docs", 150) {
        Err(ShardError::Fenced {
            collection,
            first,
            last,
            ..
        }) => assert_eq!((collection.as_str(), first, last), ("docs", 0, 299)),
        other => panic!("the scan ranked the damaged vector: {other:?}"),
    }
    assert_eq!(search(&shard, "other", 42).unwrap()[0], 42);
    shard.hold_index_builds(false);
    shard.close().unwrap();
}

/// A page of a table that the disk cannot read while the shard runs (an I/O error under
/// the mapping; here the file is cut short under it, which raises the same SIGBUS): the
/// read sees zeros instead, the table is fenced with an I/O error naming the byte, and the
/// rest is served. Before, the process died of SIGBUS at the first read of the page, and
/// again at every start that read it.
#[test]
fn a_table_page_the_disk_cannot_read_fences_the_table_instead_of_killing_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = build(dir.path());
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    // The search reads (and verifies) the rows the cut takes away below.
    assert_eq!(search(&shard, "docs", 5).unwrap()[0], 5);
    let region = section_offset(&damaged, Section::Vectors) - 5;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap()
        .set_len(region)
        .unwrap();
    // The rows were verified by the search above: only the lost page tells.
    match search(&shard, "docs", 5) {
        Err(ShardError::Fenced { detail, .. }) => {
            assert!(detail.contains("could not be read"), "{detail}")
        }
        other => panic!("a search over a page the disk could not read: {other:?}"),
    }
    match shard.get("docs", &[5], true, false) {
        Err(ShardError::Fenced { detail, .. }) => {
            assert!(detail.contains("could not be read"), "{detail}")
        }
        other => panic!("a get over a page the disk could not read: {other:?}"),
    }
    assert_fenced(&mut shard, "a page lost while serving");
    shard.close().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert_fenced(&mut shard, "restarted with the table cut short");
    shard.close().unwrap();
}

/// The same for a page of a side-car index (its links, levels, codes): a search that walked
/// zeros there would rank wrong neighbours without an error; it is refused instead, and the
/// table fenced until a restart builds the side-car again.
#[test]
fn a_side_car_page_the_disk_cannot_read_refuses_the_search_instead_of_misranking() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = build(dir.path());
    let (shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert_eq!(search(&shard, "docs", 5).unwrap()[0], 5);
    let sidecar = dir
        .path()
        .join("indexes")
        .join(damaged.file_name().unwrap())
        .with_extension("hnsw");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sidecar)
        .unwrap()
        .set_len(4096)
        .unwrap();
    match search(&shard, "docs", 5) {
        Err(ShardError::Fenced { detail, .. }) => {
            assert!(detail.contains("could not be read"), "{detail}")
        }
        other => panic!("a search over a side-car page the disk could not read: {other:?}"),
    }
    assert_eq!(search(&shard, "other", 42).unwrap()[0], 42);
    shard.close().unwrap();
    // The restart finds the side-car damaged and builds it again from the table.
    let (mut shard, report) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert!(report.indexes_rebuilt >= 1, "{report:?}");
    shard.wait_idle().unwrap();
    assert_eq!(search(&shard, "docs", 5).unwrap()[0], 5);
    shard.close().unwrap();
}

/// The shard's SSTables, sorted.
fn tables(dir: &Path) -> Vec<PathBuf> {
    sorted_entries(&dir.join("store/tables"))
}
