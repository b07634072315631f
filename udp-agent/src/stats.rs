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
