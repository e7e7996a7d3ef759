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
//! - **create, drop** go to every LEU; **stats** gathers one entry per LEU.
//!
//! If any part fails, the gathered answer is the first failure (the failure of the lowest
//! LEU among those that failed, so the answer does not depend on timing). A write may then
//! have been applied on some LEUs and not others: upserts and deletes are idempotent, so the
//! client retries the whole batch.

use crate::routing::Ring;
use std::collections::{HashMap, VecDeque};
use vortex_vbp::codec::Response;
use vortex_vbp::message::{
    CollectionInfo, CollectionList, CountResult, GetResult, PointRecord, SearchResult,
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
        | RequestRef::Stats => needed.iter_mut().for_each(|leu| *leu = true),
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
    merged: Option<Response>,
    /// The first failure, with the LEU it came from.
    failure: Option<(u16, Response)>,
}

impl Merge {
    /// A merge for `request`'s answers.
    pub fn new(request: &RequestRef<'_>) -> Merge {
        let k = match request {
            RequestRef::Search(view) => view.body.k.to_native() as usize,
            _ => 0,
        };
        let order = match request {
            RequestRef::Get(get) => Some(get.ids.iter().map(|id| id.to_native()).collect()),
            _ => None,
        };
        Merge {
            k,
            order,
            merged: None,
            failure: None,
        }
    }

    /// Adds LEU `leu`'s answer.
    pub fn add(&mut self, leu: u16, answer: Response) {
        if matches!(answer, Response::Error(_) | Response::Throttled(_)) {
            if self.failure.as_ref().is_none_or(|(first, _)| leu < *first) {
                self.failure = Some((leu, answer));
            }
            return;
        }
        let Some(merged) = self.merged.take() else {
            self.merged = Some(answer);
            return;
        };
        self.merged = Some(combine(merged, answer, self.k));
    }

    /// The gathered answer.
    pub fn finish(self) -> Response {
        if let Some((_, failure)) = self.failure {
            return failure;
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
            _ => {}
        }
        merged
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
        ErrorCode, Get, Hit, LeuStats, PointRecord, Search, StatsResult, WriteAck,
    };
    use vortex_vbp::validator::LayoutValidator;

    fn framed(request: &Request) -> FrameBytes {
        request.encode(1).unwrap()
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
        let mut merge = Merge::new(&request);
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
        let mut merge = Merge::new(&request);
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
        let mut merge = Merge::new(&request);
        merge.add(0, Response::Upserted(WriteAck { count: 3 }));
        merge.add(2, Response::Upserted(WriteAck { count: 4 }));
        assert_eq!(merge.finish(), Response::Upserted(WriteAck { count: 7 }));

        let mut merge = Merge::new(&request);
        merge.add(2, Response::error(ErrorCode::Internal, "two"));
        merge.add(0, Response::Upserted(WriteAck { count: 3 }));
        merge.add(1, Response::error(ErrorCode::Internal, "one"));
        assert_eq!(merge.finish(), Response::error(ErrorCode::Internal, "one"));

        let mut merge = Merge::new(&request);
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
