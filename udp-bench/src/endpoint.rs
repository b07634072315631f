//! A fast local PutEvents endpoint that acknowledges every entry and
//! measures latency: the forwarding scenario's target for both the agent
//! and the article's script, so both are timed by the same clock at the
//! same place.
//!
//! It speaks what the SDKs send (AWS JSON 1.1: `POST /`,
//! `X-Amz-Target: AWSEvents.PutEvents`, `{"Entries":[…]}`) and answers
//! `{"FailedEntryCount":0,"Entries":[{"EventId":…},…]}`. For every entry
//! whose `Detail.Payload` decodes to a payload stamped by the benchmark's
//! sender (magic, CLOCK_MONOTONIC send time, sequence number) it records
//! `now − send time`: capture-to-acknowledged latency, from the moment the
//! datagram was sent to the moment its PutEvents request reached the
//! endpoint (which then acknowledges it without further work).
//!
//! The project's `fake-eventbridge` is the endpoint for the agent's
//! throughput cross-check; it does not (yet) time entries, hence this one.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{proc::monotonic_ns, traffic::MAGIC};

/// Log-linear latency histogram: 32 linear sub-buckets per power of two
/// (about 3% resolution), lock-free.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

const SUB: u32 = 32;
const SUB_BITS: u32 = 5;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..(64 * SUB) as usize)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < u64::from(SUB) {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        let sub = (v >> (exp - SUB_BITS)) & u64::from(SUB - 1);
        ((exp - SUB_BITS + 1) * SUB) as usize + sub as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let i = i as u32;
        if i < SUB {
            return f64::from(i);
        }
        let exp = i / SUB + SUB_BITS - 1;
        let sub = u64::from(i % SUB);
        let low = (1u64 << exp) + (sub << (exp - SUB_BITS));
        low as f64 + (1u64 << (exp - SUB_BITS)) as f64 / 2.0
    }

    pub fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Relaxed);
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
    }

    pub fn snapshot(&self) -> Latency {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let q = |p: f64| -> f64 {
            if total == 0 {
                return f64::NAN;
            }
            let rank = ((p * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::value(i);
                }
            }
            f64::NAN
        };
        Latency {
            samples: total,
            p50_ns: q(0.50),
            p90_ns: q(0.90),
            p99_ns: q(0.99),
            max_ns: q(1.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub max_ns: f64,
}

#[derive(Default)]
pub struct State {
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    /// Entries that carried a send time.
    pub stamped: AtomicU64,
    pub latency: Histogram,
}

/// A running endpoint on its own runtime thread; stops when dropped.
pub struct Endpoint {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on 127.0.0.1 (any free port) with a two-worker runtime on
    /// CPU 0, the outside world's CPU (see [`crate::proc::sut_cpu`]).
    pub fn start() -> Result<Endpoint> {
        Endpoint::start_at("127.0.0.1:0")
    }

    /// [`Endpoint::start`] on a given address.
    pub fn start_at(addr: &str) -> Result<Endpoint> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(|| crate::proc::pin_to_cpu(0))
            .enable_all()
            .build()
            .context("endpoint runtime")?;
        let std_listener = std::net::TcpListener::bind(addr).context("binding the endpoint")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                tokio::select! {
                    _ = serve(listener, st) => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        Ok(Endpoint {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Relaxed)
    }

    pub fn latency(&self) -> Latency {
        self.state.latency.snapshot()
    }

    pub fn reset_latency(&self) {
        self.state.latency.reset();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Deserialize)]
struct PutEvents<'a> {
    #[serde(rename = "Entries", borrow, default)]
    entries: Vec<RequestEntry<'a>>,
}

#[derive(Deserialize)]
struct RequestEntry<'a> {
    #[serde(rename = "Detail", borrow, default)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Detail<'a> {
    #[serde(rename = "Payload", borrow, default)]
    payload: Option<Cow<'a, str>>,
}

/// The send time stamped in an entry's payload, if it carries one.
fn stamp(detail: &str) -> Option<u64> {
    let d: Detail = serde_json::from_str(detail).ok()?;
    let b64 = d.payload?;
    // 28 base64 characters are 21 bytes: magic (4) + time (8) + seq (8).
    let head = STANDARD.decode(b64.get(..28)?).ok()?;
    if &head[..4] != MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(head[4..12].try_into().ok()?))
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let is_put = req
        .headers()
        .get("x-amz-target")
        .is_some_and(|v| v.as_bytes() == b"AWSEvents.PutEvents");
    let body = req.into_body().collect().await?.to_bytes();
    let now = monotonic_ns();
    state.requests.fetch_add(1, Relaxed);
    let parsed = if is_put {
        serde_json::from_slice::<PutEvents>(&body).ok()
    } else {
        None
    };
    let Some(parsed) = parsed else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"__type":"SerializationException","message":"not a PutEvents request"}"#,
        )));
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    let n = parsed.entries.len();
    let mut stamped = 0;
    for e in &parsed.entries {
        if let Some(sent) = e.detail.as_deref().and_then(stamp) {
            state.latency.record(now.saturating_sub(sent));
            stamped += 1;
        }
    }
    let first = state.accepted.fetch_add(n as u64, Relaxed);
    state.stamped.fetch_add(stamped, Relaxed);
    let mut out = String::with_capacity(32 + n * 40);
    out.push_str(r#"{"FailedEntryCount":0,"Entries":["#);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"EventId":"bench-{:016x}"}}"#,
            first + i as u64
        ));
    }
    out.push_str("]}");
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_few_percent() {
        let h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let l = h.snapshot();
        assert_eq!(l.samples, 100_000);
        assert!((l.p50_ns / 50_000_000.0 - 1.0).abs() < 0.04, "{l:?}");
        assert!((l.p99_ns / 99_000_000.0 - 1.0).abs() < 0.04, "{l:?}");
        for v in [0u64, 1, 31, 32, 33, 1000, u64::MAX / 2] {
            let i = Histogram::index(v);
            assert!(i < 64 * 32);
            let mid = Histogram::value(i);
            assert!(
                (mid - v as f64).abs() <= (v as f64 / 16.0).max(1.0),
                "{v} → {mid}"
            );
        }
    }

    #[test]
    fn stamps_are_read_from_the_payload() {
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&123_456u64.to_le_bytes());
        p.extend_from_slice(&7u64.to_le_bytes());
        p.extend_from_slice(b"rest of the payload");
        let detail = serde_json::json!({
            "Destination": {"Port": 514},
            "Payload": STANDARD.encode(&p),
        })
        .to_string();
        assert_eq!(stamp(&detail), Some(123_456));
        assert_eq!(stamp(r#"{"Payload":"aGVsbG8="}"#), None);
    }
}
