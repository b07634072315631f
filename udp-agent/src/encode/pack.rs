//! Packing: the datagrams of one destination (address and port) on one
//! interface gathered into one entry, so that a busy port costs a billed
//! event per 64 KB instead of one per datagram.
//!
//! ```text
//! {"Destination":{"Address":"198.18.0.1","Port":514},"Interface":"eth0",
//!  "IpVersion":4,"Format":"syslog",
//!  "Packets":[{"Source":{"Address":"198.18.0.2","Port":40000},
//!              "Time":"2026-11-27T23:42:18.123Z","Length":52,
//!              "Truncated":false,"Syslog":{…},"Text":"…","Format":"syslog"},…],
//!  "Count":2}
//! ```
//!
//! The top-level `Format` is the port's; each packet's names what that
//! packet holds (`base64` for one that fell back). The entry's `Time` is its
//! first datagram's capture time.
//!
//! A pack is sent when the next datagram would take it past
//! `--pack-max-bytes` (as AWS counts an entry's size), or when its first
//! datagram has waited `--pack-linger-ms`. A pack of one datagram larger
//! than that is sent as it is: one captured datagram (≤ 9,216 bytes) makes
//! at most ~120 KB of Detail (a syslog line of control characters, each
//! escaped, twice over: the message and the text), under the 256 KB an
//! entry may be. Packs in the making are bounded: at most
//! [`PACK_MEMORY`] bytes of them in all; making one more sends the oldest.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use udp_ebpf_common::Format;

use super::{
    Detail, Member,
    format::{DetailWriter, lit, write_format, write_payload},
    push_rfc3339_millis, write_endpoint,
};
use crate::record::PacketView;

/// `--pack-max-bytes`' default: one billed event (EventBridge bills each
/// started 64 KB of an entry as one event).
pub const DEFAULT_PACK_MAX_BYTES: u32 = 64 * 1024;
/// `--pack-linger-ms`' default.
pub const DEFAULT_PACK_LINGER_MS: u64 = 1000;
/// Most bytes of packs in the making, over all destinations: how many
/// packs may be open at once is this over `--pack-max-bytes`.
pub const PACK_MEMORY: usize = 16 << 20;

/// How packs are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackSettings {
    /// Most bytes of an entry (AWS's count: Time, Source, DetailType and
    /// Detail) with more than one datagram.
    pub max_bytes: usize,
    /// Longest a pack waits after its first datagram.
    pub linger: Duration,
}

impl Default for PackSettings {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_PACK_MAX_BYTES as usize,
            linger: Duration::from_millis(DEFAULT_PACK_LINGER_MS),
        }
    }
}

/// What identifies a pack: datagrams of one destination, interface and
/// format share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    ifindex: u32,
    dst: IpAddr,
    dst_port: u16,
    format: Format,
}

/// A pack in the making: its Detail up to the open `Packets` array.
struct Pack {
    key: Key,
    w: DetailWriter,
    count: u32,
    time: SystemTime,
    capture_ns: u64,
    due: Instant,
}

/// A finished pack, for the encoder to wrap into an entry.
pub(crate) struct Done {
    pub detail: Detail,
    pub time: SystemTime,
    pub capture_ns: u64,
}

/// `],"Count":N}` at most: what closing a pack adds to it.
const CLOSE_MAX: usize = r#"],"Count":4294967295}"#.len();

/// The packs in the making.
pub(crate) struct Packs {
    settings: PackSettings,
    open: Vec<Pack>,
    /// Most packs open at once.
    max_open: usize,
}

impl Packs {
    pub fn new(settings: PackSettings) -> Self {
        Self {
            settings,
            open: Vec::new(),
            max_open: (PACK_MEMORY / settings.max_bytes.max(1)).clamp(1, 256),
        }
    }

    /// Adds `p` to its pack. Returns the pack this completed, if any: the
    /// datagram's own, when the datagram would take it past the limit (the
    /// datagram then starts the next), or the oldest, when too many are
    /// open. `overhead` is what an entry counts besides its Detail.
    // Inlined into `Encoder::push`: left to the compiler's heuristics, it
    // is not once the syslog writer grows (30 instructions more per
    // packed datagram, measured with callgrind).
    #[inline]
    pub fn push(
        &mut self,
        p: &PacketView<'_>,
        time: SystemTime,
        interface: &Member,
        overhead: usize,
    ) -> Option<Done> {
        let key = Key {
            ifindex: p.ifindex,
            dst: p.dst,
            dst_port: p.dst_port,
            format: p.encoding.format,
        };
        let Some(at) = self.open.iter().position(|k| k.key == key) else {
            let evicted = (self.open.len() >= self.max_open).then(|| self.take_oldest());
            let mut pack = self.start(key, p, time, interface);
            write_packet(&mut pack.w, p, time, false);
            self.open.push(pack);
            return evicted.flatten();
        };
        let pack = &mut self.open[at];
        let start = pack.w.text.len();
        let added = pack.w.added;
        write_packet(&mut pack.w, p, time, true);
        if overhead + pack.w.json_len() + CLOSE_MAX <= self.settings.max_bytes {
            pack.count += 1;
            return None;
        }
        // Past the limit: the pack goes as it was, and this datagram (its
        // text moved, without the comma) starts the next one.
        let mut next = self.start(key, p, time, interface);
        let pack = &mut self.open[at];
        next.w.text.push_str(&pack.w.text[start + 1..]);
        next.w.added += pack.w.added - added;
        pack.w.text.truncate(start);
        pack.w.added = added;
        let full = std::mem::replace(pack, next);
        Some(self.close(full))
    }

    /// When the oldest pack is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.iter().map(|p| p.due).min()
    }

    /// A pack due at `now` (any pack, oldest first, with `None`).
    pub fn pop(&mut self, now: Option<Instant>) -> Option<Done> {
        let at = match now {
            Some(now) => self.open.iter().position(|p| p.due <= now)?,
            None => self.oldest()?,
        };
        let pack = self.open.swap_remove(at);
        Some(self.close(pack))
    }

    fn oldest(&self) -> Option<usize> {
        (0..self.open.len()).min_by_key(|&i| self.open[i].due)
    }

    fn take_oldest(&mut self) -> Option<Done> {
        let at = self.oldest()?;
        let pack = self.open.swap_remove(at);
        Some(self.close(pack))
    }

    /// A pack for `key` with `p` as its first datagram (not yet written).
    fn start(&self, key: Key, p: &PacketView<'_>, time: SystemTime, interface: &Member) -> Pack {
        // Room for a full pack's escaped text up front: growing by doubling
        // would copy it several times over, and fault in fresh pages each
        // time, for every pack.
        let mut w =
            DetailWriter::with_capacity(self.settings.max_bytes + self.settings.max_bytes / 4);
        lit!(w, r#"{\"Destination\":{\"Address\":\""#);
        write_endpoint(&mut w, &p.dst, p.dst_port);
        w.lit(&interface.escaped, interface.added);
        if p.ip_version() == 4 {
            lit!(w, r#",\"IpVersion\":4"#);
        } else {
            lit!(w, r#",\"IpVersion\":6"#);
        }
        write_format(&mut w, key.format);
        lit!(w, r#",\"Packets\":["#);
        Pack {
            key,
            w,
            count: 1,
            time,
            capture_ns: p.timestamp_ns,
            due: Instant::now() + self.settings.linger,
        }
    }

    fn close(&mut self, mut pack: Pack) -> Done {
        lit!(pack.w, r#"],\"Count\":"#);
        pack.w.plain(itoa::Buffer::new().format(pack.count));
        lit!(pack.w, "}");
        // A pack sent at its linger may be small: what waits in the queue
        // should not hold a full pack's room.
        if pack.w.text.len() < pack.w.text.capacity() / 2 {
            pack.w.text.shrink_to_fit();
        }
        Done {
            detail: pack.w.finish(),
            time: pack.time,
            capture_ns: pack.capture_ns,
        }
    }
}

/// One element of `Packets`: `{"Source":…,"Time":…,"Length":…,
/// "Truncated":…,<payload>,"Format":…}`, after a comma unless it is the
/// first.
fn write_packet(w: &mut DetailWriter, p: &PacketView<'_>, time: SystemTime, comma: bool) {
    if comma {
        lit!(w, ",");
    }
    lit!(w, r#"{\"Source\":{\"Address\":\""#);
    write_endpoint(w, &p.src, p.src_port);
    lit!(w, r#",\"Time\":\""#);
    push_rfc3339_millis(&mut w.text, time);
    lit!(w, r#"\",\"Length\":"#);
    w.plain(itoa::Buffer::new().format(p.wire_len));
    if p.truncated() {
        lit!(w, r#",\"Truncated\":true"#);
    } else {
        lit!(w, r#",\"Truncated\":false"#);
    }
    let held = write_payload(w, p.encoding.format, p.payload, time);
    write_format(w, held);
    lit!(w, "}");
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde_json::Value;
    use udp_ebpf_common::{Encoding, Format};

    use super::*;
    use crate::{
        clock::WallClock,
        encode::{Encoder, Entry},
        record::Packet,
    };

    fn encoder(max_bytes: usize) -> Encoder {
        let mut e = Encoder::new("udp.raw", "UdpPacket", "default", WallClock::now());
        e.name_interface(3, "veth0");
        e.set_packing(PackSettings {
            max_bytes,
            linger: Duration::from_secs(3600),
        });
        e
    }

    fn packet(i: u32, dst_port: u16, format: Format, len: usize) -> Packet {
        let mut payload = format!("<13>Nov 27 23:42:18 web01 app: line {i} ").into_bytes();
        payload.resize(len.max(payload.len()), b'x');
        Packet {
            timestamp_ns: 1_000_000 + u64::from(i),
            ifindex: 3,
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            src_port: 10_000 + i as u16,
            dst_port,
            wire_len: payload.len() as u32,
            payload,
            encoding: Encoding { format, pack: true },
        }
    }

    fn parse(e: &Entry) -> Value {
        let json = e.detail.json();
        assert_eq!(e.detail.len(), json.len());
        serde_json::from_str(&json).unwrap_or_else(|err| panic!("{err}: {json}"))
    }

    /// The payload of one element of `Packets`.
    fn payload(p: &Value) -> Vec<u8> {
        match p.get("Text") {
            Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
            None => STANDARD.decode(p["Payload"].as_str().unwrap()).unwrap(),
        }
    }

    #[test]
    fn packs_fill_to_the_limit_and_keep_every_datagram_in_order() {
        const MAX: usize = 8 * 1024;
        let mut e = encoder(MAX);
        let sent: Vec<Packet> = (0..500).map(|i| packet(i, 514, Format::Text, 90)).collect();
        let mut entries: Vec<Entry> = sent.iter().filter_map(|p| e.push(&p.view())).collect();
        let full = entries.len();
        assert!(
            full >= 5,
            "500 × ~250 bytes make several 8 KB packs: {full}"
        );
        entries.extend(e.pop_pack());
        assert!(e.pop_pack().is_none() && e.pack_deadline().is_none());
        let mut got = Vec::new();
        for (k, entry) in entries.iter().enumerate() {
            assert!(entry.aws_size() <= MAX, "pack {k}: {}", entry.aws_size());
            let d = parse(entry);
            assert_eq!(d["Destination"]["Port"], 514);
            assert_eq!(d["Destination"]["Address"], "198.18.0.1");
            assert_eq!(d["Interface"], "veth0");
            assert_eq!(d["Format"], "text");
            let packets = d["Packets"].as_array().unwrap();
            assert_eq!(d["Count"].as_u64().unwrap() as usize, packets.len());
            if k < full {
                // Full: the next datagram (~250 bytes) did not fit.
                assert!(entry.aws_size() + 400 > MAX, "pack {k} left room");
            }
            let first = &sent[got.len()];
            assert_eq!(entry.capture_ns, first.timestamp_ns, "pack {k}'s time");
            for p in packets {
                let i = got.len();
                assert_eq!(p["Source"]["Port"], 10_000 + i);
                assert_eq!(p["Source"]["Address"], "198.18.0.2");
                assert_eq!(p["Length"], sent[i].payload.len());
                assert_eq!(p["Truncated"], false);
                assert_eq!(p["Format"], "text");
                assert!(p["Time"].as_str().unwrap().ends_with('Z'));
                got.push(payload(p));
            }
        }
        let want: Vec<Vec<u8>> = sent.iter().map(|p| p.payload.clone()).collect();
        assert_eq!(got, want);
    }

    /// At every limit, to the byte: no pack with two or more datagrams
    /// is larger than the limit, as AWS counts an entry (its Time, Source
    /// and DetailType too, and the closing `],"Count":N}`).
    #[test]
    fn no_pack_exceeds_the_limit_by_a_byte() {
        for max in 1500..1700 {
            let mut e = encoder(max);
            let mut entries: Vec<Entry> = (0..40)
                .filter_map(|i| {
                    e.push(&packet(i, 514, Format::Text, 40 + (i as usize * 7) % 90).view())
                })
                .collect();
            entries.extend(e.pop_pack());
            for entry in &entries {
                let count = parse(entry)["Count"].as_u64().unwrap();
                assert!(
                    count == 1 || entry.aws_size() <= max,
                    "limit {max}: a pack of {count} is {} bytes",
                    entry.aws_size()
                );
            }
        }
    }

    #[test]
    fn destinations_and_formats_pack_apart_and_fallbacks_say_so() {
        let mut e = encoder(64 * 1024);
        let mut a = packet(0, 514, Format::Syslog, 0);
        let b = packet(1, 515, Format::Syslog, 0);
        let c = packet(2, 514, Format::Hex, 0);
        let mut d = packet(3, 514, Format::Syslog, 0);
        d.payload = b"<13>bin \xff".to_vec();
        for p in [&a, &b, &c, &d] {
            assert!(e.push(&p.view()).is_none());
        }
        a.dst = "fd00::1".parse().unwrap();
        a.src = "fd00::2".parse().unwrap();
        assert!(e.push(&a.view()).is_none());
        let packs: Vec<Value> = std::iter::from_fn(|| e.pop_pack())
            .map(|x| parse(&x))
            .collect();
        let mut summary: Vec<(String, u64, String, u64, u64)> = packs
            .iter()
            .map(|p| {
                (
                    p["Destination"]["Address"].as_str().unwrap().to_owned(),
                    p["Destination"]["Port"].as_u64().unwrap(),
                    p["Format"].as_str().unwrap().to_owned(),
                    p["Count"].as_u64().unwrap(),
                    p["IpVersion"].as_u64().unwrap(),
                )
            })
            .collect();
        summary.sort();
        let s = |a: &str, port, f: &str, n, v| (a.to_owned(), port, f.to_owned(), n, v);
        assert_eq!(
            summary,
            [
                s("198.18.0.1", 514, "hex", 1, 4),
                s("198.18.0.1", 514, "syslog", 2, 4),
                s("198.18.0.1", 515, "syslog", 1, 4),
                s("fd00::1", 514, "syslog", 1, 6),
            ]
        );
        let syslog = &packs.iter().find(|p| p["Count"] == 2).unwrap()["Packets"];
        assert_eq!(syslog[0]["Syslog"]["AppName"], "app");
        assert_eq!(syslog[0]["Format"], "syslog");
        // Not UTF-8: still syslog, its bytes in Payload.
        assert_eq!(syslog[1]["Syslog"]["Message"], "bin \u{fffd}");
        assert_eq!(payload(&syslog[1]), b"<13>bin \xff");
    }

    #[test]
    fn a_pack_is_due_after_its_linger() {
        let mut e = encoder(64 * 1024);
        e.set_packing(PackSettings {
            max_bytes: 64 * 1024,
            linger: Duration::from_millis(50),
        });
        let before = Instant::now();
        assert!(e.push(&packet(0, 514, Format::Base64, 10).view()).is_none());
        assert!(e.push(&packet(1, 514, Format::Base64, 10).view()).is_none());
        let due = e.pack_deadline().expect("a pack waits");
        assert!(due >= before + Duration::from_millis(50));
        assert!(e.pop_due_pack(before).is_none(), "not due yet");
        let entry = e.pop_due_pack(due).expect("due");
        assert_eq!(parse(&entry)["Count"], 2);
        assert!(e.pack_deadline().is_none());
    }

    #[test]
    fn too_many_open_packs_send_the_oldest() {
        // 16 MiB over 1 MiB packs: 16 open at most.
        let mut e = encoder(1 << 20);
        let mut out = Vec::new();
        for port in 1000..1020 {
            out.extend(e.push(&packet(u32::from(port), port, Format::Base64, 10).view()));
        }
        assert_eq!(out.len(), 4);
        let ports: Vec<u64> = out
            .iter()
            .map(|x| parse(x)["Destination"]["Port"].as_u64().unwrap())
            .collect();
        assert_eq!(ports, [1000, 1001, 1002, 1003]);
        assert_eq!(std::iter::from_fn(|| e.pop_pack()).count(), 16);
    }

    #[test]
    fn unpacked_ports_are_untouched() {
        let mut e = encoder(64 * 1024);
        let mut p = packet(0, 514, Format::Base64, 10);
        p.encoding.pack = false;
        let entry = e.push(&p.view()).expect("an entry of its own");
        let d = parse(&entry);
        assert!(d.get("Packets").is_none());
        assert_eq!(d["Payload"], STANDARD.encode(&p.payload));
        assert!(e.pack_deadline().is_none());
    }
}
