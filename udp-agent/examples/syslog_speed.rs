//! The hand-written syslog parser (`encode::syslog`) against `syslog_loose`
//! on the corpus of `tests/data/syslog_corpus.txt`: CPU ns per line, the
//! median of `ROUNDS` (default 15) interleaved rounds over the corpus
//! `N` (default 2,000) times.
//!
//! ```text
//! cargo run --release -p udp-agent --example syslog_speed
//! ```

use std::hint::black_box;

use syslog_loose::{Variant, parse_message_with_year};
use test_support::thread_cpu_ns;
use udp_agent::encode::syslog;

const CORPUS: &str = include_str!("../tests/data/syslog_corpus.txt");

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, rounds) = (env("N", 2_000), env("ROUNDS", 15));
    let lines: Vec<&str> = CORPUS.lines().collect();
    let per_line = |start: u64| (thread_cpu_ns() - start) as f64 / (n * lines.len()) as f64;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = thread_cpu_ns();
        for _ in 0..n {
            for l in &lines {
                black_box(syslog::parse(black_box(l.as_bytes())));
            }
        }
        ours.push(per_line(t));
        let t = thread_cpu_ns();
        for _ in 0..n {
            for l in &lines {
                black_box(parse_message_with_year(
                    black_box(l),
                    |_| 2026,
                    Variant::Either,
                ));
            }
        }
        theirs.push(per_line(t));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "{} lines × {n}, {rounds} rounds, medians: hand-written {a:.0} ns/line, syslog_loose {b:.0} ns/line ({:.1}×)",
        lines.len(),
        b / a
    );
}
