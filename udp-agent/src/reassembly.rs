//! Reassembly of IP fragments into whole UDP datagrams (RFC 791, RFC 8200),
//! by the rules Linux follows (`net/ipv4/inet_fragment.c`,
//! `ip_fragment.c`, `net/ipv6/reassembly.c`):
//!
//! - Fragments come in any order. One whose bytes all lie within data
//!   already held is a duplicate and is dropped alone (`fragment_duplicate`);
//!   one that overlaps held data only in part drops the whole datagram
//!   (RFC 5722, `fragment_overlap`).
//! - The last fragment fixes the datagram's length. A second last fragment
//!   that ends elsewhere, data past that end, an empty fragment, and data
//!   past 65,535 bytes drop the datagram (`fragment_invalid`). A fragment
//!   other than the last is cut to a multiple of 8 bytes over IPv4 and
//!   refused over IPv6 (RFC 8200 §4.5).
//! - A datagram still incomplete `timeout` after its first-seen fragment was
//!   captured is dropped (`fragment_timeout`; 30 s by default, as Linux's
//!   `ipfrag_time`).
//! - What incomplete datagrams hold (their data, plus a fixed overhead per
//!   datagram and per fragment) stays within `max_bytes`: before a fragment
//!   is taken that would pass it, the oldest incomplete datagrams are
//!   dropped (`fragment_evicted`). A flood of fragments that never complete
//!   therefore cannot grow memory, and it pushes out only datagrams older
//!   than its own: a datagram whose fragments arrive together, as a
//!   sender's kernel sends them, completes before the flood reaches it.
//! - The completed datagram's UDP length must lie within its data
//!   (`fragment_invalid` otherwise); a shorter one is believed, as for a
//!   whole datagram.
//!
//! The interface is small so that any capture path can use it: a
//! [`FragmentView`] in, a whole datagram ([`Packet`]) out. The event is the
//! one an unfragmented datagram gives: `Length` is the UDP payload length,
//! and the payload is cut to `snaplen` (and marked truncated). The ring's
//! 9,216-byte record limit does not apply: each fragment is a record of its
//! own, so a datagram can be whole up to the UDP maximum (65,507 bytes over
//! IPv4).

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use hashlink::LinkedHashMap;
use udp_ebpf_common::Encoding;

pub use crate::record::{FragmentKey, FragmentView};
use crate::{
    record::Packet,
    stats::{PipelineStats, count_drop},
};

/// Default `--reassembly-timeout`: Linux's `ipfrag_time`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--reassembly-max-bytes`: four times Linux's default
/// `ipfrag_high_thresh` (4 MiB), which serves the whole host's traffic.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

/// The smallest `--reassembly-max-bytes`: room for one datagram of the
/// largest size (65,535 bytes of data in up to 128 fragments, as the XDP
/// program writes at most `FRAG_MAX_RECORDS` per datagram), rounded up.
pub const MIN_MAX_BYTES: usize = 128 << 10;
const _: () = assert!(
    MIN_MAX_BYTES
        >= 65_535
            + DATAGRAM_OVERHEAD
            + FRAGMENT_OVERHEAD * udp_ebpf_common::FRAG_MAX_RECORDS as usize
);

/// What an incomplete datagram is charged besides its data: its table
/// entry and bookkeeping.
pub const DATAGRAM_OVERHEAD: usize = 256;
/// What each fragment held is charged besides its data: its allocation and
/// its place in the datagram's list.
pub const FRAGMENT_OVERHEAD: usize = 64;

/// UDP's header, which the first fragment's data starts with.
const UDP_HLEN: usize = 8;
/// The most data a datagram's fragments can carry: IPv6's Payload Length
/// limit (RFC 8200; no jumbograms), and for IPv4 the Total Length limit less
/// the smallest header.
const MAX_DATA_V6: u32 = 65_535;
const MAX_DATA_V4: u32 = 65_535 - 20;

/// How the reassembler bounds itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long an incomplete datagram is kept after its first-seen
    /// fragment.
    pub timeout: Duration,
    /// Most bytes incomplete datagrams hold together.
    pub max_bytes: usize,
    /// Most payload bytes of a datagram handed on; the rest is cut and the
    /// datagram marked truncated.
    pub snaplen: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
            snaplen: u32::MAX,
        }
    }
}

/// One fragment held: where its data lies, and what of it was captured.
#[derive(Debug)]
struct Piece {
    offset: u32,
    end: u32,
    /// The captured prefix of its data.
    data: Box<[u8]>,
}

/// A datagram whose fragments are coming in.
#[derive(Debug)]
struct Datagram {
    /// Capture time of its first-seen fragment.
    created_ns: u64,
    /// Interface of its first fragment (offset 0), once seen.
    ifindex: u32,
    /// Its port's encoding, from its first fragment.
    encoding: Encoding,
    /// Its data length, once the last fragment is in.
    len: Option<u32>,
    /// Where its furthest data held ends.
    max_end: u32,
    /// Bytes its pieces cover (they never overlap).
    covered: u32,
    /// Sorted by offset, disjoint.
    pieces: Vec<Piece>,
    /// What it is charged against `max_bytes`.
    cost: usize,
}

/// What a fragment does to the data already held.
enum Fit {
    /// Insert the fragment at this index of the pieces.
    At(usize),
    /// All its bytes are held already.
    Duplicate,
    /// It overlaps held data in part.
    Overlap,
}

impl Datagram {
    fn new(created_ns: u64) -> Self {
        Self {
            created_ns,
            ifindex: 0,
            encoding: Encoding::default(),
            len: None,
            max_end: 0,
            covered: 0,
            pieces: Vec::new(),
            cost: 0,
        }
    }

    /// Where `[offset, end)` goes among the pieces (Linux's
    /// `inet_frag_queue_insert`: within a run of held data, a duplicate;
    /// across its edge, an overlap).
    fn fit(&self, offset: u32, end: u32) -> Fit {
        // The first piece that ends after `offset`.
        let i = self.pieces.partition_point(|p| p.end <= offset);
        let Some(first) = self.pieces.get(i) else {
            return Fit::At(i);
        };
        if first.offset >= end {
            return Fit::At(i);
        }
        // Overlaps piece i: a duplicate only if held data covers all of
        // [offset, end) without a gap.
        if first.offset > offset {
            return Fit::Overlap;
        }
        let mut reach = first.end;
        for p in &self.pieces[i + 1..] {
            if reach >= end || p.offset != reach {
                break;
            }
            reach = p.end;
        }
        if reach >= end {
            Fit::Duplicate
        } else {
            Fit::Overlap
        }
    }

    fn complete(&self) -> bool {
        self.len == Some(self.covered)
    }

    /// The UDP datagram the complete pieces make, with at most `snaplen`
    /// payload bytes. `None` if its UDP header is not there or its length
    /// does not fit the data.
    fn assemble(&self, snaplen: u32) -> Option<(u16, u16, u32, Vec<u8>)> {
        let len = self.len?;
        let head = self.pieces.first()?.data.get(..UDP_HLEN)?;
        let field = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
        let (src_port, dst_port, udp_len) = (field(0), field(2), u32::from(field(4)));
        if (udp_len as usize) < UDP_HLEN || udp_len > len {
            return None;
        }
        let wire_len = udp_len - UDP_HLEN as u32;
        // The payload bytes wanted, from the UDP header's end; a piece
        // captured short (past a capture path's snap length) ends them.
        let want_end = UDP_HLEN + wire_len.min(snaplen) as usize;
        let mut payload = Vec::with_capacity(want_end - UDP_HLEN);
        for p in &self.pieces {
            let start = p.offset as usize;
            if start >= want_end {
                break;
            }
            let take = p.data.len().min(want_end - start);
            // Skip the UDP header's bytes (all in the first piece).
            let skip = UDP_HLEN.saturating_sub(start).min(take);
            payload.extend_from_slice(&p.data[skip..take]);
            if p.data.len() < (p.end - p.offset) as usize {
                break;
            }
        }
        Some((src_port, dst_port, wire_len, payload))
    }
}

/// Incomplete datagrams, oldest first, and what they hold.
pub struct Reassembler {
    settings: Settings,
    /// In the order their first-seen fragment arrived: the front is the
    /// first to expire and the first to evict.
    table: LinkedHashMap<FragmentKey, Datagram>,
    held: usize,
    stats: Arc<PipelineStats>,
}

impl Reassembler {
    pub fn new(settings: Settings, stats: Arc<PipelineStats>) -> Self {
        Self {
            settings,
            table: LinkedHashMap::new(),
            held: 0,
            stats,
        }
    }

    /// Bytes incomplete datagrams hold, as charged against `max_bytes`.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Incomplete datagrams held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Takes one fragment; returns the datagram it completes, if it does.
    pub fn push(&mut self, f: &FragmentView<'_>) -> Option<Packet> {
        let s = &self.stats.reassembly;
        s.fragments.fetch_add(1, Relaxed);
        let offset = f.offset;
        let mut end = offset.saturating_add(f.len);
        if f.more && !end.is_multiple_of(8) {
            // Every fragment but the last carries whole 8-byte units: Linux
            // cuts an IPv4 one to that; RFC 8200 has IPv6's refused.
            if !f.is_v4() {
                return self.invalid(&f.key, "IPv6 fragment not a multiple of 8 bytes");
            }
            end &= !7;
        }
        let max = if f.is_v4() { MAX_DATA_V4 } else { MAX_DATA_V6 };
        if end <= offset || end > max {
            return self.invalid(&f.key, "empty fragment, or data past 65,535 bytes");
        }
        let data = &f.data[..f.data.len().min((end - offset) as usize)];

        if let Some(d) = self.table.get(&f.key) {
            // The last fragment fixes the end; nothing may lie past it, and
            // a second last fragment must agree.
            let contradicts = if f.more {
                d.len.is_some_and(|len| end > len)
            } else {
                end < d.max_end || d.len.is_some_and(|len| len != end)
            };
            if contradicts {
                return self.invalid(&f.key, "fragment past the datagram's end");
            }
        }
        let fit = match self.table.get(&f.key) {
            Some(d) => d.fit(offset, end),
            None => Fit::At(0),
        };
        let at = match fit {
            Fit::At(at) => at,
            Fit::Duplicate => {
                s.duplicate.fetch_add(1, Relaxed);
                return None;
            }
            Fit::Overlap => {
                self.drop_datagram(&f.key);
                count_drop(
                    &self.stats.reassembly.overlap,
                    "overlapping IP fragments: datagram dropped (RFC 5722)",
                );
                return None;
            }
        };
        let exists = self.table.contains_key(&f.key);
        let need = data.len() + FRAGMENT_OVERHEAD + if exists { 0 } else { DATAGRAM_OVERHEAD };
        if !self.make_room(need, &f.key) {
            // Not even alone does it fit: the datagram goes.
            self.drop_datagram(&f.key);
            count_drop(
                &self.stats.reassembly.evicted,
                "IP fragments: reassembly memory full (--reassembly-max-bytes); datagram dropped",
            );
            return None;
        }
        let d = self
            .table
            .entry(f.key)
            .or_insert_with(|| Datagram::new(f.timestamp_ns));
        d.pieces.insert(
            at,
            Piece {
                offset,
                end,
                data: data.into(),
            },
        );
        d.covered += end - offset;
        d.max_end = d.max_end.max(end);
        if !f.more {
            d.len = Some(end);
        }
        if offset == 0 {
            d.ifindex = f.ifindex;
            d.encoding = f.encoding;
        }
        d.cost += need;
        let complete = d.complete();
        self.held += need;
        self.publish_held();
        if !complete {
            return None;
        }
        let d = self.table.remove(&f.key)?;
        self.held -= d.cost;
        self.publish_held();
        let Some((src_port, dst_port, wire_len, payload)) = d.assemble(self.settings.snaplen)
        else {
            count_drop(
                &self.stats.reassembly.invalid,
                "reassembled datagram whose UDP length does not fit its data: dropped",
            );
            return None;
        };
        self.stats.reassembly.reassembled.fetch_add(1, Relaxed);
        Some(Packet {
            timestamp_ns: f.timestamp_ns,
            ifindex: d.ifindex,
            src: f.key.src,
            dst: f.key.dst,
            src_port,
            dst_port,
            wire_len,
            payload,
            encoding: d.encoding,
        })
    }

    /// Drops what is held of a datagram the capture path rejected.
    pub fn discard(&mut self, key: &FragmentKey) {
        self.stats.reassembly.fragments.fetch_add(1, Relaxed);
        if self.drop_datagram(key) {
            self.stats.reassembly.discarded.fetch_add(1, Relaxed);
        }
    }

    /// Drops the datagrams whose first-seen fragment was captured
    /// `timeout` or longer before `now_ns` (CLOCK_MONOTONIC).
    pub fn expire(&mut self, now_ns: u64) {
        let timeout = u64::try_from(self.settings.timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut expired = 0;
        while let Some((_, d)) = self.table.front() {
            if now_ns.saturating_sub(d.created_ns) < timeout {
                break;
            }
            if let Some((_, d)) = self.table.pop_front() {
                self.held -= d.cost;
                expired += 1;
            }
        }
        if expired > 0 {
            self.publish_held();
            crate::stats::count_drops(
                &self.stats.reassembly.timeout,
                expired,
                "IP fragments: datagram incomplete at the reassembly timeout; dropped",
            );
        }
    }

    /// At shutdown: what is still incomplete never will be; counted as
    /// timed out.
    pub fn finish(&mut self) {
        let left = self.table.len() as u64;
        self.table.clear();
        self.held = 0;
        self.publish_held();
        if left > 0 {
            self.stats.reassembly.timeout.fetch_add(left, Relaxed);
        }
    }

    /// Evicts the oldest datagrams other than `keep` until `need` more
    /// bytes fit. False if they cannot.
    fn make_room(&mut self, need: usize, keep: &FragmentKey) -> bool {
        let kept = self.table.get(keep).map_or(0, |d| d.cost);
        if need + kept > self.settings.max_bytes {
            return false;
        }
        let mut evicted = 0;
        while self.held + need > self.settings.max_bytes {
            // The oldest other than `keep` (which may be the oldest).
            let Some(victim) = self.table.keys().find(|k| *k != keep).copied() else {
                break;
            };
            if let Some(d) = self.table.remove(&victim) {
                self.held -= d.cost;
                evicted += 1;
            }
        }
        if evicted > 0 {
            crate::stats::count_drops(
                &self.stats.reassembly.evicted,
                evicted,
                "IP fragments: reassembly memory full (--reassembly-max-bytes); oldest incomplete datagrams dropped",
            );
        }
        self.held + need <= self.settings.max_bytes
    }

    /// Drops the datagram `key` if held; true if it was.
    fn drop_datagram(&mut self, key: &FragmentKey) -> bool {
        match self.table.remove(key) {
            Some(d) => {
                self.held -= d.cost;
                self.publish_held();
                true
            }
            None => false,
        }
    }

    fn invalid(&mut self, key: &FragmentKey, what: &str) -> Option<Packet> {
        self.drop_datagram(key);
        count_drop(
            &self.stats.reassembly.invalid,
            &format!("IP fragments: {what}; datagram dropped"),
        );
        None
    }

    fn publish_held(&self) {
        let s = &self.stats.reassembly;
        s.held_bytes.store(self.held as u64, Relaxed);
        s.peak_bytes.fetch_max(self.held as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn key(id: u32) -> FragmentKey {
        FragmentKey {
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            id,
        }
    }

    fn key6(id: u32) -> FragmentKey {
        FragmentKey {
            src: "fd00::2".parse().unwrap(),
            dst: "fd00::1".parse().unwrap(),
            id,
        }
    }

    /// A UDP datagram (header with ports 40000 → 514 and a correct length,
    /// checksum not checked here) carrying `payload`.
    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut d = Vec::with_capacity(8 + payload.len());
        d.extend_from_slice(&40000u16.to_be_bytes());
        d.extend_from_slice(&514u16.to_be_bytes());
        d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(payload);
        d
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// An owned fragment: data at `offset` of datagram `key`.
    #[derive(Clone, Debug)]
    struct Frag {
        key: FragmentKey,
        offset: u32,
        len: u32,
        more: bool,
        data: Vec<u8>,
        at_ns: u64,
    }

    impl Frag {
        fn view(&self) -> FragmentView<'_> {
            FragmentView {
                key: self.key,
                timestamp_ns: self.at_ns,
                ifindex: 3,
                offset: self.offset,
                len: self.len,
                more: self.more,
                data: &self.data,
                coarse_time: false,
                encoding: Encoding::default(),
            }
        }
    }

    /// `datagram` split into fragments of `per` data bytes (a multiple of 8).
    fn split(key: FragmentKey, datagram: &[u8], per: usize) -> Vec<Frag> {
        datagram
            .chunks(per)
            .enumerate()
            .map(|(i, c)| Frag {
                key,
                offset: (i * per) as u32,
                len: c.len() as u32,
                more: (i + 1) * per < datagram.len(),
                data: c.to_vec(),
                at_ns: 1_000 * MS,
            })
            .collect()
    }

    fn raw(key: FragmentKey, offset: u32, more: bool, data: &[u8]) -> Frag {
        Frag {
            key,
            offset,
            len: data.len() as u32,
            more,
            data: data.to_vec(),
            at_ns: 1_000 * MS,
        }
    }

    struct Rig {
        r: Reassembler,
        stats: Arc<PipelineStats>,
    }

    impl Rig {
        fn new(settings: Settings) -> Self {
            let stats = Arc::new(PipelineStats::default());
            Self {
                r: Reassembler::new(settings, stats.clone()),
                stats,
            }
        }

        fn default() -> Self {
            Self::new(Settings::default())
        }

        /// Pushes every fragment; returns the datagrams completed, in order.
        fn push_all(&mut self, frags: &[Frag]) -> Vec<Packet> {
            frags
                .iter()
                .filter_map(|f| self.r.push(&f.view()))
                .collect()
        }

        fn counters(&self) -> Vec<(&'static str, u64)> {
            self.stats
                .reassembly
                .snapshot()
                .into_iter()
                .filter(|(_, v)| *v != 0)
                .collect()
        }
    }

    fn assert_datagram(p: &Packet, key: FragmentKey, sent: &[u8]) {
        assert_eq!((p.src, p.dst), (key.src, key.dst));
        assert_eq!((p.src_port, p.dst_port), (40000, 514));
        assert_eq!(p.wire_len as usize, sent.len());
        assert!(
            p.payload == sent,
            "payload differs ({} bytes)",
            p.payload.len()
        );
        assert!(!p.truncated());
        assert_eq!(p.ifindex, 3);
    }

    #[test]
    fn in_order_reversed_and_shuffled_give_the_same_datagram() {
        let sent = payload(8000, 1);
        let frags = split(key(1), &udp(&sent), 1480);
        assert_eq!(frags.len(), 6);
        let orders: [Vec<usize>; 3] = [
            (0..6).collect(),
            (0..6).rev().collect(),
            vec![3, 0, 5, 1, 4, 2],
        ];
        for order in orders {
            let mut rig = Rig::default();
            let frags: Vec<Frag> = order.iter().map(|&i| frags[i].clone()).collect();
            let out = rig.push_all(&frags);
            assert_eq!(out.len(), 1, "order {order:?}");
            assert_datagram(&out[0], key(1), &sent);
            assert_eq!(rig.r.held_bytes(), 0);
            assert!(rig.r.is_empty());
            assert_eq!(rig.counters(), [("fragments", 6), ("reassembled", 1)]);
        }
    }

    #[test]
    fn interleaved_datagrams_complete_apart() {
        let mut rig = Rig::default();
        let a = payload(3000, 2);
        let b = payload(2000, 3);
        let fa = split(key(10), &udp(&a), 1000);
        let fb = split(key6(10), &udp(&b), 1000);
        let mut mixed = Vec::new();
        for i in 0..fa.len().max(fb.len()) {
            mixed.extend(fb.get(fb.len().saturating_sub(i + 1)).cloned());
            mixed.extend(fa.get(i).cloned());
        }
        let out = rig.push_all(&mixed);
        assert_eq!(out.len(), 2);
        let (pa, pb) = if out[0].src.is_ipv4() {
            (&out[0], &out[1])
        } else {
            (&out[1], &out[0])
        };
        assert_datagram(pa, key(10), &a);
        assert_datagram(pb, key6(10), &b);
    }

    #[test]
    fn duplicates_are_dropped_alone() {
        let mut rig = Rig::default();
        let sent = payload(4000, 4);
        let f = split(key(2), &udp(&sent), 1024);
        let d = udp(&sent);
        // The same fragment twice, and one inside a run of two held ones.
        let inside = raw(key(2), 512, true, &d[512..1536]);
        let out = rig.push_all(&[
            f[0].clone(),
            f[0].clone(),
            f[1].clone(),
            inside,
            f[2].clone(),
            f[3].clone(),
        ]);
        assert_eq!(out.len(), 1);
        assert_datagram(&out[0], key(2), &sent);
        assert_eq!(
            rig.counters(),
            [
                ("fragments", 6),
                ("reassembled", 1),
                ("fragment_duplicate", 2)
            ]
        );
    }

    #[test]
    fn a_partial_overlap_drops_the_whole_datagram() {
        let mut rig = Rig::default();
        let sent = payload(3000, 5);
        let d = udp(&sent);
        let f = split(key(3), &d, 1000);
        // Starts inside fragment 0 and runs past it into a gap (RFC 5722:
        // even with the same bytes).
        let across = raw(key(3), 992, true, &d[992..1200]);
        let out = rig.push_all(&[f[0].clone(), across, f[1].clone(), f[2].clone()]);
        assert!(out.is_empty(), "nothing may come of an overlapped datagram");
        assert_eq!(
            rig.counters(),
            [("fragments", 4), ("fragment_overlap", 1)],
            "the fragments after the overlap start a new datagram that never completes"
        );
        assert_eq!(rig.r.len(), 1);
        // An overlap that covers a gap before held data, too.
        let mut rig = Rig::default();
        let out = rig.push_all(&[f[1].clone(), raw(key(3), 504, true, &d[504..1504])]);
        assert!(out.is_empty());
        assert_eq!(rig.stats.reassembly.overlap.load(Relaxed), 1);
        assert!(rig.r.is_empty());
    }

    #[test]
    fn lengths_that_contradict_drop_the_datagram() {
        let d = udp(&payload(3000, 6));
        let f = split(key(4), &d, 1000);
        let cases: [(&str, Vec<Frag>); 5] = [
            (
                "two last fragments ending apart",
                vec![f[2].clone(), raw(key(4), 2000, false, &d[2000..2400])],
            ),
            (
                "data past the last fragment's end",
                vec![raw(key(4), 1000, false, &d[1000..1200]), f[1].clone()],
            ),
            (
                "a last fragment ending before held data",
                vec![f[1].clone(), raw(key(4), 0, false, &d[..800])],
            ),
            ("an empty fragment", vec![raw(key(4), 8, true, &[])]),
            (
                "data past 65,535 bytes",
                vec![raw(key(4), 65_512, false, &[0; 8])],
            ),
        ];
        for (what, frags) in cases {
            let mut rig = Rig::default();
            assert!(rig.push_all(&frags).is_empty(), "{what}");
            assert_eq!(rig.stats.reassembly.invalid.load(Relaxed), 1, "{what}");
            assert!(rig.r.is_empty(), "{what}: nothing is kept");
        }
    }

    #[test]
    fn a_middle_fragment_not_in_8_byte_units_is_cut_over_ipv4_and_refused_over_ipv6() {
        let sent = payload(2000, 7);
        let d = udp(&sent);
        // IPv4: 1004 bytes with MF are taken as 1000 (Linux trims); the
        // next fragment starts at 1000.
        let mut rig = Rig::default();
        let out = rig.push_all(&[
            raw(key(5), 0, true, &d[..1004]),
            raw(key(5), 1000, false, &d[1000..]),
        ]);
        assert_eq!(out.len(), 1);
        assert_datagram(&out[0], key(5), &sent);
        // IPv6: refused (RFC 8200 §4.5).
        let mut rig = Rig::default();
        let out = rig.push_all(&[
            raw(key6(5), 0, true, &d[..1004]),
            raw(key6(5), 1000, false, &d[1000..]),
        ]);
        assert!(out.is_empty());
        assert_eq!(rig.stats.reassembly.invalid.load(Relaxed), 1);
    }

    #[test]
    fn the_udp_length_is_checked_against_the_reassembled_length() {
        let sent = payload(2000, 8);
        // Longer than the data: dropped.
        let mut d = udp(&sent);
        d[4..6].copy_from_slice(&2009u16.to_be_bytes());
        let mut rig = Rig::default();
        assert!(rig.push_all(&split(key(6), &d, 1000)).is_empty());
        assert_eq!(rig.stats.reassembly.invalid.load(Relaxed), 1);
        // Below its own header: dropped.
        d[4..6].copy_from_slice(&7u16.to_be_bytes());
        let mut rig = Rig::default();
        assert!(rig.push_all(&split(key(6), &d, 1000)).is_empty());
        assert_eq!(rig.stats.reassembly.invalid.load(Relaxed), 1);
        // Shorter: believed, as for a whole datagram.
        d[4..6].copy_from_slice(&(8 + 1500u16).to_be_bytes());
        let mut rig = Rig::default();
        let out = rig.push_all(&split(key(6), &d, 1000));
        assert_eq!(out[0].payload, sent[..1500]);
        assert_eq!(out[0].wire_len, 1500);
    }

    #[test]
    fn the_largest_datagrams_are_whole() {
        for (k, len) in [(key(7), 65_507usize), (key6(7), 65_527)] {
            let sent = payload(len, 9);
            let d = udp(&sent);
            let mut rig = Rig::default();
            // IPv6's minimum MTU (1280) leaves 1232 data bytes a fragment.
            let mut frags = split(k, &d, 1232);
            frags.reverse();
            let out = rig.push_all(&frags);
            assert_eq!(out.len(), 1, "{len}");
            assert_datagram(&out[0], k, &sent);
        }
    }

    #[test]
    fn snaplen_cuts_and_marks_and_data_captured_short_is_enough() {
        let sent = payload(5000, 10);
        let d = udp(&sent);
        let mut rig = Rig::new(Settings {
            snaplen: 1200,
            ..Settings::default()
        });
        // As the XDP program writes them with --snaplen 1200: data up to
        // byte 8 + 1200 of the datagram, the rest only counted.
        let frags: Vec<Frag> = split(key(8), &d, 1000)
            .into_iter()
            .map(|mut f| {
                let keep = (1208u32.saturating_sub(f.offset)).min(f.len) as usize;
                f.data.truncate(keep);
                f
            })
            .collect();
        assert_eq!(frags[2].data.len(), 0);
        let out = rig.push_all(&frags);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, sent[..1200]);
        assert_eq!(out[0].wire_len, 5000);
        assert!(out[0].truncated());
    }

    #[test]
    fn incomplete_datagrams_time_out() {
        let mut rig = Rig::new(Settings {
            timeout: Duration::from_secs(30),
            ..Settings::default()
        });
        let d = udp(&payload(3000, 11));
        let f = split(key(9), &d, 1000);
        // The middle fragment never comes.
        assert!(rig.push_all(&[f[0].clone(), f[2].clone()]).is_empty());
        let born = f[0].at_ns;
        rig.r.expire(born + 29_999 * MS);
        assert_eq!(rig.r.len(), 1);
        rig.r.expire(born + 30_000 * MS);
        assert!(rig.r.is_empty());
        assert_eq!(rig.r.held_bytes(), 0);
        assert_eq!(rig.stats.reassembly.timeout.load(Relaxed), 1);
        // Too late: it starts a new datagram, which never completes either.
        assert!(rig.r.push(&f[1].view()).is_none());
        rig.r.finish();
        assert_eq!(rig.stats.reassembly.timeout.load(Relaxed), 2);
    }

    #[test]
    fn a_discard_notice_drops_what_is_held() {
        let mut rig = Rig::default();
        let d = udp(&payload(3000, 12));
        let f = split(key(11), &d, 1000);
        rig.push_all(&f[1..]);
        rig.r.discard(&key(11));
        assert!(rig.r.is_empty());
        // A notice about nothing held changes nothing but the intake count.
        rig.r.discard(&key(12));
        assert_eq!(
            rig.counters(),
            [("fragments", 5), ("fragment_discarded", 1)]
        );
    }

    #[test]
    fn a_flood_of_incomplete_fragments_stays_within_the_cap_and_starves_nothing() {
        const CAP: usize = MIN_MAX_BYTES;
        let mut rig = Rig::new(Settings {
            max_bytes: CAP,
            ..Settings::default()
        });
        let mut done = 0;
        let mut peak = 0;
        for round in 0..2_000u32 {
            // Fifty tiny tail fragments of datagrams that never complete…
            for i in 0..50 {
                let id = 100_000 + round * 50 + i;
                let flood = raw(key(id), 8, true, &[0xEE; 8]);
                assert!(rig.r.push(&flood.view()).is_none());
                peak = peak.max(rig.r.held_bytes());
            }
            // …around a whole datagram, in fragments one after the other.
            let sent = payload(3000, round as u8);
            let out = rig.push_all(&split(key(round), &udp(&sent), 1480));
            assert_eq!(out.len(), 1, "round {round}: the datagram is starved");
            assert_datagram(&out[0], key(round), &sent);
            done += 1;
            peak = peak.max(rig.r.held_bytes());
        }
        assert_eq!(done, 2_000);
        // The peak as the reassembler records it, at every change (also
        // between a datagram's last fragment and its completion).
        let s = &rig.stats.reassembly;
        let recorded = s.peak_bytes.load(Relaxed) as usize;
        assert!(
            peak <= recorded && recorded <= CAP,
            "held {recorded} bytes, cap {CAP}"
        );
        // Each flood entry costs its data and overheads: the cap holds
        // about that many (less the room the last datagram made), and
        // every other one was evicted.
        let per = DATAGRAM_OVERHEAD + FRAGMENT_OVERHEAD + 8;
        let held = rig.r.len();
        assert!((CAP - 4096) / per <= held && held <= CAP / per, "{held}");
        assert_eq!(
            s.evicted.load(Relaxed),
            100_000 - held as u64,
            "{:?}",
            rig.counters()
        );
    }

    #[test]
    fn a_datagram_larger_than_the_cap_is_evicted_alone() {
        let mut rig = Rig::new(Settings {
            max_bytes: 8 << 10,
            ..Settings::default()
        });
        let small = payload(100, 13);
        let out = rig.push_all(&split(key(20), &udp(&small), 64));
        assert_eq!(out.len(), 1);
        let big = udp(&payload(20_000, 14));
        assert!(rig.push_all(&split(key(21), &big, 1480)).is_empty());
        assert!(rig.stats.reassembly.evicted.load(Relaxed) >= 1);
        assert!(rig.r.held_bytes() <= 8 << 10);
    }
}
