//! The cost guard (--max-events-per-hour): a ceiling on billed events.
//!
//! EventBridge bills each started 64 KB of an entry as one event
//! ([`crate::encode::Entry::billed_events`]). The guard keeps a rolling hour
//! as 60 one-minute buckets: an entry is admitted if the billed events of the
//! current minute and the 59 before it, plus its own, stay within the limit;
//! otherwise it is skipped (and counted by the caller). A rolling window,
//! unlike a fixed hourly one, cannot let twice the limit through around the
//! top of the hour: any 60 minutes see at most the limit plus what one
//! minute admitted; minute steps keep it at 60 counters.
//!
//! Entries are charged when the sink takes them, once: a retry is not charged
//! again, and an entry that then fails is not refunded (a failed entry is
//! not billed by AWS, so the guard errs on the side of spending less).

use std::sync::Mutex;

use tokio::time::Instant;

use crate::encode::Entry;

/// Minutes in the rolling window.
const MINUTES: usize = 60;

/// The guard as the sink and the metrics share it: the sink admits, the
/// metrics read how much of the rolling hour is used (also while no batch
/// comes to move the window on).
#[derive(Debug)]
pub struct SharedCostGuard {
    /// The guard and the instant its window counts from.
    inner: Mutex<(CostGuard, Instant)>,
}

impl SharedCostGuard {
    /// `limit` billed events per rolling hour (0: no limit), starting now.
    pub fn new(limit: u64) -> Self {
        Self {
            inner: Mutex::new((CostGuard::new(limit), Instant::now())),
        }
    }

    /// Runs a batch through the guard at `now`: the entries kept, and how
    /// many were skipped.
    pub fn admit(&self, batch: Vec<Entry>, now: Instant) -> (Vec<Entry>, u64) {
        let mut g = self.inner.lock().expect("cost guard lock");
        let (guard, epoch) = &mut *g;
        let secs = now.saturating_duration_since(*epoch).as_secs();
        admit(guard, batch, secs)
    }

    /// Billed events in the current rolling hour.
    pub fn used(&self) -> u64 {
        let mut g = self.inner.lock().expect("cost guard lock");
        let (guard, epoch) = &mut *g;
        guard.used_at(Instant::now().saturating_duration_since(*epoch).as_secs())
    }

    /// The limit (0: none).
    pub fn limit(&self) -> u64 {
        self.inner.lock().expect("cost guard lock").0.limit()
    }
}

/// Runs a batch through the guard: the entries kept, and how many were
/// skipped.
fn admit(guard: &mut CostGuard, batch: Vec<Entry>, now_secs: u64) -> (Vec<Entry>, u64) {
    if guard.is_unlimited() {
        return (batch, 0);
    }
    let before = batch.len();
    let kept: Vec<Entry> = batch
        .into_iter()
        .filter(|e| guard.admit(e.billed_events(), now_secs))
        .collect();
    let skipped = (before - kept.len()) as u64;
    (kept, skipped)
}

#[derive(Debug)]
pub struct CostGuard {
    /// Billed events allowed per rolling hour; 0: unlimited.
    limit: u64,
    /// Billed events admitted per minute, indexed by minute % 60.
    buckets: [u64; MINUTES],
    /// The minute (since the guard's epoch) of the newest bucket.
    minute: u64,
    /// Sum of the buckets.
    total: u64,
}

impl CostGuard {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            buckets: [0; MINUTES],
            minute: 0,
            total: 0,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.limit == 0
    }

    /// Admits `billed` events at `now_secs` (seconds since any fixed epoch,
    /// never going back) if the rolling hour has room for them.
    pub fn admit(&mut self, billed: u64, now_secs: u64) -> bool {
        if self.limit == 0 {
            return true;
        }
        self.advance(now_secs / 60);
        if self.total + billed > self.limit {
            return false;
        }
        self.buckets[(self.minute % MINUTES as u64) as usize] += billed;
        self.total += billed;
        true
    }

    /// Billed events in the current rolling hour.
    pub fn used(&self) -> u64 {
        self.total
    }

    /// Billed events in the rolling hour that ends at `now_secs` (the window
    /// moves on without admitting anything).
    pub fn used_at(&mut self, now_secs: u64) -> u64 {
        if self.limit != 0 {
            self.advance(now_secs / 60);
        }
        self.total
    }

    /// The limit (0: none).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Moves the window to `minute`, forgetting minutes that fell out of it.
    fn advance(&mut self, minute: u64) {
        if minute <= self.minute {
            return;
        }
        let gone = (minute - self.minute).min(MINUTES as u64);
        for m in 1..=gone {
            let i = ((self.minute + m) % MINUTES as u64) as usize;
            self.total -= self.buckets[i];
            self.buckets[i] = 0;
        }
        self.minute = minute;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unlimited() {
        let mut g = CostGuard::new(0);
        assert!(g.is_unlimited());
        assert!((0..10_000).all(|_| g.admit(4, 0)));
    }

    #[test]
    fn admits_up_to_the_limit_then_skips() {
        let mut g = CostGuard::new(10);
        assert!(g.admit(4, 0));
        assert!(g.admit(4, 30));
        // 8 used: a 4-event entry does not fit, a 2-event one does.
        assert!(!g.admit(4, 59));
        assert!(g.admit(2, 59));
        assert!(!g.admit(1, 60));
        assert_eq!(g.used(), 10);
    }

    #[test]
    fn the_window_rolls_minute_by_minute() {
        let mut g = CostGuard::new(100);
        assert!(g.admit(60, 0)); // minute 0
        assert!(g.admit(40, 30 * 60)); // minute 30
        assert!(!g.admit(1, 59 * 60 + 59)); // minute 59: full
        // Minute 60: minute 0 has left the window, 60 events free again.
        assert!(g.admit(60, 60 * 60));
        assert!(!g.admit(1, 60 * 60));
        // Minute 90: minute 30 leaves too.
        assert!(g.admit(40, 90 * 60));
        assert_eq!(g.used(), 100);
    }

    #[test]
    fn usage_falls_as_the_window_rolls_without_traffic() {
        let mut g = CostGuard::new(100);
        assert!(g.admit(30, 0));
        assert!(g.admit(20, 30 * 60));
        assert_eq!(g.used_at(59 * 60), 50);
        assert_eq!(g.used_at(60 * 60), 20);
        assert_eq!(g.used_at(2 * 3600), 0);
        assert_eq!(g.limit(), 100);
    }

    #[test]
    fn a_long_pause_forgets_everything() {
        let mut g = CostGuard::new(5);
        assert!(g.admit(5, 0));
        assert!(!g.admit(1, 10));
        assert!(g.admit(5, 1_000_000));
        assert_eq!(g.used(), 5);
    }

    #[test]
    fn an_hour_at_the_limit_never_exceeds_it() {
        // One billed event a second for three hours against 1000/hour. Any
        // 3600 s span touches at most 61 one-minute buckets, so it holds at
        // most the limit plus one minute's admissions (here 60).
        let mut g = CostGuard::new(1000);
        let admitted: Vec<u64> = (0..3 * 3600).filter(|s| g.admit(1, *s)).collect();
        for (i, start) in admitted.iter().enumerate() {
            let n = admitted[i..].partition_point(|s| *s < start + 3600);
            assert!(n <= 1060, "{n} admitted in the hour from {start}s");
        }
        assert!(admitted.len() >= 2900, "{}", admitted.len());
    }

    fn entry(detail_len: usize) -> Entry {
        Entry {
            source: std::sync::Arc::from("udp.raw"),
            detail_type: std::sync::Arc::from("UdpPacket"),
            event_bus_name: std::sync::Arc::from("default"),
            detail: "x".repeat(detail_len).into(),
            time: std::time::UNIX_EPOCH,
            capture_ns: 0,
        }
    }

    #[test]
    fn the_cost_guard_keeps_what_fits_and_counts_the_rest() {
        let mut guard = CostGuard::new(3);
        let (kept, skipped) = admit(&mut guard, vec![entry(10), entry(10)], 0);
        assert_eq!((kept.len(), skipped), (2, 0));
        // One billed event left: the 2-event entry is skipped, the small
        // one after it still fits.
        let (kept, skipped) = admit(&mut guard, vec![entry(100 * 1024), entry(10)], 1);
        assert_eq!((kept.len(), skipped), (1, 1));
        assert_eq!(kept[0].detail.len(), 10);
        let (kept, skipped) = admit(&mut guard, vec![entry(10); 4], 2);
        assert_eq!((kept.len(), skipped), (0, 4));
        // An hour later the budget is back.
        let (kept, skipped) = admit(&mut guard, vec![entry(10); 3], 3600 + 60);
        assert_eq!((kept.len(), skipped), (3, 0));
    }

    #[test]
    fn an_unlimited_guard_keeps_everything() {
        let mut guard = CostGuard::new(0);
        let (kept, skipped) = admit(&mut guard, vec![entry(200 * 1024); 10], 0);
        assert_eq!((kept.len(), skipped), (10, 0));
    }

    #[test]
    fn big_entries_cost_more() {
        use std::{sync::Arc, time::UNIX_EPOCH};
        let entry = crate::encode::Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("default"),
            detail: "x".repeat(70 * 1024).into(),
            time: UNIX_EPOCH,
            capture_ns: 0,
        };
        assert_eq!(entry.billed_events(), 2);
        let mut g = CostGuard::new(3);
        assert!(g.admit(entry.billed_events(), 0));
        assert!(!g.admit(entry.billed_events(), 0));
    }
}
