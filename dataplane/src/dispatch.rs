//! Dispatch: one validated VBP request, read in place from its frame, run on the LEU's
//! shard, and the response to send.
//!
//! Reads (ping, list, describe, get, search, count, stats) are answered at once. A write
//! (create, drop, upsert, delete) is acknowledged only once durable: upserts and deletes
//! return the WAL sequence number their answer waits for ([`Outcome::AfterDurable`]); the
//! reactor sends the answer when [`Shard::poll`] reports that sequence durable (catalog
//! changes are durable when the call returns). Every failure becomes a typed error
//! response, and an overloaded store a THROTTLED one; nothing here panics on a request.

use crate::gather::Ownership;
use std::time::Duration;
use vortex_shard::{
    search_node, NodeGraph, PublishedView, SearchRequest, Shard, ShardError, ShardView, TierGraphs,
};
use vortex_storage::StorageError;
use vortex_vbp::codec::Response;
use vortex_vbp::message::{
    CollectionList, CountResult, Counter, ErrorCode, FencedResult, FencedTable, GetResult,
    LeuStats, Ping, SearchResult, StatsResult, ThrottledBody, WriteAck,
};
use vortex_vbp::validator::{RequestRef, SearchView};

/// How long a THROTTLED answer suggests waiting before a retry.
pub const RETRY_AFTER: Duration = Duration::from_millis(5);

/// What to answer, and when.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send this now.
    Ready(Response),
    /// Send this once the shard's durable sequence number reaches `sequence`.
    AfterDurable {
        /// The WAL sequence number of the request's last write.
        sequence: u64,
        /// The answer.
        response: Response,
    },
}

/// Runs `request` on `shard`, LEU `leu`'s, which owns every point.
pub fn dispatch(shard: &mut Shard, leu: u16, request: RequestRef<'_>) -> Outcome {
    dispatch_part(shard, Ownership::all(leu), &[], request)
}

/// Runs this LEU's part of `request` on `shard`: the points of a batch that `ownership`
/// gives it (the rest belong to other LEUs, which run their own parts; see
/// [`crate::gather`]). `counters` are the server's own, added to this LEU's stats.
pub fn dispatch_part(
    shard: &mut Shard,
    ownership: Ownership<'_>,
    counters: &[(&str, u64)],
    request: RequestRef<'_>,
) -> Outcome {
    match run(shard, ownership, counters, request) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Ready(error_response(&error)),
    }
}

/// Runs a whole search on this LEU over `views`, every LEU's published shard view: the
/// node's data, whichever LEU wrote it (the `whole` search spread, docs/DATAPLANE.md).
pub fn search_whole(
    views: &[PublishedView],
    tier: Option<&TierGraphs>,
    search: &SearchView<'_>,
) -> Outcome {
    let loaded: Vec<_> = views.iter().map(PublishedView::load).collect();
    let loaded: Vec<&ShardView> = loaded.iter().map(|view| &***view).collect();
    let graphs = tier.map(TierGraphs::load);
    let graph = graphs
        .as_ref()
        .and_then(|graphs| graphs.get(search.body.collection.as_str()))
        .map(|graph| &**graph);
    match search_on(&loaded, graph, search) {
        Ok(response) => Outcome::Ready(response),
        Err(error) => Outcome::Ready(error_response(&error)),
    }
}

/// A search over `views` (one shard's, or every LEU's).
fn search_on(
    views: &[&ShardView],
    graph: Option<&NodeGraph>,
    search: &SearchView<'_>,
) -> Result<Response, ShardError> {
    let filter: Option<vortex_vbp::message::Filter> = deserialize(&search.body.filter)?;
    let hits = search_node(
        views,
        graph,
        &SearchRequest {
            collection: search.body.collection.as_str(),
            vector: search.vector,
            k: search.body.k.to_native() as usize,
            ef: search.body.ef.to_native() as usize,
            filter: filter.as_ref(),
            with_payload: search.body.with_payload,
        },
    )?;
    Ok(Response::Hits(SearchResult { hits }))
}

/// Checks a whole upsert or delete on `shard` as each owner will check its part, without
/// writing: the LEU that reads a write spanning several LEUs calls this before any part
/// runs, so that an error about the request (collection, batch size, dimension, values,
/// payloads) means nothing was applied anywhere (docs/VBP.md). Other requests pass.
pub fn check_write(shard: &Shard, request: &RequestRef<'_>) -> Result<(), Response> {
    let checked = match request {
        RequestRef::Upsert(view) => {
            let ids: Vec<u64> = view.body.ids.iter().map(|id| id.to_native()).collect();
            deserialize(&view.body.payloads).and_then(|payloads: Vec<_>| {
                shard.check_upsert(view.body.collection.as_str(), &ids, view.vectors, &payloads)
            })
        }
        RequestRef::Delete(delete) => {
            let mut ids: Vec<u64> = delete.ids.iter().map(|id| id.to_native()).collect();
            // As each owner counts them: an id given twice is one delete.
            ids.sort_unstable();
            ids.dedup();
            shard.check_delete(delete.collection.as_str(), &ids)
        }
        _ => Ok(()),
    };
    checked.map_err(|error| error_response(&error))
}

/// A THROTTLED answer saying what is saturated, with the retry hint.
pub fn throttled(reason: impl Into<String>) -> Response {
    Response::Throttled(ThrottledBody {
        retry_after_ms: RETRY_AFTER.as_millis() as u32,
        reason: reason.into(),
    })
}

/// The response for a shard error.
pub fn error_response(error: &ShardError) -> Response {
    if error.is_throttled() {
        return throttled(error.to_string());
    }
    let code = match error {
        ShardError::Invalid(_) => ErrorCode::InvalidArgument,
        ShardError::DimensionMismatch(_) => ErrorCode::DimensionMismatch,
        ShardError::NotFound(_) => ErrorCode::CollectionNotFound,
        ShardError::Exists(_) => ErrorCode::CollectionExists,
        ShardError::Fenced { .. } => ErrorCode::Fenced,
        error if error.is_corruption() => ErrorCode::Fenced,
        // The disk took no writes at start: the write was refused before it was logged
        // (a write failed by a log error may or may not be there: `Internal`).
        ShardError::Storage(StorageError::NoSpace { .. }) => ErrorCode::Unavailable,
        ShardError::Storage(_)
        | ShardError::Io { .. }
        | ShardError::Locked(_)
        | ShardError::Corrupt { .. }
        | ShardError::Index { .. }
        | ShardError::Damaged(_)
        | ShardError::NodeGraph(_) => ErrorCode::Internal,
    };
    Response::error(code, error.to_string())
}

fn deserialize<T, A>(archived: &A) -> Result<T, ShardError>
where
    A: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<vortex_vbp::check_error::CheckError>>,
{
    rkyv::deserialize::<T, vortex_vbp::check_error::CheckError>(archived)
        .map_err(|error| ShardError::Invalid(format!("cannot read the request: {error}")))
}

fn run(
    shard: &mut Shard,
    ownership: Ownership<'_>,
    counters: &[(&str, u64)],
    request: RequestRef<'_>,
) -> Result<Outcome, ShardError> {
    Ok(Outcome::Ready(match request {
        RequestRef::Ping(ping) => Response::Pong(Ping {
            nonce: ping.nonce.to_native(),
        }),
        RequestRef::CreateCollection(spec) => {
            shard.create_collection(deserialize(spec)?)?;
            Response::Created
        }
        RequestRef::DropCollection(reference) => {
            shard.drop_collection(reference.name.as_str())?;
            Response::Dropped
        }
        RequestRef::ListCollections => Response::Collections(CollectionList {
            collections: shard.list_collections()?,
        }),
        RequestRef::DescribeCollection(reference) => {
            Response::Collection(shard.describe_collection(reference.name.as_str())?)
        }
        RequestRef::Upsert(view) => {
            let name = view.body.collection.as_str();
            let ids: Vec<u64> = view.body.ids.iter().map(|id| id.to_native()).collect();
            let payloads: Vec<vortex_vbp::message::Payload> = deserialize(&view.body.payloads)?;
            let (sequence, count) = if ids.iter().all(|&id| ownership.owns(id)) {
                (
                    shard.upsert(name, &ids, view.vectors, &payloads)?,
                    ids.len(),
                )
            } else {
                let (ids, vectors, payloads) = owned_part(ownership, &ids, view.vectors, payloads)?;
                (shard.upsert(name, &ids, &vectors, &payloads)?, ids.len())
            };
            return Ok(Outcome::AfterDurable {
                sequence,
                response: Response::Upserted(WriteAck {
                    count: count as u32,
                }),
            });
        }
        RequestRef::Delete(delete) => {
            let mut ids: Vec<u64> = delete
                .ids
                .iter()
                .map(|id| id.to_native())
                .filter(|&id| ownership.owns(id))
                .collect();
            // An id given twice is one point: counted (and tombstoned) once.
            ids.sort_unstable();
            ids.dedup();
            let name = delete.collection.as_str();
            // The answer counts the points that existed (docs/VBP.md); every id still gets
            // its tombstone. The LEU runs one request at a time, so nothing changes between.
            let existed = shard.get(name, &ids, false, false)?.len();
            let sequence = shard.delete(name, &ids)?;
            return Ok(Outcome::AfterDurable {
                sequence,
                response: Response::Deleted(WriteAck {
                    count: existed as u32,
                }),
            });
        }
        RequestRef::Get(get) => {
            let ids: Vec<u64> = get
                .ids
                .iter()
                .map(|id| id.to_native())
                .filter(|&id| ownership.owns(id))
                .collect();
            let points = shard.get(
                get.collection.as_str(),
                &ids,
                get.with_vectors,
                get.with_payload,
            )?;
            Response::Points(GetResult { points })
        }
        RequestRef::Search(view) => search_on(&[&shard.published().load()], None, &view)?,
        RequestRef::Count(count) => {
            if count.filter.is_some() {
                return Ok(Outcome::Ready(Response::error(
                    ErrorCode::InvalidArgument,
                    "count with a filter is not supported yet: count without one, or search",
                )));
            }
            let info = shard.describe_collection(count.collection.as_str())?;
            Response::Counted(CountResult { count: info.points })
        }
        RequestRef::Scrub => {
            if !shard.scrub_soon() {
                return Ok(Outcome::Ready(Response::error(
                    ErrorCode::Unavailable,
                    "no scrubber runs here (storage.scrub_mib_per_second = 0)",
                )));
            }
            Response::Scrubbing
        }
        RequestRef::Fenced => Response::FencedTables(FencedResult {
            tables: shard
                .published()
                .load()
                .fenced_tables()
                .into_iter()
                .map(|range| FencedTable {
                    leu: ownership.leu,
                    collection: range.collection,
                    first: range.first,
                    last: range.last,
                    table: range.table,
                    detail: range.detail,
                })
                .collect(),
        }),
        RequestRef::Stats => Response::Stats(StatsResult {
            leus: vec![leu_stats(shard, ownership.leu, counters)],
        }),
    }))
}

/// This LEU's counters (names documented in docs/VBP.md).
fn leu_stats(shard: &Shard, leu: u16, server: &[(&str, u64)]) -> LeuStats {
    let stats = shard.stats();
    let counter = |name: &str, value: u64| Counter {
        name: name.to_owned(),
        value,
    };
    let mut counters = vec![
        counter("collections", stats.collections as u64),
        counter("segments", stats.segments as u64),
        counter("memtable_points", stats.fresh_points as u64),
        counter("memtable_bytes", stats.store.memtable_bytes as u64),
        counter("index_build_backlog", stats.index_build_backlog as u64),
        counter("pending_compactions", stats.pending_compactions as u64),
        counter("fenced_tables", stats.store.quarantined_tables as u64),
        counter("scrub_passes", stats.store.scrub_passes),
        counter("scrub_passes_started", stats.store.scrub_passes_started),
        counter("scrub_bytes", stats.store.scrub_bytes),
        counter("scrub_corruptions", stats.store.scrub_corruptions),
        counter("scrub_pass_total_bytes", stats.store.scrub_pass_total_bytes),
        counter("scrub_pass_done_bytes", stats.store.scrub_pass_done_bytes),
    ];
    counters.extend(server.iter().map(|&(name, value)| counter(name, value)));
    LeuStats { leu, counters }
}

/// Ids, vectors (flat) and payloads of part of an upsert batch.
type UpsertPart = (Vec<u64>, Vec<f32>, Vec<vortex_vbp::message::Payload>);

/// The part of an upsert batch this LEU owns: its ids, their vectors and payloads.
fn owned_part(
    ownership: Ownership<'_>,
    ids: &[u64],
    vectors: &[f32],
    payloads: Vec<vortex_vbp::message::Payload>,
) -> Result<UpsertPart, ShardError> {
    if ids.is_empty() || !vectors.len().is_multiple_of(ids.len()) {
        return Err(ShardError::Invalid(format!(
            "an upsert of {} ids carries {} floats: not one vector per id",
            ids.len(),
            vectors.len()
        )));
    }
    if !payloads.is_empty() && payloads.len() != ids.len() {
        return Err(ShardError::Invalid(format!(
            "an upsert of {} ids carries {} payloads: give none or one per id",
            ids.len(),
            payloads.len()
        )));
    }
    let dimension = vectors.len() / ids.len();
    let with_payloads = !payloads.is_empty();
    let mut payloads = payloads.into_iter();
    let mut part = (Vec::new(), Vec::new(), Vec::new());
    for (index, &id) in ids.iter().enumerate() {
        let payload = if with_payloads { payloads.next() } else { None };
        if ownership.owns(id) {
            part.0.push(id);
            part.1
                .extend_from_slice(&vectors[index * dimension..(index + 1) * dimension]);
            part.2.extend(payload);
        }
    }
    Ok(part)
}
