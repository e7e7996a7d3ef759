//! The reactor against a fake ring (issue #22 item 8): every operation the server pushes is
//! held by a [`FakeRing`], and the test decides what each one returns and when: a frame cut
//! over several receives, a short send, a connection that fails, a log write that is held
//! back or fails. Each test runs the server's real passes (`Server::pass`) over a real shard
//! on a temporary directory; only the kernel is replaced. Sockets exist (a connection needs a
//! descriptor of its own) but no byte goes through them: what the server "receives" is
//! written into its buffers by the test, and what it "sends" is read from its frames.

use super::ring::Driver;
use super::*;
use crate::handover::team;
use std::net::TcpStream;
use std::os::fd::IntoRawFd;
use vortex_io::FakeRing;
use vortex_shard::ShardOptions;
use vortex_vbp::codec::Request;
use vortex_vbp::message::{CollectionSpec, Metric, Ping, Upsert, VectorType};

/// Ring slots the fake holds: far more than these tests use.
const SLOTS: u32 = 256;

/// What a pending operation is, as a test looks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Accept,
    Wake,
    Recv(usize),
    RecvInto(usize),
    Send(usize),
    Log,
    Other,
}

fn kind(op: &Op) -> Kind {
    match op {
        Op::Accept { .. } => Kind::Accept,
        Op::Wake { .. } => Kind::Wake,
        Op::Recv { conn, .. } => Kind::Recv(*conn),
        Op::RecvInto { conn, .. } => Kind::RecvInto(*conn),
        Op::Send { conn, .. } | Op::SendZc { conn, .. } => Kind::Send(*conn),
        Op::Log(_) => Kind::Log,
        Op::RecvMulti { .. } => Kind::Other,
    }
}

struct Harness {
    server: Server,
    /// The far ends of the connections (kept open; nothing is read from them).
    peers: Vec<TcpStream>,
    validator: LayoutValidator,
    next_request: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_links(Links::solo().unwrap())
    }

    /// The LEU `links` names, on a fake ring and a shard of its own.
    fn with_links(links: Links) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(dir.path(), ShardOptions::default()).unwrap();
        let config = ServerConfig {
            provided_buffers: 0,
            idle_merge_after: None,
            idle_flush_after: None,
            ..ServerConfig::default()
        };
        let pool = BufferPool::new(config.pool).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let validator = LayoutValidator::new(config.frame_size_max_bytes);
        let server = Server::new(
            vec![listener],
            shard,
            links,
            config,
            Driver::Fake(Box::new(FakeRing::new(SLOTS))),
            pool,
            None,
        )
        .unwrap();
        let mut harness = Harness {
            server,
            peers: Vec::new(),
            validator,
            next_request: 1,
            _dir: dir,
        };
        harness.server.arm_accept();
        harness.pass();
        harness
    }

    fn pass(&mut self) {
        self.server.pass(false).unwrap();
    }

    fn pending(&self) -> Vec<(OpId, Kind)> {
        self.server
            .ring
            .fake()
            .pending()
            .map(|(op, owner)| (op, kind(owner)))
            .collect()
    }

    fn find(&self, wanted: Kind) -> Option<OpId> {
        self.pending()
            .into_iter()
            .find(|(_, kind)| *kind == wanted)
            .map(|(op, _)| op)
    }

    fn count(&self, wanted: Kind) -> usize {
        self.pending().iter().filter(|(_, k)| *k == wanted).count()
    }

    /// A connection accepted by the server's multishot accept; returns its index.
    fn connect(&mut self) -> usize {
        let far = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(far.local_addr().unwrap()).unwrap();
        let (near, _) = far.accept().unwrap();
        self.peers.push(peer);
        let accept = self.find(Kind::Accept).expect("an accept is armed");
        let conns_before = self.server.conns.iter().flatten().count();
        let fd = near.into_raw_fd();
        self.server.ring.fake().complete(accept, fd, true, 0);
        self.pass();
        let conn = self
            .server
            .conns
            .iter()
            .rposition(Option::is_some)
            .expect("the connection is served");
        assert_eq!(self.server.conns.iter().flatten().count(), conns_before + 1);
        self.pass(); // its receive is armed
        conn
    }

    /// `conn`'s armed receive (a pass first if none is armed yet: receives are armed at the
    /// start of a pass).
    fn armed_receive(&mut self, conn: usize) -> OpId {
        for _ in 0..2 {
            let found = self
                .pending()
                .into_iter()
                .find(|(_, kind)| matches!(kind, Kind::Recv(c) | Kind::RecvInto(c) if *c == conn));
            if let Some((op, _)) = found {
                return op;
            }
            self.pass();
        }
        panic!("no receive armed on {conn}: {:?}", self.pending());
    }

    /// Completes `conn`'s armed receive with `bytes`, then runs a pass.
    fn receive(&mut self, conn: usize, bytes: &[u8]) {
        let op = self.armed_receive(conn);
        {
            let mut fake = self.server.ring.fake();
            let buffer = match fake.owner_mut(op) {
                Some(Op::Recv { lease, offset, .. }) => &mut lease.as_mut_slice()[*offset..],
                Some(Op::RecvInto { lent, .. }) => lent.missing(),
                _ => panic!("not a receive"),
            };
            assert!(
                bytes.len() <= buffer.len(),
                "more than the receive asked for"
            );
            buffer[..bytes.len()].copy_from_slice(bytes);
            fake.complete(op, bytes.len() as i32, false, 0);
        }
        self.pass();
    }

    /// Fails `conn`'s armed receive with `result` (0: the peer closed), then runs a pass.
    fn receive_fails(&mut self, conn: usize, result: i32) {
        let op = self.armed_receive(conn);
        self.server.ring.fake().complete(op, result, false, 0);
        self.pass();
    }

    /// The bytes of `conn`'s send in flight (from where it is), if one is.
    fn send_in_flight(&self, conn: usize) -> Option<(OpId, Vec<u8>)> {
        let op = self.find(Kind::Send(conn))?;
        let mut fake = self.server.ring.fake();
        let bytes = match fake.owner_mut(op)? {
            Op::Send { frame, sent, .. } => frame[*sent..].to_vec(),
            _ => return None,
        };
        Some((op, bytes))
    }

    /// Completes every send of `conn` in full, pass after pass, and returns the answers.
    fn answers(&mut self, conn: usize) -> Vec<(u64, Response)> {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            let Some((op, sent)) = self.send_in_flight(conn) else {
                break;
            };
            self.server
                .ring
                .fake()
                .complete(op, sent.len() as i32, false, 0);
            bytes.extend_from_slice(&sent);
            self.pass();
        }
        self.decode(&bytes)
    }

    fn decode(&self, mut bytes: &[u8]) -> Vec<(u64, Response)> {
        let mut answers = Vec::new();
        while !bytes.is_empty() {
            let header = vortex_vbp::header::FrameHeader::parse(bytes).expect("a frame header");
            let length = header.frame_length() as usize;
            let (header, response) = self.validator.response(&bytes[..length]).unwrap();
            answers.push((header.request_id, response));
            bytes = &bytes[length..];
        }
        answers
    }

    fn frame(&mut self, request: &Request) -> (u64, Vec<u8>) {
        let id = self.next_request;
        self.next_request += 1;
        (id, request.encode(id).unwrap().to_vec())
    }

    /// Sends `request` whole on `conn` and returns its request id.
    fn request(&mut self, conn: usize, request: &Request) -> u64 {
        let (id, bytes) = self.frame(request);
        self.receive(conn, &bytes);
        id
    }

    /// Log writes pending on the ring, each with the bytes a complete write returns.
    fn log_writes(&self) -> Vec<(OpId, usize)> {
        let pending = self.pending();
        let mut fake = self.server.ring.fake();
        pending
            .into_iter()
            .filter(|(_, kind)| *kind == Kind::Log)
            .filter_map(|(op, _)| match fake.owner_mut(op)? {
                Op::Log(log) => Some((op, log.bytes())),
                _ => None,
            })
            .collect()
    }

    /// Completes every pending log write with `result(bytes)`; returns how many.
    fn complete_log_writes(&mut self, result: impl Fn(usize) -> i32) -> usize {
        let writes = self.log_writes();
        for &(op, bytes) in &writes {
            self.server
                .ring
                .fake()
                .complete(op, result(bytes), false, 0);
        }
        self.pass();
        writes.len()
    }
}

fn ping(nonce: u64) -> Request {
    Request::Ping(Ping { nonce })
}

fn spec() -> CollectionSpec {
    CollectionSpec {
        name: "docs".into(),
        dimension: 4,
        metric: Metric::L2,
        m: 8,
        ef_construction: 32,
        vector_type: VectorType::F32,
    }
}

fn upsert(ids: std::ops::Range<u64>) -> Request {
    Request::Upsert(Upsert {
        collection: "docs".into(),
        dimension: 4,
        ids: ids.clone().collect(),
        vectors: ids.flat_map(|id| [id as f32; 4]).collect(),
        payloads: Vec::new(),
    })
}

fn is_pong(response: &Response, nonce: u64) -> bool {
    matches!(response, Response::Pong(pong) if pong.nonce == nonce)
}

#[test]
fn a_request_is_answered_on_its_own_connection_and_nothing_is_sent_unasked() {
    let mut h = Harness::new();
    let a = h.connect();
    let b = h.connect();
    assert_ne!(a, b);
    assert_eq!(h.count(Kind::Recv(a)), 1, "{:?}", h.pending());
    assert!(h.send_in_flight(a).is_none() && h.send_in_flight(b).is_none());
    let id = h.request(b, &ping(77));
    assert!(
        h.send_in_flight(a).is_none(),
        "nothing for the other connection"
    );
    let answers = h.answers(b);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, id);
    assert!(is_pong(&answers[0].1, 77), "{answers:?}");
    assert_eq!(h.server.report.answered, 1);
    // The connection reads on.
    assert_eq!(h.count(Kind::Recv(b)), 1);
}

#[test]
fn a_frame_cut_over_several_receives_is_answered_once_whole() {
    let mut h = Harness::new();
    let conn = h.connect();
    let (id, frame) = h.frame(&ping(5));
    let cuts = [1, frame.len() / 2, frame.len() - 1, frame.len()];
    let mut from = 0;
    for &to in &cuts {
        assert!(
            h.send_in_flight(conn).is_none(),
            "answered before the frame was whole"
        );
        h.receive(conn, &frame[from..to]);
        from = to;
    }
    let answers = h.answers(conn);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, id);
    assert!(is_pong(&answers[0].1, 5));
}

#[test]
fn two_frames_in_one_receive_are_both_answered_in_order() {
    let mut h = Harness::new();
    let conn = h.connect();
    let (first, mut bytes) = h.frame(&ping(1));
    let (second, more) = h.frame(&ping(2));
    bytes.extend_from_slice(&more);
    h.receive(conn, &bytes);
    let answers = h.answers(conn);
    let ids: Vec<u64> = answers.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![first, second]);
}

#[test]
fn a_short_send_goes_on_from_where_it_stopped() {
    let mut h = Harness::new();
    let conn = h.connect();
    let id = h.request(conn, &ping(9));
    let (op, whole) = h.send_in_flight(conn).expect("the answer is being sent");
    let part = whole.len() / 3;
    h.server.ring.fake().complete(op, part as i32, false, 0);
    h.pass();
    let (op, rest) = h.send_in_flight(conn).expect("the rest is sent next");
    assert_eq!(
        rest,
        whole[part..],
        "the rest starts where the short send stopped"
    );
    h.server
        .ring
        .fake()
        .complete(op, rest.len() as i32, false, 0);
    h.pass();
    assert!(h.send_in_flight(conn).is_none(), "nothing more to send");
    let answers = h.decode(&whole);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, id);
    assert!(is_pong(&answers[0].1, 9));
}

#[test]
fn a_connection_that_ends_or_fails_is_closed_and_the_others_served() {
    let mut h = Harness::new();
    let ended = h.connect();
    let failed = h.connect();
    let good = h.connect();
    assert_eq!(h.server.links.team.connections.load(Ordering::Acquire), 3);
    h.receive_fails(ended, 0);
    h.receive_fails(failed, -libc::ECONNRESET);
    h.pass();
    assert!(
        h.server.conns[ended].is_none(),
        "the ended connection is gone"
    );
    assert!(
        h.server.conns[failed].is_none(),
        "the failed connection is gone"
    );
    assert_eq!(h.server.links.team.connections.load(Ordering::Acquire), 1);
    assert_eq!(h.count(Kind::Recv(ended)) + h.count(Kind::Recv(failed)), 0);
    h.request(good, &ping(3));
    let answers = h.answers(good);
    assert!(is_pong(&answers[0].1, 3));
}

#[test]
fn a_send_that_fails_closes_its_connection() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.request(conn, &ping(4));
    let (op, _) = h.send_in_flight(conn).unwrap();
    h.server.ring.fake().complete(op, -libc::EPIPE, false, 0);
    h.pass();
    // Its receive is cancelled (its peer may never send again) and, once that
    // completes, the connection goes.
    let recv = h
        .find(Kind::Recv(conn))
        .expect("the receive re-armed after the request");
    h.pass();
    assert!(
        h.server.ring.fake().cancelled().contains(&recv),
        "the receive of a failed connection is cancelled"
    );
    assert!(
        h.server.conns[conn].is_some(),
        "not before its receive ended"
    );
    h.server
        .ring
        .fake()
        .complete(recv, -libc::ECANCELED, false, 0);
    h.pass();
    assert!(h.server.conns[conn].is_none(), "{:?}", h.pending());
    assert_eq!(h.server.links.team.connections.load(Ordering::Acquire), 0);
}

#[test]
fn garbage_gets_an_error_frame_and_its_connection_is_closed() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.receive(conn, &[0xAB; 64]);
    let answers = h.answers(conn);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(matches!(answers[0].1, Response::Error(_)), "{answers:?}");
    h.pass();
    assert!(h.server.conns[conn].is_none(), "{:?}", h.pending());
    assert_eq!(h.server.report.closed_for_bad_input, 1);
}

#[test]
fn a_write_is_acknowledged_only_once_its_log_write_completes() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.request(conn, &Request::CreateCollection(spec()));
    assert!(matches!(h.answers(conn)[0].1, Response::Created));
    let id = h.request(conn, &upsert(0..10));
    // The WAL's write is on the LEU's ring; held back, the write is not acknowledged, and
    // the log's writes wait for it (one chain at a time).
    let held = h.log_writes();
    assert!(
        !held.is_empty(),
        "the WAL wrote on the LEU's ring: {:?}",
        h.pending()
    );
    for _ in 0..20 {
        h.pass();
        assert!(
            h.send_in_flight(conn).is_none(),
            "acknowledged before durable"
        );
    }
    assert_eq!(
        h.log_writes().len(),
        held.len(),
        "one chain in flight at a time"
    );
    while h.complete_log_writes(|bytes| bytes as i32) > 0 {}
    let answers = h.answers(conn);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, id);
    assert!(matches!(&answers[0].1, Response::Upserted(ack) if ack.count == 10));
    assert_eq!(h.server.ring.log_completed() as usize, held.len());
}

#[test]
fn a_failed_log_write_answers_its_write_with_an_error_and_serving_goes_on() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.request(conn, &Request::CreateCollection(spec()));
    h.answers(conn);
    let id = h.request(conn, &upsert(0..10));
    assert!(h.complete_log_writes(|_| -libc::EIO) > 0);
    let answers = h.answers(conn);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, id);
    match &answers[0].1 {
        Response::Error(error) => assert!(
            error.message.contains("read-only") || error.message.contains("I/O"),
            "{error:?}"
        ),
        other => panic!("a write whose log write failed was answered {other:?}"),
    }
    // The connection and the reads go on; later writes are refused at once.
    h.request(conn, &ping(8));
    assert!(is_pong(&h.answers(conn)[0].1, 8));
    h.request(conn, &upsert(10..11));
    assert!(h.log_writes().is_empty(), "a read-only WAL writes nothing");
    assert!(matches!(h.answers(conn)[0].1, Response::Error(_)));
}

#[test]
fn a_full_ring_throttles_the_leu_and_serving_resumes_when_slots_free() {
    let mut h = Harness::new();
    let conn = h.connect();
    // Take every free slot with operations the test owns, as other work would.
    let mut fillers = Vec::new();
    loop {
        let mut fake = h.server.ring.fake();
        let entry = io_uring::opcode::Nop::new().build();
        match fake.push(
            entry,
            Op::Wake {
                _value: Box::new(0),
            },
        ) {
            Ok(op) => fillers.push(op),
            Err(_) => break,
        }
    }
    assert_eq!(h.server.ring.capacity_left(), 0);
    let (_, bytes) = h.frame(&ping(6));
    h.receive(conn, &bytes);
    // The receive's completion freed one slot: the answer's send takes it, and the LEU,
    // out of ring slots, answers THROTTLED rather than queue work it cannot submit.
    let answers = h.answers(conn);
    assert_eq!(answers.len(), 1, "{:?}", h.pending());
    match &answers[0].1 {
        Response::Throttled(body) => assert!(body.reason.contains("ring"), "{body:?}"),
        other => panic!("a full ring answered {other:?}"),
    }
    assert!(h.server.throttled.is_some());
    assert_eq!(h.server.report.throttled_entered, 1);
    for filler in fillers {
        h.server.ring.fake().complete(filler, 0, false, 0);
    }
    h.pass();
    h.pass();
    assert!(
        h.server.throttled.is_none(),
        "slots came back: the LEU serves again"
    );
    h.request(conn, &ping(7));
    assert!(is_pong(&h.answers(conn)[0].1, 7));
}

/// Two LEUs in one thread, each on its own fake ring, linked by their real queues, with
/// collection `docs` created through the first (a client connected to it: `conn`).
fn two_leus_with_docs() -> ([Harness; 2], crate::routing::Ring, usize) {
    let ring = crate::routing::Ring::new(2, 64).unwrap();
    let mut links = team(ring.clone(), 16).unwrap();
    let second = links.pop().unwrap();
    let first = links.pop().unwrap();
    let mut h = [Harness::with_links(first), Harness::with_links(second)];
    let conn = h[0].connect();
    // The catalog change reaches both LEUs; its answer comes from the first.
    let (_, create) = h[0].frame(&Request::CreateCollection(spec()));
    h[0].receive(conn, &create);
    passes(&mut h, 10);
    let created = h[0].answers(conn);
    assert!(matches!(created[0].1, Response::Created), "{created:?}");
    (h, ring, conn)
}

fn passes(h: &mut [Harness; 2], count: usize) {
    for _ in 0..count {
        h[0].pass();
        h[1].pass();
    }
}

/// Ten ids the first LEU owns, then ten the second owns.
fn ten_on_each(ring: &crate::routing::Ring) -> (Vec<u64>, Vec<u64>) {
    let (mut on_first, mut on_second) = (Vec::new(), Vec::new());
    for id in 0..1000u64 {
        match ring.leu_of(id) {
            0 if on_first.len() < 10 => on_first.push(id),
            1 if on_second.len() < 10 => on_second.push(id),
            _ => {}
        }
    }
    (on_first, on_second)
}

/// An upsert of `ids`, each point's components its id.
fn upsert_of(ids: &[u64]) -> Request {
    Request::Upsert(Upsert {
        collection: "docs".into(),
        dimension: 4,
        ids: ids.to_vec(),
        vectors: ids.iter().flat_map(|&id| [id as f32; 4]).collect(),
        payloads: Vec::new(),
    })
}

/// A write whose points live on both LEUs is answered once, after both parts' log writes
/// completed. The receiving LEU's part is durable first here and the answer still waits for
/// the other's.
#[test]
fn a_write_across_two_leus_is_acknowledged_only_when_both_parts_are_durable() {
    let (mut h, ring, conn) = two_leus_with_docs();
    let (on_first, on_second) = ten_on_each(&ring);
    let ids: Vec<u64> = on_first.into_iter().chain(on_second).collect();
    let (id, bytes) = h[0].frame(&upsert_of(&ids));
    h[0].receive(conn, &bytes);
    passes(&mut h, 10);
    let (first_writes, second_writes) = (h[0].log_writes(), h[1].log_writes());
    assert!(!first_writes.is_empty(), "the first LEU wrote its part");
    assert!(!second_writes.is_empty(), "the second LEU wrote its part");
    // The first LEU's part is durable; the second's is not: no answer yet.
    while h[0].complete_log_writes(|bytes| bytes as i32) > 0 {}
    passes(&mut h, 20);
    assert!(
        h[0].send_in_flight(conn).is_none(),
        "acknowledged before every part was durable"
    );
    while h[1].complete_log_writes(|bytes| bytes as i32) > 0 {}
    passes(&mut h, 20);
    let answers = h[0].answers(conn);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, id);
    assert!(
        matches!(&answers[0].1, Response::Upserted(ack) if ack.count == 20),
        "{answers:?}"
    );
    assert_eq!(
        h[0].server.report.handed_over, 2,
        "{:?}",
        h[0].server.report
    );
    assert_eq!(
        h[1].server.report.served_for_others, 2,
        "{:?}",
        h[1].server.report
    );
}

/// Issue #23 item 8: a write across two LEUs whose second part's log write fails (EIO) is
/// answered `Partial`: what the first part applied (durable), the ids of the second part,
/// and the failure, `Internal`, so those ids may or may not be there. Before, the answer was
/// the second LEU's error alone, though the first part was written.
#[test]
fn a_write_whose_part_fails_on_another_leu_is_answered_partial() {
    let (mut h, ring, conn) = two_leus_with_docs();
    let (on_first, on_second) = ten_on_each(&ring);
    // Interleaved, so that the failed ids are named in request order.
    let ids: Vec<u64> = on_first
        .iter()
        .zip(&on_second)
        .flat_map(|(&a, &b)| [a, b])
        .collect();
    let (id, bytes) = h[0].frame(&upsert_of(&ids));
    h[0].receive(conn, &bytes);
    passes(&mut h, 10);
    while h[0].complete_log_writes(|bytes| bytes as i32) > 0 {}
    while h[1].complete_log_writes(|_| -libc::EIO) > 0 {}
    passes(&mut h, 20);
    let answers = h[0].answers(conn);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, id);
    let Response::Partial(body) = &answers[0].1 else {
        panic!("not partial: {answers:?}");
    };
    assert_eq!(body.applied, 10, "{body:?}");
    assert_eq!(body.failed_ids, on_second, "{body:?}");
    assert!(!body.throttled, "{body:?}");
    assert_eq!(
        body.code,
        vortex_vbp::message::ErrorCode::Internal as u16,
        "{body:?}"
    );
    assert_eq!(h[0].server.report.partial_answers, 1);
    // The first part is durable and readable; the answer said nothing of the rest beyond
    // "may or may not".
    h[0].request(
        conn,
        &Request::Get(vortex_vbp::message::Get {
            collection: "docs".into(),
            ids: on_first.clone(),
            with_vectors: false,
            with_payload: false,
        }),
    );
    passes(&mut h, 20);
    let got = h[0].answers(conn);
    assert!(
        matches!(&got[0].1, Response::Points(points) if points.points.len() == 10),
        "{got:?}"
    );
}
