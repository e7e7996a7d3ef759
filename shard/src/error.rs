//! The shard engine's error type.

use std::path::{Path, PathBuf};
use vortex_index::IndexError;
use vortex_storage::StorageError;

/// What can go wrong in the shard engine.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A request that breaks a rule or a limit; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// Vectors of another dimension than the collection's; the message says which.
    #[error("{0}")]
    DimensionMismatch(String),
    /// No live collection of that name.
    #[error("collection {0:?} does not exist")]
    NotFound(String),
    /// A live collection of that name exists already.
    #[error("collection {0:?} exists already")]
    Exists(String),
    /// The storage engine failed (or said THROTTLED).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another process (or another open) holds the shard's directory.
    #[error(transparent)]
    Locked(#[from] vortex_storage::LockError),
    /// A file operation of the shard itself failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A shard file that cannot be understood.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A node graph of the index tier failed a search (tier.rs).
    #[error("the node graph: {0}")]
    NodeGraph(String),
    /// An index failed to build, load or search.
    #[error("index of segment {table}: {detail}")]
    Index {
        /// The segment's table number.
        table: u64,
        /// What failed.
        detail: String,
    },
    /// A search read rows that failed their checksums (a unit of a table's vector region):
    /// nothing was ranked with them, and the table is fenced (quarantined) from then on.
    #[error("a search read damaged rows: {0}")]
    Damaged(String),
    /// Data the request needs is fenced: a table of the collection failed its checks and
    /// is quarantined until it is repaired or restored. The collection's other points (for
    /// a get) and the other collections are served.
    #[error(
        "collection {collection:?}: points {first} to {last} are fenced (table {table}: \
         {detail}); requests that need them fail until the table is repaired or restored"
    )]
    Fenced {
        /// The collection's name.
        collection: String,
        /// The lowest point id the fenced table may hold.
        first: u64,
        /// The highest.
        last: u64,
        /// The table's number.
        table: u64,
        /// Why it is fenced.
        detail: String,
    },
}

impl ShardError {
    /// An I/O error with its context.
    pub fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        ShardError::Io {
            operation,
            path: path.to_owned(),
            source,
        }
    }

    /// An index error of segment `table` (a failed search, build or load); damaged rows
    /// ([`IndexError::Corrupt`]) are corruption (see [`ShardError::is_corruption`]).
    pub fn index(table: u64, error: IndexError) -> Self {
        match error {
            IndexError::Corrupt(damage) => {
                ShardError::Damaged(format!("segment {table}: {damage}"))
            }
            lost @ IndexError::PageLost { .. } => {
                ShardError::Damaged(format!("segment {table}: {lost}"))
            }
            other => ShardError::Index {
                table,
                detail: other.to_string(),
            },
        }
    }

    /// An error of a search of a node graph (tier.rs), damaged rows as in
    /// [`ShardError::index`].
    pub fn node_graph(error: IndexError) -> Self {
        match error {
            IndexError::Corrupt(damage) => ShardError::Damaged(format!("a node graph: {damage}")),
            lost @ IndexError::PageLost { .. } => {
                ShardError::Damaged(format!("a node graph: {lost}"))
            }
            other => ShardError::NodeGraph(other.to_string()),
        }
    }

    /// Whether the error is a table's corruption found by a read (to be answered as
    /// [`ShardError::Fenced`], naming the collection and range, by whoever knows them).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            ShardError::Storage(
                StorageError::TableCorrupt { .. } | StorageError::Quarantined { .. }
            ) | ShardError::Damaged(_)
        )
    }

    /// Whether the request may simply be retried shortly (THROTTLED).
    pub fn is_throttled(&self) -> bool {
        matches!(self, ShardError::Storage(StorageError::Throttled(_)))
    }
}
