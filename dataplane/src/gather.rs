//! Scatter and gather: which LEUs a request needs, and how their answers become one.
//!
//! Every LEU holds the whole catalog (collections are created and dropped on all of them)
//! and the points of the VNodes it owns ([`crate::routing`]). So:
//!
//! - a **ping** is answered by the LEU that read it;
//! - an **upsert, delete or get** goes to the owners of its ids; each runs the part of the
//!   batch it owns ([`Ownership`]), and the answers are summed (writes) or concatenated in
//!   request order (get);
//! - a **search** goes to every LEU; the hits are merged into the best `k` by distance;
//! - **count, describe, list** go to every LEU; point counts are summed;
//! - a **scrub** goes to every LEU (each starts its own scrubber's pass);
//! - **create, drop** go to every LEU; **stats** gathers one entry per LEU.
//!
//! If any part fails, the gathered answer is a failure, chosen so that it does not depend
//! on timing and never claims more than is true: an `Internal` error (the part may have
//! been applied in part) before any other error, any error before THROTTLED, then the lowest
//! LEU. An upsert or delete whose parts partly succeeded is answered `Partial` instead
//! (docs/VBP.md): what the parts that succeeded applied, and the ids of the parts that
//! failed. The LEU that read such a write has checked all of it first
//! ([`crate::dispatch::check_write`]), so only what an owner finds when it runs its part
//! (its store full, its disk failing) can fail one part and not another.

use crate::routing::Ring;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use vortex_vbp::codec::Response;
use vortex_vbp::message::{
    CollectionInfo, CollectionList, CountResult, ErrorCode, GetResult, PartialBody, PointRecord,
    SearchResult,
};
use vortex_vbp::validator::RequestRef;

/// Which points an LEU runs: those whose VNode it owns.
#[derive(Debug, Clone, Copy)]
pub struct Ownership<'a> {
    /// The placement of VNodes on LEUs; `None`: this LEU owns every point.
    pub ring: Option<&'a Ring>,
    /// This LEU.
    pub leu: u16,
}

impl Ownership<'_> {
    /// LEU `leu` owns every point (it serves alone).
    pub fn all(leu: u16) -> Ownership<'static> {
        Ownership { ring: None, leu }
    }

    /// Whether this LEU owns `point`.
    pub fn owns(&self, point: u64) -> bool {
        self.ring
            .is_none_or(|ring| ring.leus() == 1 || ring.leu_of(point) == usize::from(self.leu))
    }
}

/// The LEUs a request needs, as a bit per LEU (in LEU order).
pub fn participants(request: &RequestRef<'_>, ring: &Ring, receiver: u16) -> Vec<bool> {
    let leus = ring.leus();
    let mut needed = vec![false; leus];
    let mut mark_owners = |ids: &mut dyn Iterator<Item = u64>| {
        for id in ids {
            needed[ring.leu_of(id)] = true;
        }
    };
    match request {
        RequestRef::Ping(_) => needed[usize::from(receiver)] = true,
        RequestRef::Upsert(view) => mark_owners(&mut view.body.ids.iter().map(|id| id.to_native())),
        RequestRef::Delete(delete) => mark_owners(&mut delete.ids.iter().map(|id| id.to_native())),
        RequestRef::Get(get) => mark_owners(&mut get.ids.iter().map(|id| id.to_native())),
        RequestRef::CreateCollection(_)
        | RequestRef::DropCollection(_)
        | RequestRef::ListCollections
        | RequestRef::DescribeCollection(_)
        | RequestRef::Search(_)
        | RequestRef::Count(_)
        | RequestRef::Stats
        | RequestRef::Scrub
        | RequestRef::Fenced => needed.iter_mut().for_each(|leu| *leu = true),
    }
    if !needed.contains(&true) {
        // An empty batch: the receiver answers it (with the same checks as any other).
        needed[usize::from(receiver)] = true;
    }
    needed
}

/// The points of a get's parts in the order the request asked for them: each id's place in
/// the request takes the next record found for that id (an id asked twice was answered
/// twice by its owner, and each answer keeps its place; an id not found has no record).
fn in_request_order(points: Vec<PointRecord>, ids: &[u64]) -> Vec<PointRecord> {
    let mut by_id: HashMap<u64, VecDeque<PointRecord>> = HashMap::new();
    for point in points {
        by_id.entry(point.id).or_default().push_back(point);
    }
    ids.iter()
        .filter_map(|id| by_id.get_mut(id).and_then(VecDeque::pop_front))
        .collect()
}

/// Gathers the answers of a scattered request into one.
#[derive(Debug)]
pub struct Merge {
    /// Search: the hits kept.
    k: usize,
    /// Get: the ids asked for, in request order (duplicates included).
    order: Option<Vec<u64>>,
    /// Upsert, delete: the ids in request order and their placement, to name the ids of a
    /// part that failed.
    write: Option<(Vec<u64>, Arc<Ring>)>,
    merged: Option<Response>,
    /// Every part that failed, with the LEU it came from.
    failures: Vec<(u16, Response)>,
}

impl Merge {
    /// A merge for `request`'s answers; `ring` places its points on the LEUs.
    pub fn new(request: &RequestRef<'_>, ring: &Arc<Ring>) -> Merge {
        let k = match request {
            RequestRef::Search(view) => view.body.k.to_native() as usize,
            _ => 0,
        };
        let order = match request {
            RequestRef::Get(get) => Some(get.ids.iter().map(|id| id.to_native()).collect()),
            _ => None,
        };
        let write = match request {
            RequestRef::Upsert(view) => Some(&view.body.ids),
            RequestRef::Delete(delete) => Some(&delete.ids),
            _ => None,
        }
        .map(|ids| {
            let ids = ids.iter().map(|id| id.to_native()).collect();
            (ids, Arc::clone(ring))
        });
        Merge {
            k,
            order,
            write,
            merged: None,
            failures: Vec::new(),
        }
    }

    /// Adds LEU `leu`'s answer.
    pub fn add(&mut self, leu: u16, answer: Response) {
        if matches!(
            answer,
            Response::Error(_) | Response::Throttled(_) | Response::Partial(_)
        ) {
            self.failures.push((leu, answer));
            return;
        }
        let Some(merged) = self.merged.take() else {
            self.merged = Some(answer);
            return;
        };
        self.merged = Some(combine(merged, answer, self.k));
    }

    /// The gathered answer.
    pub fn finish(mut self) -> Response {
        if !self.failures.is_empty() {
            return self.failed();
        }
        let Some(mut merged) = self.merged else {
            return Response::error(
                vortex_vbp::message::ErrorCode::Internal,
                "no LEU answered the request",
            );
        };
        match &mut merged {
            Response::Points(result) => {
                if let Some(order) = &self.order {
                    result.points = in_request_order(std::mem::take(&mut result.points), order);
                }
            }
            Response::Stats(stats) => stats.leus.sort_by_key(|entry| entry.leu),
            Response::FencedTables(fenced) => fenced.tables.sort_by(|a, b| {
                (a.leu, &a.collection, a.first).cmp(&(b.leu, &b.collection, b.first))
            }),
            _ => {}
        }
        merged
    }
}

impl Merge {
    /// The answer when some part failed: the failure that claims least (see the module's
    /// doc), or, for a write that other parts applied, `Partial`.
    fn failed(&mut self) -> Response {
        self.failures
            .sort_by_key(|(leu, answer)| (failure_rank(answer), *leu));
        let (worst_leu, worst) = self.failures.swap_remove(0);
        let applied = match self.merged.take() {
            Some(Response::Upserted(ack) | Response::Deleted(ack)) => ack.count,
            _ => return worst,
        };
        let Some((ids, ring)) = self.write.take() else {
            return worst;
        };
        let failed_leus: HashSet<u16> = self
            .failures
            .iter()
            .map(|(leu, _)| *leu)
            .chain(std::iter::once(worst_leu))
            .collect();
        let mut named = HashSet::new();
        let failed_ids = ids
            .into_iter()
            .filter(|&id| failed_leus.contains(&(ring.leu_of(id) as u16)) && named.insert(id))
            .collect();
        let (throttled, retry_after_ms, code, message) = match worst {
            Response::Throttled(body) => (true, body.retry_after_ms, 0, body.reason),
            Response::Error(body) => (false, 0, body.code, body.message),
            Response::Partial(body) => {
                (body.throttled, body.retry_after_ms, body.code, body.message)
            }
            other => (
                false,
                0,
                ErrorCode::Internal as u16,
                format!("a part answered {:?}", other.opcode()),
            ),
        };
        Response::Partial(PartialBody {
            applied,
            failed_ids,
            throttled,
            retry_after_ms,
            code,
            message,
        })
    }
}

/// Which failure a gathered answer gives first: an `Internal` error (its part may have been
/// applied in part), then another error, then THROTTLED (nothing of its part applied).
fn failure_rank(answer: &Response) -> u8 {
    match answer {
        Response::Error(body) if body.code == ErrorCode::Internal as u16 => 0,
        Response::Partial(body) if !body.throttled && body.code == ErrorCode::Internal as u16 => 0,
        Response::Error(_) | Response::Partial(_) => 1,
        _ => 2,
    }
}

/// Two LEUs' successful answers to the same request, as one.
fn combine(merged: Response, answer: Response, k: usize) -> Response {
    match (merged, answer) {
        (Response::Hits(mut ours), Response::Hits(theirs)) => {
            ours.hits.extend(theirs.hits);
            ours.hits
                .sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
            ours.hits.truncate(k);
            Response::Hits(SearchResult { hits: ours.hits })
        }
        (Response::Upserted(mut ours), Response::Upserted(theirs)) => {
            ours.count = ours.count.saturating_add(theirs.count);
            Response::Upserted(ours)
        }
        (Response::Deleted(mut ours), Response::Deleted(theirs)) => {
            ours.count = ours.count.saturating_add(theirs.count);
            Response::Deleted(ours)
        }
        (Response::Points(mut ours), Response::Points(theirs)) => {
            ours.points.extend(theirs.points);
            Response::Points(GetResult {
                points: ours.points,
            })
        }
        (Response::Counted(ours), Response::Counted(theirs)) => Response::Counted(CountResult {
            count: ours.count.saturating_add(theirs.count),
        }),
        (Response::Collection(ours), Response::Collection(theirs)) => {
            Response::Collection(CollectionInfo {
                spec: ours.spec,
                points: ours.points.saturating_add(theirs.points),
            })
        }
        (Response::Collections(ours), Response::Collections(theirs)) => {
            let mut collections = ours.collections;
            for info in theirs.collections {
                match collections
                    .iter_mut()
                    .find(|c| c.spec.name == info.spec.name)
                {
                    Some(known) => known.points = known.points.saturating_add(info.points),
                    None => collections.push(info),
                }
            }
            Response::Collections(CollectionList { collections })
        }
        (Response::Stats(mut ours), Response::Stats(theirs)) => {
            ours.leus.extend(theirs.leus);
            Response::Stats(ours)
        }
        (Response::FencedTables(mut ours), Response::FencedTables(theirs)) => {
            ours.tables.extend(theirs.tables);
            Response::FencedTables(ours)
        }
        // Created, Dropped, Pong: the same from every LEU. A mismatch (which no LEU sends)
        // keeps the first.
        (merged, _) => merged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vortex_vbp::codec::{FrameBytes, Request};
    use vortex_vbp::message::{
        ErrorCode, FencedResult, FencedTable, Get, Hit, LeuStats, PointRecord, Search, StatsResult,
        WriteAck,
    };
    use vortex_vbp::validator::LayoutValidator;

    fn framed(request: &Request) -> FrameBytes {
        request.encode(1).unwrap()
    }

    fn one_ring() -> Arc<Ring> {
        Arc::new(Ring::new(1, 1).unwrap())
    }

    fn hits(pairs: &[(u64, f32)]) -> Response {
        Response::Hits(SearchResult {
            hits: pairs
                .iter()
                .map(|&(id, distance)| Hit {
                    id,
                    distance,
                    payload: None,
                })
                .collect(),
        })
    }

    #[test]
    fn search_answers_merge_into_the_best_k_by_distance() {
        let frame = framed(&Request::Search(Search {
            collection: "c".into(),
            vector: vec![0.0; 4],
            k: 3,
            ef: 16,
            filter: None,
            with_payload: false,
        }));
        let validator = LayoutValidator::new(1 << 20);
        let (_, request) = validator.request(&frame).unwrap();
        let mut merge = Merge::new(&request, &one_ring());
        merge.add(1, hits(&[(10, 0.5), (11, 0.9)]));
        merge.add(0, hits(&[(1, 0.1), (2, 0.7), (3, 1.5)]));
        assert_eq!(merge.finish(), hits(&[(1, 0.1), (10, 0.5), (2, 0.7)]));
    }

    /// The ids of a get of `ids` gathered from `parts` (LEU, the ids it found, in its order).
    fn gathered_get(ids: Vec<u64>, parts: &[(u16, Vec<u64>)]) -> Vec<u64> {
        let frame = framed(&Request::Get(Get {
            collection: "c".into(),
            ids,
            with_vectors: false,
            with_payload: false,
        }));
        let validator = LayoutValidator::new(1 << 20);
        let (_, request) = validator.request(&frame).unwrap();
        let mut merge = Merge::new(&request, &one_ring());
        for (leu, found) in parts {
            let points = found
                .iter()
                .map(|&id| PointRecord {
                    id,
                    vector: Vec::new(),
                    payload: None,
                })
                .collect();
            merge.add(*leu, Response::Points(GetResult { points }));
        }
        let Response::Points(result) = merge.finish() else {
            panic!("not points");
        };
        result.points.iter().map(|p| p.id).collect()
    }

    #[test]
    fn get_answers_come_back_in_request_order() {
        let ids = gathered_get(vec![7, 3, 9, 1], &[(0, vec![3, 1]), (1, vec![9, 7])]);
        assert_eq!(ids, vec![7, 3, 9, 1]);
    }

    /// Issue #23 item 10: an id asked twice keeps both places (before, the second answer
    /// moved up beside the first); ids not found leave no hole.
    #[test]
    fn a_get_with_duplicate_ids_keeps_request_order() {
        // LEU 0 owns 3 (asked twice; 4 is not there), LEU 1 owns 7 and 9.
        let ids = gathered_get(
            vec![7, 3, 9, 7, 4, 3],
            &[(0, vec![3, 3]), (1, vec![7, 9, 7])],
        );
        assert_eq!(ids, vec![7, 3, 9, 7, 3]);
    }

    #[test]
    fn write_counts_sum_and_the_lowest_leus_failure_wins() {
        let frame = framed(&Request::Stats);
        let validator = LayoutValidator::new(1 << 20);
        let (_, request) = validator.request(&frame).unwrap();
        let mut merge = Merge::new(&request, &one_ring());
        merge.add(0, Response::Upserted(WriteAck { count: 3 }));
        merge.add(2, Response::Upserted(WriteAck { count: 4 }));
        assert_eq!(merge.finish(), Response::Upserted(WriteAck { count: 7 }));

        let mut merge = Merge::new(&request, &one_ring());
        merge.add(2, Response::error(ErrorCode::Internal, "two"));
        merge.add(0, Response::Upserted(WriteAck { count: 3 }));
        merge.add(1, Response::error(ErrorCode::Internal, "one"));
        assert_eq!(merge.finish(), Response::error(ErrorCode::Internal, "one"));

        let mut merge = Merge::new(&request, &one_ring());
        for leu in [1u16, 0] {
            merge.add(
                leu,
                Response::Stats(StatsResult {
                    leus: vec![LeuStats {
                        leu,
                        counters: Vec::new(),
                    }],
                }),
            );
        }
        let Response::Stats(stats) = merge.finish() else {
            panic!("not stats");
        };
        assert_eq!(stats.leus.iter().map(|l| l.leu).collect::<Vec<_>>(), [0, 1]);
    }

    /// Every LEU's fenced tables, together, by LEU, collection and first id; none from an
    /// LEU with none.
    #[test]
    fn fenced_tables_of_every_leu_are_listed_together_in_order() {
        let frame = framed(&Request::Fenced);
        let validator = LayoutValidator::new(1 << 20);
        let (_, request) = validator.request(&frame).unwrap();
        let table = |leu: u16, collection: &str, first: u64| FencedTable {
            leu,
            collection: collection.into(),
            first,
            last: first + 99,
            table: u64::from(leu) * 10 + first,
            detail: "vector region unit 3: checksum mismatch".into(),
        };
        let mut merge = Merge::new(&request, &Arc::new(Ring::new(3, 64).unwrap()));
        merge.add(
            2,
            Response::FencedTables(FencedResult {
                tables: vec![table(2, "b", 0), table(2, "a", 500)],
            }),
        );
        merge.add(
            1,
            Response::FencedTables(FencedResult { tables: Vec::new() }),
        );
        merge.add(
            0,
            Response::FencedTables(FencedResult {
                tables: vec![table(0, "a", 300), table(0, "a", 100)],
            }),
        );
        let Response::FencedTables(fenced) = merge.finish() else {
            panic!("not a fenced list");
        };
        let listed: Vec<(u16, &str, u64)> = fenced
            .tables
            .iter()
            .map(|t| (t.leu, t.collection.as_str(), t.first))
            .collect();
        assert_eq!(
            listed,
            [(0, "a", 100), (0, "a", 300), (2, "a", 500), (2, "b", 0)]
        );
    }

    /// The answer to a write over 3 LEUs whose parts answered `answers` (LEU, answer), with
    /// the ids each LEU owns.
    fn gathered_write(delete: bool, answers: Vec<(u16, Response)>) -> (Response, [Vec<u64>; 3]) {
        let ring = Arc::new(Ring::new(3, 64).unwrap());
        let ids: Vec<u64> = (0..40).chain([5, 5]).collect();
        let request = if delete {
            Request::Delete(vortex_vbp::message::Delete {
                collection: "c".into(),
                ids: ids.clone(),
            })
        } else {
            Request::Upsert(vortex_vbp::message::Upsert {
                collection: "c".into(),
                dimension: 1,
                ids: ids.clone(),
                vectors: vec![0.5; ids.len()],
                payloads: Vec::new(),
            })
        };
        let frame = framed(&request);
        let validator = LayoutValidator::new(1 << 20);
        let (_, request) = validator.request(&frame).unwrap();
        let mut merge = Merge::new(&request, &ring);
        for (leu, answer) in answers {
            merge.add(leu, answer);
        }
        let mut owned: [Vec<u64>; 3] = Default::default();
        for id in 0..40 {
            owned[ring.leu_of(id)].push(id);
        }
        (merge.finish(), owned)
    }

    fn throttled(reason: &str) -> Response {
        Response::Throttled(vortex_vbp::message::ThrottledBody {
            retry_after_ms: 5,
            reason: reason.into(),
        })
    }

    /// Issue #23 item 8: a write applied on some LEUs and not on others says so, naming
    /// the ids of the parts that failed (each once, in request order) and what the others
    /// applied; the failure it gives claims the least.
    #[test]
    fn a_write_that_failed_on_some_leus_is_answered_partial_naming_their_ids() {
        let (answer, owned) = gathered_write(
            false,
            vec![
                (0, Response::Upserted(WriteAck { count: 9 })),
                (2, throttled("memtable full")),
                (1, Response::Upserted(WriteAck { count: 11 })),
            ],
        );
        let Response::Partial(body) = answer else {
            panic!("not partial: {answer:?}");
        };
        assert_eq!(body.applied, 20);
        assert_eq!(body.failed_ids, owned[2]);
        assert!(body.throttled && body.retry_after_ms == 5, "{body:?}");
        assert_eq!(body.message, "memtable full");

        // Two parts failed: an Internal error (its part may be applied in part) is the
        // cause given, whatever the LEUs' order; both parts' ids are named.
        let (answer, owned) = gathered_write(
            true,
            vec![
                (0, throttled("ring full")),
                (1, Response::Deleted(WriteAck { count: 4 })),
                (2, Response::error(ErrorCode::Internal, "disk")),
            ],
        );
        let Response::Partial(body) = answer else {
            panic!("not partial: {answer:?}");
        };
        assert_eq!(body.applied, 4);
        let mut expected: Vec<u64> = owned[0].iter().chain(&owned[2]).copied().collect();
        expected.sort_unstable();
        assert_eq!(
            body.failed_ids, expected,
            "request order: 0..40 then 5 again"
        );
        assert!(!body.throttled);
        assert_eq!(body.code, ErrorCode::Internal as u16);
        assert_eq!(body.message, "disk");
    }

    /// When every part failed nothing was applied: the answer is a plain failure, the one
    /// that claims least, not the first to arrive.
    #[test]
    fn a_write_that_failed_everywhere_gets_the_failure_that_claims_least() {
        let (answer, _) = gathered_write(
            false,
            vec![
                (0, throttled("memtable full")),
                (2, Response::error(ErrorCode::CollectionNotFound, "gone")),
                (1, throttled("ring full")),
            ],
        );
        assert_eq!(
            answer,
            Response::error(ErrorCode::CollectionNotFound, "gone")
        );
        let (answer, _) = gathered_write(
            false,
            vec![
                (1, throttled("b")),
                (0, throttled("a")),
                (2, throttled("c")),
            ],
        );
        assert_eq!(answer, throttled("a"));
    }

    #[test]
    fn writes_go_to_the_owners_of_their_ids_and_searches_everywhere() {
        let ring = Ring::new(4, 4096).unwrap();
        let ids: Vec<u64> = (0..64).collect();
        let owners: Vec<bool> = (0..4)
            .map(|leu| ids.iter().any(|&id| ring.leu_of(id) == leu))
            .collect();
        let frame = framed(&Request::Delete(vortex_vbp::message::Delete {
            collection: "c".into(),
            ids: ids.clone(),
        }));
        let validator = LayoutValidator::new(1 << 20);
        let (_, request) = validator.request(&frame).unwrap();
        assert_eq!(participants(&request, &ring, 3), owners);

        let one = framed(&Request::Delete(vortex_vbp::message::Delete {
            collection: "c".into(),
            ids: vec![5],
        }));
        let (_, request) = validator.request(&one).unwrap();
        let needed = participants(&request, &ring, 0);
        assert_eq!(needed.iter().filter(|&&n| n).count(), 1);
        assert!(needed[ring.leu_of(5)]);

        let ping = framed(&Request::Ping(vortex_vbp::message::Ping { nonce: 1 }));
        let (_, request) = validator.request(&ping).unwrap();
        assert_eq!(
            participants(&request, &ring, 2),
            [false, false, true, false]
        );
        let stats = framed(&Request::Stats);
        let (_, request) = validator.request(&stats).unwrap();
        assert_eq!(participants(&request, &ring, 2), [true; 4]);
    }
}
