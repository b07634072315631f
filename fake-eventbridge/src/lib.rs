//! A fake Amazon EventBridge `PutEvents` endpoint that injects faults.
//!
//! It speaks the AWS JSON 1.1 protocol the SDKs use for EventBridge:
//! `POST /` with `X-Amz-Target: AWSEvents.PutEvents`, a body
//! `{"Entries":[{"Source","DetailType","Detail","Time","EventBusName"}],
//! "EndpointId"?}`, and a response `{"FailedEntryCount":N,"Entries":[…]}`
//! whose entries are `{"EventId":…}` or `{"ErrorCode":…,"ErrorMessage":…}`
//! in request order. Signatures are not checked (any credentials work), but
//! the signing algorithm is counted so a test can see SigV4a in use.
//!
//! Faults are deterministic, so a test knows the outcome in advance:
//! - by request number (1-based, counted over every `PutEvents` request):
//!   drop the connection without answering every `drop_every`-th request,
//!   throttle the whole request (HTTP 400 `ThrottlingException`) every
//!   `throttle_every`-th, answer HTTP 500 `InternalFailure` every
//!   `internal_error_every`-th;
//! - by entry, from a seeded hash of its `Detail` ([`Config::entry_fault`]):
//!   a `permanent_fraction` of entries always fail with `InvalidArgument` or
//!   `MalformedDetail`; a `retryable_fraction` fail with
//!   `ThrottlingException` or `InternalFailure` the first
//!   `retryable_attempts` times they are seen, then are accepted;
//! - every request can be answered after `delay`;
//! - every `unreadable_every`-th request can be answered 200 with a body
//!   cut short, after its entries were processed;
//! - a shared quota (`quota_per_second`): like EventBridge's per-account
//!   PutEvents quota, a token bucket over all requests from every client;
//!   a request beyond it is throttled whole (HTTP 400
//!   `ThrottlingException`), so several agents sharing one fake share one
//!   quota.
//!
//! [`FakeEventBridge::pause`] closes the listener and every connection (an
//! outage: clients get "connection refused"), [`FakeEventBridge::resume`]
//! listens again on the same address; what was recorded is kept.
//!
//! Every entry that reaches entry-level processing is recorded by its
//! `Detail` (how often accepted, how often rejected) and is available through
//! [`FakeEventBridge::records`]/[`FakeEventBridge::accepted`] and
//! `GET /_accepted`; `GET /_stats` returns the counters. With `record: false`
//! only counters are kept (and entries with a retryable fault, which must be
//! remembered to be accepted later), so a long benchmark's memory stays flat.
//!
//! With `record_latency`, every entry whose payload carries a send time
//! stamped by udp-bench's sender ([`latency::stamp`]) adds its
//! send-to-acknowledged time to a histogram ([`FakeEventBridge::latency`]).
//!
//! It is built to be fast, as the benchmark's endpoint must be: one lock per
//! request (none when not recording), entries' strings borrowed from the
//! request where they can be, each `Detail` read once without building it,
//! no per-request logging. [`blocking::FakeEventBridge`] serves on a runtime
//! of its own, for callers that are not async.

pub mod blocking;
pub mod latency;

use std::{
    borrow::Cow,
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header::HeaderValue,
    server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_json::value::RawValue;
use tokio::{net::TcpListener, task::JoinSet};

use crate::latency::{Histogram, Latency, stamp};

/// PutEvents takes at most 10 entries per request (AWS quota "PutEvents
/// entries per request").
pub const MAX_ENTRIES: usize = 10;
/// PutEvents requests are at most 256 KB, counted as AWS counts entry sizes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// `Time` counts as 14 bytes of an entry's size.
const TIME_SIZE: usize = 14;

/// What to fake. `Default` is a well-behaved endpoint on an ephemeral
/// loopback port that records every entry.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Seed of the per-entry fault hash.
    pub seed: u64,
    /// Throttle every k-th request whole (0: never).
    pub throttle_every: u64,
    /// Answer every k-th request with HTTP 500 `InternalFailure` (0: never).
    pub internal_error_every: u64,
    /// Close the connection without an answer on every k-th request, after
    /// reading it and before looking at its entries (0: never).
    pub drop_every: u64,
    /// Wait this long before answering each request.
    pub delay: Duration,
    /// Fraction of entries that fail with a retryable code at first.
    pub retryable_fraction: f64,
    /// How many times an entry with a retryable fault fails before it is
    /// accepted.
    pub retryable_attempts: u32,
    /// Fraction of entries that always fail with a non-retryable code.
    pub permanent_fraction: f64,
    /// Keep every entry seen (false: counters only).
    pub record: bool,
    /// Answer every k-th request 200 with a body that is not JSON, after
    /// processing its entries as usual (0: never): a response the client
    /// cannot read, for a request the service did take.
    pub unreadable_every: u64,
    /// Requests per second over all clients (0: no quota).
    pub quota_per_second: u64,
    /// Requests the quota lets through at once (0: a tenth of a second's
    /// worth, at least one).
    pub quota_burst: u64,
    /// Record the send-to-acknowledged latency of entries whose payload
    /// carries a send time ([`latency::stamp`]).
    pub record_latency: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 0,
            throttle_every: 0,
            internal_error_every: 0,
            drop_every: 0,
            delay: Duration::ZERO,
            retryable_fraction: 0.0,
            retryable_attempts: 1,
            permanent_fraction: 0.0,
            record: true,
            unreadable_every: 0,
            quota_per_second: 0,
            quota_burst: 0,
            record_latency: false,
        }
    }
}

/// An injected per-entry failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `ThrottlingException` or `InternalFailure`: a client should resend.
    Retryable(&'static str),
    /// `InvalidArgument` or `MalformedDetail`: a client must not resend.
    Permanent(&'static str),
}

impl Fault {
    pub fn code(self) -> &'static str {
        match self {
            Fault::Retryable(c) | Fault::Permanent(c) => c,
        }
    }

    fn message(self) -> &'static str {
        match self.code() {
            "ThrottlingException" => "Rate exceeded",
            "InternalFailure" => "Internal service error",
            "InvalidArgument" => "Parameter Detail is not valid (injected)",
            _ => "Detail is malformed (injected)",
        }
    }
}

impl Config {
    /// The fault this endpoint injects for an entry with this `Detail`, a pure
    /// function of the seed and the fractions, so tests can predict it.
    pub fn entry_fault(&self, detail: &str) -> Option<Fault> {
        // Without faults, no hash: it costs more than the rest of an
        // entry's handling.
        if self.permanent_fraction <= 0.0 && self.retryable_fraction <= 0.0 {
            return None;
        }
        let h = hash(self.seed, detail.as_bytes());
        // The top 53 bits as a uniform number in [0, 1).
        let x = (h >> 11) as f64 / (1u64 << 53) as f64;
        let pick = h & 1 == 0;
        if x < self.permanent_fraction {
            Some(Fault::Permanent(if pick {
                "InvalidArgument"
            } else {
                "MalformedDetail"
            }))
        } else if x < self.permanent_fraction + self.retryable_fraction {
            Some(Fault::Retryable(if pick {
                "ThrottlingException"
            } else {
                "InternalFailure"
            }))
        } else {
            None
        }
    }
}

/// FNV-1a over the seed and the bytes, then a splitmix64 finaliser so that
/// nearby inputs spread over the whole range.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// An entry as the endpoint received it, with what became of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryRecord {
    pub source: String,
    pub detail_type: String,
    pub detail: String,
    pub event_bus_name: Option<String>,
    /// `Time` as sent: epoch seconds.
    pub time: Option<f64>,
    /// Times this Detail was accepted (more than 1 is a duplicate).
    pub accepted: u32,
    /// Times this Detail was refused at entry level.
    pub rejected: u32,
    /// The error code of the last refusal.
    pub last_error_code: Option<String>,
}

/// An accepted entry: the same shape, `accepted >= 1`.
pub type AcceptedEntry = EntryRecord;

/// Counters, as `GET /_stats` returns them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `PutEvents` requests received (every fault included).
    pub requests: u64,
    pub dropped: u64,
    /// Requests throttled whole: by `throttle_every` or by the quota.
    pub throttled: u64,
    /// Of those, the ones over the quota.
    pub quota_throttled: u64,
    /// Requests answered 200 (their entries accepted or refused one by one).
    pub answered: u64,
    pub internal_errors: u64,
    /// Requests refused whole as invalid (bad target, body, count or size).
    pub invalid_requests: u64,
    pub entries_accepted: u64,
    pub entries_rejected: u64,
    /// Requests that carried an `EndpointId`.
    pub endpoint_id_requests: u64,
    /// Requests signed with SigV4a (`AWS4-ECDSA-P256-SHA256`).
    pub sigv4a_requests: u64,
    /// Entries whose latency was recorded (with `record_latency`).
    pub entries_stamped: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    dropped: AtomicU64,
    throttled: AtomicU64,
    quota_throttled: AtomicU64,
    answered: AtomicU64,
    internal_errors: AtomicU64,
    invalid_requests: AtomicU64,
    entries_accepted: AtomicU64,
    entries_rejected: AtomicU64,
    endpoint_id_requests: AtomicU64,
    sigv4a_requests: AtomicU64,
    entries_stamped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            requests: self.requests.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            quota_throttled: self.quota_throttled.load(Relaxed),
            answered: self.answered.load(Relaxed),
            internal_errors: self.internal_errors.load(Relaxed),
            invalid_requests: self.invalid_requests.load(Relaxed),
            entries_accepted: self.entries_accepted.load(Relaxed),
            entries_rejected: self.entries_rejected.load(Relaxed),
            endpoint_id_requests: self.endpoint_id_requests.load(Relaxed),
            sigv4a_requests: self.sigv4a_requests.load(Relaxed),
            entries_stamped: self.entries_stamped.load(Relaxed),
        }
    }
}

struct State {
    config: Config,
    counters: Counters,
    records: Mutex<HashMap<String, EntryRecord>>,
    /// The quota's GCRA: when the bucket is next empty (theoretical
    /// arrival time), and the start of the clock.
    quota: Mutex<Option<Instant>>,
    latency: Histogram,
}

impl State {
    /// Takes one request from the quota; false if it is over.
    fn within_quota(&self) -> bool {
        let rate = self.config.quota_per_second;
        if rate == 0 {
            return true;
        }
        let burst = match self.config.quota_burst {
            0 => (rate / 10).max(1),
            b => b,
        };
        let interval = Duration::from_secs(1) / rate as u32;
        let tolerance = interval * (burst - 1) as u32;
        let now = Instant::now();
        let mut tat = self.quota.lock().expect("quota lock");
        let start = tat.map_or(now, |t| t.max(now));
        if start.saturating_duration_since(now) > tolerance {
            return false;
        }
        *tat = Some(start + interval);
        true
    }
}

/// A running fake endpoint. Dropping it stops the server and closes its
/// connections.
pub struct FakeEventBridge {
    addr: SocketAddr,
    state: Arc<State>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl FakeEventBridge {
    /// Binds `config.listen` and serves on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            config,
            counters: Counters::default(),
            records: Mutex::new(HashMap::new()),
            quota: Mutex::new(None),
            latency: Histogram::default(),
        });
        let server = Some(tokio::spawn(serve(listener, state.clone())));
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// An outage: closes the listener and every open connection, so
    /// clients get "connection refused". What was recorded is kept.
    pub async fn pause(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.server = Some(tokio::spawn(serve(listener, self.state.clone())));
        }
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for `--endpoint-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }

    /// Every entry seen at entry level, one per distinct `Detail`.
    pub fn records(&self) -> Vec<EntryRecord> {
        let records = self.state.records.lock().expect("records lock");
        records.values().cloned().collect()
    }

    /// Entries accepted at least once, one per distinct `Detail`.
    pub fn accepted(&self) -> Vec<AcceptedEntry> {
        let records = self.state.records.lock().expect("records lock");
        records
            .values()
            .filter(|r| r.accepted > 0)
            .cloned()
            .collect()
    }

    /// Send-to-acknowledged latency of the stamped entries since the start
    /// or the last [`reset_latency`](Self::reset_latency) (with
    /// `record_latency`).
    pub fn latency(&self) -> Latency {
        self.state.latency.snapshot()
    }

    pub fn reset_latency(&self) {
        self.state.latency.reset();
    }

    /// Stops the server now.
    pub fn shutdown(self) {}
}

impl Drop for FakeEventBridge {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set, so aborting the server task closes them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

type Reply = Result<Response<Full<Bytes>>, DropConnection>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/_accepted") => {
            let accepted: Vec<EntryRecord> = {
                let records = state.records.lock().expect("records lock");
                records
                    .values()
                    .filter(|r| r.accepted > 0)
                    .cloned()
                    .collect()
            };
            Ok(json(StatusCode::OK, serde_json::to_vec(&accepted)))
        }
        (&Method::GET, "/_stats") => Ok(json(
            StatusCode::OK,
            serde_json::to_vec(&state.counters.snapshot()),
        )),
        (&Method::POST, "/") => put_events(&state, req).await,
        _ => Ok(aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "not a PutEvents request",
        )),
    }
}

/// Strings are borrowed from the request body where they have no escapes
/// (`Source`, `DetailType`, `EventBusName` usually); `Detail`, JSON in a
/// JSON string, always has some.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutEventsRequest<'a> {
    #[serde(default, borrow)]
    entries: Vec<RequestEntry<'a>>,
    #[serde(borrow)]
    endpoint_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestEntry<'a> {
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_bus_name: Option<Cow<'a, str>>,
    /// As sent (epoch seconds, a number or a string of one), read only
    /// for a record.
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(default, borrow)]
    resources: Vec<Cow<'a, str>>,
}

/// What the endpoint reads of a `Detail`: its `Payload`, where a send time
/// may be stamped. Every other member is skipped unread.
#[derive(Deserialize)]
struct DetailPayload<'a> {
    #[serde(rename = "Payload", borrow)]
    payload: Option<Cow<'a, str>>,
}

/// A `Detail` that is a JSON object, and its `Payload` if that is a string.
fn read_detail(detail: &str) -> Option<Option<Cow<'_, str>>> {
    // An object, not another JSON value (an array would also fill a
    // struct).
    if !detail.trim_start().starts_with('{') {
        return None;
    }
    match serde_json::from_str::<DetailPayload>(detail) {
        Ok(d) => Some(d.payload),
        // Valid JSON all the same (a `Payload` that is no string, or
        // given twice) is a valid Detail without a stamp.
        Err(_) => serde_json::from_str::<IgnoredAny>(detail)
            .ok()
            .map(|_| None),
    }
}

impl RequestEntry<'_> {
    /// Size as AWS counts it against the 256 KB request limit.
    fn aws_size(&self) -> usize {
        let len = |s: &Option<Cow<str>>| s.as_ref().map_or(0, |s| s.len());
        self.time.as_ref().map_or(0, |_| TIME_SIZE)
            + len(&self.source)
            + len(&self.detail_type)
            + len(&self.detail)
            + self.resources.iter().map(|r| r.len()).sum::<usize>()
    }

    /// The refusal a real endpoint would give a malformed entry, or the
    /// send time stamped in a valid one's payload.
    fn check(&self) -> Result<Option<u64>, (&'static str, &'static str)> {
        let missing = |s: &Option<Cow<str>>| s.as_deref().is_none_or(str::is_empty);
        if missing(&self.source) || missing(&self.detail_type) || missing(&self.detail) {
            return Err((
                "InvalidArgument",
                "Source, DetailType and Detail are required",
            ));
        }
        match read_detail(self.detail.as_deref().unwrap_or_default()) {
            Some(payload) => Ok(payload.as_deref().and_then(stamp::read)),
            None => Err(("MalformedDetail", "Detail is malformed.")),
        }
    }

    fn time_seconds(&self) -> Option<f64> {
        match serde_json::from_str(self.time?.get()).ok()? {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutEventsResponse {
    failed_entry_count: u32,
    entries: Vec<ResultEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'static str>,
}

/// `<request>-fake-<index>`, written out as the response is (no string of
/// its own per entry).
struct EventId {
    request_no: u64,
    index: usize,
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{:08x}-fake-{:04x}",
            self.request_no, self.index
        ))
    }
}

async fn put_events(state: &State, req: Request<Incoming>) -> Reply {
    let c = &state.counters;
    let config = &state.config;
    let n = c.requests.fetch_add(1, Relaxed) + 1;
    let header = |name: &str| req.headers().get(name).map(HeaderValue::as_bytes);
    let is_put_events = header("x-amz-target") == Some(b"AWSEvents.PutEvents");
    if header("authorization").is_some_and(|a| a.starts_with(b"AWS4-ECDSA-P256-SHA256")) {
        c.sigv4a_requests.fetch_add(1, Relaxed);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    // The moment the request arrived whole: the end of a stamped entry's
    // latency (answering adds no more than the work below).
    let arrived_ns = config.record_latency.then(stamp::monotonic_ns);
    if !config.delay.is_zero() {
        tokio::time::sleep(config.delay).await;
    }
    let every = |k: u64| k > 0 && n.is_multiple_of(k);
    if every(config.drop_every) {
        c.dropped.fetch_add(1, Relaxed);
        return Err(DropConnection);
    }
    if !is_put_events {
        c.invalid_requests.fetch_add(1, Relaxed);
        return Ok(aws_error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "only AWSEvents.PutEvents is faked",
        ));
    }
    if !state.within_quota() {
        c.throttled.fetch_add(1, Relaxed);
        c.quota_throttled.fetch_add(1, Relaxed);
        return Ok(aws_error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
        ));
    }
    if every(config.throttle_every) {
        c.throttled.fetch_add(1, Relaxed);
        return Ok(aws_error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
        ));
    }
    if every(config.internal_error_every) {
        c.internal_errors.fetch_add(1, Relaxed);
        return Ok(aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The request processing has failed because of an unknown error.",
        ));
    }
    let request: PutEventsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            c.invalid_requests.fetch_add(1, Relaxed);
            return Ok(aws_error(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "Start of structure or map found where not expected.",
            ));
        }
    };
    if request.endpoint_id.is_some() {
        c.endpoint_id_requests.fetch_add(1, Relaxed);
    }
    if request.entries.is_empty() || request.entries.len() > MAX_ENTRIES {
        c.invalid_requests.fetch_add(1, Relaxed);
        return Ok(aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "1 validation error detected: Value at 'entries' failed to satisfy constraint: Member must have length between 1 and 10",
        ));
    }
    if request
        .entries
        .iter()
        .map(RequestEntry::aws_size)
        .sum::<usize>()
        > MAX_REQUEST_BYTES
    {
        c.invalid_requests.fetch_add(1, Relaxed);
        return Ok(aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Total size of the entries in the request is over the limit.",
        ));
    }

    let results = decide(state, n, &request.entries, arrived_ns);
    let failed = results.iter().filter(|r| r.error_code.is_some()).count() as u32;
    c.entries_rejected.fetch_add(u64::from(failed), Relaxed);
    c.entries_accepted
        .fetch_add(results.len() as u64 - u64::from(failed), Relaxed);
    c.answered.fetch_add(1, Relaxed);
    if every(config.unreadable_every) {
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/x-amz-json-1.1")
            .body(Full::new(Bytes::from_static(
                b"{\"FailedEntryCount\":0,\"Entr",
            )))
            .expect("static response"));
    }
    let response = PutEventsResponse {
        failed_entry_count: failed,
        entries: results,
    };
    // Room for the whole answer at once: about 40 bytes an entry.
    let mut out = Vec::with_capacity(32 + 48 * response.entries.len());
    Ok(json(
        StatusCode::OK,
        serde_json::to_writer(&mut out, &response).map(|()| out),
    ))
}

/// What an entry meets before its history is looked at.
enum Plan {
    /// Accept; the send time stamped in its payload, if any.
    Accept(Option<u64>),
    Fail(&'static str, &'static str),
    /// Fail while the entry has been refused fewer than `retryable_attempts`
    /// times, then accept.
    FailFirst(Fault, Option<u64>),
}

/// Decides each entry's fate and records it, under at most one lock; with
/// `arrived_ns`, records the latency of every stamped entry accepted.
fn decide(
    state: &State,
    request_no: u64,
    entries: &[RequestEntry],
    arrived_ns: Option<u64>,
) -> Vec<ResultEntry> {
    let config = &state.config;
    let plans: Vec<Plan> = entries
        .iter()
        .map(|e| match e.check() {
            Err((code, message)) => Plan::Fail(code, message),
            Ok(sent) => match config.entry_fault(e.detail.as_deref().unwrap_or_default()) {
                Some(f @ Fault::Permanent(_)) => Plan::Fail(f.code(), f.message()),
                Some(f @ Fault::Retryable(_)) => Plan::FailFirst(f, sent),
                None => Plan::Accept(sent),
            },
        })
        .collect();
    let lock = config.record || plans.iter().any(|p| matches!(p, Plan::FailFirst(..)));
    let mut records = lock.then(|| state.records.lock().expect("records lock"));
    let mut stamped = 0;
    let results = entries
        .iter()
        .zip(plans)
        .enumerate()
        .map(|(i, (entry, plan))| {
            let remember = config.record || matches!(plan, Plan::FailFirst(..));
            let mut record = match records.as_mut() {
                Some(records) if remember => Some(record_of(records, entry)),
                _ => None,
            };
            let refused = record.as_ref().map_or(0, |r| r.rejected);
            let (failure, sent) = match plan {
                Plan::Accept(sent) => (None, sent),
                Plan::Fail(code, message) => (Some((code, message)), None),
                Plan::FailFirst(f, sent) => (
                    (refused < config.retryable_attempts).then(|| (f.code(), f.message())),
                    sent,
                ),
            };
            match failure {
                Some((code, message)) => {
                    if let Some(r) = record.as_mut() {
                        r.rejected += 1;
                        r.last_error_code = Some(code.to_owned());
                    }
                    ResultEntry {
                        event_id: None,
                        error_code: Some(code),
                        error_message: Some(message),
                    }
                }
                None => {
                    if let Some(r) = record.as_mut() {
                        r.accepted += 1;
                    }
                    if let (Some(arrived), Some(sent)) = (arrived_ns, sent) {
                        state.latency.record(arrived.saturating_sub(sent));
                        stamped += 1;
                    }
                    ResultEntry {
                        event_id: Some(EventId {
                            request_no,
                            index: i,
                        }),
                        error_code: None,
                        error_message: None,
                    }
                }
            }
        })
        .collect();
    if stamped > 0 {
        state.counters.entries_stamped.fetch_add(stamped, Relaxed);
    }
    results
}

fn record_of<'a>(
    records: &'a mut HashMap<String, EntryRecord>,
    entry: &RequestEntry,
) -> &'a mut EntryRecord {
    let detail = entry.detail.as_deref().unwrap_or_default();
    // Look up before inserting: the common case allocates no key.
    if !records.contains_key(detail) {
        records.insert(detail.to_owned(), new_record(entry));
    }
    records.get_mut(detail).expect("present")
}

fn new_record(entry: &RequestEntry) -> EntryRecord {
    let owned = |s: &Option<Cow<str>>| s.as_deref().map(str::to_owned);
    EntryRecord {
        source: owned(&entry.source).unwrap_or_default(),
        detail_type: owned(&entry.detail_type).unwrap_or_default(),
        detail: owned(&entry.detail).unwrap_or_default(),
        event_bus_name: owned(&entry.event_bus_name),
        time: entry.time_seconds(),
        accepted: 0,
        rejected: 0,
        last_error_code: None,
    }
}

const AMZ_JSON: &str = "application/x-amz-json-1.1";

fn json(status: StatusCode, body: serde_json::Result<Vec<u8>>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        body.expect("serialising plain structs cannot fail"),
    )));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(AMZ_JSON));
    response
}

/// An AWS JSON 1.1 error: the code in `__type` and in `x-amzn-errortype`.
fn aws_error(status: StatusCode, code: &'static str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": code, "message": message });
    let mut response = json(status, serde_json::to_vec(&body));
    response
        .headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_follow_the_fractions_and_the_seed() {
        let config = Config {
            retryable_fraction: 0.2,
            permanent_fraction: 0.1,
            ..Config::default()
        };
        let (mut retryable, mut permanent) = (0, 0);
        for i in 0..10_000 {
            match config.entry_fault(&format!("{{\"n\":{i}}}")) {
                Some(Fault::Retryable(c)) => {
                    assert!(c == "ThrottlingException" || c == "InternalFailure");
                    retryable += 1;
                }
                Some(Fault::Permanent(c)) => {
                    assert!(c == "InvalidArgument" || c == "MalformedDetail");
                    permanent += 1;
                }
                None => {}
            }
        }
        assert!((1_800..2_200).contains(&retryable), "retryable {retryable}");
        assert!((800..1_200).contains(&permanent), "permanent {permanent}");
        // Deterministic for a seed, different across seeds.
        let other = Config {
            seed: 1,
            ..config.clone()
        };
        let same = (0..1000)
            .filter(|i| {
                let d = format!("{{\"n\":{i}}}");
                config.entry_fault(&d) == other.entry_fault(&d)
            })
            .count();
        assert!(same < 1000);
        assert_eq!(config.entry_fault("x"), config.entry_fault("x"));
    }

    #[test]
    fn no_faults_by_default() {
        let config = Config::default();
        assert!((0..1000).all(|i| config.entry_fault(&i.to_string()).is_none()));
    }
}
