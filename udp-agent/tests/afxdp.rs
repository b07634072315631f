//! Ring 3 for AF_XDP (`--capture-path afxdp`): consumed ports read from
//! the agent's AF_XDP sockets over a veth pair (copy mode: veth has no
//! zero-copy), checked byte for byte, with the kernel's and the sockets'
//! counters adding up.
//!
//! Topology and cleanup as in `network.rs` (`test_support::{VethNs,
//! Agent}`): the agent in the root namespace on the root-side end, senders
//! in the namespace, every sender bounded. Needs root and an agent built with its
//! XDP object; otherwise each test prints `SKIPPED:` and returns.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    time::Duration,
};

use test_support::{
    Agent, Event, Expected, VethNs, assert_event, counters_line, ctl_ok, pattern, pin_dir,
    privileged, stats,
};

const PORT: u16 = 5150;
const WARM: u16 = 40010;

fn consuming_agent(ns: &VethNs, test: &str, extra: &[&str]) -> Agent {
    let pins = pin_dir(test);
    let port = PORT.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--action",
        "drop",
        "--capture-path",
        "afxdp",
    ];
    args.extend_from_slice(extra);
    let agent = Agent::run(&ns.host_if, &pins, &args);
    let bound = agent
        .stderr_line("AF_XDP sockets bound", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no `AF_XDP sockets bound` line:\n{}", agent.stderr_text()));
    assert!(
        bound.contains("mode=\"copy\"") || bound.contains("mode=copy"),
        "{bound}"
    );
    agent
}

/// The `af_xdp counters:` line, and per socket (`af_xdp socket:` lines)
/// `ifindex:queue` → received.
fn xsk_counters(stderr: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let totals = counters_line(stderr, "af_xdp counters:")
        .unwrap_or_else(|| panic!("no `af_xdp counters:` line in stderr:\n{stderr}"));
    let per_socket = stderr
        .lines()
        .filter_map(|l| l.split_once("af_xdp socket: "))
        .filter_map(|(_, rest)| {
            let mut words = rest.split_whitespace();
            let socket = words.next()?.to_string();
            let received = words.find_map(|w| w.strip_prefix("received="))?;
            Some((socket, received.parse().ok()?))
        })
        .collect();
    (totals, per_socket)
}

fn from(events: &[Event], sport: u16) -> Vec<&Event> {
    events.iter().filter(|e| e.src_port == sport).collect()
}

#[test]
fn consumed_ports_over_afxdp_deliver_byte_exact_events_64_1400_and_jumbo() {
    let test = "xsk-sizes";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let mut agent = consuming_agent(&ns, test, &[]);
    ns.warm_up(&agent, false, WARM, PORT);
    // 8900 + 48 (IPv6 + UDP) fits MTU 9001: the jumbo frame spans five
    // 2 KiB UMEM chunks (multi-buffer descriptors).
    let sizes = [0usize, 64, 1400, 1472, 8900];
    let mut sent = Vec::new();
    for v6 in [false, true] {
        for (i, &size) in sizes.iter().enumerate() {
            let sport = 41100 + if v6 { 10 } else { 0 } + i as u16;
            let payloads: Vec<Vec<u8>> = (0..3)
                .map(|k| pattern(size, u32::from(sport) * 8 + k))
                .collect();
            ns.send_udp(v6, sport, PORT, &payloads);
            sent.push((v6, sport, payloads));
        }
    }
    agent.wait_events("an event per datagram", |evs| {
        sent.iter()
            .all(|(_, sport, p)| from(evs, *sport).len() >= p.len())
    });
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    for (v6, sport, payloads) in &sent {
        let evs = from(&stopped.events, *sport);
        assert_eq!(evs.len(), payloads.len(), "events from {sport}");
        for (ev, payload) in evs.iter().zip(payloads) {
            assert_event(
                ev,
                &Expected {
                    src: SocketAddr::new(ns.ns_addr(*v6), *sport),
                    dst: SocketAddr::new(ns.host_addr(*v6), PORT),
                    payload,
                    length: payload.len(),
                    truncated: false,
                    interface: &ns.host_if,
                },
            );
        }
    }
    let kernel = stopped.counters("kernel counters:");
    let pipeline = stopped.counters("pipeline counters:");
    let (xsk, _) = xsk_counters(&stopped.stderr);
    let printed = stopped.events.len() as u64;
    // Everything went through the sockets, nothing through the ring.
    assert_eq!(kernel["captured"], printed, "kernel: {kernel:?}");
    assert_eq!(kernel["redirected"], printed, "kernel: {kernel:?}");
    assert_eq!(kernel["consumed"], printed, "kernel: {kernel:?}");
    assert_eq!(
        (xsk["received"], xsk["lost"]),
        (printed, 0),
        "af_xdp: {xsk:?}"
    );
    assert_eq!(pipeline["decoded"], printed, "pipeline: {pipeline:?}");
    assert_eq!(pipeline["emitted"], printed, "pipeline: {pipeline:?}");
}

#[test]
fn switching_a_port_between_pass_and_drop_moves_it_between_paths_without_loss() {
    let test = "xsk-switch";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let port = PORT.to_string();
    // Observed at first: the ring.
    let mut agent = Agent::run(
        &ns.host_if,
        &pins,
        &["--port", &port, "--capture-path", "afxdp"],
    );
    agent
        .stderr_line("AF_XDP sockets bound", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no sockets:\n{}", agent.stderr_text()));
    ns.warm_up(&agent, false, WARM, PORT);
    // One bounded stream (at most N datagrams) while the port's action
    // flips four times; each flip waits until some of the stream has gone
    // out under the action before it, so both paths carry traffic whatever
    // the scheduler does.
    const N: usize = 20_000;
    const SPORT: u16 = 41200;
    let payloads: Vec<Vec<u8>> = (0..N).map(|i| format!("seq {i:05}").into_bytes()).collect();
    let sent = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for chunk in payloads.chunks(50) {
                if done.load(Relaxed) {
                    break;
                }
                ns.send_udp(false, SPORT, PORT, chunk);
                sent.fetch_add(chunk.len(), Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        for action in ["drop", "pass", "drop", "pass"] {
            let at = sent.load(Relaxed);
            while sent.load(Relaxed) < (at + 200).min(N) {
                std::thread::sleep(Duration::from_millis(1));
            }
            ctl_ok(&pins, &["ports", "add", &port, "--action", action]);
        }
        let at = sent.load(Relaxed);
        while sent.load(Relaxed) < (at + 200).min(N) {
            std::thread::sleep(Duration::from_millis(1));
        }
        done.store(true, Relaxed);
    });
    let n = sent.load(Relaxed);
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    let mut got: Vec<String> = from(&stopped.events, SPORT)
        .iter()
        .map(|e| e.text())
        .collect();
    got.sort();
    let want: Vec<String> = (0..n).map(|i| format!("seq {i:05}")).collect();
    if got != want {
        let missing = want.iter().filter(|w| !got.contains(w)).count();
        panic!(
            "{} events for {n} datagrams ({missing} missing); stderr:\n{}",
            got.len(),
            stopped.stderr
        );
    }
    let kernel = stopped.counters("kernel counters:");
    let (xsk, _) = xsk_counters(&stopped.stderr);
    let printed = stopped.events.len() as u64;
    assert_eq!(kernel["captured"], printed, "kernel: {kernel:?}");
    assert!(
        kernel["redirected"] > 0 && kernel["redirected"] < printed,
        "both paths used: {kernel:?}"
    );
    assert_eq!(xsk["received"], kernel["redirected"], "af_xdp: {xsk:?}");
    assert_eq!(xsk["lost"], 0);
}

#[test]
fn two_rx_queues_are_both_served() {
    let test = "xsk-queues";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::with_queues(test, 2);
    let mut agent = consuming_agent(&ns, test, &[]);
    let bound = agent
        .stderr_line("AF_XDP sockets bound", Duration::ZERO)
        .unwrap();
    assert!(bound.contains("queues=2"), "{bound}");
    ns.warm_up(&agent, false, WARM, PORT);
    // Each sending socket hashes to one TX queue of the namespace's end,
    // and arrives on the same-numbered RX queue here: 32 sockets use both
    // (all on one: a chance of 2^-31).
    let mut sent = 0;
    for sport in 41300..41332u16 {
        ns.send_udp(false, sport, PORT, &[format!("from {sport}").into_bytes()]);
        sent += 1;
    }
    agent.wait_events("an event per socket", |evs| {
        (41300..41332).all(|p| evs.iter().any(|e| e.src_port == p))
    });
    let stopped = agent.terminate();
    let (xsk, per_socket) = xsk_counters(&stopped.stderr);
    assert_eq!(per_socket.len(), 2, "{per_socket:?}");
    assert!(
        per_socket.values().all(|&n| n > 0),
        "both queues' sockets received: {per_socket:?}"
    );
    assert_eq!(
        xsk["received"],
        stopped.events.len() as u64,
        "{xsk:?} vs {sent} sent and the warm-ups; stderr:\n{}",
        stopped.stderr
    );
    for p in 41300..41332u16 {
        let evs = from(&stopped.events, p);
        assert_eq!(evs.len(), 1, "from {p}");
        assert_eq!(evs[0].text(), format!("from {p}"));
    }
}

#[test]
fn a_bounded_flood_into_a_consuming_port_is_every_datagram_an_exact_event() {
    let test = "xsk-flood";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    // Frames for the whole flood, and a sink queue as long: whatever the
    // scheduler does to the agent on a busy machine, nothing can overflow,
    // so anything missing is a bug, not a lost race.
    const N: usize = 20_000;
    let mut agent = consuming_agent(
        &ns,
        test,
        &["--xsk-frames", "32768", "--queue-capacity", "65536"],
    );
    ns.warm_up(&agent, false, WARM, PORT);
    let pins = agent.pin_dir.clone();
    const SPORT: u16 = 41400;
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let mut p = pattern(200 + i % 1200, i as u32);
            p[..8].copy_from_slice(format!("{i:08}").as_bytes());
            p
        })
        .collect();
    ns.send_udp(false, SPORT, PORT, &payloads);
    let live = stats(&pins);
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    let evs = from(&stopped.events, SPORT);
    let mut by_seq: BTreeMap<usize, &Event> = BTreeMap::new();
    for e in &evs {
        let seq: usize = std::str::from_utf8(&e.payload[..8])
            .unwrap()
            .parse()
            .unwrap();
        assert!(by_seq.insert(seq, e).is_none(), "datagram {seq} twice");
    }
    assert_eq!(by_seq.len(), N, "{} of {N} datagrams", by_seq.len());
    for (seq, e) in by_seq {
        assert_eq!(e.payload, payloads[seq], "payload of datagram {seq}");
        assert_eq!(e.length, payloads[seq].len() as u64);
    }
    let kernel = stopped.counters("kernel counters:");
    let pipeline = stopped.counters("pipeline counters:");
    let (xsk, _) = xsk_counters(&stopped.stderr);
    let printed = stopped.events.len() as u64;
    assert!(live["redirected"] <= kernel["redirected"]);
    assert_eq!(kernel["captured"], printed, "kernel: {kernel:?}");
    assert_eq!(kernel["redirected"], printed, "kernel: {kernel:?}");
    assert_eq!(kernel["ring_full"], 0);
    assert_eq!((xsk["received"], xsk["lost"]), (printed, 0), "{xsk:?}");
    assert_eq!(
        (
            pipeline["decoded"],
            pipeline["decode_errors"],
            pipeline["queue_drops"]
        ),
        (printed, 0, 0),
        "{pipeline:?}"
    );
    assert_eq!(pipeline["emitted"], printed, "{pipeline:?}");
}
