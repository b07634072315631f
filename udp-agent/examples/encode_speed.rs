//! Encoding cost per packet (`PAYLOAD` bytes, default 64), for profiling: `N=20000 valgrind --tool=callgrind target/release/examples/encode_speed` counts instructions, which (unlike time) are stable on a busy machine.
use std::time::Instant;
use udp_agent::{clock::WallClock, encode::Encoder, record::Packet};
fn main() {
    let size: usize = std::env::var("PAYLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let p = Packet {
        timestamp_ns: 1,
        ifindex: 1,
        src: "198.18.0.2".parse().unwrap(),
        dst: "198.18.0.1".parse().unwrap(),
        src_port: 40000,
        dst_port: 514,
        wire_len: size as u32,
        payload: vec![7u8; size],
        encoding: Default::default(),
    };
    let mut e = Encoder::new("udp.raw", "UdpPacket", "default", WallClock::now());
    e.name_interface(1, "eth0");
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let mut total = 0;
    for _ in 0..n {
        let en = e.encode(&p);
        total += en.detail.len();
    }
    let enc = t.elapsed().as_nanos() as f64 / n as f64;
    let en = e.encode(&p);
    let t = Instant::now();
    for _ in 0..n {
        total += en.to_json_line().len();
    }
    let line = t.elapsed().as_nanos() as f64 / n as f64;
    println!("encode {enc:.0} ns/pkt, json line {line:.0} ns/pkt ({total})");
}
