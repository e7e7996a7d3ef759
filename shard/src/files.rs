//! Durable file writes the shard's own files share (the catalog, side-car indexes, saved
//! node graphs), through the storage engine's file system ([`Files`]), so that a test can
//! fail or crash them as it does the store's.

use crate::error::ShardError;
use std::io::Write;
use std::path::Path;
use vortex_storage::Files;

/// Syncs directory `dir` (its entries: renames and new files).
pub(crate) fn sync_dir(files: &dyn Files, dir: &Path) -> Result<(), ShardError> {
    files
        .sync_dir(dir)
        .map_err(|e| ShardError::io("fsync", dir, e))
}

/// Creates `path` in `files` (it must not exist), fills it through a buffer with `write`,
/// and syncs it. A failed sync is final: the file is never synced again and trusted.
pub(crate) fn write_new(
    files: &dyn Files,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), ShardError>,
) -> Result<(), ShardError> {
    let file = files
        .create_new(path)
        .map_err(|e| ShardError::io("create", path, e))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    write(&mut writer)?;
    let mut file = writer
        .into_inner()
        .map_err(|e| ShardError::io("write", path, e.into_error()))?;
    file.sync().map_err(|e| ShardError::io("fsync", path, e))
}

/// Replaces `path` atomically and durably with what `write` writes: into `temporary` (a
/// leftover of an earlier try is removed first), synced, renamed over `path`, and the
/// directory synced. On a failure the temporary file is removed; `path` is as it was, or,
/// after a failed directory sync, either version.
pub(crate) fn replace_synced(
    files: &dyn Files,
    temporary: &Path,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), ShardError> {
    match files.remove(temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(ShardError::io("remove", temporary, error))
        }
        _ => {}
    }
    let written = write_new(files, temporary, |out| {
        write(out).map_err(|e| ShardError::io("write", temporary, e))
    })
    .and_then(|()| {
        files
            .rename(temporary, path)
            .map_err(|e| ShardError::io("rename", temporary, e))
    });
    if let Err(error) = written {
        let _ = files.remove(temporary);
        return Err(error);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    sync_dir(files, dir.unwrap_or(Path::new(".")))
}
