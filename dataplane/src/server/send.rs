//! Sending answers: one send in flight per connection, the rest queued in its outbox;
//! large answers by zero-copy send, the frame kept until the kernel's notification.

use super::*;

impl Server {
    /// Queues `response` to request `request_id` on `conn`.
    pub(super) fn answer(&mut self, conn: usize, request_id: u64, response: &Response) {
        let Some(connection) = self.conns[conn].as_mut() else {
            return;
        };
        connection.unanswered = connection.unanswered.saturating_sub(1);
        self.report.answered += 1;
        match response {
            Response::Throttled(_) => self.report.throttled_total += 1,
            Response::Partial(partial) => {
                self.report.partial_answers += 1;
                self.report.throttled_total += u64::from(partial.throttled);
            }
            _ => {}
        }
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

    pub(super) fn send_next(&mut self, conn: usize) {
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

    pub(super) fn push_send(&mut self, conn: usize, frame: FrameBytes, sent: usize) {
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
    pub(super) fn sent_zero_copy(
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

    pub(super) fn sent(
        &mut self,
        conn: usize,
        frame: FrameBytes,
        sent: usize,
        outcome: std::io::Result<u32>,
    ) {
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
}
