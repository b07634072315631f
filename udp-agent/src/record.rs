//! Decoding of what the XDP program hands over: ring buffer records, and
//! frames it redirected to an AF_XDP socket ([`decode_frame`]). Both become
//! the same [`PacketView`], so everything after capture is shared.
//!
//! A record is a [`RecordHeader`] followed by `cap_len` payload bytes, then
//! padding up to its size class (`udp_ebpf_common::RECORD_CLASSES`: the ring
//! reservation size must be a verifier constant), which is ignored.
//! The kernel side is trusted to follow that layout, but every length is still
//! checked: a record that does not add up is an error the caller counts, not
//! a panic or a silently wrong event.
//!
//! A record is a whole datagram, one IP fragment of a datagram
//! (`RECORD_FRAGMENT`, for [`crate::reassembly`]), or a notice that the
//! program rejected a datagram some of whose fragments it had already
//! written (`RECORD_FRAGMENT_DISCARD`): [`decode_record`] tells them apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;
use udp_ebpf_common::{
    Encoding, IP_V4, IP_V6, RECORD_COARSE_TIME, RECORD_FRAGMENT, RECORD_FRAGMENT_DISCARD,
    RECORD_HEADER_LEN, RECORD_MORE_FRAGMENTS, RecordHeader, XSK_STAMP_LEN, XSK_STAMP_MAGIC,
    XskStamp, encoding_of_flags,
    parse::{Outcome, parse_frame, read_addresses},
};

/// A captured datagram, owned, as the agent's later stages see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// CLOCK_MONOTONIC nanoseconds at capture (for a record stamped with the
    /// coarse clock, its narrowing: see [`PacketView::narrow_time`]).
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// UDP payload length on the wire.
    pub wire_len: u32,
    /// Captured payload bytes (`payload.len() <= wire_len`).
    pub payload: Vec<u8>,
    /// Its port's format and packing, as the port's rule said at capture.
    pub encoding: Encoding,
}

impl Packet {
    pub fn ip_version(&self) -> u8 {
        self.view().ip_version()
    }

    /// True when fewer bytes were captured than the datagram carried.
    pub fn truncated(&self) -> bool {
        self.view().truncated()
    }

    /// The same datagram, borrowed.
    pub fn view(&self) -> PacketView<'_> {
        PacketView {
            timestamp_ns: self.timestamp_ns,
            ifindex: self.ifindex,
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            wire_len: self.wire_len,
            payload: &self.payload,
            coarse_time: false,
            encoding: self.encoding,
        }
    }
}

/// A captured datagram borrowed from its ring record: what the capture
/// loop encodes without copying the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketView<'a> {
    /// CLOCK_MONOTONIC nanoseconds at capture; while `coarse_time` is set,
    /// the kernel's coarse stamp (its last tick before the capture).
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// UDP payload length on the wire.
    pub wire_len: u32,
    /// Captured payload bytes (`payload.len() <= wire_len`).
    pub payload: &'a [u8],
    /// `timestamp_ns` is still the kernel's coarse stamp (the last tick
    /// before the capture, `RECORD_COARSE_TIME`): see [`Self::narrow_time`].
    pub coarse_time: bool,
    /// Its port's format and packing, as the port's rule said at capture.
    pub encoding: Encoding,
}

impl PacketView<'_> {
    pub fn ip_version(&self) -> u8 {
        match self.src {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        }
    }

    /// True when fewer bytes were captured than the datagram carried.
    pub fn truncated(&self) -> bool {
        (self.payload.len() as u64) < u64::from(self.wire_len)
    }

    /// Turns a coarse stamp into the capture time, given `read_ns`, a
    /// CLOCK_MONOTONIC time taken before the record was read
    /// ([`crate::clock::narrow_coarse`]).
    pub fn narrow_time(&mut self, read_ns: u64, tick_ns: u64) {
        if self.coarse_time {
            self.timestamp_ns = crate::clock::narrow_coarse(self.timestamp_ns, read_ns, tick_ns);
            self.coarse_time = false;
        }
    }

    /// An owned copy. A coarse stamp not yet narrowed is copied as it is
    /// (`Packet` does not say which clock it holds).
    pub fn to_packet(&self) -> Packet {
        Packet {
            timestamp_ns: self.timestamp_ns,
            ifindex: self.ifindex,
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            wire_len: self.wire_len,
            payload: self.payload.to_vec(),
            encoding: self.encoding,
        }
    }
}

/// One ring record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A whole datagram.
    Datagram(PacketView<'a>),
    /// One IP fragment of a datagram, for the reassembler.
    Fragment(FragmentView<'a>),
    /// The program rejected this datagram after fragments of it that came
    /// before its first had been written: they are to be dropped.
    Discard(FragmentKey),
}

impl Record<'_> {
    /// Turns a coarse stamp into the capture time (see
    /// [`PacketView::narrow_time`]).
    pub fn narrow_time(&mut self, read_ns: u64, tick_ns: u64) {
        match self {
            Record::Datagram(p) => p.narrow_time(read_ns, tick_ns),
            Record::Fragment(f) => f.narrow_time(read_ns, tick_ns),
            Record::Discard(_) => {}
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its {RECORD_HEADER_LEN}-byte header")]
    Short(usize),
    #[error("record header says {cap_len} payload bytes but only {actual} follow")]
    LengthMismatch { cap_len: u32, actual: usize },
    #[error("record captured {cap_len} bytes of a {wire_len}-byte payload")]
    CapturedMoreThanWire { cap_len: u32, wire_len: u32 },
    #[error("record has IP version {0}")]
    IpVersion(u8),
    #[error("AF_XDP frame of {0} bytes without the program's stamp")]
    Unstamped(usize),
    #[error("AF_XDP frame is not a whole UDP datagram ({0:?})")]
    NotADatagram(Outcome),
    #[error("a fragment record where a whole datagram was expected")]
    Fragment,
}

/// Reads the fixed header at the start of `bytes`.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: at least size_of::<RecordHeader>() bytes are readable (checked
    // above, and a const assertion pins the size); RecordHeader is Pod, so any
    // bit pattern is valid; read_unaligned copes with the ring's alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RecordHeader>()) })
}

/// Decodes one ring record into an owned [`Packet`].
pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode_view(bytes).map(|v| v.to_packet())
}

/// Decodes one ring record of a whole datagram, borrowing its payload.
pub fn decode_view(bytes: &[u8]) -> Result<PacketView<'_>, DecodeError> {
    match decode_record(bytes)? {
        Record::Datagram(p) => Ok(p),
        _ => Err(DecodeError::Fragment),
    }
}

/// Decodes one ring record of any kind, borrowing its payload.
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let h = decode_header(bytes)?;
    let room = &bytes[RECORD_HEADER_LEN..];
    let Some(payload) = room.get(..h.cap_len as usize) else {
        return Err(DecodeError::LengthMismatch {
            cap_len: h.cap_len,
            actual: room.len(),
        });
    };
    if h.cap_len > h.wire_len {
        return Err(DecodeError::CapturedMoreThanWire {
            cap_len: h.cap_len,
            wire_len: h.wire_len,
        });
    }
    let (src, dst) = addresses(h.ip_version, &h.src_addr, &h.dst_addr)?;
    let coarse_time = h.flags & RECORD_COARSE_TIME != 0;
    // The port's format and packing (of a fragmented datagram: on its
    // first fragment's record).
    let encoding = encoding_of_flags(h.flags);
    if h.flags & RECORD_FRAGMENT == 0 {
        return Ok(Record::Datagram(PacketView {
            timestamp_ns: h.timestamp_ns,
            ifindex: h.ifindex,
            src,
            dst,
            src_port: h.src_port,
            dst_port: h.dst_port,
            wire_len: h.wire_len,
            payload,
            coarse_time,
            encoding,
        }));
    }
    let key = FragmentKey {
        src,
        dst,
        id: h.frag_id,
    };
    if h.flags & RECORD_FRAGMENT_DISCARD != 0 {
        return Ok(Record::Discard(key));
    }
    Ok(Record::Fragment(FragmentView {
        key,
        timestamp_ns: h.timestamp_ns,
        ifindex: h.ifindex,
        offset: u32::from(h.frag_offset) * 8,
        len: h.wire_len,
        more: h.flags & RECORD_MORE_FRAGMENTS != 0,
        data: payload,
        coarse_time,
        encoding,
    }))
}

/// Source and destination as the kernel lays them out: IPv4 in the first
/// 4 of 16 bytes.
fn addresses(
    ip_version: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Result<(IpAddr, IpAddr), DecodeError> {
    let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    match ip_version {
        IP_V4 => Ok((v4(src), v4(dst))),
        IP_V6 => Ok((
            IpAddr::V6(Ipv6Addr::from(*src)),
            IpAddr::V6(Ipv6Addr::from(*dst)),
        )),
        other => Err(DecodeError::IpVersion(other)),
    }
}

/// Decodes a frame the XDP program redirected to an AF_XDP socket bound
/// to interface `ifindex`: the stamp it wrote over the Ethernet addresses
/// ([`XskStamp`]) gives the capture time and how many payload bytes to
/// take; the headers are parsed here with the parsers the program runs.
/// The payload is borrowed from the frame.
pub fn decode_frame(frame: &[u8], ifindex: u32) -> Result<PacketView<'_>, DecodeError> {
    if frame.len() < XSK_STAMP_LEN {
        return Err(DecodeError::Unstamped(frame.len()));
    }
    // SAFETY: at least XSK_STAMP_LEN readable bytes (checked); integers
    // only, so any bit pattern is a value; read_unaligned for the frame's
    // alignment.
    let stamp = unsafe { std::ptr::read_unaligned(frame.as_ptr().cast::<XskStamp>()) };
    if stamp.magic != XSK_STAMP_MAGIC {
        return Err(DecodeError::Unstamped(frame.len()));
    }
    let start = frame.as_ptr() as usize;
    let end = start + frame.len();
    let meta = match parse_frame(start, end, frame.len()) {
        Outcome::Udp(meta) => meta,
        other => return Err(DecodeError::NotADatagram(other)),
    };
    let (src, dst) = read_addresses(start, end, &meta)
        .ok_or(DecodeError::NotADatagram(Outcome::Malformed))
        .and_then(|(s, d)| addresses(meta.ip_version, &s, &d))?;
    let cap_len = u32::from(stamp.cap_len);
    if cap_len > meta.payload_len {
        return Err(DecodeError::CapturedMoreThanWire {
            cap_len,
            wire_len: meta.payload_len,
        });
    }
    let from = meta.payload_offset as usize;
    let Some(payload) = frame.get(from..from + cap_len as usize) else {
        return Err(DecodeError::LengthMismatch {
            cap_len,
            actual: frame.len().saturating_sub(from),
        });
    };
    Ok(PacketView {
        timestamp_ns: stamp.timestamp_ns,
        ifindex,
        src,
        dst,
        src_port: meta.src_port,
        dst_port: meta.dst_port,
        wire_len: meta.payload_len,
        payload,
        coarse_time: stamp.flags & RECORD_COARSE_TIME != 0,
        encoding: stamp.encoding(),
    })
}

/// Writes `stamp` over the first bytes of `frame`, as the XDP program does
/// before a redirect (for tests and benches).
pub fn stamp_frame(frame: &mut [u8], stamp: XskStamp) {
    assert!(frame.len() >= XSK_STAMP_LEN);
    // SAFETY: XSK_STAMP_LEN writable bytes (asserted).
    unsafe { std::ptr::write_unaligned(frame.as_mut_ptr().cast::<XskStamp>(), stamp) };
}

/// Serialises a header the way the kernel lays it out (for tests and benches).
pub fn encode_record(h: &RecordHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; RECORD_HEADER_LEN];
    // SAFETY: `out` has exactly size_of::<RecordHeader>() bytes.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast::<RecordHeader>(), *h) };
    out.extend_from_slice(payload);
    out
}

/// What identifies a datagram's fragments: the addresses (and with them the
/// IP version) and the identification. The protocol is always UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
}

/// One IP fragment as a capture path hands it over, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentView<'a> {
    pub key: FragmentKey,
    /// CLOCK_MONOTONIC nanoseconds at capture; while `coarse_time` is set,
    /// the kernel's coarse stamp ([`PacketView::narrow_time`]).
    pub timestamp_ns: u64,
    pub ifindex: u32,
    /// Where its data lies in the datagram's data (the UDP header first),
    /// in bytes.
    pub offset: u32,
    /// Data bytes the fragment carries on the wire.
    pub len: u32,
    /// More fragments follow (IPv4 MF, IPv6 M).
    pub more: bool,
    /// The captured data: the first `data.len() <= len` bytes of it (a
    /// capture path may leave out what lies past the snap length).
    pub data: &'a [u8],
    pub coarse_time: bool,
    /// The port's format and packing: known on the first fragment (offset
    /// 0), whose record the program writes once the port is known.
    pub encoding: Encoding,
}

impl FragmentView<'_> {
    /// As [`PacketView::narrow_time`].
    pub fn narrow_time(&mut self, read_ns: u64, tick_ns: u64) {
        if self.coarse_time {
            self.timestamp_ns = crate::clock::narrow_coarse(self.timestamp_ns, read_ns, tick_ns);
            self.coarse_time = false;
        }
    }

    pub(crate) fn is_v4(&self) -> bool {
        self.key.src.is_ipv4()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire layout, byte by byte, as the XDP program writes it.
    #[rustfmt::skip]
    const FIXTURE: [u8; 67] = [
        0x15, 0xCD, 0x5B, 0x07, 0x00, 0x00, 0x00, 0x00, // timestamp_ns = 123456789
        0x07, 0x00, 0x00, 0x00,                         // ifindex = 7
        0x05, 0x00, 0x00, 0x00,                         // wire_len = 5
        0x03, 0x00, 0x00, 0x00,                         // cap_len = 3
        0x40, 0x9C,                                     // src_port = 40000
        0x02, 0x02,                                     // dst_port = 514
        0x04,                                           // ip_version = 4
        0xC0,                                           // flags: encoding syslog (4 << 4), pack (0x80)
        0x00, 0x00,                                     // frag_offset = 0
        0x00, 0x00, 0x00, 0x00,                         // frag_id = 0
        198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // src_addr
        198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // dst_addr
        b'a', b'b', b'c',                               // payload
    ];

    #[test]
    fn decodes_the_wire_layout() {
        let p = decode(&FIXTURE).unwrap();
        assert_eq!(p.timestamp_ns, 123_456_789);
        assert_eq!(p.ifindex, 7);
        assert_eq!(p.wire_len, 5);
        assert_eq!(p.src, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((p.src_port, p.dst_port), (40000, 514));
        assert_eq!(p.payload, b"abc");
        assert!(p.truncated());
        assert_eq!(p.ip_version(), 4);
        assert_eq!(
            p.encoding,
            Encoding {
                format: udp_ebpf_common::Format::Syslog,
                pack: true
            }
        );
        assert_eq!(decode_view(&FIXTURE).unwrap(), p.view());
    }

    #[test]
    fn round_trips_through_encode_record() {
        let h = decode_header(&FIXTURE).unwrap();
        assert_eq!(encode_record(&h, b"abc"), FIXTURE.to_vec());
    }

    #[test]
    fn padding_after_the_payload_is_not_payload() {
        // As the kernel writes it: the payload, then stale ring bytes up to
        // the record's size class.
        let mut padded = FIXTURE.to_vec();
        padded.extend_from_slice(&[0xEE; 29]);
        assert_eq!(padded.len(), RECORD_HEADER_LEN + 32);
        assert_eq!(decode(&padded), decode(&FIXTURE));
        assert_eq!(decode(&padded).unwrap().payload, b"abc");
    }

    #[test]
    fn decodes_ipv6() {
        let mut h = decode_header(&FIXTURE).unwrap();
        h.ip_version = 6;
        h.src_addr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        h.dst_addr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let p = decode(&encode_record(&h, b"abc")).unwrap();
        assert_eq!(p.src, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(p.ip_version(), 6);
    }

    fn stamped(frame: &mut [u8], cap_len: u16, flags: u8) {
        stamp_frame(
            frame,
            XskStamp {
                timestamp_ns: 123_456_789,
                cap_len,
                flags,
                magic: XSK_STAMP_MAGIC,
            },
        );
    }

    #[test]
    fn a_stamped_frame_decodes_like_its_ring_record() {
        use udp_ebpf_common::frame::FrameBuilder;
        let mut frame = FrameBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2])
            .udp(40000, 514, b"abcde")
            .build();
        // The fixture's port encoding rides in the stamp's flags.
        let flags = decode_header(&FIXTURE).unwrap().flags;
        stamped(&mut frame, 3, flags);
        let p = decode_frame(&frame, 7).unwrap();
        // The fixture's record: 3 of 5 payload bytes, same addresses/ports,
        // same encoding.
        assert_eq!(p, decode_view(&FIXTURE).unwrap());
        // IPv6, a coarse stamp, the whole payload.
        let mut frame = FrameBuilder::ipv6(
            "fd00::1".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
        )
        .udp(1, 2, b"xyz")
        .build();
        stamped(&mut frame, 3, RECORD_COARSE_TIME);
        let p = decode_frame(&frame, 1).unwrap();
        assert_eq!(p.src, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (p.payload, p.coarse_time, p.wire_len),
            (&b"xyz"[..], true, 3)
        );
    }

    #[test]
    fn frames_that_do_not_add_up_are_errors() {
        use udp_ebpf_common::frame::FrameBuilder;
        let good = FrameBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2])
            .udp(40000, 514, b"abcde")
            .build();
        // Not stamped: the Ethernet addresses as they came.
        assert_eq!(
            decode_frame(&good, 1),
            Err(DecodeError::Unstamped(good.len()))
        );
        let mut f = good.clone();
        stamped(&mut f, 6, 0);
        assert_eq!(
            decode_frame(&f, 1),
            Err(DecodeError::CapturedMoreThanWire {
                cap_len: 6,
                wire_len: 5
            })
        );
        let mut f = good.clone();
        stamped(&mut f, 5, 0);
        f.truncate(f.len() - 1);
        assert_eq!(
            decode_frame(&f, 1),
            Err(DecodeError::NotADatagram(Outcome::Malformed))
        );
        assert_eq!(decode_frame(&f[..8], 1), Err(DecodeError::Unstamped(8)));
    }

    /// A fragment record, byte by byte: the second fragment (offset
    /// 1,480 bytes = 185 units) of IPv4 datagram 0xBEEF, more to come.
    #[rustfmt::skip]
    const FRAGMENT_FIXTURE: [u8; 66] = [
        0x15, 0xCD, 0x5B, 0x07, 0x00, 0x00, 0x00, 0x00, // timestamp_ns = 123456789
        0x07, 0x00, 0x00, 0x00,                         // ifindex = 7
        0xC8, 0x05, 0x00, 0x00,                         // wire_len = 1480 (fragment data)
        0x02, 0x00, 0x00, 0x00,                         // cap_len = 2
        0x00, 0x00,                                     // src_port: unknown yet
        0x00, 0x00,                                     // dst_port: unknown yet
        0x04,                                           // ip_version = 4
        0x07,                                           // flags: coarse | fragment | more
        0xB9, 0x00,                                     // frag_offset = 185 (× 8 = 1480)
        0xEF, 0xBE, 0x00, 0x00,                         // frag_id = 0xBEEF
        198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // src_addr
        198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // dst_addr
        b'x', b'y',                                     // fragment data
    ];

    #[test]
    fn a_whole_datagram_has_zero_fragment_fields() {
        let h = decode_header(&FIXTURE).unwrap();
        assert_eq!(h.flags & RECORD_FRAGMENT, 0);
        assert_eq!((h.frag_offset, h.frag_id), (0, 0));
        assert!(matches!(decode_record(&FIXTURE), Ok(Record::Datagram(_))));
    }

    #[test]
    fn decodes_a_fragment_record() {
        let key = FragmentKey {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            id: 0xBEEF,
        };
        assert_eq!(
            decode_record(&FRAGMENT_FIXTURE),
            Ok(Record::Fragment(FragmentView {
                key,
                timestamp_ns: 123_456_789,
                ifindex: 7,
                offset: 1480,
                len: 1480,
                more: true,
                data: b"xy",
                coarse_time: true,
                encoding: Encoding::default(),
            }))
        );
        assert_eq!(decode_view(&FRAGMENT_FIXTURE), Err(DecodeError::Fragment));
        // The discard notice: the same key, nothing else.
        let mut h = decode_header(&FRAGMENT_FIXTURE).unwrap();
        h.flags = RECORD_FRAGMENT | RECORD_FRAGMENT_DISCARD;
        (h.wire_len, h.cap_len) = (0, 0);
        assert_eq!(
            decode_record(&encode_record(&h, b"")),
            Ok(Record::Discard(key))
        );
    }

    #[test]
    fn rejects_records_that_do_not_add_up() {
        assert_eq!(decode(&FIXTURE[..63]), Err(DecodeError::Short(63)));
        assert_eq!(
            decode(&FIXTURE[..66]),
            Err(DecodeError::LengthMismatch {
                cap_len: 3,
                actual: 2
            })
        );
        let mut h = decode_header(&FIXTURE).unwrap();
        h.wire_len = 2;
        assert_eq!(
            decode(&encode_record(&h, b"abc")),
            Err(DecodeError::CapturedMoreThanWire {
                cap_len: 3,
                wire_len: 2
            })
        );
        h.wire_len = 3;
        h.ip_version = 5;
        assert_eq!(
            decode(&encode_record(&h, b"abc")),
            Err(DecodeError::IpVersion(5))
        );
    }
}
