//! EventBridge sink counters.
//!
//! Every entry the sink takes in ends in exactly one of four counters, so
//! that once [`super::run`] has returned
//! `received = delivered + failed + cost_guard_skipped + undelivered`
//! holds exactly; with a dead-letter file,
//! `dead_lettered + dead_letter_errors = failed + undelivered` too (unless
//! a request task had to be aborted at shutdown).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tokio::time::Instant;

use super::cost_guard::CostGuard;
use crate::encode::Entry;

#[derive(Debug)]
pub struct EventBridgeStats {
    /// Entries the sink took in.
    pub received: AtomicU64,
    /// PutEvents requests sent (first attempts and retries).
    pub requests: AtomicU64,
    /// Entries EventBridge accepted (it returned an EventId).
    pub delivered: AtomicU64,
    /// Entries given up on: refused with a non-retryable error, or still
    /// failing after --max-retries. Broken down in [`Self::failed_by_code`].
    pub failed: AtomicU64,
    /// Entries resent (each resend of each entry counts once).
    pub retried: AtomicU64,
    /// Throttling seen: whole requests refused with a throttling error plus
    /// entries refused with `ThrottlingException`.
    pub throttled: AtomicU64,
    /// Entries written to the dead-letter file: the failed ones, and the
    /// undelivered ones abandoned at the drain timeout.
    pub dead_lettered: AtomicU64,
    /// Entries that could not be written to the dead-letter file.
    pub dead_letter_errors: AtomicU64,
    /// Entries skipped by the cost guard (--max-events-per-hour).
    pub cost_guard_skipped: AtomicU64,
    /// Entries still queued or in flight when --drain-timeout ran out (or
    /// held by a request task that panicked).
    pub undelivered: AtomicU64,
    /// Requests outstanding right now (a gauge).
    pub in_flight: AtomicU64,
    failed_by_code: Mutex<BTreeMap<String, u64>>,
    /// The cost guard and the instant its window counts from. It lives here
    /// rather than in the sink's task so that metrics can read how much of
    /// the rolling hour is used, also while no batch comes to move it on.
    cost_guard: Mutex<(CostGuard, Instant)>,
}

impl Default for EventBridgeStats {
    fn default() -> Self {
        Self {
            received: AtomicU64::default(),
            requests: AtomicU64::default(),
            delivered: AtomicU64::default(),
            failed: AtomicU64::default(),
            retried: AtomicU64::default(),
            throttled: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            dead_letter_errors: AtomicU64::default(),
            cost_guard_skipped: AtomicU64::default(),
            undelivered: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            failed_by_code: Mutex::default(),
            cost_guard: Mutex::new((CostGuard::new(0), Instant::now())),
        }
    }
}

impl EventBridgeStats {
    /// Counts `n` entries given up on with this error code.
    pub fn count_failed(&self, code: &str, n: u64) {
        self.failed.fetch_add(n, Relaxed);
        let mut by_code = self.failed_by_code.lock().expect("stats lock");
        match by_code.get_mut(code) {
            Some(v) => *v += n,
            None => {
                by_code.insert(code.to_owned(), n);
            }
        }
    }

    /// Starts the cost guard's rolling hour at `now` with `limit` billed
    /// events (0: no limit).
    pub fn start_cost_guard(&self, limit: u64, now: Instant) {
        *self.cost_guard.lock().expect("stats lock") = (CostGuard::new(limit), now);
    }

    /// Runs a batch through the cost guard at `now`: the entries kept, and
    /// how many were skipped.
    pub fn admit(&self, batch: Vec<Entry>, now: Instant) -> (Vec<Entry>, u64) {
        let mut g = self.cost_guard.lock().expect("stats lock");
        let (guard, epoch) = &mut *g;
        let secs = (now - *epoch).as_secs();
        super::admit(guard, batch, secs)
    }

    /// Billed events in the cost guard's current rolling hour.
    pub fn cost_guard_used(&self) -> u64 {
        let mut g = self.cost_guard.lock().expect("stats lock");
        let (guard, epoch) = &mut *g;
        let secs = (Instant::now().saturating_duration_since(*epoch)).as_secs();
        guard.used_at(secs)
    }

    /// The cost guard's limit (0: none).
    pub fn cost_guard_limit(&self) -> u64 {
        self.cost_guard.lock().expect("stats lock").0.limit()
    }

    /// Failed entries by error code (`ThrottlingException`,
    /// `InvalidArgument`, `Timeout`, …).
    pub fn failed_by_code(&self) -> BTreeMap<String, u64> {
        self.failed_by_code.lock().expect("stats lock").clone()
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("received", self.received.load(Relaxed)),
            ("requests", self.requests.load(Relaxed)),
            ("delivered", self.delivered.load(Relaxed)),
            ("failed", self.failed.load(Relaxed)),
            ("retried", self.retried.load(Relaxed)),
            ("throttled", self.throttled.load(Relaxed)),
            ("dead_lettered", self.dead_lettered.load(Relaxed)),
            ("dead_letter_errors", self.dead_letter_errors.load(Relaxed)),
            ("cost_guard_skipped", self.cost_guard_skipped.load(Relaxed)),
            ("undelivered", self.undelivered.load(Relaxed)),
            ("in_flight", self.in_flight.load(Relaxed)),
        ]
    }

    /// One log line: the counters, then the failures by code.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .snapshot()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for (code, n) in self.failed_by_code() {
            parts.push(format!("failed[{code}]={n}"));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_code() {
        let s = EventBridgeStats::default();
        s.count_failed("InvalidArgument", 2);
        s.count_failed("ThrottlingException", 1);
        s.count_failed("InvalidArgument", 3);
        assert_eq!(s.failed.load(Relaxed), 6);
        let by_code = s.failed_by_code();
        assert_eq!(by_code["InvalidArgument"], 5);
        assert_eq!(by_code["ThrottlingException"], 1);
        assert!(s.summary().contains("failed=6 "));
        assert!(
            s.summary()
                .ends_with("failed[InvalidArgument]=5 failed[ThrottlingException]=1")
        );
    }
}
