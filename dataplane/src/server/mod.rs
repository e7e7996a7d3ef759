//! One LEU's VBP server: a single-threaded loop over its own io_uring that accepts
//! connections, receives into pool buffers, decodes frames in place, runs them on the LEU's
//! shard ([`crate::dispatch`]) or hands them to the LEUs that own their points
//! ([`crate::gather`], [`crate::handover`]), and sends the answers, write acknowledgements
//! only once the write is durable.
//!
//! What it holds to:
//!
//! - **Bounded**: at most `connections_max` connections over the whole team of LEUs (one
//!   more, on any LEU, is answered with an
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
//! - **One ring**: the shard's WAL queues its writes on the LEU's ring ([`ring`]), so one
//!   submit per pass carries sends, receives and log writes, and the completion of a log
//!   write wakes the loop's wait (up to `idle_wait`) like any other; another LEU wakes it
//!   through an eventfd read armed on the ring. Only where the WAL could not take the ring
//!   (its log had failed) does the loop wait `ack_wait` at most while acknowledgements are
//!   pending, polling the WAL's own ring.
//!
//! This file holds the loop itself (set-up, one pass, the wait, completions); the rest of
//! the server's methods live beside it by concern: `receive` (accepting and the receive
//! path), `pipeline` (running, scattering and answering requests, releasing
//! acknowledgements), `send` (the outboxes and zero-copy sends), `backpressure` (THROTTLED
//! and the connections closed for cause), `merge` (the idle-maintenance policy) and
//! `stats` (the counters); `ring` is the ring the loop shares with the WAL.

mod backpressure;
mod merge;
mod pipeline;
mod receive;
mod ring;
mod send;
mod stats;
#[cfg(test)]
mod tests;

use crate::dispatch::{check_write, dispatch_part, search_whole, throttled, Outcome};
use crate::executor::Executor;
use crate::gather::{participants, Merge, Ownership};
use crate::handlers::{self, Destination, Waits};
use crate::handover::{Handover, LentFrame, Links, Reply};
use crate::looptime::LoopTimes;
use crate::routing::Ring;
use io_uring::{opcode, types};
use ring::LeuRing;
use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vortex_config::SearchSpread;
use vortex_io::{OpId, ProvidedRing, PushError, RingConfig, RingDriver};
use vortex_shard::{PublishedView, Shard, TierGraphs};
use vortex_vbp::codec::{FrameBytes, Response};
use vortex_vbp::message::ErrorCode;
use vortex_vbp::pool::{BufferPool, Lease, PoolConfig, PoolError, SizeClass};
use vortex_vbp::stream::{FrameBuf, LentPartial, StreamDecoder, StreamError};
use vortex_vbp::validator::{LayoutValidator, RequestRef};

/// [`ServerConfig::frame_rate_min`] by default: 64 KiB/s, so a 16 MiB frame may take
/// about four minutes.
pub const FRAME_RATE_MIN_DEFAULT: u64 = 64 << 10;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections at most.
    pub connections_max: usize,
    /// Requests of one connection read and not yet answered, at most.
    pub requests_per_connection_max: usize,
    /// The loop's longest wait for completions (its WAL's included) with nothing else to do.
    pub idle_wait: Duration,
    /// The wait while stopping, and while write acknowledgements are pending on a WAL that
    /// kept a ring of its own (one that had failed when the loop started).
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
    /// With no write for this long, a MemTable of at least `idle_flush_points` points is
    /// flushed (searches then walk its index instead of scanning it). `None`: never.
    pub idle_flush_after: Option<Duration>,
    /// The fewest fresh points an idle flush takes ([`IDLE_FLUSH_POINTS`] by default). With
    /// the index tier (whole searches), 1: the flushed points are folded into the node
    /// graph, and a settled search then scans nothing exactly and walks one graph with no
    /// per-node test.
    pub idle_flush_points: usize,
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
    /// (it holds a pool buffer): a slowloris bound, whatever `idle_timeout` says. Also the
    /// time after which a frame still incomplete must have arrived at `frame_rate_min`
    /// since its first byte, or its connection is closed (one that trickles bytes).
    pub partial_frame_timeout: Duration,
    /// The slowest rate, in bytes per second, at which a frame may arrive once it has taken
    /// longer than `partial_frame_timeout` (see there).
    pub frame_rate_min: u64,
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
    /// Whole searches on the receiving LEU over every LEU's published view, or each search
    /// fanned out to every LEU (`[leu] search`).
    pub search: SearchSpread,
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
            frame_size_max_bytes: vortex_vbp::header::FRAME_SIZE_MAX_BYTES_DEFAULT,
            handover_queue: 1024,
            partial_frame_timeout: Duration::from_secs(10),
            frame_rate_min: FRAME_RATE_MIN_DEFAULT,
            idle_flush_after: Some(Duration::from_secs(1)),
            idle_flush_points: IDLE_FLUSH_POINTS,
            idle_merge_after: Some(Duration::from_secs(5)),
            idle_merge_every: Duration::from_secs(60),
            provided_buffers: 128,
            idle_timeout: Some(Duration::from_secs(300)),
            handlers_max: 16_384,
            idle_merges_at_once: 2,
            search: SearchSpread::Whole,
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
    /// Searches run whole here, over every LEU's published view.
    pub whole_searches: u64,
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
    /// Every answer THROTTLED sent to a client, whatever said it: the LEU's state, its
    /// handler slots, a full queue to another LEU, or the store (a full MemTable or WAL
    /// batch). A `Partial` answer whose failed part was THROTTLED counts too.
    pub throttled_total: u64,
    /// `Partial` answers sent to clients: writes applied on some LEUs, failed on others.
    pub partial_answers: u64,
    /// Connections reset at the end of a stop's drain, their answers not all read.
    pub aborted_at_stop: u64,
    /// Whether receives go into a provided-buffer ring.
    pub provided_buffers: bool,
    /// Connections closed while THROTTLED because they held receive buffers and did not
    /// read their answers.
    pub closed_slow_reader: u64,
    /// Connections closed because a THROTTLED LEU answered nothing for a second (the one
    /// holding the most receive buffers).
    pub closed_overload: u64,
    /// Connections closed because a frame they began did not arrive: nothing more of it for
    /// `partial_frame_timeout`, or slower than `frame_rate_min` after it.
    pub closed_slow_frames: u64,
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
    /// A write or sync of the shard's WAL: its completion goes to the WAL ([`ring`]).
    Log(vortex_storage::LogOp),
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
    /// What it waits for is a medium or large buffer (a frame larger than a receive
    /// buffer): the connection waits, the LEU is not THROTTLED for it.
    starved_big: bool,
    /// Bytes received on the connection.
    received: u64,
    /// The incomplete frame it holds: since when, and the frames decoded and bytes
    /// received then (another frame decoded since means another frame).
    frame_clock: Option<(Instant, u64, u64)>,
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
    let mut server = Server::new(
        listeners,
        shard,
        links,
        config,
        ring::Driver::Kernel(ring),
        pool,
        provided,
    )?;
    if !gate() {
        let Server { shard, report, .. } = server;
        shard.close()?;
        return Ok(report);
    }
    let ran = server.run(stop);
    server.release_merge_turn();
    server.waits.leak_frames();
    server.pressure(true);
    ran?;
    let Server { shard, report, .. } = server;
    shard.close()?;
    Ok(report)
}

impl Server {
    /// A server on `driver`, its WAL sharing the ring, nothing armed yet.
    fn new(
        listeners: Vec<TcpListener>,
        mut shard: Shard,
        links: Links,
        config: ServerConfig,
        driver: ring::Driver,
        pool: BufferPool,
        provided: Option<Provided>,
    ) -> Result<Server, ServeError> {
        let ring = LeuRing::new(driver);
        // From here the WAL's writes go through this ring (after every write so far is
        // durable). A WAL that cannot take it has failed already: it stays on its own ring,
        // read-only.
        let log_shares_ring = match shard.share_log_ring(ring.for_log()) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(leu = links.leu, %error, "the WAL keeps its own ring");
                false
            }
        };
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
        // Client requests get `handlers_max` slots; the parts other LEUs hand over get as
        // many as they may have out to this one.
        let peer_slots = (leus - 1) * links.window();
        let slots = (config.handlers_max.max(1) + peer_slots).min(crate::executor::TASKS_MAX);
        let executor =
            Executor::new(slots).ok_or_else(|| ServeError::Pool("no handler slots".to_owned()))?;
        // Published before the gate, so every LEU's view is there once any LEU serves.
        if let Some(slot) = links.team.views.get(usize::from(links.leu)) {
            let _ = slot.set(shard.published().clone());
        }
        Ok(Server {
            whole_views: None,
            tier: None,
            ring,
            log_shares_ring,
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
        })
    }
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
    /// Every LEU's published view, when searches run whole here (`SearchSpread::Whole`).
    whole_views: Option<Vec<PublishedView>>,
    /// The node's index tier, when one runs.
    tier: Option<TierGraphs>,
    ring: Rc<LeuRing>,
    /// The WAL's writes complete on `ring` (see the module's doc).
    log_shares_ring: bool,
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
                if quiet && team_quiet {
                    break;
                }
                if since.elapsed() > self.config.stop_deadline {
                    self.abort_unsent();
                    break;
                }
            } else {
                self.arm_accept();
            }
            self.pass(stopping_since.is_some())?;
            if last_idle_check.elapsed() >= IDLE_CHECK_EVERY {
                last_idle_check = Instant::now();
                self.close_idle();
            }
        }
        self.shard.sync()?;
        Ok(())
    }

    /// One pass of the loop: arm what can be armed, submit and wait (not at all if there is
    /// work), then handle what completed, other LEUs' requests and replies, acknowledgements
    /// the WAL released, and the handlers that can go on.
    fn pass(&mut self, stopping: bool) -> Result<(), ServeError> {
        if !self.wake_armed {
            self.arm_wake();
        }
        self.pressure(false);
        self.refill();
        self.arm_connections();
        self.wait(stopping)?;
        let mut events = Vec::new();
        let reaped = self.ring.reap(&mut events);
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
        self.reap_closed();
        Ok(())
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
            // A log write's completion ends the wait when the WAL shares the ring.
            let polled_acks = self.waits.acks_waiting() && !self.log_shares_ring;
            let wait = if !polled_acks && !stopping {
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
            // Sorted out for the WAL as it is reaped (`LeuRing::reap`).
            Event::Finished(Op::Log(_)) => {}
        }
    }
}

fn error_text<T>(error: &PushError<T>) -> String {
    match error {
        PushError::Busy(_) => "ring busy".to_owned(),
        PushError::Ring(_, error) => error.to_string(),
    }
}
