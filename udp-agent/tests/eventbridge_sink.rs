//! The EventBridge sink against the fault-injecting fake PutEvents endpoint.
//!
//! Unprivileged: synthetic packets go through the same encode ▸ batch path
//! as `udp-agent run` (`pipeline::encode_and_batch`) into
//! `sink::eventbridge::run`, which talks HTTP to `fake-eventbridge` on
//! loopback. The SDK is configured explicitly (static test credentials,
//! us-east-1, the fake's URL), never through the process environment, so
//! tests cannot race on it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_eventbridge::config::{Credentials, SharedCredentialsProvider};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use fake_eventbridge::{Config as FakeConfig, FakeEventBridge, Fault};
use tokio::sync::{mpsc, watch};
use udp_agent::{
    clock::WallClock,
    encode::Encoder,
    pipeline::{encode_and_batch, in_memory},
    record::Packet,
    sink::eventbridge::{
        self, DRAIN_TIMEOUT_CODE, EventBridgeSink, EventBridgeStats, LIMITS, Settings,
        retry::Backoff,
    },
    stats::PipelineStats,
};

const BUS: &str = "test-bus";

fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDTESTTESTTESTTEST",
            "test-secret",
            None,
            None,
            "eventbridge-sink-test",
        )))
        .build()
}

/// Settings for tests: fast backoff, no rate limit or cost guard unless a
/// test sets them.
fn settings(endpoint: &str, dead_letter: Option<&Path>) -> Settings {
    Settings {
        endpoint_url: Some(endpoint.to_owned()),
        max_in_flight: 4,
        max_requests_per_second: 0,
        max_events_per_hour: 0,
        max_retries: Some(10),
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(20),
        },
        request_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(30),
        dead_letter: dead_letter.map(Path::to_owned),
        ..Settings::default()
    }
}

/// Packet `i`: a distinct payload, so every entry has a distinct Detail.
fn packet(i: usize) -> Packet {
    let payload = format!("packet {i:06} {}", "x".repeat(i % 50)).into_bytes();
    Packet {
        timestamp_ns: udp_agent::clock::monotonic_ns(),
        ifindex: 1,
        src: "198.18.0.2".parse().unwrap(),
        dst: "198.18.0.1".parse().unwrap(),
        src_port: 40000 + (i % 1000) as u16,
        dst_port: 514,
        wire_len: payload.len() as u32,
        payload,
        encoding: Default::default(),
    }
}

/// The payload a Detail carries, decoded.
fn payload_of(detail: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(detail).unwrap();
    STANDARD.decode(v["Payload"].as_str().unwrap()).unwrap()
}

struct Outcome {
    eb: Arc<EventBridgeStats>,
    pipeline: Arc<PipelineStats>,
    elapsed: Duration,
}

/// How packets enter the pipeline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Wait for room: nothing is dropped before the sink.
    Wait,
    /// Like the capture task: a full queue drops and counts (`queue_drops`).
    DropWhenFull,
}

/// Runs `packets` through encode ▸ batch ▸ EventBridge sink, signals
/// shutdown once they are all handed over, and waits for the sink to finish
/// (bounded: a hang fails the test).
async fn deliver(
    settings: Settings,
    packets: Vec<Packet>,
    feed: Feed,
    queue: usize,
    linger: Duration,
) -> Outcome {
    let pipeline = Arc::new(PipelineStats::default());
    let client = settings.client(&sdk_config());
    let sink = EventBridgeSink::new(settings, client, pipeline.clone()).unwrap();
    let eb = sink.counters();
    let encoder = Encoder::new("udp.raw", "UdpPacket", BUS, WallClock::now());
    let (packet_tx, packet_rx) = mpsc::channel::<Packet>(queue);
    // The same queue depth as `udp-agent run` for this many packets.
    let (batch_tx, batch_rx) =
        mpsc::channel(udp_agent::handoff::queue_batches(queue as u32, LIMITS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let encode = tokio::spawn(encode_and_batch(
        packet_rx,
        batch_tx,
        encoder,
        LIMITS,
        linger,
        pipeline.clone(),
    ));
    let sink = tokio::spawn(eventbridge::run(sink, in_memory(batch_rx), stop_rx));
    for p in packets {
        pipeline.decoded.fetch_add(1, Relaxed);
        match feed {
            Feed::Wait => packet_tx.send(p).await.unwrap(),
            Feed::DropWhenFull => {
                if packet_tx.try_send(p).is_err() {
                    pipeline.queue_drops.fetch_add(1, Relaxed);
                }
            }
        }
    }
    drop(packet_tx);
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(60), async {
        encode.await.unwrap();
        sink.await.unwrap();
    })
    .await
    .expect("the sink did not finish within 60 s");
    Outcome {
        eb,
        pipeline,
        elapsed: started.elapsed(),
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}

/// `received = delivered + failed + cost_guard_skipped + undelivered`, and
/// the pipeline's view agrees.
fn assert_counters_add_up(o: &Outcome, captured: u64) {
    let eb = &o.eb;
    let p = &o.pipeline;
    let (received, delivered, failed, skipped, undelivered) = (
        load(&eb.received),
        load(&eb.delivered),
        load(&eb.failed),
        load(&eb.cost_guard_skipped),
        load(&eb.undelivered),
    );
    assert_eq!(
        received,
        delivered + failed + skipped + undelivered,
        "eventbridge counters: {}",
        eb.summary()
    );
    assert_eq!(
        captured,
        load(&p.queue_drops) + load(&p.oversize) + load(&p.batched),
        "pipeline: {:?}",
        p.snapshot()
    );
    assert_eq!(load(&p.batched), received, "batched entries reach the sink");
    assert_eq!(load(&p.emitted), delivered);
    assert_eq!(load(&p.sink_failed), failed + undelivered);
    assert_eq!(
        eb.failed_by_code().values().sum::<u64>(),
        failed,
        "{:?}",
        eb.failed_by_code()
    );
    assert_eq!(load(&eb.in_flight), 0);
}

/// The dead-letter file: Detail → ErrorCode, checking every line's shape.
fn dead_letters(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let entry = &v["Entry"];
        assert_eq!(entry["Source"], "udp.raw", "{line}");
        assert_eq!(entry["DetailType"], "UdpPacket", "{line}");
        assert_eq!(entry["EventBusName"], BUS, "{line}");
        assert!(entry["Time"].is_string(), "{line}");
        assert!(v["ErrorMessage"].is_string(), "{line}");
        let detail = entry["Detail"].as_str().unwrap().to_owned();
        let code = v["ErrorCode"].as_str().unwrap().to_owned();
        assert!(
            out.insert(detail, code).is_none(),
            "an entry was dead-lettered twice: {line}"
        );
    }
    out
}

fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_deliver_every_good_entry_exactly_once_and_dead_letter_the_rest() {
    let fake = FakeEventBridge::start(FakeConfig {
        seed: 42,
        throttle_every: 7,
        internal_error_every: 11,
        drop_every: 13,
        retryable_fraction: 0.2,
        retryable_attempts: 2,
        permanent_fraction: 0.1,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dl = temp_path(&dir, "dead-letter.ndjson");
    let n = 600;
    let packets: Vec<Packet> = (0..n).map(packet).collect();
    let payloads: HashSet<Vec<u8>> = packets.iter().map(|p| p.payload.clone()).collect();

    let mut s = settings(&fake.url(), Some(&dl));
    // About 28% of requests fail whole (every 7th, 11th and 13th) and a
    // retryable entry is refused twice more: with 10 retries a batch runs
    // out about once in 3000; with 40 it does not.
    s.max_retries = Some(40);
    let o = deliver(s, packets, Feed::Wait, 4096, Duration::from_millis(5)).await;

    // What the fake saw, by Detail, and what it was told to do with each.
    let records: HashMap<String, fake_eventbridge::EntryRecord> = fake
        .records()
        .into_iter()
        .map(|r| (r.detail.clone(), r))
        .collect();
    assert_eq!(records.len(), n, "every entry reached the endpoint");
    let seen: HashSet<Vec<u8>> = records.keys().map(|d| payload_of(d)).collect();
    assert_eq!(seen, payloads, "the payloads arrived byte for byte");

    let mut permanent = BTreeMap::new();
    let mut retryable = 0;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (detail, r) in &records {
        assert_eq!(r.source, "udp.raw");
        assert_eq!(r.detail_type, "UdpPacket");
        assert_eq!(r.event_bus_name.as_deref(), Some(BUS));
        let t = r.time.expect("every entry carries Time");
        assert!((now - t).abs() < 120.0, "Time {t} is not capture time");
        match fake.config().entry_fault(detail) {
            Some(Fault::Permanent(code)) => {
                // Refused once, never resent.
                assert_eq!(
                    (r.accepted, r.rejected),
                    (0, 1),
                    "{r:?}\n{}",
                    o.eb.summary()
                );
                permanent.insert(detail.clone(), code.to_owned());
            }
            Some(Fault::Retryable(_)) => {
                // Refused twice, then accepted exactly once.
                assert_eq!(
                    (r.accepted, r.rejected),
                    (1, 2),
                    "{r:?}\n{}",
                    o.eb.summary()
                );
                retryable += 1;
            }
            None => assert_eq!(
                (r.accepted, r.rejected),
                (1, 0),
                "{r:?}\n{}",
                o.eb.summary()
            ),
        }
    }
    assert!(!permanent.is_empty() && retryable > 0, "the faults fired");

    // The dead-letter file holds exactly the non-retryable ones, with their
    // codes.
    assert_eq!(dead_letters(&dl), permanent);

    let eb = &o.eb;
    assert_counters_add_up(&o, n as u64);
    assert_eq!(load(&eb.received), n as u64);
    assert_eq!(load(&eb.delivered), (n - permanent.len()) as u64);
    assert_eq!(load(&eb.failed), permanent.len() as u64);
    assert_eq!(load(&eb.dead_lettered), permanent.len() as u64);
    assert_eq!(load(&eb.undelivered), 0);
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    for code in permanent.values() {
        *by_code.entry(code.clone()).or_default() += 1;
    }
    assert_eq!(eb.failed_by_code(), by_code);
    // Whole-request faults and retryable entries were retried.
    let fs = fake.stats();
    assert!(
        fs.throttled > 0 && fs.dropped > 0 && fs.internal_errors > 0,
        "{fs:?}"
    );
    assert_eq!(load(&eb.requests), fs.requests, "{}", eb.summary());
    assert!(
        load(&eb.retried) >= 2 * retryable as u64,
        "{}",
        eb.summary()
    );
    assert!(load(&eb.throttled) >= fs.throttled, "{}", eb.summary());
    assert_eq!(fs.invalid_requests, 0, "every request was well-formed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_counts_everything_undelivered_without_hanging() {
    // A port nobody listens on: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let dl = temp_path(&dir, "dead-letter.ndjson");
    let mut s = settings(&format!("http://127.0.0.1:{port}"), Some(&dl));
    s.max_retries = Some(1000); // never runs out: only the drain timeout ends it
    s.backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    };
    s.drain_timeout = Duration::from_millis(500);
    let n = 300;

    let o = deliver(
        s,
        (0..n).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_millis(5),
    )
    .await;

    assert!(
        o.elapsed < Duration::from_secs(5),
        "took {:?} with a 500 ms drain timeout",
        o.elapsed
    );
    assert_counters_add_up(&o, n as u64);
    let eb = &o.eb;
    assert_eq!(load(&eb.delivered), 0);
    assert_eq!(load(&eb.failed), 0, "{:?}", eb.failed_by_code());
    assert_eq!(load(&eb.undelivered), n as u64, "{}", eb.summary());
    assert!(load(&eb.requests) > 0 && load(&eb.retried) > 0);
    // Every abandoned entry is in the dead-letter file, ready to replay.
    let dead = dead_letters(&dl);
    assert_eq!(dead.len(), n);
    assert!(dead.values().all(|c| c == DRAIN_TIMEOUT_CODE), "{dead:?}");
    assert_eq!(load(&eb.dead_lettered), n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_the_last_error_is_dead_lettered() {
    // Every request is throttled whole.
    let fake = FakeEventBridge::start(FakeConfig {
        throttle_every: 1,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dl = temp_path(&dir, "dead-letter.ndjson");
    let mut s = settings(&fake.url(), Some(&dl));
    s.max_retries = Some(2);
    let n = 25; // three batches: 10, 10, 5

    let o = deliver(
        s,
        (0..n).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_millis(50),
    )
    .await;

    let eb = &o.eb;
    assert_counters_add_up(&o, n as u64);
    assert_eq!(load(&eb.failed), n as u64);
    assert_eq!(eb.failed_by_code()["ThrottlingException"], n as u64);
    // Each batch: the first attempt and two retries.
    assert_eq!(load(&eb.requests), 9, "{}", eb.summary());
    assert_eq!(fake.stats().requests, 9);
    assert_eq!(load(&eb.throttled), 9);
    assert_eq!(load(&eb.retried), 2 * n as u64);
    let dead = dead_letters(&dl);
    assert_eq!(dead.len(), n);
    assert!(dead.values().all(|c| c == "ThrottlingException"));
    assert!(fake.accepted().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_pushes_back_into_counted_queue_drops() {
    // One request at a time, 100 ms each: ~100 entries/s at most, while the
    // packets arrive all at once.
    let fake = FakeEventBridge::start(FakeConfig {
        delay: Duration::from_millis(100),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut s = settings(&fake.url(), None);
    s.max_in_flight = 1;
    let n = 5000;

    let o = deliver(
        s,
        (0..n).map(packet).collect(),
        Feed::DropWhenFull,
        64,
        Duration::from_millis(5),
    )
    .await;

    let drops = load(&o.pipeline.queue_drops);
    assert!(drops > 0, "the queue should have overflowed");
    assert_counters_add_up(&o, n as u64);
    let eb = &o.eb;
    // Nothing was lost beyond the counted drops.
    assert_eq!(load(&eb.delivered) + drops, n as u64, "{}", eb.summary());
    assert_eq!(
        fake.accepted().len() as u64,
        load(&eb.delivered),
        "each delivered entry accepted once"
    );
    // The sink never held more than one batch plus one queued batch.
    assert!(load(&eb.received) < 2000, "{}", eb.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_guard_stops_sending_at_the_hourly_limit() {
    let fake = FakeEventBridge::start(FakeConfig::default()).await.unwrap();
    let mut s = settings(&fake.url(), None);
    s.max_events_per_hour = 25;
    let n = 100;

    let o = deliver(
        s,
        (0..n).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_millis(5),
    )
    .await;

    assert_counters_add_up(&o, n as u64);
    assert_eq!(load(&o.eb.delivered), 25);
    assert_eq!(load(&o.eb.cost_guard_skipped), 75);
    assert_eq!(fake.accepted().len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_limit_paces_requests() {
    let fake = FakeEventBridge::start(FakeConfig::default()).await.unwrap();
    let mut s = settings(&fake.url(), None);
    // 20 requests/s with a burst of 2: 30 requests need at least 1.4 s.
    s.max_requests_per_second = 20;
    s.max_in_flight = 8;
    let n = 300;

    let o = deliver(
        s,
        (0..n).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_secs(1),
    )
    .await;

    assert_counters_add_up(&o, n as u64);
    assert_eq!(fake.stats().requests, 30);
    assert_eq!(load(&o.eb.delivered), n as u64);
    assert!(
        o.elapsed >= Duration::from_millis(1350),
        "30 requests at 20/s took only {:?}",
        o.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_endpoint_id_is_sent_and_signed_with_sigv4a() {
    let fake = FakeEventBridge::start(FakeConfig::default()).await.unwrap();
    let mut s = settings(&fake.url(), None);
    s.endpoint_id = Some("abcde.veo".into());
    let n = 20;

    let o = deliver(
        s,
        (0..n).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_millis(50),
    )
    .await;

    assert_counters_add_up(&o, n as u64);
    assert_eq!(load(&o.eb.delivered), n as u64, "{}", o.eb.summary());
    let fs = fake.stats();
    assert!(fs.requests > 0);
    assert_eq!(fs.endpoint_id_requests, fs.requests, "{fs:?}");
    assert_eq!(fs.sigv4a_requests, fs.requests, "{fs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_id_requests_use_sigv4() {
    let fake = FakeEventBridge::start(FakeConfig::default()).await.unwrap();
    let o = deliver(
        settings(&fake.url(), None),
        (0..5).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_millis(5),
    )
    .await;
    assert_eq!(load(&o.eb.delivered), 5);
    let fs = fake.stats();
    assert_eq!(
        (fs.endpoint_id_requests, fs.sigv4a_requests),
        (0, 0),
        "{fs:?}"
    );
}

/// A 200 whose body cannot be read: EventBridge took the request, but
/// which entries it accepted is unknown. Each batch is resent once (each
/// entry arrives at most twice), then counted delivered (`unconfirmed`);
/// nothing is dead-lettered, and copies are not multiplied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_2xx_is_resent_once_then_counted_delivered() {
    let fake = FakeEventBridge::start(FakeConfig {
        unreadable_every: 1,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dl = temp_path(&dir, "dead-letter.ndjson");
    let n = 200;
    let o = deliver(
        settings(&fake.url(), Some(&dl)),
        (0..n).map(packet).collect(),
        Feed::Wait,
        4096,
        Duration::from_millis(5),
    )
    .await;
    let records = fake.records();
    assert_eq!(records.len(), n);
    assert!(
        records.iter().all(|r| r.accepted == 2),
        "each entry sent exactly twice: {:?}",
        records.iter().map(|r| r.accepted).collect::<BTreeSet<_>>()
    );
    assert_counters_add_up(&o, n as u64);
    assert_eq!(load(&o.eb.delivered), n as u64);
    assert_eq!(load(&o.eb.unconfirmed), n as u64);
    assert_eq!(load(&o.eb.failed), 0);
    assert!(dead_letters(&dl).is_empty());
}

/// Three agents, each with far more to send than one shared quota allows
/// (`fake-eventbridge`'s quota stands for the account's PutEvents quota):
/// once their rates have adapted, the requests they send together stay
/// within 10% of the quota, each gets at least half its fair share, and
/// every entry is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_one_quota_fairly_and_lose_nothing() {
    const QUOTA: u64 = 100;
    const AGENTS: usize = 3;
    const PER_AGENT: usize = 4000;
    let fake = FakeEventBridge::start(FakeConfig {
        quota_per_second: QUOTA,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut counters = Vec::new();
    let mut runs = Vec::new();
    let mut sent = HashSet::new();
    for a in 0..AGENTS {
        let s = Settings {
            // The default ceiling: three agents could send 900/s.
            max_requests_per_second: 300,
            backoff: Backoff::default(),
            ..settings(&fake.url(), None)
        };
        let pipeline = Arc::new(PipelineStats::default());
        let sink = EventBridgeSink::new(s, s_client(&fake), pipeline.clone()).unwrap();
        counters.push(sink.counters());
        let (packet_tx, packet_rx) = mpsc::channel::<Packet>(PER_AGENT);
        let (batch_tx, batch_rx) = mpsc::channel(PER_AGENT);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let encoder = Encoder::new("udp.raw", "UdpPacket", BUS, WallClock::now());
        for i in 0..PER_AGENT {
            let mut p = packet(a * PER_AGENT + i);
            p.src_port = 40000 + a as u16;
            sent.insert(p.payload.clone());
            packet_tx.try_send(p).unwrap();
        }
        drop(packet_tx);
        runs.push(tokio::spawn(async move {
            let encode = tokio::spawn(encode_and_batch(
                packet_rx,
                batch_tx,
                encoder,
                LIMITS,
                Duration::from_millis(5),
                pipeline,
            ));
            eventbridge::run(sink, in_memory(batch_rx), stop_rx).await;
            encode.await.unwrap();
            _stop_tx
        }));
    }
    let snapshot = || -> (u64, Vec<u64>) {
        let accepted = counters
            .iter()
            .map(|c| load(&c.requests) - load(&c.throttled))
            .collect();
        (fake.stats().requests, accepted)
    };
    // Converged well before 4 s; all three still have a backlog at 10 s
    // (each has 400 requests to send, about 33 a second).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (r0, a0) = snapshot();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (r1, a1) = snapshot();
    let secs = t0.elapsed().as_secs_f64();
    let total = (r1 - r0) as f64 / secs;
    let shares: Vec<f64> = a0
        .iter()
        .zip(&a1)
        .map(|(x, y)| (y - x) as f64 / secs)
        .collect();
    println!(
        "requests/s, all agents: {total:.1} (quota {QUOTA}); accepted/s per agent: {shares:.1?}"
    );
    assert!(
        (total - QUOTA as f64).abs() <= QUOTA as f64 * 0.1,
        "{total:.1} requests/s against a quota of {QUOTA}"
    );
    for (a, share) in shares.iter().enumerate() {
        assert!(
            *share >= QUOTA as f64 / AGENTS as f64 / 2.0,
            "agent {a}: {share:.1} accepted requests/s of {QUOTA} shared by {AGENTS}: {shares:?}"
        );
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for r in runs {
            r.await.unwrap();
        }
    })
    .await
    .expect("every agent finished");
    let records = fake.records();
    let got: HashSet<Vec<u8>> = records.iter().map(|r| payload_of(&r.detail)).collect();
    assert_eq!(got, sent, "every entry delivered");
    assert!(records.iter().all(|r| r.accepted == 1), "each once");
    assert!(fake.stats().quota_throttled > 0, "the quota was hit");
}

fn s_client(fake: &FakeEventBridge) -> eventbridge::Connection {
    settings(&fake.url(), None).client(&sdk_config())
}
