//! A captured packet as a PutEvents request entry (DESIGN.md, "The event").
//!
//! `Detail` keys are PascalCase as in the article and are a contract: users'
//! rules match on them, so keys are only ever added, never renamed.

use std::{ffi::CStr, net::IpAddr, sync::Arc, time::SystemTime};

#[cfg(test)]
use base64::{Engine as _, engine::general_purpose::STANDARD};
#[cfg(test)]
use serde::Serialize;

use crate::{
    clock::WallClock,
    record::{Packet, PacketView},
};

pub const DEFAULT_SOURCE: &str = "udp.raw";
pub const DEFAULT_DETAIL_TYPE: &str = "UdpPacket";
pub const DEFAULT_EVENT_BUS: &str = "default";
/// PutEvents' `Time` counts as 14 bytes in the entry size (AWS "Calculating
/// Amazon EventBridge PutEvents event entry size").
pub const TIME_SIZE: usize = 14;

/// An entry's `Detail`: a JSON object that PutEvents takes as a string, so
/// both sinks write it escaped inside a JSON string (`{\"Destination\":…`).
/// It is kept in that form — the encoder writes it escaped to begin with —
/// so a sink copies it instead of escaping every byte of every packet
/// (perf on the capture path: escaping was ~29% of the agent's CPU). Its
/// size as AWS counts it, the unescaped text's, is kept beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    escaped: String,
    json_len: usize,
}

impl Detail {
    /// `json` escaped as the inside of a JSON string literal.
    pub fn from_json(json: &str) -> Detail {
        let mut escaped = String::with_capacity(json.len() + 8);
        push_json_str(&mut escaped, json);
        // Keep what lies between the quotes, in place.
        escaped.pop();
        escaped.remove(0);
        Detail {
            escaped,
            json_len: json.len(),
        }
    }

    /// A Detail as [`Detail::escaped`] and [`Detail::len`] gave it (the
    /// spool stores Details in that form, behind a checksum).
    pub fn from_escaped(escaped: String, json_len: usize) -> Detail {
        Detail { escaped, json_len }
    }

    /// The text between the quotes of the JSON string.
    pub fn escaped(&self) -> &str {
        &self.escaped
    }

    /// Bytes of the JSON text (UTF-8), as AWS counts them.
    pub fn len(&self) -> usize {
        self.json_len
    }

    pub fn is_empty(&self) -> bool {
        self.json_len == 0
    }

    /// The JSON text itself (for the SDK, which escapes it again).
    pub fn json(&self) -> String {
        let mut quoted = String::with_capacity(self.escaped.len() + 2);
        quoted.push('"');
        quoted.push_str(&self.escaped);
        quoted.push('"');
        serde_json::from_str(&quoted).expect("a Detail holds a valid escaped JSON string")
    }
}

impl From<&str> for Detail {
    fn from(json: &str) -> Detail {
        Detail::from_json(json)
    }
}

impl From<String> for Detail {
    fn from(json: String) -> Detail {
        Detail::from_json(&json)
    }
}

/// One PutEvents request entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub source: Arc<str>,
    pub detail_type: Arc<str>,
    pub event_bus_name: Arc<str>,
    /// The JSON object PutEvents takes as a string, kept escaped.
    pub detail: Detail,
    /// Wall-clock capture time.
    pub time: SystemTime,
    /// CLOCK_MONOTONIC at capture (as `time`), for latency measurement.
    pub capture_ns: u64,
}

impl Entry {
    /// The entry's size as AWS counts it against the 256 KB request limit:
    /// Time (14 bytes), Source, DetailType and Detail as UTF-8 bytes
    /// (Resources would count too; we send none).
    pub fn aws_size(&self) -> usize {
        TIME_SIZE + self.source.len() + self.detail_type.len() + self.detail.len()
    }

    /// Billed events: each started 64 KB of an entry is one event
    /// (EventBridge pricing).
    pub fn billed_events(&self) -> u64 {
        self.aws_size().div_ceil(64 * 1024) as u64
    }

    /// The entry as one JSON line, exactly the fields of the PutEvents request
    /// entry (the stdout sink's output; usable with `aws events put-events`).
    pub fn to_json_line(&self) -> String {
        let mut out = String::with_capacity(self.detail.escaped().len() + 160);
        self.write_json_line(&mut out);
        out
    }

    /// Appends [`to_json_line`](Self::to_json_line)'s text to `out`
    /// (written by hand: this runs once per packet).
    pub fn write_json_line(&self, out: &mut String) {
        out.push_str("{\"Source\":");
        push_json_str(out, &self.source);
        out.push_str(",\"DetailType\":");
        push_json_str(out, &self.detail_type);
        out.push_str(",\"Detail\":\"");
        out.push_str(self.detail.escaped());
        out.push_str("\",\"Time\":\"");
        push_rfc3339_millis(out, self.time);
        out.push_str("\",\"EventBusName\":");
        push_json_str(out, &self.event_bus_name);
        out.push('}');
    }
}

/// What follows the backslash for each byte a JSON string must escape
/// (`u`: `\\u00XX`), 0 for the bytes written as they are: control
/// characters, `"` and `\\`, escaped as serde_json escapes them.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Bytes of `w` (little-endian) that need escaping get their high bit set
/// in the result. Above a true hit a byte may be flagged falsely (a borrow),
/// but the lowest flagged byte is always a true hit, which is all the
/// caller uses.
#[inline]
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 (bytes from 0x80 up are excluded by `!w`).
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    // A zero byte after xor: `"` or `\`.
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGH
}

/// Appends `s` as a JSON string literal (quotes included), escaping as
/// RFC 8259 requires, byte for byte what serde_json writes.
pub fn push_json_str(out: &mut String, s: &str) {
    // SAFETY: `push_json_bytes` appends `s`'s UTF-8 sequences whole (it
    // only ever splits `s` before an ASCII byte) and ASCII escapes, so
    // `out` stays UTF-8.
    push_json_bytes(unsafe { out.as_mut_vec() }, s);
}

/// [`push_json_str`] for a byte buffer. Runs over every byte of every
/// Detail both sinks send (the stdout line, the PutEvents request body):
/// sixteen bytes are copied to `out` at a time, whether or not they hold
/// a byte to escape, and only the part before that byte is kept, so a run
/// without escapes costs one load, one compare and one store per sixteen
/// bytes, and an escape no call into memcpy.
pub fn push_json_bytes(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let n = bytes.len();
    // Invariant: at least `n - i + 17` bytes of spare capacity (the rest
    // unescaped, a chunk's overshoot, the closing quote). A chunk keeps it
    // (it consumes as many bytes as it keeps); an escape restores it.
    out.reserve(n + 18);
    out.push(b'"');
    let mut i = 0;
    // The buffer's pointer and length live in registers in the loop.
    let mut dst = out.as_mut_ptr();
    let mut len = out.len();
    loop {
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`: sixteen bytes of `bytes` at `i`.
            let chunk: &[u8; 16] = unsafe { &*bytes.as_ptr().add(i).cast::<[u8; 16]>() };
            let k = first_escape16(chunk);
            // SAFETY: the invariant leaves room for sixteen bytes at `len`;
            // only the `k` before the first escape are kept.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst.add(len), 16) };
            // A branch, not `i += k`: the next load then waits for no
            // compare (the loop would be latency-bound).
            if k == 16 {
                len += 16;
                i += 16;
                continue;
            }
            len += k;
            i += k;
            break;
        }
        // Fewer than sixteen bytes left, or `bytes[i]` needs escaping.
        while i < n && ESCAPE[usize::from(bytes[i])] == 0 {
            // SAFETY: within the invariant's room.
            unsafe { *dst.add(len) = bytes[i] };
            len += 1;
            i += 1;
        }
        if i == n {
            break;
        }
        let b = bytes[i];
        i += 1;
        // An escape writes up to six bytes for the one it consumes: keep
        // the invariant's room for the rest after it.
        let room = n - i + 17 + 6;
        if out.capacity() - len < room {
            // SAFETY: `len` bytes are initialised (all written above).
            unsafe { out.set_len(len) };
            out.reserve(room);
            dst = out.as_mut_ptr();
        }
        let e = ESCAPE[usize::from(b)];
        // SAFETY: room for six bytes at `len` (checked above).
        unsafe {
            *dst.add(len) = b'\\';
            if e == b'u' {
                *dst.add(len + 1) = b'u';
                *dst.add(len + 2) = b'0';
                *dst.add(len + 3) = b'0';
                *dst.add(len + 4) = HEX[usize::from(b >> 4)];
                *dst.add(len + 5) = HEX[usize::from(b & 0xF)];
                len += 6;
            } else {
                *dst.add(len + 1) = e;
                len += 2;
            }
        }
    }
    // SAFETY: as above.
    unsafe { out.set_len(len) };
    out.push(b'"');
}

/// The index in `chunk` of the first byte that needs escaping, or 16.
#[inline(always)]
fn first_escape16(chunk: &[u8; 16]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is always there on x86-64; the load reads the 16
        // bytes of `chunk`.
        let m = unsafe {
            let x = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            // Unsigned x <= 0x1F: a control byte.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8(0x1F)), _mm_set1_epi8(0x1F));
            let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(control, _mm_or_si128(quote, backslash))) as u32
        };
        // Bit 16 stops the count at 16 when nothing is flagged.
        (m | 1 << 16).trailing_zeros() as usize
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (lo, hi) = chunk.split_at(8);
        let lo = escape_mask(u64::from_le_bytes(lo.try_into().expect("8 bytes")));
        if lo != 0 {
            return (lo.trailing_zeros() / 8) as usize;
        }
        let hi = escape_mask(u64::from_le_bytes(hi.try_into().expect("8 bytes")));
        if hi != 0 {
            return 8 + (hi.trailing_zeros() / 8) as usize;
        }
        16
    }
}

/// Appends `t` as RFC 3339 UTC with milliseconds (`2026-11-27T23:33:17.000Z`),
/// formatting the date and time of day once per second.
fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    use std::{cell::RefCell, fmt::Write as _, time::UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            // "YYYY-MM-DDTHH:MM:SSZ" without the Z.
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            c.1 = text.trim_end_matches('Z').to_string();
            c.0 = secs;
        }
        out.push_str(&c.1);
    });
    let _ = write!(out, ".{:03}Z", since.subsec_millis());
}

#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Endpoint {
    address: String,
    port: u16,
}

/// The `Detail` object as serde would write it: the reference the
/// hand-written [`detail_json`] is tested against. Field order is the order
/// users see.
#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SerdeDetail<'a> {
    destination: Endpoint,
    source: Endpoint,
    payload: String,
    length: u32,
    truncated: bool,
    interface: &'a str,
    ip_version: u8,
}

/// Turns packets into entries.
pub struct Encoder {
    source: Arc<str>,
    detail_type: Arc<str>,
    event_bus_name: Arc<str>,
    clock: WallClock,
    /// Interface index → the Detail's `"Interface":"name"` member, written
    /// once rather than per packet. A host has few interfaces: a list
    /// searched from the front beats hashing the index for every packet.
    interfaces: Vec<(u32, Member)>,
}

impl Encoder {
    pub fn new(source: &str, detail_type: &str, event_bus_name: &str, clock: WallClock) -> Self {
        Self {
            source: source.into(),
            detail_type: detail_type.into(),
            event_bus_name: event_bus_name.into(),
            clock,
            interfaces: Vec::new(),
        }
    }

    /// Names an interface up front (the agent knows the ones it attached to).
    pub fn name_interface(&mut self, ifindex: u32, name: &str) {
        let member = interface_member(name);
        match self.interfaces.iter_mut().find(|(i, _)| *i == ifindex) {
            Some((_, m)) => *m = member,
            None => self.interfaces.push((ifindex, member)),
        }
    }

    pub fn set_clock(&mut self, clock: WallClock) {
        self.clock = clock;
    }

    pub fn encode(&mut self, p: &Packet) -> Entry {
        self.encode_view(&p.view())
    }

    /// Encodes a packet borrowed from the ring (no copy of the payload
    /// before it is base64-encoded).
    pub fn encode_view(&mut self, p: &PacketView<'_>) -> Entry {
        debug_assert!(
            !p.coarse_time,
            "a coarse stamp is narrowed (PacketView::narrow_time) before it is encoded"
        );
        let at = match self.interfaces.iter().position(|(i, _)| *i == p.ifindex) {
            Some(at) => at,
            None => {
                let name = interface_name(p.ifindex);
                self.interfaces.push((p.ifindex, interface_member(&name)));
                self.interfaces.len() - 1
            }
        };
        let interface = &self.interfaces[at].1;
        Entry {
            source: self.source.clone(),
            detail_type: self.detail_type.clone(),
            event_bus_name: self.event_bus_name.clone(),
            detail: detail_json(p, interface),
            time: self.clock.to_system_time(p.timestamp_ns),
            capture_ns: p.timestamp_ns,
        }
    }
}

/// The Detail's `,"Interface":"<name>"` member, escaped as a Detail is
/// kept, with the bytes escaping added to it.
struct Member {
    escaped: Box<str>,
    added: usize,
}

/// `,"Interface":"<name>"`: the name escaped in the JSON, then the member
/// escaped again as the Detail is kept.
fn interface_member(name: &str) -> Member {
    let mut json = String::from(",\"Interface\":");
    push_json_str(&mut json, name);
    let d = Detail::from_json(&json);
    Member {
        added: d.escaped.len() - d.json_len,
        escaped: d.escaped.into_boxed_str(),
    }
}

/// Quotes in the Detail that [`detail_json`] writes, outside the interface
/// member: ten keys and three string values. Each is written as `\"`, one
/// byte more than the JSON has (the tests check the lengths against the
/// unescaped text).
const DETAIL_QUOTES: usize = 26;

/// The `Detail` for `p`, written by hand into one allocation, escaped as
/// [`Detail`] keeps it (this runs once per packet; `fmt` machinery would
/// cost more than the rest put together). Unescaped, the same text as
/// serialising `SerdeDetail` with serde, which the tests check (escaped
/// text and length both). Addresses, numbers and base64 need no escaping.
fn detail_json(p: &PacketView<'_>, interface: &Member) -> Detail {
    let mut d =
        String::with_capacity(200 + interface.escaped.len() + p.payload.len().div_ceil(3) * 4);
    let mut num = itoa::Buffer::new();
    d.push_str(r#"{\"Destination\":{\"Address\":\""#);
    push_ip(&mut d, &p.dst);
    d.push_str(r#"\",\"Port\":"#);
    d.push_str(num.format(p.dst_port));
    d.push_str(r#"},\"Source\":{\"Address\":\""#);
    push_ip(&mut d, &p.src);
    d.push_str(r#"\",\"Port\":"#);
    d.push_str(num.format(p.src_port));
    d.push_str(r#"},\"Payload\":\""#);
    push_base64(&mut d, p.payload);
    d.push_str(r#"\",\"Length\":"#);
    d.push_str(num.format(p.wire_len));
    d.push_str(if p.truncated() {
        r#",\"Truncated\":true"#
    } else {
        r#",\"Truncated\":false"#
    });
    d.push_str(&interface.escaped);
    d.push_str(if p.ip_version() == 4 {
        r#",\"IpVersion\":4}"#
    } else {
        r#",\"IpVersion\":6}"#
    });
    Detail {
        json_len: d.len() - DETAIL_QUOTES - interface.added,
        escaped: d,
    }
}

/// Appends standard base64 (with padding) of `bytes`: SIMD where the CPU
/// has it (`base64-simd` picks AVX2/SSSE3/NEON at run time), several times
/// faster than a scalar encoder on the long payloads.
fn push_base64(out: &mut String, bytes: &[u8]) {
    base64_simd::STANDARD.encode_append(bytes, out);
}

/// An address as `Display` writes it; IPv4 without the formatter.
fn push_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // At most "255.255.255.255".
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.push_str(std::str::from_utf8(&text[..n]).expect("ASCII digits and dots"));
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The kernel's name for an interface index, or `if<N>` if it has none (any
/// more).
pub fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn packet() -> Packet {
        Packet {
            timestamp_ns: 5_000_000,
            ifindex: 3,
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            src_port: 40000,
            dst_port: 514,
            wire_len: 5,
            payload: b"hello".to_vec(),
        }
    }

    fn encoder() -> Encoder {
        // 2026-11-27T23:33:17Z minus the 5 ms timestamp below.
        let clock = WallClock::with_offset_ns(1_795_822_397_000_000_000 - 5_000_000);
        let mut e = Encoder::new(
            DEFAULT_SOURCE,
            DEFAULT_DETAIL_TYPE,
            DEFAULT_EVENT_BUS,
            clock,
        );
        e.name_interface(3, "veth0");
        e
    }

    #[test]
    fn golden_ipv4_entry() {
        let entry = encoder().encode(&packet());
        assert_eq!(
            entry.to_json_line(),
            r#"{"Source":"udp.raw","DetailType":"UdpPacket","Detail":"{\"Destination\":{\"Address\":\"198.18.0.1\",\"Port\":514},\"Source\":{\"Address\":\"198.18.0.2\",\"Port\":40000},\"Payload\":\"aGVsbG8=\",\"Length\":5,\"Truncated\":false,\"Interface\":\"veth0\",\"IpVersion\":4}","Time":"2026-11-27T23:33:17.000Z","EventBusName":"default"}"#
        );
        assert_eq!(entry.time, UNIX_EPOCH + Duration::from_secs(1_795_822_397));
    }

    #[test]
    fn golden_ipv6_truncated_entry() {
        let mut p = packet();
        p.src = "fd00::2".parse().unwrap();
        p.dst = "fd00::1".parse().unwrap();
        p.wire_len = 9;
        p.payload = vec![0, 255, 1];
        let entry = encoder().encode(&p);
        assert_eq!(
            entry.detail.json(),
            r#"{"Destination":{"Address":"fd00::1","Port":514},"Source":{"Address":"fd00::2","Port":40000},"Payload":"AP8B","Length":9,"Truncated":true,"Interface":"veth0","IpVersion":6}"#
        );
    }

    #[test]
    fn destination_port_is_a_json_number_rules_can_match() {
        let entry = encoder().encode(&packet());
        let detail: serde_json::Value = serde_json::from_str(&entry.detail.json()).unwrap();
        assert_eq!(detail["Destination"]["Port"], serde_json::json!(514));
        assert!(detail["Destination"]["Port"].is_u64());
    }

    #[test]
    fn empty_payload_is_an_empty_string() {
        let mut p = packet();
        p.wire_len = 0;
        p.payload.clear();
        let detail: serde_json::Value =
            serde_json::from_str(&encoder().encode(&p).detail.json()).unwrap();
        assert_eq!(detail["Payload"], "");
        assert_eq!(detail["Length"], 0);
        assert_eq!(detail["Truncated"], false);
    }

    #[test]
    fn size_as_aws_counts_it() {
        let entry = encoder().encode(&packet());
        assert_eq!(
            entry.aws_size(),
            14 + "udp.raw".len() + "UdpPacket".len() + entry.detail.len()
        );
        assert_eq!(entry.billed_events(), 1);
        let mut big = entry.clone();
        big.detail = "x".repeat(64 * 1024).into();
        assert_eq!(big.billed_events(), 2);
    }

    #[test]
    fn unknown_interface_gets_a_stable_name() {
        assert_eq!(interface_name(u32::MAX), format!("if{}", u32::MAX));
    }
}

#[cfg(test)]
mod hand_written_json {
    use super::*;

    fn serde_detail(p: &Packet, interface: &str) -> String {
        serde_json::to_string(&SerdeDetail {
            destination: Endpoint {
                address: p.dst.to_string(),
                port: p.dst_port,
            },
            source: Endpoint {
                address: p.src.to_string(),
                port: p.src_port,
            },
            payload: STANDARD.encode(&p.payload),
            length: p.wire_len,
            truncated: p.truncated(),
            interface,
            ip_version: p.ip_version(),
        })
        .unwrap()
    }

    #[test]
    fn detail_matches_serde_for_awkward_inputs() {
        let mut p = Packet {
            timestamp_ns: 0,
            ifindex: 1,
            src: "fd00::2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            src_port: 1,
            dst_port: 65535,
            wire_len: 70000,
            payload: (0..=255).collect(),
        };
        for iface in ["eth0", "we\"ird\\name", "tab\there", "\u{1}ctl", "ünï"] {
            let d = detail_json(&p.view(), &interface_member(iface));
            assert_eq!(d, Detail::from_json(&serde_detail(&p, iface)), "{iface:?}");
            assert_eq!(d.json(), serde_detail(&p, iface), "{iface:?}");
        }
        for (src, dst) in [
            ("0.0.0.0", "255.255.255.255"),
            ("10.200.3.99", "198.18.0.1"),
            ("::", "fd00::1:0:0:2"),
            ("::ffff:198.18.0.1", "fd00:0:0:1::"),
        ] {
            p.src = src.parse().unwrap();
            p.dst = dst.parse().unwrap();
            for wire_len in [256, 257] {
                p.wire_len = wire_len;
                assert_eq!(
                    detail_json(&p.view(), &interface_member("lo")),
                    Detail::from_json(&serde_detail(&p, "lo")),
                    "{src} {dst} {wire_len}"
                );
            }
        }
        p.payload.clear();
        assert_eq!(
            detail_json(&p.view(), &interface_member("lo")),
            Detail::from_json(&serde_detail(&p, "lo"))
        );
    }

    /// Long strings mixing plain runs, every kind of escape and multi-byte
    /// characters, into buffers of every fill level (the spare-capacity
    /// checks and the reserves as escapes grow the output).
    #[test]
    fn escaping_matches_serde_for_long_mixed_strings() {
        let pieces = [
            "a",
            "bcdefghijklmnopq",
            "\"",
            "\\",
            "\n",
            "\u{1}",
            "\u{1f}",
            "é",
            "€",
            "😀",
            "\u{7f}",
            "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..400 {
            let mut s = String::new();
            let target = round * 3 % 700;
            while s.len() < target {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let mut out = String::with_capacity(round % 37);
            out.push_str(&"p".repeat(round % 37));
            let prefix = out.clone();
            push_json_str(&mut out, &s);
            assert_eq!(
                out,
                format!("{prefix}{}", serde_json::to_string(&s).unwrap())
            );
        }
    }

    /// Every ASCII character and some non-ASCII ones, at every offset
    /// within and across the sixteen-byte chunks the escaper tests, alone
    /// and next to another escape.
    #[test]
    fn escaping_matches_serde_at_every_offset() {
        let specials: Vec<String> = (0u8..0x80)
            .map(|b| (b as char).to_string())
            .chain(["é", "€", "😀", "\u{7f}", "\u{80}", "\u{a0}"].map(String::from))
            .collect();
        for special in &specials {
            for at in 0..20 {
                for len in [at, at + 1, at + 9, 24, 41] {
                    let mut s = "x".repeat(at);
                    s.push_str(special);
                    if len > at {
                        s.push('"');
                    }
                    while s.len() < len {
                        s.push('a');
                    }
                    let mut out = String::from("prefix");
                    push_json_str(&mut out, &s);
                    assert_eq!(
                        out,
                        format!("prefix{}", serde_json::to_string(&s).unwrap()),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn json_line_matches_serde() {
        let entry = Entry {
            source: Arc::from("a\"b"),
            detail_type: Arc::from("T\\"),
            event_bus_name: Arc::from("arn:aws:events:us-east-1:1:event-bus/x"),
            detail: "{\"k\":\"\u{7}\n\"}".into(),
            time: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_822_397_042),
            capture_ns: 0,
        };
        let expected = serde_json::json!({
            "Source": "a\"b",
            "DetailType": "T\\",
            "Detail": "{\"k\":\"\u{7}\n\"}",
            "Time": "2026-11-27T23:33:17.042Z",
            "EventBusName": "arn:aws:events:us-east-1:1:event-bus/x",
        });
        let line = entry.to_json_line();
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, expected);
        // Same bytes as serde, key order included.
        let mut ser = String::from("{");
        for (k, v) in [
            ("Source", "a\"b"),
            ("DetailType", "T\\"),
            ("Detail", "{\"k\":\"\u{7}\n\"}"),
            ("Time", "2026-11-27T23:33:17.042Z"),
            ("EventBusName", "arn:aws:events:us-east-1:1:event-bus/x"),
        ] {
            if ser.len() > 1 {
                ser.push(',');
            }
            ser.push_str(&serde_json::to_string(k).unwrap());
            ser.push(':');
            ser.push_str(&serde_json::to_string(v).unwrap());
        }
        ser.push('}');
        assert_eq!(line, ser);
    }
}
