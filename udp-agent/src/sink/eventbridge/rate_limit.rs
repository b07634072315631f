//! The PutEvents request rate: a ceiling (--max-put-events-per-second) and,
//! under it, a rate that adapts to throttling.
//!
//! The PutEvents quota is per account and Region and shared by every agent
//! of a fleet, so no agent knows its share. Each one runs AIMD, as TCP does
//! for a shared link: on throttling it multiplies its rate by [`DECREASE`]
//! (at most once per [`DECREASE_SPACING`], so one burst of refusals counts
//! once), and while requests succeed it adds [`INCREASE_PER_SECOND`] of
//! its ceiling each second. Agents that see the same throttling cut in
//! proportion to their rates and regain at the same pace, so their rates
//! converge on equal shares whose sum hovers just under the quota.
//!
//! Sending is paced by GCRA: [`RateLimiter::reserve`] books the next free
//! send slot at the current rate under a short lock, and the caller sleeps
//! until it, so waiting requests go out in order and nothing queues here
//! beyond the in-flight tasks (each holding one of the --max-in-flight
//! slots). When the rate bites, those slots stay busy, the sink stops
//! taking batches, and the backlog waits in the spool.

use std::{sync::Mutex, time::Duration};

use tokio::time::{Instant, sleep_until};

/// The rate is multiplied by this on throttling.
pub const DECREASE: f64 = 0.7;
/// Throttling within this long after a decrease does not decrease again:
/// the answers to requests sent at the old rate are still arriving.
pub const DECREASE_SPACING: Duration = Duration::from_millis(200);
/// While requests succeed, the rate grows by this share of the ceiling per
/// second: from `DECREASE` × ceiling back to the ceiling in 15 s. Faster
/// growth overshoots a shared quota further between two cuts (simulated
/// in the tests: at 5% a second, three agents sent 6% more requests than
/// the quota; at 2%, 2–3% more).
pub const INCREASE_PER_SECOND: f64 = 0.02;
/// The rate never falls below this many requests per second.
pub const FLOOR: f64 = 1.0;

#[derive(Debug)]
pub struct RateLimiter {
    ceiling: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Requests per second now.
    rate: f64,
    /// Theoretical arrival time of the next request.
    tat: Option<Instant>,
    last_decrease: Option<Instant>,
    last_increase: Option<Instant>,
}

impl RateLimiter {
    /// At most `per_second` requests a second; `None` when it is 0 (no
    /// limit, and no adaptation either).
    pub fn new(per_second: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let ceiling = f64::from(per_second);
        Some(Self {
            ceiling,
            state: Mutex::new(State {
                rate: ceiling,
                tat: None,
                last_decrease: None,
                last_increase: None,
            }),
        })
    }

    /// Requests per second now.
    pub fn rate(&self) -> f64 {
        self.state.lock().expect("rate limiter lock").rate
    }

    /// Books the next send slot; returns when the caller may send.
    ///
    /// The burst is a tenth of a second at the current rate (at least one
    /// request): in any window of `t` seconds at most `rate × (t + 0.1)`
    /// requests go out, with the defaults (300/s) at most 330 in any second,
    /// under the smallest Regional quota of 400.
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut s = self.state.lock().expect("rate limiter lock");
        let interval = Duration::from_secs_f64(1.0 / s.rate);
        let burst = (s.rate / 10.0).floor().max(1.0);
        let tolerance = interval.mul_f64(burst - 1.0);
        let slot = s.tat.map_or(now, |t| t.max(now));
        s.tat = Some(slot + interval);
        slot.checked_sub(tolerance).unwrap_or(now).max(now)
    }

    /// Waits for the next send slot.
    pub async fn acquire(&self) {
        let now = Instant::now();
        let at = self.reserve(now);
        if at > now {
            sleep_until(at).await;
        }
    }

    /// EventBridge throttled a request or an entry.
    pub fn throttled(&self, now: Instant) {
        let mut s = self.state.lock().expect("rate limiter lock");
        if s.last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_SPACING)
        {
            return;
        }
        s.rate = (s.rate * DECREASE).max(FLOOR);
        s.last_decrease = Some(now);
        s.last_increase = Some(now);
        // Slots booked at the old rate would keep it a while longer.
        if let Some(tat) = s.tat {
            let ahead = tat.saturating_duration_since(now);
            s.tat = Some(now + ahead.min(Duration::from_secs_f64(1.0 / s.rate)));
        }
    }

    /// A request went through without throttling.
    pub fn succeeded(&self, now: Instant) {
        let mut s = self.state.lock().expect("rate limiter lock");
        if s.rate >= self.ceiling {
            s.last_increase = Some(now);
            return;
        }
        let since = s
            .last_increase
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(1));
        s.rate =
            (s.rate + self.ceiling * INCREASE_PER_SECOND * since.as_secs_f64()).min(self.ceiling);
        s.last_increase = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(RateLimiter::new(0).is_none());
    }

    #[test]
    fn bursts_a_tenth_of_a_second_then_paces_at_the_rate() {
        let limiter = RateLimiter::new(30).unwrap();
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| limiter.reserve(t0) - t0).collect();
        let step = Duration::from_secs_f64(1.0 / 30.0);
        // Burst of 3 at once, then one every 1/30 s.
        let want: Vec<Duration> = [0, 0, 0, 1, 2, 3].iter().map(|k| step * *k).collect();
        for (w, x) in waits.iter().zip(&want) {
            assert!(w.abs_diff(*x) < Duration::from_micros(10), "{waits:?}");
        }
    }

    #[test]
    fn never_more_than_the_rate_plus_a_tenth_in_any_second() {
        let limiter = RateLimiter::new(300).unwrap();
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

    #[test]
    fn throttling_cuts_once_per_spacing_and_success_regains_slowly() {
        let limiter = RateLimiter::new(100).unwrap();
        let t0 = Instant::now();
        limiter.throttled(t0);
        assert!((limiter.rate() - 70.0).abs() < 1e-9);
        // The rest of the same burst of refusals.
        limiter.throttled(t0 + ms(50));
        limiter.throttled(t0 + ms(199));
        assert!((limiter.rate() - 70.0).abs() < 1e-9);
        limiter.throttled(t0 + ms(200));
        assert!((limiter.rate() - 49.0).abs() < 1e-9);
        // 2 per second per second back up, capped at the ceiling.
        limiter.succeeded(t0 + ms(1200));
        assert!((limiter.rate() - 51.0).abs() < 1e-9, "{}", limiter.rate());
        for s in 2..40 {
            limiter.succeeded(t0 + ms(200) + Duration::from_secs(s));
        }
        assert_eq!(limiter.rate(), 100.0);
    }

    #[test]
    fn the_rate_has_a_floor() {
        let limiter = RateLimiter::new(10).unwrap();
        let t0 = Instant::now();
        for k in 0..100 {
            limiter.throttled(t0 + ms(300 * k));
        }
        assert_eq!(limiter.rate(), FLOOR);
    }

    /// Three agents, each with more to send than the quota allows, against
    /// one token bucket, simulated in steps of a millisecond (the agents'
    /// requests reach the bucket in a random order each step, as they would
    /// over a network): the rates converge on fair shares and their sum
    /// stays near the quota. The network ring checks the same with real
    /// agents against `fake-eventbridge --quota`.
    #[test]
    fn agents_sharing_a_quota_converge_on_fair_shares() {
        let quota = 150.0_f64;
        let agents: Vec<RateLimiter> = (0..3).map(|_| RateLimiter::new(300).unwrap()).collect();
        let t0 = Instant::now();
        let mut next: Vec<Instant> = agents.iter().map(|a| a.reserve(t0)).collect();
        // The endpoint's bucket: `quota` per second, a tenth of a second of burst.
        let mut tokens = quota / 10.0;
        let mut accepted = [0u64; 3];
        let mut sent = 0u64;
        let step = ms(1);
        let mut now = t0;
        let mut rng = fastrand::Rng::with_seed(5);
        let mut order = [0usize, 1, 2];
        let warm_up = t0 + Duration::from_secs(10);
        let end = t0 + Duration::from_secs(40);
        while now < end {
            now += step;
            tokens = (tokens + quota * step.as_secs_f64()).min(quota / 10.0);
            rng.shuffle(&mut order);
            for &i in &order {
                let a = &agents[i];
                while next[i] <= now {
                    let ok = tokens >= 1.0;
                    if ok {
                        tokens -= 1.0;
                        a.succeeded(now);
                    } else {
                        a.throttled(now);
                    }
                    if now >= warm_up {
                        sent += 1;
                        accepted[i] += u64::from(ok);
                    }
                    next[i] = a.reserve(now);
                }
            }
        }
        let secs = (end - warm_up).as_secs_f64();
        let total = sent as f64 / secs;
        assert!(
            (total - quota).abs() <= quota * 0.1,
            "{total:.1} requests/s against a quota of {quota}"
        );
        for (i, a) in accepted.iter().enumerate() {
            let rate = *a as f64 / secs;
            assert!(
                rate >= quota / 3.0 / 2.0,
                "agent {i}: {rate:.1} accepted/s, {accepted:?}"
            );
        }
    }
}
