//! The LEU's counters, as a `Stats` request reports them (docs/VBP.md lists them).

use super::*;

impl Server {
    /// This LEU's own counters (docs/DATAPLANE.md), loop-time buckets included.
    pub(super) fn counters(&self) -> Vec<(String, u64)> {
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
            ("throttled_total", self.report.throttled_total),
            ("partial_answers", self.report.partial_answers),
            ("throttled_handover", self.report.throttled_handover),
            ("throttled_handlers", self.report.throttled_handlers),
            ("handlers_waiting", self.executor.live() as u64),
            ("closed_slow_reader", self.report.closed_slow_reader),
            ("closed_overload", self.report.closed_overload),
            ("closed_idle", self.report.closed_idle),
            ("closed_slow_frames", self.report.closed_slow_frames),
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
            ("wal_on_leu_ring", u64::from(self.log_shares_ring)),
            ("wal_ops_on_leu_ring", self.ring.log_completed()),
            ("request_p50_ns", self.request_times.quantile_ns(0.5)),
            ("request_p99_ns", self.request_times.quantile_ns(0.99)),
            ("request_p999_ns", self.request_times.quantile_ns(0.999)),
            ("request_max_ns", self.request_times.max_ns()),
            ("loop_iterations", self.loop_times.count()),
            ("loop_p50_ns", self.loop_times.quantile_ns(0.5)),
            ("loop_p99_ns", self.loop_times.quantile_ns(0.99)),
            ("loop_p999_ns", self.loop_times.quantile_ns(0.999)),
            ("loop_max_ns", self.loop_times.max_ns()),
            ("whole_searches", self.report.whole_searches),
            (
                "node_graph_builds",
                self.tier.as_ref().map_or(0, TierGraphs::builds),
            ),
            ("node_graphs_due", self.node_graphs_due()),
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

    /// Collections whose node graph is due for a (re)build once the tables stop changing
    /// (the same on every LEU): a search walks more than one graph over live nodes (see
    /// `vortex_shard::tier`).
    fn node_graphs_due(&self) -> u64 {
        let (Some(views), Some(tier)) = (self.whole_views.as_deref(), self.tier.as_ref()) else {
            return 0;
        };
        let loaded: Vec<_> = views.iter().map(PublishedView::load).collect();
        let views: Vec<&vortex_shard::ShardView> = loaded.iter().map(|view| &***view).collect();
        vortex_shard::tier::collections_due(&views, &tier.load()) as u64
    }
}
