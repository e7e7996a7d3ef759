//! Files: copying a data directory, listing one, and damaging one byte of a file as a disk
//! would.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The paths of the entries of `dir`, sorted (a store's `tables/`: oldest table first).
pub fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the directory")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    paths
}

/// Copies the directory tree `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("list the source") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("its type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Flips bit 2 of the byte at `offset` of `path`, in place: the file keeps its length and
/// its inode, so a process that maps it (a running store) sees the damage and never loses
/// the pages under its mapping (a truncating rewrite raises SIGBUS there).
pub fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the file to damage");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)
        .expect("read the byte to damage");
    byte[0] ^= 0x04;
    file.write_all_at(&byte, offset)
        .expect("write the damaged byte");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_changes_one_bit_in_place_and_a_copy_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/file"), [0u8, 1, 2, 3]).unwrap();
        flip(&dir.path().join("a/b/file"), 2);
        assert_eq!(
            std::fs::read(dir.path().join("a/b/file")).unwrap(),
            [0, 1, 6, 3]
        );
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&dir.path().join("a"), &copy.path().join("c"));
        assert_eq!(
            std::fs::read(copy.path().join("c/b/file")).unwrap(),
            [0, 1, 6, 3]
        );
    }
}
