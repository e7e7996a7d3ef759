//! The single-LEU server over io_uring, driven by the real VBP client: every operation
//! end to end, pipelined requests, bad input closing only its own connection, the
//! connection limit, and a stop that leaves every acknowledged write on disk.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vortex_dataplane::server::{serve, ServeReport, ServerConfig};
use vortex_shard::{Shard, ShardOptions};
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::codec::Response;
use vortex_vbp::message::{CollectionSpec, ErrorCode, Metric, Search, Upsert, VectorType};
use vortex_vbp::validator::LayoutValidator;

struct Running {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ServeReport>,
}

fn start(dir: &Path, config: ServerConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let dir = dir.to_owned();
    let thread = std::thread::spawn(move || {
        let (shard, _) = Shard::open(&dir, ShardOptions::default()).unwrap();
        serve(listener, shard, 0, config, flag).unwrap()
    });
    Running {
        address,
        stop,
        thread,
    }
}

impl Running {
    fn client(&self) -> Client {
        Client::connect(&[self.address.to_string()], ClientOptions::default()).unwrap()
    }

    fn stop(self) -> ServeReport {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

fn spec() -> CollectionSpec {
    CollectionSpec {
        name: "docs".into(),
        dimension: 8,
        metric: Metric::L2,
        m: 8,
        ef_construction: 64,
        vector_type: VectorType::F32,
    }
}

fn upsert(ids: std::ops::Range<u64>) -> Upsert {
    Upsert {
        collection: "docs".into(),
        dimension: 8,
        ids: ids.clone().collect(),
        vectors: ids
            .flat_map(|id| (0..8).map(move |d| id as f32 + d as f32 * 0.001))
            .collect(),
        payloads: Vec::new(),
    }
}

fn search(at: f32) -> Search {
    Search {
        collection: "docs".into(),
        vector: (0..8).map(|d| at + d as f32 * 0.001).collect(),
        k: 5,
        ef: 0,
        filter: None,
        with_payload: false,
    }
}

#[test]
fn a_client_gets_every_answer_and_acknowledged_writes_survive_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), ServerConfig::default());
    let client = server.client();
    client.ping().unwrap();
    client.create_collection(spec()).unwrap();
    assert!(client.create_collection(spec()).is_err(), "it exists");
    assert_eq!(client.upsert(upsert(0..500)).unwrap(), 500);
    let hits = client.search(search(42.0)).unwrap();
    assert_eq!(hits[0].id, 42);
    assert_eq!(hits.len(), 5);
    assert_eq!(client.delete("docs", vec![42]).unwrap(), 1);
    let hits = client.search(search(42.0)).unwrap();
    assert!(
        hits.iter().all(|hit| hit.id != 42),
        "a deleted point came back"
    );
    let got = client.get("docs", vec![7, 42]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, 7);
    assert_eq!(client.count("docs", None).unwrap(), 499);
    assert_eq!(client.describe_collection("docs").unwrap().points, 499);

    // Pipelined: many requests in flight on one connection, answered in any order.
    let pending: Vec<_> = (0..200u64)
        .map(|i| {
            client
                .send(&vortex_vbp::codec::Request::Upsert(upsert(
                    1000 + i * 10..1000 + i * 10 + 10,
                )))
                .unwrap()
        })
        .collect();
    for request in pending {
        match request.wait().unwrap() {
            Response::Upserted(ack) => assert_eq!(ack.count, 10),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(client.count("docs", None).unwrap(), 2499);
    drop(client);
    let report = server.stop();
    assert_eq!(report.answered, 211, "{report:?}"); // 11 single requests and 200 pipelined

    // Every acknowledged write is on disk.
    let (shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
    assert_eq!(shard.describe_collection("docs").unwrap().points, 2499);
}

#[test]
fn bad_input_closes_only_its_connection_and_the_limit_refuses_one_too_many() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        connections_max: 3,
        ..ServerConfig::default()
    };
    let server = start(dir.path(), config);
    let good = server.client();
    good.create_collection(spec()).unwrap();

    // Garbage: an error frame back, then the connection is closed.
    let mut bad = TcpStream::connect(server.address).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(&[0xAB; 4096]).unwrap();
    let mut answer = Vec::new();
    bad.read_to_end(&mut answer).unwrap();
    assert!(!answer.is_empty(), "no error frame before the close");
    let mut frame = vortex_vbp::codec::FrameBytes::new();
    frame.extend_from_slice(&answer);
    match LayoutValidator::default().response(&frame) {
        Ok((_, Response::Error(body))) => assert_eq!(body.code, ErrorCode::BadFrame as u16),
        other => panic!("{other:?}"),
    }
    // The good client never noticed.
    assert_eq!(good.upsert(upsert(0..10)).unwrap(), 10);

    // Three connections are the limit: the good one and two more; a fourth is refused.
    let _second = server.client();
    let _third = server.client();
    let mut fourth = TcpStream::connect(server.address).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    fourth.read_to_end(&mut answer).unwrap();
    let mut frame = vortex_vbp::codec::FrameBytes::new();
    frame.extend_from_slice(&answer);
    match LayoutValidator::default().response(&frame) {
        Ok((_, Response::Error(body))) => {
            assert_eq!(body.code, ErrorCode::Unavailable as u16);
            assert!(
                body.message.contains("connection limit"),
                "{}",
                body.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(good.count("docs", None).unwrap(), 10);
    drop(good);
    let report = server.stop();
    assert_eq!(report.refused, 1, "{report:?}");
    assert_eq!(report.closed_for_bad_input, 1, "{report:?}");
}
