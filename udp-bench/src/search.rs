//! The rate search shared by scenarios 2 and 3: the highest offered rate a
//! contender handles without loss.
//!
//! Bracket first (double while lossless, or halve while the first rate
//! already loses), then bisect on the rate asked for until the bracket is
//! within 5%. A lossless step the sender could not fill is run again
//! (`short_retries` times) before the search calls it the sender's limit:
//! on a shared machine a step can lose the sender's CPU for a moment.

use anyhow::Result;

use crate::traffic::Sent;

/// What the search reads from one step.
pub trait Probe: Clone {
    fn sent(&self) -> &Sent;
    fn lossless(&self) -> bool;
}

pub struct Plan {
    pub start_pps: f64,
    pub max_doublings: usize,
    pub bisections: usize,
    /// Extra runs of a lossless step the sender could not fill.
    pub short_retries: usize,
    /// Halving stops below this rate.
    pub min_pps: f64,
}

pub struct Found<S> {
    /// The lossless step with the highest achieved rate.
    pub good: Option<S>,
    /// The lossy step that bounds it from above.
    pub bad: Option<S>,
    /// The search stopped because the sender could not offer more.
    pub sender_limited: bool,
    /// Every step, in the order run.
    pub steps: Vec<S>,
}

/// Runs `run(rate)` at the rates the search picks.
pub fn search<S: Probe>(plan: &Plan, mut run: impl FnMut(f64) -> Result<S>) -> Result<Found<S>> {
    let mut steps = Vec::new();
    let mut run = |rate| -> Result<S> {
        let st = run(rate)?;
        steps.push(st.clone());
        Ok(st)
    };
    let mut good: Option<S> = None;
    let mut bad: Option<S> = None;
    let mut sender_limited = false;
    let mut rate = plan.start_pps;
    for _ in 0..=plan.max_doublings {
        let mut st = run(rate)?;
        let mut tries = 0;
        while st.lossless() && st.sent().short() && tries < plan.short_retries {
            keep_best(&mut good, st);
            st = run(rate)?;
            tries += 1;
        }
        if st.lossless() {
            let short = st.sent().short();
            keep_best(&mut good, st);
            if short {
                sender_limited = true;
                break;
            }
            if bad.is_some() {
                break;
            }
            rate *= 2.0;
        } else {
            bad = Some(st);
            if good.is_some() {
                break;
            }
            rate /= 2.0;
            if rate < plan.min_pps {
                break;
            }
        }
    }
    for _ in 0..plan.bisections {
        let (Some(g), Some(b)) = (&good, &bad) else {
            break;
        };
        let (lo, hi) = (g.sent().nominal_pps as f64, b.sent().nominal_pps as f64);
        if hi <= lo || (hi - lo) / lo <= 0.05 {
            break;
        }
        let st = run((lo + hi) / 2.0)?;
        if st.lossless() {
            keep_best(&mut good, st);
        } else {
            bad = Some(st);
        }
    }
    Ok(Found {
        good,
        bad,
        sender_limited,
        steps,
    })
}

/// Keeps the lossless step with the highest achieved rate.
fn keep_best<S: Probe>(good: &mut Option<S>, st: S) {
    if good.as_ref().is_none_or(|g| st.sent().pps > g.sent().pps) {
        *good = Some(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug)]
    struct Fake(Sent, bool);

    impl Probe for Fake {
        fn sent(&self) -> &Sent {
            &self.0
        }
        fn lossless(&self) -> bool {
            self.1
        }
    }

    /// A contender lossless up to `limit` pps, a sender that reaches at most
    /// `sender` pps.
    fn contender(limit: f64, sender: f64) -> impl FnMut(f64) -> Result<Fake> {
        move |rate| {
            let pps = rate.min(sender);
            Ok(Fake(
                Sent {
                    nominal_pps: rate as u64,
                    packets: pps as u64,
                    secs: 1.0,
                    pps,
                    cpu_s: 0.0,
                    softirqd_cpu_s: 0.0,
                },
                pps <= limit,
            ))
        }
    }

    fn plan() -> Plan {
        Plan {
            start_pps: 100_000.0,
            max_doublings: 5,
            bisections: 8,
            short_retries: 2,
            min_pps: 1000.0,
        }
    }

    #[test]
    fn brackets_then_bisects_to_within_five_percent() {
        let f = search(&plan(), contender(300_000.0, 1e9)).unwrap();
        let good = f.good.unwrap().0.pps;
        let bad = f.bad.unwrap().0.pps;
        assert!(!f.sender_limited);
        assert!(good <= 300_000.0 && bad > 300_000.0);
        assert!((bad - good) / good <= 0.05, "{good} {bad}");
    }

    #[test]
    fn halves_when_the_first_rate_loses() {
        let f = search(&plan(), contender(30_000.0, 1e9)).unwrap();
        let good = f.good.unwrap().0.pps;
        assert!((28_000.0..=30_000.0).contains(&good), "{good}");
    }

    #[test]
    fn a_short_sender_ends_the_search_after_its_retries() {
        let mut runs = 0;
        let mut inner = contender(1e9, 250_000.0);
        let f = search(&plan(), |rate| {
            runs += 1;
            inner(rate)
        })
        .unwrap();
        assert!(f.sender_limited);
        assert_eq!(f.good.as_ref().unwrap().0.pps, 250_000.0);
        assert!(f.bad.is_none());
        // 100k, 200k, then 400k three times (two retries), every one kept.
        assert_eq!(runs, 5);
        let asked: Vec<u64> = f.steps.iter().map(|s| s.0.nominal_pps).collect();
        assert_eq!(asked, [100_000, 200_000, 400_000, 400_000, 400_000]);
    }
}
