//! VBP's write limits hold for every LEU's part of a request (issue #23 item 10): a shard
//! with its default options admits, in one batch, the largest upsert the validator lets
//! through: `WRITE_POINTS_MAX` points in a body just under `WRITE_BODY_BYTES_MAX`, with
//! payloads, and a delete of `WRITE_POINTS_MAX` ids. So a client that obeys the per-request
//! limits is never told to split a batch because of how its ids fall on the LEUs.

use vortex_shard::{Shard, ShardOptions};
use vortex_vbp::codec::Request;
use vortex_vbp::header::HEADER_BYTES;
use vortex_vbp::message::{
    CollectionSpec, Metric, Payload, PayloadField, PayloadValue, Upsert, VectorType,
};
use vortex_vbp::validator::{LayoutValidator, WRITE_BODY_BYTES_MAX, WRITE_POINTS_MAX};

#[test]
fn the_largest_write_vbp_accepts_fits_one_shard_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    // The widest vectors that, with a small payload per point, keep the body in the limit.
    let payload = Payload {
        fields: vec![PayloadField {
            key: "tag".into(),
            value: PayloadValue::Str("x".repeat(16)),
        }],
    };
    let upsert_of = |dimension: usize| Upsert {
        collection: "c".into(),
        dimension: dimension as u32,
        ids: (0..WRITE_POINTS_MAX as u64).collect(),
        vectors: vec![0.25; WRITE_POINTS_MAX * dimension],
        payloads: vec![payload.clone(); WRITE_POINTS_MAX],
    };
    let body =
        |upsert: &Upsert| Request::Upsert(upsert.clone()).encode(1).unwrap().len() - HEADER_BYTES;
    let mut dimension = 1;
    while body(&upsert_of(dimension + 1)) <= WRITE_BODY_BYTES_MAX {
        dimension += 1;
    }
    let upsert = upsert_of(dimension);
    let bytes = body(&upsert);
    assert!(
        bytes > WRITE_BODY_BYTES_MAX - WRITE_POINTS_MAX * 8,
        "{bytes}"
    );
    // The validator takes it...
    let frame = Request::Upsert(upsert.clone()).encode(1).unwrap();
    LayoutValidator::new(16 << 20).request(&frame).unwrap();
    // ...and the shard admits it whole, then a delete of as many ids.
    shard
        .create_collection(CollectionSpec {
            name: "c".into(),
            dimension: dimension as u32,
            metric: Metric::L2,
            m: 8,
            ef_construction: 32,
            vector_type: VectorType::F32,
        })
        .unwrap();
    shard
        .upsert("c", &upsert.ids, &upsert.vectors, &upsert.payloads)
        .unwrap();
    shard.delete("c", &upsert.ids).unwrap();
    shard.sync().unwrap();
    println!(
        "{WRITE_POINTS_MAX} points of {dimension} floats with payloads: {bytes} bytes, admitted"
    );
    shard.close().unwrap();
}
