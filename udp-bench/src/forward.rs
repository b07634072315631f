//! Scenario 3 — forwarding rate: datagrams sent into the veth pair, turned
//! into PutEvents requests, acknowledged by a local endpoint on loopback.
//!
//! The agent (EventBridge sink, client-side quota limit and cost guard off)
//! and the article's script (`bench/article.py`: raw socket, one
//! `put_events` per datagram) run one after the other against the same
//! endpoint ([`start_endpoint`]: `fake-eventbridge` in this process, counters
//! only, timing every stamped entry). For each:
//!
//! 1. sustained rate: the highest offered rate whose datagrams are all
//!    acknowledged (loss under 0.1%), found like scenario 2's (double, then
//!    bisect), with one process for the whole search;
//! 2. latency: the sender offers half of that rate; the endpoint records
//!    send-to-acknowledged time for every entry (the payload carries the
//!    send time).
//!
//! (Offering far more than a contender can forward measures something
//! else: the agent then spends its CPU capturing datagrams it has to drop
//! at its queue.)
//!
//! Both run on the `AF_PACKET` sender's traffic ([`traffic::send_paced`]),
//! not scenario 2's XDP frames: the latency needs a timestamp in every
//! payload, and a veth charges every XDP frame it turns into a socket
//! buffer a whole page, which would shrink the article's raw socket's
//! default receive buffer from ~270 small datagrams to ~50 (a NIC copies
//! small packets into small buffers). Measured in quick runs: article.py
//! 1,000 events/s on socket buffers, 700 on XDP frames; the agent
//! 144k–196k events/s either way.
//!
//! In full mode the agent's throughput is cross-checked against the
//! `fake-eventbridge` binary (counters only) in a process of its own.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fake_eventbridge::{Config, blocking::FakeEventBridge as Endpoint, latency::Latency};
use serde::Serialize;

use crate::{
    capture::PORT,
    contenders::{Agent, AgentCounters, Sink},
    netns::VethNs,
    proc::{Proc, ProcExt, check_interrupted, pin_command, pin_to_cpu, sleep, sut_cpu},
    report::{Row, duration_ns, mib, thousands},
    search::{self, Found, Plan, Probe},
    traffic::{self, Sent},
};

/// Payload bytes of every forwarded datagram.
pub const PAYLOAD: usize = 64;

pub struct Settings {
    /// Length of one search step.
    pub step: Duration,
    pub latency: Duration,
    /// First rate of the agent's search.
    pub agent_start_pps: f64,
    /// First rate of the article's search.
    pub article_start_pps: f64,
    pub max_doublings: usize,
    pub bisections: usize,
    pub cross_check: bool,
    /// The spool runs, in order.
    pub spooling: Vec<Spooling>,
    /// Entries spooled during the outage of the replay run.
    pub replay_entries: u64,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            step: Duration::from_secs(if quick { 1 } else { 3 }),
            latency: Duration::from_secs(if quick { 2 } else { 8 }),
            agent_start_pps: 12_500.0,
            article_start_pps: 100.0,
            max_doublings: 6,
            bisections: if quick { 2 } else { 4 },
            cross_check: !quick,
            spooling: if quick {
                vec![Spooling::Off, Spooling::Interval]
            } else {
                vec![
                    Spooling::Off,
                    Spooling::Never,
                    Spooling::Interval,
                    Spooling::Always,
                ]
            },
            // Full runs fill the spool past a gigabyte (about 330 bytes an
            // entry).
            replay_entries: if quick { 20_000 } else { 3_500_000 },
        }
    }
}

pub struct Env<'a> {
    pub agent: &'a Path,
    pub python: Option<&'a Path>,
    pub article: &'a Path,
    pub fake_eventbridge: Option<&'a Path>,
    pub ns: &'a VethNs,
}

impl Probe for Step {
    fn sent(&self) -> &Sent {
        &self.offered
    }
    fn lossless(&self) -> bool {
        self.lossless
    }
}

/// One step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub offered: Sent,
    pub acknowledged: u64,
    pub loss_pct: f64,
    pub lossless: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// The highest offered rate acknowledged without loss (the sender's
    /// achieved rate at that step), in events per second.
    pub events_per_s: f64,
    pub steps: Vec<Step>,
    /// What stopped the search from going higher.
    pub limited_by: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyRun {
    pub offered: Sent,
    pub acknowledged: u64,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct Contender {
    /// CPU time of the process per acknowledged entry while the throughput
    /// was measured, in microseconds.
    pub cpu_us_per_event: f64,
    pub throughput: Throughput,
    pub latency: Option<LatencyRun>,
    pub max_rss_kib: u64,
    pub counters: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct ForwardResults {
    pub payload: usize,
    pub agent: Option<Contender>,
    pub article: Option<Contender>,
    pub article_skipped: Option<String>,
    pub cross_check_fake_eventbridge: Option<Throughput>,
    /// The forwarding rate through the spool, by fsync policy, and without.
    pub spool: Vec<SpoolRun>,
    pub replay: Option<Replay>,
}

/// How the agent keeps what it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Spooling {
    /// `--spool-dir none`: in memory only.
    Off,
    /// `--spool-fsync never|interval|always`.
    Never,
    Interval,
    Always,
}

impl Spooling {
    fn name(self) -> &'static str {
        match self {
            Spooling::Off => "no spool",
            Spooling::Never => "spool, fsync never",
            Spooling::Interval => "spool, fsync interval (default)",
            Spooling::Always => "spool, fsync always",
        }
    }

    /// `udp-agent run` flags; `dir` is a fresh directory for the spool.
    fn flags(self, dir: &Path) -> Vec<String> {
        let dir = dir.display().to_string();
        let fsync = match self {
            Spooling::Off => return vec!["--spool-dir".into(), "none".into()],
            Spooling::Never => "never",
            Spooling::Interval => "interval",
            Spooling::Always => "always",
        };
        vec![
            "--spool-dir".into(),
            dir,
            "--spool-fsync".into(),
            fsync.into(),
        ]
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SpoolRun {
    pub spooling: Spooling,
    pub throughput: Throughput,
    pub cpu_us_per_event: f64,
}

/// Draining a spool filled during an outage.
#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    pub entries: u64,
    /// From the first acknowledgement after the endpoint came back to the
    /// last one.
    pub seconds: f64,
    pub events_per_s: f64,
    /// The agent's CPU per entry over the drain.
    pub cpu_us_per_event: f64,
    /// Bytes in the spool directory when the endpoint came back.
    pub spool_bytes: u64,
    /// The agent's peak RSS over the whole run, the filling included.
    pub max_rss_kib: u64,
}

/// Bytes of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The scenario's PutEvents endpoint on `listen`: `fake-eventbridge`,
/// counters only, recording the latency of every stamped entry, served by
/// two worker threads on CPU 0, the outside world's CPU (see
/// [`crate::proc::sut_cpu`]).
pub fn start_endpoint(listen: SocketAddr) -> Result<Endpoint> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| pin_to_cpu(0))
        .enable_all()
        .build()
        .context("the endpoint's runtime")?;
    let config = Config {
        listen,
        record: false,
        record_latency: true,
        ..Config::default()
    };
    Endpoint::start_on(config, rt).with_context(|| format!("starting the endpoint on {listen}"))
}

/// On loopback, any free port.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Something that counts acknowledged entries.
trait Acks {
    fn acks(&self) -> Result<u64>;
}

impl Acks for Endpoint {
    fn acks(&self) -> Result<u64> {
        Ok(self.stats().entries_accepted)
    }
}

/// `fake-eventbridge` through its `GET /_stats`.
struct FakeStats {
    addr: String,
}

impl Acks for FakeStats {
    fn acks(&self) -> Result<u64> {
        let mut s = TcpStream::connect(&self.addr).context("connecting to fake-eventbridge")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /_stats HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("fake-eventbridge /_stats said {body:?}"))?;
        Ok(v["entries_accepted"].as_u64().unwrap_or(0))
    }
}

/// Waits until the acknowledged count stops moving for `quiet` (at most
/// `max`); returns it.
fn settle(acks: &dyn Acks, quiet: Duration, max: Duration) -> Result<u64> {
    let end = Instant::now() + max;
    let mut last = acks.acks()?;
    let mut since = Instant::now();
    while Instant::now() < end {
        sleep(Duration::from_millis(50))?;
        let now = acks.acks()?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    Ok(last)
}

/// Offers `rate` for `duration` and counts the entries acknowledged by the
/// end of a short grace period after the last send (a fifth of the step,
/// at least half a second): what is still queued then was not forwarded
/// at this rate, it was buffered. The backlog is drained, uncounted,
/// before the next step starts.
fn step(ns: &VethNs, acks: &dyn Acks, frame: &[u8], rate: f64, duration: Duration) -> Result<Step> {
    check_interrupted()?;
    settle(acks, Duration::from_millis(300), Duration::from_secs(60))?;
    let before = acks.acks()?;
    let count = ((rate * duration.as_secs_f64()) as u64).max(1);
    let offered = traffic::send_paced(ns, frame, rate, count, duration * 2, 1_000_000_000)?;
    sleep((duration / 5).max(Duration::from_millis(500)))?;
    let acknowledged = acks.acks()? - before;
    let loss = offered.packets.saturating_sub(acknowledged) as f64 / offered.packets.max(1) as f64;
    Ok(Step {
        offered,
        acknowledged,
        loss_pct: loss * 100.0,
        lossless: loss < 0.001,
    })
}

/// The highest rate acknowledged without loss: double from `start`, then
/// bisect.
fn search(
    ns: &VethNs,
    acks: &dyn Acks,
    frame: &[u8],
    start: f64,
    s: &Settings,
    who: &str,
) -> Result<Throughput> {
    let plan = Plan {
        start_pps: start,
        max_doublings: s.max_doublings,
        bisections: s.bisections,
        short_retries: 1,
        min_pps: 0.0,
    };
    let Found {
        good,
        bad,
        sender_limited,
        steps,
    } = search::search(&plan, |rate| {
        let st = step(ns, acks, frame, rate, s.step)?;
        eprintln!(
            "bench: forward: {who:<10} asked {:>8.0} pps  sent {:>8.0} pps  acknowledged {:>8} of {:>8}  loss {:>7.3}%",
            rate, st.offered.pps, st.acknowledged, st.offered.packets, st.loss_pct
        );
        Ok(st)
    })?;
    let limited_by = if sender_limited {
        "the sender could not offer more".to_string()
    } else {
        match &bad {
            Some(b) => format!(
                "at {} pps {:.1}% was not acknowledged in time",
                thousands(b.offered.pps),
                b.loss_pct
            ),
            None => "the search's highest step".into(),
        }
    };
    Ok(Throughput {
        events_per_s: good.map_or(0.0, |g| g.offered.pps),
        steps,
        limited_by,
    })
}

fn latency_run(
    ns: &VethNs,
    endpoint: &Endpoint,
    frame: &[u8],
    rate: f64,
    duration: Duration,
) -> Result<LatencyRun> {
    check_interrupted()?;
    settle(
        endpoint,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )?;
    endpoint.reset_latency();
    let before = endpoint.stats().entries_accepted;
    let count = ((rate * duration.as_secs_f64()) as u64).max(1);
    let offered = traffic::send_paced(ns, frame, rate, count, duration * 2, 2_000_000_000)?;
    let after = settle(
        endpoint,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )?;
    Ok(LatencyRun {
        offered,
        acknowledged: after - before,
        latency: endpoint.latency(),
    })
}

/// Sends a few datagrams until the endpoint acknowledges one: the path
/// works end to end.
fn warm_up(ns: &VethNs, acks: &dyn Acks, frame: &[u8], what: &str) -> Result<()> {
    let before = acks.acks()?;
    for _ in 0..60 {
        traffic::send_paced(ns, frame, 100.0, 5, Duration::from_secs(1), 0)?;
        sleep(Duration::from_millis(500))?;
        if acks.acks()? > before {
            settle(acks, Duration::from_millis(300), Duration::from_secs(10))?;
            return Ok(());
        }
    }
    bail!("{what}: no entry reached the endpoint within 30 s of warm-up traffic")
}

/// What [`throughput_and_latency`] measured for one contender.
struct Measured {
    cpu_us_per_event: f64,
    throughput: Throughput,
    latency: LatencyRun,
}

/// Who [`throughput_and_latency`] measures.
struct Who<'a> {
    /// For messages.
    what: &'a str,
    /// The search's first rate.
    start_pps: f64,
    /// The latency run's lowest rate.
    min_latency_pps: f64,
    /// Its process's CPU time so far, in seconds.
    cpu_seconds: &'a dyn Fn() -> f64,
}

/// The rate search, then a latency run at half the sustained rate, for a
/// contender already started and warmed up.
fn throughput_and_latency(
    env: &Env,
    endpoint: &Endpoint,
    frame: &[u8],
    s: &Settings,
    who: &Who,
) -> Result<Measured> {
    let Who {
        what,
        start_pps,
        min_latency_pps,
        cpu_seconds,
    } = *who;
    let (cpu0, acks0) = (cpu_seconds(), endpoint.stats().entries_accepted);
    let tp = search(env.ns, endpoint, frame, start_pps, s, what)?;
    let cpu_us_per_event =
        (cpu_seconds() - cpu0) * 1e6 / (endpoint.stats().entries_accepted - acks0).max(1) as f64;
    eprintln!(
        "bench: forward: {what}: {} events/s without loss, {cpu_us_per_event:.1} µs CPU/event",
        thousands(tp.events_per_s),
    );
    let lat = latency_run(
        env.ns,
        endpoint,
        frame,
        (tp.events_per_s / 2.0).max(min_latency_pps),
        s.latency,
    )?;
    eprintln!(
        "bench: forward: {what} latency at {} events/s: p50 {} p99 {}",
        thousands(lat.offered.pps),
        duration_ns(lat.latency.p50_ns),
        duration_ns(lat.latency.p99_ns)
    );
    Ok(Measured {
        cpu_us_per_event,
        throughput: tp,
        latency: lat,
    })
}

fn agent_run(env: &Env, endpoint: &Endpoint, frame: &[u8], s: &Settings) -> Result<Contender> {
    let agent = Agent::start(
        env.agent,
        &env.ns.host_if,
        PORT,
        &Sink::EventBridge {
            endpoint_url: endpoint.url(),
        },
    )?;
    warm_up(env.ns, endpoint, frame, "udp-agent")
        .with_context(|| format!("agent stderr:\n{}", agent.stderr_text()))?;
    let m = throughput_and_latency(
        env,
        endpoint,
        frame,
        s,
        &Who {
            what: "agent",
            start_pps: s.agent_start_pps,
            min_latency_pps: 100.0,
            cpu_seconds: &|| agent.cpu_seconds(),
        },
    )?;
    let c: AgentCounters = agent.stop()?;
    Ok(Contender {
        cpu_us_per_event: m.cpu_us_per_event,
        throughput: m.throughput,
        latency: Some(m.latency),
        max_rss_kib: c.max_rss_kib,
        counters: serde_json::to_value(&c)?,
    })
}

fn article_run(
    env: &Env,
    python: &Path,
    endpoint: &Endpoint,
    frame: &[u8],
    s: &Settings,
) -> Result<Contender> {
    let mut cmd = Command::new(python);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg(env.article)
        .args(["--endpoint-url", &endpoint.url(), "--region", "us-east-1"])
        .args(["--max-seconds", "600"])
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK")
        .env("AWS_SECRET_ACCESS_KEY", "benchmark-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/udp-bench")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/udp-bench");
    pin_command(&mut cmd, sut_cpu());
    let mut p = Proc::spawn("article.py", &mut cmd, true)?;
    if !p.stderr().wait_for("listening", Duration::from_secs(60)) {
        bail!("article.py did not start; stderr:\n{}", p.stderr_text());
    }
    warm_up(env.ns, endpoint, frame, "article.py")
        .with_context(|| format!("article.py stderr:\n{}", p.stderr_text()))?;
    let m = throughput_and_latency(
        env,
        endpoint,
        frame,
        s,
        &Who {
            what: "article.py",
            start_pps: s.article_start_pps,
            min_latency_pps: 10.0,
            cpu_seconds: &|| p.cpu_seconds().unwrap_or(0.0),
        },
    )?;
    let exit = p.stop(libc::SIGTERM, Duration::from_secs(10));
    Ok(Contender {
        cpu_us_per_event: m.cpu_us_per_event,
        throughput: m.throughput,
        latency: Some(m.latency),
        max_rss_kib: exit.max_rss_kib,
        counters: serde_json::json!({ "exit_code": exit.code }),
    })
}

fn cross_check(env: &Env, bin: &Path, frame: &[u8], s: &Settings) -> Result<Throughput> {
    let mut cmd = Command::new(bin);
    cmd.arg("--no-record");
    // The endpoint is the outside world: CPU 0.
    pin_command(&mut cmd, 0);
    let fake = Proc::spawn("fake-eventbridge", &mut cmd, false)?;
    if !fake
        .stdout()
        .wait_for("listening on", Duration::from_secs(10))
    {
        bail!("fake-eventbridge did not start: {}", fake.stderr_text());
    }
    let url = fake
        .stdout()
        .snapshot()
        .iter()
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
        .context("fake-eventbridge's address")?;
    let stats = FakeStats {
        addr: url.trim_start_matches("http://").to_string(),
    };
    let agent = Agent::start(
        env.agent,
        &env.ns.host_if,
        PORT,
        &Sink::EventBridge {
            endpoint_url: url.clone(),
        },
    )?;
    warm_up(env.ns, &stats, frame, "udp-agent → fake-eventbridge")?;
    let tp = search(env.ns, &stats, frame, s.agent_start_pps, s, "agent→fake")?;
    eprintln!(
        "bench: forward: agent → fake-eventbridge: {} events/s",
        thousands(tp.events_per_s)
    );
    agent.stop()?;
    drop(fake);
    Ok(tp)
}

/// A directory for one agent's spool, removed when dropped.
struct TempSpool(PathBuf);

impl TempSpool {
    fn new() -> TempSpool {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        TempSpool(std::env::temp_dir().join(format!(
            "udp-bench-forward-spool-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )))
    }
}

impl Drop for TempSpool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The forwarding rate with one way of spooling.
fn spool_run(
    env: &Env,
    endpoint: &Endpoint,
    frame: &[u8],
    s: &Settings,
    spooling: Spooling,
) -> Result<SpoolRun> {
    let dir = TempSpool::new();
    let flags = spooling.flags(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start_with(
        env.agent,
        &env.ns.host_if,
        PORT,
        &Sink::EventBridge {
            endpoint_url: endpoint.url(),
        },
        &flags,
    )?;
    warm_up(env.ns, endpoint, frame, spooling.name())
        .with_context(|| format!("agent stderr:\n{}", agent.stderr_text()))?;
    let (cpu0, acks0) = (agent.cpu_seconds(), endpoint.stats().entries_accepted);
    let tp = search(
        env.ns,
        endpoint,
        frame,
        s.agent_start_pps,
        s,
        spooling.name(),
    )?;
    let cpu_us_per_event = (agent.cpu_seconds() - cpu0) * 1e6
        / (endpoint.stats().entries_accepted - acks0).max(1) as f64;
    eprintln!(
        "bench: forward: {}: {} events/s without loss, {cpu_us_per_event:.2} µs CPU/event",
        spooling.name(),
        thousands(tp.events_per_s)
    );
    agent.stop()?;
    Ok(SpoolRun {
        spooling,
        throughput: tp,
        cpu_us_per_event,
    })
}

/// Fills the spool while the endpoint is away (connections refused), then
/// starts it and times the drain.
fn replay_run(env: &Env, frame: &[u8], s: &Settings) -> Result<Replay> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = TempSpool::new();
    let mut flags = Spooling::Interval.flags(&dir.0);
    flags.extend(["--spool-max-bytes".into(), "4GiB".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start_with(
        env.agent,
        &env.ns.host_if,
        PORT,
        &Sink::EventBridge {
            endpoint_url: url.clone(),
        },
        &flags,
    )?;
    let entries = s.replay_entries;
    let rate = 100_000.0;
    let sent = traffic::send_paced(
        env.ns,
        frame,
        rate,
        entries,
        Duration::from_secs_f64(entries as f64 / rate * 4.0 + 5.0),
        3_000_000_000,
    )?;
    // Written to the spool a few milliseconds after capture.
    sleep(Duration::from_secs(1))?;
    let spool_bytes = dir_bytes(&dir.0);
    let endpoint = start_endpoint(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let cpu0 = agent.cpu_seconds();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (Instant::now(), 0);
    while Instant::now() < deadline {
        check_interrupted()?;
        let acks = endpoint.stats().entries_accepted;
        if acks > 0 && first.is_none() {
            first = Some((Instant::now(), acks));
        }
        if acks > last.1 {
            last = (Instant::now(), acks);
        }
        if acks >= sent.packets || (first.is_some() && last.0.elapsed() > Duration::from_secs(3)) {
            break;
        }
        sleep(Duration::from_millis(5))?;
    }
    let cpu = agent.cpu_seconds() - cpu0;
    let c = agent.stop()?;
    let Some((t0, a0)) = first else {
        bail!("nothing was delivered after the endpoint came back");
    };
    let drained = last.1 - a0;
    let seconds = (last.0 - t0).as_secs_f64();
    if last.1 < sent.packets {
        bail!(
            "the spool did not drain: {} of {} sent acknowledged (pipeline {:?})",
            last.1,
            sent.packets,
            c.pipeline
        );
    }
    let events_per_s = drained as f64 / seconds.max(1e-6);
    eprintln!(
        "bench: forward: replay of {} spooled entries: {} events/s",
        thousands(sent.packets as f64),
        thousands(events_per_s)
    );
    Ok(Replay {
        entries: sent.packets,
        seconds,
        events_per_s,
        cpu_us_per_event: cpu * 1e6 / last.1.max(1) as f64,
        spool_bytes,
        max_rss_kib: c.max_rss_kib,
    })
}

pub fn run(env: &Env, s: &Settings) -> Result<(ForwardResults, Vec<Row>)> {
    let frame = traffic::udp_frame(env.ns, PORT, PAYLOAD);
    let endpoint = start_endpoint(loopback())?;
    let agent = agent_run(env, &endpoint, &frame, s)?;
    let mut spool = Vec::new();
    for &spooling in &s.spooling {
        spool.push(spool_run(env, &endpoint, &frame, s, spooling)?);
    }
    drop(endpoint);
    let replay = Some(replay_run(env, &frame, s)?);
    let endpoint = start_endpoint(loopback())?;
    let (article, article_skipped) = match env.python {
        Some(py) => (Some(article_run(env, py, &endpoint, &frame, s)?), None),
        None => (
            None,
            Some("no Python venv with boto3 (see `cargo xtask bench` output)".to_string()),
        ),
    };
    let cross = match (s.cross_check, env.fake_eventbridge) {
        (true, Some(bin)) => Some(cross_check(env, bin, &frame, s)?),
        _ => None,
    };
    let results = ForwardResults {
        payload: PAYLOAD,
        agent: Some(agent),
        article,
        article_skipped,
        cross_check_fake_eventbridge: cross,
        spool,
        replay,
    };
    let rows = rows(&results);
    Ok((results, rows))
}

fn rows(r: &ForwardResults) -> Vec<Row> {
    let mut rows = Vec::new();
    let Some(ours) = &r.agent else {
        return rows;
    };
    let peer = r.article.as_ref();
    let mut tp = Row::new(
        3,
        format!(
            "lossless forwarding rate, {} B datagrams → local PutEvents endpoint (vs article.py)",
            r.payload
        ),
        "events/s",
    );
    tp.ours = format!("{} events/s", thousands(ours.throughput.events_per_s));
    tp.note = format!(
        "limit: {}; {:.1} µs agent CPU per event (article: {})",
        ours.throughput.limited_by,
        ours.cpu_us_per_event,
        peer.map_or("—".to_string(), |p| format!(
            "{:.0} µs",
            p.cpu_us_per_event
        ))
    );
    tp.ours_value = Some(ours.throughput.events_per_s);
    tp.peer = match peer {
        Some(p) => format!(
            "{} events/s<br><sub>limit: {}</sub>",
            thousands(p.throughput.events_per_s),
            p.throughput.limited_by
        ),
        None => r.article_skipped.clone().unwrap_or_default(),
    };
    tp.peer_value = peer.map(|p| p.throughput.events_per_s);
    tp.ratio = peer.map(|p| ours.throughput.events_per_s / p.throughput.events_per_s.max(1e-9));
    tp.ratio_note = "higher is better".into();
    tp.target = Some("≥ 100,000 events/s and ≥ 150× article".into());
    tp.met =
        Some(ours.throughput.events_per_s >= 100_000.0 && tp.ratio.is_some_and(|x| x >= 150.0));
    rows.push(tp);
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let pick = |l: &Latency| if q < 0.9 { l.p50_ns } else { l.p99_ns };
        let Some(ol) = &ours.latency else { continue };
        let mut row = Row::new(
            3,
            format!("capture → acknowledged latency {name}, at half the sustained rate"),
            "ns",
        );
        row.ours = format!(
            "{} at {} events/s",
            duration_ns(pick(&ol.latency)),
            thousands(ol.offered.pps)
        );
        row.ours_value = Some(pick(&ol.latency));
        if let Some(pl) = peer.and_then(|p| p.latency.as_ref()) {
            row.peer = format!(
                "{} at {} events/s",
                duration_ns(pick(&pl.latency)),
                thousands(pl.offered.pps)
            );
            row.peer_value = Some(pick(&pl.latency));
            row.ratio = Some(pick(&ol.latency) / pick(&pl.latency));
            row.ratio_note = "lower is better".into();
        }
        rows.push(row);
    }
    if let Some(x) = &r.cross_check_fake_eventbridge {
        let mut row = Row::new(
            3,
            "forwarding cross-check: agent → fake-eventbridge binary",
            "events/s",
        );
        row.ours = format!("{} events/s", thousands(x.events_per_s));
        row.ours_value = Some(x.events_per_s);
        rows.push(row);
    }
    let base = r.spool.iter().find(|x| x.spooling == Spooling::Off);
    for run in &r.spool {
        let mut row = Row::new(
            3,
            format!("lossless forwarding rate, {}", run.spooling.name()),
            "events/s",
        );
        row.ours = format!("{} events/s", thousands(run.throughput.events_per_s));
        row.ours_value = Some(run.throughput.events_per_s);
        row.note = format!(
            "limit: {}; {:.2} µs agent CPU per event",
            run.throughput.limited_by, run.cpu_us_per_event
        );
        if let Some(b) = base.filter(|b| b.spooling != run.spooling) {
            row.peer = format!(
                "no spool: {} events/s",
                thousands(b.throughput.events_per_s)
            );
            row.peer_value = Some(b.throughput.events_per_s);
            let ratio = run.throughput.events_per_s / b.throughput.events_per_s.max(1e-9);
            row.ratio = Some(ratio);
            row.ratio_note = "vs no spool, same run; higher is better".into();
            if run.spooling == Spooling::Interval {
                row.target = Some("≥ 0.85× no spool".into());
                row.met = Some(ratio >= 0.85);
            }
        }
        rows.push(row);
    }
    if let Some(replay) = &r.replay {
        let mut row = Row::new(
            3,
            format!(
                "replay after an outage: {} spooled entries drained",
                thousands(replay.entries as f64)
            ),
            "events/s",
        );
        row.ours = format!("{} events/s", thousands(replay.events_per_s));
        row.ours_value = Some(replay.events_per_s);
        row.note = format!(
            "{:.1} s from the first acknowledgement to the last; {:.2} µs agent CPU per event; limit: the sink (32 requests in flight, no rate limit)",
            replay.seconds, replay.cpu_us_per_event
        );
        rows.push(row);
        let mut mem = Row::new(
            4,
            format!(
                "peak RSS while {} spooled during an outage are replayed",
                mib(replay.spool_bytes / 1024)
            ),
            "KiB",
        );
        mem.ours = mib(replay.max_rss_kib);
        mem.ours_value = Some(replay.max_rss_kib as f64);
        mem.target = Some("≤ 64 MiB".into());
        mem.met = Some(replay.max_rss_kib <= 64 * 1024);
        rows.push(mem);
    }
    let mut mem = Row::new(4, "peak RSS while forwarding", "KiB");
    mem.ours = mib(ours.max_rss_kib);
    mem.ours_value = Some(ours.max_rss_kib as f64);
    if let Some(p) = peer {
        mem.peer = format!("article.py {}", mib(p.max_rss_kib));
        mem.peer_value = Some(p.max_rss_kib as f64);
    }
    mem.target = Some("≤ 64 MiB".into());
    mem.met = Some(ours.max_rss_kib <= 64 * 1024);
    rows.push(mem);
    rows
}
