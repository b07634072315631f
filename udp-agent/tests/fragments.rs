//! Ring 3 for IP fragments: the agent attached to the root-side end of a
//! veth pair whose MTU is 1,500 (the Internet's), fed from the namespace
//! by real UDP sockets with path-MTU discovery off — the sending kernel
//! splits big datagrams into fragments — and by crafted fragment sequences
//! (`FrameBuilder` frames on an `AF_PACKET` socket). Every complete
//! datagram must be one byte-exact event, and nothing else an event.
//!
//! Needs root and an agent built with its XDP object; otherwise each test
//! prints `SKIPPED:` and returns.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use test_support::metrics::{metrics_addr, scrape_until};
use test_support::{
    Agent, Event, Expected, TIMEOUT, VethNs, assert_event, bind_udp, pattern, pin_dir, privileged,
};
use udp_ebpf_common::frame::FrameBuilder;

/// The captured port of every test.
const PORT: u16 = 5150;
const WARM_V4: u16 = 40004;
const WARM_V6: u16 = 40006;
const MTU: u32 = 1500;

fn only_from(events: &[Event], src_port: u16) -> &Event {
    let from: Vec<&Event> = events.iter().filter(|e| e.src_port == src_port).collect();
    match from.as_slice() {
        [e] => e,
        many => panic!(
            "expected exactly one event from source port {src_port}, got {}",
            many.len()
        ),
    }
}

/// An agent on `ns`'s root-side end, capturing PORT, warmed up for both IP
/// versions.
fn agent(ns: &VethNs, test: &str, extra: &[&str]) -> Agent {
    let pins = pin_dir(test);
    let port = PORT.to_string();
    let mut args = vec!["--port", port.as_str()];
    args.extend(extra);
    let agent = Agent::run(&ns.host_if, &pins, &args);
    ns.warm_up(&agent, false, WARM_V4, PORT);
    ns.warm_up(&agent, true, WARM_V6, PORT);
    agent
}

/// Sends datagrams too big for one frame from real sockets, both IP
/// versions, up to the UDP maximum, and checks each event field by field.
fn big_datagrams_from_real_sockets(test: &str, mode: &str) {
    if !privileged(test) {
        return;
    }
    let ns = VethNs::with_mtu(test, MTU);
    let mut agent = agent(&ns, test, &["--xdp-mode", mode]);
    // (v6, source port, payload): just over one frame, a few frames, many,
    // and the largest a UDP socket sends.
    let sizes4 = [1473usize, 3000, 8000, 30_000, 65_507];
    let sizes6 = [1453usize, 3000, 8000, 30_000, 65_527];
    let mut sent: Vec<(bool, u16, Vec<u8>)> = Vec::new();
    for (v6, sizes) in [(false, sizes4), (true, sizes6)] {
        for (i, &size) in sizes.iter().enumerate() {
            let sport = 42000 + if v6 { 10 } else { 0 } + i as u16;
            sent.push((v6, sport, pattern(size, u32::from(sport))));
        }
    }
    for (v6, sport, payload) in &sent {
        ns.send_udp_fragmenting(*v6, *sport, PORT, std::slice::from_ref(payload));
    }
    agent.wait_events("one event per datagram sent", |evs| {
        sent.iter()
            .all(|(_, sport, _)| evs.iter().any(|e| e.src_port == *sport))
    });
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "exit: {}", stopped.status);
    assert_whole_events(&stopped.events, &ns, &sent);
    // Nothing but the warm-ups and the datagrams.
    let others = stopped
        .events
        .iter()
        .filter(|e| ![WARM_V4, WARM_V6].contains(&e.src_port))
        .count();
    assert_eq!(others, sent.len(), "events besides warm-ups");
    // The kernel wrote every fragment (a 65,507-byte datagram is 45 of
    // them at this MTU) and the agent made each datagram of its fragments.
    let kernel = stopped.counters("kernel counters:");
    let pipeline = stopped.counters("pipeline counters:");
    assert_eq!(pipeline.get("reassembled"), Some(&(sent.len() as u64)));
    assert_eq!(kernel.get("fragment"), pipeline.get("fragments"));
    assert!(kernel["fragment"] > 100, "{kernel:?}");
    for quiet in [
        "fragment_timeout",
        "fragment_overlap",
        "fragment_evicted",
        "fragment_invalid",
        "decode_errors",
    ] {
        assert_eq!(pipeline.get(quiet), Some(&0), "{quiet}: {pipeline:?}");
    }
}

#[test]
fn big_datagrams_from_real_sockets_are_whole_events_native() {
    big_datagrams_from_real_sockets("frag-sockets-native", "auto");
}

#[test]
fn big_datagrams_from_real_sockets_are_whole_events_skb() {
    big_datagrams_from_real_sockets("frag-sockets-skb", "skb");
}

/// Asserts that each of `sent` (IP version, source port, payload) is one
/// event from the namespace to PORT, whole and exact, field by field.
fn assert_whole_events(events: &[Event], ns: &VethNs, sent: &[(bool, u16, Vec<u8>)]) {
    for (v6, sport, payload) in sent {
        assert_event(
            only_from(events, *sport),
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

/// A receiver on the host side of the pair, to see what the host still
/// gets.
fn host_socket(ns: &VethNs, v6: bool) -> UdpSocket {
    let sock = bind_udp(SocketAddr::new(ns.host_addr(v6), PORT));
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("SO_RCVTIMEO");
    sock
}

#[test]
fn the_host_still_gets_what_is_passed_and_not_what_is_consumed() {
    let test = "frag-action";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::with_mtu(test, MTU);
    let mut agent = agent(&ns, test, &[]);
    let sock = host_socket(&ns, false);
    let big = pattern(8000, 7);
    // Pass (the default): the host reassembles the datagram as always.
    ns.send_udp_fragmenting(false, 43000, PORT, std::slice::from_ref(&big));
    let mut buf = vec![0; 70_000];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("the host gets the datagram");
    assert_eq!(&buf[..n], &big[..]);
    agent.wait_from(43000, 1);
    // Drop: every fragment is consumed; the host gets nothing.
    test_support::ctl_ok(
        &agent.pin_dir,
        &["ports", "add", &PORT.to_string(), "--action", "drop"],
    );
    ns.send_udp_fragmenting(false, 43001, PORT, std::slice::from_ref(&big));
    agent.wait_from(43001, 1);
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a consumed datagram reached the host"
    );
    let stopped = agent.terminate();
    assert_eq!(only_from(&stopped.events, 43001).payload, big);
    let kernel = stopped.counters("kernel counters:");
    assert_eq!(kernel.get("consumed"), Some(&6), "{kernel:?}");
}

#[test]
fn crafted_fragment_sequences_give_exactly_the_complete_datagrams() {
    let test = "frag-crafted";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::with_mtu(test, MTU);
    let mut agent = agent(
        &ns,
        test,
        &[
            "--reassembly-timeout",
            "1s",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&agent);
    let builder = |v6: bool, sport: u16, dport: u16, id: u32, payload: &[u8]| {
        let b = if v6 {
            FrameBuilder::ipv6(ns.ns_v6.octets(), ns.host_v6.octets())
        } else {
            FrameBuilder::ipv4(ns.ns_v4.octets(), ns.host_v4.octets())
        };
        b.macs(ns.host_mac, ns.ns_mac)
            .frag_id(id)
            .udp(sport, dport, payload)
    };
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut complete: Vec<(bool, u16, Vec<u8>)> = Vec::new();
    // Reversed, both IP versions.
    for (v6, sport) in [(false, 44000), (true, 44001)] {
        let p = pattern(6000, u32::from(sport));
        let mut f = builder(v6, sport, PORT, 1, &p).fragments(MTU as usize);
        f.reverse();
        frames.extend(f);
        complete.push((v6, sport, p));
    }
    // Interleaved: three datagrams, a fragment of each in turn.
    let sets: Vec<(u16, Vec<u8>, Vec<Vec<u8>>)> = (0..3u16)
        .map(|i| {
            let sport = 44010 + i;
            let p = pattern(4000 + usize::from(i) * 100, u32::from(sport));
            let f = builder(false, sport, PORT, 10 + u32::from(i), &p).fragments(MTU as usize);
            (sport, p, f)
        })
        .collect();
    for i in 0..3 {
        for (_, _, f) in &sets {
            frames.push(f[i].clone());
        }
    }
    complete.extend(sets.into_iter().map(|(sport, p, _)| (false, sport, p)));
    // Duplicated fragments: one event still.
    let p = pattern(5000, 44020);
    let f = builder(false, 44020, PORT, 20, &p).fragments(MTU as usize);
    frames.extend([f[0].clone(), f[1].clone(), f[1].clone(), f[0].clone()]);
    frames.extend(f[2..].iter().cloned());
    complete.push((false, 44020, p));
    // Overlapping (the same bytes, even): no event. The overlapping
    // fragment comes last, so that nothing of the datagram is left after
    // it to start another that would time out.
    let b = builder(false, 44030, PORT, 30, &pattern(3000, 44030));
    let d = b.udp_datagram();
    frames.push(b.fragment(0, true, &d[..1480]));
    frames.push(b.fragment(2880, false, &d[2880..]));
    frames.push(b.fragment(1400, true, &d[1400..2880]));
    // Incomplete (its middle fragment never sent): no event, a timeout.
    let f = builder(true, 44040, PORT, 40, &pattern(5000, 44040)).fragments(MTU as usize);
    frames.extend(
        f.iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, f)| f.clone()),
    );
    // To a port that is not enabled, in order and reversed: no event.
    let f = builder(false, 44050, PORT + 1, 50, &pattern(5000, 44050)).fragments(MTU as usize);
    frames.extend(f.iter().cloned());
    let f = builder(false, 44051, PORT + 1, 51, &pattern(5000, 44051)).fragments(MTU as usize);
    frames.extend(f.iter().rev().cloned());
    ns.send_frames(&frames);

    agent.wait_events("the complete datagrams", |evs| {
        complete
            .iter()
            .all(|(_, sport, _)| evs.iter().any(|e| e.src_port == *sport))
    });
    // The incomplete one times out (1 s, checked every second).
    scrape_until(metrics, TIMEOUT, "the incomplete datagram timed out", |s| {
        s.count("udp_agent_pipeline_fragment_timeout_total") == 1
    });
    let stopped = agent.terminate();
    assert_whole_events(&stopped.events, &ns, &complete);
    let others: Vec<&str> = stopped
        .events
        .iter()
        .filter(|e| ![WARM_V4, WARM_V6].contains(&e.src_port))
        .filter(|e| !complete.iter().any(|(_, sport, _)| *sport == e.src_port))
        .map(|e| e.line.as_str())
        .collect();
    assert!(
        others.is_empty(),
        "events of no complete datagram: {others:#?}"
    );
    let pipeline = stopped.counters("pipeline counters:");
    let want = [
        ("reassembled", complete.len() as u64),
        ("fragment_overlap", 1),
        ("fragment_timeout", 1),
        ("fragment_duplicate", 2),
        ("fragment_discarded", 1),
        ("fragment_invalid", 0),
        ("fragment_evicted", 0),
    ];
    for (name, value) in want {
        assert_eq!(pipeline.get(name), Some(&value), "{name}: {pipeline:?}");
    }
    let kernel = stopped.counters("kernel counters:");
    // The disabled port's fragments: all four of the one in order, the
    // first of the reversed one (its other three were early).
    assert_eq!(kernel.get("port_disabled"), Some(&5), "{kernel:?}");
}

#[test]
fn a_fragment_flood_keeps_reassembly_memory_within_its_cap() {
    let test = "frag-flood";
    if !privileged(test) {
        return;
    }
    const CAP: u64 = 128 << 10;
    let ns = VethNs::with_mtu(test, MTU);
    let cap = CAP.to_string();
    // With --action drop the flood never reaches the root namespace's own
    // reassembly (4 MiB by default, shared with every other test on the
    // machine, and held for 30 s), which fragments passed on would fill.
    let mut agent = agent(
        &ns,
        test,
        &["--reassembly-max-bytes", &cap, "--action", "drop"],
    );
    let b = |sport: u16, id: u32, payload: &[u8]| {
        FrameBuilder::ipv4(ns.ns_v4.octets(), ns.host_v4.octets())
            .macs(ns.host_mac, ns.ns_mac)
            .frag_id(id)
            .udp(sport, PORT, payload)
    };
    // 20,000 tiny first fragments (the UDP header alone) of datagrams whose
    // other fragments never come, every identification different, and
    // among them, every 1,000, a whole datagram in three fragments. (A
    // flood of tail fragments is the reassembler's unit test: those would
    // come before their first and be passed on.)
    let mut frames = Vec::new();
    let mut whole = Vec::new();
    for i in 0..20_000u32 {
        let head = b(45000, 1000 + i, &[0xEE; 64]);
        let udp = head.udp_datagram();
        frames.push(head.fragment(0, true, &udp[..8]));
        if i % 1000 == 999 {
            let sport = 45100 + (i / 1000) as u16;
            let p = pattern(4000, u32::from(sport));
            frames.extend(b(sport, 60_000 + i / 1000, &p).fragments(MTU as usize));
            whole.push((sport, p));
        }
    }
    ns.send_frames(&frames);
    agent.wait_events("every whole datagram", |evs| {
        whole
            .iter()
            .all(|(sport, _)| evs.iter().any(|e| e.src_port == *sport))
    });
    let stopped = agent.terminate();
    for (sport, p) in &whole {
        assert_eq!(&only_from(&stopped.events, *sport).payload, p);
    }
    assert_eq!(
        stopped.events.len(),
        whole.len() + 2,
        "only the whole datagrams (and the warm-ups) are events"
    );
    let pipeline = stopped.counters("pipeline counters:");
    assert!(
        pipeline["fragment_evicted"] > 10_000,
        "the flood was evicted: {pipeline:?}"
    );
    assert_eq!(pipeline["reassembled"], whole.len() as u64);
    let held = stopped
        .stderr
        .lines()
        .rev()
        .find_map(|l| l.split("reassembly: held at most ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no `reassembly: held at most` line:\n{}", stopped.stderr));
    assert!(
        held <= CAP && held > CAP / 2,
        "reassembly held at most {held} bytes with a cap of {CAP}"
    );
}
