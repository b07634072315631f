//! Builder for test frames (std only, behind the `user` feature).
//!
//! One builder serves three kinds of tests:
//!
//! * host tests of [`crate::parse`], which parse the bytes of a `Vec<u8>`;
//! * kernel tests that feed a frame to the XDP program with
//!   `BPF_PROG_TEST_RUN`;
//! * network tests that send the frame on an `AF_PACKET` socket over a veth,
//!   where a real kernel stack receives it.
//!
//! For the last case the frames are valid on the wire: the IPv4 header
//! checksum and the UDP checksum (IPv4 or IPv6 pseudo-header) are computed,
//! TTL / hop limit is 64, extension headers are filled with options a Linux
//! receiver accepts. Length and checksum fields are computed from the layers
//! actually built, unless an `*_override` method asks for a lie.
//!
//! ```
//! use udp_ebpf_common::frame::FrameBuilder;
//! use udp_ebpf_common::parse::{parse_frame, Outcome};
//!
//! let builder = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
//!     .vlan(0x8100, 42)
//!     .udp(40000, 9000, b"hello");
//! let frame = builder.build();
//! assert_eq!(frame.len(), 14 + 4 + 20 + 8 + 5);
//! assert_eq!(builder.headers_len(), frame.len() - 5);
//!
//! let start = frame.as_ptr() as usize;
//! let Outcome::Udp(meta) = parse_frame(start, start + frame.len(), frame.len()) else {
//!     panic!("not UDP");
//! };
//! assert_eq!((meta.dst_port, meta.payload_len), (9000, 5));
//! ```
//!
//! Setters that only make sense for one IP version (`ipv4_options`,
//! `ipv4_fragment`, `ipv6_ext`, `ipv6_fragment`) panic when used on the other
//! one: a mistake in a test should fail loudly, not build a different frame.
//!
//! A datagram too big for one frame is sent in IP fragments:
//! [`FrameBuilder::fragments`] splits it the way a sender's kernel does,
//! and [`FrameBuilder::fragment`] builds any one fragment (overlapping,
//! out of range, with other bytes) from the bytes of
//! [`FrameBuilder::udp_datagram`]:
//!
//! ```
//! use udp_ebpf_common::frame::FrameBuilder;
//!
//! let b = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
//!     .frag_id(7)
//!     .udp(40000, 9000, &[0xAB; 3000]);
//! let frames = b.fragments(1500);
//! assert_eq!(frames.len(), 3); // 1480 + 1480 + 48 bytes of the 3008
//! let udp = b.udp_datagram();
//! assert_eq!(frames[1], b.fragment(1480, true, &udp[1480..2960]));
//! ```

use crate::parse::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP,
};

/// Default destination MAC: locally administered, unicast.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// Default source MAC: locally administered, unicast.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Default UDP source port (start of the ephemeral range).
pub const DEFAULT_SRC_PORT: u16 = 49152;
/// Default UDP destination port.
pub const DEFAULT_DST_PORT: u16 = 9000;
/// Smallest Ethernet frame without the FCS; see [`FrameBuilder::pad_to`].
pub const ETH_MIN_LEN: usize = 60;
/// EtherType of ARP, for [`FrameBuilder::ethertype`].
pub const ETH_P_ARP: u16 = 0x0806;
/// TCP, for [`FrameBuilder::protocol`].
pub const IPPROTO_TCP: u8 = 6;

/// TTL (IPv4) and hop limit (IPv6) of every built packet.
const HOP_LIMIT: u8 = 64;
/// IPv4 "don't fragment" flag, set on unfragmented packets as Linux does.
const IPV4_DF: u16 = 0x4000;
/// IPv4 "more fragments" flag.
const IPV4_MF: u16 = 0x2000;
/// IPv4 identification of fragments (unfragmented DF packets carry 0).
const IPV4_FRAG_ID: u16 = 0x1234;
/// IPv6 fragment header identification.
const IPV6_FRAG_ID: u32 = 0x1234_5678;
/// IPv6 option Pad1.
const OPT_PAD1: u8 = 0;
/// IPv6 option PadN.
const OPT_PADN: u8 = 1;
/// RFC 4727 experimental IPv6 option type whose top bits (00) tell a receiver
/// that does not know it to skip it. Linux rejects more than 7 bytes of
/// consecutive padding (RFC 4942 §2.1.9.5), so long option areas are filled
/// with these, at most 257 bytes each (8 at most, Linux's default limit).
const OPT_EXPERIMENTAL_SKIP: u8 = 0x1E;
/// RFC 4727 experimental routing type: with Segments Left 0 a receiver
/// ignores the header and goes on to the next one.
const RT_EXPERIMENTAL: u8 = 253;

/// The layer-3 part of the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
enum L3 {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
    },
    /// Not IP: the payload follows the Ethernet header directly.
    Raw(u16),
}

/// One IPv6 extension header, in chain order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// Hop-by-hop (0), routing (43), destination options (60) or any other
    /// kind laid out as next header, length in 8-octet units, data.
    Generic { kind: u8, len_units: u8 },
    /// Fragment header (44): always 8 bytes.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    fn kind(self) -> u8 {
        match self {
            Ext::Generic { kind, .. } => kind,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn len(self) -> usize {
        match self {
            Ext::Generic { len_units, .. } => (len_units as usize + 1) * 8,
            Ext::Fragment { .. } => 8,
        }
    }
}

/// Builds an Ethernet frame: MACs, VLAN tags, IPv4 (with options) or IPv6
/// (with extension headers), UDP or another layer-4 protocol, payload.
///
/// Start with [`ipv4`](Self::ipv4), [`ipv6`](Self::ipv6),
/// [`ethernet`](Self::ethernet) or [`arp_request`](Self::arp_request), chain
/// setters, then call [`build`](Self::build) (which can be called any number
/// of times). The default is a UDP datagram from port
/// [`DEFAULT_SRC_PORT`] to [`DEFAULT_DST_PORT`] with an empty payload,
/// between [`DEFAULT_SRC_MAC`] and [`DEFAULT_DST_MAC`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBuilder {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// (TPID, TCI), outermost first.
    tags: Vec<(u16, u16)>,
    l3: L3,
    /// Already padded to a multiple of 4.
    ipv4_options: Vec<u8>,
    ipv4_fragment: Option<(u16, bool)>,
    ipv6_exts: Vec<Ext>,
    /// IPv4 protocol / final IPv6 next header. A UDP header is built only
    /// when this is `IPPROTO_UDP`.
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    /// UDP payload, or the whole layer-4 bytes when not UDP, or the bytes
    /// after the Ethernet header when not IP.
    payload: Vec<u8>,
    udp_len_override: Option<u16>,
    ip_len_override: Option<u16>,
    pad_to: usize,
    /// Identification of fragments (IPv4: 16 bits).
    frag_id: Option<u32>,
}

impl FrameBuilder {
    fn new(l3: L3) -> Self {
        Self {
            dst_mac: DEFAULT_DST_MAC,
            src_mac: DEFAULT_SRC_MAC,
            tags: Vec::new(),
            l3,
            ipv4_options: Vec::new(),
            ipv4_fragment: None,
            ipv6_exts: Vec::new(),
            protocol: IPPROTO_UDP,
            src_port: DEFAULT_SRC_PORT,
            dst_port: DEFAULT_DST_PORT,
            payload: Vec::new(),
            udp_len_override: None,
            ip_len_override: None,
            pad_to: 0,
            frag_id: None,
        }
    }

    /// An IPv4 packet from `src` to `dst` (arrays or `Ipv4Addr`).
    pub fn ipv4(src: impl Into<[u8; 4]>, dst: impl Into<[u8; 4]>) -> Self {
        Self::new(L3::V4 {
            src: src.into(),
            dst: dst.into(),
        })
    }

    /// An IPv6 packet from `src` to `dst` (arrays or `Ipv6Addr`).
    pub fn ipv6(src: impl Into<[u8; 16]>, dst: impl Into<[u8; 16]>) -> Self {
        Self::new(L3::V6 {
            src: src.into(),
            dst: dst.into(),
        })
    }

    /// A non-IP frame: the Ethernet header (and tags) with EtherType
    /// `ethertype`, then the bytes given to [`payload`](Self::payload).
    pub fn ethernet(ethertype: u16) -> Self {
        Self::new(L3::Raw(ethertype))
    }

    /// A broadcast ARP request (Ethernet/IPv4, 28 bytes) from `sender_mac`
    /// (also the frame's source MAC) and `sender_ip`, asking for `target_ip`.
    pub fn arp_request(
        sender_mac: [u8; 6],
        sender_ip: impl Into<[u8; 4]>,
        target_ip: impl Into<[u8; 4]>,
    ) -> Self {
        let mut arp = Vec::with_capacity(28);
        arp.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
        arp.extend_from_slice(&ETH_P_IP.to_be_bytes()); // protocol: IPv4
        arp.extend_from_slice(&[6, 4]); // address lengths
        arp.extend_from_slice(&1u16.to_be_bytes()); // operation: request
        arp.extend_from_slice(&sender_mac);
        arp.extend_from_slice(&sender_ip.into());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&target_ip.into());
        Self::ethernet(ETH_P_ARP)
            .macs([0xFF; 6], sender_mac)
            .payload(&arp)
    }

    /// Sets the destination and source MAC addresses. To be received by a
    /// real stack, `dst` must be the receiving interface's address (or
    /// broadcast).
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    /// Pushes a VLAN tag with TPID `tpid` (0x8100 802.1Q, 0x88a8 802.1ad, or
    /// anything else to test how it is handled) and VLAN id `vid` (12 bits;
    /// priority and DEI are 0). The first call is the outermost tag: QinQ is
    /// `.vlan(0x88a8, outer).vlan(0x8100, inner)`.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        assert!(vid <= 0x0FFF, "VLAN id {vid} does not fit in 12 bits");
        self.tags.push((tpid, vid));
        self
    }

    /// Shorthand for an 802.1Q tag: `.vlan(0x8100, vid)`.
    pub fn dot1q(self, vid: u16) -> Self {
        self.vlan(ETH_P_8021Q, vid)
    }

    /// Shorthand for QinQ: an 802.1ad outer tag then an 802.1Q inner tag.
    pub fn qinq(self, outer_vid: u16, inner_vid: u16) -> Self {
        self.vlan(ETH_P_8021AD, outer_vid)
            .vlan(ETH_P_8021Q, inner_vid)
    }

    /// Sets the IPv4 options (replacing earlier ones). They are padded with
    /// End-of-Option-List (zero) bytes to a multiple of 4 and IHL grows to
    /// match: `n` bytes of options give IHL `5 + ceil(n / 4)`. At most 40
    /// bytes. NOPs (`&[1; n]`) are accepted by every receiver; Linux also
    /// ignores unknown options on received packets.
    pub fn ipv4_options(mut self, opts: &[u8]) -> Self {
        self.expect_v4("ipv4_options");
        assert!(
            opts.len() <= 40,
            "{} bytes of IPv4 options: at most 40 fit",
            opts.len()
        );
        let mut padded = opts.to_vec();
        padded.resize(opts.len().div_ceil(4) * 4, 0);
        self.ipv4_options = padded;
        self
    }

    /// Makes this an IPv4 fragment: `offset` is the 13-bit fragment offset
    /// field (in 8-byte units, as on the wire) and `more` the MF flag. DF is
    /// cleared and the identification set. `(0, false)` builds an
    /// unfragmented packet without DF.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.expect_v4("ipv4_fragment");
        assert!(offset <= 0x1FFF, "fragment offset {offset} exceeds 13 bits");
        self.ipv4_fragment = Some((offset, more));
        self
    }

    /// Appends an IPv6 extension header of kind `next_hdr_kind` (the value
    /// the previous header's Next Header field carries) with Hdr Ext Len
    /// `len_units`, i.e. `(len_units + 1) * 8` bytes. Headers appear in call
    /// order; the last one's Next Header is the layer-4 protocol.
    ///
    /// * 0 (hop-by-hop) and 60 (destination options): options area filled
    ///   with Pad1/PadN, and with skippable experimental options where more
    ///   than 7 bytes are needed (Linux rejects longer padding runs).
    /// * 43 (routing): experimental routing type 253 with Segments Left 0,
    ///   which a receiver ignores; the rest is zero.
    /// * anything else: zeros after the two length bytes.
    ///
    /// For a frame a real stack accepts, hop-by-hop must come first. Use
    /// [`ipv6_fragment`](Self::ipv6_fragment) for a fragment header.
    pub fn ipv6_ext(mut self, next_hdr_kind: u8, len_units: u8) -> Self {
        self.expect_v6("ipv6_ext");
        assert!(
            next_hdr_kind != IPPROTO_FRAGMENT,
            "use ipv6_fragment for a fragment header"
        );
        self.ipv6_exts.push(Ext::Generic {
            kind: next_hdr_kind,
            len_units,
        });
        self
    }

    /// Appends an IPv6 fragment header (8 bytes): `offset` is the 13-bit
    /// fragment offset (in 8-byte units) and `more` the M flag. `(0, false)`
    /// is an atomic fragment (RFC 6946): the whole datagram.
    pub fn ipv6_fragment(mut self, offset: u16, more: bool) -> Self {
        self.expect_v6("ipv6_fragment");
        assert!(offset <= 0x1FFF, "fragment offset {offset} exceeds 13 bits");
        let id = self.frag_id.unwrap_or(IPV6_FRAG_ID);
        self.ipv6_exts.push(Ext::Fragment { offset, more, id });
        self
    }

    /// Sets the identification that fragments carry (IPv4: at most
    /// 0xFFFF), for [`ipv4_fragment`](Self::ipv4_fragment),
    /// [`fragment`](Self::fragment) and [`fragments`](Self::fragments);
    /// call it before [`ipv6_fragment`](Self::ipv6_fragment). Fragments of
    /// different datagrams between the same addresses need different ones.
    pub fn frag_id(mut self, id: u32) -> Self {
        if matches!(self.l3, L3::V4 { .. }) {
            assert!(id <= 0xFFFF, "IPv4 identification {id:#x} exceeds 16 bits");
        }
        self.frag_id = Some(id);
        self
    }

    /// The bytes the datagram's fragments carry between them: the UDP
    /// header (its checksum computed over the whole datagram) and the
    /// payload, or the layer-4 segment of another protocol.
    pub fn udp_datagram(&self) -> Vec<u8> {
        match self.l3 {
            L3::V4 { src, dst } => self.l4(&src, &dst),
            L3::V6 { src, dst } => self.l4(&src, &dst),
            L3::Raw(_) => panic!("a non-IP frame has no datagram"),
        }
    }

    /// One IP fragment of this datagram: `data` at byte `offset` (a
    /// multiple of 8) of [`udp_datagram`](Self::udp_datagram), with the
    /// more-fragments flag `more`. The data need not be the datagram's own
    /// bytes, nor lie within it: tests build overlapping and lying
    /// fragments this way. IPv4 options go into the first fragment only (as
    /// for options not copied into fragments); IPv6 extension headers set
    /// with [`ipv6_ext`](Self::ipv6_ext) come before the fragment header,
    /// as the unfragmentable part.
    pub fn fragment(&self, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
        assert!(
            offset.is_multiple_of(8),
            "fragment offset {offset} is not a multiple of 8"
        );
        let units = u16::try_from(offset / 8)
            .ok()
            .filter(|u| *u <= 0x1FFF)
            .unwrap_or_else(|| panic!("fragment offset {offset} exceeds 13 bits of 8-byte units"));
        let mut frame = self.l2();
        match self.l3 {
            L3::V4 { src, dst } => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let options: &[u8] = if offset == 0 { &self.ipv4_options } else { &[] };
                let id = self.frag_id.unwrap_or(u32::from(IPV4_FRAG_ID)) as u16;
                let flags = units | if more { IPV4_MF } else { 0 };
                let total = 20 + options.len() + data.len();
                let total = u16::try_from(total).expect("IPv4 fragment longer than 65535 bytes");
                push_ipv4_header(
                    &mut frame,
                    src,
                    dst,
                    options,
                    total,
                    id,
                    flags,
                    self.protocol,
                );
            }
            L3::V6 { src, dst } => {
                assert!(
                    !self
                        .ipv6_exts
                        .iter()
                        .any(|e| matches!(e, Ext::Fragment { .. })),
                    "fragment() adds the fragment header itself"
                );
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut b = self.clone();
                b.ipv6_exts.push(Ext::Fragment {
                    offset: units,
                    more,
                    id: self.frag_id.unwrap_or(IPV6_FRAG_ID),
                });
                b.push_ipv6(&mut frame, src, dst, data.len());
            }
            L3::Raw(_) => panic!("a non-IP frame cannot be fragmented"),
        }
        frame.extend_from_slice(data);
        frame
    }

    /// The datagram in IP fragments of at most `mtu` bytes of IP packet
    /// each, in order, as a sender's kernel splits it: every fragment but
    /// the last carries as many multiples of 8 bytes as fit.
    pub fn fragments(&self, mtu: usize) -> Vec<Vec<u8>> {
        let data = self.udp_datagram();
        let headers = match self.l3 {
            L3::V4 { .. } => 20 + self.ipv4_options.len(),
            _ => 40 + self.ipv6_exts.iter().map(|e| e.len()).sum::<usize>() + 8,
        };
        let per = mtu
            .checked_sub(headers)
            .map(|n| n / 8 * 8)
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("MTU {mtu} leaves no room for fragment data"));
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + per).min(data.len());
            out.push(self.fragment(offset, end < data.len(), &data[offset..end]));
            offset = end;
        }
        out
    }

    /// Sets the IPv4 protocol / final IPv6 Next Header. For anything but
    /// UDP (17) no UDP header is built: the [`payload`](Self::payload) is
    /// the whole layer-4 segment (e.g. `protocol(IPPROTO_TCP)` with 20
    /// bytes of TCP header).
    pub fn protocol(mut self, proto: u8) -> Self {
        self.protocol = proto;
        self
    }

    /// Makes this a UDP datagram from `src_port` to `dst_port` carrying
    /// `payload`.
    pub fn udp(mut self, src_port: u16, dst_port: u16, payload: &[u8]) -> Self {
        self.protocol = IPPROTO_UDP;
        self.src_port = src_port;
        self.dst_port = dst_port;
        self.payload = payload.to_vec();
        self
    }

    /// Sets the payload alone: UDP payload, whole layer-4 segment for other
    /// protocols, or bytes after the Ethernet header for non-IP frames.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Writes `len` into the UDP length field instead of `8 + payload`. The
    /// checksum is computed over the bytes built, with `len` in the
    /// pseudo-header.
    pub fn udp_len_override(mut self, len: u16) -> Self {
        self.udp_len_override = Some(len);
        self
    }

    /// Writes `len` into the IPv4 Total Length or the IPv6 Payload Length
    /// field instead of the real length. The IPv4 header checksum covers the
    /// lie, so only the length is wrong.
    pub fn ip_total_len_override(mut self, len: u16) -> Self {
        self.ip_len_override = Some(len);
        self
    }

    /// Makes this a non-IP frame with EtherType `t`: `build` produces the
    /// Ethernet header (and tags) followed by the [`payload`](Self::payload);
    /// addresses, options and layer-4 settings are dropped.
    pub fn ethertype(mut self, t: u16) -> Self {
        self.l3 = L3::Raw(t);
        self
    }

    /// Appends zero bytes after the packet until the frame is at least `len`
    /// bytes, as a NIC pads a short frame to [`ETH_MIN_LEN`]. Length fields
    /// are not changed: the padding lies outside the IP packet.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    /// Offset of the first payload byte: Ethernet header, tags, IP header
    /// with options or extension headers, and the UDP header when the
    /// protocol is UDP. Equals `UdpMeta::payload_offset` for a good frame.
    pub fn headers_len(&self) -> usize {
        let l2 = 14 + 4 * self.tags.len();
        let l3 = match self.l3 {
            L3::V4 { .. } => 20 + self.ipv4_options.len(),
            L3::V6 { .. } => 40 + self.ipv6_exts.iter().map(|e| e.len()).sum::<usize>(),
            L3::Raw(_) => return l2,
        };
        let l4 = if self.protocol == IPPROTO_UDP { 8 } else { 0 };
        l2 + l3 + l4
    }

    /// The MAC addresses and VLAN tags, up to the EtherType.
    fn l2(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.headers_len() + self.payload.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        for &(tpid, vid) in &self.tags {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        frame
    }

    /// The frame's bytes (without FCS).
    pub fn build(&self) -> Vec<u8> {
        let mut frame = self.l2();
        match self.l3 {
            L3::V4 { src, dst } => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let l4 = self.l4(&src, &dst);
                self.push_ipv4(&mut frame, src, dst, l4.len());
                frame.extend_from_slice(&l4);
            }
            L3::V6 { src, dst } => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let l4 = self.l4(&src, &dst);
                self.push_ipv6(&mut frame, src, dst, l4.len());
                frame.extend_from_slice(&l4);
            }
            L3::Raw(t) => {
                frame.extend_from_slice(&t.to_be_bytes());
                frame.extend_from_slice(&self.payload);
            }
        }
        if frame.len() < self.pad_to {
            frame.resize(self.pad_to, 0);
        }
        frame
    }

    fn expect_v4(&self, what: &str) {
        assert!(
            matches!(self.l3, L3::V4 { .. }),
            "{what} needs an IPv4 frame"
        );
    }

    fn expect_v6(&self, what: &str) {
        assert!(
            matches!(self.l3, L3::V6 { .. }),
            "{what} needs an IPv6 frame"
        );
    }

    /// The layer-4 segment: UDP header with checksum + payload, or the
    /// payload alone. `src`/`dst` are 4 or 16 bytes (pseudo-header).
    fn l4(&self, src: &[u8], dst: &[u8]) -> Vec<u8> {
        if self.protocol != IPPROTO_UDP {
            return self.payload.clone();
        }
        let real_len = 8 + self.payload.len();
        let udp_len = self.udp_len_override.unwrap_or_else(|| {
            u16::try_from(real_len).expect("UDP datagram longer than 65535 bytes")
        });
        let mut seg = Vec::with_capacity(real_len);
        seg.extend_from_slice(&self.src_port.to_be_bytes());
        seg.extend_from_slice(&self.dst_port.to_be_bytes());
        seg.extend_from_slice(&udp_len.to_be_bytes());
        seg.extend_from_slice(&[0, 0]);
        seg.extend_from_slice(&self.payload);

        // Pseudo-header: addresses, protocol, UDP length (RFC 768 for IPv4,
        // RFC 8200 §8.1 for IPv6, where the length is 32 bits; the sum is
        // the same either way).
        let mut sum = Checksum::default();
        sum.add(src);
        sum.add(dst);
        sum.add(&[0, IPPROTO_UDP]);
        sum.add(&udp_len.to_be_bytes());
        sum.add(&seg);
        // A computed 0 is sent as all ones (RFC 768); over IPv6 a zero
        // checksum is invalid (RFC 8200), over IPv4 it would mean "none".
        let csum = match sum.finish() {
            0 => 0xFFFF,
            c => c,
        };
        seg[6..8].copy_from_slice(&csum.to_be_bytes());
        seg
    }

    fn push_ipv4(&self, frame: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4], l4_len: usize) {
        let hlen = 20 + self.ipv4_options.len();
        let total_len = self.ip_len_override.unwrap_or_else(|| {
            u16::try_from(hlen + l4_len).expect("IPv4 packet longer than 65535 bytes")
        });
        let (id, flags_frag) = match self.ipv4_fragment {
            None => (0, IPV4_DF),
            Some((offset, more)) => (
                self.frag_id.unwrap_or(u32::from(IPV4_FRAG_ID)) as u16,
                offset | if more { IPV4_MF } else { 0 },
            ),
        };
        push_ipv4_header(
            frame,
            src,
            dst,
            &self.ipv4_options,
            total_len,
            id,
            flags_frag,
            self.protocol,
        );
    }

    fn push_ipv6(&self, frame: &mut Vec<u8>, src: [u8; 16], dst: [u8; 16], l4_len: usize) {
        let exts_len: usize = self.ipv6_exts.iter().map(|e| e.len()).sum();
        let payload_len = self.ip_len_override.unwrap_or_else(|| {
            u16::try_from(exts_len + l4_len).expect("IPv6 payload longer than 65535 bytes")
        });
        let first = self.ipv6_exts.first().map_or(self.protocol, |e| e.kind());
        frame.extend_from_slice(&[0x60, 0, 0, 0]); // version, class, flow
        frame.extend_from_slice(&payload_len.to_be_bytes());
        frame.push(first);
        frame.push(HOP_LIMIT);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        for (i, ext) in self.ipv6_exts.iter().enumerate() {
            let next = self
                .ipv6_exts
                .get(i + 1)
                .map_or(self.protocol, |e| e.kind());
            push_ext(frame, *ext, next);
        }
    }
}

/// Writes an IPv4 header (with its checksum) and `options`.
#[allow(clippy::too_many_arguments)]
fn push_ipv4_header(
    frame: &mut Vec<u8>,
    src: [u8; 4],
    dst: [u8; 4],
    options: &[u8],
    total_len: u16,
    id: u16,
    flags_frag: u16,
    protocol: u8,
) {
    let hlen = 20 + options.len();
    let at = frame.len();
    frame.push(0x40 | (hlen / 4) as u8);
    frame.push(0); // DSCP/ECN
    frame.extend_from_slice(&total_len.to_be_bytes());
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&flags_frag.to_be_bytes());
    frame.push(HOP_LIMIT);
    frame.push(protocol);
    frame.extend_from_slice(&[0, 0]); // checksum, below
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(options);
    let mut sum = Checksum::default();
    sum.add(&frame[at..]);
    let csum = sum.finish();
    frame[at + 10..at + 12].copy_from_slice(&csum.to_be_bytes());
}

/// Writes one IPv6 extension header whose Next Header is `next`.
fn push_ext(frame: &mut Vec<u8>, ext: Ext, next: u8) {
    match ext {
        Ext::Fragment { offset, more, id } => {
            frame.push(next);
            frame.push(0); // reserved
            frame.extend_from_slice(&((offset << 3) | more as u16).to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
        }
        Ext::Generic { kind, len_units } => {
            frame.push(next);
            frame.push(len_units);
            let body = ext.len() - 2;
            match kind {
                IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => push_options(frame, body),
                IPPROTO_ROUTING => {
                    frame.push(RT_EXPERIMENTAL);
                    frame.push(0); // segments left
                    frame.resize(frame.len() + body - 2, 0);
                }
                _ => frame.resize(frame.len() + body, 0),
            }
        }
    }
}

/// Fills an `n`-byte TLV options area so that a receiver skips all of it.
fn push_options(frame: &mut Vec<u8>, mut n: usize) {
    while n > 7 {
        let take = n.min(2 + 255);
        frame.push(OPT_EXPERIMENTAL_SKIP);
        frame.push((take - 2) as u8);
        frame.resize(frame.len() + take - 2, 0);
        n -= take;
    }
    match n {
        0 => {}
        1 => frame.push(OPT_PAD1),
        _ => {
            frame.push(OPT_PADN);
            frame.push((n - 2) as u8);
            frame.resize(frame.len() + n - 2, 0);
        }
    }
}

/// Internet checksum (RFC 1071) accumulator. Every `add` must start on an
/// even offset of the summed data except the last, which may be odd.
#[derive(Default)]
struct Checksum(u64);

impl Checksum {
    fn add(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            self.0 += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            self.0 += u64::from(*last) << 8;
        }
    }

    fn finish(self) -> u16 {
        let mut s = self.0;
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        !(s as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ones'-complement sum of `bytes`, folded (0xFFFF when a checksum over
    /// them verifies).
    fn fold(parts: &[&[u8]]) -> u16 {
        let mut sum = Checksum::default();
        for p in parts {
            sum.add(p);
        }
        !sum.finish()
    }

    #[test]
    fn ipv4_header_checksum_matches_known_vector() {
        // The classic example header 4500 0073 0000 4000 4011 b861 c0a8 0001
        // c0a8 00c7: 115 bytes total, so 115 - 28 = 87 payload bytes.
        let f = FrameBuilder::ipv4([192, 168, 0, 1], [192, 168, 0, 199])
            .udp(1, 2, &[0; 87])
            .build();
        assert_eq!(
            &f[14..34],
            &[
                0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
                0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7
            ]
        );
    }

    #[test]
    fn udp_checksums_verify() {
        for payload in [&b""[..], b"x", b"hello world", &[0xAB; 1001]] {
            let f = FrameBuilder::ipv4([10, 1, 2, 3], [10, 3, 2, 1])
                .ipv4_options(&[1, 1, 1])
                .udp(5353, 53, payload)
                .build();
            let udp = &f[38..];
            let len = (udp.len() as u16).to_be_bytes();
            assert_eq!(fold(&[&f[14..38]]), 0xFFFF, "IPv4 header");
            let pseudo: &[u8] = &[0, IPPROTO_UDP, len[0], len[1]];
            assert_eq!(fold(&[&f[26..34], pseudo, udp]), 0xFFFF, "UDP/IPv4");

            let s6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let d6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
            let f = FrameBuilder::ipv6(s6, d6)
                .ipv6_ext(IPPROTO_HOPOPTS, 1)
                .udp(5353, 53, payload)
                .build();
            let udp = &f[14 + 40 + 16..];
            let len = (udp.len() as u32).to_be_bytes();
            let pseudo: &[u8] = &[len[0], len[1], len[2], len[3], 0, 0, 0, IPPROTO_UDP];
            assert_eq!(fold(&[&s6, &d6, pseudo, udp]), 0xFFFF, "UDP/IPv6");
        }
    }

    #[test]
    fn zero_udp_checksum_is_sent_as_all_ones() {
        for v6 in [false, true] {
            let base = |payload: &[u8]| {
                if v6 {
                    FrameBuilder::ipv6([1; 16], [2; 16]).udp(7, 8, payload)
                } else {
                    FrameBuilder::ipv4([1; 4], [2; 4]).udp(7, 8, payload)
                }
            };
            // With payload [0, 0] the checksum is !sum; a payload word equal
            // to it brings the sum to 0xFFFF, i.e. a computed checksum of 0.
            let probe = base(&[0, 0]);
            let f = probe.build();
            let udp_at = probe.headers_len() - 8;
            let csum = u16::from_be_bytes([f[udp_at + 6], f[udp_at + 7]]);
            let word = csum.to_be_bytes();
            let f = base(&word).build();
            assert_eq!(&f[udp_at + 6..udp_at + 8], &[0xFF, 0xFF], "v6={v6}");
        }
    }

    #[test]
    fn options_areas_are_padded_like_linux_expects() {
        // Walk each generated options area: only Pad1/PadN/0x1E, runs of
        // padding at most 7 bytes, at most 8 non-padding options, exact fit.
        for units in 0..=255u8 {
            let f = FrameBuilder::ipv6([1; 16], [2; 16])
                .ipv6_ext(IPPROTO_DSTOPTS, units)
                .build();
            let ext = &f[54..54 + (units as usize + 1) * 8];
            assert_eq!(ext[0], IPPROTO_UDP);
            let (mut off, mut pad, mut opts) = (2, 0, 0);
            while off < ext.len() {
                match ext[off] {
                    OPT_PAD1 => {
                        pad += 1;
                        off += 1;
                    }
                    t => {
                        let len = 2 + ext[off + 1] as usize;
                        assert!(ext[off + 2..off + len].iter().all(|&b| b == 0));
                        if t == OPT_PADN {
                            pad += len;
                        } else {
                            assert_eq!(t, OPT_EXPERIMENTAL_SKIP);
                            pad = 0;
                            opts += 1;
                        }
                        off += len;
                    }
                }
                assert!(pad <= 7, "units {units}: padding run {pad}");
            }
            assert_eq!(off, ext.len(), "units {units}");
            assert!(opts <= 8, "units {units}: {opts} options");
        }
    }

    #[test]
    fn arp_request_layout() {
        let f = FrameBuilder::arp_request([2, 0, 0, 0, 0, 9], [10, 0, 0, 1], [10, 0, 0, 2])
            .pad_to(ETH_MIN_LEN)
            .build();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xFF; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[38..42], &[10, 0, 0, 2]);
    }
}
