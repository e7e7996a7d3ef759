//! One LEU's VBP server: a single-threaded loop over its own io_uring that accepts
//! connections, receives into pool buffers, decodes frames in place, runs them on the LEU's
//! shard ([`crate::dispatch`]) and sends the answers, write acknowledgements only once the
//! write is durable.
//!
//! This is the first step of issue #8's reactor: one LEU, its own listening socket, no
//! handover between LEUs yet. What it already holds to:
//!
//! - **Bounded**: at most `connections_max` connections (one more is answered with an
//!   `Unavailable` error frame and closed), at most `requests_per_connection_max` requests
//!   of a connection read and not yet fully answered, queued answers included (past that
//!   the connection is not read until answers go out, so a sender that does not read its
//!   answers is slowed down by TCP), and the receive buffers come from the LEU's fixed pool
//!   (when it is empty, receives wait).
//! - **Bad input closes one connection**: a framing error, or a frame the validator says
//!   must close, gets its error frame and the connection is closed; others are unaffected.
//! - **Stop**: when `stop` is set, the loop stops accepting and reading, waits (up to a
//!   deadline) for pending acknowledgements and sends, syncs the WAL and returns.
//!
//! The shard's WAL runs on its own ring, so the loop waits on the network ring with a short
//! timeout while acknowledgements are pending (`ack_wait`) and a longer one when idle
//! (`idle_wait`); one ring for both is the next step.

use crate::dispatch::{dispatch, error_response, Outcome};
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vortex_io::{OpId, Owner, PushError, RingConfig, RingDriver};
use vortex_shard::Shard;
use vortex_vbp::codec::{FrameBytes, Response};
use vortex_vbp::message::ErrorCode;
use vortex_vbp::pool::{BufferPool, Lease, PoolConfig, SizeClass};
use vortex_vbp::stream::StreamDecoder;
use vortex_vbp::validator::LayoutValidator;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections at most.
    pub connections_max: usize,
    /// Requests of one connection read and not yet answered, at most.
    pub requests_per_connection_max: usize,
    /// The loop's wait for network completions when nothing else is pending.
    pub idle_wait: Duration,
    /// The wait while write acknowledgements are pending (the WAL completes on its own ring).
    pub ack_wait: Duration,
    /// How long a stop waits for pending acknowledgements and sends.
    pub stop_deadline: Duration,
    /// The receive buffer pool.
    pub pool: PoolConfig,
    /// The ring.
    pub ring: RingConfig,
    /// The largest frame accepted.
    pub frame_size_max_bytes: u32,
    /// A connection idle this long (nothing received, nothing in flight) is closed; `None`:
    /// never.
    pub idle_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 1024,
            requests_per_connection_max: 256,
            idle_wait: Duration::from_millis(2),
            ack_wait: Duration::from_micros(100),
            stop_deadline: Duration::from_secs(5),
            pool: PoolConfig {
                buffer_bytes: 64 << 10,
                buffer_count: 256,
                large_buffer_bytes: 16 << 20,
                large_buffer_count: 2,
            },
            ring: RingConfig::plain(512),
            frame_size_max_bytes: 16 << 20,
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// What a server did, when it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted (refused ones included).
    pub accepted: u64,
    /// Connections refused at the limit.
    pub refused: u64,
    /// Requests answered.
    pub answered: u64,
    /// Connections closed for bad input.
    pub closed_for_bad_input: u64,
    /// Connections closed after `idle_timeout`.
    pub closed_idle: u64,
    /// The most requests one connection had read and not yet fully answered (answers
    /// queued or being sent included): at most `requests_per_connection_max`.
    pub held_peak: usize,
}

/// A server that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The ring failed.
    #[error("io_uring: {0}")]
    Ring(String),
    /// The pool could not be allocated.
    #[error("buffer pool: {0}")]
    Pool(String),
    /// The shard failed at stop.
    #[error("shard: {0}")]
    Shard(#[from] vortex_shard::ShardError),
}

/// How often idle connections are looked for.
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// An operation in flight, owning what the kernel reads or writes.
enum Op {
    Accept,
    Recv {
        conn: usize,
        lease: Lease,
        offset: usize,
    },
    Send {
        conn: usize,
        frame: FrameBytes,
        sent: usize,
    },
}

struct Connection {
    fd: OwnedFd,
    decoder: StreamDecoder,
    /// Encoded answers waiting for the send in flight.
    /// Answers waiting for the send in flight, each with the bytes of it already sent.
    outbox: VecDeque<(FrameBytes, usize)>,
    sending: bool,
    receiving: bool,
    /// Requests read and not yet answered (acknowledgements waiting included).
    unanswered: usize,
    /// No more reads; close once nothing is in flight.
    closing: bool,
    /// The receive in flight, to cancel it.
    recv_op: Option<OpId>,
    /// When something was last received or sent.
    last_active: Instant,
    /// Complete frames may wait in the decoder: dispatching stopped at the request limit.
    stalled: bool,
}

impl Connection {
    /// Requests read and not yet fully answered: unanswered ones, answers queued, and the
    /// one being sent. A client that does not read its answers fills this, and the
    /// connection is then not read any more (so its answers cannot pile up without bound).
    fn held(&self) -> usize {
        self.unanswered + self.outbox.len() + usize::from(self.sending)
    }
}

/// An acknowledgement waiting for durability. Its connection's slot is not reused before
/// it is answered: it counts in the connection's `unanswered`, and a slot is freed only at 0.
struct PendingAck {
    sequence: u64,
    conn: usize,
    request_id: u64,
    response: Response,
}

/// Serves VBP on `listener` with `shard` (LEU `leu`'s) until `stop` is set. Runs on the
/// calling thread, which must be the one that uses the ring.
pub fn serve(
    listener: TcpListener,
    shard: Shard,
    leu: u16,
    config: ServerConfig,
    stop: Arc<AtomicBool>,
) -> Result<ServeReport, ServeError> {
    let ring = RingDriver::new(&config.ring).map_err(|e| ServeError::Ring(e.to_string()))?;
    let pool = BufferPool::new(config.pool).map_err(|e| ServeError::Pool(e.to_string()))?;
    let mut server = Server {
        ring,
        listener,
        pool,
        validator: LayoutValidator::new(config.frame_size_max_bytes),
        shard,
        leu,
        conns: Vec::new(),
        free: Vec::new(),
        pending: VecDeque::new(),
        accepting: false,
        report: ServeReport::default(),
        config,
    };
    server.run(&stop)?;
    let Server { shard, report, .. } = server;
    shard.close()?;
    Ok(report)
}

/// Fields drop in order: the ring first (cancelling and draining what is in flight), then
/// the sockets and buffers those operations used.
struct Server {
    ring: RingDriver<Op>,
    listener: TcpListener,
    pool: BufferPool,
    validator: LayoutValidator,
    shard: Shard,
    leu: u16,
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    pending: VecDeque<PendingAck>,
    accepting: bool,
    report: ServeReport,
    config: ServerConfig,
}

impl Server {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), ServeError> {
        let mut stopping_since: Option<Instant> = None;
        let mut last_idle_check = Instant::now();
        loop {
            if stopping_since.is_none() && stop.load(Ordering::Acquire) {
                stopping_since = Some(Instant::now());
                for conn in 0..self.conns.len() {
                    if let Some(connection) = self.conns[conn].as_mut() {
                        connection.closing = true;
                    }
                }
            }
            if let Some(since) = stopping_since {
                let drained = self.pending.is_empty()
                    && self
                        .conns
                        .iter()
                        .flatten()
                        .all(|c| !c.sending && c.outbox.is_empty());
                if drained || since.elapsed() > self.config.stop_deadline {
                    break;
                }
            } else if !self.accepting {
                self.arm_accept();
            }
            self.arm_connections();
            let wait = if self.pending.is_empty() && stopping_since.is_none() {
                self.config.idle_wait
            } else {
                self.config.ack_wait
            };
            self.ring
                .submit_and_wait_timeout(1, wait)
                .map_err(|e| ServeError::Ring(e.to_string()))?;
            let mut events = Vec::new();
            self.ring.reap(|completion, owner| {
                let op = match owner {
                    Owner::Continuing(_) => None, // the multishot accept goes on
                    Owner::Finished(op) => Some(op),
                };
                events.push((completion, op));
            });
            for (completion, op) in events {
                self.complete(completion, op);
            }
            self.release_acks();
            if last_idle_check.elapsed() >= IDLE_CHECK_EVERY {
                last_idle_check = Instant::now();
                self.close_idle();
            }
            self.reap_closed();
        }
        self.shard.sync()?;
        Ok(())
    }

    fn arm_accept(&mut self) {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd())).build();
        // SAFETY: the entry refers to the listener, which the server owns for as long as the
        // ring lives (the ring is dropped first: it is declared before nothing else outlives
        // `serve`, and its drop cancels and drains what is in flight).
        if unsafe { self.ring.push(entry, Op::Accept) }.is_ok() {
            self.accepting = true;
        }
    }

    /// Resumes sends the ring refused, and arms a receive on every connection that can
    /// take one.
    fn arm_connections(&mut self) {
        for conn in 0..self.conns.len() {
            if self.conns[conn]
                .as_ref()
                .is_some_and(|c| !c.sending && !c.outbox.is_empty())
            {
                self.send_next(conn);
            }
            let Some(connection) = self.conns[conn].as_mut() else {
                continue;
            };
            if connection.stalled && connection.held() < self.config.requests_per_connection_max {
                // Answers went out: the frames left in the decoder come first.
                self.drain_frames(conn);
            }
            let Some(connection) = self.conns[conn].as_mut() else {
                continue;
            };
            if connection.receiving
                || connection.closing
                || connection.stalled
                || connection.held() >= self.config.requests_per_connection_max
            {
                continue;
            }
            let Ok(mut lease) = self.pool.lease(SizeClass::Standard) else {
                return; // the pool is empty: receives wait for buffers to come back
            };
            let offset = connection.decoder.receive_offset();
            let buffer = &mut lease.as_mut_slice()[offset..];
            let entry = opcode::Recv::new(
                types::Fd(connection.fd.as_raw_fd()),
                buffer.as_mut_ptr(),
                buffer.len() as u32,
            )
            .build();
            // SAFETY: the buffer belongs to the lease, which the operation owns until its
            // completion is reaped; the fd belongs to the connection, which is not closed
            // while an operation on it is in flight.
            match unsafe {
                self.ring.push(
                    entry,
                    Op::Recv {
                        conn,
                        lease,
                        offset,
                    },
                )
            } {
                Ok(op) => {
                    connection.receiving = true;
                    connection.recv_op = Some(op);
                }
                Err(PushError::Busy(_)) => return,
                Err(error) => {
                    tracing::warn!(conn, error = %error_text(&error), "cannot arm a receive");
                    connection.closing = true;
                }
            }
        }
    }

    fn complete(&mut self, completion: vortex_io::Completion, op: Option<Op>) {
        match op {
            None => self.accepted(completion.outcome()),
            Some(Op::Accept) => {
                self.accepting = false; // the multishot accept ended: re-armed next pass
                self.accepted(completion.outcome());
            }
            Some(Op::Recv {
                conn,
                lease,
                offset,
            }) => self.received(conn, lease, offset, completion.outcome()),
            Some(Op::Send { conn, frame, sent }) => self.sent(conn, frame, sent, completion),
        }
    }

    fn accepted(&mut self, outcome: std::io::Result<u32>) {
        let Ok(fd) = outcome else {
            return;
        };
        self.report.accepted += 1;
        // SAFETY: the kernel just gave us this new descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let live = self.conns.iter().flatten().count();
        if live >= self.config.connections_max {
            self.report.refused += 1;
            let refusal = Response::error(
                ErrorCode::Unavailable,
                format!(
                    "connection limit reached ({} connections); retry later",
                    self.config.connections_max
                ),
            );
            if let Ok(frame) = refusal.encode(0) {
                // A fresh socket's send buffer takes a small frame at once; best effort.
                // SAFETY: writes from a live buffer to a descriptor we own.
                let _ = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
            }
            return; // dropping `fd` closes it
        }
        let connection = Connection {
            fd,
            decoder: StreamDecoder::new(self.pool.clone(), self.validator),
            outbox: VecDeque::new(),
            sending: false,
            receiving: false,
            unanswered: 0,
            closing: false,
            recv_op: None,
            last_active: Instant::now(),
            stalled: false,
        };
        match self.free.pop() {
            Some(slot) => self.conns[slot] = Some(connection),
            None => self.conns.push(Some(connection)),
        }
    }

    fn received(
        &mut self,
        conn: usize,
        lease: Lease,
        offset: usize,
        outcome: std::io::Result<u32>,
    ) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.receiving = false;
        connection.recv_op = None;
        connection.last_active = Instant::now();
        let bytes = match outcome {
            Ok(0) | Err(_) => {
                connection.closing = true; // the peer closed, or the socket failed
                return;
            }
            Ok(bytes) => bytes as usize,
        };
        if connection
            .decoder
            .push(lease, offset..offset + bytes)
            .is_err()
        {
            self.close_for_bad_input(conn, None);
            return;
        }
        self.drain_frames(conn);
    }

    /// Dispatches the complete frames the connection's decoder holds, stopping (`stalled`)
    /// while the connection holds `requests_per_connection_max` requests: the rest wait in
    /// the decoder, and no receive is armed, until answers have gone out.
    fn drain_frames(&mut self, conn: usize) {
        loop {
            let limit = self.config.requests_per_connection_max;
            let Some(connection) = self.conns[conn].as_mut() else {
                return;
            };
            connection.stalled = connection.held() >= limit;
            if connection.stalled || connection.closing {
                return;
            }
            let frame = match connection.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => {
                    let response = Response::error(ErrorCode::BadFrame, error.to_string());
                    self.close_for_bad_input(conn, Some((0, response)));
                    return;
                }
            };
            let (request_id, outcome) = match self.validator.request(frame.bytes()) {
                Ok((header, request)) => (
                    header.request_id,
                    dispatch(&mut self.shard, self.leu, request),
                ),
                Err(error) => {
                    let request_id = frame.header().request_id;
                    if error.closes_connection() {
                        self.close_for_bad_input(conn, Some((request_id, error.to_response())));
                        return;
                    }
                    (request_id, Outcome::Ready(error.to_response()))
                }
            };
            if let Some(connection) = self.conns[conn].as_mut() {
                connection.unanswered += 1;
            }
            match outcome {
                Outcome::Ready(response) => self.answer(conn, request_id, &response),
                Outcome::AfterDurable { sequence, response } => {
                    self.pending.push_back(PendingAck {
                        sequence,
                        conn,
                        request_id,
                        response,
                    })
                }
            }
        }
    }

    /// Queues `response` to request `request_id` on `conn`.
    fn answer(&mut self, conn: usize, request_id: u64, response: &Response) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.unanswered = connection.unanswered.saturating_sub(1);
        self.report.answered += 1;
        let frame = match response.encode(request_id) {
            Ok(frame) => frame,
            Err(error) => {
                let fallback = Response::error(ErrorCode::Internal, error.to_string());
                match fallback.encode(request_id) {
                    Ok(frame) => frame,
                    Err(_) => return,
                }
            }
        };
        connection.outbox.push_back((frame, 0));
        self.report.held_peak = self.report.held_peak.max(connection.held());
        self.send_next(conn);
    }

    fn send_next(&mut self, conn: usize) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        if connection.sending {
            return;
        }
        let Some((frame, sent)) = connection.outbox.pop_front() else {
            return;
        };
        self.push_send(conn, frame, sent);
    }

    fn push_send(&mut self, conn: usize, frame: FrameBytes, sent: usize) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        let rest = &frame[sent..];
        let entry = opcode::Send::new(
            types::Fd(connection.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build();
        // SAFETY: the frame is owned by the operation until its completion is reaped (its
        // heap bytes do not move when the `FrameBytes` value moves); the fd stays open while
        // an operation on it is in flight.
        match unsafe { self.ring.push(entry, Op::Send { conn, frame, sent }) } {
            Ok(_) => connection.sending = true,
            Err(PushError::Busy(Op::Send { frame, sent, .. })) => {
                // The ring is full: `arm_connections` tries again on the next pass.
                connection.outbox.push_front((frame, sent));
            }
            Err(_) => connection.closing = true,
        }
    }

    fn sent(
        &mut self,
        conn: usize,
        frame: FrameBytes,
        sent: usize,
        completion: vortex_io::Completion,
    ) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.sending = false;
        connection.last_active = Instant::now();
        match completion.outcome() {
            Ok(bytes) if sent + (bytes as usize) < frame.len() && bytes > 0 => {
                let sent = sent + bytes as usize;
                self.push_send(conn, frame, sent);
            }
            Ok(bytes) if bytes > 0 => self.send_next(conn),
            _ => {
                connection.closing = true;
                connection.outbox.clear();
            }
        }
    }

    /// Sends the acknowledgements whose writes are now durable.
    fn release_acks(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let durable = match self.shard.poll(None) {
            Ok(durable) => durable,
            Err(error) => {
                // The WAL failed: every waiting write is answered with the error.
                let response = error_response(&error);
                while let Some(ack) = self.pending.pop_front() {
                    self.answer(ack.conn, ack.request_id, &response);
                }
                return;
            }
        };
        while self
            .pending
            .front()
            .is_some_and(|ack| ack.sequence <= durable)
        {
            let Some(ack) = self.pending.pop_front() else {
                break;
            };
            self.answer(ack.conn, ack.request_id, &ack.response);
        }
    }

    /// Sends `response` (to request `request_id`) if any, then closes `conn`.
    fn close_for_bad_input(&mut self, conn: usize, response: Option<(u64, Response)>) {
        self.report.closed_for_bad_input += 1;
        if let Some((request_id, response)) = response {
            if let Some(connection) = self.conns[conn].as_mut() {
                connection.unanswered += 1; // answered (and counted down) just below
            }
            self.answer(conn, request_id, &response);
        }
        if let Some(connection) = self.conns[conn].as_mut() {
            connection.closing = true;
        }
    }

    /// Closes connections idle for longer than `idle_timeout`: nothing in flight, nothing
    /// received or sent since.
    fn close_idle(&mut self) {
        let Some(timeout) = self.config.idle_timeout else {
            return;
        };
        for conn in 0..self.conns.len() {
            let Some(connection) = self.conns[conn].as_mut() else {
                continue;
            };
            let idle = !connection.closing
                && connection.unanswered == 0
                && !connection.sending
                && connection.outbox.is_empty()
                && connection.last_active.elapsed() > timeout;
            if idle {
                connection.closing = true;
                self.report.closed_idle += 1;
                if let Some(op) = connection.recv_op {
                    // Its completion (cancelled) ends the receive; the slot is then freed.
                    let _ = self.ring.cancel(op);
                }
            }
        }
    }

    /// Frees the slots of closing connections with nothing in flight and nothing left to
    /// send (dropping the fd closes the socket).
    fn reap_closed(&mut self) {
        for conn in 0..self.conns.len() {
            // `unanswered` counts the acknowledgements still waiting for durability too.
            let done = self.conns[conn].as_ref().is_some_and(|c| {
                c.closing && !c.receiving && !c.sending && c.outbox.is_empty() && c.unanswered == 0
            });
            if done {
                if let Some(connection) = self.conns[conn].take() {
                    // SAFETY: shuts down a descriptor we own; no operation uses it now.
                    unsafe { libc::shutdown(connection.fd.as_raw_fd(), libc::SHUT_RDWR) };
                }
                self.free.push(conn);
            }
        }
    }
}

fn error_text<T>(error: &PushError<T>) -> String {
    match error {
        PushError::Busy(_) => "ring busy".to_owned(),
        PushError::Ring(_, error) => error.to_string(),
    }
}
