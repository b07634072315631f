//! Ring 3 for payload formats and packing: the agent attached to a veth
//! pair, fed from a network namespace by real clients (util-linux `logger`
//! and UDP sockets), asserted on the events it prints.
//!
//! Ports get their format at start (`--format`, applying to that run's
//! `--port`s) and at runtime (`udp-agent ports add … --format F --pack`),
//! and `ports list` shows it. Traffic stays in the veth pair (198.18.0.0/15,
//! fd00::/8, no default route); every sender is bounded; the namespace and
//! the agent are removed when a test ends, also when it fails.
//!
//! Needs root, an agent built with its XDP object, and `logger` (Debian's
//! bsdutils, installed by `.ci/run`); otherwise each test prints `SKIPPED:`.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::json;
use test_support::{Agent, Event, VethNs, ctl_ok, payload_of, pin_dir, privileged, wait_counter};

const SYSLOG_PORT: u16 = 5514;
const WARM: u16 = 40010;

/// Whether util-linux `logger` is here (prints `SKIPPED:` if not).
fn have_logger(test: &str) -> bool {
    let ok = Command::new("logger")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED: util-linux `logger` is not installed (Debian: bsdutils) ({test})");
    }
    ok
}

/// Runs `logger` inside the namespace, sending one message over UDP to the
/// root-side address: bounded by `timeout` (it sends one datagram and
/// exits).
fn logger(ns: &VethNs, port: u16, args: &[&str]) {
    let host = ns.host_v4.to_string();
    let port = port.to_string();
    let out = Command::new("timeout")
        .args(["10", "ip", "netns", "exec", &ns.netns, "logger", "-d", "-n"])
        .args([host.as_str(), "-P", port.as_str()])
        .args(args)
        .output()
        .expect("running logger in the namespace");
    assert!(
        out.status.success(),
        "logger {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one event whose `Detail` satisfies `pick`.
fn one<'a>(events: &'a [Event], what: &str, pick: impl Fn(&Event) -> bool) -> &'a Event {
    let found: Vec<&Event> = events.iter().filter(|e| pick(e)).collect();
    match found.as_slice() {
        [e] => e,
        other => panic!(
            "expected one event {what}, got {}: {:#?}",
            other.len(),
            other.iter().map(|e| &e.line).collect::<Vec<_>>()
        ),
    }
}

fn hostname() -> String {
    let out = Command::new("hostname").output().expect("running hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn logger_rfc5424_and_rfc3164_and_text_json_hex_ports() {
    const TEST: &str = "formats";
    if !privileged(TEST) || !have_logger(TEST) {
        return;
    }
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let port = SYSLOG_PORT.to_string();
    let mut agent = Agent::run(&ns.host_if, &pins, &["--port", &port, "--format", "syslog"]);
    // Runtime: three more ports, each with its format.
    for (p, f) in [("5515", "text"), ("5516", "json"), ("5517", "hex")] {
        ctl_ok(&pins, &["ports", "add", p, "--format", f]);
    }
    let list = ctl_ok(&pins, &["ports", "list"]);
    for want in [
        "5514 rate=unlimited action=pass format=syslog",
        "5515 rate=unlimited action=pass format=text",
        "5516 rate=unlimited action=pass format=json",
        "5517 rate=unlimited action=pass format=hex",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "`{want}` in ports list:\n{list}"
        );
    }
    ns.warm_up(&agent, false, WARM, SYSLOG_PORT);

    logger(
        &ns,
        SYSLOG_PORT,
        &[
            "--rfc5424",
            "-p",
            "local0.err",
            "-t",
            "myapp",
            "--msgid",
            "ID47",
            "disk full on /var",
        ],
    );
    logger(
        &ns,
        SYSLOG_PORT,
        &["--rfc3164", "-p", "user.notice", "-t", "web", "backup done"],
    );
    ns.send_udp(
        false,
        42001,
        5515,
        &[b"GET /index.html 200\n".to_vec(), b"bin\xff\x00".to_vec()],
    );
    ns.send_udp(
        false,
        42002,
        5516,
        &[
            br#"{"level":"error","code":503,"tags":["a","b"]}"#.to_vec(),
            b"{not json".to_vec(),
        ],
    );
    ns.send_udp(
        true,
        42003,
        5517,
        &[vec![0x00, 0xde, 0xad, 0xbe, 0xef, 0xff]],
    );
    let marker = |e: &Event, m: &str| e.detail["Syslog"]["Message"] == m;
    agent.wait_events("every datagram's event", |evs| {
        evs.iter().any(|e| marker(e, "disk full on /var"))
            && evs.iter().any(|e| marker(e, "backup done"))
            && evs.iter().filter(|e| e.src_port == 42001).count() == 2
            && evs.iter().filter(|e| e.src_port == 42002).count() == 2
            && evs.iter().any(|e| e.src_port == 42003)
    });
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    let evs = &stopped.events;
    let host = hostname();

    // RFC 5424 from logger: local0.err is facility 16, severity 3.
    let e = one(evs, "for the RFC 5424 line", |e| {
        marker(e, "disk full on /var")
    });
    let s = &e.detail["Syslog"];
    assert_eq!(e.format, "syslog");
    assert_eq!(
        (s["Facility"].clone(), s["Severity"].clone()),
        (json!(16), json!(3)),
        "{}",
        e.line
    );
    assert_eq!(s["AppName"], "myapp");
    assert_eq!(s["MsgId"], "ID47");
    assert_eq!(s["Hostname"], host.as_str());
    assert_eq!(
        s["StructuredData"]["timeQuality"]["tzKnown"], "1",
        "{}",
        e.line
    );
    let ts = s["Timestamp"].as_str().expect("Timestamp");
    let time = s["Time"].as_str().expect("Time");
    // Sent with an offset, read in UTC: within minutes of the capture.
    let t = humantime::parse_rfc3339_weak(time).unwrap_or_else(|e| panic!("Time {time}: {e}"));
    let sent = humantime::parse_rfc3339_weak(&e.time).unwrap();
    let skew = t.duration_since(sent).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(5),
        "Time {time} vs capture {}",
        e.time
    );
    let text = e.detail["Text"].as_str().expect("the bytes as Text");
    assert!(
        text.starts_with(&format!("<131>1 {ts} {host} myapp - ID47 [timeQuality")),
        "{text}"
    );
    assert!(text.ends_with("disk full on /var"), "{text}");
    assert_eq!(e.payload, text.as_bytes());
    assert_eq!(e.length, text.len() as u64);

    // RFC 3164 from logger: user.notice is facility 1, severity 5.
    let e = one(evs, "for the RFC 3164 line", |e| marker(e, "backup done"));
    let s = &e.detail["Syslog"];
    assert_eq!(
        (s["Facility"].clone(), s["Severity"].clone()),
        (json!(1), json!(5)),
        "{}",
        e.line
    );
    assert_eq!(s["AppName"], "web");
    // logger's RFC 3164 header names the host up to its first dot.
    let short = host.split('.').next().unwrap_or_default();
    assert_eq!(s["Hostname"], short);
    assert!(
        s["Time"].as_str().is_some_and(|t| !t.ends_with('Z')),
        "no zone: {}",
        e.line
    );
    assert_eq!(
        e.detail["Text"].as_str().unwrap(),
        format!(
            "<13>{} {short} web: backup done",
            s["Timestamp"].as_str().unwrap()
        )
    );

    // Text: exact, newline kept; not UTF-8: base64.
    let text: Vec<&Event> = evs.iter().filter(|e| e.src_port == 42001).collect();
    assert_eq!(text[0].detail["Text"], "GET /index.html 200\n");
    assert_eq!(text[0].format, "text");
    assert_eq!(
        (text[1].format.as_str(), text[1].payload.as_slice()),
        ("base64", &b"bin\xff\x00"[..])
    );
    // JSON: the value; not JSON: base64.
    let js: Vec<&Event> = evs.iter().filter(|e| e.src_port == 42002).collect();
    assert_eq!(
        js[0].detail["Json"],
        json!({"level":"error","code":503,"tags":["a","b"]})
    );
    assert_eq!(js[0].format, "json");
    assert_eq!(
        (js[1].format.as_str(), js[1].payload.as_slice()),
        ("base64", &b"{not json"[..])
    );
    // Hex, over IPv6.
    let e = one(evs, "from port 42003", |e| e.src_port == 42003);
    assert_eq!(e.detail["Hex"], "00deadbeefff");
    assert_eq!((e.format.as_str(), e.ip_version), ("hex", 6));
}

#[test]
fn a_packed_port_gathers_hundreds_of_datagrams_losing_none() {
    const TEST: &str = "packed";
    const N: usize = 600;
    if !privileged(TEST) {
        return;
    }
    let ns = VethNs::new(TEST);
    let pins = pin_dir(TEST);
    let mut agent = Agent::run(
        &ns.host_if,
        &pins,
        &[
            "--port",
            "5520",
            "--pack-linger-ms",
            "300",
            "--pack-max-bytes",
            "16384",
        ],
    );
    ns.warm_up(&agent, false, WARM, 5520);
    // At runtime: a packed syslog port.
    ctl_ok(
        &pins,
        &["ports", "add", "5521", "--format", "syslog", "--pack"],
    );
    let list = ctl_ok(&pins, &["ports", "list"]);
    assert!(
        list.lines()
            .any(|l| l == "5521 rate=unlimited action=pass format=syslog pack"),
        "{list}"
    );
    let lines: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            format!(
                "<{}>Nov 27 23:42:18 web01 app[{i}]: line {i:04} {}",
                8 + i % 8,
                "x".repeat(i % 90)
            )
            .into_bytes()
        })
        .collect();
    for chunk in lines.chunks(100) {
        ns.send_udp(false, 42100, 5521, chunk);
    }
    wait_counter(&pins, "captured", N as u64 + 1);
    let count = |evs: &[Event]| -> usize {
        evs.iter()
            .filter(|e| e.dst_port == 5521)
            .map(|e| e.detail["Count"].as_u64().unwrap_or(0) as usize)
            .sum()
    };
    agent.wait_events("every datagram in a pack", |evs| count(evs) >= N);
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    let packs: Vec<&Event> = stopped
        .events
        .iter()
        .filter(|e| e.dst_port == 5521)
        .collect();
    assert_eq!(count(&stopped.events), N);
    assert!(
        packs.len() >= 3 && packs.len() < N / 10,
        "{} packs for {N} datagrams",
        packs.len()
    );
    let mut got: Vec<Vec<u8>> = Vec::new();
    for e in &packs {
        let size = 14 + e.source.len() + e.detail_type.len() + e.detail.to_string().len();
        assert!(size <= 16384, "a pack of {size} bytes");
        assert_eq!(
            (e.format.as_str(), e.dst_addr.as_str()),
            ("syslog", ns.host_v4.to_string().as_str())
        );
        assert_eq!(e.interface, ns.host_if);
        let packets = e.detail["Packets"].as_array().expect("Packets");
        assert_eq!(e.detail["Count"].as_u64(), Some(packets.len() as u64));
        for p in packets {
            assert_eq!(p["Source"]["Port"], 42100);
            assert_eq!(p["Source"]["Address"], ns.ns_v4.to_string());
            let payload = payload_of(p).unwrap();
            assert_eq!(p["Length"], payload.len());
            let i = got.len();
            assert_eq!(p["Syslog"]["ProcId"], i.to_string(), "{p}");
            assert_eq!(p["Syslog"]["Severity"], json!(i % 8));
            got.push(payload);
        }
    }
    assert_eq!(got, lines, "every datagram, intact and in order");
    let pipeline = stopped.counters("pipeline counters:");
    assert_eq!(pipeline.get("packed"), Some(&(N as u64)), "{pipeline:?}");
    assert_eq!(
        pipeline.get("packs"),
        Some(&(packs.len() as u64)),
        "{pipeline:?}"
    );
}
