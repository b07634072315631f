//! Ring 3 for the kernel firewall: rate limits, source lists and actions,
//! measured end to end over a veth pair with paced senders in a network
//! namespace. Counts come from the agent's own output and its kernel
//! counters, and are printed so the run shows what was measured.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use test_support::{Agent, VethNs, bind_udp, ctl_ok, privileged, stats, wait_until};

/// Sends `rate` datagrams per second for `secs` seconds from `src` to
/// `dst`, on a schedule (a late packet is sent at once, not skipped), and
/// returns (packets sent, seconds it took).
fn paced(ns: &VethNs, src: SocketAddr, dst: SocketAddr, rate: u64, secs: f64) -> (u64, f64) {
    let total = (rate as f64 * secs) as u64;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    ns.in_ns(move || {
        let sock = bind_udp(src);
        let start = Instant::now();
        for i in 0..total {
            let due = start + interval * i as u32;
            let now = Instant::now();
            if due > now {
                let wait = due - now;
                if wait > Duration::from_micros(200) {
                    thread::sleep(wait - Duration::from_micros(100));
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
            }
            // A full socket buffer is a lost datagram of ours, not the
            // agent's: retry briefly so "offered" stays exact.
            let payload = i.to_be_bytes();
            loop {
                match sock.send_to(&payload, dst) {
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::yield_now(),
                    Err(e) => panic!("send {src} -> {dst}: {e}"),
                }
            }
        }
        (total, start.elapsed().as_secs_f64())
    })
}

/// Kernel counter from `stats --json` (0 if absent).
fn kernel(pin_dir: &Path, name: &str) -> u64 {
    stats(pin_dir).get(name).copied().unwrap_or(0)
}

/// Waits until the agent has printed as many events as the kernel says it
/// captured, and returns that number.
fn settle(agent: &Agent) -> usize {
    wait_until(
        Duration::from_secs(20),
        "every captured packet printed",
        || {
            let captured = kernel(&agent.pin_dir, "captured") as usize;
            let printed = agent.events().len();
            (printed == captured).then_some(printed)
        },
        || {
            format!(
                "printed {}, kernel {:?}",
                agent.events().len(),
                stats(&agent.pin_dir)
            )
        },
    )
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured - expected).abs() <= expected * tolerance
}

#[test]
fn port_limit_holds_a_steady_flood_to_rate_times_time_plus_burst() {
    if !privileged("port_limit") {
        return;
    }
    let ns = VethNs::new("limit");
    let pin = test_support::pin_dir("limit");
    let port = 7100;
    let agent = Agent::run(
        &ns.host_if,
        &pin,
        &["--port", "7100", "--rate", "1000", "--burst", "1000"],
    );
    let src = SocketAddr::new(ns.ns_addr(false), 41000);
    let dst = SocketAddr::new(ns.host_addr(false), port);
    let (offered, secs) = paced(&ns, src, dst, 20_000, 5.0);
    let printed = settle(&agent);
    let limited = kernel(&pin, "limited_port");
    let expected = 1000.0 + 1000.0 * 5.0;
    println!(
        "offered {offered} in {secs:.2} s; captured {printed}; limited {limited}; expected {expected} (burst 1000 + 1000/s x 5 s)"
    );
    assert_eq!(
        printed as u64 + limited,
        offered,
        "every packet is either captured or limited"
    );
    assert!(
        within(printed as f64, expected, 0.05),
        "captured {printed} is not within 5% of {expected} (sender took {secs:.2} s)"
    );
}

#[test]
fn a_flooding_source_cannot_starve_a_quiet_one() {
    if !privileged("per_source") {
        return;
    }
    let ns = VethNs::new("source");
    let pin = test_support::pin_dir("source");
    let port = 7200;
    let agent = Agent::run(
        &ns.host_if,
        &pin,
        &[
            "--port",
            "7200",
            "--source-rate",
            "500",
            "--source-burst",
            "500",
        ],
    );
    // Two sources: the namespace's IPv4 address floods, its IPv6 address
    // sends a trickle, at the same time.
    let flood_src = SocketAddr::new(ns.ns_addr(false), 42000);
    let flood_dst = SocketAddr::new(ns.host_addr(false), port);
    let quiet_src = SocketAddr::new(ns.ns_addr(true), 42001);
    let quiet_dst = SocketAddr::new(ns.host_addr(true), port);
    let ((flooded, secs), (quiet, _)) = thread::scope(|s| {
        let f = s.spawn(|| paced(&ns, flood_src, flood_dst, 20_000, 3.0));
        let q = s.spawn(|| paced(&ns, quiet_src, quiet_dst, 50, 3.0));
        (f.join().unwrap(), q.join().unwrap())
    });
    settle(&agent);
    let events = agent.events();
    let from = |ip: IpAddr| {
        events
            .iter()
            .filter(|e| e.src_addr == ip.to_string())
            .count()
    };
    let (flood_got, quiet_got) = (from(ns.ns_addr(false)), from(ns.ns_addr(true)));
    let expected = 500.0 + 500.0 * 3.0;
    println!(
        "flooder offered {flooded} in {secs:.2} s, captured {flood_got} (expected ~{expected}); quiet offered {quiet}, captured {quiet_got}; limited_source {}",
        kernel(&pin, "limited_source")
    );
    assert_eq!(
        quiet_got as u64, quiet,
        "every packet of the quiet source is captured"
    );
    assert!(
        within(flood_got as f64, expected, 0.05),
        "flooder captured {flood_got}, expected within 5% of {expected}"
    );
}

#[test]
fn denied_sources_produce_nothing_until_removed() {
    if !privileged("deny") {
        return;
    }
    let ns = VethNs::new("deny");
    let pin = test_support::pin_dir("deny");
    let agent = Agent::run(&ns.host_if, &pin, &["--port", "7300"]);
    ns.warm_up(&agent, false, 43000, 7300);
    let before = agent.events().len();
    let me = format!("{}/32", ns.ns_v4);
    ctl_ok(&pin, &["sources", "deny", &me]);
    let listed = ctl_ok(&pin, &["sources", "list"]);
    assert!(listed.contains(&format!("deny {me}")), "{listed}");
    let payloads: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
    ns.send_udp(false, 43001, 7300, &payloads);
    let denied = test_support::wait_counter(&pin, "denied", 100);
    assert_eq!(denied, 100);
    // IPv6 from the same namespace is another source: still captured.
    ns.send_udp(true, 43002, 7300, &[b"v6".to_vec()]);
    let evs = agent.wait_from(43002, 1);
    assert_eq!(evs.len(), 1);
    assert!(
        agent.events()[before..].iter().all(|e| e.src_port != 43001),
        "a denied packet was emitted"
    );
    ctl_ok(&pin, &["sources", "remove", &me]);
    ns.send_udp(false, 43003, 7300, &[b"back".to_vec()]);
    assert_eq!(agent.wait_from(43003, 1).len(), 1);
    println!("denied {denied} of 100; captured again after `sources remove`");
}

#[test]
fn a_rate_changed_at_runtime_applies_to_the_next_packets() {
    if !privileged("rate_change") {
        return;
    }
    let ns = VethNs::new("rchange");
    let pin = test_support::pin_dir("rchange");
    let agent = Agent::run(
        &ns.host_if,
        &pin,
        &["--port", "7400", "--rate", "100", "--burst", "100"],
    );
    let src = SocketAddr::new(ns.ns_addr(false), 44000);
    let dst = SocketAddr::new(ns.host_addr(false), 7400);
    let (offered1, secs1) = paced(&ns, src, dst, 2000, 2.0);
    let first = settle(&agent);
    ctl_ok(
        &pin,
        &["ports", "add", "7400", "--rate", "1000", "--burst", "1000"],
    );
    let listed = ctl_ok(&pin, &["ports", "list"]);
    assert!(listed.contains("7400 rate=1000/s burst=1000"), "{listed}");
    let (offered2, secs2) = paced(&ns, src, dst, 2000, 2.0);
    let second = settle(&agent) - first;
    println!(
        "at 100/s: offered {offered1} in {secs1:.2} s, captured {first} (expected ~300); at 1000/s: offered {offered2} in {secs2:.2} s, captured {second} (expected ~3000)"
    );
    assert!(
        within(first as f64, 300.0, 0.05),
        "first phase captured {first}"
    );
    assert!(
        within(second as f64, 3000.0, 0.05),
        "second phase captured {second}"
    );
}

#[test]
fn drop_action_consumes_the_datagram_so_no_port_unreachable_comes_back() {
    if !privileged("drop_action") {
        return;
    }
    let ns = VethNs::new("drop");
    let pin = test_support::pin_dir("drop");
    // Nothing listens on these ports on the host: with `pass`, the host's
    // stack answers ICMP port unreachable, which a connected UDP socket
    // reports as ECONNREFUSED; with `drop`, the agent is the only receiver.
    let agent = Agent::run(&ns.host_if, &pin, &["--port", "7500"]);
    ctl_ok(&pin, &["ports", "add", "7501", "--action", "drop"]);
    ns.warm_up(&agent, false, 45000, 7500);
    let refused = |port: u16, src_port: u16| {
        let src = SocketAddr::new(ns.ns_addr(false), src_port);
        let dst = SocketAddr::new(ns.host_addr(false), port);
        ns.in_ns(move || {
            let sock = bind_udp(src);
            sock.connect(dst).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            sock.send(b"are you there?").unwrap();
            let mut buf = [0u8; 64];
            match sock.recv(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
                other => panic!("unexpected answer: {other:?}"),
            }
        })
    };
    assert!(
        refused(7500, 45001),
        "pass: the host answers port unreachable"
    );
    assert!(!refused(7501, 45002), "drop: nothing answers");
    // Both were captured.
    assert_eq!(agent.wait_from(45001, 1).len(), 1);
    assert_eq!(agent.wait_from(45002, 1).len(), 1);
    assert_eq!(test_support::wait_counter(&pin, "consumed", 1), 1);
}

#[test]
fn bad_firewall_values_are_refused_and_change_nothing() {
    if !privileged("bad_values") {
        return;
    }
    let ns = VethNs::new("badval");
    let pin = test_support::pin_dir("badval");
    let _agent = Agent::run(&ns.host_if, &pin, &["--port", "7600"]);
    let fail = |args: &[&str], needle: &str| {
        let out = test_support::ctl(&pin, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    fail(&["ports", "add", "7601", "--burst", "10"], "without a rate");
    fail(
        &["sources", "deny", "198.18.0.0/16", "10.0.0.0/99"],
        "10.0.0.0/99",
    );
    fail(&["sources", "remove", "192.0.2.0/24"], "neither list");
    fail(
        &["limits", "set", "--source-burst", "5"],
        "without a source-rate",
    );
    // Nothing was half-applied: the valid prefix before the bad one is not
    // on the deny list, and port 7601 is not enabled.
    let listed = ctl_ok(&pin, &["sources", "list"]);
    assert!(!listed.contains("198.18.0.0/16"), "{listed}");
    let ports = ctl_ok(&pin, &["ports", "list"]);
    assert!(!ports.contains("7601"), "{ports}");
    // And the agent refuses bad flags at start-up.
    let out = test_support::agent_command()
        .args([
            "run",
            "--iface",
            &ns.host_if,
            "--port",
            "7602",
            "--deny",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
