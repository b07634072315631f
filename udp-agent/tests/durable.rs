//! Durable delivery, network ring: a real agent captures datagrams sent
//! from a network namespace over a veth pair and delivers them to a fake
//! PutEvents endpoint on loopback (`fake-eventbridge`, in this process),
//! through the disk spool. The endpoint goes away and comes back, the
//! agent is stopped or killed and started again, the spool's last record
//! is torn, its disk fills up, the endpoint answers with every fault it
//! has; in each case every datagram sent must reach the endpoint once it is
//! back, checked by payload, byte for byte.
//!
//! Needs root and an agent built with its XDP object; otherwise each test
//! prints `SKIPPED:` and returns. Traffic stays in the veth pair
//! (198.18.0.0/15, no default route); every sender is bounded; namespaces,
//! pins, spool directories and tmpfs mounts are removed on drop.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use fake_eventbridge::{Config as FakeConfig, blocking::FakeEventBridge};
use test_support::metrics::{Samples, metrics_addr, scrape_until};
use test_support::{Agent, Tmpfs, VethNs, exit_signal, pin_dir, privileged, wait_counter};

const PORT: u16 = 5514;
const SRC: u16 = 41514;
const BUS: &str = "durable-test";

/// The fake endpoint, on a runtime of its own (the tests are synchronous).
struct Endpoint {
    fake: FakeEventBridge,
}

impl Endpoint {
    fn start(config: FakeConfig) -> Endpoint {
        Endpoint {
            fake: FakeEventBridge::start(config).unwrap(),
        }
    }

    fn url(&self) -> String {
        self.fake.url()
    }

    /// The endpoint goes away: connections refused.
    fn down(&mut self) {
        self.fake.pause();
    }

    fn up(&mut self) {
        self.fake.resume().unwrap();
    }

    /// Payload → times accepted.
    fn accepted(&self) -> BTreeMap<Vec<u8>, u32> {
        self.fake
            .accepted()
            .into_iter()
            .map(|r| {
                let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
                let payload = STANDARD
                    .decode(detail["Payload"].as_str().expect("a Payload"))
                    .unwrap();
                (payload, r.accepted)
            })
            .collect()
    }

    /// Waits until every payload in `sent` has been accepted; panics with
    /// what is missing after `timeout`.
    fn wait_all(
        &self,
        sent: &[Vec<u8>],
        timeout: Duration,
        agent: &Agent,
    ) -> BTreeMap<Vec<u8>, u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted();
            let missing = sent.iter().filter(|p| !got.contains_key(*p)).count();
            if missing == 0 {
                return got;
            }
            if Instant::now() > deadline {
                // Where they stopped: the kernel's, the pipeline's and the
                // spool's counters, when the agent still serves them.
                let counters = if agent.stderr_text().contains("metrics: serving http://") {
                    test_support::metrics::scrape(metrics_addr(agent))
                        .text
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    String::new()
                };
                panic!(
                    "{missing} of {} datagrams never reached the endpoint ({:?}); agent metrics:\n{counters}\nagent stderr:\n{}",
                    sent.len(),
                    self.fake.stats(),
                    agent.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Static credentials and a Region for the agent; no metadata service.
fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTESTTEST"),
        ("AWS_SECRET_ACCESS_KEY", "test-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/udp-agent-test/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/udp-agent-test/credentials",
        ),
    ]
}

/// An agent on `ns` delivering to `url` through the spool at `spool`,
/// with the README's flags only.
fn agent(ns: &VethNs, pins: &Path, url: &str, spool: &Path, extra: &[&str]) -> Agent {
    let spool = spool.to_str().unwrap();
    let mut args = vec![
        "--port",
        "5514",
        "--event-bus",
        BUS,
        "--endpoint-url",
        url,
        "--spool-dir",
        spool,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Agent::run_with_env(&ns.host_if, pins, &args, &aws_env())
}

/// Resolves ARP before the datagrams under test: one datagram to a port
/// that is not enabled, seen by the program.
fn warm_up(ns: &VethNs, pins: &Path) {
    // Sent again every 200 ms (at most 25 times): the first can be lost
    // while the namespace resolves the host's address.
    for _ in 0..25 {
        ns.send_udp(false, SRC, 7, &[b"warm-up".to_vec()]);
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            if test_support::counter(pins, "port_disabled") > 0 {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    wait_counter(pins, "port_disabled", 1);
}

/// `n` distinct payloads, tagged so that runs never mix.
fn payloads(tag: &str, from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| format!("{tag} datagram {i:06} {}", "x".repeat(i % 40)).into_bytes())
        .collect()
}

/// Sends `payloads` at `per_second`, in bursts every 10 ms.
fn send_paced(ns: &VethNs, payloads: &[Vec<u8>], per_second: usize) {
    let burst = (per_second / 100).max(1);
    let start = Instant::now();
    for (k, chunk) in payloads.chunks(burst).enumerate() {
        ns.send_udp(false, SRC, PORT, chunk);
        let due = start + Duration::from_millis(10 * (k as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}

/// Waits until the agent's spool has written `n` entries (it holds them on
/// disk: from here on a kill cannot lose them).
fn wait_spooled(agent: &Agent, n: u64) -> Samples {
    scrape_until(
        metrics_addr(agent),
        Duration::from_secs(30),
        "entries spooled",
        |s| s.count("udp_agent_spool_written_entries_total") >= n,
    )
}

fn duplicates(got: &BTreeMap<Vec<u8>, u32>) -> u32 {
    got.values().map(|n| n - 1).sum()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_minute_long_outage_with_traffic_flowing_loses_nothing() {
    const TEST: &str = "durable-outage";
    if !privileged(TEST) {
        return;
    }
    let mut ep = Endpoint::start(FakeConfig::default());
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = agent(&ns, &pins, &ep.url(), spool.path(), &[]);
    warm_up(&ns, &pins);

    let before = payloads("outage", 0, 50);
    ns.send_udp(false, SRC, PORT, &before);
    ep.wait_all(&before, Duration::from_secs(30), &agent);

    // The endpoint goes away for a minute while 25 datagrams a second
    // arrive: 1,500 datagrams, more than the old retry budget covered.
    ep.down();
    let during = payloads("outage", 50, 1500);
    send_paced(&ns, &during, 25);
    let s = wait_spooled(&agent, 1550);
    assert!(
        s.count("udp_agent_spool_batches") > 0,
        "the outage's batches wait in the spool"
    );
    ep.up();
    let all: Vec<Vec<u8>> = before.iter().chain(&during).cloned().collect();
    let got = ep.wait_all(&all, Duration::from_secs(60), &agent);
    assert_eq!(got.len(), all.len(), "nothing else arrived");
    assert_eq!(
        duplicates(&got),
        0,
        "nothing was in flight when the endpoint went away"
    );

    let stopped = agent.terminate();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let eb = stopped.counters("sink counters:");
    assert_eq!(eb["delivered"], all.len() as u64, "{eb:?}");
    assert_eq!(eb["failed"], 0, "{eb:?}");
    assert!(eb["retried"] > 0, "{eb:?}");
    // Everything delivered: a clean stop leaves no segment behind.
    assert!(
        segments(spool.path()).is_empty(),
        "{:?}",
        segments(spool.path())
    );
}

/// Stopped (SIGTERM) or killed (SIGKILL) in the middle of an outage, then
/// started again on the same spool once the endpoint is back.
fn restart_during_outage(test: &str, signal: libc::c_int, n: usize) {
    if !privileged(test) {
        return;
    }
    let mut ep = Endpoint::start(FakeConfig::default());
    ep.down();
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let spool = tempfile::tempdir().unwrap();
    let mut first = agent(&ns, &pins, &ep.url(), spool.path(), &[]);
    warm_up(&ns, &pins);
    let sent = payloads(test, 0, n);
    send_paced(&ns, &sent, 200);
    wait_counter(&pins, "captured", n as u64);
    wait_spooled(&first, n as u64);
    let stopped = first.stop(signal);
    if signal == libc::SIGTERM {
        assert!(stopped.status.success(), "{}", stopped.stderr);
        let eb = stopped.counters("sink counters:");
        assert_eq!(eb["delivered"], 0, "{eb:?}");
        assert_eq!(eb["undelivered"], 0, "nothing is abandoned: {eb:?}");
        assert!(
            stopped
                .stderr
                .contains("stay in the spool for the next run"),
            "{}",
            stopped.stderr
        );
    } else {
        assert_eq!(exit_signal(&stopped.status), Some(signal));
    }
    drop(first);
    assert!(
        !segments(spool.path()).is_empty(),
        "the outage's batches are on disk"
    );

    ep.up();
    let second = agent(&ns, &pins, &ep.url(), spool.path(), &[]);
    let got = ep.wait_all(&sent, Duration::from_secs(60), &second);
    assert_eq!(got.len(), sent.len());
    // The endpoint was down the whole first run: nothing it sent arrived,
    // so even after SIGKILL nothing arrives twice.
    assert_eq!(duplicates(&got), 0, "duplicates: {}", duplicates(&got));
    let s = scrape_until(
        metrics_addr(&second),
        Duration::from_secs(10),
        "all acknowledged",
        |s| s.count("udp_agent_spool_batches") == 0,
    );
    assert!(
        s.count("udp_agent_spool_read_batches_total") > 0,
        "replayed from disk"
    );
    assert_eq!(s.count("udp_agent_spool_torn_records_total"), 0);
}

#[test]
fn sigterm_during_an_outage_keeps_everything_for_the_next_run() {
    restart_during_outage("durable-sigterm", libc::SIGTERM, 600);
}

#[test]
fn sigkill_during_an_outage_keeps_everything_for_the_next_run() {
    restart_during_outage("durable-sigkill", libc::SIGKILL, 300);
}

/// Killed while delivering to a slow endpoint: the next run sends again
/// what was in flight, and nothing else twice.
#[test]
fn sigkill_while_delivering_duplicates_at_most_what_was_in_flight() {
    const TEST: &str = "durable-inflight";
    if !privileged(TEST) {
        return;
    }
    let ep = Endpoint::start(FakeConfig {
        delay: Duration::from_millis(300),
        ..FakeConfig::default()
    });
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let spool = tempfile::tempdir().unwrap();
    let extra = ["--max-in-flight", "4"];
    let mut first = agent(&ns, &pins, &ep.url(), spool.path(), &extra);
    warm_up(&ns, &pins);
    let sent = payloads(TEST, 0, 400);
    send_paced(&ns, &sent, 400);
    wait_spooled(&first, 400);
    // Some delivered, some in flight.
    while ep.fake.stats().entries_accepted < 40 {
        thread::sleep(Duration::from_millis(20));
    }
    let stopped = first.stop(libc::SIGKILL);
    assert_eq!(exit_signal(&stopped.status), Some(libc::SIGKILL));
    drop(first);
    let second = agent(&ns, &pins, &ep.url(), spool.path(), &extra);
    let got = ep.wait_all(&sent, Duration::from_secs(60), &second);
    assert_eq!(got.len(), sent.len());
    // At most the batches that were in flight (4 requests of 10 entries)
    // arrive twice.
    let dup = duplicates(&got);
    println!("duplicates after SIGKILL: {dup}");
    assert!(dup <= 40, "{dup} duplicates");
}

#[test]
fn a_torn_last_record_is_counted_skipped_and_blocks_nothing() {
    const TEST: &str = "durable-torn";
    if !privileged(TEST) {
        return;
    }
    let mut ep = Endpoint::start(FakeConfig::default());
    ep.down();
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let spool = tempfile::tempdir().unwrap();
    let mut first = agent(&ns, &pins, &ep.url(), spool.path(), &[]);
    warm_up(&ns, &pins);
    let sent = payloads(TEST, 0, 200);
    send_paced(&ns, &sent, 200);
    wait_spooled(&first, 200);
    first.stop(libc::SIGKILL);
    drop(first);
    // A write cut short by the kill: a record header that promises more
    // than follows.
    let last = segments(spool.path()).pop().expect("a segment");
    let mut bytes = fs::read(&last).unwrap();
    let mut torn = b"UDPR".to_vec();
    torn.extend_from_slice(&4000u32.to_le_bytes());
    torn.extend_from_slice(&[0x5a; 40]);
    bytes.extend_from_slice(&torn);
    fs::write(&last, &bytes).unwrap();

    ep.up();
    let second = agent(&ns, &pins, &ep.url(), spool.path(), &[]);
    assert!(
        second
            .stderr_line(
                "skipping bytes that are not a whole record",
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        second.stderr_text()
    );
    let got = ep.wait_all(&sent, Duration::from_secs(60), &second);
    assert_eq!(got.len(), sent.len(), "nothing but the datagrams sent");
    let s = scrape_until(
        metrics_addr(&second),
        Duration::from_secs(10),
        "acknowledged",
        |s| s.count("udp_agent_spool_batches") == 0,
    );
    assert_eq!(s.count("udp_agent_spool_torn_records_total"), 1);
}

#[test]
fn a_full_disk_stops_intake_counted_and_resumes_when_space_returns() {
    const TEST: &str = "durable-full";
    if !privileged(TEST) {
        return;
    }
    let mut ep = Endpoint::start(FakeConfig::default());
    ep.down();
    let disk = Tmpfs::mount("512k");
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let spool = disk.path().join("spool");
    let agent = agent(&ns, &pins, &ep.url(), &spool, &[]);
    warm_up(&ns, &pins);
    let addr = metrics_addr(&agent);

    // Far more than 512 KiB of entries while the endpoint is away.
    let flood = payloads(TEST, 0, 4000);
    send_paced(&ns, &flood, 2000);
    wait_counter(&pins, "captured", 4000);
    let full = scrape_until(
        addr,
        Duration::from_secs(30),
        "all 4000 accounted for",
        |s| {
            s.count("udp_agent_spool_written_entries_total")
                + s.count(r#"udp_agent_spool_dropped_entries_total{reason="write_error"}"#)
                == 4000
        },
    );
    let dropped = full.count(r#"udp_agent_spool_dropped_entries_total{reason="write_error"}"#);
    let written = full.count("udp_agent_spool_written_entries_total");
    assert!(
        dropped > 0 && written > 0,
        "written {written}, dropped {dropped}"
    );
    assert_eq!(full.count("udp_agent_spool_write_failing"), 1);

    // The endpoint comes back: what was written is delivered, its space
    // freed, and new datagrams are taken in again.
    ep.up();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ep.fake.stats().entries_accepted < written {
        assert!(Instant::now() < deadline, "{:?}", ep.fake.stats());
        thread::sleep(Duration::from_millis(100));
    }
    // Delivered and acknowledged: the spool has its space back.
    scrape_until(
        addr,
        Duration::from_secs(30),
        "every batch acknowledged",
        |s| {
            s.count("udp_agent_spool_acked_batches_total")
                == s.count("udp_agent_spool_written_batches_total")
        },
    );
    let after = payloads(TEST, 4000, 200);
    ns.send_udp(false, SRC, PORT, &after);
    let got = ep.wait_all(&after, Duration::from_secs(30), &agent);
    let flood_got = flood.iter().filter(|p| got.contains_key(*p)).count() as u64;
    assert_eq!(flood_got, written, "every entry written was delivered");
    assert_eq!(flood_got + dropped, 4000, "and every other one counted");
    assert_eq!(duplicates(&got), 0);
    let s = scrape_until(addr, Duration::from_secs(10), "writing again", |s| {
        s.count("udp_agent_spool_write_failing") == 0
    });
    assert_eq!(s.count("udp_agent_spool_torn_records_total"), 0);
    drop(agent);
    // The spool was never corrupted: a new run finds nothing damaged.
    let check = VethNs::new("durable-full2");
    let pins2 = pin_dir("durable-full2");
    let again = self::agent(&check, &pins2, &ep.url(), &spool, &[]);
    let s = test_support::metrics::scrape(metrics_addr(&again));
    assert_eq!(s.count("udp_agent_spool_torn_records_total"), 0);
}

#[test]
fn throttles_failed_entries_500s_slow_answers_and_dropped_connections_lose_nothing() {
    const TEST: &str = "durable-faults";
    if !privileged(TEST) {
        return;
    }
    let ep = Endpoint::start(FakeConfig {
        seed: 3,
        throttle_every: 5,
        retryable_fraction: 1.0 / 7.0,
        retryable_attempts: 2,
        internal_error_every: 11,
        drop_every: 13,
        delay: Duration::from_millis(20),
        ..FakeConfig::default()
    });
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = agent(&ns, &pins, &ep.url(), spool.path(), &[]);
    warm_up(&ns, &pins);
    let sent = payloads(TEST, 0, 3000);
    send_paced(&ns, &sent, 1000);
    let got = ep.wait_all(&sent, Duration::from_secs(90), &agent);
    assert_eq!(got.len(), sent.len());
    assert_eq!(
        duplicates(&got),
        0,
        "a dropped connection here never reached the entries"
    );
    let stats = ep.fake.stats();
    assert!(
        stats.throttled > 0
            && stats.internal_errors > 0
            && stats.dropped > 0
            && stats.entries_rejected > 0,
        "every fault happened: {stats:?}"
    );
    let stopped = agent.terminate();
    let eb = stopped.counters("sink counters:");
    assert_eq!(eb["failed"], 0, "{eb:?}");
    assert_eq!(eb["delivered"], 3000, "{eb:?}");
}

/// A stdout that nobody reads (a pipe whose reader never reads) blocks the
/// stdout sink's writes; SIGTERM must still end the agent within the drain
/// timeout, count what was not written, and remove the pins.
#[test]
fn sigterm_with_a_stdout_nobody_reads_respects_the_drain_timeout() {
    use std::{
        io::Read,
        os::fd::{FromRawFd, OwnedFd},
        process::Stdio,
    };
    const TEST: &str = "durable-blocked-stdout";
    if !privileged(TEST) {
        return;
    }
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new fds into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds are new and owned here from now on.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child = test_support::agent_command()
        .args([
            "run",
            "--iface",
            &ns.host_if,
            "--port",
            "5514",
            "--drain-timeout",
            "2s",
        ])
        .arg("--pin-dir")
        .arg(&pins)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // However the test ends: the agent killed, its pins removed.
    let mut guard = Killed {
        child,
        pins: pins.clone(),
    };
    let child = &mut guard.child;
    let mut stderr = child.stderr.take().unwrap();
    let log = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pins.join("PORTS").exists() {
        assert!(Instant::now() < deadline, "the agent did not start");
        thread::sleep(Duration::from_millis(50));
    }
    warm_up(&ns, &pins);
    // Far more than a pipe holds (64 KiB): the writer blocks.
    let sent = payloads(TEST, 0, 3000);
    send_paced(&ns, &sent, 3000);
    wait_counter(&pins, "captured", 3000);
    thread::sleep(Duration::from_millis(500));
    // SAFETY: our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the agent was still running 15 s after SIGTERM");
        }
        thread::sleep(Duration::from_millis(50));
    };
    drop(reader);
    let stderr = log.join().unwrap();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(stderr.contains("nobody reads stdout"), "{stderr}");
    assert!(!pins.exists(), "the pins were removed");
    // What was captured is accounted for: written, or counted undelivered.
    let pipeline = test_support::counters_line(&stderr, "pipeline counters:").unwrap();
    let sink = test_support::counters_line(&stderr, "sink counters:").unwrap();
    assert!(sink["undelivered"] > 0, "{sink:?}");
    assert_eq!(
        pipeline["decoded"],
        pipeline["queue_drops"] + pipeline["emitted"] + pipeline["sink_failed"],
        "{pipeline:?}"
    );
}

/// A child agent killed, and its pin directory and lock file removed, when
/// dropped.
struct Killed {
    child: std::process::Child,
    pins: PathBuf,
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        test_support::agent::remove_pins(&self.pins);
    }
}
