//! EventBridge sink counters.
//!
//! Every entry the sink takes in ends in exactly one of five counters, so
//! that once [`super::run`] has returned
//! `received = delivered + failed + cost_guard_skipped + undelivered +
//! left_spooled` holds exactly; with a dead-letter file,
//! `dead_lettered + dead_letter_errors = failed + undelivered` too (unless
//! a request task had to be aborted at shutdown).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use super::{cost_guard::SharedCostGuard, rate_limit::RateLimiter};
use crate::{
    sink::{SinkProgress, SinkStats},
    stats::Sample,
};

#[derive(Debug, Default)]
pub struct EventBridgeStats {
    /// Entries the sink took in.
    pub received: AtomicU64,
    /// PutEvents requests sent (first attempts and retries).
    pub requests: AtomicU64,
    /// Entries EventBridge accepted (it returned an EventId), or — counted
    /// in `unconfirmed` too — that it answered 2xx for twice without
    /// readable results.
    pub delivered: AtomicU64,
    /// Entries counted delivered after two 2xx answers whose bodies could
    /// not be read (see `retry::Retry::Ambiguous`).
    pub unconfirmed: AtomicU64,
    /// Entries given up on: refused with a non-retryable error, older than
    /// --spool-max-age, or (with --max-retries) out of retries. Broken down
    /// in [`Self::failed_by_code`].
    pub failed: AtomicU64,
    /// Entries resent (each resend of each entry counts once).
    pub retried: AtomicU64,
    /// Throttling seen: whole requests refused with a throttling error plus
    /// entries refused with `ThrottlingException`.
    pub throttled: AtomicU64,
    /// Entries written to the dead-letter file: the failed ones, and the
    /// undelivered ones abandoned at the drain timeout.
    pub dead_lettered: AtomicU64,
    /// Entries that could not be written to the dead-letter file (an I/O
    /// error, or --dead-letter-max-bytes reached).
    pub dead_letter_errors: AtomicU64,
    /// Entries skipped by the cost guard (--max-events-per-hour).
    pub cost_guard_skipped: AtomicU64,
    /// Entries held only in memory (no spool) and still queued or in
    /// flight when --drain-timeout ran out (or held by a request task that
    /// panicked).
    pub undelivered: AtomicU64,
    /// Entries of spooled batches not finished at shutdown: they stay in
    /// the spool and the next run sends them.
    pub left_spooled: AtomicU64,
    /// Requests outstanding right now (a gauge).
    pub in_flight: AtomicU64,
    failed_by_code: Mutex<BTreeMap<String, u64>>,
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
            ("unconfirmed", self.unconfirmed.load(Relaxed)),
            ("failed", self.failed.load(Relaxed)),
            ("retried", self.retried.load(Relaxed)),
            ("throttled", self.throttled.load(Relaxed)),
            ("dead_lettered", self.dead_lettered.load(Relaxed)),
            ("dead_letter_errors", self.dead_letter_errors.load(Relaxed)),
            ("cost_guard_skipped", self.cost_guard_skipped.load(Relaxed)),
            ("undelivered", self.undelivered.load(Relaxed)),
            ("left_spooled", self.left_spooled.load(Relaxed)),
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

/// Help text of the counters (names as in [`EventBridgeStats::snapshot`]).
fn help(name: &str) -> &'static str {
    match name {
        "received" => "Entries the EventBridge sink took in",
        "requests" => "PutEvents requests sent, retries included",
        "delivered" => "Entries EventBridge accepted",
        "unconfirmed" => {
            "Entries counted delivered after two 2xx answers without readable per-entry results"
        }
        "retried" => "Entry resends",
        "throttled" => "Throttled requests plus entries refused with ThrottlingException",
        "dead_lettered" => "Entries written to the dead-letter file",
        "dead_letter_errors" => {
            "Entries that could not be written to the dead-letter file (I/O error or --dead-letter-max-bytes)"
        }
        "cost_guard_skipped" => "Entries skipped by the cost guard (--max-events-per-hour)",
        "undelivered" => {
            "Entries held only in memory and still queued or in flight when the drain timeout ran out"
        }
        "left_spooled" => "Entries left in the spool at shutdown, for the next run to send",
        _ => "EventBridge sink counter",
    }
}

/// What metrics and the exit report read of the EventBridge sink: its
/// counters, the cost guard's window and the adaptive request rate.
#[derive(Debug)]
pub struct Observer {
    pub counters: Arc<EventBridgeStats>,
    pub cost_guard: Arc<SharedCostGuard>,
    pub limiter: Option<Arc<RateLimiter>>,
}

impl SinkStats for Observer {
    fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for (name, value) in self.counters.snapshot() {
            match name {
                // Broken down by code below; a gauge below.
                "failed" | "in_flight" => {}
                _ => out.push(Sample::counter(
                    format!("eventbridge_{name}"),
                    help(name),
                    value,
                )),
            }
        }
        for (code, value) in self.counters.failed_by_code() {
            out.push(
                Sample::counter(
                    "eventbridge_failed",
                    "Entries given up on (refused, too old, or out of retries), by error code",
                    value,
                )
                .labelled("code", code),
            );
        }
        out.push(Sample::gauge(
            "eventbridge_in_flight_requests",
            "PutEvents requests outstanding now",
            self.counters.in_flight.load(Relaxed),
        ));
        out.push(Sample::gauge(
            "eventbridge_cost_guard_used_events",
            "Billed events sent in the cost guard's rolling hour",
            self.cost_guard.used(),
        ));
        out.push(Sample::gauge(
            "eventbridge_cost_guard_limit_events",
            "The cost guard's limit of billed events per rolling hour (--max-events-per-hour; 0: off)",
            self.cost_guard.limit(),
        ));
        if let Some(limiter) = &self.limiter {
            out.push(Sample::gauge(
                "eventbridge_request_rate_limit",
                "PutEvents requests per second allowed now: --max-put-events-per-second, lowered while EventBridge throttles",
                limiter.rate().round() as u64,
            ));
        }
        out
    }

    fn summary(&self) -> String {
        self.counters.summary()
    }

    fn progress(&self) -> SinkProgress {
        let c = &self.counters;
        let delivered = c.delivered.load(Relaxed);
        let failed = c.failed.load(Relaxed);
        let settled = delivered
            + failed
            + c.cost_guard_skipped.load(Relaxed)
            + c.undelivered.load(Relaxed)
            + c.left_spooled.load(Relaxed);
        // Read last, so that it is never behind the settled counters.
        let received = c.received.load(Relaxed);
        SinkProgress {
            delivered,
            failed,
            pending: received.saturating_sub(settled),
        }
    }

    fn cost_guard_tripped(&self) -> bool {
        let limit = self.cost_guard.limit();
        // Entries are admitted while the hour's sum plus theirs fits.
        limit > 0 && self.cost_guard.used() >= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_as_progress_and_the_cost_guard_for_the_health_check() {
        let counters = Arc::new(EventBridgeStats::default());
        let o = Observer {
            counters: counters.clone(),
            cost_guard: Arc::new(SharedCostGuard::new(2)),
            limiter: None,
        };
        counters.received.store(50, Relaxed);
        counters.delivered.store(30, Relaxed);
        counters.count_failed("InvalidArgument", 5);
        counters.cost_guard_skipped.store(4, Relaxed);
        counters.undelivered.store(1, Relaxed);
        counters.left_spooled.store(2, Relaxed);
        assert_eq!(
            o.progress(),
            SinkProgress {
                delivered: 30,
                failed: 5,
                pending: 8
            }
        );
        assert!(!o.cost_guard_tripped());
        let entry = |n: u8| crate::encode::Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("default"),
            detail: format!("{n}").into(),
            time: std::time::UNIX_EPOCH,
            capture_ns: 0,
        };
        let (kept, skipped) = o.cost_guard.admit(
            vec![entry(1), entry(2), entry(3)],
            tokio::time::Instant::now(),
        );
        assert_eq!((kept.len(), skipped), (2, 1));
        assert!(o.cost_guard_tripped(), "the hour's 2 events are used");
    }

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
