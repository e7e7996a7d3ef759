//! The shard engine: the per-core owner of collections and points.
//!
//! Owns collections (schema, catalog), durable point writes through the storage engine,
//! segments with their side-car HNSW indexes, and filtered search merged over the memtable and
//! every live segment. One instance per LEU; a reactor calls it and never waits on it.
//!
//! Empty until issue #7 fills it.
