//! The Prometheus endpoint, the health check and the logs, as an operator
//! and a load balancer see them: an agent attached to a veth pair
//! (`test_support::VethNs`: a namespace joined by a veth pair, addresses
//! from 198.18.0.0/15, no default route; a test may delete the link and
//! create it again), bounded senders, and `/metrics` and `/healthz` fetched
//! with a plain HTTP GET. The EventBridge sink talks to the fake PutEvents endpoint on
//! loopback, stopped and started again to play an outage.
//!
//! Needs root and an agent built with its XDP object; otherwise each test
//! prints `SKIPPED:` and returns. The EventBridge series are checked without
//! privileges: a real sink against the fake PutEvents endpoint on loopback,
//! rendered through the same collector.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::Path,
    time::Duration,
};

use serde_json::{Value, json};
use test_support::metrics::{Samples, http_get, metrics_addr, scrape_until};
use test_support::{Agent, TIMEOUT, VethNs, agent_command, pin_dir, privileged};

/// The port the datagrams under test go to; warm-ups go to `WARM_PORT`, so
/// that the per-port series of `PORT` counts exactly what a test sent.
const PORT: u16 = 5150;
const WARM_PORT: u16 = 5151;
const WARM_SRC: u16 = 40150;
const SRC: u16 = 41150;

fn ports_args() -> Vec<String> {
    vec![
        "--port".into(),
        PORT.to_string(),
        "--port".into(),
        WARM_PORT.to_string(),
    ]
}

fn captured(s: &Samples) -> u64 {
    s.count(r#"udp_agent_kernel_packets_total{outcome="captured"}"#)
}

fn emitted(s: &Samples) -> u64 {
    s.count("udp_agent_pipeline_emitted_total")
}

#[test]
fn metrics_count_exactly_what_was_sent() {
    let test = "metrics-exact";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let mut args = ports_args();
    args.extend(["--metrics-addr".into(), "127.0.0.1:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::run(&ns.host_if, &pins, &args);
    let addr = metrics_addr(&agent);
    let attached = agent
        .stderr_line("attached", Duration::from_secs(1))
        .expect("an `attached` log line");
    let mode = if attached.contains("mode=driver") {
        "driver"
    } else {
        "skb"
    };

    ns.warm_up(&agent, false, WARM_SRC, WARM_PORT);
    // Settled: everything captured so far has been written out.
    let before = scrape_until(addr, TIMEOUT, "emitted == captured", |s| {
        captured(s) > 0 && emitted(s) == captured(s)
    });

    const N: usize = 200;
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("datagram {i}").into_bytes())
        .collect();
    ns.send_udp(false, SRC, PORT, &payloads);
    agent.wait_from(SRC, N);
    let after = scrape_until(addr, TIMEOUT, "all N emitted", |s| {
        emitted(s) == captured(s) && captured(s) >= captured(&before) + N as u64
    });

    assert_eq!(
        captured(&after) - captured(&before),
        N as u64,
        "kernel `captured` grew by the datagrams sent, exactly"
    );
    let port_series =
        format!(r#"udp_agent_port_packets_total{{port="{PORT}",outcome="captured"}}"#);
    assert_eq!(after.count(&port_series), N as u64, "{port_series}");
    assert_eq!(
        after.count(&format!(
            r#"udp_agent_port_packets_total{{port="{PORT}",outcome="limited"}}"#
        )),
        0
    );
    assert!(after.has(&format!(
        r#"udp_agent_port_packets_total{{port="{WARM_PORT}",outcome="captured"}}"#
    )));
    // Every captured packet went through the pipeline.
    assert_eq!(
        after.count("udp_agent_pipeline_decoded_total"),
        captured(&after)
    );
    assert_eq!(after.count("udp_agent_pipeline_queue_drops_total"), 0);
    // Every one has a latency, and it is plausible (well under the timeout).
    let count = after.count("udp_agent_delivery_latency_seconds_count");
    assert_eq!(count, emitted(&after), "one latency per entry written");
    let sum = after.get("udp_agent_delivery_latency_seconds_sum");
    assert!(
        sum / (count as f64) < 5.0,
        "mean latency {} s",
        sum / count as f64
    );
    assert_eq!(
        after.get(&format!(
            r#"udp_agent_xdp_attached{{iface="{}",mode="{mode}"}}"#,
            ns.host_if
        )),
        1.0,
        "the attach mode of the log line ({attached})"
    );
    // The stdout sink: no EventBridge series.
    assert!(after.matching("udp_agent_eventbridge_").is_empty());

    // Only /metrics and /healthz are served.
    for path in ["/nope", "/", "/metrics/x"] {
        let (status, body) = http_get(addr, path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    assert!(
        !agent.stderr_text().contains("not a loopback address"),
        "a warning about 127.0.0.1:\n{}",
        agent.stderr_text()
    );

    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    // The shutdown line agrees with the last scrape.
    let kernel = stopped.counters("kernel counters:");
    assert_eq!(kernel["captured"], captured(&after));
}

#[test]
fn openmetrics_when_asked_for_it() {
    let test = "metrics-openmetrics";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let agent = Agent::run(
        &ns.host_if,
        &pins,
        &["--port", &PORT.to_string(), "--metrics-addr", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&agent);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// Sockets of `pid` that listen for TCP connections (from /proc: its
/// socket inodes, matched against the LISTEN entries of /proc/net/tcp{,6}).
fn listening_sockets(pid: i32) -> Vec<String> {
    let mut inodes = Vec::new();
    if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let t = target.to_string_lossy().into_owned();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.push(inode.to_owned());
                }
            }
        }
    }
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                listening.push(format!("{table} {}", cols[1]));
            }
        }
    }
    listening
}

#[test]
fn the_endpoint_is_off_by_default() {
    let test = "metrics-off";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let agent = Agent::run(&ns.host_if, &pins, &["--port", &PORT.to_string()]);
    ns.warm_up(&agent, false, WARM_SRC, PORT);
    let listening = listening_sockets(agent.pid());
    assert!(
        listening.is_empty(),
        "an agent without --metrics-addr listens on {listening:?}"
    );
    assert!(
        !agent.stderr_text().contains("metrics: serving"),
        "{}",
        agent.stderr_text()
    );
    // And with it, exactly one listener: the endpoint.
    let pins2 = pin_dir(test);
    let ns2 = VethNs::new(test);
    let with = Agent::run(
        &ns2.host_if,
        &pins2,
        &["--port", &PORT.to_string(), "--metrics-addr", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&with);
    let listening = listening_sockets(with.pid());
    assert_eq!(listening.len(), 1, "{listening:?}");
    let port_hex = format!(":{:04X}", addr.port());
    assert!(listening[0].ends_with(&port_hex), "{listening:?} vs {addr}");
}

#[test]
fn a_taken_metrics_port_stops_the_start() {
    let test = "metrics-taken";
    if !privileged(test) {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let pins = pin_dir(test);
    let out = agent_command()
        .args(["run", "--iface", "lo", "--port", "9"])
        .args(["--metrics-addr", &addr.to_string()])
        .arg("--pin-dir")
        .arg(&pins)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a taken port: {err}");
    assert!(
        err.contains(&format!("--metrics-addr {addr}")) && err.contains("in use"),
        "{err}"
    );
    assert!(!Path::new(&pins).exists(), "left {}", pins.display());
}

#[test]
fn metrics_on_a_non_loopback_address_warn_and_serve_only_metrics_and_healthz() {
    let test = "metrics-exposed";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    // The veth's own address: reachable from outside this host, unlike
    // loopback.
    let exposed = SocketAddr::new(ns.host_addr(false), 0).to_string();
    let agent = Agent::run(
        &ns.host_if,
        &pins,
        &["--port", &PORT.to_string(), "--metrics-addr", &exposed],
    );
    let addr = metrics_addr(&agent);
    assert_eq!(addr.ip(), ns.host_addr(false));
    let warning = agent
        .stderr_line("not a loopback address", TIMEOUT)
        .unwrap_or_else(|| panic!("no warning:\n{}", agent.stderr_text()));
    assert!(
        warning.contains("WARN") && warning.contains("--health-addr"),
        "{warning}"
    );
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("udp_agent_kernel_packets_total"), "{body}");
    let (status, body) = healthz(addr);
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    for path in ["/", "/index.html", "/metrics/", "/healthz/x", "/debug"] {
        let (status, body) = http_get(addr, path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
}

// ---------------------------------------------------------------------------
// The health check
// ---------------------------------------------------------------------------

/// The address in the agent's "health: serving http://ADDR/healthz" line.
fn health_addr(agent: &Agent) -> SocketAddr {
    let needle = "health: serving http://";
    let line = agent
        .stderr_line(needle, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no `{needle}` log line:\n{}", agent.stderr_text()));
    let rest = &line[line.find(needle).unwrap() + needle.len()..];
    rest[..rest.find("/healthz").expect("…/healthz in the line")]
        .parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"))
}

/// `GET /healthz`: the status and the JSON body.
fn healthz(addr: SocketAddr) -> (u16, Value) {
    let (status, body) = http_get(addr, "/healthz");
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/healthz answered {status} with non-JSON ({e}): {body}"));
    (status, v)
}

/// Polls `/healthz` every 100 ms, calling `between` before each poll, until
/// `done` holds; panics after `timeout` with the last answer.
fn healthz_until(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    mut between: impl FnMut(),
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        between();
        let (status, v) = healthz(addr);
        if done(status, &v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last /healthz: {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reasons(v: &Value) -> Vec<String> {
    v["reasons"]
        .as_array()
        .map(|a| a.iter().map(|r| r["reason"].to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn healthz_is_503_while_the_interface_is_gone() {
    let test = "health-detached";
    if !privileged(test) {
        return;
    }
    let pair = VethNs::new(test);
    let pins = pin_dir(test);
    let agent = Agent::run(
        &pair.host_if,
        &pins,
        &["--port", &PORT.to_string(), "--health-addr", "127.0.0.1:0"],
    );
    let addr = health_addr(&agent);
    pair.warm_up(&agent, false, WARM_SRC, PORT);
    let (status, v) = healthz(addr);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    assert!(v.get("reasons").is_none(), "{v}");
    // The health listener serves nothing else, the metrics least of all.
    for path in ["/metrics", "/"] {
        let (status, body) = http_get(addr, path);
        assert_eq!(status, 404, "GET {path} on --health-addr: {body}");
    }

    pair.delete_link();
    let v = healthz_until(
        addr,
        TIMEOUT,
        "503 detached",
        || {},
        |status, _| status == 503,
    );
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert_eq!(
        v["reasons"],
        json!([{"reason": "detached", "iface": pair.host_if}]),
        "{v}"
    );

    pair.create_link();
    healthz_until(
        addr,
        TIMEOUT,
        "200 once attached again",
        || {},
        |status, _| status == 200,
    );
}

#[test]
fn healthz_is_503_while_the_sink_endpoint_is_down() {
    let test = "health-sink";
    if !privileged(test) {
        return;
    }
    use fake_eventbridge::{Config as FakeConfig, blocking::FakeEventBridge};
    let start = |listen: SocketAddr| {
        FakeEventBridge::start(FakeConfig {
            listen,
            ..FakeConfig::default()
        })
        .unwrap_or_else(|e| panic!("starting the fake endpoint on {listen}: {e}"))
    };
    let fake = start("127.0.0.1:0".parse().unwrap());
    let endpoint = fake.addr();
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let url = fake.url();
    const GRACE_S: u64 = 2;
    let grace = format!("{GRACE_S}s");
    let agent = Agent::run_with_env(
        &ns.host_if,
        &pins,
        &[
            "--port",
            &PORT.to_string(),
            "--event-bus",
            "health-bus",
            "--endpoint-url",
            &url,
            "--batch-linger-ms",
            "5",
            "--health-addr",
            "127.0.0.1:0",
            "--health-sink-grace",
            &grace,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDHEALTHTEST"),
            ("AWS_SECRET_ACCESS_KEY", "health-test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/udp-agent-test/config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/udp-agent-test/credentials",
            ),
        ],
    );
    let addr = health_addr(&agent);
    // One datagram at a time (at most one every 100 ms, at most 600 in
    // all) while waiting for something.
    let mut sent = 0u32;
    let mut send = || {
        assert!(
            sent < 600,
            "sent 600 datagrams; stderr:\n{}",
            agent.stderr_text()
        );
        ns.send_udp(false, SRC, PORT, &[format!("health {sent}").into_bytes()]);
        sent += 1;
    };

    // Delivering: the endpoint accepts.
    healthz_until(
        addr,
        TIMEOUT,
        "an accepted entry",
        &mut send,
        |status, v| status == 200 && v["sink"] == "delivering",
    );
    assert!(fake.stats().entries_accepted > 0);

    // The endpoint goes away while datagrams keep coming: failing at once,
    // 503 once the grace is over.
    drop(fake);
    let v = healthz_until(
        addr,
        Duration::from_secs(30),
        "503 sink_failing",
        &mut send,
        |status, _| status == 503,
    );
    assert_eq!(v["sink"], "failing", "{v}");
    let [reason] = v["reasons"].as_array().expect("reasons").as_slice() else {
        panic!("one reason: {v}")
    };
    assert_eq!(reason["reason"], "sink_failing", "{v}");
    assert!(
        reason["seconds"].as_u64().is_some_and(|s| s >= GRACE_S),
        "failing for at least the grace: {v}"
    );

    // Back: delivering again.
    let fake = start(endpoint);
    healthz_until(
        addr,
        Duration::from_secs(30),
        "200 after the endpoint came back",
        &mut send,
        |status, _| status == 200,
    );
    assert!(fake.stats().entries_accepted > 0);
    assert_eq!(reasons(&healthz(addr).1), Vec::<String>::new());
}

#[test]
fn logs_are_json_lines_and_never_one_per_packet() {
    let test = "logs-json";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    // Debug level for the agent's own modules: still nothing per packet.
    let mut agent = Agent::run(
        &ns.host_if,
        &pins,
        &[
            "--port",
            &PORT.to_string(),
            "--log-format",
            "json",
            "--log-level",
            "udp_agent=trace,info",
        ],
    );
    ns.warm_up(&agent, false, WARM_SRC, PORT);
    let lines_before = agent.stderr_text().lines().count();
    const N: usize = 300;
    let payloads: Vec<Vec<u8>> = (0..N).map(|i| i.to_string().into_bytes()).collect();
    ns.send_udp(false, SRC, PORT, &payloads);
    agent.wait_from(SRC, N);
    let lines_after = agent.stderr_text().lines().count();
    assert!(
        lines_after - lines_before < 5,
        "{} log lines for {N} datagrams:\n{}",
        lines_after - lines_before,
        agent.stderr_text()
    );
    let stopped = agent.terminate();
    for line in stopped.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "no `{key}` in {line}");
        }
    }
    let capturing = stopped
        .stderr
        .lines()
        .find(|l| l.contains("\"capturing\""))
        .expect("a capturing line");
    let v: serde_json::Value = serde_json::from_str(capturing).unwrap();
    // Fields are top-level keys, so log pipelines can filter on them.
    assert_eq!(v["ports"], PORT.to_string(), "{capturing}");
    assert_eq!(v["level"], "INFO");
}

// ---------------------------------------------------------------------------
// The EventBridge sink's series, from a real sink (unprivileged)
// ---------------------------------------------------------------------------

/// Kernel counters are not what this test is about.
#[derive(Debug)]
struct NoKernel;

impl udp_agent::metrics::KernelSource for NoKernel {
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, udp_agent::control::ControlError> {
        Ok(vec![("captured", 0)])
    }

    fn busiest_ports(
        &self,
        _n: usize,
    ) -> Result<Vec<udp_agent::control::PortStats>, udp_agent::control::ControlError> {
        Ok(vec![])
    }
}

/// Runs `n` packets through encode ▸ batch ▸ the EventBridge sink against
/// the fake endpoint (`permanent_fraction` of the entries refused for
/// good), and renders the metrics afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_series_follow_the_sink() {
    use std::sync::{Arc, atomic::Ordering::Relaxed};

    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use aws_sdk_eventbridge::config::{Credentials, SharedCredentialsProvider};
    use fake_eventbridge::{Config as FakeConfig, FakeEventBridge};
    use tokio::sync::{mpsc, watch};
    use udp_agent::{
        clock::{WallClock, monotonic_ns},
        encode::Encoder,
        hotplug::InterfaceStatus,
        metrics::{AgentCollector, registry, render},
        pipeline::{encode_and_batch, in_memory},
        record::Packet,
        sink::{
            Sink,
            eventbridge::{self, EventBridgeSink, LIMITS, Settings},
        },
        stats::PipelineStats,
    };

    let fake = FakeEventBridge::start(FakeConfig {
        seed: 7,
        permanent_fraction: 0.25,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDTESTTESTTESTTEST",
            "test-secret",
            None,
            None,
            "metrics-test",
        )))
        .build();
    let settings = Settings {
        endpoint_url: Some(fake.url()),
        max_requests_per_second: 0,
        max_events_per_hour: 1000,
        request_timeout: Duration::from_secs(5),
        ..Settings::default()
    };
    let pipeline = Arc::new(PipelineStats::default());
    let client = settings.client(&sdk);
    let sink = EventBridgeSink::new(settings, client, pipeline.clone()).unwrap();
    let eb = sink.counters();
    let collector = AgentCollector {
        kernel: Arc::new(NoKernel),
        pipeline: pipeline.clone(),
        sink: Some(sink.stats()),
        spool: None,
        interfaces: Arc::new(InterfaceStatus::default()),
    };
    let reg = registry(collector);

    const N: usize = 40;
    let (packet_tx, packet_rx) = mpsc::channel::<Packet>(N);
    let (batch_tx, batch_rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let encoder = Encoder::new("udp.raw", "UdpPacket", "metrics-bus", WallClock::now());
    let encode = tokio::spawn(encode_and_batch(
        packet_rx,
        batch_tx,
        encoder,
        LIMITS,
        Duration::from_millis(5),
        pipeline.clone(),
    ));
    let run = tokio::spawn(eventbridge::run(sink, in_memory(batch_rx), stop_rx));
    for i in 0..N {
        let payload = format!("metrics {i}").into_bytes();
        packet_tx
            .send(Packet {
                timestamp_ns: monotonic_ns(),
                ifindex: 1,
                src: "198.18.0.2".parse().unwrap(),
                dst: "198.18.0.1".parse().unwrap(),
                src_port: 40000,
                dst_port: 514,
                wire_len: payload.len() as u32,
                payload,
                encoding: Default::default(),
            })
            .await
            .unwrap();
    }
    drop(packet_tx);
    tokio::time::timeout(Duration::from_secs(60), async {
        encode.await.unwrap();
        run.await.unwrap();
    })
    .await
    .expect("the sink finished");

    let s = Samples::parse(&render(&reg, false));
    let delivered = eb.delivered.load(Relaxed);
    let failed = eb.failed.load(Relaxed);
    assert_eq!(delivered + failed, N as u64, "{}", eb.summary());
    assert!(failed > 0 && delivered > 0, "{}", eb.summary());
    assert_eq!(s.count("udp_agent_eventbridge_received_total"), N as u64);
    assert_eq!(s.count("udp_agent_eventbridge_delivered_total"), delivered);
    assert_eq!(
        s.count("udp_agent_eventbridge_requests_total"),
        eb.requests.load(Relaxed)
    );
    let by_code: u64 = s
        .matching("udp_agent_eventbridge_failed_total{code=")
        .iter()
        .map(|(_, v)| *v as u64)
        .sum();
    assert_eq!(by_code, failed, "{}", s.text);
    assert_eq!(s.count("udp_agent_eventbridge_in_flight_requests"), 0);
    // Every entry the sink took in was charged once, failed ones included.
    assert_eq!(
        s.count("udp_agent_eventbridge_cost_guard_used_events"),
        N as u64
    );
    assert_eq!(
        s.count("udp_agent_eventbridge_cost_guard_limit_events"),
        1000
    );
    // One latency per accepted entry, none for refused ones.
    assert_eq!(
        s.count("udp_agent_delivery_latency_seconds_count"),
        delivered
    );
    assert_eq!(s.count("udp_agent_pipeline_emitted_total"), delivered);
}
