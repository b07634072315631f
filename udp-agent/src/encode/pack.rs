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
        let mut w = DetailWriter::with_capacity(1024);
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
        // Packs grow by doubling; what waits in the queue should not hold
        // the spare half.
        pack.w.text.shrink_to_fit();
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
