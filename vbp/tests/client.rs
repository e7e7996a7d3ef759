//! The client library against a small in-test server built on the same decoder and
//! validator: every API call, pipelining with out-of-order responses, timeouts, THROTTLED,
//! server errors, connection loss and failover, and the version rule.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vortex_vbp::client::{Client, ClientError, ClientOptions, ServerCode};
use vortex_vbp::codec::{Request, Response};
use vortex_vbp::header::{FrameHeader, HEADER_BYTES};
use vortex_vbp::message::*;
use vortex_vbp::pool::{BufferPool, PoolConfig, SizeClass};
use vortex_vbp::samples;
use vortex_vbp::stream::StreamDecoder;
use vortex_vbp::validator::{LayoutValidator, RequestRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer every request at once.
    Normal,
    /// Answer in batches of this many, last first.
    Reversed(usize),
    /// Read and never answer.
    Silent,
    /// Answer THROTTLED.
    Throttle,
    /// Answer `Partial`, THROTTLED in part if `true`, else with an Internal failure.
    Partial(bool),
    /// Close the connection after this many requests.
    CloseAfter(usize),
}

type Points = BTreeMap<u64, (Vec<f32>, Option<Payload>)>;

#[derive(Default)]
struct Model {
    collections: HashMap<String, (CollectionSpec, Points)>,
}

fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        Metric::Ip => -a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>(),
        Metric::Cosine => {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            1.0 - dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
        }
    }
}

impl Model {
    fn answer(&mut self, request: RequestRef<'_>) -> Response {
        let missing = |name: &str| {
            Response::error(
                ErrorCode::CollectionNotFound,
                format!("no collection `{name}`"),
            )
        };
        match request {
            RequestRef::Ping(ping) => Response::Pong(Ping {
                nonce: ping.nonce.to_native(),
            }),
            RequestRef::CreateCollection(_) => {
                let Ok(Request::CreateCollection(spec)) = request.to_request() else {
                    unreachable!()
                };
                if self.collections.contains_key(&spec.name) {
                    return Response::error(ErrorCode::CollectionExists, "exists");
                }
                self.collections
                    .insert(spec.name.clone(), (spec, BTreeMap::new()));
                Response::Created
            }
            RequestRef::DropCollection(name) => match self.collections.remove(name.name.as_str()) {
                Some(_) => Response::Dropped,
                None => missing(name.name.as_str()),
            },
            RequestRef::ListCollections => Response::Collections(CollectionList {
                collections: self
                    .collections
                    .values()
                    .map(|(spec, points)| CollectionInfo {
                        spec: spec.clone(),
                        points: points.len() as u64,
                    })
                    .collect(),
            }),
            RequestRef::DescribeCollection(name) => {
                match self.collections.get(name.name.as_str()) {
                    Some((spec, points)) => Response::Collection(CollectionInfo {
                        spec: spec.clone(),
                        points: points.len() as u64,
                    }),
                    None => missing(name.name.as_str()),
                }
            }
            RequestRef::Upsert(view) => {
                let Some((spec, points)) = self.collections.get_mut(view.body.collection.as_str())
                else {
                    return missing(view.body.collection.as_str());
                };
                if let Err(error) = view.expect_dimension(spec.dimension) {
                    return error.to_response();
                }
                let Ok(Request::Upsert(owned)) = request.to_request() else {
                    unreachable!()
                };
                for index in 0..view.len() {
                    let (id, vector) = view.point(index).unwrap();
                    points.insert(id, (vector.to_vec(), owned.payloads.get(index).cloned()));
                }
                Response::Upserted(WriteAck {
                    count: view.len() as u32,
                })
            }
            RequestRef::Delete(delete) => {
                let Some((_, points)) = self.collections.get_mut(delete.collection.as_str()) else {
                    return missing(delete.collection.as_str());
                };
                let count = delete
                    .ids
                    .iter()
                    .filter(|id| points.remove(&id.to_native()).is_some())
                    .count();
                Response::Deleted(WriteAck {
                    count: count as u32,
                })
            }
            RequestRef::Get(get) => {
                let Some((_, points)) = self.collections.get(get.collection.as_str()) else {
                    return missing(get.collection.as_str());
                };
                Response::Points(GetResult {
                    points: get
                        .ids
                        .iter()
                        .filter_map(|id| {
                            let id = id.to_native();
                            points.get(&id).map(|(vector, payload)| PointRecord {
                                id,
                                vector: vector.clone(),
                                payload: payload.clone(),
                            })
                        })
                        .collect(),
                })
            }
            RequestRef::Search(view) => {
                let Some((spec, points)) = self.collections.get(view.body.collection.as_str())
                else {
                    return missing(view.body.collection.as_str());
                };
                let query = match view.vector_for(spec.dimension) {
                    Ok(query) => query,
                    Err(error) => return error.to_response(),
                };
                let mut hits: Vec<Hit> = points
                    .iter()
                    .map(|(id, (vector, _))| Hit {
                        id: *id,
                        distance: distance(spec.metric, query, vector),
                        payload: None,
                    })
                    .collect();
                hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
                hits.truncate(view.body.k.to_native() as usize);
                Response::Hits(SearchResult { hits })
            }
            RequestRef::Count(count) => match self.collections.get(count.collection.as_str()) {
                Some((_, points)) => Response::Counted(CountResult {
                    count: points.len() as u64,
                }),
                None => missing(count.collection.as_str()),
            },
            RequestRef::Scrub => Response::Scrubbing,
            RequestRef::Fenced => Response::FencedTables(FencedResult { tables: Vec::new() }),
            RequestRef::Stats => Response::Stats(StatsResult {
                leus: vec![LeuStats {
                    leu: 0,
                    counters: vec![Counter {
                        name: "connections".to_owned(),
                        value: 1,
                    }],
                }],
            }),
        }
    }
}

struct TestServer {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl TestServer {
    fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let model = Arc::new(Mutex::new(Model::default()));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let model = Arc::clone(&model);
                std::thread::spawn(move || serve(stream, mode, &model));
            }
        });
        TestServer {
            address,
            connections,
        }
    }

    fn endpoint(&self) -> String {
        self.address.to_string()
    }
}

/// One connection: the same decoder and validator a dataplane LEU uses.
fn serve(mut stream: TcpStream, mode: Mode, model: &Mutex<Model>) {
    let pool = BufferPool::new(PoolConfig {
        buffer_bytes: 64 << 10,
        buffer_count: 8,
        medium_buffer_bytes: 16 << 20,
        medium_buffer_count: 1,
        large_buffer_bytes: 16 << 20,
        large_buffer_count: 1,
    })
    .unwrap();
    let validator = LayoutValidator::default();
    let mut decoder = StreamDecoder::new(pool.clone(), validator);
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut served = 0usize;
    loop {
        let mut lease = pool.lease(SizeClass::Standard).unwrap();
        let offset = decoder.receive_offset();
        let received = match stream.read(&mut lease.as_mut_slice()[offset..]) {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        decoder.push(lease, offset..offset + received).unwrap();
        while let Ok(Some(frame)) = decoder.next_frame() {
            served += 1;
            if let Mode::CloseAfter(limit) = mode {
                if served > limit {
                    return;
                }
            }
            let request_id = frame.header().request_id;
            let response = match validator.request(frame.bytes()) {
                Ok((_, request)) => match mode {
                    Mode::Throttle => Response::Throttled(ThrottledBody {
                        retry_after_ms: 7,
                        reason: "test".to_owned(),
                    }),
                    Mode::Partial(throttled) => Response::Partial(PartialBody {
                        applied: 3,
                        failed_ids: vec![9, 4],
                        throttled,
                        retry_after_ms: if throttled { 11 } else { 0 },
                        code: if throttled {
                            0
                        } else {
                            ErrorCode::Internal as u16
                        },
                        message: "part failed".to_owned(),
                    }),
                    _ => model.lock().unwrap().answer(request),
                },
                Err(error) if error.closes_connection() => return,
                Err(error) => error.to_response(),
            };
            let bytes = response.encode(request_id).unwrap().to_vec();
            match mode {
                Mode::Silent => {}
                Mode::Reversed(batch) => {
                    held.push(bytes);
                    if held.len() == batch {
                        for bytes in held.drain(..).rev() {
                            stream.write_all(&bytes).unwrap();
                        }
                    }
                }
                _ => {
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn spec(name: &str, dimension: u32) -> CollectionSpec {
    CollectionSpec {
        name: name.to_owned(),
        dimension,
        metric: Metric::L2,
        m: 16,
        ef_construction: 100,
        vector_type: VectorType::F32,
    }
}

fn dead_endpoint() -> String {
    // Bind and drop: nothing listens there now.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address.to_string()
}

#[test]
fn the_whole_api_against_the_test_server() {
    let server = TestServer::start(Mode::Normal);
    let client = Client::connect(&[server.endpoint()], options()).unwrap();
    assert!(client.ping().is_ok());
    client.create_collection(spec("docs", 4)).unwrap();
    let duplicate = client.create_collection(spec("docs", 4)).unwrap_err();
    assert!(matches!(
        duplicate,
        ClientError::Server {
            code: ServerCode::Known(ErrorCode::CollectionExists),
            ..
        }
    ));
    let ids: Vec<u64> = (0..50).collect();
    let vectors: Vec<f32> = (0..50).flat_map(|i| samples::vector(4, i)).collect();
    let written = client
        .upsert(Upsert {
            collection: "docs".to_owned(),
            dimension: 4,
            ids: ids.clone(),
            vectors: vectors.clone(),
            payloads: vec![],
        })
        .unwrap();
    assert_eq!(written, 50);
    assert_eq!(client.count("docs", None).unwrap(), 50);
    let listed = client.list_collections().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(client.describe_collection("docs").unwrap().points, 50);

    // Search: the exact nearest neighbours, by brute force here too.
    let query = samples::vector(4, 17);
    let hits = client
        .search(Search {
            collection: "docs".to_owned(),
            vector: query.clone(),
            k: 5,
            ef: 0,
            filter: None,
            with_payload: false,
        })
        .unwrap();
    let mut expected: Vec<(f32, u64)> = (0..50u32)
        .map(|i| {
            (
                distance(Metric::L2, &query, &samples::vector(4, i)),
                u64::from(i),
            )
        })
        .collect();
    expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let expected_ids: Vec<u64> = expected.iter().take(5).map(|(_, id)| *id).collect();
    assert_eq!(
        hits.iter().map(|hit| hit.id).collect::<Vec<_>>(),
        expected_ids
    );
    assert_eq!(hits[0].id, 17);

    let got = client.get("docs", vec![3, 999]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].vector, samples::vector(4, 3));
    assert_eq!(client.delete("docs", vec![3, 4, 999]).unwrap(), 2);
    assert_eq!(client.count("docs", None).unwrap(), 48);
    assert_eq!(client.stats().unwrap()[0].counters[0].name, "connections");

    // A dimension mismatch is a typed server error.
    let mismatch = client
        .upsert(Upsert {
            collection: "docs".to_owned(),
            dimension: 3,
            ids: vec![1],
            vectors: vec![0.0; 3],
            payloads: vec![],
        })
        .unwrap_err();
    assert!(matches!(
        mismatch,
        ClientError::Server {
            code: ServerCode::Known(ErrorCode::DimensionMismatch),
            ..
        }
    ));
    client.drop_collection("docs").unwrap();
    assert!(matches!(
        client.describe_collection("docs").unwrap_err(),
        ClientError::Server {
            code: ServerCode::Known(ErrorCode::CollectionNotFound),
            ..
        }
    ));
}

#[test]
fn pipelined_requests_match_out_of_order_responses() {
    let server = TestServer::start(Mode::Reversed(10));
    let client = Client::connect(&[server.endpoint()], options()).unwrap();
    let pending: Vec<_> = (0..200u64)
        .map(|nonce| client.send(&Request::Ping(Ping { nonce })).unwrap())
        .collect();
    for (nonce, pending) in pending.into_iter().enumerate() {
        match pending.wait().unwrap() {
            Response::Pong(pong) => assert_eq!(pong.nonce, nonce as u64),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn many_threads_share_one_client() {
    let server = TestServer::start(Mode::Normal);
    let client = Arc::new(Client::connect(&[server.endpoint()], options()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for call in 0..50u64 {
                    let nonce = thread * 1000 + call;
                    match client.call(&Request::Ping(Ping { nonce })).unwrap() {
                        Response::Pong(pong) => assert_eq!(pong.nonce, nonce),
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "one connection, pipelined"
    );
}

#[test]
fn connect_failure_names_the_endpoints_and_what_to_do() {
    let dead = dead_endpoint();
    let error = Client::connect(std::slice::from_ref(&dead), options()).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&dead), "{message}");
    assert!(message.contains("running"), "{message}");
    assert!(matches!(
        Client::connect(&["no-such-host.invalid:1"], options()),
        Err(ClientError::Resolve { .. })
    ));
    assert!(matches!(
        Client::connect::<&str>(&[], options()),
        Err(ClientError::NoEndpoint)
    ));
}

#[test]
fn the_first_live_endpoint_is_used() {
    let server = TestServer::start(Mode::Normal);
    let client = Client::connect(&[dead_endpoint(), server.endpoint()], options()).unwrap();
    assert_eq!(client.connected_endpoint(), Some(server.address));
    assert!(client.ping().is_ok());
}

#[test]
fn a_silent_server_times_out() {
    let server = TestServer::start(Mode::Silent);
    let client = Client::connect(
        &[server.endpoint()],
        ClientOptions {
            request_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let error = client.ping().unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
}

#[test]
fn inflight_requests_are_bounded() {
    let server = TestServer::start(Mode::Silent);
    let client = Client::connect(
        &[server.endpoint()],
        ClientOptions {
            request_timeout: Duration::from_millis(200),
            inflight_max: 2,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let first = client.send(&Request::Stats).unwrap();
    let second = client.send(&Request::Stats).unwrap();
    // The third cannot get a slot before the timeout.
    assert!(matches!(
        client.send(&Request::Stats),
        Err(ClientError::Timeout { .. })
    ));
    assert!(matches!(first.wait(), Err(ClientError::Timeout { .. })));
    assert!(matches!(second.wait(), Err(ClientError::Timeout { .. })));
}

#[test]
fn throttled_is_a_typed_error_with_the_hint() {
    let server = TestServer::start(Mode::Throttle);
    let client = Client::connect(&[server.endpoint()], options()).unwrap();
    match client.ping().unwrap_err() {
        ClientError::Throttled { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_millis(7))
        }
        other => panic!("{other}"),
    }
}

/// A `Partial` answer comes back as `ClientError::Partial` with the ids that failed and the
/// cause; `retry_after` gives the wait for a THROTTLED part and none for an error.
#[test]
fn partial_is_a_typed_error_naming_the_failed_ids() {
    for throttled in [true, false] {
        let server = TestServer::start(Mode::Partial(throttled));
        let client = Client::connect(&[server.endpoint()], options()).unwrap();
        let error = client.delete("docs", vec![1, 9, 4]).unwrap_err();
        let ClientError::Partial {
            applied,
            ref failed_ids,
            ref cause,
        } = error
        else {
            panic!("{error}");
        };
        assert_eq!((applied, failed_ids.as_slice()), (3, &[9u64, 4][..]));
        if throttled {
            assert!(matches!(**cause, ClientError::Throttled { .. }), "{cause}");
            assert_eq!(error.retry_after(), Some(Duration::from_millis(11)));
        } else {
            assert!(
                matches!(
                    **cause,
                    ClientError::Server {
                        code: ServerCode::Known(ErrorCode::Internal),
                        ..
                    }
                ),
                "{cause}"
            );
            assert_eq!(error.retry_after(), None);
        }
    }
}

#[test]
fn a_lost_connection_fails_waiters_and_the_next_request_reconnects() {
    let server = TestServer::start(Mode::CloseAfter(1));
    let client = Client::connect(&[server.endpoint()], options()).unwrap();
    assert!(client.ping().is_ok());
    // The server closes when it reads the second request.
    let error = client.ping().unwrap_err();
    assert!(
        matches!(error, ClientError::ConnectionLost { .. }),
        "{error}"
    );
    // Reconnects transparently for the next request.
    let mut reconnected = false;
    for _ in 0..50 {
        if client.ping().is_ok() {
            reconnected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(reconnected);
    assert!(server.connections.load(Ordering::SeqCst) >= 2);
}

#[test]
fn an_unsupported_version_gets_an_error_frame_and_the_connection_stays() {
    let server = TestServer::start(Mode::Normal);
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // A version-2 ping: same header layout, so it can be framed and answered.
    let mut frame = Request::Ping(Ping { nonce: 5 }).encode(4242).unwrap();
    let mut header = FrameHeader::parse(&frame).unwrap();
    header.version = 2;
    let mut bytes = [0u8; HEADER_BYTES];
    header.write(&mut bytes);
    frame[..HEADER_BYTES].copy_from_slice(&bytes);
    vortex_vbp::header::seal(&mut frame);
    stream.write_all(&frame).unwrap();
    let response = read_one_response(&mut stream);
    let (header, response) = LayoutValidator::default().response(&response).unwrap();
    assert_eq!(header.request_id, 4242);
    assert_eq!(header.version, 1);
    match response {
        Response::Error(body) => {
            assert_eq!(body.code, ErrorCode::UnsupportedVersion as u16);
            assert!(body.message.contains("version 2"), "{}", body.message);
        }
        other => panic!("{other:?}"),
    }
    // Same connection, a version-1 ping works.
    stream
        .write_all(&Request::Ping(Ping { nonce: 6 }).encode(4243).unwrap())
        .unwrap();
    let (header, response) = LayoutValidator::default()
        .response(&read_one_response(&mut stream))
        .unwrap();
    assert_eq!(header.request_id, 4243);
    assert_eq!(response, Response::Pong(Ping { nonce: 6 }));
}

fn read_one_response(stream: &mut TcpStream) -> vortex_vbp::codec::FrameBytes {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).unwrap();
    let length = FrameHeader::parse(&header).unwrap().frame_length() as usize;
    let mut frame = vortex_vbp::codec::FrameBytes::with_capacity(length);
    frame.extend_from_slice(&header);
    let mut rest = vec![0u8; length - HEADER_BYTES];
    stream.read_exact(&mut rest).unwrap();
    frame.extend_from_slice(&rest);
    frame
}
