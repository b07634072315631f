//! Pipeline counters (userspace side; the kernel's are in [`crate::control`]).
//!
//! Every place the agent can lose or refuse a packet has a counter here, so
//! that `captured = emitted + counted drops` can be checked.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracing::warn;

#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Datagrams decoded from ring records: whole ones, and those
    /// reassembled from fragment records (counted in `reassembly`).
    pub decoded: AtomicU64,
    /// Ring records that did not decode (never expected; see record.rs).
    pub decode_errors: AtomicU64,
    /// Packets dropped because the sink's queue was full.
    pub queue_drops: AtomicU64,
    /// Entries too large for any PutEvents request.
    pub oversize: AtomicU64,
    /// Entries handed to the sink.
    pub batched: AtomicU64,
    /// Entries the sink wrote or delivered.
    pub emitted: AtomicU64,
    /// Entries the sink could not deliver.
    pub sink_failed: AtomicU64,
    /// Capture-to-acknowledged seconds of the entries the sink delivered.
    pub latency: crate::metrics::Latency,
    /// IP fragments and the datagrams reassembled from them.
    pub reassembly: crate::reassembly::ReassemblyStats,
}

impl PipelineStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("decoded", self.decoded.load(Relaxed)),
            ("decode_errors", self.decode_errors.load(Relaxed)),
            ("queue_drops", self.queue_drops.load(Relaxed)),
            ("oversize", self.oversize.load(Relaxed)),
            ("batched", self.batched.load(Relaxed)),
            ("emitted", self.emitted.load(Relaxed)),
            ("sink_failed", self.sink_failed.load(Relaxed)),
        ]
        .into_iter()
        .chain(self.reassembly.snapshot())
        .collect()
    }
}

/// Counts a drop and warns at a doubling interval (1st, 2nd, 4th, 8th… drop),
/// never once per packet.
pub fn count_drop(counter: &AtomicU64, what: &str) {
    count_drops(counter, 1, what);
}

/// [`count_drop`] for `n` at once: warns when the running total passes a
/// power of two.
pub fn count_drops(counter: &AtomicU64, n: u64, what: &str) {
    let total = counter.fetch_add(n, Relaxed) + n;
    if (total - n + 1..=total).any(u64::is_power_of_two) {
        warn!(total, "{what}");
    }
}
