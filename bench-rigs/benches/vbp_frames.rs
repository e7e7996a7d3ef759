//! VBP frame access against a copying serde codec (issue #3's benchmark).
//!
//! The server's cost of taking a request off the wire: for VBP, `LayoutValidator::request`
//! on a received frame (header checks, CRC32C over the whole frame, rkyv's checked access,
//! the field rules, every float checked finite) and then reading the query vector in place;
//! for the copying codec, `bincode::deserialize` of the same message into owned Rust types
//! (a `String` and a `Vec<f32>` allocated and filled), with no checksum and no field rules.
//! Each touches every float once: the validator checks each is finite, bincode copies each.
//! The result (the in-place slice, the decoded struct) goes to `black_box`, and the decoded
//! struct is dropped inside the measurement, since freeing is part of a copying codec's cost.
//!
//! Criterion times each routine; then `paired` lines give the ratio bincode / VBP (how many
//! times faster VBP is), measured in alternating batches so that the machine's drift cancels,
//! and the same for the frame checksum (fused kernel against the `crc32c` crate).
//!
//! Run: `cargo bench -p vortex-bench --bench vbp_frames`. Results: bench-rigs/README.md.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use vortex_vbp::codec::{FrameBytes, Request};
use vortex_vbp::message::Search;
use vortex_vbp::samples;
use vortex_vbp::validator::{LayoutValidator, RequestRef};

/// The same message as `vortex_vbp::message::Search` without a filter, for serde.
#[derive(Serialize, Deserialize)]
struct SerdeSearch {
    collection: String,
    vector: Vec<f32>,
    k: u32,
    ef: u32,
    filter: Option<Vec<u32>>,
    with_payload: bool,
}

fn search(dimension: usize) -> Search {
    samples::search(dimension, false)
}

/// The `dimension`-d sample search as a VBP frame and as bincode bytes.
fn inputs(dimension: usize) -> (FrameBytes, Vec<u8>) {
    let message = search(dimension);
    let frame = Request::Search(message.clone())
        .encode(1)
        .expect("the sample encodes");
    (frame, bincode_bytes(&message))
}

/// The same search, bincode-encoded (it carries no filter).
fn bincode_bytes(message: &Search) -> Vec<u8> {
    bincode::serialize(&SerdeSearch {
        collection: message.collection.clone(),
        vector: message.vector.clone(),
        k: message.k,
        ef: message.ef,
        filter: None,
        with_payload: message.with_payload,
    })
    .expect("bincode encodes")
}

/// The query vector, read in place: the validator has already read every float once (the
/// finiteness check), so the vector is returned, not summed again.
fn vbp_access<'a>(validator: &LayoutValidator, frame: &'a [u8]) -> &'a [f32] {
    match validator.request(frame) {
        Ok((_, RequestRef::Search(view))) => view.vector,
        _ => panic!("the benchmark frame must validate as a search"),
    }
}

/// The decoded message: every float has been copied once into a new `Vec`.
fn bincode_decode(bytes: &[u8]) -> SerdeSearch {
    bincode::deserialize(bytes).expect("bincode decodes its own bytes")
}

fn bench_search_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("search_frame");
    let validator = LayoutValidator::default();
    for dimension in [128usize, 768, 1536] {
        let (frame, bincode_bytes) = inputs(dimension);
        assert_eq!(
            vbp_access(&validator, &frame),
            &bincode_decode(&bincode_bytes).vector[..],
            "both paths must read the same vector"
        );
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("vbp_validate_access", dimension),
            &frame,
            |b, frame| b.iter(|| vbp_access(&validator, black_box(frame))),
        );
        group.bench_with_input(
            BenchmarkId::new("bincode_decode", dimension),
            &bincode_bytes,
            |b, bytes| b.iter(|| bincode_decode(black_box(bytes))),
        );
    }
    // A 768-d search with the six-node sample filter: what filter validation adds.
    let filtered = Request::Search(samples::search(768, true))
        .encode(2)
        .expect("the sample encodes");
    group.bench_function("vbp_validate_access_filtered/768", |b| {
        b.iter(|| vbp_access(&validator, black_box(&filtered)))
    });
    group.finish();

    // Where the time of the 768-d frame goes: the two passes over every byte.
    let mut parts = c.benchmark_group("search_frame_parts");
    let frame = Request::Search(search(768))
        .encode(1)
        .expect("the sample encodes");
    parts.bench_function("frame_checksum/768", |b| {
        b.iter(|| vortex_vbp::header::frame_checksum(black_box(&frame)))
    });
    let vector = search(768).vector;
    parts.bench_function("all_finite/768", |b| {
        b.iter(|| vortex_vbp::simd::all_finite(black_box(&vector)))
    });
    parts.finish();
}

/// Time per call of `routine` over `iterations` calls, in nanoseconds.
fn batch_ns<T>(iterations: u32, mut routine: impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(routine());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

/// Paired comparison: short batches of the two routines alternate, and the ratio is taken
/// per pair, so drifts of this shared machine's speed (which move criterion's sequential
/// figures by ±30 % from run to run) cancel out. Prints medians and the ratio's spread.
fn paired(name: &str, mut ours: impl FnMut() -> f32, mut theirs: impl FnMut() -> f32) {
    const PAIRS: usize = 301;
    const BATCH: u32 = 2000;
    let mut ours_ns = Vec::with_capacity(PAIRS);
    let mut theirs_ns = Vec::with_capacity(PAIRS);
    let mut ratios = Vec::with_capacity(PAIRS);
    for _ in 0..PAIRS {
        let a = batch_ns(BATCH, &mut ours);
        let b = batch_ns(BATCH, &mut theirs);
        ours_ns.push(a);
        theirs_ns.push(b);
        ratios.push(b / a);
    }
    let median = |values: &mut Vec<f64>, quantile: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * quantile) as usize]
    };
    println!(
        "paired {name}: ours {:.0} ns, theirs {:.0} ns (medians); theirs/ours {:.2} (p10 {:.2}, p90 {:.2})",
        median(&mut ours_ns, 0.5),
        median(&mut theirs_ns, 0.5),
        median(&mut ratios, 0.5),
        median(&mut ratios, 0.1),
        median(&mut ratios, 0.9),
    );
}

fn bench_paired(_: &mut Criterion) {
    let validator = LayoutValidator::default();
    for dimension in [128usize, 768, 1536] {
        let (frame, bincode_bytes) = inputs(dimension);
        paired(
            &format!("search_frame/{dimension} vbp_validate_access vs bincode_decode"),
            || vbp_access(&validator, black_box(&frame))[0],
            || bincode_decode(black_box(&bincode_bytes)).vector[0],
        );
        paired(
            &format!("frame_checksum/{dimension} (vbp checksum dispatch) vs crc32c crate"),
            || vortex_vbp::header::frame_checksum(black_box(&frame)) as f32,
            || vortex_vbp::checksum::crc32c_append_portable(0, black_box(&frame)) as f32,
        );
    }
    // An upsert of 32 points of 768 floats (98 KiB): the checksum on the ingest path.
    let upsert = Request::Upsert(vortex_vbp::message::Upsert {
        collection: "docs".to_owned(),
        dimension: 768,
        ids: (0..32).collect(),
        vectors: samples::vector(32 * 768, 3),
        payloads: Vec::new(),
    })
    .encode(3)
    .expect("the upsert encodes");
    paired(
        "frame_checksum/upsert-32x768 (vbp checksum dispatch) vs crc32c crate",
        || vortex_vbp::header::frame_checksum(black_box(&upsert)) as f32,
        || vortex_vbp::checksum::crc32c_append_portable(0, black_box(&upsert)) as f32,
    );
}

criterion_group!(benches, bench_search_frames, bench_paired);
criterion_main!(benches);
