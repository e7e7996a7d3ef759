//! The idle-maintenance policy: once an LEU has had no write for a while and no background
//! work runs, it flushes a MemTable worth indexing, then merges its segments into one,
//! taking turns with the other LEUs so that only a few merges run at once.

use super::*;

impl Server {
    /// With no write for a while and no background work running: flushes a MemTable worth
    /// indexing, then merges the segments into one (both in the background).
    pub(super) fn maintain_when_idle(&mut self) {
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
    pub(super) fn take_merge_turn(&mut self) -> bool {
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
    pub(super) fn release_merge_turn(&mut self) {
        if std::mem::take(&mut self.merge_turn) {
            self.links.team.merges.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether an idle merge would run once the LEU is quiet: idle merges are on, there
    /// are segments to merge, and no write ran since the last merge started unless the
    /// store counted a background error since (the merge may have failed).
    pub(super) fn idle_merge_wanted(&self, stats: &vortex_shard::ShardStats) -> bool {
        self.config.idle_merge_after.is_some()
            && stats.segments >= 2
            && (!self.merged_since_write || stats.store.background_errors > self.errors_at_merge)
    }
}
