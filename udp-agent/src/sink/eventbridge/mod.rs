//! The EventBridge sink: batches of entries delivered with PutEvents,
//! concurrently, inside the account's quota, and without losing or
//! duplicating events when AWS pushes back.
//!
//! Laid out like vector's AWS sinks, smaller: [`config`] (flags, client),
//! [`service`] (the call and its partial failures), [`direct`] (the same
//! call without the SDK's per-request machinery: the hot path), [`retry`]
//! (what to retry, backoff), plus [`rate_limit`], [`cost_guard`],
//! [`dead_letter`] and [`stats`]. This module is the task that ties them
//! together.
//!
//! Flow. The dispatcher ([`run`]) takes one batch (≤10 entries, ≤256 KB,
//! made by [`crate::batch`]) at a time from the encoder, lets the cost guard
//! drop what would exceed --max-events-per-hour, waits for one of
//! --max-in-flight slots, and hands the batch to a request task. The task
//! waits for a send slot of the rate limiter (--max-put-events-per-second),
//! sends, and sorts the answer: accepted entries are done; entries refused
//! with `ThrottlingException`/`InternalFailure` and whole requests that were
//! throttled, failed with a 5xx, timed out or lost their connection are
//! resent after a backoff, up to --max-retries times; anything else is given
//! up at once. Given-up entries are counted by error code and appended to
//! the --dead-letter file.
//!
//! Memory stays bounded: a task keeps its batch (and its retries) in its
//! in-flight slot, so at most --max-in-flight × 10 entries are held here and
//! there is no retry queue to overflow. When every slot is busy (a slow or
//! throttling endpoint, or the rate limit), the dispatcher stops taking
//! batches; the batch queue fills, the encoder waits, and the packet queue
//! in front of it overflows into the `queue_drops` counter. Nothing grows.
//!
//! Entries larger than a request are impossible here (a payload, even one
//! reassembled from IP fragments, is at most 65,535 bytes, ~88 KB in
//! base64: below 256 KB); the batcher would refuse and count one
//! (`oversize`) before it reached the sink.
//!
//! Shutdown. When the shutdown signal fires or the input closes, the sink
//! keeps delivering what is queued and in flight for --drain-timeout, then
//! abandons the rest: requests still in flight are cancelled, and every entry
//! not yet settled is counted `undelivered`, logged, and written to the
//! dead-letter file with `ErrorCode` `DrainTimeout` (an entry whose request
//! was cancelled mid-flight may have reached EventBridge all the same).
//! Every entry taken in ends in exactly one of `delivered`, `failed`,
//! `cost_guard_skipped` or `undelivered` (see [`stats`]).
//!
//! Duplicates. A resend only follows an error: an entry is sent again only
//! if EventBridge refused it, or if the whole request failed. If a request
//! was processed but its answer was lost (a timeout or a dropped connection
//! after EventBridge accepted it), the resend duplicates it: delivery is
//! at-least-once, the only safe choice when the outcome is unknown.

pub mod config;
pub mod cost_guard;
pub mod dead_letter;
pub mod direct;
pub mod rate_limit;
pub mod retry;
pub mod service;
pub mod stats;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use aws_sdk_eventbridge::Client;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

pub use self::{
    config::{ConfigError, Connection, Settings},
    stats::EventBridgeStats,
};
use self::{
    cost_guard::CostGuard,
    dead_letter::{DeadLetter, Failed},
    direct::Direct,
    rate_limit::RateLimiter,
    retry::{Backoff, Retry},
};
use crate::{encode::Entry, stats::PipelineStats};

/// How often the cost guard says that it is skipping events.
const COST_GUARD_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How long cancelled request tasks get to hand back their entries before
/// they are aborted (they only need to reach their next await point).
const CANCEL_GRACE: Duration = Duration::from_secs(1);
/// `ErrorCode` of entries abandoned at the drain timeout.
pub const DRAIN_TIMEOUT_CODE: &str = "DrainTimeout";

/// A configured sink, ready to [`run`].
pub struct EventBridgeSink {
    client: Client,
    direct: Option<Direct>,
    settings: Settings,
    dead_letter: Option<DeadLetter>,
    stats: Arc<EventBridgeStats>,
    pipeline: Arc<PipelineStats>,
}

impl EventBridgeSink {
    /// Opens the dead-letter file (the one start-up step that can fail once
    /// the client exists). `pipeline` gets `emitted`/`sink_failed` counts
    /// like any sink's.
    pub fn new(
        settings: Settings,
        connection: Connection,
        pipeline: Arc<PipelineStats>,
    ) -> Result<Self, ConfigError> {
        // Requests to a global endpoint (SigV4a) stay with the SDK.
        let direct = settings
            .endpoint_id
            .is_none()
            .then(|| {
                Direct::new(
                    &connection,
                    settings.request_timeout,
                    config::CONNECT_TIMEOUT,
                    settings.max_in_flight.max(1),
                )
            })
            .flatten();
        Ok(Self {
            dead_letter: settings.open_dead_letter()?,
            direct,
            client: connection.client,
            settings,
            stats: Arc::new(EventBridgeStats::default()),
            pipeline,
        })
    }

    pub fn stats(&self) -> Arc<EventBridgeStats> {
        self.stats.clone()
    }
}

/// What the request tasks share.
struct Shared {
    client: Client,
    direct: Option<Direct>,
    endpoint_id: Option<String>,
    max_retries: u32,
    backoff: Backoff,
    limiter: Option<RateLimiter>,
    dead_letter: Option<DeadLetter>,
    stats: Arc<EventBridgeStats>,
    pipeline: Arc<PipelineStats>,
}

/// Delivers batches from `rx` until it closes or `shutdown` fires, then
/// drains for at most the drain timeout (see the module documentation).
/// Returns when every entry taken in is accounted for.
///
/// The sink runs on a single-threaded runtime of its own, on a blocking
/// thread of the caller's runtime: its request tasks and their HTTP
/// connections wake each other several times per request, and on the
/// agent's two-worker runtime every such wake-up could cross threads. On
/// one thread, `examples/sink_speed.rs` measured about a quarter less CPU
/// per request. Only the batch channel and the shutdown signal cross (tokio
/// channels work across runtimes).
pub async fn run(
    sink: EventBridgeSink,
    rx: mpsc::Receiver<Vec<Entry>>,
    shutdown: watch::Receiver<bool>,
) {
    let (stats, pipeline) = (sink.stats.clone(), sink.pipeline.clone());
    let joined = tokio::task::spawn_blocking(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(run_here(sink, rx, shutdown)),
            Err(e) => {
                error!(error = %e, "EventBridge: cannot start the sink's runtime; nothing is sent");
                drop(sink);
                let mut rx = rx;
                rx.close();
                while let Ok(batch) = rx.try_recv() {
                    let n = batch.len() as u64;
                    stats.received.fetch_add(n, Relaxed);
                    stats.undelivered.fetch_add(n, Relaxed);
                    pipeline.sink_failed.fetch_add(n, Relaxed);
                }
            }
        }
    })
    .await;
    if let Err(e) = joined {
        error!(error = %e, "the EventBridge sink thread failed; entries it held are counted undelivered");
    }
}

/// [`run`], on the current runtime.
async fn run_here(
    sink: EventBridgeSink,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let EventBridgeSink {
        client,
        direct,
        settings,
        dead_letter,
        stats,
        pipeline,
    } = sink;
    let rate = settings.max_requests_per_second;
    let shared = Arc::new(Shared {
        client,
        direct,
        endpoint_id: settings.endpoint_id.clone(),
        max_retries: settings.max_retries,
        backoff: settings.backoff,
        limiter: RateLimiter::new(rate, RateLimiter::default_burst(rate)),
        dead_letter,
        stats: stats.clone(),
        pipeline: pipeline.clone(),
    });
    info!(
        max_in_flight = settings.max_in_flight,
        max_put_events_per_second = rate,
        max_events_per_hour = settings.max_events_per_hour,
        max_retries = settings.max_retries,
        dead_letter = settings
            .dead_letter
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into()),
        "EventBridge sink running"
    );
    let drain = settings.drain_timeout;
    let slots = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    stats.start_cost_guard(settings.max_events_per_hour, Instant::now());
    let mut skip_log = SkipLog::default();
    let mut pending: Option<Vec<Entry>> = None;
    let mut input_open = true;
    let mut deadline = shutdown.borrow().then(|| Instant::now() + drain);
    let (cancel_tx, cancel_rx) = watch::channel(false);

    let timed_out = loop {
        if !input_open && pending.is_none() && tasks.is_empty() {
            break false;
        }
        tokio::select! {
            biased;
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break true;
            }
            // A dropped sender counts as the signal too.
            _ = shutdown.changed(), if deadline.is_none() => {
                deadline = Some(Instant::now() + drain);
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    error!(error = %e, "an EventBridge request task panicked; its entries are counted undelivered");
                }
            }
            slot = slots.clone().acquire_owned(), if pending.is_some() => {
                let slot = slot.expect("the semaphore is never closed");
                let batch = pending.take().expect("guarded by pending.is_some()");
                tasks.spawn(deliver(shared.clone(), batch, slot, cancel_rx.clone()));
            }
            batch = rx.recv(), if input_open && pending.is_none() => match batch {
                None => {
                    input_open = false;
                    deadline.get_or_insert_with(|| Instant::now() + drain);
                }
                Some(batch) => {
                    stats.received.fetch_add(batch.len() as u64, Relaxed);
                    let now = Instant::now();
                    let (kept, skipped) = stats.admit(batch, now);
                    if skipped > 0 {
                        stats.cost_guard_skipped.fetch_add(skipped, Relaxed);
                        skip_log.note(skipped, now, settings.max_events_per_hour);
                    }
                    pending = (!kept.is_empty()).then_some(kept);
                }
            },
        }
    };

    if timed_out {
        // Tasks hand back what they hold at their next await point; one
        // that does not within the grace is aborted, and its `Held` guard
        // still counts what it held.
        let _ = cancel_tx.send(true);
        let grace = sleep_until(Instant::now() + CANCEL_GRACE);
        tokio::pin!(grace);
        let mut aborted = false;
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                _ = &mut grace, if !aborted => {
                    tasks.abort_all();
                    aborted = true;
                }
            }
        }
        if let Some(batch) = pending.take() {
            shared.abandon(batch);
        }
        // Closing makes the encoder's sends fail (it counts those itself);
        // what is already queued is abandoned here.
        rx.close();
        while let Some(batch) = rx.recv().await {
            stats.received.fetch_add(batch.len() as u64, Relaxed);
            shared.abandon(batch);
        }
        let undelivered = stats.undelivered.load(Relaxed);
        if undelivered > 0 {
            warn!(
                undelivered,
                drain_timeout = %humantime::format_duration(drain),
                "EventBridge: entries still queued or in flight when the drain timeout ran out were not delivered"
            );
        }
    } else {
        info!("EventBridge sink drained");
    }
}

/// Runs a batch through the cost guard: the entries kept, and how many were
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

/// Says "the cost guard is skipping" at most once per interval.
#[derive(Debug, Default)]
struct SkipLog {
    last: Option<Instant>,
    since_last: u64,
}

impl SkipLog {
    fn note(&mut self, skipped: u64, now: Instant, limit: u64) {
        self.since_last += skipped;
        if self.last.is_none_or(|t| now - t >= COST_GUARD_LOG_INTERVAL) {
            warn!(
                skipped = self.since_last,
                max_events_per_hour = limit,
                "cost guard: the billed-events limit of the rolling hour is reached; skipping events until it frees up (raise --max-events-per-hour, or 0 for no limit)"
            );
            self.last = Some(now);
            self.since_last = 0;
        }
    }
}

/// The entries a request task still owes an outcome. Whatever is left when
/// the task ends without settling them (aborted, or panicked) is counted
/// undelivered.
struct Held<'a> {
    n: u64,
    shared: &'a Shared,
}

impl Held<'_> {
    /// `n` entries got their outcome.
    fn settle(&mut self, n: usize) {
        self.n -= n as u64;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.shared.stats.undelivered.fetch_add(self.n, Relaxed);
            self.shared.pipeline.sink_failed.fetch_add(self.n, Relaxed);
        }
    }
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Runs `f` unless the drain timeout cancels it first (`None`).
async fn unless_cancelled<F: Future>(
    cancel: &mut watch::Receiver<bool>,
    f: F,
) -> Option<F::Output> {
    if *cancel.borrow() {
        return None;
    }
    tokio::select! {
        biased;
        // A dropped sender cancels too.
        _ = cancel.changed() => None,
        out = f => Some(out),
    }
}

/// Sends one batch, and its retries, until every entry is delivered or given
/// up, or the drain timeout cancels it. Holds an in-flight slot throughout.
async fn deliver(
    shared: Arc<Shared>,
    batch: Vec<Entry>,
    _slot: OwnedSemaphorePermit,
    mut cancel: watch::Receiver<bool>,
) {
    let shared = &*shared;
    let stats = &*shared.stats;
    let mut held = Held {
        n: batch.len() as u64,
        shared,
    };
    let mut entries = batch;
    let mut rng = fastrand::Rng::new();
    let mut retries = 0u32;
    loop {
        let attempt = async {
            if let Some(limiter) = &shared.limiter {
                limiter.acquire().await;
            }
            stats.requests.fetch_add(1, Relaxed);
            let _in_flight = InFlight::new(&stats.in_flight);
            // Boxed: the SDK's future is tens of kilobytes, and inline it
            // would make every spawned request task that large (copied
            // into the task on each spawn).
            Box::pin(service::put_events(
                &shared.client,
                shared.direct.as_ref(),
                &entries,
                shared.endpoint_id.as_deref(),
            ))
            .await
        };
        let Some(result) = unless_cancelled(&mut cancel, attempt).await else {
            held.settle(entries.len());
            shared.abandon(entries);
            return;
        };
        let retry = match result {
            Ok(results) => {
                // Acknowledged: how long since capture, per accepted entry.
                let now = crate::clock::monotonic_ns();
                for (entry, result) in entries.iter().zip(&results) {
                    if *result == service::EntryResult::Accepted {
                        shared.pipeline.latency.observe(entry.capture_ns, now);
                    }
                }
                let outcome = service::split(entries, results);
                stats.throttled.fetch_add(outcome.throttled as u64, Relaxed);
                held.settle(outcome.delivered);
                shared.delivered(outcome.delivered as u64);
                held.settle(outcome.failed.len());
                shared.give_up(outcome.failed);
                outcome.retry
            }
            Err(err) => {
                let class = retry::classify(&err);
                let (code, message) = retry::error_code_and_message(&err);
                let failed: Vec<Failed> = entries
                    .into_iter()
                    .map(|entry| Failed {
                        entry,
                        code: code.clone(),
                        message: message.clone(),
                    })
                    .collect();
                match class {
                    Retry::Permanent => {
                        held.settle(failed.len());
                        shared.give_up(failed);
                        return;
                    }
                    Retry::Throttled => {
                        stats.throttled.fetch_add(1, Relaxed);
                        failed
                    }
                    Retry::Transient => failed,
                }
            }
        };
        if retry.is_empty() {
            return;
        }
        if retries >= shared.max_retries {
            // Out of retries: given up with the last error each one met.
            held.settle(retry.len());
            shared.give_up(retry);
            return;
        }
        let backoff = shared.backoff.delay(retries, &mut rng);
        if unless_cancelled(&mut cancel, tokio::time::sleep(backoff))
            .await
            .is_none()
        {
            held.settle(retry.len());
            shared.abandon(retry.into_iter().map(|f| f.entry).collect());
            return;
        }
        retries += 1;
        stats.retried.fetch_add(retry.len() as u64, Relaxed);
        entries = retry.into_iter().map(|f| f.entry).collect();
    }
}

impl Shared {
    fn delivered(&self, n: u64) {
        self.stats.delivered.fetch_add(n, Relaxed);
        self.pipeline.emitted.fetch_add(n, Relaxed);
    }

    /// Counts entries as failed (by code), dead-letters them, and warns at a
    /// doubling interval.
    fn give_up(&self, failed: Vec<Failed>) {
        if failed.is_empty() {
            return;
        }
        let n = failed.len() as u64;
        let before = self.stats.failed.load(Relaxed);
        for f in &failed {
            self.stats.count_failed(&f.code, 1);
        }
        self.pipeline.sink_failed.fetch_add(n, Relaxed);
        if doubled(before, before + n) {
            warn!(
                total = before + n,
                code = %failed[0].code,
                message = %failed[0].message,
                "EventBridge: giving up on entries (see the failed[...] counters and --dead-letter)"
            );
        }
        self.dead_letter(&failed);
    }

    /// Counts entries abandoned at the drain timeout and dead-letters them.
    fn abandon(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        self.stats.undelivered.fetch_add(n, Relaxed);
        self.pipeline.sink_failed.fetch_add(n, Relaxed);
        if self.dead_letter.is_some() {
            let failed: Vec<Failed> = entries
                .into_iter()
                .map(|entry| Failed {
                    entry,
                    code: DRAIN_TIMEOUT_CODE.to_owned(),
                    message: "not delivered before --drain-timeout ran out at shutdown".to_owned(),
                })
                .collect();
            self.dead_letter(&failed);
        }
    }

    fn dead_letter(&self, failed: &[Failed]) {
        let Some(dl) = &self.dead_letter else { return };
        let n = failed.len() as u64;
        match dl.write(failed) {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(n, Relaxed);
            }
            Err(e) => {
                let before = self.stats.dead_letter_errors.fetch_add(n, Relaxed);
                if doubled(before, before + n) {
                    warn!(error = %e, path = %dl.path().display(), "could not write to the dead-letter file");
                }
            }
        }
    }
}

/// True if a counter going from `before` to `after` reached a new power of
/// two (1, 2, 4, 8, …): warn then, never once per entry.
fn doubled(before: u64, after: u64) -> bool {
    after > before && (before == 0 || before.ilog2() != after.ilog2())
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;

    fn entry(detail_len: usize) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("default"),
            detail: "x".repeat(detail_len).into(),
            time: UNIX_EPOCH,
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
    fn warnings_double() {
        let warned: Vec<u64> = (0..20)
            .filter(|n| doubled(*n, n + 1))
            .map(|n| n + 1)
            .collect();
        assert_eq!(warned, [1, 2, 4, 8, 16]);
        assert!(doubled(3, 13)); // crosses 4 and 8
        assert!(!doubled(9, 15));
        assert!(!doubled(5, 5));
    }
}
