//! The agent's CPU per datagram reassembled from IP fragments, against the
//! same datagram whole.
//!
//! Builds `N` UDP datagrams of `SIZE` payload bytes (default 8,000) the way
//! the XDP program hands them over: as the ring records of their IP
//! fragments at `MTU` (default 1,500: six fragments), and as one
//! whole-datagram record each (as a jumbo frame would carry it). Then
//! times, on this thread's CPU clock, what the capture loop does per
//! datagram: decode every record and encode the event (Detail JSON,
//! base64) — fragment records through the reassembler first. `ROUNDS`
//! rounds (default 9) alternate the two. Prints one JSON line:
//! nanoseconds per datagram, round by round.
//!
//! ```text
//! cargo build --release -p udp-agent --example reassembly_speed
//! target/release/examples/reassembly_speed
//! ```
//!
//! `udp-bench all` runs it for the benchmark's fragment rows when given
//! `--reassembly-speed PATH` (`cargo xtask bench` does).

use std::{hint::black_box, sync::Arc};

use test_support::thread_cpu_ns;
use udp_agent::{
    clock::WallClock,
    encode::Encoder,
    reassembly::{Reassembler, Settings},
    record::{self, Record},
    stats::PipelineStats,
};
use udp_ebpf_common::{
    IP_V4, RECORD_COARSE_TIME, RECORD_FRAGMENT, RECORD_MORE_FRAGMENTS, RecordHeader,
    frame::FrameBuilder,
    parse::{FragMeta, parse_fragment},
};

const SRC: [u8; 4] = [198, 18, 0, 2];
const DST: [u8; 4] = [198, 18, 0, 1];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn header(wire_len: usize, ports: (u16, u16)) -> RecordHeader {
    let mut src_addr = [0; 16];
    let mut dst_addr = [0; 16];
    src_addr[..4].copy_from_slice(&SRC);
    dst_addr[..4].copy_from_slice(&DST);
    RecordHeader {
        timestamp_ns: 1_000_000_000,
        ifindex: 1,
        wire_len: wire_len as u32,
        cap_len: wire_len as u32,
        src_port: ports.0,
        dst_port: ports.1,
        ip_version: IP_V4,
        flags: RECORD_COARSE_TIME,
        src_addr,
        dst_addr,
        ..RecordHeader::default()
    }
}

/// The fragment records of datagram `id`, as the program writes them.
fn fragment_records(b: &FrameBuilder, mtu: usize) -> Vec<Vec<u8>> {
    b.fragments(mtu)
        .iter()
        .map(|f| {
            let (start, end) = (f.as_ptr() as usize, f.as_ptr() as usize + f.len());
            let (Ok(m), _) = parse_fragment(start, end) else {
                panic!("the builder's fragment does not parse");
            };
            let FragMeta {
                offset,
                more,
                id,
                data_offset,
                data_len,
                src_port,
                dst_port,
                ..
            } = m;
            let data = &f[data_offset as usize..(data_offset + data_len) as usize];
            let mut h = header(data.len(), (src_port, dst_port));
            h.flags |= RECORD_FRAGMENT | if more { RECORD_MORE_FRAGMENTS } else { 0 };
            h.frag_offset = (offset / 8) as u16;
            h.frag_id = id;
            record::encode_record(&h, data)
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env_or("N", 20_000);
    let size = env_or("SIZE", 8000);
    let mtu = env_or("MTU", 1500);
    let rounds = env_or("ROUNDS", 9);
    let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    let mut fragmented = Vec::with_capacity(n);
    let mut whole = Vec::with_capacity(n);
    for i in 0..n {
        let b = FrameBuilder::ipv4(SRC, DST)
            .frag_id(i as u32 & 0xFFFF)
            .udp(40000, 514, &payload);
        fragmented.push(fragment_records(&b, mtu));
        whole.push(record::encode_record(&header(size, (40000, 514)), &payload));
    }
    let fragments = fragmented[0].len();
    let stats = Arc::new(PipelineStats::default());
    let mut reassembler = Reassembler::new(Settings::default(), stats.clone());
    let mut encoder = Encoder::new("udp.raw", "UdpPacket", "default", WallClock::now());
    let (mut reassembled_ns, mut whole_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = thread_cpu_ns();
        for records in &fragmented {
            for r in records {
                match record::decode_record(r) {
                    Ok(Record::Fragment(f)) => {
                        if let Some(p) = reassembler.push(&f) {
                            black_box(encoder.encode_view(&p.view()));
                        }
                    }
                    other => panic!("not a fragment record: {other:?}"),
                }
            }
        }
        reassembled_ns.push((thread_cpu_ns() - t) as f64 / n as f64);
        let t = thread_cpu_ns();
        for r in &whole {
            match record::decode_record(r) {
                Ok(Record::Datagram(p)) => {
                    black_box(encoder.encode_view(&p));
                }
                other => panic!("not a datagram record: {other:?}"),
            }
        }
        whole_ns.push((thread_cpu_ns() - t) as f64 / n as f64);
    }
    let done = stats.reassembly.snapshot();
    assert_eq!(done[1], ("reassembled", (n * rounds) as u64), "{done:?}");
    assert!(reassembler.is_empty());
    println!(
        "{}",
        serde_json::json!({
            "size": size,
            "mtu": mtu,
            "fragments": fragments,
            "datagrams": n,
            "reassembled_ns": reassembled_ns,
            "whole_ns": whole_ns,
            "reassembled_median_ns": median(&mut reassembled_ns.clone()),
            "whole_median_ns": median(&mut whole_ns.clone()),
        })
    );
}
