//! Interfaces on a live host: several at once, one that goes away and comes
//! back, one that does not exist yet.
//!
//! Topology: network namespaces made here, each joined to the root
//! namespace by a veth pair (`test_support::VethNs`: 198.18.0.0/15, no
//! default route) that a test deletes and creates again under the same
//! names. The agent runs in the root namespace; senders in the namespaces
//! send a bounded number of datagrams. Everything is removed when a test
//! ends, also when it fails.
//!
//! Needs root and an agent built with its XDP object; otherwise each test
//! prints `SKIPPED:` and returns.

use std::{collections::BTreeSet, time::Duration};

use test_support::metrics::{metrics_addr, scrape, scrape_until};
use test_support::{Agent, TIMEOUT, VethNs, pin_dir, privileged};

const PORT: u16 = 5170;

fn payloads(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag} {i}").into_bytes()).collect()
}

fn attached_series(iface: &str) -> String {
    format!(r#"udp_agent_xdp_attached{{iface="{iface}","#)
}

/// The value of the `udp_agent_xdp_attached` series of `iface` (whatever
/// its mode label).
fn attached_value(s: &test_support::metrics::Samples, iface: &str) -> Option<f64> {
    let m = s.matching(&attached_series(iface));
    assert!(m.len() <= 1, "several attached series for {iface}: {m:?}");
    m.first().map(|(_, v)| *v)
}

#[test]
fn an_interface_that_goes_away_and_comes_back_is_attached_again() {
    let test = "hotplug-recreate";
    if !privileged(test) {
        return;
    }
    let pair = VethNs::new(test);
    let pins = pin_dir(test);
    let mut agent = Agent::run(
        &pair.host_if,
        &pins,
        &["--port", &PORT.to_string(), "--metrics-addr", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&agent);
    pair.warm_up(&agent, false, 40170, PORT);
    assert_eq!(attached_value(&scrape(addr), &pair.host_if), Some(1.0));

    // Gone: the agent says so, keeps running, and reports it detached.
    pair.delete_link();
    assert!(!pair.link_exists());
    agent
        .stderr_line("interface went away", TIMEOUT)
        .unwrap_or_else(|| panic!("no `went away` warning:\n{}", agent.stderr_text()));
    let s = scrape_until(addr, TIMEOUT, "xdp_attached 0", |s| {
        attached_value(s, &pair.host_if) == Some(0.0)
    });
    assert_eq!(
        s.count(&format!(
            r#"udp_agent_xdp_reattached_total{{iface="{}"}}"#,
            pair.host_if
        )),
        0
    );

    // Back under the same name (a new interface index): attached again.
    pair.create_link();
    agent
        .stderr_line("interface is back", TIMEOUT)
        .unwrap_or_else(|| panic!("no `is back` line:\n{}", agent.stderr_text()));
    let s = scrape_until(addr, TIMEOUT, "xdp_attached 1", |s| {
        attached_value(s, &pair.host_if) == Some(1.0)
    });
    assert_eq!(
        s.count(&format!(
            r#"udp_agent_xdp_reattached_total{{iface="{}"}}"#,
            pair.host_if
        )),
        1
    );
    pair.warm_up(&agent, false, 40171, PORT);
    const N: usize = 50;
    pair.send_udp(false, 41170, PORT, &payloads("after", N));
    let evs = agent.wait_from(41170, N);
    assert_eq!(evs.len(), N, "each datagram once");
    for e in &evs {
        assert_eq!(e.interface, pair.host_if, "{}", e.line);
        assert_eq!(e.dst_port, PORT);
    }
    let texts: BTreeSet<String> = evs.iter().map(|e| e.text()).collect();
    assert_eq!(texts.len(), N);

    let stopped = agent.terminate();
    assert!(
        stopped.status.success(),
        "exit {}: {}",
        stopped.status,
        stopped.stderr
    );
}

#[test]
fn several_interfaces_are_captured_and_named() {
    let test = "hotplug-two";
    if !privileged(test) {
        return;
    }
    let a = VethNs::new(test);
    let b = VethNs::new(test);
    let pins = pin_dir(test);
    let agent = Agent::run(
        &a.host_if,
        &pins,
        &["--iface", &b.host_if, "--port", &PORT.to_string()],
    );
    for name in [&a.host_if, &b.host_if] {
        let line = agent
            .stderr_line(&format!("iface=\"{name}\""), Duration::from_secs(1))
            .unwrap_or_else(|| panic!("no attach line for {name}:\n{}", agent.stderr_text()));
        assert!(line.contains("attached"), "{line}");
    }
    a.warm_up(&agent, false, 40172, PORT);
    b.warm_up(&agent, false, 40173, PORT);
    const N: usize = 20;
    a.send_udp(false, 41172, PORT, &payloads("a", N));
    b.send_udp(false, 41173, PORT, &payloads("b", N));
    for (pair, src) in [(&a, 41172), (&b, 41173)] {
        let evs = agent.wait_from(src, N);
        assert_eq!(evs.len(), N);
        for e in evs {
            assert_eq!(e.interface, pair.host_if, "{}", e.line);
            assert_eq!(e.src_addr, pair.ns_v4.to_string());
            assert_eq!(e.dst_addr, pair.host_v4.to_string());
        }
    }
}

#[test]
fn waits_for_an_interface_that_does_not_exist_yet() {
    let test = "hotplug-wait";
    if !privileged(test) {
        return;
    }
    let pair = VethNs::without_link(test);
    assert!(!pair.link_exists());
    let pins = pin_dir(test);

    // Without --wait-for-iface a missing interface stays an error.
    let out = test_support::agent_command()
        .args(["run", "--iface", &pair.host_if, "--port", "9"])
        .arg("--pin-dir")
        .arg(&pins)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown interface"),
        "{err}"
    );

    let agent = Agent::run(
        &pair.host_if,
        &pins,
        &[
            "--port",
            &PORT.to_string(),
            "--wait-for-iface",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    assert!(
        agent.stderr_text().contains("attaching when it appears"),
        "{}",
        agent.stderr_text()
    );
    let addr = metrics_addr(&agent);
    let s = scrape(addr);
    assert_eq!(
        s.get(&format!(
            r#"udp_agent_xdp_attached{{iface="{}",mode="none"}}"#,
            pair.host_if
        )),
        0.0
    );

    pair.create_link();
    agent
        .stderr_line("interface appeared", TIMEOUT)
        .unwrap_or_else(|| panic!("no `appeared` line:\n{}", agent.stderr_text()));
    pair.warm_up(&agent, false, 40174, PORT);
    pair.send_udp(false, 41174, PORT, &[b"late but here".to_vec()]);
    let evs = agent.wait_from(41174, 1);
    assert_eq!(evs[0].payload, b"late but here");
    assert_eq!(evs[0].interface, pair.host_if);
    let s = scrape(addr);
    assert_eq!(attached_value(&s, &pair.host_if), Some(1.0));
}
