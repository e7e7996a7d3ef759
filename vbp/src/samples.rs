//! Sample messages for every opcode: used by the tests, the benchmarks, the fuzz corpus
//! seeds and the golden bytes in docs/VBP.md.

use crate::codec::{Request, Response};
use crate::message::*;

/// A `dimension`-d query vector with deterministic, varied values.
pub fn vector(dimension: usize, seed: u32) -> Vec<f32> {
    (0..dimension)
        .map(|index| {
            ((index as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed)
                % 2000) as f32
                / 1000.0
                - 1.0
        })
        .collect()
}

/// A filter using every node kind: `(genre in ["jazz","blues"] and year >= 1960) or not live`.
pub fn filter() -> Filter {
    Filter {
        nodes: vec![
            FilterNode::In {
                field: "genre".to_owned(),
                values: vec![
                    PayloadValue::Str("jazz".to_owned()),
                    PayloadValue::Str("blues".to_owned()),
                ],
            },
            FilterNode::Range {
                field: "year".to_owned(),
                min: Some(1960.0),
                max: None,
                min_inclusive: true,
                max_inclusive: false,
            },
            FilterNode::And(vec![0, 1]),
            FilterNode::Eq {
                field: "live".to_owned(),
                value: PayloadValue::Bool(true),
            },
            FilterNode::Not(3),
            FilterNode::Or(vec![2, 4]),
        ],
    }
}

/// A payload using every value kind.
pub fn payload(seed: i64) -> Payload {
    Payload {
        fields: vec![
            PayloadField {
                key: "year".to_owned(),
                value: PayloadValue::Int(1950 + seed),
            },
            PayloadField {
                key: "score".to_owned(),
                value: PayloadValue::Float(0.5 + seed as f64),
            },
            PayloadField {
                key: "genre".to_owned(),
                value: PayloadValue::Str("jazz".to_owned()),
            },
            PayloadField {
                key: "live".to_owned(),
                value: PayloadValue::Bool(seed % 2 == 0),
            },
            PayloadField {
                key: "tags".to_owned(),
                value: PayloadValue::StrList(vec!["a".to_owned(), "b".to_owned()]),
            },
        ],
    }
}

/// A search for `dimension`-d vectors with k = 10 and ef = 64.
pub fn search(dimension: usize, with_filter: bool) -> Search {
    Search {
        collection: "docs".to_owned(),
        vector: vector(dimension, 7),
        k: 10,
        ef: 64,
        filter: with_filter.then(filter),
        with_payload: false,
    }
}

/// One request of every opcode.
pub fn requests() -> Vec<Request> {
    vec![
        Request::Ping(Ping { nonce: 42 }),
        Request::CreateCollection(CollectionSpec {
            name: "docs".to_owned(),
            dimension: 4,
            metric: Metric::Cosine,
            m: 16,
            ef_construction: 200,
            vector_type: VectorType::F32,
        }),
        Request::DropCollection(CollectionRef {
            name: "docs".to_owned(),
        }),
        Request::ListCollections,
        Request::DescribeCollection(CollectionRef {
            name: "docs".to_owned(),
        }),
        Request::Upsert(Upsert {
            collection: "docs".to_owned(),
            dimension: 4,
            ids: vec![1, 2, 3],
            vectors: vector(12, 1),
            payloads: vec![payload(1), payload(2), payload(3)],
        }),
        Request::Delete(Delete {
            collection: "docs".to_owned(),
            ids: vec![2],
        }),
        Request::Get(Get {
            collection: "docs".to_owned(),
            ids: vec![1, 3],
            with_vectors: true,
            with_payload: true,
        }),
        Request::Search(search(4, true)),
        Request::Count(Count {
            collection: "docs".to_owned(),
            filter: Some(filter()),
        }),
        Request::Stats,
        Request::Scrub,
        Request::Fenced,
    ]
}

/// One response of every kind.
pub fn responses() -> Vec<Response> {
    let spec = match &requests()[1] {
        Request::CreateCollection(spec) => spec.clone(),
        _ => unreachable!("the second sample is a create"),
    };
    vec![
        Response::Pong(Ping { nonce: 42 }),
        Response::Created,
        Response::Dropped,
        Response::Collections(CollectionList {
            collections: vec![CollectionInfo {
                spec: spec.clone(),
                points: 3,
            }],
        }),
        Response::Collection(CollectionInfo { spec, points: 3 }),
        Response::Upserted(WriteAck { count: 3 }),
        Response::Deleted(WriteAck { count: 1 }),
        Response::Points(GetResult {
            points: vec![PointRecord {
                id: 1,
                vector: vector(4, 1),
                payload: Some(payload(1)),
            }],
        }),
        Response::Hits(SearchResult {
            hits: vec![
                Hit {
                    id: 3,
                    distance: 0.25,
                    payload: None,
                },
                Hit {
                    id: 1,
                    distance: 0.5,
                    payload: Some(payload(1)),
                },
            ],
        }),
        Response::Counted(CountResult { count: 2 }),
        Response::Stats(StatsResult {
            leus: vec![LeuStats {
                leu: 0,
                counters: vec![Counter {
                    name: "connections".to_owned(),
                    value: 1,
                }],
            }],
        }),
        Response::Scrubbing,
        Response::FencedTables(FencedResult {
            tables: vec![FencedTable {
                leu: 1,
                collection: "docs".into(),
                first: 4096,
                last: 8191,
                table: 17,
                detail: "data block at 12288: checksum mismatch".into(),
            }],
        }),
        Response::Partial(PartialBody {
            applied: 2,
            failed_ids: vec![7, 3],
            throttled: true,
            retry_after_ms: 5,
            code: 0,
            message: "the memtable is full until a flush completes".to_owned(),
        }),
        Response::error(ErrorCode::CollectionNotFound, "no collection `docs`"),
        Response::Throttled(ThrottledBody {
            retry_after_ms: 5,
            reason: "buffer pool exhausted".to_owned(),
        }),
    ]
}
