//! The sink seam: where batches of entries go, and how a sink says it is
//! done with one.
//!
//! The capture side (capture ▸ encode ▸ batch) knows a sink only through
//! [`Sink`]: the batcher cuts batches to the sink's [`Limits`], and each
//! batch reaches the sink as a [`Delivery`] carrying an [`Ack`]. A sink
//! calls [`Ack::done`] once every entry of the batch has its outcome
//! (delivered, or given up and dead-lettered). In front of a sink that
//! talks to a network ([`Sink::durable`]), the spool ([`crate::spool`])
//! holds each batch on disk until that acknowledgement; a batch whose
//! `Ack` is dropped without `done` is released back to it, stays there, and
//! is sent again by the next run. A new sink is one new module implementing
//! [`Sink`], plus its line where `run` builds the selected one.
//!
//! How `--sink` and `--event-bus` combine ([`select`]) is decided in one
//! place so that nobody is surprised:
//!
//! | `--sink`          | `--event-bus` given         | not given                      |
//! |-------------------|-----------------------------|--------------------------------|
//! | `auto` (default)  | EventBridge, to that bus    | stdout dry run, bus `default`  |
//! | `stdout`          | dry run printing that bus   | dry run, bus `default`         |
//! | `eventbridge`     | EventBridge, to that bus    | EventBridge, bus `default`     |
//!
//! So a run with no bus configured stays the dry run unless
//! `--sink eventbridge` asks for the account's `default` bus explicitly, and
//! the entries printed by a dry run are exactly the ones the same command
//! line with `--sink eventbridge` would send.

pub mod eventbridge;
pub mod stdout;

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use tokio::sync::{mpsc, watch};

use crate::{
    encode::{DEFAULT_EVENT_BUS, Entry},
    stats::Sample,
};

/// `--sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// EventBridge if `--event-bus` is given, stdout otherwise.
    Auto,
    /// One PutEvents request entry per line on stdout (logs go to stderr).
    Stdout,
    /// PutEvents to `--event-bus` (or the `default` bus).
    #[value(name = "eventbridge")]
    EventBridge,
}

/// The sink a run uses, once `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selected {
    Stdout,
    EventBridge,
}

/// Resolves `--sink` against `--event-bus` (see the table above).
pub fn select(kind: SinkKind, event_bus: Option<&str>) -> Selected {
    match (kind, event_bus) {
        (SinkKind::Stdout, _) => Selected::Stdout,
        (SinkKind::EventBridge, _) => Selected::EventBridge,
        (SinkKind::Auto, Some(_)) => Selected::EventBridge,
        (SinkKind::Auto, None) => Selected::Stdout,
    }
}

/// The `EventBusName` every entry carries, whichever sink prints or sends it.
pub fn event_bus_name(event_bus: Option<&str>) -> &str {
    event_bus.unwrap_or(DEFAULT_EVENT_BUS)
}

/// What one request of a sink may hold: the batcher cuts batches to these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries per batch.
    pub max_entries: usize,
    /// Bytes per batch, counting entries as [`Entry::aws_size`] does.
    pub max_batch_bytes: usize,
}

/// Where a spooled batch lives: the spool's segment and the record's index
/// in it. Opaque to sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Held {
    pub segment: u64,
    pub index: u32,
    /// Entries in the batch (so the spool's gauges need no lookup).
    pub entries: u32,
}

/// What a sink says of a spooled batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every entry has its outcome: the spool forgets the batch.
    Done(Held),
    /// The sink lets go of it unfinished (shutdown): it stays spooled, and
    /// the next run sends it.
    Released(Held),
}

/// A sink's acknowledgement of one batch. Durable when the batch is held
/// in the spool: then `done` lets the spool forget it, and dropping the
/// `Ack` without `done` releases it, unfinished, back to the spool (it
/// stays there for the next run). In memory (no spool) there is nothing to
/// release.
#[derive(Debug)]
pub struct Ack(Option<(Held, mpsc::UnboundedSender<Settled>)>);

impl Ack {
    /// A batch that lives only in memory.
    pub fn in_memory() -> Ack {
        Ack(None)
    }

    /// A batch held in the spool, settled by a message on `tx`.
    pub fn spooled(held: Held, tx: mpsc::UnboundedSender<Settled>) -> Ack {
        Ack(Some((held, tx)))
    }

    /// True if the batch survives this process: a sink that cannot finish
    /// it (shutdown) leaves it to the next run instead of dead-lettering it.
    pub fn is_durable(&self) -> bool {
        self.0.is_some()
    }

    /// Every entry of the batch has its outcome.
    pub fn done(mut self) {
        if let Some((held, tx)) = self.0.take() {
            // A spool that is gone has nothing left to release.
            let _ = tx.send(Settled::Done(held));
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some((held, tx)) = self.0.take() {
            let _ = tx.send(Settled::Released(held));
        }
    }
}

/// A batch on its way to a sink, with the handle that acknowledges it.
#[derive(Debug)]
pub struct Delivery {
    pub entries: Vec<Entry>,
    pub ack: Ack,
}

impl Delivery {
    pub fn in_memory(entries: Vec<Entry>) -> Delivery {
        Delivery {
            entries,
            ack: Ack::in_memory(),
        }
    }
}

/// A sink's monotonic counters, as the health check reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkProgress {
    /// Entries accepted (by EventBridge; written, for stdout).
    pub delivered: u64,
    /// Entries given up on.
    pub failed: u64,
    /// Entries taken in and not settled yet: in flight, being retried.
    pub pending: u64,
}

/// What the rest of the agent reads of a running sink: its counters, for
/// the metrics endpoint, the health check and the final report.
pub trait SinkStats: fmt::Debug + Send + Sync {
    /// The sink's series for `/metrics` (names without the `udp_agent_`
    /// prefix and `_total` suffix).
    fn samples(&self) -> Vec<Sample>;
    /// One line of `name=value` pairs for the log at exit.
    fn summary(&self) -> String;
    /// Delivered, given up and pending entries, for `/healthz`.
    fn progress(&self) -> SinkProgress;
    /// True while a cost limit refuses every new event.
    fn cost_guard_tripped(&self) -> bool {
        false
    }
}

/// The future a sink runs as.
pub type SinkRun = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A configured sink, ready to run.
pub trait Sink: Send {
    /// What one of its requests may hold.
    fn limits(&self) -> Limits;
    /// True for sinks that talk to a network: the spool holds their batches
    /// until acknowledged.
    fn durable(&self) -> bool;
    fn stats(&self) -> Arc<dyn SinkStats>;
    /// Delivers from `input` until it closes, or until `shutdown` turns
    /// true; then finishes within the sink's drain time. Every entry taken
    /// in ends in one of the sink's counters and in `PipelineStats`'
    /// `emitted` or `sink_failed`, or (durable batches) stays spooled.
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Delivery>,
        shutdown: watch::Receiver<bool>,
    ) -> SinkRun;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_selection_table() {
        use Selected::*;
        use SinkKind as K;
        let bus = Some("orders");
        assert_eq!(select(K::Auto, bus), EventBridge);
        assert_eq!(select(K::Auto, None), Stdout);
        assert_eq!(select(K::Stdout, bus), Stdout);
        assert_eq!(select(K::Stdout, None), Stdout);
        assert_eq!(select(K::EventBridge, bus), EventBridge);
        assert_eq!(select(K::EventBridge, None), EventBridge);
    }

    #[test]
    fn bus_name_defaults_to_default() {
        assert_eq!(event_bus_name(None), "default");
        assert_eq!(
            event_bus_name(Some(
                "arn:aws:events:us-east-1:123456789012:event-bus/orders"
            )),
            "arn:aws:events:us-east-1:123456789012:event-bus/orders"
        );
    }

    #[test]
    fn sink_names_on_the_command_line() {
        use clap::ValueEnum;
        let names: Vec<String> = SinkKind::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(names, ["auto", "stdout", "eventbridge"]);
    }

    #[test]
    fn an_ack_releases_what_it_holds_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let held = Held {
            segment: 3,
            index: 7,
            entries: 10,
        };
        let ack = Ack::spooled(held, tx.clone());
        assert!(ack.is_durable());
        ack.done();
        assert_eq!(rx.try_recv().unwrap(), Settled::Done(held));
        assert!(rx.try_recv().is_err(), "once");
        // Dropped without `done`: released, unfinished.
        drop(Ack::spooled(held, tx));
        assert_eq!(rx.try_recv().unwrap(), Settled::Released(held));
        assert!(rx.try_recv().is_err());
        assert!(!Ack::in_memory().is_durable());
        Ack::in_memory().done();
    }
}
