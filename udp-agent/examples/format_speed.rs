//! The agent's CPU per event for each payload format, against base64 of
//! the same payload measured in the same run.
//!
//! For each payload (a 180-byte RFC 3164 syslog line, an RFC 5424 line
//! with structured data, a ~200-byte JSON document, 200 random bytes) and
//! each format that applies, it encodes the datagram into its entry and
//! writes the entry's stdout line (what the stdout sink does; the
//! EventBridge sink copies the same escaped Detail into its request body),
//! and reads this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`). Rounds
//! interleave the formats, so a busy machine slows them alike; each row is
//! the median over `ROUNDS` (default 15) rounds of `N` (default 20,000)
//! events. `packed` is the cost per datagram of gathering them into packs
//! of 64 KB (the pack's own line counted once per pack).
//!
//! ```text
//! cargo run --release -p udp-agent --example format_speed
//! ```
//!
//! With `JSON=1` it prints one JSON document instead of the table: every
//! row's per-round figures, for `udp-bench` (the bench's format rows).

use std::time::Duration;

use test_support::{payloads, thread_cpu_ns};
use udp_agent::{
    clock::WallClock,
    encode::{Encoder, pack::PackSettings},
    record::Packet,
};
use udp_ebpf_common::{Encoding, Format};

fn packet(payload: &[u8], format: Format, pack: bool) -> Packet {
    Packet {
        timestamp_ns: 1,
        ifindex: 1,
        src: "198.18.0.2".parse().unwrap(),
        dst: "198.18.0.1".parse().unwrap(),
        src_port: 40000,
        dst_port: 514,
        wire_len: payload.len() as u32,
        payload: payload.to_vec(),
        encoding: Encoding { format, pack },
    }
}

/// CPU ns per event of encoding `n` copies of `p` and writing their lines.
fn measure(e: &mut Encoder, p: &Packet, n: usize, line: &mut String) -> f64 {
    let view = p.view();
    let start = thread_cpu_ns();
    for _ in 0..n {
        if let Some(entry) = e.push(&view) {
            line.clear();
            entry.write_json_line(line);
        }
    }
    while let Some(entry) = e.pop_pack() {
        line.clear();
        entry.write_json_line(line);
    }
    (thread_cpu_ns() - start) as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("N", 20_000);
    let rounds = env("ROUNDS", 15);
    let (syslog3164, syslog5424, json) = (
        payloads::SYSLOG_3164.to_vec(),
        payloads::SYSLOG_5424.to_vec(),
        payloads::JSON_DOC.to_vec(),
    );
    let binary = payloads::binary();
    let cases: Vec<(&str, &[u8], Format, bool)> = vec![
        ("syslog 3164", &syslog3164, Format::Base64, false),
        ("syslog 3164", &syslog3164, Format::Text, false),
        ("syslog 3164", &syslog3164, Format::Hex, false),
        ("syslog 3164", &syslog3164, Format::Syslog, false),
        ("syslog 3164", &syslog3164, Format::Base64, true),
        ("syslog 3164", &syslog3164, Format::Syslog, true),
        ("syslog 5424", &syslog5424, Format::Base64, false),
        ("syslog 5424", &syslog5424, Format::Syslog, false),
        ("json", &json, Format::Base64, false),
        ("json", &json, Format::Json, false),
        ("binary", &binary, Format::Base64, false),
        ("binary", &binary, Format::Hex, false),
    ];
    let mut encoder = Encoder::new("udp.raw", "UdpPacket", "default", WallClock::now());
    encoder.name_interface(1, "eth0");
    encoder.set_packing(PackSettings {
        max_bytes: 64 * 1024,
        linger: Duration::from_secs(3600),
    });
    let packets: Vec<Packet> = cases
        .iter()
        .map(|(_, p, f, pack)| packet(p, *f, *pack))
        .collect();
    // `CASE=i` runs only row i (for a profiler).
    if let Some(i) = std::env::var("CASE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut line = String::new();
        let ns = measure(&mut encoder, &packets[i], n * rounds, &mut line);
        println!("{} {:?}: {ns:.0} ns/event", cases[i].0, cases[i].2);
        return;
    }
    let mut line = String::with_capacity(128 * 1024);
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, p) in packets.iter().enumerate() {
            samples[i].push(measure(&mut encoder, p, n, &mut line));
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let json = std::env::var_os("JSON").is_some_and(|v| v == "1");
    if !json {
        println!("CPU: {cpu}; {rounds} rounds of {n} events, medians");
        println!(
            "| payload | bytes | format | ns CPU/datagram | × base64 | entry bytes/datagram | datagrams/entry |"
        );
        println!("|---|---|---|---|---|---|---|");
    }
    let mut rows = Vec::new();
    for (i, (name, payload, format, pack)) in cases.iter().enumerate() {
        let base = cases
            .iter()
            .position(|(n, _, f, p)| n == name && *f == Format::Base64 && !p)
            .unwrap();
        let (bytes, per_entry) = sizes(&packets[i]);
        let label = if *pack {
            format!("{} packed", format.name())
        } else {
            format.name().to_owned()
        };
        let ns = median(&mut samples[i].clone());
        let base_ns = median(&mut samples[base].clone());
        if json {
            rows.push(serde_json::json!({
                "payload": name,
                "bytes": payload.len(),
                "format": format.name(),
                "packed": pack,
                "ns": samples[i],
                "base64_ns": samples[base],
                "entry_bytes": bytes,
                "per_entry": per_entry,
            }));
        } else {
            println!(
                "| {name} | {} | {label} | {ns:.0} | {:.2} | {bytes:.0} | {per_entry:.1} |",
                payload.len(),
                ns / base_ns,
            );
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"cpu": cpu, "rounds": rounds, "n": n, "rows": rows})
        );
    }
}

/// Entry bytes per datagram, as AWS counts them, and datagrams per entry.
fn sizes(packet: &Packet) -> (f64, f64) {
    let mut e = Encoder::new("udp.raw", "UdpPacket", "default", WallClock::now());
    e.name_interface(1, "eth0");
    e.set_packing(PackSettings {
        max_bytes: 64 * 1024,
        linger: Duration::from_secs(3600),
    });
    let view = packet.view();
    let (mut bytes, mut events) = (0usize, 0usize);
    const SIZED: usize = 100_000;
    for _ in 0..SIZED {
        if let Some(entry) = e.push(&view) {
            bytes += entry.aws_size();
            events += 1;
        }
    }
    while let Some(entry) = e.pop_pack() {
        bytes += entry.aws_size();
        events += 1;
    }
    (bytes as f64 / SIZED as f64, SIZED as f64 / events as f64)
}
