//! The request pipeline: a frame runs on the shard here, or is scattered to the LEUs that
//! own its points and gathered; handlers that wait (for the WAL, for other LEUs' parts)
//! run on the executor; answers go back to their connection or to the LEU that asked;
//! write acknowledgements are released as the WAL makes them durable.

use super::*;

impl Server {
    /// Whether searches run whole here: the spread asks for it and every LEU has published
    /// its view (each does before the start gate; until then, as in a team started without
    /// one, searches fan out).
    pub(super) fn whole_search_ready(&mut self) -> bool {
        if self.whole_views.is_none() && self.config.search == SearchSpread::Whole {
            self.whole_views = self
                .links
                .team
                .views
                .iter()
                .map(|v| v.get().cloned())
                .collect();
            self.tier = self.links.team.tier.get().cloned();
        }
        self.whole_views.is_some()
    }

    /// Runs this LEU's part of `request` on its shard.
    pub(super) fn run_part(&mut self, request: vortex_vbp::validator::RequestRef<'_>) -> Outcome {
        // The server's counters go into stats answers only (counting them costs a scan).
        let counters = if matches!(request, vortex_vbp::validator::RequestRef::Stats) {
            self.whole_search_ready(); // the tier's counters, before any search
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

    /// Sends an answer now, or starts the handler that sends it once its write is durable
    /// (keeping the request's frame, if given, leased until then). The caller made sure a
    /// handler slot is free.
    pub(super) fn settle(&mut self, to: Destination, outcome: Outcome, frame: Option<FrameBuf>) {
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
    pub(super) fn client_slots_taken(&self) -> bool {
        self.executor.live() >= self.config.handlers_max.max(1)
    }

    /// A write part ran with WAL `sequence`: its acknowledgement waits for it, the LEU is
    /// not idle, and an idle merge is due again.
    pub(super) fn wrote(&mut self, sequence: u64) {
        self.waits.expect(sequence);
        self.last_write = Instant::now();
        self.merged_since_write = false;
    }

    /// Hands `frame` to the other LEUs in `needed`, runs this LEU's part if it has one, and
    /// gathers the parts into one answer to the client `to`.
    pub(super) fn scatter(
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
        // A write checked whole before any part runs: an error about the request then means
        // that no LEU applied any of it.
        if needed.iter().filter(|&&n| n).count() > 1 {
            if let Err(refused) = check_write(&self.shard, &request) {
                self.deliver(to, refused);
                return;
            }
        }
        // The gather keeps the frame until every part is in: the other LEUs read it in place.
        let token = self.waits.open(Some(frame.clone()));
        let merge = Merge::new(&request, &self.links.ring);
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
    pub(super) fn deliver(&mut self, to: Destination, response: Response) {
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
    pub(super) fn run_handlers(&mut self) {
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
    pub(super) fn serve_peers(&mut self) {
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
    pub(super) fn take_replies(&mut self) {
        for from in 0..self.links.replies_in.len() {
            while let Some(reply) = self.links.replies_in[from].as_mut().and_then(|q| q.pop()) {
                self.out_to[from] = self.out_to[from].saturating_sub(1);
                self.waits
                    .add_part(reply.token, from as u16, reply.response);
            }
        }
    }

    /// Sends the replies that found their queue full (it cannot be, within the window).
    pub(super) fn flush_replies(&mut self) {
        for leu in 0..self.unsent_replies.len() {
            self.flush_replies_to(leu);
        }
    }

    pub(super) fn flush_replies_to(&mut self, leu: usize) {
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

    /// Moves the shard's writes and background work forward (a write becomes visible, and
    /// a finished flush or compaction is installed, only when the shard is polled) and
    /// wakes the handlers whose writes are now durable. Every pass while acknowledgements
    /// wait, at most every [`SHARD_POLL_EVERY`] otherwise.
    pub(super) fn release_acks(&mut self) {
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
}
