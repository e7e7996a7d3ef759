//! One LEU's VBP server: a single-threaded loop over its own io_uring that accepts
//! connections, receives into pool buffers, decodes frames in place, runs them on the LEU's
//! shard ([`crate::dispatch`]) or hands them to the LEUs that own their points
//! ([`crate::gather`], [`crate::handover`]), and sends the answers, write acknowledgements
//! only once the write is durable.
//!
//! What it holds to:
//!
//! - **Bounded**: at most `connections_max` connections (one more is answered with an
//!   `Unavailable` error frame and closed), at most `requests_per_connection_max` requests
//!   of a connection read and not yet fully answered, queued answers included (past that
//!   the connection is not read until answers go out, so a sender that does not read its
//!   answers is slowed down by TCP), and the receive buffers come from the LEU's fixed pool
//!   (when it is empty, receives wait). Requests out to another LEU are bounded by the
//!   queue between the two; past it a request is answered THROTTLED.
//! - **Bad input closes one connection**: a framing error, or a frame the validator says
//!   must close, gets its error frame and the connection is closed; others are unaffected.
//! - **Zero copy**: a frame is read in place from its pool buffer, also by the other LEUs it
//!   is handed to; the buffer returns to the pool when every part of the request has been
//!   answered (a write's, once durable).
//! - **Stop**: when `stop` is set, the loop stops accepting and reading, waits (up to a
//!   deadline) until every LEU of the team has answered what it read, syncs the WAL and
//!   returns.
//!
//! - **Handlers that wait are tasks**: a write's acknowledgement (until the WAL makes it
//!   durable) and a scattered request (until every LEU's part is in) run as `async` tasks on
//!   the LEU's bounded [`Executor`] ([`crate::handlers`]), polled between the loop's passes;
//!   a request that needs no wait is answered where it is read. With every task slot taken
//!   (`handlers_max`), requests are answered THROTTLED before they run.
//!
//! The shard's WAL runs on its own ring, so the loop waits on the network ring with a short
//! timeout while acknowledgements are pending (`ack_wait`) and a longer one when idle
//! (`idle_wait`); another LEU wakes it through an eventfd read armed on the ring.

use crate::dispatch::{dispatch_part, throttled, Outcome};
use crate::executor::Executor;
use crate::gather::{participants, Merge, Ownership};
use crate::handlers::{self, Destination, Waits};
use crate::handover::{Handover, LentFrame, Links, Reply};
use crate::looptime::LoopTimes;
use crate::routing::Ring;
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vortex_io::{OpId, Owner, ProvidedRing, PushError, RingConfig, RingDriver};
use vortex_shard::Shard;
use vortex_vbp::codec::{FrameBytes, Response};
use vortex_vbp::message::ErrorCode;
use vortex_vbp::pool::{BufferPool, Lease, PoolConfig, SizeClass};
use vortex_vbp::stream::{FrameBuf, LentPartial, StreamDecoder, StreamError};
use vortex_vbp::validator::{LayoutValidator, RequestRef};

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
    /// How long the loop keeps polling (without sleeping in the kernel) after its last
    /// piece of work.
    pub busy_poll: Duration,
    /// How long a stop waits for pending acknowledgements and sends.
    pub stop_deadline: Duration,
    /// The receive buffer pool.
    pub pool: PoolConfig,
    /// The ring.
    pub ring: RingConfig,
    /// The largest frame accepted.
    pub frame_size_max_bytes: u32,
    /// Pool buffers lent to the kernel for multishot receives (a provided-buffer ring; a
    /// power of two, at most half the pool's standard buffers). 0, or a kernel without
    /// provided-buffer rings: one pool buffer per armed receive instead.
    pub provided_buffers: u16,
    /// With no write for this long, a MemTable of at least [`IDLE_FLUSH_POINTS`] points is
    /// flushed (searches then walk its index instead of scanning it). `None`: never.
    pub idle_flush_after: Option<Duration>,
    /// With no write for this long, the LEU's segments are merged into one in the
    /// background (a search walks one graph per segment; the output is split into tables
    /// of the store's size target), once per quiet spell (not again until a write comes)
    /// and at most once per `idle_merge_every`. `None`: never.
    pub idle_merge_after: Option<Duration>,
    /// The least time between two idle merges of one LEU: bounds the rewriting a trickle of
    /// writes can cause.
    pub idle_merge_every: Duration,
    /// Slots of each queue between two LEUs (requests one way, replies the other); also
    /// how many requests one LEU may have out to another.
    pub handover_queue: usize,
    /// A connection that began a frame and sent nothing more of it for this long is closed
    /// (it holds a pool buffer): a slowloris bound, whatever `idle_timeout` says.
    pub partial_frame_timeout: Duration,
    /// A connection idle this long (nothing received, nothing in flight) is closed; `None`:
    /// never.
    pub idle_timeout: Option<Duration>,
    /// Client requests of this LEU that may wait at once (for the WAL, for other LEUs'
    /// parts). Past it, a client request that might wait is answered THROTTLED before it
    /// runs. Other LEUs' parts have slots of their own on top (as many as they may have out
    /// to this LEU), so a part is never refused and a scattered write never half applied.
    pub handlers_max: usize,
    /// Idle merges the whole team runs at once (each holds up to the store's
    /// `merged_table_bytes` of vectors in memory while it writes).
    pub idle_merges_at_once: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 1024,
            requests_per_connection_max: 256,
            idle_wait: Duration::from_millis(2),
            ack_wait: Duration::from_micros(100),
            busy_poll: Duration::from_micros(50),
            stop_deadline: Duration::from_secs(5),
            pool: PoolConfig::default(),
            ring: RingConfig::plain(512),
            frame_size_max_bytes: 16 << 20,
            handover_queue: 1024,
            partial_frame_timeout: Duration::from_secs(10),
            idle_flush_after: Some(Duration::from_secs(1)),
            idle_merge_after: Some(Duration::from_secs(5)),
            idle_merge_every: Duration::from_secs(60),
            provided_buffers: 128,
            idle_timeout: Some(Duration::from_secs(300)),
            handlers_max: 16_384,
            idle_merges_at_once: 2,
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
    /// Requests this LEU handed to others (one per other LEU a request needed).
    pub handed_over: u64,
    /// Parts of other LEUs' requests this LEU ran.
    pub served_for_others: u64,
    /// Requests answered THROTTLED because the queue to another LEU was full.
    pub throttled_handover: u64,
    /// Requests (and other LEUs' parts) answered THROTTLED because every handler slot was
    /// taken.
    pub throttled_handlers: u64,
    /// Times the LEU went THROTTLED (free pool buffers or ring slots below the high-water
    /// mark).
    pub throttled_entered: u64,
    /// Time spent THROTTLED, in microseconds.
    pub throttled_us: u64,
    /// Requests answered THROTTLED while the LEU was.
    pub throttled_answers: u64,
    /// Whether receives go into a provided-buffer ring.
    pub provided_buffers: bool,
    /// Connections closed while THROTTLED because they held receive buffers and did not
    /// read their answers.
    pub closed_slow_reader: u64,
    /// Connections closed because a THROTTLED LEU answered nothing for a second (the one
    /// holding the most receive buffers).
    pub closed_overload: u64,
    /// Idle merges started.
    pub idle_merges: u64,
    /// Answers (or their rests) sent by zero-copy send.
    pub sends_zero_copy: u64,
    /// Of those, the ones the kernel copied after all (loopback does).
    pub sends_zero_copy_copied: u64,
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
    /// Another LEU of the team failed, and this one stopped with it.
    #[error("another LEU failed")]
    TeamFailed,
}

/// How often an LEU with no acknowledgement waiting polls its shard for finished
/// background work.
const SHARD_POLL_EVERY: Duration = Duration::from_millis(1);

/// A MemTable smaller than this is left to the exact scan when idle: scanning it costs less
/// than walking one more graph.
pub const IDLE_FLUSH_POINTS: usize = 1000;

/// How often the idle flush and merge are considered.
const MAINTAIN_EVERY: Duration = Duration::from_millis(100);

/// How long, while THROTTLED, a connection holding receive buffers may go without its
/// answers moving before it is closed as a slow reader.
const SLOW_READER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a THROTTLED LEU may go without answering anything before it closes the
/// connection holding the most receive buffers.
const STUCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Handler polls one pass makes at most (the rest wait for the next pass).
const HANDLER_BUDGET: usize = 4096;

/// Parts of other LEUs' requests one pass runs, per sending LEU.
const PEER_BUDGET: usize = 32;

/// How often idle connections are looked for.
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// An operation in flight, owning what the kernel reads or writes.
enum Op {
    Accept {
        listener: usize,
    },
    /// A read of the LEU's eventfd: another LEU queued something.
    Wake {
        _value: Box<u64>,
    },
    Recv {
        conn: usize,
        lease: Lease,
        offset: usize,
    },
    /// A multishot receive into the provided-buffer ring.
    RecvMulti {
        conn: usize,
    },
    /// A receive of the rest of a frame straight into the buffer it is assembled in.
    RecvInto {
        conn: usize,
        lent: LentPartial,
    },
    Send {
        conn: usize,
        frame: FrameBytes,
        sent: usize,
    },
    /// A zero-copy send of a large answer: the kernel sends from the frame's own pages and
    /// posts a notification once it no longer reads them; `result` holds the send's own
    /// completion until then.
    SendZc {
        conn: usize,
        frame: FrameBytes,
        sent: usize,
        result: Option<i32>,
    },
}

/// A completion, with what its operation owned.
enum Event {
    /// A connection from a multishot accept that goes on.
    Accepted,
    /// Bytes (or the end) of a multishot receive into a provided buffer.
    Received { conn: usize, last: bool },
    /// An operation that ended.
    Finished(Op),
    /// A further completion of another multishot operation (none is armed).
    Ignored,
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
    /// The receive in flight is an [`Op::RecvInto`] (not cancelled when reading stops:
    /// it takes no receive buffer and only finishes a frame already begun).
    receiving_into: bool,
    /// When something was last received or sent.
    last_active: Instant,
    /// Complete frames may wait in the decoder: dispatching stopped at the request limit.
    stalled: bool,
    /// The decoder found the pool empty: frames wait until buffers come back.
    starved: bool,
    /// A cancel of the multishot receive was asked for.
    cancelling: bool,
    /// Bytes received (in provided buffers) while the decoder still held earlier ones.
    backlog: VecDeque<(Lease, usize)>,
    /// When a send last made progress (or the outbox was last empty).
    sent_progress: Instant,
    /// The socket is shut down (a slow reader): answers are dropped.
    dead: bool,
}

/// Received buffers a connection may hold before the decoder takes them; past it, its
/// receive is cancelled, so one connection cannot take every buffer lent to the kernel.
const BACKLOG_MAX: usize = 2;

/// Answers with at least this many bytes still to send go out by zero-copy send
/// (`IORING_OP_SEND_ZC`, kernel 6.0): below it, pinning the pages and the extra notification
/// cost more than the copy they save.
const SEND_ZC_MIN: usize = 64 << 10;

/// `IORING_SEND_ZC_REPORT_USAGE`: the notification says whether the kernel copied after
/// all (`IORING_NOTIF_USAGE_ZC_COPIED`; it does for loopback, whose receiver would otherwise
/// hold the sender's pages).
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// How an LEU sends large answers; each refusal by the kernel steps down once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroCopy {
    ReportingUsage,
    Plain,
    Off,
}

/// A frame being assembled with at least this many bytes still to come is finished by
/// receives straight into its buffer ([`Op::RecvInto`]) rather than through receive
/// buffers. Those need no pool buffer, so a connection that holds an assembly buffer always
/// finishes its frame and gives it back: large uploads on many connections cannot wait on
/// one another for receive buffers (they did: concurrent bulk loaders were shed as stuck).
const DIRECT_RECEIVE_MIN: usize = 16 << 10;

impl Connection {
    /// Whether a receive may be armed (or go on) on this connection.
    fn may_read(&self, limit: usize) -> bool {
        !self.closing
            && !self.stalled
            && !self.starved
            && self.backlog.len() < BACKLOG_MAX
            && self.held() < limit
    }

    /// Requests read and not yet fully answered: unanswered ones, answers queued, and the
    /// one being sent. A client that does not read its answers fills this, and the
    /// connection is then not read any more (so its answers cannot pile up without bound).
    fn held(&self) -> usize {
        self.unanswered + self.outbox.len() + usize::from(self.sending)
    }
}

/// Serves VBP on `listeners` with `shard` (LEU `links.leu`'s) until `stop` is set, handing
/// requests to the rest of the team through `links` ([`Links::solo`] for an LEU alone).
/// Runs on the calling thread, which must be the one that uses the ring.
pub fn serve(
    listeners: Vec<TcpListener>,
    shard: Shard,
    links: Links,
    config: ServerConfig,
    stop: Arc<AtomicBool>,
) -> Result<ServeReport, ServeError> {
    serve_gated(listeners, shard, links, config, stop, Box::new(|| true))
}

/// Called once the LEU has everything it needs to serve (its ring, pool and executor) and
/// before it accepts anything: `false` closes the shard unserved (another LEU failed to
/// start).
pub type Gate = Box<dyn FnOnce() -> bool>;

/// [`serve`], passing `gate` before the first accept: how the appliance starts no LEU
/// until every LEU could set up, so that a failed start has answered nobody.
pub fn serve_gated(
    listeners: Vec<TcpListener>,
    shard: Shard,
    links: Links,
    config: ServerConfig,
    stop: Arc<AtomicBool>,
    gate: Gate,
) -> Result<ServeReport, ServeError> {
    let team = Arc::clone(&links.team);
    let served = serve_inner(listeners, shard, links, config, &stop, gate);
    if served.is_err() {
        team.failed.store(true, Ordering::Release);
        for wake in &team.wakes {
            wake.signal();
        }
    }
    served
}

fn serve_inner(
    listeners: Vec<TcpListener>,
    shard: Shard,
    links: Links,
    config: ServerConfig,
    stop: &AtomicBool,
    gate: Gate,
) -> Result<ServeReport, ServeError> {
    let mut ring = RingDriver::new(&config.ring).map_err(|e| ServeError::Ring(e.to_string()))?;
    let pool = BufferPool::new(config.pool).map_err(|e| ServeError::Pool(e.to_string()))?;
    // Under `memory.lock = "try"` with a finite limit, the pool is locked as far as this
    // LEU's share of the limit allows, receive buffers first (otherwise this locks nothing:
    // all of it is locked already, or none should be).
    let mut share = vortex_io::HotShare::take(links.leus());
    pool.for_each_free_buffer(|buffer| {
        share.lock(buffer);
    });
    let provided = provide(&mut ring, &config);
    let leus = links.leus();
    // The LEU's own port is its last listener's (the shared port, if any, comes first).
    let own_port = listeners
        .last()
        .and_then(|listener| listener.local_addr().ok())
        .map_or(0, |address| address.port());
    let report = ServeReport {
        provided_buffers: provided.is_some(),
        ..ServeReport::default()
    };
    // Client requests get `handlers_max` slots; the parts other LEUs hand over get as many
    // as they may have out to this one.
    let peer_slots = (leus - 1) * links.window();
    let slots = (config.handlers_max.max(1) + peer_slots).min(crate::executor::TASKS_MAX);
    let executor =
        Executor::new(slots).ok_or_else(|| ServeError::Pool("no handler slots".to_owned()))?;
    if !gate() {
        shard.close()?;
        return Ok(report);
    }
    let mut server = Server {
        ring,
        executor,
        waits: Rc::new(Waits::default()),
        provided,
        throttled: None,
        refused_seen: 0,
        loop_times: LoopTimes::default(),
        request_times: LoopTimes::default(),
        working_since: None,
        last_shard_poll: Instant::now(),
        stuck_since: None,
        stopping: false,
        armed_receives: 0,
        last_activity: Instant::now(),
        last_write: Instant::now(),
        last_maintain: Instant::now(),
        last_merge: None,
        merged_since_write: false,
        errors_at_merge: 0,
        merge_turn: false,
        zero_copy: ZeroCopy::ReportingUsage,
        accepting: vec![false; listeners.len()],
        own_port,
        listeners,
        pool,
        validator: LayoutValidator::new(config.frame_size_max_bytes),
        shard,
        leu: links.leu,
        window: links.window(),
        out_to: vec![0; leus],
        unsent_replies: (0..leus).map(|_| VecDeque::new()).collect(),
        links,
        wake_armed: false,
        conns: Vec::new(),
        free: Vec::new(),
        report,
        config,
    };
    let ran = server.run(stop);
    server.release_merge_turn();
    server.waits.leak_frames();
    server.pressure(true);
    ran?;
    let Server { shard, report, .. } = server;
    shard.close()?;
    Ok(report)
}

/// The buffer group of every LEU's provided-buffer ring (one ring per io_uring).
const BUFFER_GROUP: u16 = 1;

/// Registers the provided-buffer ring `config` asks for, or `None` (with a log line) where
/// the kernel has none or the pool is too small: receives then lease a buffer each.
fn provide(ring: &mut RingDriver<Op>, config: &ServerConfig) -> Option<Provided> {
    let entries = config.provided_buffers;
    if entries == 0 {
        return None;
    }
    if !entries.is_power_of_two() || usize::from(entries) * 2 > config.pool.buffer_count {
        tracing::warn!(
            entries,
            pool = config.pool.buffer_count,
            "provided buffers must be a power of two and at most half the pool; receiving \
             into leased buffers instead"
        );
        return None;
    }
    match ProvidedRing::register(ring, entries, BUFFER_GROUP) {
        Ok(provided) => Some(Provided {
            ring: provided,
            leases: (0..entries).map(|_| None).collect(),
            empty: (0..entries).rev().collect(),
        }),
        Err(error) => {
            tracing::info!(%error, "no provided-buffer ring (Linux 5.19+); receiving into leased buffers");
            None
        }
    }
}

/// The pool buffers lent to the kernel through a provided-buffer ring.
struct Provided {
    ring: ProvidedRing,
    /// The lease of each buffer id while the kernel holds it.
    leases: Vec<Option<Lease>>,
    /// Buffer ids with no buffer in the kernel.
    empty: Vec<u16>,
}

/// Fields drop in order: the ring first (cancelling and draining what is in flight), then
/// the sockets and buffers those operations used.
struct Server {
    ring: RingDriver<Op>,
    /// The handlers that wait (their frames return to the pool as they drop).
    executor: Executor,
    waits: Rc<Waits>,
    provided: Option<Provided>,
    /// Since when the LEU is THROTTLED.
    throttled: Option<Instant>,
    /// Pool refusals seen by the last pass.
    refused_seen: u64,
    /// The time each pass worked (its wait excluded).
    loop_times: LoopTimes,
    /// Each request's time from its frame taken off the connection to its answer queued.
    request_times: LoopTimes,
    /// When the current pass's wait returned.
    working_since: Option<Instant>,
    /// When the shard was last polled.
    last_shard_poll: Instant,
    /// The stop has begun: connections still accepted are closed at once.
    stopping: bool,
    /// Connections with a receive armed (counted each pass): they stay in flight on the
    /// ring for as long as the connection is open, so they are not load.
    armed_receives: usize,
    /// While THROTTLED: since when no request was answered, and the count then.
    stuck_since: Option<(Instant, u64)>,
    /// When the loop last had something to do (busy polling goes on for a while after).
    last_activity: Instant,
    /// When this LEU last ran a write (an upsert or delete part).
    last_write: Instant,
    /// When the idle flush and merge were last considered.
    last_maintain: Instant,
    /// When this LEU last started an idle merge.
    last_merge: Option<Instant>,
    /// How large answers go out: zero-copy send asking the kernel to report copies, then
    /// without that (kernels 6.0 and 6.1 refuse the flag), then by copy.
    zero_copy: ZeroCopy,
    /// No write ran since the last idle merge started: another would rewrite the same
    /// data (its output can be several tables, so the segment count alone does not say).
    merged_since_write: bool,
    /// The store's background errors when the last idle merge started: more since, and the
    /// merge may have failed, so it is due again.
    errors_at_merge: u64,
    /// This LEU holds one of the team's idle-merge turns (its merge runs).
    merge_turn: bool,
    listeners: Vec<TcpListener>,
    accepting: Vec<bool>,
    /// This LEU's own port, in stats (shard-aware clients connect to it).
    own_port: u16,
    pool: BufferPool,
    validator: LayoutValidator,
    shard: Shard,
    leu: u16,
    links: Links,
    /// Requests one LEU may have out to another.
    window: usize,
    /// Requests out to each LEU.
    out_to: Vec<usize>,
    /// Replies to each LEU its queue had no room for (bounded by the window).
    unsent_replies: Vec<VecDeque<Reply>>,
    wake_armed: bool,
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    report: ServeReport,
    config: ServerConfig,
}

impl Server {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), ServeError> {
        let mut stopping_since: Option<Instant> = None;
        let mut quiet = false;
        let mut last_idle_check = Instant::now();
        let leus = self.links.leus();
        loop {
            if self.links.team.failed.load(Ordering::Acquire) {
                return Err(ServeError::TeamFailed);
            }
            if stopping_since.is_none() && stop.load(Ordering::Acquire) {
                stopping_since = Some(Instant::now());
                self.stopping = true;
                for conn in 0..self.conns.len() {
                    if let Some(connection) = self.conns[conn].as_mut() {
                        connection.closing = true;
                    }
                }
            }
            if let Some(since) = stopping_since {
                // Quiet: nothing of this LEU's own in flight. It goes on running the
                // other LEUs' parts until the whole team is quiet.
                let drained = self.executor.live() == 0
                    && self.unsent_replies.iter().all(VecDeque::is_empty)
                    && self
                        .conns
                        .iter()
                        .flatten()
                        .all(|c| !c.sending && c.outbox.is_empty());
                if drained && !quiet {
                    quiet = true;
                    self.links.team.quiet.fetch_add(1, Ordering::AcqRel);
                    for wake in &self.links.team.wakes {
                        wake.signal();
                    }
                }
                let team_quiet = self.links.team.quiet.load(Ordering::Acquire) >= leus;
                if (quiet && team_quiet) || since.elapsed() > self.config.stop_deadline {
                    break;
                }
            } else {
                self.arm_accept();
            }
            if !self.wake_armed {
                self.arm_wake();
            }
            self.pressure(false);
            self.refill();
            self.arm_connections();
            self.wait(stopping_since.is_some())?;
            let mut events = Vec::new();
            let reaped = self.ring.reap(|completion, owner| {
                let event = match owner {
                    // A multishot accept goes on.
                    Owner::Continuing(Op::Accept { .. }) => Event::Accepted,
                    Owner::Continuing(Op::RecvMulti { conn }) => Event::Received {
                        conn: *conn,
                        last: false,
                    },
                    Owner::Finished(Op::RecvMulti { conn }) => Event::Received { conn, last: true },
                    // A zero-copy send's own completion; its notification ends it.
                    Owner::Continuing(Op::SendZc { result, .. }) => {
                        *result = Some(completion.result);
                        Event::Ignored
                    }
                    Owner::Continuing(_) => Event::Ignored,
                    Owner::Finished(op) => Event::Finished(op),
                };
                events.push((completion, event));
            });
            if reaped > 0 || self.links.has_inbound() {
                self.last_activity = Instant::now();
            }
            for (completion, op) in events {
                self.complete(completion, op);
            }
            self.serve_peers();
            self.take_replies();
            self.release_acks();
            self.run_handlers();
            self.flush_replies();
            if last_idle_check.elapsed() >= IDLE_CHECK_EVERY {
                last_idle_check = Instant::now();
                self.close_idle();
            }
            self.reap_closed();
        }
        self.shard.sync()?;
        Ok(())
    }

    /// Enters or leaves the THROTTLED state. High water: the pool refused a buffer since
    /// the last pass (a frame could not be assembled), at most 1/8 of its standard buffers
    /// are free, or 3/4 of the ring's operation slots are in flight. Low water: no refusal
    /// and no connection waiting for a buffer, 1/4 free, at most half the slots in flight.
    /// While THROTTLED the LEU lends the kernel no more receive buffers and arms no
    /// receives (so the kernel's socket buffers fill and TCP closes the senders' windows),
    /// and answers the requests it has already read with THROTTLED.
    /// `ending`: the loop is over; the time so far is counted.
    fn pressure(&mut self, ending: bool) {
        let pool = self.pool.stats(SizeClass::Standard);
        let total = self.pool.buffer_count(SizeClass::Standard);
        let refused = pool.exhausted
            + self.pool.stats(SizeClass::Medium).exhausted
            + self.pool.stats(SizeClass::Large).exhausted;
        let starving = refused > self.refused_seen;
        self.refused_seen = refused;
        // Armed receives (one per open connection) and accepts stay in flight while idle:
        // only the rest (sends, cancels, the wake read) is the ring's load.
        self.armed_receives = self.conns.iter().flatten().filter(|c| c.receiving).count();
        let standing = self.armed_receives + self.listeners.len();
        let slots = (self.ring.inflight() + self.ring.capacity_left()) as usize;
        let slots = slots.saturating_sub(standing).max(1);
        let inflight = (self.ring.inflight() as usize).saturating_sub(standing);
        // The kernel has no buffer to receive into and the pool is at its reserve: no
        // connection can be read until buffers come back.
        let receives_starved =
            self.provided.is_some() && self.lent() == 0 && pool.free * 4 <= total;
        let high =
            starving || receives_starved || pool.free * 8 <= total || inflight * 4 >= slots * 3;
        match self.throttled {
            None if !ending && high => {
                self.throttled = Some(Instant::now());
                self.report.throttled_entered += 1;
                tracing::debug!(leu = self.leu, free = pool.free, inflight, "THROTTLED");
            }
            Some(since)
                if ending
                    || (!starving
                        && pool.free * 4 >= total
                        && inflight * 2 <= slots
                        && !self.conns.iter().flatten().any(|c| c.starved)) =>
            {
                self.report.throttled_us += since.elapsed().as_micros() as u64;
                self.throttled = None;
                tracing::debug!(
                    leu = self.leu,
                    free = pool.free,
                    inflight,
                    "no longer THROTTLED"
                );
            }
            _ => {}
        }
    }

    /// Lends the kernel pool buffers for the provided-buffer ring's empty slots, keeping a
    /// quarter of the pool for assembling frames; none while THROTTLED.
    fn refill(&mut self) {
        if self.throttled.is_some() {
            return;
        }
        let reserve = self.pool.buffer_count(SizeClass::Standard) / 4;
        let Some(provided) = self.provided.as_mut() else {
            return;
        };
        let mut pushed = false;
        let mut free = self.pool.stats(SizeClass::Standard).free;
        while let Some(&id) = provided.empty.last() {
            if free <= reserve {
                break;
            }
            free -= 1;
            let Ok(mut lease) = self.pool.lease(SizeClass::Standard) else {
                break;
            };
            let buffer = lease.as_mut_slice();
            let (address, len) = (buffer.as_mut_ptr(), buffer.len() as u32);
            // SAFETY: the lease is kept in `leases[id]`, untouched, until the kernel hands
            // buffer `id` back in a completion; the ring is dropped before the leases.
            unsafe { provided.ring.push(address, len, id) };
            provided.leases[usize::from(id)] = Some(lease);
            provided.empty.pop();
            pushed = true;
        }
        if pushed {
            provided.ring.publish();
        }
    }

    /// Buffers the kernel holds for receives.
    fn lent(&self) -> usize {
        self.provided
            .as_ref()
            .map_or(0, |p| p.leases.len() - p.empty.len())
    }

    /// Submits, and waits for completions unless another LEU already queued something.
    fn wait(&mut self, stopping: bool) -> Result<(), ServeError> {
        if let Some(since) = self.working_since {
            self.loop_times.record(since.elapsed().as_nanos() as u64);
        }
        let wake = &self.links.team.wakes[usize::from(self.leu)];
        wake.going_to_sleep();
        let busy = self.links.has_inbound()
            || self.executor.has_ready()
            || self.unsent_replies.iter().any(|q| !q.is_empty())
            || self.last_activity.elapsed() < self.config.busy_poll;
        let submitted = if busy {
            self.ring.submit()
        } else {
            let wait = if !self.waits.acks_waiting() && !stopping {
                self.config.idle_wait
            } else {
                self.config.ack_wait
            };
            self.ring.submit_and_wait_timeout(1, wait)
        };
        wake.awake();
        self.working_since = Some(Instant::now());
        submitted.map_err(|e| ServeError::Ring(e.to_string()))?;
        Ok(())
    }

    fn arm_accept(&mut self) {
        for listener in 0..self.listeners.len() {
            if self.accepting[listener] {
                continue;
            }
            let fd = self.listeners[listener].as_raw_fd();
            let entry = opcode::AcceptMulti::new(types::Fd(fd)).build();
            // SAFETY: the entry refers to the listener, which the server owns for as long as
            // the ring lives (the ring is dropped first, and its drop cancels and drains
            // what is in flight).
            if unsafe { self.ring.push(entry, Op::Accept { listener }) }.is_ok() {
                self.accepting[listener] = true;
            }
        }
    }

    /// Arms a read of the LEU's eventfd, which another LEU writes to wake it.
    fn arm_wake(&mut self) {
        let mut value = Box::new(0u64);
        let fd = self.links.team.wakes[usize::from(self.leu)].fd.as_raw_fd();
        let entry = opcode::Read::new(
            types::Fd(fd),
            (&raw mut *value).cast(),
            std::mem::size_of::<u64>() as u32,
        )
        .build();
        // SAFETY: the operation owns the boxed u64 it reads into until its completion is
        // reaped; the eventfd belongs to the team, which outlives the ring.
        if unsafe { self.ring.push(entry, Op::Wake { _value: value }) }.is_ok() {
            self.wake_armed = true;
        }
    }

    /// Resumes sends the ring refused, goes on with frames that waited, and arms a receive
    /// on every connection that can take one (cancelling the multishot receive of one that
    /// cannot).
    fn arm_connections(&mut self) {
        let limit = self.config.requests_per_connection_max;
        let lent = self.lent();
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
            let waiting = (connection.stalled && connection.held() < limit)
                || connection.starved
                || (!connection.backlog.is_empty() && connection.held() < limit);
            if waiting {
                // Answers went out, or buffers came back: the frames already read first.
                self.drain_frames(conn);
            }
            let Some(connection) = self.conns[conn].as_mut() else {
                continue;
            };
            let may_read = connection.may_read(limit);
            if connection.receiving {
                if !may_read {
                    self.stop_receiving(conn);
                }
                continue;
            }
            if !connection.closing && connection.backlog.is_empty() {
                // Even THROTTLED: finishing a frame takes no buffer and gives one back.
                // THROTTLED, no receive buffer is lent, so any frame begun is finished so.
                let min_missing = match self.throttled {
                    Some(_) => 1,
                    None => DIRECT_RECEIVE_MIN,
                };
                if let Some(lent) = connection.decoder.lend_partial(min_missing) {
                    if !self.receive_into(conn, lent) {
                        return; // the ring is full: next pass
                    }
                    continue;
                }
            }
            if !may_read || self.throttled.is_some() {
                continue;
            }
            let fd = types::Fd(connection.fd.as_raw_fd());
            if self.provided.is_some() {
                if lent == 0 {
                    continue; // it would end at once with ENOBUFS: wait for buffers
                }
                let entry = opcode::RecvMulti::new(fd, BUFFER_GROUP).build();
                // SAFETY: the kernel writes only into provided buffers, kept alive in
                // `Provided::leases`; the fd stays open while an operation on it is in
                // flight.
                match unsafe { self.ring.push(entry, Op::RecvMulti { conn }) } {
                    Ok(op) => {
                        connection.receiving = true;
                        connection.cancelling = false;
                        connection.recv_op = Some(op);
                    }
                    Err(PushError::Busy(_)) => return,
                    Err(error) => {
                        tracing::warn!(conn, error = %error_text(&error), "cannot arm a receive");
                        connection.closing = true;
                    }
                }
                continue;
            }
            let Ok(mut lease) = self.pool.lease(SizeClass::Standard) else {
                return; // the pool is empty: receives wait for buffers to come back
            };
            let offset = connection.decoder.receive_offset();
            let buffer = &mut lease.as_mut_slice()[offset..];
            let entry = opcode::Recv::new(fd, buffer.as_mut_ptr(), buffer.len() as u32).build();
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

    fn complete(&mut self, completion: vortex_io::Completion, event: Event) {
        match event {
            Event::Ignored => {}
            Event::Accepted => self.accepted(completion.outcome()),
            Event::Received { conn, last } => self.received_provided(conn, last, completion),
            Event::Finished(Op::RecvMulti { .. }) => {} // mapped to `Received` when reaped
            Event::Finished(Op::Accept { listener }) => {
                // The multishot accept ended: re-armed next pass.
                self.accepting[listener] = false;
                self.accepted(completion.outcome());
            }
            Event::Finished(Op::Wake { .. }) => self.wake_armed = false,
            Event::Finished(Op::Recv {
                conn,
                lease,
                offset,
            }) => self.received(conn, lease, offset, completion.outcome()),
            Event::Finished(Op::RecvInto { conn, lent }) => {
                self.received_into(conn, lent, completion.outcome())
            }
            Event::Finished(Op::Send { conn, frame, sent }) => {
                self.sent(conn, frame, sent, completion.outcome())
            }
            Event::Finished(Op::SendZc {
                conn,
                frame,
                sent,
                result,
            }) => self.sent_zero_copy(conn, frame, sent, result, completion),
        }
    }

    fn accepted(&mut self, outcome: std::io::Result<u32>) {
        let Ok(fd) = outcome else {
            return;
        };
        self.report.accepted += 1;
        // SAFETY: the kernel just gave us this new descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if self.stopping {
            // A multishot accept may still deliver after the stop: not served (closed).
            self.report.refused += 1;
            return;
        }
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
            receiving_into: false,
            last_active: Instant::now(),
            stalled: false,
            starved: false,
            cancelling: false,
            backlog: VecDeque::new(),
            sent_progress: Instant::now(),
            dead: false,
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

    /// Arms a receive of the rest of the connection's frame straight into its buffer;
    /// false (the frame given back to the decoder) when the ring has no room.
    fn receive_into(&mut self, conn: usize, mut lent: LentPartial) -> bool {
        let Some(connection) = self.conns[conn].as_mut() else {
            return true;
        };
        let fd = types::Fd(connection.fd.as_raw_fd());
        let missing = lent.missing();
        let entry = opcode::Recv::new(fd, missing.as_mut_ptr(), missing.len() as u32).build();
        // SAFETY: the buffer belongs to the lent frame's lease, which the operation owns
        // until its completion is reaped (moving the lease does not move the buffer); the
        // fd stays open while an operation on it is in flight.
        match unsafe { self.ring.push(entry, Op::RecvInto { conn, lent }) } {
            Ok(op) => {
                connection.receiving = true;
                connection.receiving_into = true;
                connection.cancelling = false;
                connection.recv_op = Some(op);
                true
            }
            Err(PushError::Busy(Op::RecvInto { lent, .. })) => {
                connection.decoder.return_partial(lent, 0);
                false
            }
            Err(error) => {
                tracing::warn!(conn, error = %error_text(&error), "cannot arm a receive");
                if let PushError::Ring(Op::RecvInto { lent, .. }, _) = error {
                    connection.decoder.return_partial(lent, 0);
                }
                connection.closing = true;
                true
            }
        }
    }

    /// The end of a receive straight into a frame's buffer: the frame goes back to the
    /// decoder with what came (finished, or waiting for the next such receive).
    fn received_into(&mut self, conn: usize, lent: LentPartial, outcome: std::io::Result<u32>) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return; // the frame's buffer goes back to the pool
        };
        connection.receiving = false;
        connection.receiving_into = false;
        connection.recv_op = None;
        if connection.dead {
            return; // killed: its decoder is a fresh one, the frame is dropped
        }
        match outcome {
            Ok(0) => {
                connection.decoder.return_partial(lent, 0);
                connection.closing = true; // the peer closed mid-frame
            }
            Ok(bytes) => {
                connection.last_active = Instant::now();
                connection.decoder.return_partial(lent, bytes as usize);
                self.drain_frames(conn);
            }
            Err(error) => {
                connection.decoder.return_partial(lent, 0);
                if error.raw_os_error() != Some(libc::ECANCELED) {
                    connection.closing = true; // the socket failed
                }
            }
        }
    }

    /// Cancels the connection's multishot receive (its last completion ends it; it is
    /// re-armed once the connection may read again).
    fn stop_receiving(&mut self, conn: usize) {
        if self.provided.is_none() {
            return; // a single receive ends by itself
        }
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        if connection.receiving && !connection.cancelling && !connection.receiving_into {
            if let Some(op) = connection.recv_op {
                // A refused cancel (a full submission queue) is tried again next pass.
                connection.cancelling = self.ring.cancel(op).is_ok();
            }
        }
    }

    /// A completion of a multishot receive: bytes in a provided buffer, or its end.
    fn received_provided(&mut self, conn: usize, last: bool, completion: vortex_io::Completion) {
        let lease = completion.buffer_id().and_then(|id| {
            let provided = self.provided.as_mut()?;
            let lease = provided.leases.get_mut(usize::from(id))?.take()?;
            provided.empty.push(id);
            Some(lease)
        });
        let Some(connection) = self.conns[conn].as_mut() else {
            return; // the lease, if any, goes back to the pool
        };
        if last {
            connection.receiving = false;
            connection.cancelling = false;
            connection.recv_op = None;
        }
        match completion.outcome() {
            Ok(0) => connection.closing = true, // the peer closed
            Ok(bytes) => {
                connection.last_active = Instant::now();
                let Some(lease) = lease else {
                    connection.closing = true; // bytes without a buffer: not from us
                    return;
                };
                if connection.closing {
                    return;
                }
                connection.backlog.push_back((lease, bytes as usize));
                self.drain_frames(conn);
                let limit = self.config.requests_per_connection_max;
                if self.conns[conn].as_ref().is_some_and(|c| {
                    !c.may_read(limit)
                        || c.decoder
                            .partial_missing()
                            .is_some_and(|missing| missing >= DIRECT_RECEIVE_MIN)
                }) {
                    // At its limit, or bytes waiting: no more buffers for this connection.
                    // Or a large frame begun: its rest is received straight into it.
                    self.stop_receiving(conn);
                }
            }
            // Out of buffers: re-armed once the LEU lends more. Cancelled: by us.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOBUFS | libc::ECANCELED)) => {
            }
            Err(_) => connection.closing = true, // the socket failed
        }
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
            connection.starved = false;
            if connection.stalled || connection.closing {
                return;
            }
            let frame = match connection.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // The decoder is drained: the next bytes received, if any wait.
                    let Some((lease, bytes)) = connection.backlog.pop_front() else {
                        return;
                    };
                    if connection.decoder.push(lease, 0..bytes).is_err() {
                        self.close_for_bad_input(conn, None);
                        return;
                    }
                    continue;
                }
                Err(StreamError::Pool(_)) => {
                    // No buffer to assemble a frame in; no byte was lost: go on later.
                    connection.starved = true;
                    return;
                }
                Err(error) => {
                    let response = Response::error(ErrorCode::BadFrame, error.to_string());
                    self.close_for_bad_input(conn, Some((0, response)));
                    return;
                }
            };
            let request_id = frame.header().request_id;
            if let Some(connection) = self.conns[conn].as_mut() {
                connection.unanswered += 1;
            }
            let to = Destination::Client {
                conn,
                request_id,
                since: Instant::now(),
            };
            if self.throttled.is_some() {
                self.report.throttled_answers += 1;
                let reason = "this core is overloaded (receive buffers or ring slots); retry";
                self.deliver(to, throttled(reason));
                continue;
            }
            match self.validator.request(frame.bytes()) {
                Ok((_, request)) => {
                    let needed = participants(&request, self.links.ring.as_ref(), self.leu);
                    let alone = needed
                        .iter()
                        .enumerate()
                        .all(|(leu, &needed)| needed == (leu == usize::from(self.leu)));
                    let writes = matches!(request, RequestRef::Upsert(_) | RequestRef::Delete(_));
                    if (writes || !alone) && self.client_slots_taken() {
                        // It would wait, and no more client requests may.
                        self.report.throttled_handlers += 1;
                        let reason = "too many requests wait on this core (handlers_max); retry";
                        self.deliver(to, throttled(reason));
                        continue;
                    }
                    if alone {
                        let outcome = self.run_part(request);
                        self.settle(to, outcome, Some(frame));
                    } else {
                        self.scatter(to, &frame, request, &needed);
                    }
                }
                Err(error) => {
                    if error.closes_connection() {
                        if let Some(connection) = self.conns[conn].as_mut() {
                            connection.unanswered -= 1; // counted again below
                        }
                        self.close_for_bad_input(conn, Some((request_id, error.to_response())));
                        return;
                    }
                    self.deliver(to, error.to_response());
                }
            }
        }
    }

    /// Runs this LEU's part of `request` on its shard.
    fn run_part(&mut self, request: vortex_vbp::validator::RequestRef<'_>) -> Outcome {
        // The server's counters go into stats answers only (counting them costs a scan).
        let counters = if matches!(request, vortex_vbp::validator::RequestRef::Stats) {
            self.counters()
        } else {
            Vec::new()
        };
        let counters: Vec<(&str, u64)> = counters
            .iter()
            .map(|(name, value)| (name.as_str(), *value))
            .collect();
        let ring: &Ring = &self.links.ring;
        let ownership = Ownership {
            ring: Some(ring),
            leu: self.leu,
        };
        dispatch_part(&mut self.shard, ownership, &counters, request)
    }

    /// This LEU's own counters (docs/DATAPLANE.md), loop-time buckets included.
    fn counters(&self) -> Vec<(String, u64)> {
        let live = self.conns.iter().flatten().count() as u64;
        let throttled_now = self
            .throttled
            .map_or(0, |since| since.elapsed().as_micros() as u64);
        let named = [
            ("port", u64::from(self.own_port)),
            ("leus", self.links.leus() as u64),
            ("vnodes", u64::from(self.links.ring.vnodes())),
            ("connections", live),
            ("connections_accepted", self.report.accepted),
            ("requests_answered", self.report.answered),
            ("handed_over", self.report.handed_over),
            ("served_for_others", self.report.served_for_others),
            ("throttled", u64::from(self.throttled.is_some())),
            ("throttled_entered", self.report.throttled_entered),
            ("throttled_us", self.report.throttled_us + throttled_now),
            ("throttled_answers", self.report.throttled_answers),
            ("throttled_handover", self.report.throttled_handover),
            ("throttled_handlers", self.report.throttled_handlers),
            ("handlers_waiting", self.executor.live() as u64),
            ("closed_slow_reader", self.report.closed_slow_reader),
            ("closed_overload", self.report.closed_overload),
            ("idle_merges", self.report.idle_merges),
            ("sends_zero_copy", self.report.sends_zero_copy),
            ("sends_zero_copy_copied", self.report.sends_zero_copy_copied),
            (
                "idle_merge_due",
                u64::from(self.idle_merge_wanted(&self.shard.stats())),
            ),
            (
                "pool_free_buffers",
                self.pool.stats(SizeClass::Standard).free as u64,
            ),
            ("receive_buffers_lent", self.lent() as u64),
            ("ring_inflight", u64::from(self.ring.inflight())),
            ("request_p50_ns", self.request_times.quantile_ns(0.5)),
            ("request_p99_ns", self.request_times.quantile_ns(0.99)),
            ("request_p999_ns", self.request_times.quantile_ns(0.999)),
            ("request_max_ns", self.request_times.max_ns()),
            ("loop_iterations", self.loop_times.count()),
            ("loop_p50_ns", self.loop_times.quantile_ns(0.5)),
            ("loop_p99_ns", self.loop_times.quantile_ns(0.99)),
            ("loop_p999_ns", self.loop_times.quantile_ns(0.999)),
            ("loop_max_ns", self.loop_times.max_ns()),
        ];
        let mut counters: Vec<(String, u64)> = named
            .iter()
            .map(|&(name, value)| (name.to_owned(), value))
            .collect();
        counters.extend(
            self.loop_times
                .buckets()
                .map(|(upper, count)| (format!("loop_le_ns_{upper}"), count)),
        );
        counters
    }

    /// Sends an answer now, or starts the handler that sends it once its write is durable
    /// (keeping the request's frame, if given, leased until then). The caller made sure a
    /// handler slot is free.
    fn settle(&mut self, to: Destination, outcome: Outcome, frame: Option<FrameBuf>) {
        match outcome {
            Outcome::Ready(response) => self.deliver(to, response),
            Outcome::AfterDurable { sequence, response } => {
                self.wrote(sequence);
                let waits = Rc::clone(&self.waits);
                let task = handlers::acknowledge(waits, to, sequence, response, frame);
                if let Err(full) = self.executor.spawn(task) {
                    let lost = Response::error(ErrorCode::Internal, full.to_string());
                    self.deliver(to, lost);
                }
            }
        }
    }

    /// Whether every handler slot for client requests is taken (the rest are other LEUs').
    fn client_slots_taken(&self) -> bool {
        self.executor.live() >= self.config.handlers_max.max(1)
    }

    /// A write part ran with WAL `sequence`: its acknowledgement waits for it, the LEU is
    /// not idle, and an idle merge is due again.
    fn wrote(&mut self, sequence: u64) {
        self.waits.expect(sequence);
        self.last_write = Instant::now();
        self.merged_since_write = false;
    }

    /// Hands `frame` to the other LEUs in `needed`, runs this LEU's part if it has one, and
    /// gathers the parts into one answer to the client `to`.
    fn scatter(
        &mut self,
        to: Destination,
        frame: &FrameBuf,
        request: vortex_vbp::validator::RequestRef<'_>,
        needed: &[bool],
    ) {
        let me = usize::from(self.leu);
        let full = needed
            .iter()
            .enumerate()
            .any(|(leu, &needed)| needed && leu != me && self.out_to[leu] >= self.window);
        if full {
            self.report.throttled_handover += 1;
            self.deliver(to, throttled("the queue to another core is full; retry"));
            return;
        }
        // The gather keeps the frame until every part is in: the other LEUs read it in place.
        let token = self.waits.open(Some(frame.clone()));
        let merge = Merge::new(&request);
        let waiting = needed.iter().filter(|&&n| n).count();
        // This LEU's part first, from the request already validated; the gather's task
        // waits for it if it is a write.
        let local = needed[me].then(|| self.run_part(request));
        if let Some(Outcome::AfterDurable { sequence, .. }) = local {
            self.wrote(sequence);
        }
        for (leu, _) in needed
            .iter()
            .enumerate()
            .filter(|&(leu, &n)| n && leu != me)
        {
            // SAFETY: the gather opened above keeps the frame's buffer until every part is
            // in (or leaks it if the loop ends first: `Waits::leak_frames`, or if its task
            // cannot start: `Waits::abandon`); nothing writes to it.
            let bytes = unsafe { LentFrame::lend(frame.bytes()) };
            let handover = Handover {
                token,
                frame: bytes,
            };
            // The window keeps this below the queue's capacity: a push does not fail.
            let pushed = self.links.requests_out[leu]
                .as_mut()
                .is_some_and(|queue| queue.push(handover).is_ok());
            if pushed {
                self.out_to[leu] += 1;
                self.report.handed_over += 1;
                self.links.team.wakes[leu].after_push();
            } else {
                let lost = Response::error(ErrorCode::Internal, "cannot reach another core");
                self.waits.add_part(token, leu as u16, lost);
            }
        }
        let waits = Rc::clone(&self.waits);
        let task = handlers::gather(waits, token, self.leu, local, merge, waiting, to);
        if let Err(full) = self.executor.spawn(task) {
            // Not reached (a slot was free).
            self.waits.abandon(token);
            let lost = Response::error(ErrorCode::Internal, full.to_string());
            self.deliver(to, lost);
        }
    }

    /// Sends `response` where it goes.
    fn deliver(&mut self, to: Destination, response: Response) {
        match to {
            Destination::Client {
                conn,
                request_id,
                since,
            } => {
                self.request_times
                    .record(since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64);
                self.answer(conn, request_id, &response)
            }
            Destination::Peer { leu, token } => {
                let leu = usize::from(leu);
                self.unsent_replies[leu].push_back(Reply { token, response });
                self.flush_replies_to(leu);
            }
        }
    }

    /// Polls the handlers that were woken and sends the answers of those that finished.
    fn run_handlers(&mut self) {
        if self.executor.has_ready() {
            self.executor.run_ready(HANDLER_BUDGET);
        }
        while let Some(finished) = self.waits.take_finished() {
            self.deliver(finished.to, finished.response);
        }
    }

    /// Runs the parts other LEUs handed to this one: at most [`PEER_BUDGET`] from each per
    /// pass, so that a busy sender cannot keep this LEU from its own connections (its pass
    /// would never end while the sender keeps the queue filled).
    fn serve_peers(&mut self) {
        for from in 0..self.links.requests_in.len() {
            for _ in 0..PEER_BUDGET {
                let Some(handover) = self.links.requests_in[from].as_mut().and_then(|q| q.pop())
                else {
                    break;
                };
                self.report.served_for_others += 1;
                let to = Destination::Peer {
                    leu: from as u16,
                    token: handover.token,
                };
                // A slot is free: the origins' windows bound their parts out to this LEU, and
                // that many slots are kept for them.
                // SAFETY: read before the reply is sent, while the origin keeps the bytes.
                let bytes = unsafe { handover.frame.bytes() };
                let outcome = match self.validator.request(bytes) {
                    Ok((_, request)) => self.run_part(request),
                    Err(error) => Outcome::Ready(error.to_response()),
                };
                self.settle(to, outcome, None);
            }
        }
    }

    /// Takes the other LEUs' parts of this LEU's gathers.
    fn take_replies(&mut self) {
        for from in 0..self.links.replies_in.len() {
            while let Some(reply) = self.links.replies_in[from].as_mut().and_then(|q| q.pop()) {
                self.out_to[from] = self.out_to[from].saturating_sub(1);
                self.waits
                    .add_part(reply.token, from as u16, reply.response);
            }
        }
    }

    /// Sends the replies that found their queue full (it cannot be, within the window).
    fn flush_replies(&mut self) {
        for leu in 0..self.unsent_replies.len() {
            self.flush_replies_to(leu);
        }
    }

    fn flush_replies_to(&mut self, leu: usize) {
        let Some(queue) = self.links.replies_out[leu].as_mut() else {
            self.unsent_replies[leu].clear();
            return;
        };
        let mut pushed = false;
        while let Some(reply) = self.unsent_replies[leu].pop_front() {
            if let Err(reply) = queue.push(reply) {
                self.unsent_replies[leu].push_front(reply);
                break;
            }
            pushed = true;
        }
        if pushed {
            self.links.team.wakes[leu].after_push();
        }
    }

    /// Queues `response` to request `request_id` on `conn`.
    fn answer(&mut self, conn: usize, request_id: u64, response: &Response) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.unanswered = connection.unanswered.saturating_sub(1);
        self.report.answered += 1;
        if connection.dead {
            return; // its socket is shut down: nothing can be sent
        }
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
        if connection.sending || connection.dead {
            return;
        }
        connection.sent_progress = Instant::now();
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
        if self.zero_copy != ZeroCopy::Off && rest.len() >= SEND_ZC_MIN {
            let zc_flags = match self.zero_copy {
                ZeroCopy::ReportingUsage => SEND_ZC_REPORT_USAGE,
                _ => 0,
            };
            let entry = opcode::SendZc::new(
                types::Fd(connection.fd.as_raw_fd()),
                rest.as_ptr(),
                rest.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .zc_flags(zc_flags)
            .build();
            let op = Op::SendZc {
                conn,
                frame,
                sent,
                result: None,
            };
            // SAFETY: the frame is owned by the operation until its last completion (the
            // notification that the kernel no longer reads its pages) is reaped; its heap
            // bytes do not move when the value moves; the fd stays open meanwhile.
            match unsafe { self.ring.push(entry, op) } {
                Ok(_) => connection.sending = true,
                Err(PushError::Busy(Op::SendZc { frame, sent, .. })) => {
                    connection.outbox.push_front((frame, sent));
                }
                Err(_) => connection.closing = true,
            }
            return;
        }
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

    /// The end of a zero-copy send: `result` is the send's own completion when a
    /// notification (`completion`) followed it, else `completion` is the send's.
    fn sent_zero_copy(
        &mut self,
        conn: usize,
        frame: FrameBytes,
        sent: usize,
        result: Option<i32>,
        completion: vortex_io::Completion,
    ) {
        let (result, notification) = match result {
            Some(result) => (result, Some(completion)),
            None => (completion.result, None),
        };
        let refused = match -result {
            libc::EINVAL => notification.is_none(),
            libc::EOPNOTSUPP => true,
            _ => false,
        };
        if refused {
            // Kernels 6.0 and 6.1 refuse the usage report, older ones the operation, and a
            // socket may not support it: step down, and send this answer again.
            self.zero_copy = match self.zero_copy {
                ZeroCopy::ReportingUsage if -result == libc::EINVAL => ZeroCopy::Plain,
                _ => ZeroCopy::Off,
            };
            tracing::info!(leu = self.leu, mode = ?self.zero_copy, "zero-copy send refused");
            if let Some(connection) = self.conns[conn].as_mut() {
                connection.sending = false;
            }
            self.push_send(conn, frame, sent);
            return;
        }
        self.report.sends_zero_copy += 1;
        if notification.is_some_and(|n| n.result as u32 & NOTIF_USAGE_ZC_COPIED != 0) {
            self.report.sends_zero_copy_copied += 1;
        }
        let outcome = if result < 0 {
            Err(std::io::Error::from_raw_os_error(-result))
        } else {
            Ok(result as u32)
        };
        self.sent(conn, frame, sent, outcome);
    }

    fn sent(&mut self, conn: usize, frame: FrameBytes, sent: usize, outcome: std::io::Result<u32>) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.sending = false;
        connection.last_active = Instant::now();
        connection.sent_progress = Instant::now();
        match outcome {
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

    /// Moves the shard's writes and background work forward (a write becomes visible, and
    /// a finished flush or compaction is installed, only when the shard is polled) and
    /// wakes the handlers whose writes are now durable. Every pass while acknowledgements
    /// wait, at most every [`SHARD_POLL_EVERY`] otherwise.
    fn release_acks(&mut self) {
        if !self.waits.acks_waiting() {
            if self.last_shard_poll.elapsed() >= SHARD_POLL_EVERY {
                self.last_shard_poll = Instant::now();
                match self.shard.poll(None) {
                    Ok(durable) => self.waits.durable_through(durable),
                    // Nothing waits on it; the next write reports it.
                    Err(error) => tracing::debug!(leu = self.leu, %error, "shard poll failed"),
                }
            }
            if self.last_maintain.elapsed() >= MAINTAIN_EVERY {
                self.last_maintain = Instant::now();
                self.maintain_when_idle();
            }
            return;
        }
        self.last_shard_poll = Instant::now();
        match self.shard.poll(None) {
            Ok(durable) => self.waits.durable_through(durable),
            // The WAL failed: every waiting write is answered with the error.
            Err(error) => self.waits.failed(&error),
        }
    }

    /// With no write for a while and no background work running: flushes a MemTable worth
    /// indexing, then merges the segments into one (both in the background).
    fn maintain_when_idle(&mut self) {
        if self.merge_turn && self.shard.stats().pending_compactions == 0 {
            self.release_merge_turn();
        }
        let idle = self.last_write.elapsed();
        if self
            .config
            .idle_flush_after
            .is_none_or(|after| idle < after)
        {
            return;
        }
        let stats = self.shard.stats();
        if stats.index_build_backlog > 0 || stats.pending_compactions > 0 {
            return;
        }
        if stats.fresh_points >= IDLE_FLUSH_POINTS {
            if let Err(error) = self.shard.flush_soon() {
                tracing::warn!(leu = self.leu, %error, "idle flush failed");
            }
            return;
        }
        let merge_due = self.idle_merge_wanted(&stats)
            && self
                .config
                .idle_merge_after
                .is_some_and(|after| idle >= after)
            && self
                .last_merge
                .is_none_or(|at| at.elapsed() >= self.config.idle_merge_every);
        if merge_due && self.take_merge_turn() {
            match self.shard.compact_all_soon() {
                Ok(true) => {
                    self.last_merge = Some(Instant::now());
                    self.merged_since_write = true;
                    self.errors_at_merge = stats.store.background_errors;
                    self.report.idle_merges += 1;
                    tracing::info!(
                        leu = self.leu,
                        segments = stats.segments,
                        "idle: merging segments"
                    );
                }
                Ok(false) => self.release_merge_turn(),
                Err(error) => {
                    self.release_merge_turn();
                    tracing::warn!(leu = self.leu, %error, "idle merge failed")
                }
            }
        }
    }

    /// Takes one of the team's `idle_merges_at_once` turns, if one is free (or already held).
    fn take_merge_turn(&mut self) -> bool {
        if self.merge_turn {
            return true;
        }
        let merges = &self.links.team.merges;
        let limit = self.config.idle_merges_at_once.max(1);
        let taken = merges
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < limit).then_some(running + 1)
            })
            .is_ok();
        self.merge_turn = taken;
        taken
    }

    /// Gives the merge turn back (its merge is over, or did not start).
    fn release_merge_turn(&mut self) {
        if std::mem::take(&mut self.merge_turn) {
            self.links.team.merges.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether an idle merge would run once the LEU is quiet: idle merges are on, there
    /// are segments to merge, and no write ran since the last merge started unless the
    /// store counted a background error since (the merge may have failed).
    fn idle_merge_wanted(&self, stats: &vortex_shard::ShardStats) -> bool {
        self.config.idle_merge_after.is_some()
            && stats.segments >= 2
            && (!self.merged_since_write || stats.store.background_errors > self.errors_at_merge)
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
        if self.throttled.is_some() {
            self.close_slow_readers();
            self.shed_when_stuck();
        } else {
            self.stuck_since = None;
        }
        for conn in 0..self.conns.len() {
            // A frame begun and not finished for this long holds a pool buffer for a
            // client that sends a byte now and then (slowloris): closed, whatever the
            // idle timeout.
            let stalled_mid_frame = self.conns[conn].as_ref().is_some_and(|c| {
                !c.dead
                    && c.decoder.has_partial_frame()
                    && c.last_active.elapsed() > self.config.partial_frame_timeout
            });
            if stalled_mid_frame {
                self.report.closed_idle += 1;
                self.kill(conn);
            }
        }
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

    /// While THROTTLED: closes the connections that hold receive buffers but whose answers
    /// have not moved for [`SLOW_READER_TIMEOUT`] (their client does not read). Their
    /// buffers would otherwise stay taken for as long as the client waits, and the LEU would
    /// stay THROTTLED for everyone.
    fn close_slow_readers(&mut self) {
        for conn in 0..self.conns.len() {
            let Some(connection) = self.conns[conn].as_mut() else {
                continue;
            };
            let slow = !connection.dead
                && connection.sending
                && connection.sent_progress.elapsed() > SLOW_READER_TIMEOUT
                && (!connection.backlog.is_empty() || connection.decoder.has_partial_frame());
            if !slow {
                continue;
            }
            self.report.closed_slow_reader += 1;
            self.kill(conn);
            tracing::debug!(
                leu = self.leu,
                conn,
                "closed a connection that does not read its answers"
            );
        }
    }

    /// While THROTTLED with no request answered for [`STUCK_TIMEOUT`]: the pool's buffers
    /// are all held by connections waiting for one another (one assembling a large frame
    /// needs bytes that cannot be received without a buffer another holds while it waits
    /// for the large buffer). Closes the connection holding the most buffers, so the rest
    /// go on.
    fn shed_when_stuck(&mut self) {
        // Requests being served (waiting for durability, a peer's part, a send) or a frame
        // being received into its buffer will make progress without a receive buffer:
        // that is a slow LEU, not a wait cycle.
        let progressing = self.conns.iter().flatten().any(|c| {
            !c.dead
                && (c.receiving_into
                    || c.unanswered > 0
                    || (c.sending && c.sent_progress.elapsed() < STUCK_TIMEOUT))
        });
        if progressing {
            self.stuck_since = None;
            return;
        }
        let answered = self.report.answered;
        match self.stuck_since {
            Some((since, seen)) if seen == answered => {
                if since.elapsed() < STUCK_TIMEOUT {
                    return;
                }
            }
            _ => {
                self.stuck_since = Some((Instant::now(), answered));
                return;
            }
        }
        self.stuck_since = Some((Instant::now(), answered));
        let holding = |c: &Connection| c.backlog.len() + usize::from(c.decoder.has_partial_frame());
        let victim = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(conn, c)| c.as_ref().filter(|c| !c.dead).map(|c| (conn, holding(c))))
            .filter(|&(_, held)| held > 0)
            .max_by_key(|&(_, held)| held);
        let Some((conn, held)) = victim else {
            return;
        };
        let starved = self.conns.iter().flatten().filter(|c| c.starved).count();
        tracing::warn!(
            leu = self.leu,
            conn,
            held,
            starved,
            standard_free = self.pool.stats(SizeClass::Standard).free,
            medium_free = self.pool.stats(SizeClass::Medium).free,
            large_free = self.pool.stats(SizeClass::Large).free,
            "THROTTLED and stuck: closing the connection holding the most receive buffers"
        );
        self.report.closed_overload += 1;
        self.kill(conn);
    }

    /// Shuts a connection down at once: its answers are dropped and the buffers it holds
    /// go back to the pool; its slot is freed once its operations complete.
    fn kill(&mut self, conn: usize) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.dead = true;
        connection.closing = true;
        connection.outbox.clear();
        connection.backlog.clear();
        // A fresh decoder drops the buffers the old one held.
        connection.decoder = StreamDecoder::new(self.pool.clone(), self.validator);
        connection.stalled = false;
        connection.starved = false;
        // A send in flight to a peer that does not read (a zero window) would keep the
        // slot for as long as the peer answers window probes (a zero-copy send ends only
        // when the kernel frees the data): TCP gives up on unacknowledged data after 1 s.
        let give_up_ms: libc::c_uint = 1000;
        // SAFETY: sets an option on a socket we own, from a value that lives across the
        // call; then shuts that socket down, and the operations on it complete.
        unsafe {
            libc::setsockopt(
                connection.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&give_up_ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            );
            libc::shutdown(connection.fd.as_raw_fd(), libc::SHUT_RDWR);
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
