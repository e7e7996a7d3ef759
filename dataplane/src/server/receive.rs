//! The receive path of an LEU's connections: accepting them, arming their receives (a
//! multishot receive into the provided-buffer ring, a pool buffer each, or straight into
//! the buffer a large frame is assembled in), and cutting what arrives into frames.

use super::*;
use vortex_vbp::header::FLAG_FAN_OUT;

impl Server {
    /// Resumes sends the ring refused, goes on with frames that waited, and arms a receive
    /// on every connection that can take one (cancelling the multishot receive of one that
    /// cannot).
    pub(super) fn arm_connections(&mut self) {
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
                let pushed = unsafe { self.ring.push(entry, Op::RecvMulti { conn }) };
                if pushed.is_ok() {
                    connection.cancelling = false;
                }
                if !armed(connection, conn, pushed) {
                    return;
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
            let pushed = unsafe {
                self.ring.push(
                    entry,
                    Op::Recv {
                        conn,
                        lease,
                        offset,
                    },
                )
            };
            if !armed(connection, conn, pushed) {
                return;
            }
        }
    }

    pub(super) fn accepted(&mut self, outcome: std::io::Result<u32>) {
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
        // The limit is the appliance's: every LEU counts its connections in the team's sum.
        let max = self.config.connections_max;
        let admitted = self
            .links
            .team
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok();
        if !admitted {
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
            starved_big: false,
            received: 0,
            frame_clock: None,
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

    pub(super) fn received(
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
        connection.received += bytes as u64;
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
    pub(super) fn receive_into(&mut self, conn: usize, mut lent: LentPartial) -> bool {
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
    pub(super) fn received_into(
        &mut self,
        conn: usize,
        lent: LentPartial,
        outcome: std::io::Result<u32>,
    ) {
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
                connection.received += u64::from(bytes);
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
    pub(super) fn stop_receiving(&mut self, conn: usize) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        if self.provided.is_none() {
            // A single receive ends by itself, unless the connection is closing: then its
            // peer may never send again, and the receive would hold its buffer and the
            // connection's slot until it did.
            if connection.closing && connection.receiving && !connection.cancelling {
                if let Some(op) = connection.recv_op {
                    connection.cancelling = self.ring.cancel(op).is_ok();
                }
            }
            return;
        }
        if connection.receiving && !connection.cancelling && !connection.receiving_into {
            if let Some(op) = connection.recv_op {
                // A refused cancel (a full submission queue) is tried again next pass.
                connection.cancelling = self.ring.cancel(op).is_ok();
            }
        }
    }

    /// A completion of a multishot receive: bytes in a provided buffer, or its end.
    pub(super) fn received_provided(
        &mut self,
        conn: usize,
        last: bool,
        completion: vortex_io::Completion,
    ) {
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
                connection.received += u64::from(bytes);
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
    pub(super) fn drain_frames(&mut self, conn: usize) {
        loop {
            let limit = self.config.requests_per_connection_max;
            let Some(connection) = self.conns[conn].as_mut() else {
                return;
            };
            connection.stalled = connection.held() >= limit;
            connection.starved = false;
            connection.starved_big = false;
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
                Err(StreamError::Pool(error)) => {
                    // No buffer to assemble a frame in; no byte was lost: go on later.
                    connection.starved = true;
                    connection.starved_big = !matches!(
                        error,
                        PoolError::Exhausted {
                            class: SizeClass::Standard,
                            ..
                        }
                    );
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
                Ok((header, RequestRef::Search(search)))
                    if header.flags & FLAG_FAN_OUT == 0 && self.whole_search_ready() =>
                {
                    let views = self.whole_views.as_deref().unwrap_or_default();
                    let outcome = search_whole(views, self.tier.as_ref(), &search);
                    self.report.whole_searches += 1;
                    self.settle(to, outcome, Some(frame));
                }
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
}

/// Records a receive's push on its connection: armed, or the connection closing when the
/// ring refused it for good. False when the ring is busy (the receive waits for the next
/// pass).
fn armed(connection: &mut Connection, conn: usize, pushed: Result<OpId, PushError<Op>>) -> bool {
    match pushed {
        Ok(op) => {
            connection.receiving = true;
            connection.recv_op = Some(op);
        }
        Err(PushError::Busy(_)) => return false,
        Err(error) => {
            tracing::warn!(conn, error = %error_text(&error), "cannot arm a receive");
            connection.closing = true;
        }
    }
    true
}
