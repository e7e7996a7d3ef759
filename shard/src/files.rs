//! Durable file writes the shard's own files share (the catalog, saved node graphs).

use crate::error::ShardError;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Syncs directory `dir` (its entries: renames and new files).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ShardError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ShardError::io("fsync", dir, e))
}

/// Creates `path` holding `parts`, one after another, and syncs it.
pub(crate) fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<(), ShardError> {
    let mut file = File::create(path).map_err(|e| ShardError::io("create", path, e))?;
    for part in parts {
        file.write_all(part)
            .map_err(|e| ShardError::io("write", path, e))?;
    }
    file.sync_all().map_err(|e| ShardError::io("sync", path, e))
}
