//! Ring 3 against a real EventBridge-compatible endpoint: moto's server.
//!
//! The article's rule, `{"source": ["udp.raw"], "detail": {"Destination":
//! {"Port": [514]}}}`, and a numeric-range rule (ports 6000 ≤ p < 6010) sit
//! on an event bus of their own, each with an SQS queue as its target.
//! Datagrams are sent from a network namespace over a veth pair to the
//! root-side end, where the agent captures them with XDP and sends them to
//! moto with PutEvents; moto matches the rules and delivers each event into
//! its queue, as EventBridge does. The test reads the queues back and checks
//! every message: the envelope, every `detail` field, and the payload byte
//! for byte. Datagrams to an enabled port that neither rule matches are
//! delivered to the bus but must reach no queue.
//!
//! moto listens on 127.0.0.1 only; the agent gets static dummy credentials
//! and `AWS_EC2_METADATA_DISABLED`, so the SDK never looks for the instance
//! metadata service. The traffic stays inside the veth pair (198.18.0.0/15,
//! fd00::/8, no default route). moto, the namespace and the agent are removed
//! when the test ends, also when it fails.
//!
//! Needs the Python venv of `xtask/requirements.txt` (`cargo xtask test`
//! passes its interpreter in `UDP_AGENT_TEST_PYTHON`), root, and an agent
//! built with its XDP object; without any of them the test prints
//! `SKIPPED:` and returns. The EventBridge/SQS calls of the test itself are
//! made by `tests/moto_client.py` with boto3.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use test_support::{
    Agent, Event, Expected, VethNs, assert_event, ctl_ok, pattern, payload_of, pin_dir, privileged,
    wait_counter,
};

/// The venv interpreter with moto and boto3 (set by `cargo xtask test`).
const PYTHON_ENV: &str = "UDP_AGENT_TEST_PYTHON";

/// The boto3 side of the test.
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto_client.py");

/// The event bus the rules live on and the agent sends to.
const BUS: &str = "udp-test";

/// Rule (and queue) names.
const RULE_514: &str = "udp-syslog-514";
const RULE_RANGE: &str = "udp-game-6000-6009";

/// Dummy credentials and Region, for the agent and for boto3.
const REGION: &str = "us-east-1";
const KEY_ID: &str = "testing";
const SECRET: &str = "testing";

/// The agent's AWS environment: dummy credentials and Region, no instance
/// metadata, no profile files.
const AGENT_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", SECRET),
    ("AWS_REGION", REGION),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/udp-agent-test/config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/udp-agent-test/credentials",
    ),
];

/// How long moto may take to start answering HTTP.
const MOTO_START: Duration = Duration::from_secs(30);

/// How long the expected messages may take to show up in SQS.
const SQS_TIMEOUT_S: u64 = 30;

/// The longest any single run of the Python helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// Source port of the warm-up datagrams (sent to a port that is not enabled).
const WARM_SPORT: u16 = 40000;
const WARM_DPORT: u16 = 7;

// ---------------------------------------------------------------------------
// moto's server
// ---------------------------------------------------------------------------

/// A port on 127.0.0.1 that was free a moment ago.
fn free_local_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Removes environment a test's Python processes must not see: proxies
/// (127.0.0.1 is reached directly) and the caller's AWS profile and files.
fn hermetic_python(cmd: &mut Command) {
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "PYTHONPATH",
        "PYTHONHOME",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/udp-agent-test/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/udp-agent-test/credentials",
        )
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
}

/// `python -m moto.server` on 127.0.0.1, killed (and its log removed) on
/// drop.
struct Moto {
    child: Child,
    python: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts the server and waits until it answers HTTP.
    fn start(python: &Path) -> Moto {
        let port = free_local_port();
        let log =
            std::env::temp_dir().join(format!("udp-agent-moto-{}.log", test_support::unique_id()));
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("dup of the moto log");
        let mut cmd = Command::new(python);
        hermetic_python(&mut cmd);
        let child = cmd
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} -m moto.server: {e}", python.display()));
        let mut moto = Moto {
            child,
            python: python.to_path_buf(),
            port,
            log,
        };
        moto.wait_ready();
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines moto logged (for failure messages).
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Whether an HTTP request to the server gets an HTTP response.
    fn answers_http(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 5];
        s.read_exact(&mut head).is_ok() && &head == b"HTTP/"
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + MOTO_START;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "moto's server exited before answering ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if self.answers_http() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "moto's server did not answer HTTP on {} within {MOTO_START:?}; its log:\n{}",
                    self.url(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `moto_client.py <url> <args…>` (bounded by [`HELPER_TIMEOUT`])
    /// and returns the JSON it prints; panics with its stderr and moto's
    /// log if it fails.
    fn client(&self, args: &[&str]) -> Value {
        let mut cmd = Command::new(&self.python);
        hermetic_python(&mut cmd);
        cmd.arg(CLIENT)
            .arg(self.url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("moto_client.py {}", args.first().copied().unwrap_or(""));
        let out = run_bounded(cmd, HELPER_TIMEOUT, &what);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            panic!(
                "{what} failed ({}):\nstdout: {stdout}\nstderr: {}\nmoto's log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what} printed {stdout:?}, not JSON: {e}"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// Runs `cmd` to completion, killing it (SIGKILL) if it takes longer than
/// `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: our own child, not reaped yet (its waiter has not
            // returned), so the pid is still its own.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("{what} did not finish within {timeout:?} (killed)");
        }
    };
    let _ = waiter.join();
    result.unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

// ---------------------------------------------------------------------------
// What is sent and what must arrive
// ---------------------------------------------------------------------------

/// One datagram: from the namespace's address and `sport` (unique per
/// datagram, so each message identifies its datagram) to `dport`.
struct Datagram {
    v6: bool,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
}

impl Datagram {
    fn new(v6: bool, sport: u16, dport: u16, payload: Vec<u8>) -> Self {
        Self {
            v6,
            sport,
            dport,
            payload,
        }
    }

    /// The rule (queue) that must receive it, if any: the article's rule
    /// takes port 514, the range rule 6000 ≤ port < 6010.
    fn rule(&self) -> Option<&'static str> {
        match self.dport {
            514 => Some(RULE_514),
            6000..6010 => Some(RULE_RANGE),
            _ => None,
        }
    }
}

/// Every datagram of the test; all go to enabled ports (514, 515,
/// 6000-6010), so all are captured and delivered to the bus.
fn datagrams() -> Vec<Datagram> {
    let syslog = b"<13>Nov 27 23:42:18 web01 app: disk full on /var\n".to_vec();
    vec![
        // The article's rule: port 514, both IP versions, empty and
        // 1400-byte payloads among them.
        Datagram::new(false, 42001, 514, syslog),
        Datagram::new(false, 42002, 514, pattern(1400, 42002)),
        Datagram::new(false, 42003, 514, Vec::new()),
        Datagram::new(true, 42004, 514, pattern(1400, 42004)),
        Datagram::new(true, 42005, 514, Vec::new()),
        // The numeric range, its lower bound and the last port inside it.
        Datagram::new(false, 42011, 6000, pattern(200, 42011)),
        Datagram::new(true, 42012, 6005, pattern(333, 42012)),
        Datagram::new(false, 42013, 6009, (0..=255).collect()),
        // Enabled ports no rule matches: 515, and 6010 (captured by the
        // agent's 6000-6010, outside the rule's `< 6010`).
        Datagram::new(false, 42021, 515, pattern(100, 42021)),
        Datagram::new(false, 42022, 515, Vec::new()),
        Datagram::new(true, 42023, 515, pattern(1400, 42023)),
        Datagram::new(false, 42024, 6010, pattern(64, 42024)),
    ]
}

/// The rules, as `moto_client.py setup` takes them: rule name → pattern.
fn rules() -> Value {
    json!({
        // The article's rule, unchanged.
        RULE_514: {"source": ["udp.raw"], "detail": {"Destination": {"Port": [514]}}},
        // Matches only if Destination.Port is a JSON number.
        RULE_RANGE: {
            "source": ["udp.raw"],
            "detail": {"Destination": {"Port": [{"numeric": [">=", 6000, "<", 6010]}]}}
        },
    })
}

/// One queue as `moto_client.py receive` reports it.
struct QueueRead {
    bodies: Vec<String>,
    visible: u64,
    in_flight: u64,
}

/// Receives from the queues of `want` (URL → expected count), waiting up to
/// `timeout_s` for the counts to be reached.
fn receive(moto: &Moto, timeout_s: u64, want: &[(&str, usize)]) -> BTreeMap<String, QueueRead> {
    let mut args = vec![timeout_s.to_string()];
    args.extend(want.iter().map(|(url, n)| format!("{url}={n}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = moto.client(&[&["receive"], &args[..]].concat());
    let Value::Object(map) = v else {
        panic!("receive printed {v}, not an object");
    };
    map.into_iter()
        .map(|(url, q)| {
            let bodies = q["bodies"]
                .as_array()
                .unwrap_or_else(|| panic!("no bodies for {url}: {q}"))
                .iter()
                .map(|b| b.as_str().expect("a body is a string").to_string())
                .collect();
            let n = |k: &str| {
                q[k].as_u64()
                    .unwrap_or_else(|| panic!("no {k} for {url}: {q}"))
            };
            let read = QueueRead {
                bodies,
                visible: n("visible"),
                in_flight: n("in_flight"),
            };
            (url, read)
        })
        .collect()
}

/// Checks one SQS message body (the event EventBridge delivers: lowercase
/// envelope keys, `detail` a JSON object) against the datagrams sent, and
/// returns the source port of the datagram it carries.
fn check_message(body: &str, ns: &VethNs, sent: &[Datagram], rule: &str) -> u16 {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("SQS body of rule {rule} is not JSON ({e}): {body}"));
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("`{k}` is not a string in {body}"))
            .to_string()
    };
    assert_eq!(s("source"), "udp.raw", "source of {body}");
    assert_eq!(s("detail-type"), "UdpPacket", "detail-type of {body}");
    assert_eq!(s("region"), REGION, "region of {body}");
    assert!(!s("id").is_empty(), "empty id in {body}");
    let detail = &v["detail"];
    assert!(
        detail.is_object(),
        "`detail` is not a JSON object in {body}"
    );
    let port = &detail["Destination"]["Port"];
    assert!(
        port.is_u64(),
        "detail.Destination.Port is {port}, not a JSON number, in {body}"
    );
    // The event's time: the capture time (moto keeps whole seconds).
    let time = s("time");
    let t = humantime::parse_rfc3339_weak(&time)
        .unwrap_or_else(|e| panic!("time {time:?} is not RFC 3339 ({e}): {body}"));
    let skew = SystemTime::now()
        .duration_since(t)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(300),
        "time {time} is {skew:?} from now: {body}"
    );

    // The detail as the PutEvents entry carried it, parsed by the same code
    // that parses the stdout sink's lines; then every field compared.
    let entry = json!({
        "Source": s("source"),
        "DetailType": s("detail-type"),
        "Detail": detail.to_string(),
        "Time": time,
        "EventBusName": BUS,
    });
    let ev = Event::parse(&entry.to_string())
        .unwrap_or_else(|e| panic!("SQS message of rule {rule}: {e}"));
    let d = sent
        .iter()
        .find(|d| d.sport == ev.src_port)
        .unwrap_or_else(|| panic!("message from unknown source port {}: {body}", ev.src_port));
    assert_eq!(
        d.rule(),
        Some(rule),
        "the datagram to port {} reached rule {rule}'s queue: {body}",
        d.dport
    );
    assert_event(
        &ev,
        &Expected {
            src: SocketAddr::new(ns.ns_addr(d.v6), d.sport),
            dst: SocketAddr::new(ns.host_addr(d.v6), d.dport),
            payload: &d.payload,
            length: d.payload.len(),
            truncated: false,
            interface: &ns.host_if,
        },
    );
    d.sport
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn article_rule_and_numeric_range_deliver_into_sqs_byte_for_byte() {
    const TEST: &str = "moto-sqs";
    let Some(python) = std::env::var_os(PYTHON_ENV).map(PathBuf::from) else {
        println!("SKIPPED: {PYTHON_ENV} not set (run through cargo xtask test)");
        return;
    };
    if !privileged(TEST) {
        return;
    }
    let t0 = Instant::now();
    let lap = |what: &str| println!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());

    // Drop order (reverse of declaration): agent, namespace, moto.
    let moto = Moto::start(&python);
    lap(&format!("moto answering on {}", moto.url()));
    let setup = moto.client(&["setup", BUS, &rules().to_string()]);
    let queue = |rule: &str| -> String {
        setup["rules"][rule]["queue_url"]
            .as_str()
            .unwrap_or_else(|| panic!("no queue for {rule} in {setup}"))
            .to_string()
    };
    let (q514, qrange) = (queue(RULE_514), queue(RULE_RANGE));
    lap("bus, queues, rules and targets created");

    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let url = moto.url();
    let mut agent = Agent::run_with_env(
        &ns.host_if,
        &pins,
        &[
            "--port",
            "514",
            "--port",
            "515",
            "--port",
            "6000-6010",
            "--event-bus",
            BUS,
            "--endpoint-url",
            &url,
            "--batch-linger-ms",
            "20",
        ],
        AGENT_ENV,
    );
    lap("agent capturing");

    // Warm-up to a port that is not enabled: resolves ARP and ND, and shows
    // the program sees the traffic, without producing an event.
    ns.send_udp(false, WARM_SPORT, WARM_DPORT, &[b"warm-up".to_vec()]);
    ns.send_udp(true, WARM_SPORT, WARM_DPORT, &[b"warm-up".to_vec()]);
    wait_counter(&pins, "port_disabled", 2);

    let sent = datagrams();
    for d in &sent {
        ns.send_udp(d.v6, d.sport, d.dport, std::slice::from_ref(&d.payload));
    }
    let captured = wait_counter(&pins, "captured", sent.len() as u64);
    assert_eq!(captured, sent.len() as u64, "kernel counter captured");
    lap(&format!("{} datagrams sent and captured", sent.len()));

    let want = |rule: &str| sent.iter().filter(|d| d.rule() == Some(rule)).count();
    let (n514, nrange) = (want(RULE_514), want(RULE_RANGE));
    let read = receive(
        &moto,
        SQS_TIMEOUT_S,
        &[(q514.as_str(), n514), (qrange.as_str(), nrange)],
    );
    lap("queues read");

    // Shutdown: everything captured was delivered to the bus (the unmatched
    // datagrams too), nothing failed.
    let stopped = agent.terminate();
    lap("agent stopped");
    assert!(
        stopped.status.success(),
        "agent exit: {}; stderr:\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.events.is_empty(),
        "the EventBridge sink printed events on stdout: {:#?}",
        stopped.events.iter().map(|e| &e.line).collect::<Vec<_>>()
    );
    let eb = stopped.counters("sink counters:");
    lap(&format!("eventbridge counters: {eb:?}"));
    assert_eq!(
        eb.get("delivered"),
        Some(&(sent.len() as u64)),
        "eventbridge counters: {eb:?}; stderr:\n{}",
        stopped.stderr
    );
    assert_eq!(eb.get("failed"), Some(&0), "eventbridge counters: {eb:?}");
    let kernel = stopped.counters("kernel counters:");
    assert_eq!(
        kernel.get("captured"),
        Some(&(sent.len() as u64)),
        "kernel counters: {kernel:?}"
    );

    // Each queue holds exactly its datagrams, each once, each intact.
    for (rule, url, n) in [(RULE_514, &q514, n514), (RULE_RANGE, &qrange, nrange)] {
        let q = &read[url.as_str()];
        let ports: Vec<u16> = q
            .bodies
            .iter()
            .map(|b| check_message(b, &ns, &sent, rule))
            .collect();
        let got: BTreeSet<u16> = ports.iter().copied().collect();
        let expected: BTreeSet<u16> = sent
            .iter()
            .filter(|d| d.rule() == Some(rule))
            .map(|d| d.sport)
            .collect();
        assert_eq!(
            got, expected,
            "source ports of the messages in {rule}'s queue"
        );
        assert_eq!(
            ports.len(),
            n,
            "messages in {rule}'s queue (a datagram delivered twice?): {ports:?}"
        );
    }

    // Now that the agent has delivered everything it will ever deliver,
    // nothing more is waiting in either queue: the unmatched datagrams
    // (515, 6010) went nowhere.
    let after = receive(&moto, 0, &[(q514.as_str(), 0), (qrange.as_str(), 0)]);
    lap("queues checked for leftovers");
    for (rule, url, n) in [(RULE_514, &q514, n514), (RULE_RANGE, &qrange, nrange)] {
        let q = &after[url.as_str()];
        assert!(
            q.bodies.is_empty() && q.visible == 0,
            "{rule}'s queue holds more than its {n} messages: {:?}",
            q.bodies
        );
        assert_eq!(
            q.in_flight, n as u64,
            "messages ever delivered into {rule}'s queue"
        );
        let first = &read[url.as_str()];
        assert_eq!(
            (first.visible, first.in_flight),
            (0, n as u64),
            "{rule}'s queue right after reading it"
        );
    }
    lap("done");
}

// ---------------------------------------------------------------------------
// Formats and packing
// ---------------------------------------------------------------------------

/// Rules on what formats expose: a syslog severity, a text prefix, and the
/// article's port rule on a packed port.
const RULE_SEVERE: &str = "udp-syslog-severe";
const RULE_ALERT: &str = "udp-text-alert";

/// The `detail` of an SQS message body.
fn detail_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["source"], "udp.raw", "{body}");
    v["detail"].clone()
}

#[test]
fn syslog_severity_and_text_prefix_rules_and_packed_events_route_into_sqs() {
    const TEST: &str = "moto-formats";
    const PACKED: usize = 300;
    let Some(python) = std::env::var_os(PYTHON_ENV).map(PathBuf::from) else {
        println!("SKIPPED: {PYTHON_ENV} not set (run through cargo xtask test)");
        return;
    };
    if !privileged(TEST) {
        return;
    }
    let t0 = Instant::now();
    let lap = |what: &str| println!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());
    let moto = Moto::start(&python);
    let rules = json!({
        RULE_SEVERE: {"detail": {"Syslog": {"Severity": [{"numeric": ["<=", 3]}]}}},
        RULE_ALERT: {"detail": {"Text": [{"prefix": "ALERT "}]}},
        RULE_514: {"source": ["udp.raw"], "detail": {"Destination": {"Port": [514]}}},
    });
    let setup = moto.client(&["setup", BUS, &rules.to_string()]);
    let queue = |rule: &str| {
        setup["rules"][rule]["queue_url"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (q_severe, q_alert, q_514) = (queue(RULE_SEVERE), queue(RULE_ALERT), queue(RULE_514));
    lap("bus, queues and rules created");

    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let url = moto.url();
    let mut agent = Agent::run_with_env(
        &ns.host_if,
        &pins,
        &[
            "--port",
            "5514",
            "--format",
            "syslog",
            "--event-bus",
            BUS,
            "--endpoint-url",
            &url,
            "--pack-linger-ms",
            "200",
        ],
        AGENT_ENV,
    );
    ctl_ok(&pins, &["ports", "add", "5515", "--format", "text"]);
    ctl_ok(&pins, &["ports", "add", "514", "--pack"]);
    ns.send_udp(false, WARM_SPORT, WARM_DPORT, &[b"warm-up".to_vec()]);
    wait_counter(&pins, "port_disabled", 1);
    lap("agent capturing");

    // Syslog: every severity once (facility 1), one line that follows
    // neither RFC but has a priority (severity 2), one without a priority.
    let mut syslog: Vec<Vec<u8>> = (0..8)
        .map(|sev| {
            format!(
                "<{}>Nov 27 23:42:18 web01 app[{sev}]: severity {sev}",
                8 + sev
            )
            .into_bytes()
        })
        .collect();
    syslog.push(b"<10>%ASA-2-106001: Inbound TCP connection denied".to_vec());
    syslog.push(b"no priority at all".to_vec());
    ns.send_udp(false, 43001, 5514, &syslog);
    let texts = [
        &b"ALERT disk full"[..],
        b"INFO all good",
        b"ALERT\n",
        b"ALERT \xff",
    ];
    let texts: Vec<Vec<u8>> = texts.iter().map(|t| t.to_vec()).collect();
    ns.send_udp(false, 43002, 5515, &texts);
    let packed: Vec<(u16, Vec<u8>)> = (0..PACKED)
        .map(|i| (43100 + (i % 5) as u16, pattern(40 + i % 200, i as u32)))
        .collect();
    for sport in 43100..43105 {
        let mine: Vec<Vec<u8>> = packed
            .iter()
            .filter(|(s, _)| *s == sport)
            .map(|(_, p)| p.clone())
            .collect();
        ns.send_udp(false, sport, 514, &mine);
    }
    let total = (syslog.len() + texts.len() + PACKED) as u64;
    wait_counter(&pins, "captured", total);
    lap(&format!("{total} datagrams sent and captured"));

    // Stopping sends the packs that wait, and delivers everything.
    let stopped = agent.terminate();
    assert!(
        stopped.status.success(),
        "agent exit: {}; stderr:\n{}",
        stopped.status,
        stopped.stderr
    );
    let pipeline = stopped.counters("pipeline counters:");
    let eb = stopped.counters("sink counters:");
    let packs = pipeline["packs"];
    assert_eq!(pipeline["packed"], PACKED as u64, "{pipeline:?}");
    assert_eq!(
        eb.get("delivered"),
        Some(&(total - PACKED as u64 + packs)),
        "{eb:?}"
    );
    assert_eq!(eb.get("failed"), Some(&0), "{eb:?}");
    lap(&format!("agent stopped: {packs} packs; {eb:?}"));

    let read = receive(
        &moto,
        SQS_TIMEOUT_S,
        &[
            (q_severe.as_str(), 5),
            (q_alert.as_str(), 1),
            (q_514.as_str(), packs as usize),
        ],
    );
    lap("queues read");

    // Exactly the severe messages: severities 0-3 and the ASA line.
    let severe = &read[&q_severe];
    let mut got: Vec<(u64, String)> = severe
        .bodies
        .iter()
        .map(|b| {
            let d = detail_of(b);
            assert_eq!(d["Format"], "syslog", "{b}");
            (
                d["Syslog"]["Severity"].as_u64().unwrap(),
                d["Syslog"]["Message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(u64, String)> = vec![
        (0, "severity 0".into()),
        (1, "severity 1".into()),
        (2, "%ASA-2-106001: Inbound TCP connection denied".into()),
        (2, "severity 2".into()),
        (3, "severity 3".into()),
    ];
    assert_eq!(got, want, "the severe queue");

    // The text prefix: one message, its text intact.
    let alert = &read[&q_alert];
    assert_eq!(alert.bodies.len(), 1, "{:?}", alert.bodies);
    let d = detail_of(&alert.bodies[0]);
    assert_eq!(
        (d["Text"].as_str(), d["Format"].as_str()),
        (Some("ALERT disk full"), Some("text"))
    );

    // The article's rule on the packed port: every datagram, intact, and
    // the counts add up.
    let q = &read[&q_514];
    assert_eq!(q.bodies.len() as u64, packs, "packs in the 514 queue");
    let mut count = 0;
    let mut got: Vec<(u16, Vec<u8>)> = Vec::new();
    for body in &q.bodies {
        let d = detail_of(body);
        assert_eq!(d["Destination"]["Port"], 514, "{body}");
        assert_eq!(d["Format"], "base64");
        let elements = d["Packets"].as_array().expect("Packets");
        assert_eq!(d["Count"].as_u64(), Some(elements.len() as u64));
        count += elements.len();
        for p in elements {
            let payload = payload_of(p).unwrap();
            assert_eq!(p["Length"], payload.len());
            assert_eq!(p["Truncated"], false);
            got.push((p["Source"]["Port"].as_u64().unwrap() as u16, payload));
        }
    }
    assert_eq!(count, PACKED, "Count over the packs");
    got.sort();
    let mut want = packed.clone();
    want.sort();
    assert_eq!(got, want, "every packed datagram, intact, once");

    // Nothing else reached any queue.
    let after = receive(
        &moto,
        0,
        &[
            (q_severe.as_str(), 0),
            (q_alert.as_str(), 0),
            (q_514.as_str(), 0),
        ],
    );
    for (url, n) in [(&q_severe, 5), (&q_alert, 1), (&q_514, packs)] {
        let q = &after[url.as_str()];
        assert!(
            q.bodies.is_empty() && q.visible == 0,
            "{url} holds more: {:?}",
            q.bodies
        );
        assert_eq!(q.in_flight, n, "messages ever delivered into {url}");
    }
    lap("done");
}
