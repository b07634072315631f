//! The payloads the format benchmarks share: udp-agent's
//! `examples/format_speed` (the encoder alone) and `udp-bench`'s
//! whole-agent rows measure the same four.

/// A 180-byte RFC 3164 line (nginx's access log through syslog).
pub const SYSLOG_3164: &[u8] = b"<134>Nov 27 23:42:18 web01 nginx[2211]: 198.51.100.7 - - [27/Nov/2026:23:42:18 +0000] \"GET /api/v1/orders?id=8812 HTTP/1.1\" 200 5123 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" rt=0.012\n";

/// A 183-byte RFC 5424 line with structured data (a router's BGP event).
pub const SYSLOG_5424: &[u8] = br#"<165>1 2026-11-27T23:42:18.123+01:00 router1 rpd 1234 BGP_STATE [junos@2636.1.1.1.2.40 peer-name="192.0.2.1" old-state="Established" new-state="Idle"] BGP peer 192.0.2.1 changed state"#;

/// A 191-byte JSON document (an application's log record).
pub const JSON_DOC: &[u8] = br#"{"ts":"2026-11-27T23:42:18.123Z","level":"error","service":"checkout","msg":"payment declined","order":8812,"amount":129.95,"tags":["card","retry"],"trace":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;

/// 200 pseudo-random bytes (xorshift64, fixed seed): a binary payload.
pub fn binary() -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..200)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}
