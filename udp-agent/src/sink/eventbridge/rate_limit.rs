//! The client-side PutEvents request rate limit (--max-put-events-per-second).
//!
//! A GCRA token bucket shared by every request task: [`RateLimiter::reserve`]
//! books the next free send slot under a short lock and the caller sleeps
//! until it, so waiting requests go out in order at the configured rate and
//! nothing queues here beyond the in-flight tasks (each of which already
//! holds one of the --max-in-flight slots). When the limit bites, those slots
//! stay busy, the sink stops taking batches, and the pressure reaches the
//! packet queue, whose overflow is counted (`queue_drops`).

use std::{sync::Mutex, time::Duration};

use tokio::time::{Instant, sleep_until};

#[derive(Debug)]
pub struct RateLimiter {
    /// Time between two requests at the steady rate.
    interval: Duration,
    /// How far ahead of the steady schedule a request may go: the burst.
    tolerance: Duration,
    /// Theoretical arrival time of the next request.
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `per_second` requests a second with bursts of up to `burst` (at least
    /// 1); `None` when `per_second` is 0 (no limit).
    ///
    /// In any window of `t` seconds at most `burst + per_second * t`
    /// requests go out: with the defaults (300/s, burst 30) at most 330 in
    /// any second, under the smallest Regional quota of 400.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / per_second;
        Some(Self {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            tat: Mutex::new(None),
        })
    }

    /// The burst used for a rate: a tenth of a second's worth, at least 1.
    pub fn default_burst(per_second: u32) -> u32 {
        (per_second / 10).max(1)
    }

    /// Books the next send slot; returns when the caller may send.
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut tat = self.tat.lock().expect("rate limiter lock");
        let slot = tat.map_or(now, |t| t.max(now));
        *tat = Some(slot + self.interval);
        slot.checked_sub(self.tolerance).unwrap_or(now).max(now)
    }

    /// Waits for the next send slot.
    pub async fn acquire(&self) {
        let now = Instant::now();
        let at = self.reserve(now);
        if at > now {
            sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_no_limit() {
        assert!(RateLimiter::new(0, 10).is_none());
    }

    #[test]
    fn bursts_then_paces_at_the_rate() {
        let limiter = RateLimiter::new(10, 3).unwrap();
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| limiter.reserve(t0) - t0).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100), ms(200), ms(300)]);
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let limiter = RateLimiter::new(10, 2).unwrap();
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.reserve(t0);
        }
        // Long idle: two go at once, the third waits one interval.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(limiter.reserve(t1), t1);
        assert_eq!(limiter.reserve(t1), t1);
        assert_eq!(limiter.reserve(t1), t1 + Duration::from_millis(100));
    }

    #[test]
    fn never_more_than_burst_plus_rate_in_any_second() {
        let per_second = 300;
        let burst = RateLimiter::default_burst(per_second);
        assert_eq!(burst, 30);
        let limiter = RateLimiter::new(per_second, burst).unwrap();
        let t0 = Instant::now();
        // 2000 requests all wanting to go at t0.
        let slots: Vec<Instant> = (0..2000).map(|_| limiter.reserve(t0)).collect();
        for (i, start) in slots.iter().enumerate() {
            let in_window = slots[i..]
                .iter()
                .take_while(|s| **s < *start + Duration::from_secs(1))
                .count();
            assert!(in_window <= 330, "{in_window} requests in one second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_sleeps_until_the_slot() {
        let limiter = RateLimiter::new(20, 1).unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
    }
}
