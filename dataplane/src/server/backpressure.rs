//! Limits and shedding: THROTTLED when the buffer pool or the handler slots run out, and
//! the connections closed for bad input, idleness, reading too slowly, or an LEU stuck
//! without progress.

use super::*;

impl Server {
    /// Enters or leaves the THROTTLED state. High water: the pool refused a buffer since
    /// the last pass (a frame could not be assembled), at most 1/8 of its standard buffers
    /// are free, or 3/4 of the ring's operation slots are in flight. Low water: no refusal
    /// and no connection waiting for a buffer, 1/4 free, at most half the slots in flight.
    /// While THROTTLED the LEU lends the kernel no more receive buffers and arms no
    /// receives (so the kernel's socket buffers fill and TCP closes the senders' windows),
    /// and answers the requests it has already read with THROTTLED.
    /// `ending`: the loop is over; the time so far is counted.
    pub(super) fn pressure(&mut self, ending: bool) {
        let pool = self.pool.stats(SizeClass::Standard);
        let total = self.pool.buffer_count(SizeClass::Standard);
        // Only standard buffers count: a frame that waits for one of the few medium or
        // large buffers makes its own connection wait, and must not throttle the requests
        // of every other (slow senders of large frames would otherwise hold the LEU
        // THROTTLED for as long as they liked; issue #23).
        let refused = pool.exhausted;
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
                        && !self
                            .conns
                            .iter()
                            .flatten()
                            .any(|c| c.starved && !c.starved_big)) =>
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

    /// Sends `response` (to request `request_id`) if any, then closes `conn`.
    pub(super) fn close_for_bad_input(&mut self, conn: usize, response: Option<(u64, Response)>) {
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
    pub(super) fn close_idle(&mut self) {
        if self.throttled.is_some() {
            self.close_slow_readers();
            self.shed_when_stuck();
        } else {
            self.stuck_since = None;
        }
        for conn in 0..self.conns.len() {
            // A frame begun and not finished holds a pool buffer (a large one, for a large
            // frame): closed, whatever the idle timeout, when nothing more of it came for
            // `partial_frame_timeout` (slowloris), or when after that long it still came
            // slower than `frame_rate_min` (a trickle).
            let (timeout, rate_min) = (
                self.config.partial_frame_timeout,
                self.config.frame_rate_min,
            );
            let slow = self.conns[conn]
                .as_mut()
                .is_some_and(|c| !c.dead && frame_too_slow(c, timeout, rate_min));
            if slow {
                self.report.closed_slow_frames += 1;
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
    pub(super) fn close_slow_readers(&mut self) {
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
    pub(super) fn shed_when_stuck(&mut self) {
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
    pub(super) fn kill(&mut self, conn: usize) {
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
    /// At the end of a stop's drain: resets the connections whose answers have not all gone
    /// out (their peers stopped reading), so that the kernel drops what they hold at once.
    /// Otherwise the sends in flight, a zero-copy send's notification above all, complete
    /// only when the peer reads, and the ring's drop would wait for them.
    pub(super) fn abort_unsent(&mut self) {
        let mut aborted = 0;
        for connection in self.conns.iter().flatten() {
            if !connection.sending && connection.outbox.is_empty() {
                continue;
            }
            let fd = connection.fd.as_raw_fd();
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the socket is ours; `linger` is a valid `struct linger` of the length
            // given, and `unspec` a valid `sockaddr` whose family is AF_UNSPEC: on a TCP
            // socket, connecting to it disconnects (the kernel's `tcp_disconnect`: the
            // queues are purged and the peer gets a reset).
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
                let mut unspec: libc::sockaddr = std::mem::zeroed();
                unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
                libc::connect(
                    fd,
                    &raw const unspec,
                    std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
                );
            }
            aborted += 1;
        }
        self.report.aborted_at_stop += aborted;
        if aborted > 0 {
            tracing::warn!(
                leu = self.leu,
                connections = aborted,
                "stop: reset connections whose peers did not read their answers"
            );
        }
    }

    pub(super) fn reap_closed(&mut self) {
        for conn in 0..self.conns.len() {
            // `unanswered` counts the acknowledgements still waiting for durability too.
            let done = self.conns[conn].as_ref().is_some_and(|c| {
                c.closing && !c.receiving && !c.sending && c.outbox.is_empty() && c.unanswered == 0
            });
            if done {
                if let Some(connection) = self.conns[conn].take() {
                    // SAFETY: shuts down a descriptor we own; no operation uses it now.
                    unsafe { libc::shutdown(connection.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    self.links.team.connections.fetch_sub(1, Ordering::AcqRel);
                }
                self.free.push(conn);
            }
        }
    }
}

/// Whether the incomplete frame `connection` holds came too slowly (see [`Server`]'s
/// per-pass checks): no byte for `timeout`, or, once it has taken longer than `timeout`,
/// fewer than `rate_min` bytes per second since its first. Keeps the frame's clock: it
/// starts when a frame is begun, and again when another frame has been decoded since.
fn frame_too_slow(connection: &mut Connection, timeout: Duration, rate_min: u64) -> bool {
    if !connection.decoder.has_partial_frame() {
        connection.frame_clock = None;
        return false;
    }
    let decoded = connection.decoder.frames_decoded();
    let (since, _, bytes_then) = match connection.frame_clock {
        Some(clock @ (_, frames, _)) if frames == decoded => clock,
        _ => {
            let clock = (Instant::now(), decoded, connection.received);
            connection.frame_clock = Some(clock);
            clock
        }
    };
    if connection.last_active.elapsed() > timeout {
        return true;
    }
    let taken = since.elapsed();
    taken > timeout
        && ((connection.received - bytes_then) as f64) < rate_min as f64 * taken.as_secs_f64()
}
