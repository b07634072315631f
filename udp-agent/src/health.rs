//! The health check, `GET /healthz`: whether a load balancer should send
//! this agent datagrams.
//!
//! 200 when the XDP program is attached on every `--iface` and the sink is
//! delivering or idle; 503 otherwise, with a short JSON body naming each
//! reason:
//!
//! | reason | when |
//! |---|---|
//! | `detached` | an `--iface` has no program attached (it went away, or has not appeared yet) |
//! | `sink_failing` | the sink has delivered nothing for `--health-sink-grace` while entries waited or failed |
//! | `spool_full` | the spool has less than a segment of room left within `--spool-max-bytes`, or its disk refuses writes |
//! | `cost_guard_tripped` | `--max-events-per-hour` is used up for the rolling hour |
//!
//! ```json
//! {"status":"ok","sink":"delivering"}
//! {"status":"unhealthy","sink":"failing","reasons":[{"reason":"detached","iface":"ens6"},{"reason":"sink_failing","seconds":42}]}
//! ```
//!
//! An answer reads only what is already in memory: the hot-plug watcher's
//! interface table ([`InterfaceStatus`]), the sink state that [`watch`]
//! samples once a second, one flag, and the cost guard's sum. No kernel map
//! is read (unlike `/metrics`, which scans the port table), so a health
//! check costs microseconds, and its body reveals no counter, port or
//! address: it is safe to open to the VPC.
//!
//! Sink state comes from the sink's own monotonic counters
//! ([`SinkStats::progress`]), sampled every [`SAMPLE_INTERVAL`]:
//! * *delivering*: more entries were accepted since the last sample;
//! * *idle*: none were, nothing is waiting and nothing failed;
//! * *failing*: none were, while entries waited (in flight, being
//!   retried) or were given up. It counts from the last sample that was
//!   delivering or idle; past the grace, `/healthz` answers 503.
//!
//! A sink that gives up on what it held and then has nothing to do is idle
//! again: a host that the load balancer routed away from can only show that
//! it recovered by getting traffic back, so it does not stay unhealthy for
//! want of a delivery. (With the spool, entries wait until delivered, so a
//! dead endpoint keeps the sink failing.)

use std::{
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use serde::Serialize;
use tokio::{sync::watch, time::Instant};

pub use crate::sink::SinkProgress;
use crate::{
    hotplug::{IfaceState, InterfaceStatus},
    sink::SinkStats,
    spool::SpoolStats,
};

/// How often the sink's counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Default `--health-sink-grace`: longer than a request timeout (10 s) and
/// a few backoffs, shorter than an NLB's default unhealthy threshold takes
/// to notice a dead host (3 checks × 10 s).
pub const DEFAULT_SINK_GRACE: &str = "30s";

/// The sink's state at the last sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkState {
    Idle,
    Delivering,
    /// Nothing delivered since `since` while entries waited or failed.
    Failing {
        since: Instant,
    },
}

impl SinkState {
    fn name(self) -> &'static str {
        match self {
            SinkState::Idle => "idle",
            SinkState::Delivering => "delivering",
            SinkState::Failing { .. } => "failing",
        }
    }
}

/// Turns samples of [`SinkProgress`] into a [`SinkState`].
#[derive(Debug)]
pub struct SinkTracker {
    last: Option<SinkProgress>,
    /// The last sample at which the sink was delivering or idle.
    fine_at: Instant,
    state: SinkState,
}

impl SinkTracker {
    pub fn new(now: Instant) -> Self {
        Self {
            last: None,
            fine_at: now,
            state: SinkState::Idle,
        }
    }

    pub fn observe(&mut self, p: SinkProgress, now: Instant) -> SinkState {
        let prev = self.last.replace(p);
        let delivered = prev.is_some_and(|q| p.delivered > q.delivered);
        let gave_up = prev.is_some_and(|q| p.failed > q.failed);
        self.state = if delivered {
            // Some entries refused for good (a malformed one) while others
            // go through: the endpoint works.
            SinkState::Delivering
        } else if p.pending == 0 && !gave_up {
            SinkState::Idle
        } else {
            SinkState::Failing {
                since: self.fine_at,
            }
        };
        if !matches!(self.state, SinkState::Failing { .. }) {
            self.fine_at = now;
        }
        self.state
    }

    pub fn state(&self) -> SinkState {
        self.state
    }
}

/// Why the agent is not healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// No program attached to this `--iface`.
    Detached {
        iface: String,
    },
    /// Nothing delivered for this many seconds while entries waited.
    SinkFailing {
        seconds: u64,
    },
    SpoolFull,
    CostGuardTripped,
}

/// The answer to one health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `ok` or `unhealthy`.
    pub status: &'static str,
    /// `delivering`, `idle` or `failing` (which may still be within the
    /// grace).
    pub sink: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
}

impl Verdict {
    pub fn healthy(&self) -> bool {
        self.reasons.is_empty()
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a verdict serializes");
        s.push('\n');
        s
    }
}

/// What a verdict is made of, at one instant.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub interfaces: &'a [IfaceState],
    pub sink: SinkState,
    pub grace: Duration,
    pub spool_full: bool,
    pub cost_guard_tripped: bool,
    pub now: Instant,
}

/// The decision table.
pub fn decide(i: &Inputs) -> Verdict {
    let mut reasons: Vec<Reason> = i
        .interfaces
        .iter()
        .filter(|s| s.mode.is_none())
        .map(|s| Reason::Detached {
            iface: s.name.clone(),
        })
        .collect();
    if let SinkState::Failing { since } = i.sink {
        let failing = i.now.saturating_duration_since(since);
        if failing >= i.grace {
            reasons.push(Reason::SinkFailing {
                seconds: failing.as_secs(),
            });
        }
    }
    if i.spool_full {
        reasons.push(Reason::SpoolFull);
    }
    if i.cost_guard_tripped {
        reasons.push(Reason::CostGuardTripped);
    }
    Verdict {
        status: if reasons.is_empty() {
            "ok"
        } else {
            "unhealthy"
        },
        sink: i.sink.name(),
        reasons,
    }
}

/// Everything `/healthz` reads, shared by the HTTP tasks and [`watch`].
#[derive(Debug)]
pub struct Health {
    interfaces: Arc<InterfaceStatus>,
    sink: Arc<dyn SinkStats>,
    spool: Option<Arc<SpoolStats>>,
    grace: Duration,
    tracker: Mutex<SinkTracker>,
}

impl Health {
    /// `grace`: `--health-sink-grace`.
    pub fn new(
        interfaces: Arc<InterfaceStatus>,
        sink: Arc<dyn SinkStats>,
        spool: Option<Arc<SpoolStats>>,
        grace: Duration,
    ) -> Self {
        Self {
            interfaces,
            sink,
            spool,
            grace,
            tracker: Mutex::new(SinkTracker::new(Instant::now())),
        }
    }

    /// Samples the sink's counters (every [`SAMPLE_INTERVAL`], by [`watch`]).
    pub fn sample(&self, now: Instant) {
        let p = self.sink.progress();
        self.tracker.lock().expect("health lock").observe(p, now);
    }

    /// The verdict at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let interfaces = self.interfaces.snapshot();
        let sink = self.tracker.lock().expect("health lock").state();
        decide(&Inputs {
            interfaces: &interfaces,
            sink,
            grace: self.grace,
            spool_full: self
                .spool
                .as_ref()
                .is_some_and(|s| s.full.load(Relaxed) || s.failing.load(Relaxed)),
            cost_guard_tripped: self.sink.cost_guard_tripped(),
            now,
        })
    }
}

/// Samples the sink every [`SAMPLE_INTERVAL`] until `stop` turns true.
pub async fn watch(health: Arc<Health>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            t = tick.tick() => health.sample(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use super::*;
    use crate::loader::Attached;

    fn progress(delivered: u64, failed: u64, pending: u64) -> SinkProgress {
        SinkProgress {
            delivered,
            failed,
            pending,
        }
    }

    fn ifaces(attached: &[(&str, bool)]) -> Vec<IfaceState> {
        attached
            .iter()
            .enumerate()
            .map(|(i, (name, up))| IfaceState {
                mode: up.then_some(Attached::Skb),
                ..IfaceState::attached(name, i as u32 + 2, Attached::Skb)
            })
            .collect()
    }

    fn inputs(interfaces: &[IfaceState], sink: SinkState, now: Instant) -> Inputs<'_> {
        Inputs {
            interfaces,
            sink,
            grace: Duration::from_secs(30),
            spool_full: false,
            cost_guard_tripped: false,
            now,
        }
    }

    /// A base instant far enough from the clock's start to subtract from.
    fn base() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn the_decision_table() {
        let t0 = base();
        let up = ifaces(&[("eth0", true), ("eth1", true)]);
        let one_gone = ifaces(&[("eth0", true), ("eth1", false)]);
        let failing_for = |s: u64| SinkState::Failing {
            since: t0 - Duration::from_secs(s),
        };
        use Reason::*;
        let cases: Vec<(&str, Inputs, Vec<Reason>)> = vec![
            ("attached, idle", inputs(&up, SinkState::Idle, t0), vec![]),
            (
                "attached, delivering",
                inputs(&up, SinkState::Delivering, t0),
                vec![],
            ),
            (
                "failing within the grace",
                inputs(&up, failing_for(29), t0),
                vec![],
            ),
            (
                "failing for the grace",
                inputs(&up, failing_for(30), t0),
                vec![SinkFailing { seconds: 30 }],
            ),
            (
                "one interface gone",
                inputs(&one_gone, SinkState::Delivering, t0),
                vec![Detached {
                    iface: "eth1".into(),
                }],
            ),
            (
                "spool full",
                Inputs {
                    spool_full: true,
                    ..inputs(&up, SinkState::Delivering, t0)
                },
                vec![SpoolFull],
            ),
            (
                "cost guard",
                Inputs {
                    cost_guard_tripped: true,
                    ..inputs(&up, SinkState::Idle, t0)
                },
                vec![CostGuardTripped],
            ),
            (
                "everything at once, in order",
                Inputs {
                    spool_full: true,
                    cost_guard_tripped: true,
                    ..inputs(&one_gone, failing_for(90), t0)
                },
                vec![
                    Detached {
                        iface: "eth1".into(),
                    },
                    SinkFailing { seconds: 90 },
                    SpoolFull,
                    CostGuardTripped,
                ],
            ),
        ];
        for (what, i, want) in cases {
            let v = decide(&i);
            assert_eq!(v.reasons, want, "{what}");
            assert_eq!(v.healthy(), want.is_empty(), "{what}");
            assert_eq!(v.status, if want.is_empty() { "ok" } else { "unhealthy" });
        }
    }

    #[test]
    fn the_body_is_short_json() {
        let t0 = base();
        let gone = ifaces(&[("ens5", false)]);
        let v = decide(&inputs(
            &gone,
            SinkState::Failing {
                since: t0 - Duration::from_secs(42),
            },
            t0,
        ));
        assert_eq!(
            v.to_json(),
            r#"{"status":"unhealthy","sink":"failing","reasons":[{"reason":"detached","iface":"ens5"},{"reason":"sink_failing","seconds":42}]}
"#
        );
        let up = ifaces(&[("ens5", true)]);
        let v = decide(&inputs(&up, SinkState::Delivering, t0));
        assert_eq!(v.to_json(), "{\"status\":\"ok\",\"sink\":\"delivering\"}\n");
    }

    #[test]
    fn the_sink_state_follows_its_counters() {
        let t0 = base();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = SinkTracker::new(t0);
        // Nothing happened yet.
        assert_eq!(t.observe(progress(0, 0, 0), at(1)), SinkState::Idle);
        // Entries go out.
        assert_eq!(t.observe(progress(10, 0, 3), at(2)), SinkState::Delivering);
        assert_eq!(t.observe(progress(20, 0, 0), at(3)), SinkState::Delivering);
        assert_eq!(t.observe(progress(20, 0, 0), at(4)), SinkState::Idle);
        // The endpoint goes away: entries wait; failing since the last
        // sample that was fine.
        let failing = SinkState::Failing { since: at(4) };
        assert_eq!(t.observe(progress(20, 0, 5), at(5)), failing);
        assert_eq!(t.observe(progress(20, 0, 9), at(6)), failing);
        // Given up, nothing left: still failing for this sample…
        assert_eq!(t.observe(progress(20, 9, 0), at(7)), failing);
        // …then idle, so that traffic can come back to show the way.
        assert_eq!(t.observe(progress(20, 9, 0), at(8)), SinkState::Idle);
        // A delivery ends a failure even if some entries are refused.
        assert_eq!(
            t.observe(progress(20, 9, 4), at(9)),
            SinkState::Failing { since: at(8) }
        );
        assert_eq!(
            t.observe(progress(21, 12, 0), at(10)),
            SinkState::Delivering
        );
    }

    #[derive(Debug, Default)]
    struct FakeSink {
        delivered: AtomicU64,
        pending: AtomicU64,
        tripped: AtomicBool,
    }

    impl SinkStats for FakeSink {
        fn samples(&self) -> Vec<crate::stats::Sample> {
            Vec::new()
        }

        fn summary(&self) -> String {
            String::new()
        }

        fn progress(&self) -> SinkProgress {
            progress(self.delivered.load(Relaxed), 0, self.pending.load(Relaxed))
        }

        fn cost_guard_tripped(&self) -> bool {
            self.tripped.load(Relaxed)
        }
    }

    #[test]
    fn health_reads_every_input() {
        let t0 = base();
        let interfaces = Arc::new(InterfaceStatus::default());
        interfaces.set(ifaces(&[("eth0", true)]));
        let sink = Arc::new(FakeSink::default());
        let spool = Arc::new(SpoolStats::default());
        let health = Health::new(
            interfaces.clone(),
            sink.clone(),
            Some(spool.clone()),
            Duration::from_secs(5),
        );
        assert!(health.check(t0).healthy());

        // The spool: full, or its disk refusing writes.
        spool.full.store(true, Relaxed);
        assert_eq!(health.check(t0).reasons, vec![Reason::SpoolFull]);
        spool.full.store(false, Relaxed);
        spool.failing.store(true, Relaxed);
        assert_eq!(health.check(t0).reasons, vec![Reason::SpoolFull]);
        spool.failing.store(false, Relaxed);
        assert!(health.check(t0).healthy());

        sink.tripped.store(true, Relaxed);
        assert_eq!(health.check(t0).reasons, vec![Reason::CostGuardTripped]);
        sink.tripped.store(false, Relaxed);

        // Entries wait and nothing is delivered: 503 once the grace is over.
        health.sample(t0);
        sink.pending.store(3, Relaxed);
        for s in 1..=6 {
            health.sample(t0 + Duration::from_secs(s));
        }
        assert_eq!(health.check(t0 + Duration::from_secs(4)).sink, "failing");
        assert!(health.check(t0 + Duration::from_secs(4)).healthy());
        assert_eq!(
            health.check(t0 + Duration::from_secs(6)).reasons,
            vec![Reason::SinkFailing { seconds: 6 }]
        );
        sink.delivered.store(3, Relaxed);
        health.sample(t0 + Duration::from_secs(7));
        assert!(health.check(t0 + Duration::from_secs(7)).healthy());

        interfaces.set(ifaces(&[("eth0", false)]));
        assert_eq!(
            health.check(t0).reasons,
            vec![Reason::Detached {
                iface: "eth0".into()
            }]
        );
    }
}
