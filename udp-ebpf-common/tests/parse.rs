//! Host tests of `parse::parse_frame` over frames from `frame::FrameBuilder`.
//!
//! Every test asserts the exact outcome, including every `UdpMeta` field and
//! the addresses `read_addresses` then reads for it.

use udp_ebpf_common::frame::{ETH_MIN_LEN, FrameBuilder, IPPROTO_TCP};
use udp_ebpf_common::parse::{
    ETH_P_8021AD, ETH_P_8021Q, FragMeta, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS,
    IPPROTO_ROUTING, IPV6_EXT_MAX_DEPTH, Outcome, UdpMeta, parse_fragment, parse_frame,
    read_addresses, read_addresses_at,
};

const SRC4: [u8; 4] = [192, 0, 2, 1];
const DST4: [u8; 4] = [198, 51, 100, 7];
/// 2001:db8::1
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// 2001:db8::2:7
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 7];
const SPORT: u16 = 40000;
const DPORT: u16 = 9000;
const PAYLOAD: &[u8] = b"{\"detail\":{\"k\":1}}";

/// Ethernet + IPv4 + UDP header bytes.
const V4_HDRS: usize = 14 + 20 + 8;
/// Ethernet + IPv6 + UDP header bytes.
const V6_HDRS: usize = 14 + 40 + 8;

/// What the XDP program learns from a frame: `parse_frame`'s outcome, and
/// for a datagram the source and destination addresses `read_addresses`
/// reads from the same buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    NotUdp,
    Unsupported,
    Malformed,
    Fragment,
    Udp(UdpMeta, [u8; 16], [u8; 16]),
}

fn got(start: usize, end: usize, frame_len: usize) -> Got {
    match parse_frame(start, end, frame_len) {
        Outcome::NotUdp => Got::NotUdp,
        Outcome::Unsupported => Got::Unsupported,
        Outcome::Malformed => Got::Malformed,
        Outcome::Fragment => Got::Fragment,
        Outcome::Udp(meta) => {
            let Some((src, dst)) = read_addresses(start, end, &meta) else {
                panic!("{meta:?}: addresses not readable from the buffer it was parsed from");
            };
            Got::Udp(meta, src, dst)
        }
    }
}

/// The whole frame in one buffer.
fn parse(frame: &[u8]) -> Got {
    got(
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + frame.len(),
        frame.len(),
    )
}

/// A multi-buffer frame: only the first `first` bytes are in the linear
/// buffer, `frame_len` is the whole frame.
fn parse_split(frame: &[u8], first: usize) -> Got {
    got(
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + first,
        frame.len(),
    )
}

/// A frame cut to its first `n` bytes, as if that were all there is.
fn parse_prefix(frame: &[u8], n: usize) -> Got {
    parse(&frame[..n])
}

fn pad16<const N: usize>(a: [u8; N]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..N].copy_from_slice(&a);
    out
}

/// A datagram between `SRC4` and `DST4`, IP header right after Ethernet.
fn udp4(payload_offset: usize, payload_len: usize) -> Got {
    Got::Udp(
        UdpMeta {
            ip_version: 4,
            l3_offset: 14,
            src_port: SPORT,
            dst_port: DPORT,
            payload_offset: payload_offset as u32,
            payload_len: payload_len as u32,
        },
        pad16(SRC4),
        pad16(DST4),
    )
}

fn udp6(payload_offset: usize, payload_len: usize) -> Got {
    Got::Udp(
        UdpMeta {
            ip_version: 6,
            l3_offset: 14,
            src_port: SPORT,
            dst_port: DPORT,
            payload_offset: payload_offset as u32,
            payload_len: payload_len as u32,
        },
        SRC6,
        DST6,
    )
}

/// `udp` with its IP header behind `tags` VLAN tags.
fn tagged(tags: u32, udp: Got) -> Got {
    let Got::Udp(mut meta, src, dst) = udp else {
        panic!("not a datagram: {udp:?}");
    };
    meta.l3_offset += 4 * tags;
    Got::Udp(meta, src, dst)
}

fn v4() -> FrameBuilder {
    FrameBuilder::ipv4(SRC4, DST4).udp(SPORT, DPORT, PAYLOAD)
}

fn v6() -> FrameBuilder {
    FrameBuilder::ipv6(SRC6, DST6).udp(SPORT, DPORT, PAYLOAD)
}

/// Parses `b`'s frame, checks it is UDP at `b.headers_len()` with the whole
/// payload, and returns the outcome.
fn parse_good(b: &FrameBuilder) -> Got {
    let frame = b.build();
    let out = parse(&frame);
    let Got::Udp(meta, ..) = out else {
        panic!("{b:?}: {out:?}");
    };
    assert_eq!(meta.payload_offset as usize, b.headers_len(), "{b:?}");
    assert_eq!(
        &frame[b.headers_len()..][..meta.payload_len as usize],
        PAYLOAD,
        "{b:?}"
    );
    out
}

// ---------------------------------------------------------------- IPv4

#[test]
fn ipv4_plain() {
    let b = v4();
    assert_eq!(b.build().len(), V4_HDRS + PAYLOAD.len());
    assert_eq!(parse_good(&b), udp4(V4_HDRS, PAYLOAD.len()));
}

#[test]
fn ipv4_ports_and_addresses_are_read_not_assumed() {
    let f = FrameBuilder::ipv4([10, 255, 0, 1], [172, 16, 9, 254])
        .udp(53, 65535, b"x")
        .build();
    assert_eq!(
        parse(&f),
        Got::Udp(
            UdpMeta {
                ip_version: 4,
                l3_offset: 14,
                src_port: 53,
                dst_port: 65535,
                payload_offset: V4_HDRS as u32,
                payload_len: 1,
            },
            pad16([10, 255, 0, 1]),
            pad16([172, 16, 9, 254]),
        )
    );
}

#[test]
fn ipv4_options_every_ihl() {
    for ihl in 6..=15usize {
        let b = v4().ipv4_options(&vec![1; (ihl - 5) * 4]);
        let f = b.build();
        assert_eq!(f[14], 0x40 | ihl as u8);
        assert_eq!(
            parse_good(&b),
            udp4(14 + ihl * 4 + 8, PAYLOAD.len()),
            "IHL {ihl}"
        );
    }
}

#[test]
fn ipv4_options_are_padded_to_words() {
    // 3 bytes of options: one word, IHL 6.
    let b = v4().ipv4_options(&[1, 1, 1]);
    assert_eq!(b.build()[14], 0x46);
    assert_eq!(parse_good(&b), udp4(14 + 24 + 8, PAYLOAD.len()));
}

#[test]
fn ipv4_ihl_below_5_is_malformed() {
    for ihl in 0..5u8 {
        let mut f = v4().build();
        f[14] = 0x40 | ihl;
        assert_eq!(parse(&f), Got::Malformed, "IHL {ihl}");
    }
}

#[test]
fn ipv4_wrong_version_is_malformed() {
    for version in [0u8, 5, 6, 15] {
        let mut f = v4().build();
        f[14] = (version << 4) | 5;
        assert_eq!(parse(&f), Got::Malformed, "version {version}");
    }
}

#[test]
fn ipv4_fragments() {
    for (offset, more) in [
        (0, true),
        (1, false),
        (185, false),
        (185, true),
        (0x1FFF, false),
    ] {
        let f = v4().ipv4_fragment(offset, more).build();
        assert_eq!(parse(&f), Got::Fragment, "offset {offset} MF {more}");
    }
    // Offset 0 without MF (and without DF) is a whole datagram.
    let b = v4().ipv4_fragment(0, false);
    assert_eq!(parse_good(&b), udp4(V4_HDRS, PAYLOAD.len()));
}

#[test]
fn ipv4_total_len_longer_than_frame_is_malformed() {
    let real = 20 + 8 + PAYLOAD.len();
    for lie in [real + 1, real + 100, 0xFFFF] {
        let f = v4().ip_total_len_override(lie as u16).build();
        assert_eq!(parse(&f), Got::Malformed, "total length {lie}");
    }
}

#[test]
fn ipv4_total_len_too_short_for_headers_is_malformed() {
    // Shorter than IP header + UDP header (with and without options).
    for lie in [0u16, 19, 20, 27] {
        let f = v4().ip_total_len_override(lie).build();
        assert_eq!(parse(&f), Got::Malformed, "total length {lie}");
    }
    let f = v4()
        .ipv4_options(&[1; 8])
        .ip_total_len_override(28 + 7)
        .build();
    assert_eq!(parse(&f), Got::Malformed);
}

#[test]
fn ipv4_total_len_shorter_than_udp_len_is_malformed() {
    // The IP packet ends before the UDP datagram does.
    let f = v4()
        .ip_total_len_override((20 + 8 + PAYLOAD.len() - 1) as u16)
        .build();
    assert_eq!(parse(&f), Got::Malformed);
}

// ---------------------------------------------------------------- IPv6

#[test]
fn ipv6_plain() {
    let b = v6();
    assert_eq!(b.build().len(), V6_HDRS + PAYLOAD.len());
    assert_eq!(parse_good(&b), udp6(V6_HDRS, PAYLOAD.len()));
}

#[test]
fn ipv6_extension_chain() {
    // Hop-by-hop (8 bytes), routing (16), destination options (24).
    let b = v6()
        .ipv6_ext(IPPROTO_HOPOPTS, 0)
        .ipv6_ext(IPPROTO_ROUTING, 1)
        .ipv6_ext(IPPROTO_DSTOPTS, 2);
    assert_eq!(parse_good(&b), udp6(V6_HDRS + 8 + 16 + 24, PAYLOAD.len()));
}

#[test]
fn ipv6_long_extension_header() {
    // Hdr Ext Len 255: 2048 bytes.
    let b = v6().ipv6_ext(IPPROTO_DSTOPTS, 255);
    assert_eq!(parse_good(&b), udp6(V6_HDRS + 2048, PAYLOAD.len()));
}

#[test]
fn ipv6_extension_depth_limit() {
    // At least the eight the adversarial pass sent.
    assert_eq!(IPV6_EXT_MAX_DEPTH, 10);
    // Exactly the limit: walked.
    let mut b = v6();
    for _ in 0..IPV6_EXT_MAX_DEPTH {
        b = b.ipv6_ext(IPPROTO_DSTOPTS, 0);
    }
    assert_eq!(
        parse_good(&b),
        udp6(V6_HDRS + 8 * IPV6_EXT_MAX_DEPTH, PAYLOAD.len())
    );
    // One more, of any kind: not walked, and said so (it may be UDP).
    for more in [
        b.clone().ipv6_ext(IPPROTO_DSTOPTS, 0),
        b.clone().ipv6_ext(IPPROTO_ROUTING, 0),
        b.clone().ipv6_fragment(0, false),
        b.clone().ipv6_fragment(0, true),
    ] {
        assert_eq!(parse(&more.build()), Got::Unsupported);
    }
    // Past the limit, TCP is still TCP as far as the walk can tell: the
    // walk stops at a header it cannot step over either way.
    let f = b.clone().ipv6_ext(IPPROTO_DSTOPTS, 0).protocol(6).build();
    assert_eq!(parse(&f), Got::Unsupported);
}

#[test]
fn ipv6_atomic_fragment_is_udp() {
    let b = v6().ipv6_fragment(0, false);
    assert_eq!(parse_good(&b), udp6(V6_HDRS + 8, PAYLOAD.len()));
    let b = v6()
        .ipv6_ext(IPPROTO_HOPOPTS, 0)
        .ipv6_fragment(0, false)
        .ipv6_ext(IPPROTO_DSTOPTS, 1);
    assert_eq!(parse_good(&b), udp6(V6_HDRS + 8 + 8 + 16, PAYLOAD.len()));
}

#[test]
fn ipv6_fragments() {
    for (offset, more) in [
        (0, true),
        (1, false),
        (185, false),
        (185, true),
        (0x1FFF, true),
    ] {
        let f = v6().ipv6_fragment(offset, more).build();
        assert_eq!(parse(&f), Got::Fragment, "offset {offset} M {more}");
        let f = v6()
            .ipv6_ext(IPPROTO_HOPOPTS, 0)
            .ipv6_fragment(offset, more)
            .build();
        assert_eq!(
            parse(&f),
            Got::Fragment,
            "after HBH: offset {offset} M {more}"
        );
    }
}

#[test]
fn ipv6_wrong_version_is_malformed() {
    for version in [0u8, 4, 7, 15] {
        let mut f = v6().build();
        f[14] = version << 4;
        assert_eq!(parse(&f), Got::Malformed, "version {version}");
    }
}

#[test]
fn ipv6_payload_len_longer_than_frame_is_malformed() {
    let real = 8 + PAYLOAD.len();
    for lie in [real + 1, real + 1000, 0xFFFF] {
        let f = v6().ip_total_len_override(lie as u16).build();
        assert_eq!(parse(&f), Got::Malformed, "payload length {lie}");
    }
}

#[test]
fn ipv6_payload_len_shorter_than_headers_is_malformed() {
    // Too short for the UDP datagram, the UDP header, or an extension header.
    for lie in [0, 7, 8, 8 + PAYLOAD.len() - 1] {
        let f = v6().ip_total_len_override(lie as u16).build();
        assert_eq!(parse(&f), Got::Malformed, "payload length {lie}");
    }
    let f = v6()
        .ipv6_ext(IPPROTO_DSTOPTS, 2)
        .ip_total_len_override(16)
        .build();
    assert_eq!(parse(&f), Got::Malformed);
    let f = v6()
        .ipv6_fragment(0, false)
        .ip_total_len_override(4)
        .build();
    assert_eq!(parse(&f), Got::Malformed);
}

#[test]
fn ipv6_extensions_not_walked_are_unsupported() {
    // The authentication header (51) and the other extension headers the
    // walk does not step over may carry UDP: unsupported, not "not UDP".
    for kind in [IPPROTO_AH, 135, 139, 140, 253, 254] {
        let f = v6().ipv6_ext(kind, 1).build();
        assert_eq!(parse(&f), Got::Unsupported, "next header {kind}");
        let f = v6().ipv6_ext(IPPROTO_HOPOPTS, 0).ipv6_ext(kind, 1).build();
        assert_eq!(parse(&f), Got::Unsupported, "next header {kind} after HBH");
    }
    // ESP (50) hides what it carries, No Next Header (59) carries nothing.
    for proto in [50, 59] {
        let f = v6().protocol(proto).payload(&[0; 16]).build();
        assert_eq!(parse(&f), Got::NotUdp, "next header {proto}");
    }
}

#[test]
fn ipv4_under_ah_is_unsupported() {
    let f = v4().protocol(IPPROTO_AH).payload(&[0; 24]).build();
    assert_eq!(parse(&f), Got::Unsupported);
    let f = v4()
        .ipv4_options(&[1; 4])
        .protocol(IPPROTO_AH)
        .payload(&[0; 24])
        .build();
    assert_eq!(parse(&f), Got::Unsupported);
}

// ---------------------------------------------------------------- VLAN

#[test]
fn vlan_8021q() {
    let b = v4().dot1q(42);
    assert_eq!(&b.build()[12..18], &[0x81, 0x00, 0x00, 42, 0x08, 0x00]);
    assert_eq!(parse_good(&b), tagged(1, udp4(V4_HDRS + 4, PAYLOAD.len())));
    let b = v6().vlan(ETH_P_8021Q, 0xFFF);
    assert_eq!(parse_good(&b), tagged(1, udp6(V6_HDRS + 4, PAYLOAD.len())));
}

#[test]
fn vlan_8021ad_single_tag() {
    let b = v4().vlan(ETH_P_8021AD, 7);
    assert_eq!(parse_good(&b), tagged(1, udp4(V4_HDRS + 4, PAYLOAD.len())));
}

#[test]
fn vlan_qinq() {
    let b = v4().qinq(100, 200);
    assert_eq!(
        &b.build()[12..22],
        &[0x88, 0xa8, 0x00, 100, 0x81, 0x00, 0x00, 200, 0x08, 0x00]
    );
    assert_eq!(parse_good(&b), tagged(2, udp4(V4_HDRS + 8, PAYLOAD.len())));
    let b = v6()
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2)
        .ipv6_ext(IPPROTO_HOPOPTS, 0);
    assert_eq!(
        parse_good(&b),
        tagged(2, udp6(V6_HDRS + 8 + 8, PAYLOAD.len()))
    );
}

#[test]
fn vlan_three_tags_is_unsupported() {
    let f = v4().qinq(100, 200).dot1q(300).build();
    assert_eq!(parse(&f), Got::Unsupported);
    // Malformed until the third TPID can be read (at 20..22), then
    // unsupported: the walk stops at a tag it does not step over.
    for n in 0..f.len() {
        let want = if n < 22 {
            Got::Malformed
        } else {
            Got::Unsupported
        };
        assert_eq!(parse_prefix(&f, n), want, "prefix {n}");
    }
    let f = v6()
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021AD, 2)
        .dot1q(3)
        .build();
    assert_eq!(parse(&f), Got::Unsupported);
    // A third tag of another TPID is just another EtherType.
    let f = v4().qinq(100, 200).vlan(0x9100, 300).build();
    assert_eq!(parse(&f), Got::NotUdp);
}

// ---------------------------------------------------------------- not UDP

#[test]
fn tcp_is_not_udp() {
    let tcp = [0u8; 20];
    let f = FrameBuilder::ipv4(SRC4, DST4)
        .protocol(IPPROTO_TCP)
        .payload(&tcp)
        .build();
    assert_eq!(f.len(), 14 + 20 + 20);
    assert_eq!(parse(&f), Got::NotUdp);
    let f = FrameBuilder::ipv4(SRC4, DST4)
        .ipv4_options(&[1; 12])
        .protocol(IPPROTO_TCP)
        .payload(&tcp)
        .build();
    assert_eq!(parse(&f), Got::NotUdp);
    let f = FrameBuilder::ipv6(SRC6, DST6)
        .ipv6_ext(IPPROTO_HOPOPTS, 0)
        .protocol(IPPROTO_TCP)
        .payload(&tcp)
        .build();
    assert_eq!(parse(&f), Got::NotUdp);
    // ICMPv6.
    let f = FrameBuilder::ipv6(SRC6, DST6)
        .protocol(58)
        .payload(&[128, 0, 0, 0, 0, 1, 0, 1])
        .build();
    assert_eq!(parse(&f), Got::NotUdp);
}

#[test]
fn tcp_prefixes() {
    // Malformed until the fixed IPv4 header is complete, then NotUdp.
    let f = FrameBuilder::ipv4(SRC4, DST4)
        .protocol(IPPROTO_TCP)
        .payload(&[0; 20])
        .build();
    for n in 0..=f.len() {
        let want = if n < 34 { Got::Malformed } else { Got::NotUdp };
        assert_eq!(parse_prefix(&f, n), want, "prefix {n}");
    }
}

#[test]
fn arp_is_not_udp() {
    let f = FrameBuilder::arp_request([2, 0, 0, 0, 0, 9], SRC4, DST4)
        .pad_to(ETH_MIN_LEN)
        .build();
    assert_eq!(f.len(), 60);
    assert_eq!(parse(&f), Got::NotUdp);
    for n in 0..14 {
        assert_eq!(parse_prefix(&f, n), Got::Malformed, "prefix {n}");
    }
    // A bare Ethernet header with a non-IP EtherType.
    assert_eq!(parse_prefix(&f, 14), Got::NotUdp);
    let f = FrameBuilder::ethernet(0x88CC).dot1q(5).build();
    assert_eq!(parse(&f), Got::NotUdp);
}

// ---------------------------------------------------------------- UDP length

#[test]
fn udp_len_below_header_is_malformed() {
    for len in 0..8u16 {
        let f = v4().udp_len_override(len).build();
        assert_eq!(parse(&f), Got::Malformed, "IPv4 UDP length {len}");
        let f = v6().udp_len_override(len).build();
        assert_eq!(parse(&f), Got::Malformed, "IPv6 UDP length {len}");
    }
}

#[test]
fn udp_len_beyond_ip_payload_is_malformed() {
    let real = 8 + PAYLOAD.len();
    for lie in [real + 1, real + 100, 0xFFFF] {
        let f = v4().udp_len_override(lie as u16).build();
        assert_eq!(parse(&f), Got::Malformed, "IPv4 UDP length {lie}");
        let f = v6().udp_len_override(lie as u16).build();
        assert_eq!(parse(&f), Got::Malformed, "IPv6 UDP length {lie}");
    }
    // Also when the frame has room for it (Ethernet padding): the IP length
    // bounds the UDP datagram, not the frame.
    let f = v4().udp_len_override(real as u16 + 4).pad_to(200).build();
    assert_eq!(parse(&f), Got::Malformed);
}

#[test]
fn udp_len_shorter_than_ip_payload_is_trusted() {
    // Bytes after the UDP datagram inside the IP packet are not payload.
    let f = v4().udp_len_override(8 + 3).build();
    assert_eq!(parse(&f), udp4(V4_HDRS, 3));
    let f = v6().udp_len_override(8).build();
    assert_eq!(parse(&f), udp6(V6_HDRS, 0));
}

#[test]
fn zero_length_payload() {
    let f = FrameBuilder::ipv4(SRC4, DST4)
        .udp(SPORT, DPORT, &[])
        .build();
    assert_eq!(f.len(), V4_HDRS);
    assert_eq!(parse(&f), udp4(V4_HDRS, 0));
    let f = FrameBuilder::ipv6(SRC6, DST6)
        .udp(SPORT, DPORT, &[])
        .build();
    assert_eq!(f.len(), V6_HDRS);
    assert_eq!(parse(&f), udp6(V6_HDRS, 0));
}

#[test]
fn ethernet_padding_is_not_payload() {
    // A 1-byte datagram is 43 bytes; a NIC pads the frame to 60.
    let b = FrameBuilder::ipv4(SRC4, DST4)
        .udp(SPORT, DPORT, b"!")
        .pad_to(ETH_MIN_LEN);
    let f = b.build();
    assert_eq!(f.len(), 60);
    assert_eq!(parse(&f), udp4(V4_HDRS, 1));
    let f = FrameBuilder::ipv4(SRC4, DST4)
        .udp(SPORT, DPORT, &[])
        .pad_to(ETH_MIN_LEN)
        .build();
    assert_eq!(parse(&f), udp4(V4_HDRS, 0));
    // A trailer after an IPv6 packet.
    let f = v6().pad_to(V6_HDRS + PAYLOAD.len() + 4).build();
    assert_eq!(parse(&f), udp6(V6_HDRS, PAYLOAD.len()));
}

// ---------------------------------------------------------------- truncation

/// Good UDP frames with varied header stacks, none padded.
fn truncation_cases() -> Vec<FrameBuilder> {
    vec![
        v4(),
        v4().ipv4_options(&[1; 40]),
        v4().qinq(10, 20).ipv4_options(&[1, 1, 1, 1]),
        v6(),
        v6().dot1q(3)
            .ipv6_ext(IPPROTO_HOPOPTS, 0)
            .ipv6_ext(IPPROTO_ROUTING, 1)
            .ipv6_fragment(0, false)
            .ipv6_ext(IPPROTO_DSTOPTS, 2),
        v6().qinq(1, 2).ipv6_ext(IPPROTO_DSTOPTS, 0),
    ]
}

#[test]
fn truncated_at_every_byte_is_malformed() {
    for b in truncation_cases() {
        let f = b.build();
        let want = parse_good(&b);
        // Cut anywhere, the frame ends before what its length fields claim.
        for n in 0..f.len() {
            assert_eq!(parse_prefix(&f, n), Got::Malformed, "{b:?} prefix {n}");
        }
        assert_eq!(parse_prefix(&f, f.len()), want);
    }
}

#[test]
fn headers_cut_in_first_buffer_are_malformed() {
    // Multi-buffer: frame_len is the whole frame, but the first buffer ends
    // at `n`. Headers must all be in the first buffer; the payload need not.
    for b in truncation_cases() {
        let f = b.build();
        let want = parse_good(&b);
        for n in 0..b.headers_len() {
            assert_eq!(parse_split(&f, n), Got::Malformed, "{b:?} first {n}");
        }
        for n in b.headers_len()..=f.len() {
            assert_eq!(parse_split(&f, n), want, "{b:?} first {n}");
        }
    }
}

#[test]
fn payload_beyond_first_buffer() {
    let payload = vec![0x5A; 3000];
    let b = FrameBuilder::ipv4(SRC4, DST4).udp(SPORT, DPORT, &payload);
    let f = b.build();
    assert_eq!(parse_split(&f, b.headers_len() + 10), udp4(V4_HDRS, 3000));
    let b = FrameBuilder::ipv6(SRC6, DST6)
        .ipv6_ext(IPPROTO_HOPOPTS, 0)
        .udp(SPORT, DPORT, &payload);
    let f = b.build();
    assert_eq!(
        parse_split(&f, b.headers_len() + 10),
        udp6(V6_HDRS + 8, 3000)
    );
    // The lengths are still checked against the whole frame.
    let f = FrameBuilder::ipv4(SRC4, DST4)
        .udp(SPORT, DPORT, &payload)
        .ip_total_len_override(20 + 8 + 3001)
        .build();
    assert_eq!(parse_split(&f, V4_HDRS + 10), Got::Malformed);
}

// ---------------------------------------------------------------- fast path

/// `parse_headers` takes a shortcut for untagged IPv4 without options; the
/// general IPv4 parser must reach the same outcome and IP end on every such
/// frame, good or bad, and on every prefix of it.
#[test]
fn ipv4_fast_path_agrees_with_the_general_parser() {
    use udp_ebpf_common::parse::{parse_headers, parse_ipv4};
    let payloads: [&[u8]; 3] = [b"", b"x", PAYLOAD];
    let mut frames = Vec::new();
    for p in payloads {
        let b = || FrameBuilder::ipv4(SRC4, DST4).udp(SPORT, DPORT, p);
        frames.push(b().build());
        frames.push(b().pad_to(ETH_MIN_LEN + 40).build());
        for len in [
            0u16,
            7,
            8,
            9,
            8 + p.len() as u16,
            9 + p.len() as u16,
            0xFFFF,
        ] {
            frames.push(b().udp_len_override(len).build());
        }
        for len in [
            0u16,
            20,
            27,
            28,
            29,
            28 + p.len() as u16,
            29 + p.len() as u16,
            0xFFFF,
        ] {
            frames.push(b().ip_total_len_override(len).build());
        }
        frames.push(b().ipv4_fragment(0, true).build());
        frames.push(b().ipv4_fragment(8, false).build());
    }
    frames.push(
        FrameBuilder::ipv4(SRC4, DST4)
            .protocol(IPPROTO_TCP)
            .payload(&[0; 20])
            .build(),
    );
    let mut fast = 0;
    for f in &frames {
        for n in 0..=f.len() {
            let (start, end) = (f.as_ptr() as usize, f.as_ptr() as usize + n);
            // Only the outcome and, for a datagram, the IP end are defined.
            let defined = |(outcome, ip_end)| match outcome {
                Outcome::Udp(_) => (outcome, ip_end),
                other => (other, 0),
            };
            let got = defined(parse_headers(start, end));
            // Shorter than Ethernet: the general path stops at parse_eth.
            let general = if n < 14 {
                (Outcome::Malformed, 0)
            } else {
                defined(parse_ipv4(start, end, 14))
            };
            assert_eq!(got, general, "{n} of {f:02x?}");
            fast += usize::from(n >= 42);
        }
    }
    assert!(fast > 500, "only {fast} prefixes took the fast path");
}

// ---------------------------------------------------------------- fragments

/// `parse_fragment` of a whole frame, with the addresses read at the IP
/// header it found.
fn frag(frame: &[u8]) -> Result<(FragMeta, usize, [u8; 16], [u8; 16]), Outcome> {
    let (start, end) = (
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + frame.len(),
    );
    assert_eq!(parse_frame(start, end, frame.len()), Outcome::Fragment);
    let (meta, ip_end) = parse_fragment(start, end);
    let meta = meta?;
    let (src, dst) =
        read_addresses_at(start, end, meta.ip_version, meta.l3_offset).expect("addresses readable");
    Ok((meta, ip_end, src, dst))
}

#[test]
fn ipv4_fragments_of_a_datagram_are_read_in_full() {
    let b = v4().frag_id(0xBEEF).udp(SPORT, DPORT, &[7; 3000]);
    let frames = b.fragments(1500);
    assert_eq!(frames.len(), 3);
    let udp = b.udp_datagram();
    let mut offset = 0;
    for (i, f) in frames.iter().enumerate() {
        let (m, ip_end, src, dst) = frag(f).unwrap();
        let first = i == 0;
        assert_eq!(
            m,
            FragMeta {
                ip_version: 4,
                more: i < 2,
                l3_offset: 14,
                id: 0xBEEF,
                offset: offset as u32,
                data_offset: 34,
                data_len: (f.len() - 34) as u32,
                src_port: if first { SPORT } else { 0 },
                dst_port: if first { DPORT } else { 0 },
            },
            "fragment {i}"
        );
        assert_eq!(ip_end, f.len());
        assert_eq!((src, dst), (pad16(SRC4), pad16(DST4)));
        assert_eq!(&f[34..], &udp[offset..offset + m.data_len as usize]);
        offset += m.data_len as usize;
    }
    assert_eq!(offset, udp.len());
}

#[test]
fn ipv6_fragments_behind_extension_headers_are_read_in_full() {
    let b = v6()
        .vlan(ETH_P_8021Q, 5)
        .ipv6_ext(IPPROTO_HOPOPTS, 0)
        .ipv6_ext(IPPROTO_ROUTING, 1)
        .frag_id(0xDEAD_BEEF)
        .udp(SPORT, DPORT, &[9; 2000]);
    let frames = b.fragments(1280);
    assert_eq!(frames.len(), 2);
    let udp = b.udp_datagram();
    // Ethernet and the tag, IPv6, 8 + 16 bytes of extension headers, then
    // the fragment header.
    let data_at = 18 + 40 + 24 + 8;
    let (m, ip_end, src, dst) = frag(&frames[0]).unwrap();
    assert_eq!(
        m,
        FragMeta {
            ip_version: 6,
            more: true,
            l3_offset: 18,
            id: 0xDEAD_BEEF,
            offset: 0,
            data_offset: data_at as u32,
            data_len: (1280 - 40 - 24 - 8) / 8 * 8,
            src_port: SPORT,
            dst_port: DPORT,
        }
    );
    assert_eq!(ip_end, frames[0].len());
    assert_eq!((src, dst), (SRC6, DST6));
    let (last, ..) = frag(&frames[1]).unwrap();
    assert_eq!(
        (last.more, last.offset, last.src_port),
        (false, m.data_len, 0)
    );
    assert_eq!(m.data_len + last.data_len, udp.len() as u32);
    assert_eq!(&frames[1][data_at..], &udp[m.data_len as usize..]);
}

#[test]
fn fragments_that_cannot_be_read_say_why() {
    let b = v4().udp(SPORT, DPORT, &[1; 100]);
    let udp = b.udp_datagram();
    // A first fragment without the whole UDP header (RFC 1858).
    assert_eq!(
        frag(&b.fragment(0, true, &udp[..7])),
        Err(Outcome::Malformed)
    );
    // Data that would make an IPv4 packet longer than 65,535 bytes, its
    // 20-byte header included: 65,515 bytes of data at most.
    assert!(frag(&b.fragment(65504, false, &[0; 11])).is_ok());
    assert_eq!(
        frag(&b.fragment(65504, false, &[0; 12])),
        Err(Outcome::Malformed)
    );
    let b6 = v6().udp(SPORT, DPORT, &[1; 100]);
    assert!(frag(&b6.fragment(65528, false, &[0; 7])).is_ok());
    assert_eq!(
        frag(&b6.fragment(65528, false, &[0; 8])),
        Err(Outcome::Malformed)
    );
    // An empty fragment.
    assert_eq!(frag(&b.fragment(8, true, &[])), Err(Outcome::Malformed));
    // IPv6 fragments whose next header is not UDP.
    let f = b6.clone().protocol(6).fragment(8, true, &[0; 16]);
    assert_eq!(frag(&f), Err(Outcome::NotUdp));
    let f = b6
        .clone()
        .protocol(IPPROTO_DSTOPTS)
        .fragment(8, true, &[0; 16]);
    assert_eq!(frag(&f), Err(Outcome::Unsupported));
    // Cut short anywhere before the data: malformed (or, before the fixed
    // IPv4 header is whole, not even that far).
    let f = b.fragments(64)[1].clone();
    for n in 14..34 {
        let g = &f[..n];
        let (start, end) = (g.as_ptr() as usize, g.as_ptr() as usize + n);
        assert_eq!(parse_fragment(start, end).0, Err(Outcome::Malformed), "{n}");
    }
}
