//! Frames end to end: every opcode round-trips through encode → validate → decode; every
//! truncation and every single-bit flip of a valid frame is refused; hostile bodies are
//! refused with typed errors and never panic.

use proptest::prelude::*;
use vortex_vbp::codec::{Request, Response};
use vortex_vbp::header::{FrameHeader, Opcode, FLAG_FAN_OUT, FLAG_RESPONSE, HEADER_BYTES};
use vortex_vbp::message::*;
use vortex_vbp::samples;
use vortex_vbp::validator::{FrameError, LayoutValidator, RequestRef};

fn validator() -> LayoutValidator {
    LayoutValidator::default()
}

fn decode_request(frame: &[u8]) -> Result<Request, FrameError> {
    let (_, request) = validator().request(frame)?;
    request.to_request()
}

#[test]
fn every_sample_request_round_trips() {
    for (index, request) in samples::requests().into_iter().enumerate() {
        let frame = request.encode(index as u64 + 100).unwrap();
        assert_eq!(frame.len() % 16, 0);
        let (header, _) = validator().request(&frame).unwrap();
        assert_eq!(header.request_id, index as u64 + 100);
        assert_eq!(header.opcode, request.opcode() as u16);
        assert!(!header.is_response());
        assert_eq!(decode_request(&frame).unwrap(), request);
    }
}

#[test]
fn every_sample_response_round_trips() {
    for (index, response) in samples::responses().into_iter().enumerate() {
        let frame = response.encode(index as u64).unwrap();
        let (header, decoded) = validator().response(&frame).unwrap();
        assert_eq!(header.request_id, index as u64);
        assert!(header.is_response());
        assert_eq!(decoded, response);
    }
}

#[test]
fn vectors_are_read_in_place() {
    let request = Request::Search(samples::search(768, false));
    let frame = request.encode(1).unwrap();
    let (_, body) = validator().request(&frame).unwrap();
    let RequestRef::Search(view) = body else {
        panic!("not a search");
    };
    let range = frame.as_ptr_range();
    let vector_range = view.vector.as_ptr_range();
    assert!(range.start <= vector_range.start.cast() && vector_range.end.cast() <= range.end);
    assert_eq!(view.vector, &samples::vector(768, 7)[..]);
    assert_eq!(view.vector_for(768).unwrap().len(), 768);
    assert_eq!(
        view.vector_for(128).unwrap_err(),
        FrameError::DimensionMismatch {
            expected: 128,
            actual: 768
        }
    );
}

#[test]
fn upsert_points_are_columnar_views() {
    let frame = samples::requests()[5].encode(1).unwrap();
    let (_, body) = validator().request(&frame).unwrap();
    let RequestRef::Upsert(view) = body else {
        panic!("not an upsert");
    };
    assert_eq!(view.len(), 3);
    let (id, vector) = view.point(2).unwrap();
    assert_eq!(id, 3);
    assert_eq!(vector, &samples::vector(12, 1)[8..12]);
    assert!(view.point(3).is_none());
    assert!(view.expect_dimension(4).is_ok());
    assert!(matches!(
        view.expect_dimension(5),
        Err(FrameError::DimensionMismatch { .. })
    ));
}

#[test]
fn every_truncation_is_refused() {
    for request in samples::requests() {
        let frame = request.encode(9).unwrap();
        for length in 0..frame.len() {
            let error = validator().request(&frame[..length]).unwrap_err();
            assert!(
                matches!(error, FrameError::Truncated { .. }),
                "{:?} cut to {length}: {error:?}",
                request.opcode()
            );
        }
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    let mut frames: Vec<_> = samples::requests()
        .into_iter()
        .map(|request| request.encode(77).unwrap())
        .collect();
    frames.push(
        Request::Search(samples::search(768, true))
            .encode(78)
            .unwrap(),
    );
    for frame in &frames {
        let mut flipped = frame.clone();
        for bit in 0..frame.len() * 8 {
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = validator().request(&flipped);
            assert!(result.is_err(), "bit {bit} flipped was accepted");
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
        assert!(validator().request(&flipped).is_ok());
    }
}

#[test]
fn extra_bytes_after_a_frame_are_refused() {
    let mut frame = samples::requests()[0].encode(1).unwrap();
    frame.extend_from_slice(&[0u8; 16]);
    assert!(matches!(
        validator().request(&frame),
        Err(FrameError::TrailingBytes { .. })
    ));
}

/// Rewrites a header field and re-seals the frame, so that only the field's meaning is tested.
fn with_header(
    mut frame: Vec<u8>,
    edit: impl FnOnce(&mut FrameHeader),
) -> vortex_vbp::codec::FrameBytes {
    let mut header = FrameHeader::parse(&frame).unwrap();
    edit(&mut header);
    let mut bytes = [0u8; HEADER_BYTES];
    header.write(&mut bytes);
    frame[..HEADER_BYTES].copy_from_slice(&bytes);
    let mut aligned = vortex_vbp::codec::FrameBytes::new();
    aligned.extend_from_slice(&frame);
    vortex_vbp::header::seal(&mut aligned);
    aligned
}

#[test]
fn header_fields_are_checked_even_with_a_good_checksum() {
    let frame = samples::requests()[0].encode(5).unwrap().to_vec();
    type Edit = Box<dyn Fn(&mut FrameHeader)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|h| h.magic = *b"HTTP"), "BadMagic"),
        (Box::new(|h| h.version = 2), "UnsupportedVersion"),
        (Box::new(|h| h.flags = 4), "ReservedBits"),
        (Box::new(|h| h.reserved_a = 1), "ReservedBits"),
        (Box::new(|h| h.reserved_b = 1), "ReservedBits"),
        (Box::new(|h| h.opcode = 99), "BadOpcode"),
        (Box::new(|h| h.opcode = Opcode::Error as u16), "BadOpcode"),
        (Box::new(|h| h.flags = 1), "BadOpcode"),
        (Box::new(|h| h.body_length = u32::MAX), "TooLarge"),
    ];
    for (edit, expected) in cases {
        let edited = with_header(frame.clone(), edit);
        let error = validator().request(&edited).unwrap_err();
        assert!(
            format!("{error:?}").starts_with(expected),
            "{expected}: {error:?}"
        );
    }
}

/// FAN_OUT is a search request's option: accepted there (and sent by `encode_flagged`),
/// refused as a reserved bit on any other request and on responses.
#[test]
fn the_fan_out_flag_is_a_search_requests_only() {
    let search = Request::Search(samples::search(8, false));
    let flagged = search.encode_flagged(3, FLAG_FAN_OUT).unwrap();
    let (header, request) = validator().request(&flagged).unwrap();
    assert_eq!(header.flags, FLAG_FAN_OUT);
    assert!(matches!(request, RequestRef::Search(_)));
    assert_eq!(
        validator()
            .request(&search.encode(3).unwrap())
            .unwrap()
            .0
            .flags,
        0
    );
    for request in samples::requests() {
        if matches!(request, Request::Search(_)) {
            continue;
        }
        let frame = request.encode_flagged(4, FLAG_FAN_OUT).unwrap();
        assert!(
            matches!(
                validator().request(&frame),
                Err(FrameError::ReservedBits { .. })
            ),
            "{:?} with FAN_OUT",
            request.opcode()
        );
    }
    let response = with_header(flagged.to_vec(), |h| h.flags = FLAG_RESPONSE | FLAG_FAN_OUT);
    assert!(matches!(
        validator().response(&response),
        Err(FrameError::ReservedBits { .. })
    ));
}

#[test]
fn frame_size_limit_is_configurable() {
    let frame = Request::Search(samples::search(768, false))
        .encode(1)
        .unwrap();
    let small = LayoutValidator::new(1024);
    assert!(matches!(
        small.request(&frame),
        Err(FrameError::TooLarge { max: 1024, .. })
    ));
    assert!(LayoutValidator::new(frame.len() as u32)
        .request(&frame)
        .is_ok());
}

#[test]
fn misaligned_frames_are_refused() {
    let frame = samples::requests()[0].encode(1).unwrap();
    let mut shifted = vortex_vbp::codec::FrameBytes::new();
    shifted.push(0);
    shifted.extend_from_slice(&frame);
    assert_eq!(
        validator().request(&shifted[1..]).unwrap_err(),
        FrameError::Misaligned
    );
}

fn refused(request: Request, field_fragment: &str) {
    let frame = request.encode(1).unwrap();
    let error = validator().request(&frame).unwrap_err();
    assert!(
        format!("{error}").contains(field_fragment),
        "expected {field_fragment}: {error}"
    );
}

#[test]
fn semantic_limits_are_enforced() {
    let mut search = samples::search(8, false);
    search.k = 0;
    refused(Request::Search(search.clone()), "search.k");
    search.k = 10;
    search.ef = 5;
    refused(Request::Search(search.clone()), "search.ef");
    search.ef = 0;
    search.vector[3] = f32::NAN;
    refused(Request::Search(search.clone()), "not finite");
    search.vector = Vec::new();
    refused(Request::Search(search.clone()), "search.vector");
    search.vector = vec![1.0; 4];
    search.collection = "bad name!".to_owned();
    refused(Request::Search(search.clone()), "search.collection");

    let upsert = |ids: Vec<u64>, vectors: Vec<f32>, payloads: Vec<Payload>| {
        Request::Upsert(Upsert {
            collection: "c".to_owned(),
            dimension: 2,
            ids,
            vectors,
            payloads,
        })
    };
    refused(
        upsert(vec![1, 2], vec![0.0; 3], vec![]),
        "dimension mismatch",
    );
    refused(upsert(vec![], vec![], vec![]), "upsert.ids");
    refused(
        upsert(vec![1], vec![0.0; 2], vec![Payload::default(); 2]),
        "upsert.payloads",
    );
    refused(
        upsert(vec![1], vec![f32::INFINITY, 0.0], vec![]),
        "not finite",
    );
    let mut duplicate = samples::payload(1);
    duplicate.fields.push(duplicate.fields[0].clone());
    refused(
        upsert(vec![1], vec![0.0; 2], vec![duplicate]),
        "appears twice",
    );

    let mut spec = match &samples::requests()[1] {
        Request::CreateCollection(spec) => spec.clone(),
        _ => unreachable!(),
    };
    spec.dimension = 0;
    refused(
        Request::CreateCollection(spec.clone()),
        "collection.dimension",
    );
    spec.dimension = 4;
    spec.m = 1;
    refused(Request::CreateCollection(spec.clone()), "collection.m");
    spec.m = 16;
    spec.name = String::new();
    refused(Request::CreateCollection(spec), "collection.name");
}

#[test]
fn filters_must_be_acyclic_and_bounded() {
    let count = |nodes: Vec<FilterNode>| {
        Request::Count(Count {
            collection: "c".to_owned(),
            filter: Some(Filter { nodes }),
        })
    };
    let leaf = || FilterNode::Eq {
        field: "f".to_owned(),
        value: PayloadValue::Int(1),
    };
    refused(count(vec![]), "filter.nodes");
    refused(count(vec![FilterNode::Not(0)]), "children must come before");
    refused(
        count(vec![leaf(), FilterNode::And(vec![0, 1])]),
        "children must come before",
    );
    refused(
        count(vec![leaf(), FilterNode::Or(vec![])]),
        "without children",
    );
    refused(count(vec![leaf(); 257]), "filter.nodes");
    refused(
        count(vec![FilterNode::Range {
            field: "f".to_owned(),
            min: None,
            max: None,
            min_inclusive: true,
            max_inclusive: true,
        }]),
        "no bound",
    );
    refused(
        count(vec![FilterNode::In {
            field: "f".to_owned(),
            values: vec![],
        }]),
        "filter.in",
    );
}

#[test]
fn empty_bodies_must_be_empty() {
    // A Stats request carrying a body is malformed, even with a good checksum.
    let ping = samples::requests()[0].encode(3).unwrap().to_vec();
    let edited = with_header(ping, |header| header.opcode = Opcode::Stats as u16);
    assert!(matches!(
        validator().request(&edited),
        Err(FrameError::Malformed { .. })
    ));
}

#[test]
fn error_codes_map_and_round_trip() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(
        FrameError::UnsupportedVersion { version: 9 }.code(),
        ErrorCode::UnsupportedVersion
    );
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.-]{0,15}"
}

fn finite() -> impl Strategy<Value = f32> {
    -1.0e6f32..1.0e6f32
}

fn payload_value() -> impl Strategy<Value = PayloadValue> {
    prop_oneof![
        any::<i64>().prop_map(PayloadValue::Int),
        (-1.0e9f64..1.0e9).prop_map(PayloadValue::Float),
        ".{0,12}".prop_map(PayloadValue::Str),
        any::<bool>().prop_map(PayloadValue::Bool),
        proptest::collection::vec(".{0,6}", 0..4).prop_map(PayloadValue::StrList),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    proptest::collection::btree_map("[a-z]{1,8}", payload_value(), 0..5).prop_map(|fields| {
        Payload {
            fields: fields
                .into_iter()
                .map(|(key, value)| PayloadField { key, value })
                .collect(),
        }
    })
}

fn filter() -> impl Strategy<Value = Filter> {
    (1usize..8).prop_flat_map(|count| {
        let nodes: Vec<_> = (0..count)
            .map(|index| {
                let leaf = prop_oneof![
                    ("[a-z]{1,6}", payload_value())
                        .prop_map(|(field, value)| FilterNode::Eq { field, value }),
                    ("[a-z]{1,6}", -100.0f64..100.0, any::<bool>()).prop_map(
                        |(field, bound, inclusive)| FilterNode::Range {
                            field,
                            min: Some(bound),
                            max: None,
                            min_inclusive: inclusive,
                            max_inclusive: false,
                        }
                    ),
                    (
                        "[a-z]{1,6}",
                        proptest::collection::vec(payload_value(), 1..4)
                    )
                        .prop_map(|(field, values)| FilterNode::In { field, values }),
                ];
                if index == 0 {
                    leaf.boxed()
                } else {
                    let children = proptest::collection::vec(0..index as u32, 1..3);
                    prop_oneof![
                        leaf,
                        children.clone().prop_map(FilterNode::And),
                        children.prop_map(FilterNode::Or),
                        (0..index as u32).prop_map(FilterNode::Not),
                    ]
                    .boxed()
                }
            })
            .collect();
        nodes.prop_map(|nodes| Filter { nodes })
    })
}

fn request() -> impl Strategy<Value = Request> {
    let upsert = (name(), 1u32..6, 1usize..5).prop_flat_map(|(collection, dimension, count)| {
        (
            proptest::collection::vec(any::<u64>(), count),
            proptest::collection::vec(finite(), count * dimension as usize),
            prop_oneof![Just(0usize), Just(count)]
                .prop_flat_map(|payloads| proptest::collection::vec(payload(), payloads)),
        )
            .prop_map(move |(ids, vectors, payloads)| {
                Request::Upsert(Upsert {
                    collection: collection.clone(),
                    dimension,
                    ids,
                    vectors,
                    payloads,
                })
            })
    });
    let search = (
        name(),
        proptest::collection::vec(finite(), 1..32),
        1u32..100,
        proptest::option::of(filter()),
        any::<bool>(),
    )
        .prop_map(|(collection, vector, k, filter, with_payload)| {
            Request::Search(Search {
                collection,
                vector,
                k,
                ef: k * 2,
                filter,
                with_payload,
            })
        });
    prop_oneof![
        any::<u64>().prop_map(|nonce| Request::Ping(Ping { nonce })),
        (name(), 1u32..2048, 2u16..64, 1u16..500).prop_map(|(name, dimension, m, ef)| {
            Request::CreateCollection(CollectionSpec {
                name,
                dimension,
                metric: Metric::L2,
                m,
                ef_construction: ef,
                vector_type: VectorType::I8,
            })
        }),
        name().prop_map(|name| Request::DropCollection(CollectionRef { name })),
        Just(Request::ListCollections),
        name().prop_map(|name| Request::DescribeCollection(CollectionRef { name })),
        upsert,
        (name(), proptest::collection::vec(any::<u64>(), 1..20))
            .prop_map(|(collection, ids)| Request::Delete(Delete { collection, ids })),
        (
            name(),
            proptest::collection::vec(any::<u64>(), 1..20),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(collection, ids, with_vectors, with_payload)| Request::Get(Get {
                    collection,
                    ids,
                    with_vectors,
                    with_payload
                })
            ),
        search,
        (name(), proptest::option::of(filter()))
            .prop_map(|(collection, filter)| Request::Count(Count { collection, filter })),
        Just(Request::Stats),
    ]
}

proptest! {
    #[test]
    fn any_request_round_trips(request in request(), request_id in any::<u64>()) {
        let frame = request.encode(request_id).unwrap();
        let (header, body) = validator().request(&frame).unwrap();
        prop_assert_eq!(header.request_id, request_id);
        prop_assert_eq!(body.to_request().unwrap(), request);
    }

    #[test]
    fn any_bit_flip_of_any_request_is_refused(request in request(), bit in any::<proptest::sample::Index>()) {
        let mut frame = request.encode(1).unwrap();
        let bit = bit.index(frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(validator().request(&frame).is_err());
    }

    #[test]
    fn any_truncation_of_any_request_is_refused(request in request(), cut in any::<proptest::sample::Index>()) {
        let frame = request.encode(1).unwrap();
        let length = cut.index(frame.len());
        prop_assert!(validator().request(&frame[..length]).is_err());
    }

    /// Arbitrary bytes behind a valid header and checksum: rkyv's checks refuse or accept,
    /// never panic, and whatever is accepted can be copied out.
    #[test]
    fn arbitrary_sealed_bodies_never_panic(opcode in 1u16..=11, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = vortex_vbp::codec::FrameBytes::new();
        let padded = body.len().div_ceil(16) * 16;
        let mut header_bytes = [0u8; HEADER_BYTES];
        let mut header = FrameHeader::new(Opcode::from_u16(opcode).unwrap(), false, 1, body.len() as u32);
        header.checksum = 0;
        header.write(&mut header_bytes);
        frame.extend_from_slice(&header_bytes);
        frame.extend_from_slice(&body);
        frame.extend_from_slice(&vec![0u8; padded - body.len()]);
        vortex_vbp::header::seal(&mut frame);
        if let Ok((_, request)) = validator().request(&frame) {
            let _ = request.to_request();
        }
    }

    #[test]
    fn any_response_round_trips(index in 0usize..13, request_id in any::<u64>()) {
        let response = samples::responses()[index].clone();
        let frame = response.encode(request_id).unwrap();
        let (header, decoded) = validator().response(&frame).unwrap();
        prop_assert_eq!(header.request_id, request_id);
        prop_assert_eq!(decoded, response);
    }
}

#[test]
fn responses_are_not_requests_and_back() {
    let response = Response::Pong(Ping { nonce: 1 }).encode(1).unwrap();
    assert!(matches!(
        validator().request(&response),
        Err(FrameError::BadOpcode { .. })
    ));
    let request = samples::requests()[0].encode(1).unwrap();
    assert!(matches!(
        validator().response(&request),
        Err(FrameError::BadOpcode { .. })
    ));
}

/// Issue #23 item 10: a malformed body's error says what is wrong and where, in release
/// builds too (`rancor::Error` said "failed without error information; enable debug
/// assertions…" there; `check_error`'s own tests hold that part, as this test runs with
/// debug assertions), and tells no memory address (rkyv's messages name pointers). Every
/// byte of a Get body in turn set to 0xFF: each refusal names its cause, some the field.
#[test]
fn malformed_bodies_are_refused_with_what_and_where() {
    let get = Request::Get(vortex_vbp::message::Get {
        collection: "docs".into(),
        ids: vec![1, 2, 3],
        with_vectors: true,
        with_payload: false,
    })
    .encode(5)
    .unwrap()
    .to_vec();
    let mut details = Vec::new();
    for at in HEADER_BYTES..get.len() {
        let mut edited = get.clone();
        edited[at] = 0xFF;
        let resealed = with_header(edited, |_| {});
        if let Err(FrameError::Malformed { detail, .. }) = validator().request(&resealed) {
            details.push(detail);
        }
    }
    assert!(!details.is_empty(), "no edit made the body malformed");
    for detail in &details {
        assert!(
            !detail.contains("without error information") && !detail.is_empty(),
            "{detail}"
        );
        // The answer goes to the client: no address of the server's memory in it.
        let tells_an_address = detail
            .match_indices("0x")
            .any(|(at, _)| detail[at + 2..].starts_with(|c: char| c.is_ascii_hexdigit()));
        assert!(!tells_an_address, "{detail}");
    }
    assert!(
        details.iter().any(|d| d.contains("field")),
        "no refusal names a field: {details:?}"
    );
}

/// Issue #23 item 10: write limits per request (not per LEU part): more than
/// `WRITE_POINTS_MAX` ids in an upsert or delete, an upsert body over
/// `WRITE_BODY_BYTES_MAX`, or more than `GET_IDS_MAX` ids in a get are refused, naming
/// the field and the limit; at the limits they pass.
#[test]
fn batches_past_the_write_limits_are_refused_whole() {
    use vortex_vbp::validator::{GET_IDS_MAX, WRITE_BODY_BYTES_MAX, WRITE_POINTS_MAX};
    let refusal = |request: Request| -> Option<String> {
        let frame = request.encode(1).unwrap();
        match LayoutValidator::new(32 << 20).request(&frame) {
            Ok(_) => None,
            Err(FrameError::Invalid { field, detail }) => Some(format!("{field}: {detail}")),
            Err(other) => panic!("{other}"),
        }
    };
    let upsert = |points: usize, dimension: usize| {
        Request::Upsert(Upsert {
            collection: "c".into(),
            dimension: dimension as u32,
            ids: (0..points as u64).collect(),
            vectors: vec![1.0; points * dimension],
            payloads: Vec::new(),
        })
    };
    assert_eq!(refusal(upsert(WRITE_POINTS_MAX, 4)), None);
    let too_many = refusal(upsert(WRITE_POINTS_MAX + 1, 4)).unwrap();
    assert!(
        too_many.starts_with("upsert.ids") && too_many.contains("4096"),
        "{too_many}"
    );
    // Few points, wide vectors: over the body limit.
    let dimension = WRITE_BODY_BYTES_MAX / 4 / 100 + 1;
    let too_large = refusal(upsert(100, dimension)).unwrap();
    assert!(
        too_large.starts_with("upsert:") && too_large.contains("split"),
        "{too_large}"
    );
    let delete = |ids: usize| {
        Request::Delete(Delete {
            collection: "c".into(),
            ids: (0..ids as u64).collect(),
        })
    };
    assert_eq!(refusal(delete(WRITE_POINTS_MAX)), None);
    assert!(refusal(delete(WRITE_POINTS_MAX + 1))
        .unwrap()
        .starts_with("delete.ids"));
    let get = |ids: usize| {
        Request::Get(Get {
            collection: "c".into(),
            ids: (0..ids as u64).collect(),
            with_vectors: false,
            with_payload: false,
        })
    };
    assert_eq!(refusal(get(GET_IDS_MAX)), None);
    assert!(refusal(get(GET_IDS_MAX + 1))
        .unwrap()
        .starts_with("get.ids"));
}
