//! A captured packet as a PutEvents request entry (the README's "The event").
//!
//! `Detail` keys are PascalCase as in the article and are a contract: users'
//! rules match on them, so keys are only ever added, never renamed.
//!
//! [`format`] writes the payload in its port's format, [`syslog`] parses
//! for the `syslog` one, [`pack`] gathers a packing port's datagrams into
//! one entry, and [`escape`] escapes what goes into a Detail.

mod escape;
mod format;
mod json;
pub mod pack;
pub mod syslog;

use std::{ffi::CStr, net::IpAddr, sync::Arc, time::SystemTime};

#[cfg(test)]
use base64::{Engine as _, engine::general_purpose::STANDARD};
#[cfg(test)]
use serde::Serialize;

pub use self::escape::{push_json_bytes, push_json_str};
use self::{
    format::{DetailWriter, lit, write_format, write_payload},
    pack::{PackSettings, Packs},
};
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

/// Appends `t` as RFC 3339 UTC with milliseconds (`2026-11-27T23:33:17.000Z`),
/// formatting the date and time of day once per second.
pub(crate) fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
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
    format: &'a str,
}

/// Turns packets into entries: one per datagram, or, for a port that
/// packs, one per pack ([`pack`]).
pub struct Encoder {
    source: Arc<str>,
    detail_type: Arc<str>,
    event_bus_name: Arc<str>,
    clock: WallClock,
    /// Interface index → the Detail's `"Interface":"name"` member, written
    /// once rather than per packet. A host has few interfaces: a list
    /// searched from the front beats hashing the index for every packet.
    interfaces: Vec<(u32, Member)>,
    /// Packs in the making.
    packs: Packs,
}

impl Encoder {
    pub fn new(source: &str, detail_type: &str, event_bus_name: &str, clock: WallClock) -> Self {
        Self {
            source: source.into(),
            detail_type: detail_type.into(),
            event_bus_name: event_bus_name.into(),
            clock,
            interfaces: Vec::new(),
            packs: Packs::new(PackSettings::default()),
        }
    }

    /// How packing ports' packs are bounded (`--pack-max-bytes`,
    /// `--pack-linger-ms`).
    pub fn set_packing(&mut self, settings: PackSettings) {
        self.packs = Packs::new(settings);
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

    /// One entry for `p`, in its port's format, packing or not.
    pub fn encode(&mut self, p: &Packet) -> Entry {
        self.encode_view(&p.view())
    }

    /// Encodes a packet borrowed from the ring (no copy of the payload
    /// before it is encoded) into an entry of its own, whether or not its
    /// port packs.
    pub fn encode_view(&mut self, p: &PacketView<'_>) -> Entry {
        debug_assert!(
            !p.coarse_time,
            "a coarse stamp is narrowed (PacketView::narrow_time) before it is encoded"
        );
        let time = self.clock.to_system_time(p.timestamp_ns);
        let at = self.interface(p.ifindex);
        let detail = detail_json(p, &self.interfaces[at].1, time);
        self.entry(detail, time, p.timestamp_ns)
    }

    /// The encode stage as the capture loop sees it: a packet in, zero or
    /// one entries out. A packet of a port that packs goes into its pack,
    /// and what comes out, if anything, is a pack that is complete; any
    /// other packet comes out as its own entry. Packs that wait are due at
    /// [`pack_deadline`](Self::pack_deadline).
    pub fn push(&mut self, p: &PacketView<'_>) -> Option<Entry> {
        if !p.encoding.pack {
            return Some(self.encode_view(p));
        }
        let time = self.clock.to_system_time(p.timestamp_ns);
        let at = self.interface(p.ifindex);
        let overhead = TIME_SIZE + self.source.len() + self.detail_type.len();
        let done = self.packs.push(p, time, &self.interfaces[at].1, overhead)?;
        Some(self.entry(done.detail, done.time, done.capture_ns))
    }

    /// When the oldest pack must go out, if one is waiting.
    pub fn pack_deadline(&self) -> Option<std::time::Instant> {
        self.packs.deadline()
    }

    /// A pack that is due at `now`, if there is one.
    pub fn pop_due_pack(&mut self, now: std::time::Instant) -> Option<Entry> {
        let done = self.packs.pop(Some(now))?;
        Some(self.entry(done.detail, done.time, done.capture_ns))
    }

    /// Any waiting pack, due or not (at shutdown).
    pub fn pop_pack(&mut self) -> Option<Entry> {
        let done = self.packs.pop(None)?;
        Some(self.entry(done.detail, done.time, done.capture_ns))
    }

    /// The index of `ifindex`'s interface member, named on first sight.
    fn interface(&mut self, ifindex: u32) -> usize {
        match self.interfaces.iter().position(|(i, _)| *i == ifindex) {
            Some(at) => at,
            None => {
                let name = interface_name(ifindex);
                self.interfaces.push((ifindex, interface_member(&name)));
                self.interfaces.len() - 1
            }
        }
    }

    fn entry(&self, detail: Detail, time: SystemTime, capture_ns: u64) -> Entry {
        Entry {
            source: self.source.clone(),
            detail_type: self.detail_type.clone(),
            event_bus_name: self.event_bus_name.clone(),
            detail,
            time,
            capture_ns,
        }
    }
}

/// The Detail's `,"Interface":"<name>"` member, escaped as a Detail is
/// kept, with the bytes escaping added to it.
pub(crate) struct Member {
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

/// Room to reserve for the payload's part of a Detail in `format`: enough
/// for the common case, so the Detail is written into one allocation.
fn payload_room(format: udp_ebpf_common::Format, len: usize) -> usize {
    use udp_ebpf_common::Format::*;
    match format {
        Base64 => len.div_ceil(3) * 4,
        // Or base64, when the payload is not UTF-8 text or not JSON.
        Text | Json => (len + len / 8 + 16).max(len.div_ceil(3) * 4),
        Hex => len * 2,
        // The parsed fields beside the text, and the message twice.
        Syslog => len * 2 + len / 4 + 200,
    }
}

/// Room to reserve for a Detail: the members every event has, with both
/// addresses IPv6 at their longest (264 bytes escaped), and the payload's
/// part. Short by a few bytes, the Detail would be copied into a second
/// allocation as its last member is written (a base64 event took 30% more
/// time so: 198 against 153 ns in `examples/format_speed`).
fn detail_room(p: &PacketView<'_>, interface: &Member) -> usize {
    272 + interface.escaped.len() + payload_room(p.encoding.format, p.payload.len())
}

/// The rest of an endpoint object after its `{"Address":"`: the address,
/// `","Port":N}`.
fn write_endpoint(w: &mut DetailWriter, ip: &IpAddr, port: u16) {
    push_ip(&mut w.text, ip);
    lit!(w, r#"\",\"Port\":"#);
    w.plain(itoa::Buffer::new().format(port));
    lit!(w, "}");
}

/// The `Detail` for `p`, written by hand into one allocation, escaped as
/// [`Detail`] keeps it (this runs once per packet; `fmt` machinery would
/// cost more than the rest put together). For a base64 port, unescaped,
/// the same text as serialising `SerdeDetail` with serde, which the tests
/// check (escaped text and length both). `time` is the capture's wall
/// clock time.
fn detail_json(p: &PacketView<'_>, interface: &Member, time: SystemTime) -> Detail {
    let mut w = DetailWriter::with_capacity(detail_room(p, interface));
    let mut num = itoa::Buffer::new();
    lit!(w, r#"{\"Destination\":{\"Address\":\""#);
    write_endpoint(&mut w, &p.dst, p.dst_port);
    lit!(w, r#",\"Source\":{\"Address\":\""#);
    write_endpoint(&mut w, &p.src, p.src_port);
    let held = write_payload(&mut w, p.encoding.format, p.payload, time);
    lit!(w, r#",\"Length\":"#);
    w.plain(num.format(p.wire_len));
    if p.truncated() {
        lit!(w, r#",\"Truncated\":true"#);
    } else {
        lit!(w, r#",\"Truncated\":false"#);
    }
    w.lit(&interface.escaped, interface.added);
    if p.ip_version() == 4 {
        lit!(w, r#",\"IpVersion\":4"#);
    } else {
        lit!(w, r#",\"IpVersion\":6"#);
    }
    write_format(&mut w, held);
    lit!(w, "}");
    w.finish()
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

    pub(super) fn packet() -> Packet {
        Packet {
            timestamp_ns: 5_000_000,
            ifindex: 3,
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            src_port: 40000,
            dst_port: 514,
            wire_len: 5,
            payload: b"hello".to_vec(),
            encoding: Default::default(),
        }
    }

    pub(super) fn encoder() -> Encoder {
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
            r#"{"Source":"udp.raw","DetailType":"UdpPacket","Detail":"{\"Destination\":{\"Address\":\"198.18.0.1\",\"Port\":514},\"Source\":{\"Address\":\"198.18.0.2\",\"Port\":40000},\"Payload\":\"aGVsbG8=\",\"Length\":5,\"Truncated\":false,\"Interface\":\"veth0\",\"IpVersion\":4,\"Format\":\"base64\"}","Time":"2026-11-27T23:33:17.000Z","EventBusName":"default"}"#
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
            r#"{"Destination":{"Address":"fd00::1","Port":514},"Source":{"Address":"fd00::2","Port":40000},"Payload":"AP8B","Length":9,"Truncated":true,"Interface":"veth0","IpVersion":6,"Format":"base64"}"#
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
    use std::time::UNIX_EPOCH;

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
            format: "base64",
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
            encoding: Default::default(),
        };
        for iface in ["eth0", "we\"ird\\name", "tab\there", "\u{1}ctl", "ünï"] {
            let d = detail_json(&p.view(), &interface_member(iface), UNIX_EPOCH);
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
                    detail_json(&p.view(), &interface_member("lo"), UNIX_EPOCH),
                    Detail::from_json(&serde_detail(&p, "lo")),
                    "{src} {dst} {wire_len}"
                );
            }
        }
        p.payload.clear();
        assert_eq!(
            detail_json(&p.view(), &interface_member("lo"), UNIX_EPOCH),
            Detail::from_json(&serde_detail(&p, "lo"))
        );
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

#[cfg(test)]
mod formats {
    use super::{tests::encoder, *};
    use serde_json::{Value, json};
    use udp_ebpf_common::{Encoding, Format};

    fn packet(format: Format, payload: &[u8]) -> Packet {
        let mut p = super::tests::packet();
        p.wire_len = payload.len() as u32;
        p.payload = payload.to_vec();
        p.encoding = Encoding {
            format,
            pack: false,
        };
        p
    }

    /// The Detail of `payload` on a port in `format`, parsed; checks that
    /// the size kept beside it is the JSON text's.
    fn detail(format: Format, payload: &[u8]) -> Value {
        let d = encoder().encode(&packet(format, payload)).detail;
        let json = d.json();
        assert_eq!(d.len(), json.len(), "size of {json}");
        assert_eq!(Detail::from_json(&json), d, "escaping of {json}");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    /// The members a format adds or changes, besides those every event has.
    fn body(d: &Value) -> Value {
        let mut d = d.clone();
        for k in [
            "Destination",
            "Source",
            "Length",
            "Truncated",
            "Interface",
            "IpVersion",
        ] {
            assert!(d.get(k).is_some(), "{k} missing from {d}");
            d.as_object_mut().unwrap().remove(k);
        }
        d
    }

    /// A Detail is written into the one allocation [`detail_room`] asks
    /// for, with the longest addresses: each format with the payloads it
    /// is meant for, and the fallbacks to base64. (A format that escapes
    /// grows the Detail once for text dense with quotes, such as JSON on a
    /// `text` port, and a `syslog` port for bytes that are not UTF-8.)
    #[test]
    fn details_fit_the_room_reserved() {
        use Format::*;
        use test_support::payloads;
        let binary = payloads::binary();
        let cases: [(&[u8], &[Format]); 6] = [
            (b"hello", &[Base64, Text, Hex, Json, Syslog]),
            (payloads::SYSLOG_3164, &[Base64, Text, Hex, Json, Syslog]),
            (payloads::SYSLOG_5424, &[Base64, Text, Hex, Syslog]),
            (payloads::JSON_DOC, &[Base64, Hex, Json]),
            (&binary, &[Base64, Text, Hex, Json]),
            (&[b'x'; 1400], &[Base64, Text, Hex, Json, Syslog]),
        ];
        let mut e = encoder();
        for (payload, formats) in cases {
            for &format in formats {
                let mut p = packet(format, payload);
                p.src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
                p.dst = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
                p.src_port = 65535;
                p.dst_port = 65535;
                let view = p.view();
                let at = e.interface(p.ifindex);
                let room = detail_room(&view, &e.interfaces[at].1);
                let d = e.encode(&p).detail;
                assert_eq!(
                    d.escaped.capacity(),
                    room,
                    "{format:?} {:?}: {} bytes",
                    String::from_utf8_lossy(payload),
                    d.escaped.len()
                );
            }
        }
    }

    #[test]
    fn text_is_exact_and_falls_back_when_not_utf8() {
        let t = "caf\u{e9} \"q\" \\ tab\t nul\0 😀\n";
        assert_eq!(
            body(&detail(Format::Text, t.as_bytes())),
            json!({"Text": t, "Format": "text"})
        );
        assert_eq!(
            body(&detail(Format::Text, b"")),
            json!({"Text": "", "Format": "text"})
        );
        assert_eq!(
            body(&detail(Format::Text, b"caf\xe9")),
            json!({"Payload": "Y2Fm6Q==", "Format": "base64"})
        );
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(
            body(&detail(Format::Hex, &[0, 0xab, 0xff, b'A'])),
            json!({"Hex": "00abff41", "Format": "hex"})
        );
        let all: Vec<u8> = (0..=255).collect();
        let hex = detail(Format::Hex, &all)["Hex"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(hex, hex::encode(&all));
    }

    #[test]
    fn json_is_the_value_sent_and_falls_back_when_not_json() {
        for (payload, value) in [
            (
                r#"{"level":"error","n":1,"a":[true,null,"x\"y"]}"#,
                json!({"level":"error","n":1,"a":[true,null,"x\"y"]}),
            ),
            ("[1,2,3]\n", json!([1, 2, 3])),
            ("42", json!(42)),
            ("\"just a string\"", json!("just a string")),
            ("  {\"tab\":\"\\t\"}  ", json!({"tab": "\t"})),
        ] {
            assert_eq!(
                body(&detail(Format::Json, payload.as_bytes())),
                json!({"Json": value, "Format": "json"}),
                "{payload}"
            );
        }
        // Numbers keep every digit: the text goes in as sent.
        let big = detail(Format::Json, b"{\"id\":123456789012345678901234567890}");
        let d = encoder()
            .encode(&packet(
                Format::Json,
                b"{\"id\":123456789012345678901234567890}",
            ))
            .detail
            .json();
        assert!(
            d.contains("\"Json\":{\"id\":123456789012345678901234567890}"),
            "{d}"
        );
        assert!(big["Json"]["id"].is_number());
        for not_json in [
            &b""[..],
            b"{",
            b"{\"a\":1} x",
            b"nul",
            b"\xff",
            b"{\"a\":\"\x01\"}",
        ] {
            let d = body(&detail(Format::Json, not_json));
            assert_eq!(d["Format"], "base64", "{not_json:?}");
            assert!(d.get("Json").is_none() && d.get("Payload").is_some());
        }
    }

    #[test]
    fn syslog_fields_beside_the_text() {
        let line = "<165>1 2026-11-27T23:42:18.123+01:00 router1 rpd 1234 BGP_STATE [junos@2636 peer=\"192.0.2.1\" peer=\"192.0.2.2\"][junos@2636 state=\"Idle\"][timeQuality] peer down\n";
        assert_eq!(
            body(&detail(Format::Syslog, line.as_bytes())),
            json!({
                "Syslog": {
                    "Facility": 20,
                    "Severity": 5,
                    "Timestamp": "2026-11-27T23:42:18.123+01:00",
                    "Time": "2026-11-27T22:42:18.123Z",
                    "Hostname": "router1",
                    "AppName": "rpd",
                    "ProcId": "1234",
                    "MsgId": "BGP_STATE",
                    "StructuredData": {
                        "junos@2636": {"peer": ["192.0.2.1", "192.0.2.2"], "state": "Idle"},
                        "timeQuality": {},
                    },
                    "Message": "peer down",
                },
                "Text": line,
                "Format": "syslog",
            })
        );
        // RFC 3164: no year (the capture's, 2026) and no zone (no `Z`).
        assert_eq!(
            body(&detail(
                Format::Syslog,
                b"<13>Nov 27 23:42:18 web01 app[7]: disk full"
            )),
            json!({
                "Syslog": {
                    "Facility": 1,
                    "Severity": 5,
                    "Timestamp": "Nov 27 23:42:18",
                    "Time": "2026-11-27T23:42:18",
                    "Hostname": "web01",
                    "AppName": "app",
                    "ProcId": "7",
                    "Message": "disk full",
                },
                "Text": "<13>Nov 27 23:42:18 web01 app[7]: disk full",
                "Format": "syslog",
            })
        );
        // Neither RFC: the message and the priority; not UTF-8: the
        // fields lossily, the bytes in `Payload`.
        assert_eq!(
            body(&detail(
                Format::Syslog,
                b"<189>date=2026-11-27 level=\"notice\" caf\xe9"
            )),
            json!({
                "Syslog": {"Facility": 23, "Severity": 5, "Message": "date=2026-11-27 level=\"notice\" caf\u{fffd}"},
                "Payload": "PDE4OT5kYXRlPTIwMjYtMTEtMjcgbGV2ZWw9Im5vdGljZSIgY2Fm6Q==",
                "Format": "syslog",
            })
        );
        assert_eq!(
            body(&detail(Format::Syslog, b"")),
            json!({"Syslog": {"Message": ""}, "Text": "", "Format": "syslog"})
        );
    }

    /// Every format, over payloads that stress the escaping: the Detail
    /// parses, its kept size is its JSON text's, and the payload can be
    /// had back from it byte for byte.
    #[test]
    fn every_format_keeps_every_byte_and_its_size() {
        let mut payloads: Vec<Vec<u8>> = vec![
            Vec::new(),
            (0..=255).collect(),
            b"\"\\\n\r\t\x01\x1f\x7f".repeat(50),
            "é€😀 <13>Nov 27 23:42:18 h a: m".as_bytes().to_vec(),
            br#"{"k":"v\"\\\n","n":[1,2]}"#.to_vec(),
        ];
        payloads.push(vec![0x01; 9216]);
        payloads.push(b"<13>1 - - - - [a x=\"\\\"\"] \x01".to_vec());
        for format in Format::ALL {
            for payload in &payloads {
                let d = detail(format, payload);
                let back: Vec<u8> = if let Some(t) = d.get("Text") {
                    t.as_str().unwrap().as_bytes().to_vec()
                } else if let Some(h) = d.get("Hex") {
                    hex::decode(h.as_str().unwrap()).unwrap()
                } else if let Some(j) = d.get("Json") {
                    assert_eq!(*j, serde_json::from_slice::<Value>(payload).unwrap());
                    payload.clone()
                } else {
                    STANDARD.decode(d["Payload"].as_str().unwrap()).unwrap()
                };
                assert_eq!(&back, payload, "{format:?}");
            }
        }
    }

    /// Every prefix of awkward lines, and random bytes, make a Detail that
    /// parses, with its size right (the parser never panics on a cut).
    #[test]
    fn any_prefix_or_noise_makes_a_valid_syslog_detail() {
        let lines: [&[u8]; 5] = [
            br#"<165>1 2026-11-27T23:42:18.123+01:00 r rpd 1 M [a@1 x="1\"\]" x="2"][b y=""] m"#,
            b"<189>52: router1: *Mar  1 18:46:11.123 UTC: %SYS-5-CONFIG_I: x",
            b"<166>Nov 27 2026 23:42:18 asa01 : %ASA-6-302013: Built",
            b"<13>2026-11-27T23:42:18.1+00:00 web01 app[5]: hi\r\n\0",
            b"Nov  2 03:04:05 h t[1]: \xef\xbb\xbf\xff\x01",
        ];
        for line in lines {
            for end in 0..=line.len() {
                detail(Format::Syslog, &line[..end]);
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly the characters syslog headers are made of.
                    b"<>0123456789 :[]=\"-TZ.*NovMar\\\xff"[(seed % 31) as usize]
                })
                .collect();
            detail(Format::Syslog, &bytes);
        }
    }

    /// The largest Detail one datagram can make is far below an entry's
    /// 256 KB (what packing relies on when a pack of one is oversized).
    #[test]
    fn the_largest_detail_fits_an_entry() {
        let worst = b"<13>1 - - - - - "
            .iter()
            .copied()
            .chain(std::iter::repeat_n(1u8, 9200));
        let worst: Vec<u8> = worst.collect();
        for format in Format::ALL {
            let e = encoder().encode(&packet(format, &worst));
            assert!(e.aws_size() < 128 * 1024, "{format:?}: {}", e.aws_size());
        }
    }
}
