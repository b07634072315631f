//! Header parsers over a raw byte range `[start, end)`.
//!
//! The XDP program calls these with `ctx.data()`/`ctx.data_end()`; host tests
//! call them with the address range of a `Vec<u8>`. Every header is checked
//! against `end` before any of its fields is read (`header`), in the form the
//! BPF verifier understands, and every offset is bounded (constant VLAN depth,
//! IPv4 header length from a 4-bit field, a constant number of IPv6 extension
//! headers), so the verifier can prove each access safe.
//!
//! [`parse_headers`] needs only the first buffer; the length fields it reads
//! are checked against the whole frame by [`parse_frame`], or — in the XDP
//! program, only for enabled ports, to keep the non-matching path short —
//! by the caller with the `ip_end` it returns.
//!
//! `frame_len` is the length of the whole frame, which for a multi-buffer
//! (`xdp.frags`) frame is longer than `end - start`: headers must be in the
//! first buffer, the payload may continue in later fragments. Length fields are
//! checked against `frame_len`, never trusted.

/// How many 802.1Q / 802.1ad tags we step over (QinQ is two). A frame with
/// more is `Unsupported`.
pub const VLAN_MAX_DEPTH: usize = 2;
/// How many IPv6 extension headers we walk before giving up (`Unsupported`).
/// RFC 8200 sets no limit; a packet carries each kind at most once or twice
/// (destination options may come twice), so eight cover every order it
/// recommends with room to spare. A walk that runs out costs only frames
/// that carry that many.
pub const IPV6_EXT_MAX_DEPTH: usize = 10;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_MOBILITY: u8 = 135;
pub const IPPROTO_HIP: u8 = 139;
pub const IPPROTO_SHIM6: u8 = 140;
/// RFC 3692 experimental extension header numbers (RFC 8200 §4.8 lists
/// them as extension headers).
pub const IPPROTO_EXPERIMENT1: u8 = 253;
pub const IPPROTO_EXPERIMENT2: u8 = 254;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
// `read_addresses` masks the IP header offset with 0x3F.
const _: () = assert!(ETH_HLEN + 4 * VLAN_MAX_DEPTH <= 0x3F);

/// What a frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4/IPv6, or IP but not UDP.
    NotUdp,
    /// Deeper than the parser looks: more than `VLAN_MAX_DEPTH` VLAN tags,
    /// more than `IPV6_EXT_MAX_DEPTH` IPv6 extension headers, or an
    /// extension header it does not step over ([`is_unsupported_header`]).
    /// Possibly UDP: it cannot tell.
    Unsupported,
    /// A header is cut short, or a length field contradicts the frame.
    Malformed,
    /// A UDP IPv4 fragment, or an IPv6 packet with a non-atomic fragment
    /// header; [`parse_fragment`] reads it.
    Fragment,
    /// A well-formed UDP datagram.
    Udp(UdpMeta),
}

/// True for an IP protocol number that names a header the parser does not
/// step over but that may carry UDP after it: IPsec AH, and the IPv6
/// extension headers other than hop-by-hop, routing, fragment and
/// destination options. (ESP is not among them: what it carries is
/// encrypted, so it is simply not UDP to us.)
#[inline(always)]
pub fn is_unsupported_header(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_AH
            | IPPROTO_MOBILITY
            | IPPROTO_HIP
            | IPPROTO_SHIM6
            | IPPROTO_EXPERIMENT1
            | IPPROTO_EXPERIMENT2
    )
}

/// The outcome of an IPv6 packet whose next header is `proto`, not UDP.
#[inline(always)]
fn not_udp(proto: u8) -> Outcome {
    if is_unsupported_header(proto) {
        Outcome::Unsupported
    } else {
        Outcome::NotUdp
    }
}

/// The outcome of an IPv4 packet whose protocol is `proto`, not UDP: of
/// the headers [`is_unsupported_header`] names, only AH is an IPv4
/// protocol. It is tested alone, after the test for UDP: the compiler
/// folds a test for the whole set into the one for UDP, ahead of it, which
/// costs every UDP datagram (a datagram to a disabled port: 8.9 ns with
/// this test, 10.4 ns with the folded one, in one kernel bench run).
#[inline(always)]
fn not_udp4(proto: u8) -> Outcome {
    if proto == IPPROTO_AH {
        Outcome::Unsupported
    } else {
        Outcome::NotUdp
    }
}

/// The fields of a UDP datagram the port lookup needs, and where the rest are.
///
/// The addresses are not copied here: most traffic leaves at the port
/// lookup, and copying them (32 byte loads for IPv6) before it would cost
/// every non-matching frame. [`read_addresses`] reads them from `l3_offset`
/// for the datagrams that are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpMeta {
    /// 4 or 6.
    pub ip_version: u8,
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the first payload byte from the start of the frame.
    pub payload_offset: u32,
    /// UDP payload length on the wire (UDP length field - 8), already checked
    /// to lie within the frame.
    pub payload_len: u32,
}

/// Address of a `len`-byte header at `off`, if all of it lies before `end`.
///
/// Every field of a header is then read through this one checked address
/// with a constant offset (`rd8`/`rd16`): the verifier ties the bounds check
/// to that register, whereas recomputing `start + off + k` for each field
/// would give it a fresh, unchecked packet pointer.
#[inline(always)]
fn header(start: usize, end: usize, off: usize, len: usize) -> Option<usize> {
    let p = start + off;
    if p + len > end {
        return None;
    }
    Some(p)
}

/// Byte `k` of a header returned by [`header`].
///
/// # Safety
/// `p` must come from `header(.., len)` with `k < len`.
#[inline(always)]
unsafe fn rd8(p: usize, k: usize) -> u8 {
    // SAFETY: the caller's header check covers `p + k`.
    unsafe { *((p + k) as *const u8) }
}

/// Big-endian u32 at byte `k` of a header returned by [`header`].
///
/// # Safety
/// `p` must come from `header(.., len)` with `k + 4 <= len`.
#[inline(always)]
unsafe fn rd32(p: usize, k: usize) -> u32 {
    // SAFETY: the caller's header check covers `p + k .. p + k + 4`.
    u32::from_be(unsafe { core::ptr::read_unaligned((p + k) as *const u32) })
}

/// Big-endian u16 at byte `k` of a header returned by [`header`].
///
/// An unaligned read: one 16-bit load in the XDP program (built with the
/// BPF backend's `allows-misaligned-mem-access`, see udp-ebpf's build.rs).
///
/// # Safety
/// `p` must come from `header(.., len)` with `k + 2 <= len`.
#[inline(always)]
unsafe fn rd16(p: usize, k: usize) -> u16 {
    // SAFETY: the caller's header check covers `p + k .. p + k + 2`.
    u16::from_be(unsafe { core::ptr::read_unaligned((p + k) as *const u16) })
}

/// The IPv4 address at byte `k` of a header, in the front of 16 bytes.
///
/// # Safety
/// `p` must come from `header(.., len)` with `k + 4 <= len`.
#[inline(always)]
unsafe fn rd_addr4(p: usize, k: usize) -> [u8; 16] {
    // SAFETY: forwarded from the caller. One 32-bit load, widened (no byte
    // loop: the compiler would keep every byte in a register of its own).
    let a = unsafe { core::ptr::read_unaligned((p + k) as *const [u8; 4]) };
    u128::from(u32::from_le_bytes(a)).to_le_bytes()
}

/// The IPv6 address at byte `k` of a header.
///
/// # Safety
/// `p` must come from `header(.., len)` with `k + 16 <= len`.
#[inline(always)]
unsafe fn rd_addr6(p: usize, k: usize) -> [u8; 16] {
    // SAFETY: forwarded from the caller.
    unsafe { core::ptr::read_unaligned((p + k) as *const [u8; 16]) }
}

/// Source and destination address of a datagram `parse_headers` returned
/// as `meta` from the same `[start, end)`; IPv4 addresses in the first 4
/// bytes, the rest zero. `None` only if `meta` did not come from this range.
#[inline(always)]
pub fn read_addresses(start: usize, end: usize, meta: &UdpMeta) -> Option<([u8; 16], [u8; 16])> {
    read_addresses_at(start, end, meta.ip_version, meta.l3_offset)
}

/// [`read_addresses`] of the IP header at `l3_offset` (as a parser
/// returned it) of version `ip_version`.
#[inline(always)]
pub fn read_addresses_at(
    start: usize,
    end: usize,
    ip_version: u8,
    l3_offset: u32,
) -> Option<([u8; 16], [u8; 16])> {
    // The IP header was checked when it was parsed, but the verifier does
    // not carry that over: mask the offset (the IP header starts at most
    // 14 + 4 × VLAN_MAX_DEPTH bytes in, so 0x3F keeps it) to give it a
    // known bound, then check the header against `end` again.
    let off = (l3_offset & 0x3F) as usize;
    if ip_version == 4 {
        let ip = header(start, end, off, IPV4_MIN_HLEN)?;
        // SAFETY: addresses are at 12..20 of the 20 checked bytes.
        Some(unsafe { (rd_addr4(ip, 12), rd_addr4(ip, 16)) })
    } else {
        let ip = header(start, end, off, IPV6_HLEN)?;
        // SAFETY: addresses are at 8..40 of the 40 checked bytes.
        Some(unsafe { (rd_addr6(ip, 8), rd_addr6(ip, 24)) })
    }
}

/// Steps over the Ethernet header and up to `VLAN_MAX_DEPTH` VLAN tags.
/// Returns the inner EtherType and the offset of the layer-3 header; with
/// more tags than that, the EtherType is the next tag's TPID (0x8100 or
/// 0x88A8), which callers take for `Unsupported`.
#[inline(always)]
pub fn parse_eth(start: usize, end: usize) -> Option<(u16, usize)> {
    let eth = header(start, end, 0, ETH_HLEN)?;
    // SAFETY: `eth` covers ETH_HLEN bytes.
    let mut proto = unsafe { rd16(eth, 12) };
    let mut off = ETH_HLEN;
    let mut depth = 0;
    while depth < VLAN_MAX_DEPTH {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI followed by the next EtherType.
        let tag = header(start, end, off, 4)?;
        // SAFETY: `tag` covers 4 bytes.
        proto = unsafe { rd16(tag, 2) };
        off += 4;
        depth += 1;
    }
    Some((proto, off))
}

/// Parses a whole frame down to the UDP payload, checking the IP length
/// field against `frame_len`.
#[inline(always)]
pub fn parse_frame(start: usize, end: usize, frame_len: usize) -> Outcome {
    let (outcome, ip_end) = parse_headers(start, end);
    match outcome {
        Outcome::Udp(_) if ip_end > frame_len => Outcome::Malformed,
        other => other,
    }
}

/// Parses the headers in `[start, end)`. For a UDP datagram also returns
/// `ip_end`, where the IP header says the packet ends (from the frame's
/// start): a frame shorter than that is malformed, which the caller checks
/// against the whole frame's length.
#[inline(always)]
pub fn parse_headers(start: usize, end: usize) -> (Outcome, usize) {
    // The common case first: untagged IPv4 without options. One bounds check
    // covers the Ethernet, IP and UDP headers and every field is at a
    // constant offset, which takes most of the work off the non-matching
    // path. Anything else (and a frame too short for this check) takes the
    // general path below, which reaches the same outcome for these frames.
    if let Some(h) = header(start, end, 0, ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN) {
        // SAFETY: `h` covers the 42 bytes read below.
        let (proto, b0) = unsafe { (rd16(h, 12), rd8(h, ETH_HLEN)) };
        if proto == ETH_P_IP && b0 == 0x45 {
            // SAFETY: as above.
            return unsafe { parse_ipv4_plain(h) };
        }
    }
    let Some((proto, l3)) = parse_eth(start, end) else {
        return (Outcome::Malformed, 0);
    };
    match proto {
        ETH_P_IP => parse_ipv4(start, end, l3),
        ETH_P_IPV6 => parse_ipv6(start, end, l3),
        // A tag beyond VLAN_MAX_DEPTH.
        ETH_P_8021Q | ETH_P_8021AD => (Outcome::Unsupported, 0),
        _ => (Outcome::NotUdp, 0),
    }
}

/// IPv4 at `off`: variable header length (options), fragments, total length.
#[inline(always)]
pub fn parse_ipv4(start: usize, end: usize, off: usize) -> (Outcome, usize) {
    // The fixed 20 bytes must be there before any field is trusted.
    let Some(ip) = header(start, end, off, IPV4_MIN_HLEN) else {
        return (Outcome::Malformed, 0);
    };
    // SAFETY: `ip` covers IPV4_MIN_HLEN bytes; all offsets below are < 20.
    let (b0, total_len, frag, proto) =
        unsafe { (rd8(ip, 0), rd16(ip, 2), rd16(ip, 6), rd8(ip, 9)) };
    // IHL counts 32-bit words: 5..=15, i.e. 20..=60 bytes. Options make the
    // header variable, so its full length is checked against `end` again.
    let hlen = ((b0 & 0x0F) as usize) * 4;
    if b0 >> 4 != 4 || hlen < IPV4_MIN_HLEN || header(start, end, off, hlen).is_none() {
        return (Outcome::Malformed, 0);
    }
    if proto != IPPROTO_UDP {
        return (not_udp4(proto), 0);
    }
    // More-fragments flag (0x2000) or a non-zero offset (0x1FFF).
    if frag & 0x3FFF != 0 {
        return (Outcome::Fragment, 0);
    }
    let total_len = total_len as usize;
    // The IP packet must hold its own header plus a UDP header. That it
    // does not claim more bytes than the frame carries (Ethernet padding may
    // make the frame longer, never shorter) is checked against `ip_end`.
    if total_len < hlen + UDP_HLEN {
        return (Outcome::Malformed, 0);
    }
    (
        parse_udp(start, end, off + hlen, total_len - hlen, 4, off),
        off + total_len,
    )
}

/// `parse_ipv4` and `parse_udp` for an untagged IPv4 header of 20 bytes
/// (first byte 0x45) at offset 14: the same checks in the same order.
///
/// # Safety
/// `h` must come from `header(start, end, 0, 42)` for the frame's `start`.
#[inline(always)]
unsafe fn parse_ipv4_plain(h: usize) -> (Outcome, usize) {
    const IP: usize = ETH_HLEN;
    const UDP: usize = ETH_HLEN + IPV4_MIN_HLEN;
    // SAFETY: every offset below is inside the 42 bytes `h` covers.
    let (proto, frag, total_len) = unsafe { (rd8(h, IP + 9), rd16(h, IP + 6), rd16(h, IP + 2)) };
    if proto != IPPROTO_UDP {
        return (not_udp4(proto), 0);
    }
    if frag & 0x3FFF != 0 {
        return (Outcome::Fragment, 0);
    }
    let total_len = total_len as usize;
    if total_len < IPV4_MIN_HLEN + UDP_HLEN {
        return (Outcome::Malformed, 0);
    }
    // SAFETY: as above.
    let udp_len = unsafe { rd16(h, UDP + 4) } as usize;
    if udp_len < UDP_HLEN || udp_len > total_len - IPV4_MIN_HLEN {
        return (Outcome::Malformed, 0);
    }
    // SAFETY: as above.
    let (src_port, dst_port) = unsafe { (rd16(h, UDP), rd16(h, UDP + 2)) };
    (
        Outcome::Udp(UdpMeta {
            ip_version: 4,
            l3_offset: IP as u32,
            src_port,
            dst_port,
            payload_offset: (UDP + UDP_HLEN) as u32,
            payload_len: (udp_len - UDP_HLEN) as u32,
        }),
        IP + total_len,
    )
}

/// Where a walk over an IPv6 header's extension headers stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ipv6Walk {
    /// At the UDP header, at this offset, with this many bytes of the IP
    /// payload from there on.
    Udp(usize, usize),
    /// At a fragment header that is not atomic, at this offset, with this
    /// many bytes of the IP payload from there on.
    Fragment(usize, usize),
    /// Anything else.
    Stop(Outcome),
}

/// Walks the extension headers of the IPv6 header at `off` (whose first
/// Next Header is `next` and Payload Length `payload_len`): hop-by-hop,
/// routing, destination options and atomic fragment headers, up to
/// `IPV6_EXT_MAX_DEPTH`, to the UDP header or to a real fragment header.
#[inline(always)]
fn walk_ipv6(start: usize, end: usize, off: usize, mut next: u8, payload_len: u16) -> Ipv6Walk {
    let mut remaining = payload_len as usize;
    let mut l4 = off + IPV6_HLEN;
    let mut depth = 0;
    while depth < IPV6_EXT_MAX_DEPTH {
        match next {
            IPPROTO_UDP => return Ipv6Walk::Udp(l4, remaining),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Next header, then the length in 8-octet units not counting
                // the first 8 octets (so every such header is >= 8 bytes).
                let Some(ext) = header(start, end, l4, 8) else {
                    return Ipv6Walk::Stop(Outcome::Malformed);
                };
                // SAFETY: `ext` covers 8 bytes.
                let (nh, units) = unsafe { (rd8(ext, 0), rd8(ext, 1)) };
                let len = (units as usize + 1) * 8;
                if len > remaining {
                    return Ipv6Walk::Stop(Outcome::Malformed);
                }
                next = nh;
                l4 += len;
                remaining -= len;
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = header(start, end, l4, 8) else {
                    return Ipv6Walk::Stop(Outcome::Malformed);
                };
                // SAFETY: `ext` covers 8 bytes.
                let (nh, frag) = unsafe { (rd8(ext, 0), rd16(ext, 2)) };
                if remaining < 8 {
                    return Ipv6Walk::Stop(Outcome::Malformed);
                }
                // Offset (high 13 bits) or M flag (bit 0): a real fragment.
                // Offset 0 without M is an "atomic fragment": the whole datagram.
                if frag & 0xFFF9 != 0 {
                    return Ipv6Walk::Fragment(l4, remaining);
                }
                next = nh;
                l4 += 8;
                remaining -= 8;
            }
            other => return Ipv6Walk::Stop(not_udp(other)),
        }
        depth += 1;
    }
    match next {
        IPPROTO_UDP => Ipv6Walk::Udp(l4, remaining),
        // Another extension header past the walk's depth.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
            Ipv6Walk::Stop(Outcome::Unsupported)
        }
        other => Ipv6Walk::Stop(not_udp(other)),
    }
}

/// IPv6 at `off`, walking hop-by-hop, routing, destination-options and
/// (atomic) fragment headers up to `IPV6_EXT_MAX_DEPTH`.
#[inline(always)]
pub fn parse_ipv6(start: usize, end: usize, off: usize) -> (Outcome, usize) {
    let Some(ip) = header(start, end, off, IPV6_HLEN) else {
        return (Outcome::Malformed, 0);
    };
    // SAFETY: `ip` covers IPV6_HLEN bytes; all offsets below are < 40.
    let (b0, payload_len, next) = unsafe { (rd8(ip, 0), rd16(ip, 4), rd8(ip, 6)) };
    if b0 >> 4 != 6 {
        return (Outcome::Malformed, 0);
    }
    let ip_end = off + IPV6_HLEN + payload_len as usize;
    match walk_ipv6(start, end, off, next, payload_len) {
        Ipv6Walk::Udp(l4, remaining) => (parse_udp(start, end, l4, remaining, 6, off), ip_end),
        Ipv6Walk::Fragment(..) => (Outcome::Fragment, 0),
        Ipv6Walk::Stop(outcome) => (outcome, 0),
    }
}

/// One IP fragment of a UDP datagram, as [`parse_fragment`] reads it.
///
/// Aligned to 8 bytes: the XDP program keeps it on its stack, and the BPF
/// backend (which may emit misaligned accesses, see udp-ebpf's build.rs)
/// copies it with 8-byte stores, which the verifier refuses on the stack
/// unless they are aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragMeta {
    /// 4 or 6.
    pub ip_version: u8,
    /// More fragments follow (IPv4 MF, IPv6 M).
    pub more: bool,
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: u32,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// Where this fragment's data lies in the datagram's, in bytes.
    pub offset: u32,
    /// Offset of the fragment's first data byte from the start of the frame.
    pub data_offset: u32,
    /// Data bytes in this fragment (checked to lie within the IP packet).
    pub data_len: u32,
    /// The UDP ports, from the first fragment (offset 0), which must hold
    /// the whole UDP header; 0 in the others.
    pub src_port: u16,
    pub dst_port: u16,
}

/// The largest IPv4 Total Length and IPv6 Payload Length: a fragment whose
/// data ends past what such a packet can hold is malformed (Linux drops it
/// as oversize, or with an ICMPv6 parameter problem).
const IP_MAX_LEN: usize = 65535;

/// Parses a frame [`parse_headers`] called a `Fragment` down to the
/// fragment's data. Also returns `ip_end`, as [`parse_headers`] does, for
/// the caller to check against the whole frame. `Err` holds the outcome
/// of a frame that turns out not to be a UDP fragment we read: `NotUdp`,
/// `Unsupported` (an IPv6 fragment whose next header is an extension
/// header) or `Malformed` — among them an empty fragment, one that ends
/// past 65,535 bytes, and a first fragment without the whole UDP header
/// (RFC 1858, RFC 7112).
#[inline(always)]
pub fn parse_fragment(start: usize, end: usize) -> (Result<FragMeta, Outcome>, usize) {
    let Some((proto, l3)) = parse_eth(start, end) else {
        return (Err(Outcome::Malformed), 0);
    };
    match proto {
        ETH_P_IP => parse_ipv4_fragment(start, end, l3),
        ETH_P_IPV6 => parse_ipv6_fragment(start, end, l3),
        ETH_P_8021Q | ETH_P_8021AD => (Err(Outcome::Unsupported), 0),
        _ => (Err(Outcome::NotUdp), 0),
    }
}

#[inline(always)]
fn parse_ipv4_fragment(start: usize, end: usize, off: usize) -> (Result<FragMeta, Outcome>, usize) {
    let Some(ip) = header(start, end, off, IPV4_MIN_HLEN) else {
        return (Err(Outcome::Malformed), 0);
    };
    // SAFETY: `ip` covers IPV4_MIN_HLEN bytes; all offsets below are < 20.
    let (b0, total_len, id, frag, proto) = unsafe {
        (
            rd8(ip, 0),
            rd16(ip, 2),
            rd16(ip, 4),
            rd16(ip, 6),
            rd8(ip, 9),
        )
    };
    let hlen = ((b0 & 0x0F) as usize) * 4;
    if b0 >> 4 != 4 || hlen < IPV4_MIN_HLEN || header(start, end, off, hlen).is_none() {
        return (Err(Outcome::Malformed), 0);
    }
    if proto != IPPROTO_UDP {
        return (Err(not_udp4(proto)), 0);
    }
    let total_len = total_len as usize;
    if total_len <= hlen {
        return (Err(Outcome::Malformed), 0);
    }
    let data_len = total_len - hlen;
    let offset = ((frag & 0x1FFF) as usize) * 8;
    // The reassembled packet, header included, must fit a Total Length.
    if offset + data_len + hlen > IP_MAX_LEN {
        return (Err(Outcome::Malformed), 0);
    }
    fragment(
        start,
        end,
        FragMeta {
            ip_version: 4,
            more: frag & 0x2000 != 0,
            l3_offset: off as u32,
            id: id as u32,
            offset: offset as u32,
            data_offset: (off + hlen) as u32,
            data_len: data_len as u32,
            src_port: 0,
            dst_port: 0,
        },
        off + total_len,
    )
}

#[inline(always)]
fn parse_ipv6_fragment(start: usize, end: usize, off: usize) -> (Result<FragMeta, Outcome>, usize) {
    let Some(ip) = header(start, end, off, IPV6_HLEN) else {
        return (Err(Outcome::Malformed), 0);
    };
    // SAFETY: `ip` covers IPV6_HLEN bytes; all offsets below are < 40.
    let (b0, payload_len, next) = unsafe { (rd8(ip, 0), rd16(ip, 4), rd8(ip, 6)) };
    if b0 >> 4 != 6 {
        return (Err(Outcome::Malformed), 0);
    }
    let (at, remaining) = match walk_ipv6(start, end, off, next, payload_len) {
        Ipv6Walk::Fragment(at, remaining) => (at, remaining),
        // Not a fragment after all (the caller parsed it as one).
        Ipv6Walk::Udp(..) => return (Err(Outcome::Malformed), 0),
        Ipv6Walk::Stop(outcome) => return (Err(outcome), 0),
    };
    let Some(fh) = header(start, end, at, 8) else {
        return (Err(Outcome::Malformed), 0);
    };
    // SAFETY: `fh` covers the fragment header's 8 bytes.
    let (nh, frag, id) = unsafe { (rd8(fh, 0), rd16(fh, 2), rd32(fh, 4)) };
    // Every fragment carries the Next Header of the fragmentable part; only
    // UDP right after the fragment header is read (an extension header
    // there would have to be walked in the first fragment alone).
    match nh {
        IPPROTO_UDP => {}
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
            return (Err(Outcome::Unsupported), 0);
        }
        other => return (Err(not_udp(other)), 0),
    }
    // `walk_ipv6` checked that the fragment header lies within the payload.
    let data_len = remaining - 8;
    let offset = (frag & 0xFFF8) as usize;
    if data_len == 0 || offset + data_len > IP_MAX_LEN {
        return (Err(Outcome::Malformed), 0);
    }
    fragment(
        start,
        end,
        FragMeta {
            ip_version: 6,
            more: frag & 1 != 0,
            l3_offset: off as u32,
            id,
            offset: offset as u32,
            data_offset: (at + 8) as u32,
            data_len: data_len as u32,
            src_port: 0,
            dst_port: 0,
        },
        off + IPV6_HLEN + payload_len as usize,
    )
}

/// The ports of a first fragment, which must hold the whole UDP header in
/// the frame's first buffer; the others as they are.
#[inline(always)]
fn fragment(
    start: usize,
    end: usize,
    mut meta: FragMeta,
    ip_end: usize,
) -> (Result<FragMeta, Outcome>, usize) {
    if meta.offset == 0 {
        if meta.data_len < UDP_HLEN as u32 {
            return (Err(Outcome::Malformed), 0);
        }
        let Some(udp) = header(start, end, meta.data_offset as usize, UDP_HLEN) else {
            return (Err(Outcome::Malformed), 0);
        };
        // SAFETY: `udp` covers UDP_HLEN bytes.
        (meta.src_port, meta.dst_port) = unsafe { (rd16(udp, 0), rd16(udp, 2)) };
    }
    (Ok(meta), ip_end)
}

/// UDP at `off`, inside an IP payload of `ip_remaining` bytes.
#[inline(always)]
fn parse_udp(
    start: usize,
    end: usize,
    off: usize,
    ip_remaining: usize,
    ip_version: u8,
    l3_offset: usize,
) -> Outcome {
    let Some(udp) = header(start, end, off, UDP_HLEN) else {
        return Outcome::Malformed;
    };
    // SAFETY: `udp` covers UDP_HLEN bytes.
    let (src_port, dst_port, udp_len) = unsafe { (rd16(udp, 0), rd16(udp, 2), rd16(udp, 4)) };
    let udp_len = udp_len as usize;
    // The UDP length covers its own 8-byte header, and cannot exceed what the
    // IP header says follows it (which was checked against the frame).
    if udp_len < UDP_HLEN || udp_len > ip_remaining {
        return Outcome::Malformed;
    }
    Outcome::Udp(UdpMeta {
        ip_version,
        l3_offset: l3_offset as u32,
        src_port,
        dst_port,
        payload_offset: (off + UDP_HLEN) as u32,
        payload_len: (udp_len - UDP_HLEN) as u32,
    })
}
