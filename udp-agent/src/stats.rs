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
    /// Packets that went into packs (ports with --pack): each pack is one
    /// entry, so entries = decoded - packed + packs.
    pub packed: AtomicU64,
    /// Packs made (entries of one or more packed packets).
    pub packs: AtomicU64,
    /// Entries handed to the sink.
    pub batched: AtomicU64,
    /// Entries the sink wrote or delivered.
    pub emitted: AtomicU64,
    /// Entries the sink could not deliver.
    pub sink_failed: AtomicU64,
    /// Capture-to-acknowledged seconds of the entries the sink delivered.
    pub latency: Latency,
    /// IP fragments and the datagrams reassembled from them.
    pub reassembly: ReassemblyStats,
}

impl PipelineStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("decoded", self.decoded.load(Relaxed)),
            ("decode_errors", self.decode_errors.load(Relaxed)),
            ("queue_drops", self.queue_drops.load(Relaxed)),
            ("oversize", self.oversize.load(Relaxed)),
            ("packed", self.packed.load(Relaxed)),
            ("packs", self.packs.load(Relaxed)),
            ("batched", self.batched.load(Relaxed)),
            ("emitted", self.emitted.load(Relaxed)),
            ("sink_failed", self.sink_failed.load(Relaxed)),
        ]
        .into_iter()
        .chain(self.reassembly.snapshot())
        .collect()
    }
}

/// One value of a sink's or the spool's metrics, encoded by
/// [`crate::metrics`] without knowing who kept it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Series name without the `udp_agent_` prefix (and, for counters,
    /// without `_total`).
    pub name: String,
    pub help: &'static str,
    pub kind: Kind,
    /// At most one label, e.g. `("code", "ThrottlingException")`.
    pub label: Option<(&'static str, String)>,
    pub value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Sample {
    pub fn counter(name: impl Into<String>, help: &'static str, value: u64) -> Sample {
        Sample {
            name: name.into(),
            help,
            kind: Kind::Counter,
            label: None,
            value,
        }
    }

    pub fn gauge(name: impl Into<String>, help: &'static str, value: u64) -> Sample {
        Sample {
            kind: Kind::Gauge,
            ..Sample::counter(name, help, value)
        }
    }

    pub fn labelled(mut self, key: &'static str, value: impl Into<String>) -> Sample {
        self.label = Some((key, value.into()));
        self
    }
}

/// True if a counter going from `before` to `after` reached a new power of
/// two (1, 2, 4, 8, …): warn then, never once per packet.
pub fn doubled(before: u64, after: u64) -> bool {
    after > before && (before == 0 || before.ilog2() != after.ilog2())
}

/// Counts a drop and warns at a doubling interval (1st, 2nd, 4th, 8th… drop),
/// never once per packet.
pub fn count_drop(counter: &AtomicU64, what: &str) {
    count_drops(counter, 1, what);
}

/// [`count_drop`] for `n` at once: warns when the running total passes a
/// power of two.
pub fn count_drops(counter: &AtomicU64, n: u64, what: &str) {
    let before = counter.fetch_add(n, Relaxed);
    if doubled(before, before + n) {
        warn!(total = before + n, "{what}");
    }
}

/// Reassembly counters (part of [`PipelineStats`]).
#[derive(Debug, Default)]
pub struct ReassemblyStats {
    /// Fragment records taken in (discard notices included).
    pub fragments: AtomicU64,
    /// Datagrams completed and handed on.
    pub reassembled: AtomicU64,
    /// Datagrams dropped incomplete: past the timeout, or at shutdown.
    pub timeout: AtomicU64,
    /// Datagrams dropped for fragments that overlap in part.
    pub overlap: AtomicU64,
    /// Incomplete datagrams dropped to stay within the memory cap.
    pub evicted: AtomicU64,
    /// Fragments dropped as duplicates of data already held.
    pub duplicate: AtomicU64,
    /// Datagrams dropped for a fragment or a length that does not add up.
    pub invalid: AtomicU64,
    /// Datagrams the XDP program rejected after some of their fragments
    /// had come (before the first): dropped on its notice.
    pub discarded: AtomicU64,
    /// Bytes incomplete datagrams hold now, and at most so far (as charged
    /// against `max_bytes`).
    pub held_bytes: AtomicU64,
    pub peak_bytes: AtomicU64,
}

impl ReassemblyStats {
    /// The counters, as `PipelineStats::snapshot` lists them.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        [
            ("fragments", self.fragments.load(Relaxed)),
            ("reassembled", self.reassembled.load(Relaxed)),
            ("fragment_timeout", self.timeout.load(Relaxed)),
            ("fragment_overlap", self.overlap.load(Relaxed)),
            ("fragment_evicted", self.evicted.load(Relaxed)),
            ("fragment_duplicate", self.duplicate.load(Relaxed)),
            ("fragment_invalid", self.invalid.load(Relaxed)),
            ("fragment_discarded", self.discarded.load(Relaxed)),
        ]
    }
}

/// Upper bounds (seconds) of the latency buckets: from a stdout write
/// (well under a millisecond) through a linger-and-send to EventBridge
/// (tens of milliseconds) to retries with backoff (seconds).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Seconds from capture (the entry's `Time`: the kernel's CLOCK_MONOTONIC
/// stamp, or for a coarse stamp its narrowing, `clock::narrow_coarse`, so
/// at most one tick late) to the sink's acknowledgement: EventBridge
/// accepted the entry, or the stdout sink wrote it. Lock-free: a sink
/// observes from any task.
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    /// Records one entry captured at `capture_ns` and acknowledged at
    /// `now_ns` (both CLOCK_MONOTONIC). An entry without a capture time
    /// (made up by a test) is not recorded.
    pub fn observe(&self, capture_ns: u64, now_ns: u64) {
        if capture_ns == 0 {
            return;
        }
        let ns = now_ns.saturating_sub(capture_ns);
        let secs = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Sum (seconds), count, and per-bucket counts (not cumulative, without
    /// `+Inf`).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count = counts.iter().sum();
        let buckets = LATENCY_BUCKETS.iter().copied().zip(counts).collect();
        (self.sum_ns.load(Relaxed) as f64 / 1e9, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_without_a_capture_time_is_not_recorded() {
        let l = Latency::default();
        l.observe(0, 5_000_000_000);
        assert_eq!(l.snapshot().1, 0);
        l.observe(10, 5); // clock skew: counted as zero
        let (sum, count, buckets) = l.snapshot();
        assert_eq!((sum, count, buckets[0].1), (0.0, 1, 1));
        l.observe(1, 100_000_000_001); // 100 s: +Inf only
        let (_, count, buckets) = l.snapshot();
        assert_eq!(count, 2);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 1);
    }
}
