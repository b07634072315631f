//! The EventBridge sink: batches of entries delivered with PutEvents,
//! concurrently, inside the account's quota, and without losing or
//! duplicating events when AWS pushes back.
//!
//! Laid out like vector's AWS sinks, smaller: [`settings`] (settings, client),
//! [`service`] (the call and its partial failures), [`direct`] (the same
//! call without the SDK's per-request machinery: the hot path), [`retry`]
//! (what to retry, backoff), plus [`rate_limit`], [`cost_guard`],
//! [`dead_letter`] and [`stats`]. This module is the task that ties them
//! together.
//!
//! Flow. The dispatcher ([`run`]) takes one [`Delivery`] (≤10 entries,
//! ≤256 KB: [`LIMITS`]) at a time, lets the cost guard drop what would
//! exceed --max-events-per-hour, waits for one of --max-in-flight slots,
//! and hands the batch to a request task. The task waits for a send slot
//! of the rate limiter (--max-put-events-per-second, lowered while
//! EventBridge throttles), sends, and sorts the answer: accepted entries
//! are done; entries refused with `ThrottlingException`/`InternalFailure`
//! and whole requests that were throttled, failed with a 5xx, timed out or
//! lost their connection are resent after a backoff, until they are
//! delivered or older than --spool-max-age (or, if --max-retries is set,
//! out of retries); anything else is given up at once. Given-up entries
//! are counted by error code and appended to the --dead-letter file. Once
//! every entry of the batch has its outcome, the task acknowledges it
//! ([`crate::sink::Ack::done`]), and the spool forgets it.
//!
//! Memory stays bounded: a task keeps its batch (and its retries) in its
//! in-flight slot, so at most --max-in-flight × 10 entries are held here and
//! there is no retry queue to overflow. When every slot is busy (an outage,
//! throttling, the rate limit), the dispatcher stops taking batches and
//! they wait on disk, in the spool.
//!
//! Entries larger than a request are impossible here (a payload, even one
//! reassembled from IP fragments, is at most 65,535 bytes, ~88 KB in
//! base64: below 256 KB); the batcher would refuse and count one
//! (`oversize`) before it reached the sink.
//!
//! Shutdown. When the shutdown signal fires, spooled batches go on being
//! delivered for up to --drain-timeout as long as they get through. At the
//! first one that does not (or at once, if the endpoint was failing
//! already), the rest are left to the next run: the sink takes no more, a
//! task waiting to resend lets its batch go back to the spool, and a
//! request on the wire gets until the drain timeout to be answered (its
//! acknowledgement saves a duplicate next time). Batches held only in
//! memory (no spool) are delivered until the drain timeout and then
//! abandoned: counted `undelivered`, logged, and dead-lettered with
//! `ErrorCode` `DrainTimeout`. Every entry taken in ends
//! in exactly one of `delivered`, `failed`, `cost_guard_skipped`,
//! `undelivered` or `left_spooled` (see [`stats`]).
//!
//! Duplicates. A resend only follows an error: an entry is sent again only
//! if EventBridge refused it, or if the whole request failed. If a request
//! was processed but its answer was lost (a timeout or a dropped connection
//! after EventBridge accepted it), the resend duplicates it: delivery is
//! at-least-once, the only safe choice when the outcome is unknown. A 2xx
//! answer without readable results is resent once, then counted delivered
//! (`unconfirmed`): at most one duplicate per entry.

pub mod cost_guard;
pub mod dead_letter;
pub mod direct;
pub mod rate_limit;
pub mod retry;
pub mod service;
pub mod settings;
pub mod stats;
pub mod transport;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use self::{
    cost_guard::SharedCostGuard,
    dead_letter::{DeadLetter, Failed},
    direct::Direct,
    rate_limit::RateLimiter,
    retry::{Backoff, Retry},
    service::Service,
    transport::PutEvents,
};
pub use self::{
    settings::{ConfigError, Connection, Settings},
    stats::EventBridgeStats,
};
use crate::{
    encode::Entry,
    sink::{Ack, Delivery, Limits, Sink, SinkRun, SinkStats},
    stats::{PipelineStats, doubled},
};

/// PutEvents requests are at most 256 KB, counting entries as
/// [`Entry::aws_size`] does.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Where a Region accepts events of up to 1 MB, requests may be as large
/// (`--max-entry-bytes`).
pub const MAX_LARGE_REQUEST_BYTES: usize = 1024 * 1024;

/// PutEvents takes at most 10 entries (quota "PutEvents entries per
/// request") and [`MAX_REQUEST_BYTES`] per request, unless
/// `--max-entry-bytes` raises the request size.
pub const LIMITS: Limits = Limits {
    max_entries: 10,
    max_batch_bytes: MAX_REQUEST_BYTES,
};

/// How often the cost guard says that it is skipping events.
const COST_GUARD_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How long cancelled request tasks get to hand back their entries before
/// they are aborted (they only need to reach their next await point).
const CANCEL_GRACE: Duration = Duration::from_secs(1);
/// `ErrorCode` of entries abandoned at the drain timeout.
pub const DRAIN_TIMEOUT_CODE: &str = "DrainTimeout";
/// `ErrorCode` of entries given up on for being older than --spool-max-age.
pub const MAX_AGE_CODE: &str = "SpoolMaxAge";

/// A configured sink, ready to [`run`].
pub struct EventBridgeSink {
    transport: Arc<dyn PutEvents>,
    settings: Settings,
    dead_letter: Option<DeadLetter>,
    stats: Arc<EventBridgeStats>,
    cost_guard: Arc<SharedCostGuard>,
    limiter: Option<Arc<RateLimiter>>,
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
                    settings::CONNECT_TIMEOUT,
                    settings.max_in_flight.max(1),
                )
            })
            .flatten();
        let service = Service {
            client: connection.client,
            direct,
            endpoint_id: settings.endpoint_id.clone(),
        };
        Self::with_transport(settings, Arc::new(service), pipeline)
    }

    /// A sink that sends through `transport` (a test's fake, say).
    pub fn with_transport(
        settings: Settings,
        transport: Arc<dyn PutEvents>,
        pipeline: Arc<PipelineStats>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            dead_letter: settings.open_dead_letter()?,
            transport,
            cost_guard: Arc::new(SharedCostGuard::new(settings.max_events_per_hour)),
            limiter: RateLimiter::new(settings.max_requests_per_second).map(Arc::new),
            settings,
            stats: Arc::default(),
            pipeline,
        })
    }

    /// The sink's counters.
    pub fn counters(&self) -> Arc<EventBridgeStats> {
        self.stats.clone()
    }

    fn observer(&self) -> stats::Observer {
        stats::Observer {
            counters: self.stats.clone(),
            cost_guard: self.cost_guard.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl Sink for EventBridgeSink {
    fn limits(&self) -> Limits {
        Limits {
            max_batch_bytes: self.settings.max_request_bytes,
            ..LIMITS
        }
    }

    fn durable(&self) -> bool {
        true
    }

    fn stats(&self) -> Arc<dyn SinkStats> {
        Arc::new(self.observer())
    }

    /// On the caller's runtime: the agent runs it on the delivery thread,
    /// beside the spool (see [`run`] for why a thread of its own).
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Delivery>,
        shutdown: watch::Receiver<bool>,
    ) -> SinkRun {
        Box::pin(async move {
            run_here(*self, input, shutdown).await;
            Ok(())
        })
    }
}

/// What the request tasks share.
struct Shared {
    transport: Arc<dyn PutEvents>,
    max_retries: Option<u32>,
    max_age: Option<Duration>,
    backoff: Backoff,
    limiter: Option<Arc<RateLimiter>>,
    dead_letter: Option<DeadLetter>,
    stats: Arc<EventBridgeStats>,
    pipeline: Arc<PipelineStats>,
    /// Set by a request that failed to get through (5xx, timeout,
    /// connection); the next request that gets through clears it and wakes
    /// every task waiting out a backoff for that reason, so that after an
    /// outage all request slots resume at once, not each when its backoff
    /// (up to 10 s) runs out.
    failing: std::sync::atomic::AtomicBool,
    recovered: tokio::sync::Notify,
    /// A spooled batch could not be finished during shutdown: the sink
    /// takes no more, and the spool keeps the rest for the next run.
    drain_stalled: std::sync::atomic::AtomicBool,
}

/// Signals from the dispatcher to its request tasks.
#[derive(Clone)]
struct Signals {
    /// Shutdown: spooled batches are left to the next run.
    winding_down: watch::Receiver<bool>,
    /// The drain timeout ran out: everything stops at its next await.
    cancelled: watch::Receiver<bool>,
}

/// Delivers batches from `rx` until it closes, or until `shutdown` fires
/// and the drain is over (see the module documentation). Returns when
/// every entry taken in is accounted for.
///
/// The sink runs on a single-threaded runtime of its own, on a blocking
/// thread of the caller's runtime: its request tasks and their HTTP
/// connections wake each other several times per request, and on a
/// multi-threaded runtime every such wake-up could cross threads. On one
/// thread, `examples/sink_speed.rs` measured about a quarter less CPU per
/// request. Only the channels and the shutdown signal cross (tokio
/// channels work across runtimes). `udp-agent run` gets the same from its
/// delivery thread ([`Sink::run`]); this is for callers that drive the sink
/// alone (tests, benchmarks).
pub async fn run(
    sink: EventBridgeSink,
    rx: mpsc::Receiver<Delivery>,
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
                while let Ok(d) = rx.try_recv() {
                    let n = d.entries.len() as u64;
                    stats.received.fetch_add(n, Relaxed);
                    if d.ack.is_durable() {
                        stats.left_spooled.fetch_add(n, Relaxed);
                    } else {
                        stats.undelivered.fetch_add(n, Relaxed);
                        pipeline.sink_failed.fetch_add(n, Relaxed);
                    }
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
    mut rx: mpsc::Receiver<Delivery>,
    mut shutdown: watch::Receiver<bool>,
) {
    let EventBridgeSink {
        transport,
        settings,
        dead_letter,
        stats,
        cost_guard,
        limiter,
        pipeline,
    } = sink;
    let rate = settings.max_requests_per_second;
    let shared = Arc::new(Shared {
        transport,
        max_retries: settings.max_retries,
        max_age: settings.max_age,
        backoff: settings.backoff,
        limiter,
        dead_letter,
        stats: stats.clone(),
        pipeline: pipeline.clone(),
        failing: Default::default(),
        recovered: Default::default(),
        drain_stalled: Default::default(),
    });
    info!(
        max_in_flight = settings.max_in_flight,
        max_put_events_per_second = rate,
        max_events_per_hour = settings.max_events_per_hour,
        max_retries = settings
            .max_retries
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
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
    let mut skip_log = SkipLog::default();
    let mut pending: Option<Delivery> = None;
    let mut input_open = true;
    let mut stopping = false;
    let mut deadline: Option<Instant> = None;
    let (wind_tx, wind_rx) = watch::channel(false);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let signals = Signals {
        winding_down: wind_rx,
        cancelled: cancel_rx,
    };

    // Shutdown asked for (a dropped sender counts as asking).
    let mut stop = *shutdown.borrow();
    // The input carries spooled batches.
    let mut spooled_input = false;
    // Taking no more spooled batches (shutdown, and they do not get through).
    let mut input_closed = false;
    let timed_out = loop {
        if stop && !stopping {
            stopping = true;
            deadline.get_or_insert_with(|| Instant::now() + drain);
            let _ = wind_tx.send(true);
        }
        // While shutting down, spooled batches are still delivered as long
        // as they get through; at the first that does not (or if the
        // endpoint was failing already), the rest stay in the spool.
        if stopping
            && spooled_input
            && !input_closed
            && (shared.failing.load(Relaxed) || shared.drain_stalled.load(Relaxed))
        {
            rx.close();
            input_closed = true;
            if pending.as_ref().is_some_and(|d| d.ack.is_durable()) {
                shared.leave_spooled(pending.take().expect("checked"));
            }
        }
        if !input_open && pending.is_none() && tasks.is_empty() {
            break false;
        }
        tokio::select! {
            biased;
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break true;
            }
            changed = shutdown.changed(), if !stop => {
                stop = changed.is_err() || *shutdown.borrow();
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
                let delivery = pending.take().expect("guarded by pending.is_some()");
                tasks.spawn(deliver(shared.clone(), delivery, slot, signals.clone()));
            }
            delivery = rx.recv(), if input_open && pending.is_none() => match delivery {
                None => {
                    input_open = false;
                    deadline.get_or_insert_with(|| Instant::now() + drain);
                }
                Some(Delivery { entries, ack }) => {
                    stats.received.fetch_add(entries.len() as u64, Relaxed);
                    spooled_input |= ack.is_durable();
                    if input_closed && ack.is_durable() {
                        shared.leave_spooled(Delivery { entries, ack });
                        continue;
                    }
                    let now = Instant::now();
                    let (kept, skipped) = cost_guard.admit(entries, now);
                    if skipped > 0 {
                        stats.cost_guard_skipped.fetch_add(skipped, Relaxed);
                        skip_log.note(skipped, now, settings.max_events_per_hour);
                    }
                    if kept.is_empty() {
                        // Every entry has its outcome: skipped.
                        ack.done();
                    } else {
                        pending = Some(Delivery { entries: kept, ack });
                    }
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
        if let Some(d) = pending.take() {
            shared.abandon(d);
        }
        // Closing makes the sender's sends fail (it counts those itself);
        // what is already queued is abandoned here.
        rx.close();
        while let Some(d) = rx.recv().await {
            stats.received.fetch_add(d.entries.len() as u64, Relaxed);
            shared.abandon(d);
        }
        let undelivered = stats.undelivered.load(Relaxed);
        if undelivered > 0 {
            warn!(
                undelivered,
                drain_timeout = %humantime::format_duration(drain),
                "EventBridge: entries still queued or in flight when the drain timeout ran out were not delivered"
            );
        }
    }
    let left = stats.left_spooled.load(Relaxed);
    if left > 0 {
        info!(
            entries = left,
            "EventBridge sink stopped; undelivered batches stay in the spool for the next run"
        );
    } else if !timed_out {
        info!("EventBridge sink drained");
    }
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
/// the task ends without settling them (shutdown, or a panic) is counted:
/// `left_spooled` for a spooled batch, which the next run sends, and
/// `undelivered` otherwise.
struct Held<'a> {
    n: u64,
    durable: bool,
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
        if self.n == 0 {
            return;
        }
        if self.durable {
            self.shared.stats.left_spooled.fetch_add(self.n, Relaxed);
        } else {
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

/// Runs `f` unless `stop` turns (or is) true first (`None`).
async fn unless<F: Future>(stop: &mut watch::Receiver<bool>, f: F) -> Option<F::Output> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        biased;
        // A dropped sender stops too.
        _ = stop.wait_for(|s| *s) => None,
        out = f => Some(out),
    }
}

/// What a request task does after an attempt.
enum Next {
    /// Resend these.
    Resend(Vec<Failed>),
    /// Every entry has its outcome.
    Done,
}

/// Sends one batch, and its resends, until every entry is delivered or
/// given up, or shutdown stops it; then acknowledges the batch. Holds an
/// in-flight slot throughout.
async fn deliver(
    shared: Arc<Shared>,
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
    mut signals: Signals,
) {
    let shared = &*shared;
    let stats = &*shared.stats;
    let Delivery { entries, ack } = delivery;
    let durable = ack.is_durable();
    let mut held = Held {
        n: entries.len() as u64,
        durable,
        shared,
    };
    let mut entries = entries;
    let mut rng = fastrand::Rng::new();
    let mut retries = 0u32;
    let mut resent_ambiguous = false;
    loop {
        if let Some(max_age) = shared.max_age {
            let expired = take_expired(&mut entries, max_age, SystemTime::now());
            if !expired.is_empty() {
                held.settle(expired.len());
                shared.give_up(expired);
            }
            if entries.is_empty() {
                break;
            }
        }
        let attempt = async {
            if let Some(limiter) = &shared.limiter {
                limiter.acquire().await;
            }
            stats.requests.fetch_add(1, Relaxed);
            let _in_flight = InFlight::new(&stats.in_flight);
            shared.transport.put_events(&entries).await
        };
        let Some(result) = unless(&mut signals.cancelled, attempt).await else {
            return shared.stop(held, entries, ack);
        };
        let mut transient = false;
        let next = match result {
            Ok(results) => {
                if shared.failing.swap(false, Relaxed) {
                    shared.recovered.notify_waiters();
                }
                // Acknowledged: how long since capture, per accepted entry.
                let now = crate::clock::monotonic_ns();
                for (entry, result) in entries.iter().zip(&results) {
                    if *result == service::EntryResult::Accepted {
                        shared.pipeline.latency.observe(entry.capture_ns, now);
                    }
                }
                let outcome = service::split(entries, results);
                stats.throttled.fetch_add(outcome.throttled as u64, Relaxed);
                if let Some(limiter) = &shared.limiter {
                    if outcome.throttled > 0 {
                        limiter.throttled(Instant::now());
                    } else {
                        limiter.succeeded(Instant::now());
                    }
                }
                held.settle(outcome.delivered);
                shared.delivered(outcome.delivered as u64);
                held.settle(outcome.failed.len());
                shared.give_up(outcome.failed);
                if outcome.retry.is_empty() {
                    Next::Done
                } else {
                    Next::Resend(outcome.retry)
                }
            }
            Err(err) => {
                let (code, message) = retry::error_code_and_message(&err);
                let failed: Vec<Failed> = entries
                    .into_iter()
                    .map(|entry| Failed {
                        entry,
                        code: code.clone(),
                        message: message.clone(),
                    })
                    .collect();
                match retry::classify(&err) {
                    Retry::Permanent => {
                        held.settle(failed.len());
                        shared.give_up(failed);
                        Next::Done
                    }
                    Retry::Throttled => {
                        stats.throttled.fetch_add(1, Relaxed);
                        if let Some(limiter) = &shared.limiter {
                            limiter.throttled(Instant::now());
                        }
                        Next::Resend(failed)
                    }
                    Retry::Transient => {
                        shared.failing.store(true, Relaxed);
                        transient = true;
                        Next::Resend(failed)
                    }
                    Retry::Ambiguous if !resent_ambiguous => {
                        resent_ambiguous = true;
                        Next::Resend(failed)
                    }
                    Retry::Ambiguous => {
                        let n = failed.len();
                        held.settle(n);
                        shared.delivered(n as u64);
                        let before = stats.unconfirmed.fetch_add(n as u64, Relaxed);
                        if doubled(before, before + n as u64) {
                            warn!(
                                total = before + n as u64,
                                %message,
                                "EventBridge answered 2xx twice without readable results; the entries count as delivered (unconfirmed)"
                            );
                        }
                        Next::Done
                    }
                }
            }
        };
        let Next::Resend(retry) = next else { break };
        if shared.max_retries.is_some_and(|max| retries >= max) {
            // Out of retries: given up with the last error each one met.
            held.settle(retry.len());
            shared.give_up(retry);
            break;
        }
        entries = retry.into_iter().map(|f| f.entry).collect();
        // A spooled batch waits in the spool rather than here once the sink
        // is shutting down; and the sink takes no more.
        if durable && *signals.winding_down.borrow() {
            shared.drain_stalled.store(true, Relaxed);
            return shared.stop(held, entries, ack);
        }
        let backoff = shared.backoff.delay(retries, &mut rng);
        let recovered = shared.recovered.notified();
        let pause = async {
            tokio::select! {
                biased;
                _ = signals.winding_down.wait_for(|w| *w), if durable => false,
                // The endpoint answers again: no need to wait out the rest.
                _ = recovered, if transient => true,
                _ = tokio::time::sleep(backoff) => true,
            }
        };
        if unless(&mut signals.cancelled, pause).await != Some(true) {
            shared.drain_stalled.store(true, Relaxed);
            return shared.stop(held, entries, ack);
        }
        retries += 1;
        stats.retried.fetch_add(entries.len() as u64, Relaxed);
    }
    drop(held);
    ack.done();
}

/// Moves the entries captured longer than `max_age` before `now` out of
/// `entries`, as failures.
fn take_expired(entries: &mut Vec<Entry>, max_age: Duration, now: SystemTime) -> Vec<Failed> {
    let too_old = |e: &Entry| now.duration_since(e.time).is_ok_and(|age| age > max_age);
    if !entries.iter().any(too_old) {
        return Vec::new();
    }
    let (old, young): (Vec<Entry>, Vec<Entry>) = entries.drain(..).partition(too_old);
    *entries = young;
    old.into_iter()
        .map(|entry| Failed {
            entry,
            code: MAX_AGE_CODE.to_owned(),
            message: format!(
                "captured more than --spool-max-age ({}) ago and not delivered",
                humantime::format_duration(max_age)
            ),
        })
        .collect()
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

    /// A task stopped by shutdown: a spooled batch stays in the spool (its
    /// ack is dropped, not done); one held only in memory is abandoned.
    fn stop(&self, mut held: Held<'_>, entries: Vec<Entry>, ack: Ack) {
        held.settle(entries.len());
        self.abandon(Delivery { entries, ack });
    }

    /// Counts a spooled batch the sink will not finish: the next run sends it.
    fn leave_spooled(&self, d: Delivery) {
        self.stats
            .left_spooled
            .fetch_add(d.entries.len() as u64, Relaxed);
    }

    /// Entries the sink will not finish: spooled ones stay in the spool;
    /// the others are counted undelivered and dead-lettered.
    fn abandon(&self, d: Delivery) {
        if d.ack.is_durable() {
            return self.leave_spooled(d);
        }
        let entries = d.entries;
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

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;

    fn entry_at(time: SystemTime) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("default"),
            detail: "{}".into(),
            time,
            capture_ns: 0,
        }
    }

    #[test]
    fn entries_past_the_age_limit_are_taken_out() {
        let now = UNIX_EPOCH + Duration::from_secs(100_000);
        let ages = [10, 3601, 5, 7200, 3600];
        let mut entries: Vec<Entry> = ages
            .iter()
            .map(|a| entry_at(now - Duration::from_secs(*a)))
            .collect();
        let expired = take_expired(&mut entries, Duration::from_secs(3600), now);
        let age = |e: &Entry| now.duration_since(e.time).unwrap().as_secs();
        assert_eq!(
            expired.iter().map(|f| age(&f.entry)).collect::<Vec<_>>(),
            [3601, 7200]
        );
        assert!(expired.iter().all(|f| f.code == MAX_AGE_CODE));
        assert_eq!(entries.iter().map(age).collect::<Vec<_>>(), [10, 5, 3600]);
        // Nothing old: nothing moves.
        assert!(take_expired(&mut entries, Duration::from_secs(3600), now).is_empty());
        assert_eq!(entries.len(), 3);
    }

    /// A transport that fails every request with a connection error until
    /// its `failures` run out, then accepts everything.
    struct Flaky {
        failures: std::sync::atomic::AtomicU32,
        calls: AtomicU64,
    }

    impl PutEvents for Flaky {
        fn put_events<'a>(
            &'a self,
            entries: &'a [Entry],
        ) -> std::pin::Pin<Box<dyn Future<Output = transport::PutEventsResult> + Send + 'a>>
        {
            use aws_sdk_eventbridge::error::{ConnectorError, SdkError};
            self.calls.fetch_add(1, Relaxed);
            let fail = self
                .failures
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok();
            Box::pin(async move {
                if fail {
                    return Err(SdkError::dispatch_failure(ConnectorError::io(
                        std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
                    )));
                }
                Ok(vec![transport::EntryResult::Accepted; entries.len()])
            })
        }
    }

    /// Through the transport seam, without HTTP: a batch is resent after
    /// every failure (no attempt limit by default) until it is delivered,
    /// and then acknowledged.
    #[tokio::test]
    async fn a_batch_is_resent_until_the_transport_takes_it() {
        let flaky = Arc::new(Flaky {
            failures: 25.into(),
            calls: AtomicU64::new(0),
        });
        let settings = Settings {
            max_requests_per_second: 0,
            backoff: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
            },
            ..Settings::default()
        };
        let pipeline = Arc::new(PipelineStats::default());
        let sink =
            EventBridgeSink::with_transport(settings, flaky.clone(), pipeline.clone()).unwrap();
        let counters = sink.counters();
        let (tx, rx) = mpsc::channel(4);
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let held = crate::sink::Held {
            segment: 1,
            index: 0,
            entries: 3,
        };
        let now = SystemTime::now();
        tx.send(Delivery {
            entries: vec![entry_at(now); 3],
            ack: Ack::spooled(held, ack_tx),
        })
        .await
        .unwrap();
        drop(tx);
        let (_stop_tx, stop_rx) = watch::channel(false);
        run(sink, rx, stop_rx).await;
        assert_eq!(flaky.calls.load(Relaxed), 26);
        assert_eq!(counters.delivered.load(Relaxed), 3);
        assert_eq!(counters.failed.load(Relaxed), 0);
        assert_eq!(acks.recv().await, Some(crate::sink::Settled::Done(held)));
    }
}
