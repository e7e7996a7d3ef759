//! A page of a table the kernel cannot read (an I/O error on the disk; here the file cut
//! short under its mapping, which raises the same SIGBUS): the store fences the table with an
//! I/O error instead of dying, and every other read is served (issue #23 item 11). A SIGBUS
//! anywhere else still kills the process.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use vortex_io::RingConfig;
use vortex_storage::{
    DirectIo, Key, PosixEnv, PosixFiles, StorageError, Store, StoreHooks, StoreOptions,
};
use vortex_test_support::files::sorted_entries;

fn open(dir: &Path) -> Store<PosixEnv> {
    let env = PosixEnv::new(&RingConfig::plain(64), DirectIo::Auto).unwrap();
    let options = StoreOptions {
        table_bytes_target: 64 << 10,
        scrub_bytes_per_second: 0,
        ..StoreOptions::default()
    };
    Store::open(env, dir, options, StoreHooks::default())
        .unwrap()
        .0
}

fn key(point: u64) -> Key {
    Key {
        collection: 1,
        point,
    }
}

fn vector(point: u64) -> Vec<u8> {
    (0..64u64).map(|i| (point * 7 + i) as u8).collect()
}

fn tables(dir: &Path) -> Vec<PathBuf> {
    sorted_entries(&dir.join("tables"))
}

#[test]
fn a_table_page_the_disk_cannot_read_quarantines_the_table_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    for point in 0..2_000 {
        store.put(key(point), &vector(point), &[b'x'; 200]).unwrap();
        if point % 100 == 99 {
            store.sync().unwrap();
        }
    }
    store.flush().unwrap();
    let tables = tables(dir.path());
    assert!(tables.len() >= 2, "{tables:?}");
    // Every point reads back (its pages verified), then the first table loses its second
    // half: the pages past the cut cannot be read any more.
    for point in 0..2_000 {
        assert_eq!(
            store.get(&key(point)).unwrap().unwrap().vector,
            vector(point)
        );
    }
    let length = std::fs::metadata(&tables[0]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tables[0])
        .unwrap()
        .set_len(length / 2 / 4096 * 4096)
        .unwrap();
    let (mut served, mut fenced) = (0, 0);
    for point in 0..2_000 {
        match store.get(&key(point)) {
            Ok(Some(got)) => {
                assert_eq!(got.vector, vector(point), "point {point}");
                served += 1;
            }
            Err(StorageError::Quarantined { path, reason }) => {
                assert_eq!(path, tables[0]);
                assert!(reason.contains("could not be read"), "{reason}");
                fenced += 1;
            }
            other => panic!("point {point}: {other:?}"),
        }
    }
    eprintln!("{served} points served, {fenced} fenced");
    assert!(fenced > 0 && served > 0, "{served} served, {fenced} fenced");
    assert_eq!(store.stats().quarantined_tables, 1);
}

/// The child of the test below: protects one mapping (installing the handler), then reads
/// a page past the end of a file mapped without the guard.
fn die_of_a_foreign_sigbus(dir: &Path) {
    let guarded = dir.join("guarded");
    std::fs::write(&guarded, vec![7u8; 8192]).unwrap();
    let files: &dyn vortex_storage::Files = &PosixFiles;
    let mapped = files.map(&guarded).unwrap();
    let foreign = dir.join("foreign");
    std::fs::write(&foreign, vec![9u8; 8192]).unwrap();
    let file = std::fs::File::open(&foreign).unwrap();
    // SAFETY: a test mapping, cut short on purpose below.
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    std::fs::OpenOptions::new()
        .write(true)
        .open(&foreign)
        .unwrap()
        .set_len(0)
        .unwrap();
    let byte = std::hint::black_box(&map[4096..])[0];
    println!(
        "read {byte} past the end and lived; guarded {}",
        mapped.len()
    );
    std::process::exit(0);
}

#[test]
fn a_sigbus_outside_the_guarded_mappings_still_kills_the_process() {
    if let Some(dir) = std::env::var_os("VORTEX_LOST_PAGES_CHILD") {
        die_of_a_foreign_sigbus(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_sigbus_outside_the_guarded_mappings_still_kills_the_process",
            "--nocapture",
        ])
        .env("VORTEX_LOST_PAGES_CHILD", dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGBUS),
        "the child: {:?}, {}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
}
