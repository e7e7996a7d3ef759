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
            // Written to recently (the usual case under load): `idle_step` would say nothing,
            // and the shard's statistics need not be gathered for it.
            return;
        }
        let stats = self.shard.stats();
        let view = IdleView {
            idle,
            since_last_merge: self.last_merge.map(|at| at.elapsed()),
            fresh_points: stats.fresh_points,
            background_pending: stats.index_build_backlog > 0 || stats.pending_compactions > 0,
            segments: stats.segments,
            merged_since_write: self.merged_since_write,
            new_background_errors: stats.store.background_errors > self.errors_at_merge,
        };
        match idle_step(&self.config, &view) {
            IdleStep::Nothing => {}
            IdleStep::Flush => {
                if let Err(error) = self.shard.flush_soon() {
                    tracing::warn!(leu = self.leu, %error, "idle flush failed");
                }
            }
            IdleStep::Merge if self.take_merge_turn() => match self.shard.compact_all_soon() {
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
            },
            IdleStep::Merge => {} // every turn is taken: another LEU merges now
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
        merge_wanted(
            &self.config,
            stats.segments,
            self.merged_since_write,
            stats.store.background_errors > self.errors_at_merge,
        )
    }
}

/// What the idle policy looks at.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleView {
    /// Since the last write.
    pub idle: Duration,
    /// Since the last idle merge started, if one did.
    pub since_last_merge: Option<Duration>,
    /// Points in the MemTables (searched exactly until flushed).
    pub fresh_points: usize,
    /// Whether an index build or a compaction is pending or running.
    pub background_pending: bool,
    /// Live segments.
    pub segments: usize,
    /// Whether an idle merge started since the last write.
    pub merged_since_write: bool,
    /// Whether the store counted a background error since that merge started.
    pub new_background_errors: bool,
}

/// What an idle LEU does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdleStep {
    /// Nothing (not idle long enough, background work running, or nothing to do).
    Nothing,
    /// Flush the MemTable (enough fresh points to be worth a graph).
    Flush,
    /// Merge every segment into one, if a team turn is free.
    Merge,
}

/// The idle policy: after `idle_flush_after` without a write and with no background work,
/// flush at least `idle_flush_points` fresh points; else, after `idle_merge_after`, merge
/// two or more segments, at most once per `idle_merge_every`, and not again until a write
/// comes (or the last merge may have failed).
pub(super) fn idle_step(config: &ServerConfig, view: &IdleView) -> IdleStep {
    if config
        .idle_flush_after
        .is_none_or(|after| view.idle < after)
        || view.background_pending
    {
        return IdleStep::Nothing;
    }
    if view.fresh_points >= config.idle_flush_points.max(1) {
        return IdleStep::Flush;
    }
    let merge_due = merge_wanted(
        config,
        view.segments,
        view.merged_since_write,
        view.new_background_errors,
    ) && config
        .idle_merge_after
        .is_some_and(|after| view.idle >= after)
        && view
            .since_last_merge
            .is_none_or(|since| since >= config.idle_merge_every);
    if merge_due {
        IdleStep::Merge
    } else {
        IdleStep::Nothing
    }
}

fn merge_wanted(
    config: &ServerConfig,
    segments: usize,
    merged_since_write: bool,
    new_background_errors: bool,
) -> bool {
    config.idle_merge_after.is_some()
        && segments >= 2
        && (!merged_since_write || new_background_errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(idle_s: u64) -> IdleView {
        IdleView {
            idle: Duration::from_secs(idle_s),
            since_last_merge: None,
            fresh_points: 0,
            background_pending: false,
            segments: 5,
            merged_since_write: false,
            new_background_errors: false,
        }
    }

    #[test]
    fn a_busy_or_recently_written_leu_does_nothing() {
        let config = ServerConfig::default(); // flush after 1 s, merge after 5 s
        assert_eq!(idle_step(&config, &quiet(0)), IdleStep::Nothing);
        let pending = IdleView {
            background_pending: true,
            ..quiet(3600)
        };
        assert_eq!(idle_step(&config, &pending), IdleStep::Nothing);
        let off = ServerConfig {
            idle_flush_after: None,
            ..ServerConfig::default()
        };
        assert_eq!(idle_step(&off, &quiet(3600)), IdleStep::Nothing);
    }

    #[test]
    fn fresh_points_are_flushed_before_anything_is_merged() {
        let config = ServerConfig::default();
        let fresh = IdleView {
            fresh_points: IDLE_FLUSH_POINTS,
            ..quiet(2)
        };
        assert_eq!(idle_step(&config, &fresh), IdleStep::Flush);
        let few = IdleView {
            fresh_points: IDLE_FLUSH_POINTS - 1,
            ..quiet(2)
        };
        assert_eq!(
            idle_step(&config, &few),
            IdleStep::Nothing,
            "not idle long enough to merge"
        );
        assert_eq!(
            idle_step(
                &config,
                &IdleView {
                    fresh_points: IDLE_FLUSH_POINTS,
                    ..quiet(60)
                }
            ),
            IdleStep::Flush
        );
        // With the index tier, any fresh point is flushed (and then folded into the node
        // graph).
        let tiered = ServerConfig {
            idle_flush_points: 1,
            ..ServerConfig::default()
        };
        let one = IdleView {
            fresh_points: 1,
            ..quiet(2)
        };
        assert_eq!(idle_step(&tiered, &one), IdleStep::Flush);
        assert_eq!(idle_step(&config, &one), IdleStep::Nothing);
    }

    #[test]
    fn segments_are_merged_once_per_quiet_spell() {
        let config = ServerConfig::default();
        assert_eq!(idle_step(&config, &quiet(5)), IdleStep::Merge);
        assert_eq!(
            idle_step(
                &config,
                &IdleView {
                    segments: 1,
                    ..quiet(60)
                }
            ),
            IdleStep::Nothing,
            "one segment is merged already"
        );
        // Merged since the last write: not again, however long it stays quiet...
        let merged = IdleView {
            merged_since_write: true,
            since_last_merge: Some(Duration::from_secs(3600)),
            ..quiet(3600)
        };
        assert_eq!(idle_step(&config, &merged), IdleStep::Nothing);
        // ...unless the store counted an error since (the merge may have failed), and then
        // not before `idle_merge_every`.
        let failed = IdleView {
            new_background_errors: true,
            ..merged
        };
        assert_eq!(idle_step(&config, &failed), IdleStep::Merge);
        let too_soon = IdleView {
            since_last_merge: Some(Duration::from_secs(10)),
            ..failed
        };
        assert_eq!(idle_step(&config, &too_soon), IdleStep::Nothing);
        let never = ServerConfig {
            idle_merge_after: None,
            ..ServerConfig::default()
        };
        assert_eq!(idle_step(&never, &quiet(3600)), IdleStep::Nothing);
    }
}
