//! Helpers for the operability tests (metrics, config file, interface
//! hot-plug), on top of `support` (which they leave unchanged):
//!
//! * [`scrape`] and [`Samples`]: `GET /metrics` over a plain `TcpStream`,
//!   and the samples it returned, by series as printed.
//! * [`metrics_addr`]: where a running agent serves them (it is started with
//!   `--metrics-addr 127.0.0.1:0` and logs the port it got).
//! * [`Pair`]: a network namespace and a veth pair that a test can delete
//!   and create again under the same names, which `support::VethNs` is not
//!   made for. Slots 198.18.240.0/30 to 198.18.247.0/30 only (fd00:240:: to
//!   fd00:247:: for IPv6), each held through `support`'s slot lock files so
//!   that no other test takes the same subnet meanwhile; no default route;
//!   everything removed on drop, also when the test panics.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::support::{Agent, bind_udp, enter_netns, ip};

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// The address in the agent's "metrics: serving http://ADDR/metrics" line.
pub fn metrics_addr(agent: &Agent) -> SocketAddr {
    let needle = "metrics: serving http://";
    let line = agent
        .stderr_line(needle, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no `{needle}` log line:\n{}", agent.stderr_text()));
    let rest = &line[line.find(needle).unwrap() + needle.len()..];
    let addr = &rest[..rest.find("/metrics").expect("…/metrics in the line")];
    addr.parse()
        .unwrap_or_else(|e| panic!("`{addr}` in {line:?} is not an address: {e}"))
}

/// `GET path` with a plain HTTP/1.1 request; the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer from {addr}: {e}"));
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Samples of one scrape, by series as printed
/// (`udp_agent_kernel_packets_total{outcome="captured"}`).
#[derive(Debug)]
pub struct Samples {
    pub text: String,
    pub values: BTreeMap<String, f64>,
}

impl Samples {
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("sample line without a value: {l:?}"));
                let v = value
                    .parse()
                    .unwrap_or_else(|e| panic!("value of {l:?} is not a number: {e}"));
                (series.to_owned(), v)
            })
            .collect();
        Self {
            text: text.to_owned(),
            values,
        }
    }

    /// The value of `series`, or a panic showing the scrape.
    pub fn get(&self, series: &str) -> f64 {
        *self
            .values
            .get(series)
            .unwrap_or_else(|| panic!("no series `{series}` in the scrape:\n{}", self.text))
    }

    /// A counter's value as an integer.
    pub fn count(&self, series: &str) -> u64 {
        self.get(series) as u64
    }

    pub fn has(&self, series: &str) -> bool {
        self.values.contains_key(series)
    }

    /// The series whose name starts with `prefix`.
    pub fn matching(&self, prefix: &str) -> Vec<(&str, f64)> {
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }
}

/// Scrapes `/metrics` (status 200 or a panic).
pub fn scrape(addr: SocketAddr) -> Samples {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    Samples::parse(&body)
}

/// Scrapes until `done` holds; panics after `timeout` with the last scrape.
pub fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Samples) -> bool,
) -> Samples {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last scrape:\n{}",
                s.text
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// A veth pair that can be deleted and created again
// ---------------------------------------------------------------------------

/// The slots (third octet of 198.18.n.0/30) these tests may use.
const SLOTS: std::ops::RangeInclusive<u8> = 240..=247;

/// Claims a slot of [`SLOTS`] through the lock file `support` uses for the
/// same subnet (so `VethNs` skips it while we hold it), unless an address
/// of it is in use.
fn claim_slot() -> (u8, File) {
    let dir = std::env::temp_dir().join("udp-agent-test-slots");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let used = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for n in SLOTS {
        let path = dir.join(format!("slot-{n}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // SAFETY: valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if used.contains(&format!("198.18.{n}.")) || used.contains(&format!("fd00:{n}::")) {
            continue;
        }
        return (n, file);
    }
    panic!("no free slot in 198.18.240.0/30..198.18.247.0/30");
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A namespace `uxt-<id>` and a veth pair: `host_if` (`uxh<id>`, root
/// namespace, 198.18.n.1/30) and `ns_if` (`uxn<id>`, in the namespace,
/// 198.18.n.2/30). The link can be deleted and created again; drop removes
/// the link and the namespace.
#[derive(Debug)]
pub struct Pair {
    pub netns: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_v4: Ipv4Addr,
    pub ns_v4: Ipv4Addr,
    _slot: File,
}

impl Pair {
    /// Claims a slot and creates the namespace; with `link`, the pair too.
    pub fn new(link: bool) -> Self {
        let (n, lock) = claim_slot();
        let id = format!("{}s{n}", std::process::id());
        let p = Self {
            netns: format!("uxt-{id}"),
            host_if: format!("uxh{id}"),
            ns_if: format!("uxn{id}"),
            host_v4: Ipv4Addr::new(198, 18, n, 1),
            ns_v4: Ipv4Addr::new(198, 18, n, 2),
            _slot: lock,
        };
        assert!(p.host_if.len() <= 15);
        // Leftovers of a crashed run with the same pid.
        p.delete_link();
        ip_quiet(&["netns", "del", &p.netns]);
        ip(&["netns", "add", &p.netns]);
        ip(&["-n", &p.netns, "link", "set", "lo", "up"]);
        if link {
            p.create_link();
        }
        p
    }

    /// Creates the veth pair, addresses it and brings it up.
    pub fn create_link(&self) {
        let (host, peer, netns) = (&*self.host_if, &*self.ns_if, &*self.netns);
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns,
        ]);
        ip(&["addr", "add", &format!("{}/30", self.host_v4), "dev", host]);
        ip(&["link", "set", host, "up"]);
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{}/30", self.ns_v4),
            "dev",
            peer,
        ]);
        ip(&["-n", netns, "link", "set", peer, "up"]);
    }

    /// Deletes the pair (both ends); the namespace stays.
    pub fn delete_link(&self) {
        ip_quiet(&["link", "del", &self.host_if]);
    }

    pub fn link_exists(&self) -> bool {
        PathBuf::from(format!("/sys/class/net/{}", self.host_if)).exists()
    }

    /// Sends each payload as one datagram from the namespace's address and
    /// `src_port` to the host end's address and `dst_port`.
    pub fn send_udp(&self, src_port: u16, dst_port: u16, payloads: &[Vec<u8>]) {
        let path = PathBuf::from(format!("/var/run/netns/{}", self.netns));
        let src = SocketAddr::from((self.ns_v4, src_port));
        let dst = SocketAddr::from((self.host_v4, dst_port));
        thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&path);
                let sock = bind_udp(src);
                for p in payloads {
                    sock.send_to(p, dst)
                        .unwrap_or_else(|e| panic!("send {src} -> {dst}: {e}"));
                }
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
    }

    /// Sends a marker every 100 ms (at most 50) until the agent prints one
    /// from `src_port` (ARP resolved, program attached); returns how many
    /// were sent.
    pub fn warm_up(&self, agent: &Agent, src_port: u16, dst_port: u16) -> usize {
        for i in 0..50 {
            self.send_udp(src_port, dst_port, &[format!("warm-up {i}").into_bytes()]);
            if agent.wait_events_for(Duration::from_millis(100), |evs| {
                evs.iter().any(|e| e.src_port == src_port)
            }) {
                return i + 1;
            }
        }
        panic!(
            "no warm-up datagram from port {src_port} reached the agent on {} in 5 s; stderr:\n{}",
            self.host_if,
            agent.stderr_text()
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.delete_link();
        ip_quiet(&["netns", "del", &self.netns]);
    }
}
