//! Dispatch: requests encoded as a client sends them, validated in place as the reactor
//! will, run on a real shard; every answer is checked, and encodes into a frame a client
//! accepts.

use std::time::Duration;
use vortex_dataplane::dispatch::{dispatch, Outcome};
use vortex_shard::{Shard, ShardOptions};
use vortex_vbp::codec::{Request, Response};
use vortex_vbp::message::{
    CollectionRef, CollectionSpec, Count, Delete, ErrorCode, Get, Metric, Ping, Search, Upsert,
    VectorType,
};
use vortex_vbp::samples;
use vortex_vbp::validator::LayoutValidator;

/// Sends `request` through the frame codec and the validator to the dispatcher; waits for
/// durability when the answer does; checks the answer survives the trip back to a client.
fn call(shard: &mut Shard, request: &Request) -> Response {
    let validator = LayoutValidator::default();
    let frame = request.encode(7).expect("a request encodes");
    let (_, view) = validator.request(&frame).expect("a valid request");
    let response = match dispatch(shard, 3, view) {
        Outcome::Ready(response) => response,
        Outcome::AfterDurable { sequence, response } => {
            while shard.poll(Some(Duration::from_millis(5))).unwrap() < sequence {}
            response
        }
    };
    let bytes = response.encode(7).expect("a response encodes");
    let (header, decoded) = validator.response(&bytes).expect("a client accepts it");
    assert_eq!(header.request_id, 7);
    assert_eq!(decoded, response);
    response
}

fn expect_error(response: Response, code: ErrorCode, needle: &str) {
    match response {
        Response::Error(body) => {
            assert_eq!(body.code, code as u16, "{}", body.message);
            assert!(body.message.contains(needle), "{}", body.message);
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn spec(name: &str, dimension: u32) -> CollectionSpec {
    CollectionSpec {
        name: name.into(),
        dimension,
        metric: Metric::L2,
        m: 8,
        ef_construction: 64,
        vector_type: VectorType::F32,
    }
}

fn upsert(name: &str, dimension: u32, ids: &[u64]) -> Request {
    Request::Upsert(Upsert {
        collection: name.into(),
        dimension,
        ids: ids.to_vec(),
        vectors: ids
            .iter()
            .flat_map(|&id| (0..dimension).map(move |d| id as f32 + d as f32 * 0.01))
            .collect(),
        payloads: ids.iter().map(|&id| samples::payload(id as i64)).collect(),
    })
}

#[test]
fn every_request_gets_its_answer_from_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert_eq!(
        call(&mut shard, &Request::Ping(Ping { nonce: 99 })),
        Response::Pong(Ping { nonce: 99 })
    );
    let docs = || CollectionRef {
        name: "docs".into(),
    };
    assert_eq!(
        call(&mut shard, &Request::CreateCollection(spec("docs", 4))),
        Response::Created
    );
    expect_error(
        call(&mut shard, &Request::CreateCollection(spec("docs", 4))),
        ErrorCode::CollectionExists,
        "docs",
    );
    expect_error(
        call(&mut shard, &upsert("docs", 5, &[1])),
        ErrorCode::DimensionMismatch,
        "dimension 4",
    );
    expect_error(
        call(&mut shard, &upsert("nope", 4, &[1])),
        ErrorCode::CollectionNotFound,
        "nope",
    );
    let ids: Vec<u64> = (1..=50).collect();
    match call(&mut shard, &upsert("docs", 4, &ids)) {
        Response::Upserted(ack) => assert_eq!(ack.count, 50),
        other => panic!("{other:?}"),
    }
    // Acknowledged means durable and visible.
    let got = call(
        &mut shard,
        &Request::Get(Get {
            collection: "docs".into(),
            ids: vec![7, 1000],
            with_vectors: true,
            with_payload: true,
        }),
    );
    let Response::Points(points) = got else {
        panic!("{got:?}")
    };
    assert_eq!(points.points.len(), 1);
    assert_eq!(points.points[0].vector, vec![7.0, 7.01, 7.02, 7.03]);
    assert_eq!(points.points[0].payload, Some(samples::payload(7)));

    let search = |vector: Vec<f32>| {
        Request::Search(Search {
            collection: "docs".into(),
            vector,
            k: 3,
            ef: 0,
            filter: None,
            with_payload: false,
        })
    };
    let hits = call(&mut shard, &search(vec![20.0, 20.01, 20.02, 20.03]));
    let Response::Hits(hits) = hits else {
        panic!("{hits:?}")
    };
    let found: Vec<u64> = hits.hits.iter().map(|hit| hit.id).collect();
    assert_eq!(found[0], 20);
    assert_eq!(found.len(), 3);
    expect_error(
        call(&mut shard, &search(vec![1.0; 3])),
        ErrorCode::DimensionMismatch,
        "the query has 3 components; the collection's dimension is 4",
    );

    match call(
        &mut shard,
        &Request::Delete(Delete {
            collection: "docs".into(),
            ids: vec![20, 21],
        }),
    ) {
        Response::Deleted(ack) => assert_eq!(ack.count, 2),
        other => panic!("{other:?}"),
    }
    let count = Request::Count(Count {
        collection: "docs".into(),
        filter: None,
    });
    assert_eq!(
        call(&mut shard, &count),
        Response::Counted(vortex_vbp::message::CountResult { count: 48 })
    );
    expect_error(
        call(
            &mut shard,
            &Request::Count(Count {
                collection: "docs".into(),
                filter: Some(samples::filter()),
            }),
        ),
        ErrorCode::InvalidArgument,
        "not supported yet",
    );
    match call(&mut shard, &Request::DescribeCollection(docs())) {
        Response::Collection(info) => assert_eq!((info.spec.dimension, info.points), (4, 48)),
        other => panic!("{other:?}"),
    }
    match call(&mut shard, &Request::ListCollections) {
        Response::Collections(list) => assert_eq!(list.collections.len(), 1),
        other => panic!("{other:?}"),
    }
    match call(&mut shard, &Request::Stats) {
        Response::Stats(stats) => {
            assert_eq!(stats.leus.len(), 1);
            assert_eq!(stats.leus[0].leu, 3);
            let collections = stats.leus[0]
                .counters
                .iter()
                .find(|c| c.name == "collections")
                .map(|c| c.value);
            assert_eq!(collections, Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        call(&mut shard, &Request::DropCollection(docs())),
        Response::Dropped
    );
    expect_error(
        call(&mut shard, &Request::DescribeCollection(docs())),
        ErrorCode::CollectionNotFound,
        "docs",
    );
}

#[test]
fn an_overloaded_shard_answers_throttled_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ShardOptions::default();
    options.store.wal.batch_bytes_max = 256 << 10;
    options.store.wal.record_bytes_max = 64 << 10;
    let (mut shard, _) = Shard::open(dir.path(), options).unwrap();
    call(&mut shard, &Request::CreateCollection(spec("big", 256)));
    let validator = LayoutValidator::default();
    // Batches sent without waiting for their acknowledgements fill the WAL's open batch.
    let mut throttled = None;
    for round in 0..50u64 {
        let ids: Vec<u64> = (round * 100..round * 100 + 100).collect();
        let frame = upsert("big", 256, &ids).encode(round).unwrap();
        let (_, view) = validator.request(&frame).unwrap();
        if let Outcome::Ready(Response::Throttled(body)) = dispatch(&mut shard, 0, view) {
            throttled = Some((round, body));
            break;
        }
    }
    let (round, body) = throttled.expect("never THROTTLED");
    assert!(body.retry_after_ms > 0 && !body.reason.is_empty());
    shard.sync().unwrap();
    let count = call(
        &mut shard,
        &Request::Count(Count {
            collection: "big".into(),
            filter: None,
        }),
    );
    assert_eq!(
        count,
        Response::Counted(vortex_vbp::message::CountResult { count: round * 100 }),
        "the refused batch wrote nothing"
    );
}
