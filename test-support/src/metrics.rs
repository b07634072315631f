//! The agent's `/metrics` (and other HTTP endpoints) over a plain
//! `TcpStream`: an agent started with `--metrics-addr 127.0.0.1:0` logs the
//! port it got ([`metrics_addr`]); [`scrape`] returns its samples by series
//! as printed.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::agent::Agent;

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
