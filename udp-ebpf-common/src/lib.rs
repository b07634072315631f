//! Types shared by the XDP program (`udp-ebpf`) and the agent (`udp-agent`),
//! and the header parsers the XDP program runs, written over a raw byte range
//! so that they are unit-tested on the host with `Vec<u8>` frames.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, made of
//! integers and byte arrays only, with explicit padding: the kernel can write
//! any bit pattern, so no `bool`, `Option` or Rust enum lives in these structs.
#![cfg_attr(not(feature = "user"), no_std)]

#[cfg(feature = "user")]
pub mod frame;
pub mod parse;
#[cfg(feature = "user")]
pub mod xsk;

/// Number of UDP ports: the port table has one slot per port, so a lookup is
/// a single array index (O(1), no hashing on the hot path).
pub const PORT_COUNT: u32 = 65536;

/// Largest number of payload bytes one ring record can carry. An EC2 jumbo
/// frame (MTU 9001) carries at most 9001 - 20 (IPv4) - 8 (UDP) = 8,973 bytes
/// of UDP payload; 9,216 leaves room for that and rounds to a common jumbo
/// size. Larger payloads (loopback has MTU 65536) are captured truncated.
pub const MAX_CAPTURE: u32 = 9216;

/// Largest `Config::snaplen`: every payload whole. A whole datagram's
/// record still stops at `MAX_CAPTURE`; a datagram reassembled from IP
/// fragments can be whole up to the UDP maximum (65,507 bytes over IPv4,
/// 65,527 over IPv6), each fragment being a record of its own.
pub const MAX_SNAPLEN: u32 = 65_535;

/// Default ring buffer size in bytes (must be a power-of-two number of pages).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Kernel counter indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Every frame the program ran on. The kernel does not count it (one
    /// per-CPU increment fewer on every frame, which is most of what the
    /// non-matching path costs over its parsing): every frame ends in
    /// exactly one of the [`TERMINAL`] outcomes, so readers report their
    /// sum ([`seen`]) under this index.
    pub const SEEN: u32 = 0;
    /// Not IPv4/IPv6, or not UDP (including IPv6 extension chains we do not walk).
    pub const NOT_UDP: u32 = 1;
    /// UDP to a destination port that is not enabled.
    pub const PORT_DISABLED: u32 = 2;
    /// Written to the ring buffer.
    pub const CAPTURED: u32 = 3;
    /// Matched, but the ring buffer had no room: the agent is not keeping up.
    pub const RING_FULL: u32 = 4;
    /// Captured with fewer payload bytes than on the wire (snap length).
    pub const TRUNCATED: u32 = 5;
    /// A header was cut short or a length field lied.
    pub const MALFORMED: u32 = 6;
    /// An IP fragment of a UDP datagram, written to the ring buffer for the
    /// agent to reassemble: its datagram's first fragment decided to capture
    /// it, or it came before that first fragment (`FRAGMENT_EARLY`). A
    /// fragment its datagram's decision rejects is counted as that decision
    /// (`PORT_DISABLED`, `DENIED`, `LIMITED_*`, `RING_FULL`), once per
    /// fragment.
    pub const FRAGMENT: u32 = 7;
    /// The payload could not be copied out of the frame (should not happen).
    pub const COPY_FAILED: u32 = 8;
    /// Over its port's rate limit.
    pub const LIMITED_PORT: u32 = 9;
    /// Over the per-source rate limit.
    pub const LIMITED_SOURCE: u32 = 10;
    /// Over the global cap across all ports.
    pub const LIMITED_GLOBAL: u32 = 11;
    /// Source address on the deny list, or not on a non-empty allow list.
    pub const DENIED: u32 = 12;
    /// Captured (a whole datagram, or a fragment of one), then dropped
    /// because its port's action is `drop`.
    pub const CONSUMED: u32 = 13;
    /// Captured by redirecting the frame to the agent's AF_XDP socket for
    /// its interface and RX queue, instead of writing a ring record.
    pub const REDIRECTED: u32 = 14;
    /// A frame whose headers go deeper than the program looks: more than
    /// `parse::VLAN_MAX_DEPTH` VLAN tags, more than
    /// `parse::IPV6_EXT_MAX_DEPTH` IPv6 extension headers, or an extension
    /// header it does not step over (AH, Mobility, HIP, Shim6, experimental;
    /// IPv6 fragments whose first header after the fragment header is not
    /// UDP). It may be UDP to an enabled port: unlike `NOT_UDP`, this is
    /// traffic the program could not tell apart.
    pub const UNSUPPORTED: u32 = 15;
    /// Qualifies a `FRAGMENT`: written before its datagram's first fragment
    /// (which holds the ports) had been seen, so before any decision. The
    /// agent keeps it until the first fragment arrives or the program
    /// reports the datagram rejected (`RECORD_FRAGMENT_DISCARD`).
    pub const FRAGMENT_EARLY: u32 = 16;
    /// A fragment past `FRAG_MAX_RECORDS` written for one datagram: no
    /// datagram needs that many on any path the agent supports, so the
    /// rest of a flood with one identification is passed, not captured.
    pub const FRAGMENT_EXCESS: u32 = 17;

    /// The outcomes that end a frame's run: the program counts exactly one
    /// of these per frame. `TRUNCATED`, `CONSUMED`, `REDIRECTED` and
    /// `FRAGMENT_EARLY` are not among them: they qualify a frame already
    /// counted as `CAPTURED` or `FRAGMENT`.
    pub const TERMINAL: [u32; 13] = [
        NOT_UDP,
        PORT_DISABLED,
        CAPTURED,
        RING_FULL,
        MALFORMED,
        FRAGMENT,
        COPY_FAILED,
        LIMITED_PORT,
        LIMITED_SOURCE,
        LIMITED_GLOBAL,
        DENIED,
        UNSUPPORTED,
        FRAGMENT_EXCESS,
    ];

    /// The `SEEN` figure, from a reader of the other counters (summed over
    /// CPUs): the sum of the terminal outcomes.
    pub fn seen<E>(mut read: impl FnMut(u32) -> Result<u64, E>) -> Result<u64, E> {
        let mut sum = 0u64;
        for index in TERMINAL {
            sum = sum.wrapping_add(read(index)?);
        }
        Ok(sum)
    }

    /// Slots in the array; spare slots are reserved for later outcomes.
    pub const COUNT: u32 = 24;

    /// Names in index order, as shown by `udp-agent stats` and metrics.
    pub const NAMES: [&str; 18] = [
        "seen",
        "not_udp",
        "port_disabled",
        "captured",
        "ring_full",
        "truncated",
        "malformed",
        "fragment",
        "copy_failed",
        "limited_port",
        "limited_source",
        "limited_global",
        "denied",
        "consumed",
        "redirected",
        "unsupported",
        "fragment_early",
        "fragment_excess",
    ];
    const _: () = assert!(NAMES.len() as u32 <= COUNT);
}

/// `PortRule::flags` bit: this destination port is captured.
pub const PORT_ENABLED: u32 = 1;
/// `PortRule::flags` bit: after capture, drop the packet (the agent is its
/// only receiver) instead of passing it to the host's stack.
pub const PORT_DROP: u32 = 2;

/// How the agent turns a datagram's payload into event fields: the
/// representation `Detail` carries (`Payload`, `Text`, `Hex`, `Json`,
/// `Syslog`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// `Payload`: standard base64 (the article's contract).
    #[default]
    Base64,
    /// `Text`: the payload as a string when it is UTF-8.
    Text,
    /// `Hex`: lowercase hex digits.
    Hex,
    /// `Json`: the payload as a JSON value when it is JSON.
    Json,
    /// `Syslog`: fields parsed from an RFC 5424 or RFC 3164 message.
    Syslog,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Base64,
        Format::Text,
        Format::Hex,
        Format::Json,
        Format::Syslog,
    ];

    /// The format's code in an encoding word.
    pub const fn code(self) -> u32 {
        match self {
            Format::Base64 => 0,
            Format::Text => 1,
            Format::Hex => 2,
            Format::Json => 3,
            Format::Syslog => 4,
        }
    }

    /// The format of a code; an unknown code (a newer agent's, or a bit
    /// pattern nobody wrote) is `Base64`, which every payload fits.
    pub const fn from_code(code: u32) -> Format {
        match code {
            1 => Format::Text,
            2 => Format::Hex,
            3 => Format::Json,
            4 => Format::Syslog,
            _ => Format::Base64,
        }
    }

    /// The name users write (`--format`) and events carry (`Format`).
    pub const fn name(self) -> &'static str {
        match self {
            Format::Base64 => "base64",
            Format::Text => "text",
            Format::Hex => "hex",
            Format::Json => "json",
            Format::Syslog => "syslog",
        }
    }
}

/// A port's encoding: its payload format, and whether its datagrams are
/// packed several to an event. Kept in the port's rule and in every ring
/// record as one u32 ([`Encoding::word`]): bits 0-7 the format's code,
/// bit 8 packing, the rest zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Encoding {
    pub format: Format,
    pub pack: bool,
}

/// [`Encoding::word`] bits.
pub const ENCODING_FORMAT_MASK: u32 = 0xFF;
pub const ENCODING_PACK: u32 = 1 << 8;

impl Encoding {
    pub const fn word(self) -> u32 {
        self.format.code() | if self.pack { ENCODING_PACK } else { 0 }
    }

    pub const fn from_word(word: u32) -> Encoding {
        Encoding {
            format: Format::from_code(word & ENCODING_FORMAT_MASK),
            pack: word & ENCODING_PACK != 0,
        }
    }
}

/// `XDP_PASS` / `XDP_DROP`, as the program returns them.
pub const ACTION_PASS: u32 = 2;
pub const ACTION_DROP: u32 = 1;

/// A rate limit as the kernel applies it: GCRA ("virtual scheduling"), the
/// token bucket expressed as a theoretical arrival time (TAT), so that one
/// compare-and-swap of one u64 updates it from any CPU. `interval_ns == 0`
/// means no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds between packets at the sustained rate (1e9 / rate).
    pub interval_ns: u64,
    /// How far ahead of now the TAT may run: burst × interval.
    pub tolerance_ns: u64,
}

impl Limit {
    pub const NONE: Limit = Limit {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `rate` packets per second with bursts of up to `burst` packets
    /// (`burst` 0 means `rate`, i.e. one second's worth). Rate 0: no limit.
    pub const fn per_second(rate: u64, burst: u64) -> Limit {
        if rate == 0 {
            return Limit::NONE;
        }
        let interval_ns = 1_000_000_000 / rate;
        let burst = if burst == 0 { rate } else { burst };
        Limit {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst),
        }
    }

    pub const fn is_limited(&self) -> bool {
        self.interval_ns != 0
    }

    /// Packets per second this limit allows (inverse of `per_second`).
    pub const fn rate(&self) -> u64 {
        match 1_000_000_000u64.checked_div(self.interval_ns) {
            Some(rate) => rate,
            None => 0,
        }
    }

    pub const fn burst(&self) -> u64 {
        match self.tolerance_ns.checked_div(self.interval_ns) {
            Some(burst) => burst,
            None => 0,
        }
    }

    /// The GCRA decision for a packet arriving at `now` when the bucket's
    /// TAT is `tat`: the new TAT if the packet conforms, `None` if it is over
    /// the limit (and the TAT must not change).
    #[inline(always)]
    pub const fn conform(&self, tat: u64, now: u64) -> Option<u64> {
        let start = if tat > now { tat } else { now };
        let new_tat = start + self.interval_ns;
        if new_tat - now > self.tolerance_ns {
            None
        } else {
            Some(new_tat)
        }
    }
}

/// One slot of the `PORTS` array, indexed by destination port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// `PORT_ENABLED`, `PORT_DROP`.
    pub flags: u32,
    /// How the agent encodes this port's datagrams ([`Encoding::word`]).
    /// The kernel never reads it: it copies it into each record's header,
    /// so the agent knows a packet's encoding without a map lookup.
    pub encoding: u32,
    /// Rate limit of this port.
    pub limit: Limit,
}

impl PortRule {
    pub const fn enabled() -> Self {
        Self {
            flags: PORT_ENABLED,
            encoding: 0,
            limit: Limit::NONE,
        }
    }

    /// The encoding the agent applies to this port's datagrams: the same
    /// answer the ring record's header gives, for capture paths that have
    /// no such header (they look the rule up instead).
    pub const fn encoding(&self) -> Encoding {
        Encoding::from_word(self.encoding)
    }

    pub const fn is_enabled(&self) -> bool {
        self.flags & PORT_ENABLED != 0
    }

    pub const fn drops(&self) -> bool {
        self.flags & PORT_DROP != 0
    }
}

/// Per-port state the kernel updates with atomic operations (shared by all
/// CPUs, so a limit holds for all of them together): the port's GCRA TAT
/// and its over-limit count. (Its captured count is per CPU, in
/// `PORT_CAPTURED`: every capture adds to it, and one line shared by all
/// CPUs would bounce between them on a multi-queue NIC; `limited` is only
/// touched while a limit rejects, and shares the TAT's line anyway.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    pub tat: u64,
    pub limited: u64,
}

/// Key of the per-source LRU table: the source address (IPv4 in the first
/// 4 bytes) and its IP version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub ip_version: u8,
    pub _pad: [u8; 3],
}

/// Per-source state: GCRA TAT and counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    pub tat: u64,
    pub captured: u64,
    pub limited: u64,
}

/// `Config::flags` bit: the allow list is not empty, so sources that match
/// no allow prefix are denied.
pub const CONFIG_ALLOWLIST: u32 = 1;
/// `Config::flags` bit: over-limit and denied packets are dropped rather
/// than passed to the host.
pub const CONFIG_REJECT_DROP: u32 = 2;
/// `Config::flags` bit: the deny list is not empty. While it is clear the
/// kernel skips the deny list's lookups (two LPM-trie helper calls saved
/// per captured datagram in the common case of no deny list).
pub const CONFIG_DENYLIST: u32 = 4;
/// `Config::flags` bit: the agent reads consumed ports (`PORT_DROP`) from
/// AF_XDP sockets (`--capture-path afxdp`): their datagrams are redirected
/// to the socket of their interface and RX queue, where one is registered
/// (`XSK_IFACES`, `XSKS`), and take the ring otherwise.
pub const CONFIG_AFXDP: u32 = 8;

/// `--kernel-log`: the program's read-only switch (1 on, 0 off, set at
/// load time), the map of interfaces whose first frame since the attach is
/// logged (the agent removes an interface from it when it attaches), how
/// often a malformed frame is logged at most, and how many of its first
/// bytes.
pub const KERNEL_LOG_GLOBAL: &str = "KERNEL_LOG";
pub const KERNEL_LOG_IFACES: &str = "LOGGED_IFACES";
pub const KERNEL_LOG_INTERVAL_NS: u64 = 10_000_000_000;
pub const KERNEL_LOG_BYTES: usize = 64;
const _: () = assert!(KERNEL_LOG_BYTES.is_power_of_two());

/// RX queues per interface that can have an AF_XDP socket: a slot in the
/// `XSKS` map each. ENA has at most 32 queues; a frame from a higher queue
/// takes the ring.
pub const XSK_MAX_QUEUES: u32 = 64;
/// Interfaces with AF_XDP sockets at once (`XSK_IFACES` entries).
pub const XSK_MAX_IFACES: u32 = 16;
/// Slots of the `XSKS` map: `XSK_IFACES[ifindex] + rx_queue_index`.
pub const XSK_SLOTS: u32 = XSK_MAX_QUEUES * XSK_MAX_IFACES;

/// What the program writes over the first 12 bytes of a frame it
/// redirects to an AF_XDP socket — the Ethernet destination and source
/// addresses, which no event carries — so that the agent, which gets the
/// frame and not a ring record, has the capture stamp and the captured
/// length the ring header would have given it. The EtherType after them
/// is left as it is, so the frame still parses.
///
/// XDP metadata (`bpf_xdp_adjust_meta`) is the documented place for such
/// a stamp, but drivers that do not reserve room for it refuse it — ENA's
/// in-tree driver among them — while every driver lets a program write
/// the packet it is about to redirect. The frame is consumed (its port's
/// action is `drop`): nothing else sees the changed addresses. Layout
/// (little-endian):
///
/// ```text
///  0  u64 timestamp_ns   as RecordHeader::timestamp_ns
///  8  u16 cap_len        payload bytes the agent takes (snap length applied)
/// 10  u8  flags          RECORD_COARSE_TIME; bits 4..8 the port rule's
///                       encoding (`encoding_flags`)
/// 11  u8  magic          XSK_STAMP_MAGIC
/// ```
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStamp {
    pub timestamp_ns: u64,
    pub cap_len: u16,
    pub flags: u8,
    pub magic: u8,
}

impl XskStamp {
    /// The port encoding its flags carry ([`encoding_flags`]).
    pub const fn encoding(&self) -> Encoding {
        encoding_of_flags(self.flags)
    }
}

/// `XskStamp::magic`: a frame without it was not stamped by the program.
pub const XSK_STAMP_MAGIC: u8 = 0xA7;
/// Size of `XskStamp`: the two Ethernet addresses.
pub const XSK_STAMP_LEN: usize = 12;
const _: () = assert!(core::mem::size_of::<XskStamp>() == XSK_STAMP_LEN);
const _: () = assert!(MAX_CAPTURE <= u16::MAX as u32);

/// The single slot of the `CONFIG` array: settings that apply to all ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most payload bytes captured per datagram (a whole datagram's record
    /// holds at most `MAX_CAPTURE`).
    pub snaplen: u32,
    /// `CONFIG_ALLOWLIST`, `CONFIG_REJECT_DROP`, `CONFIG_DENYLIST`.
    pub flags: u32,
    /// Cap across all ports together.
    pub global: Limit,
    /// Limit applied to each source address separately.
    pub per_source: Limit,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            snaplen: MAX_SNAPLEN,
            flags: 0,
            global: Limit::NONE,
            per_source: Limit::NONE,
        }
    }
}

/// Default number of sources tracked by the per-source LRU table.
pub const DEFAULT_SOURCE_ENTRIES: u32 = 65536;
/// Most prefixes in each allow/deny list (per address family). An LPM trie
/// allocates a node per prefix as it is added (and a few joints), not
/// `max_entries` up front: 65,536 IPv4 /32s measured 10 MB of kernel slab
/// (about 150 bytes each), none of it spent on an empty list. A lookup
/// walks at most one node per prefix bit (33 or 129), however full.
pub const MAX_PREFIXES: u32 = 65536;

/// `RecordHeader::ip_version` values.
pub const IP_V4: u8 = 4;
pub const IP_V6: u8 = 6;

/// Fixed header at the start of every ring buffer record; `cap_len` payload
/// bytes follow it directly. Layout (little-endian, 64 bytes):
///
/// ```text
///  0  u64 timestamp_ns   CLOCK_MONOTONIC at capture (bpf_ktime_get_ns), or
///                       with RECORD_COARSE_TIME its last tick before the
///                       capture (bpf_ktime_get_coarse_ns)
///  8  u32 ifindex        receiving interface
/// 12  u32 wire_len       UDP payload length on the wire (UDP length - 8);
///                       of a fragment: its data bytes after the IP headers
/// 16  u32 cap_len        payload bytes that follow this header
/// 20  u16 src_port       host byte order (of a fragment: 0 until its
/// 22  u16 dst_port       datagram's first fragment has been seen)
/// 24  u8  ip_version     4 or 6
/// 25  u8  flags          RECORD_COARSE_TIME, RECORD_FRAGMENT, …; bits 4..8
///                       the port rule's encoding (`encoding_flags`)
/// 26  u16 frag_offset    fragment offset in 8-byte units, as on the wire
/// 28  u32 frag_id        IPv4 identification (16 bits) or IPv6 fragment
///                       header identification; 0 for whole datagrams
/// 32  [u8;16] src_addr   IPv4 in the first 4 bytes, rest zero
/// 48  [u8;16] dst_addr
/// ```
///
/// A whole datagram's record has `flags & RECORD_FRAGMENT == 0` and zero
/// `frag_offset` and `frag_id` (what were padding bytes before fragments
/// were captured, so such a record reads the same to either layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub wire_len: u32,
    pub cap_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub ip_version: u8,
    pub flags: u8,
    pub frag_offset: u16,
    pub frag_id: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

/// `RecordHeader::flags`: `timestamp_ns` is `CLOCK_MONOTONIC_COARSE`, the
/// time of the kernel's last tick before the capture, so the capture
/// happened within one tick after it. The program stamps this way when no
/// limit needs the precise clock, which is dear to read (an ordered TSC
/// read: a fifth to a third of a small capture's cost); the agent narrows
/// the stamp with the time its pass over the ring began.
pub const RECORD_COARSE_TIME: u8 = 1;
/// `RecordHeader::flags`: the record is one IP fragment of a UDP datagram.
/// Its payload is the fragment's data (what follows the IP header, or the
/// IPv6 fragment header), the UDP header included in the first fragment,
/// `frag_offset × 8` bytes into the datagram's data; `cap_len` may stop
/// short of `wire_len` only where the bytes lie past `--snaplen`. The
/// agent reassembles the datagram, keyed by addresses, IP version and
/// `frag_id`.
pub const RECORD_FRAGMENT: u8 = 2;
/// `RecordHeader::flags`, with `RECORD_FRAGMENT`: more fragments follow this
/// one (IPv4 MF, IPv6 M); clear on the last fragment.
pub const RECORD_MORE_FRAGMENTS: u8 = 4;
/// Flag bits (of `RecordHeader::flags` and `XskStamp::flags`) that carry a
/// port rule's encoding, so the agent knows each datagram's format without
/// a map lookup: the format code in bits 4..7, pack in bit 7. The program
/// copies them from `PortRule::encoding` and never reads them. Codes up to
/// 7 fit; `Format::from_code` reads any other as base64.
pub const FLAGS_FORMAT_SHIFT: u32 = 4;
pub const FLAGS_FORMAT_MASK: u8 = 0x70;
pub const FLAGS_PACK: u8 = 0x80;

/// The flag bits that carry the encoding word of a port rule.
#[inline(always)]
pub const fn encoding_flags(word: u32) -> u8 {
    let format = ((word & ENCODING_FORMAT_MASK) << FLAGS_FORMAT_SHIFT) as u8 & FLAGS_FORMAT_MASK;
    let pack = if word & ENCODING_PACK != 0 {
        FLAGS_PACK
    } else {
        0
    };
    format | pack
}

/// The encoding flag bits carry.
pub const fn encoding_of_flags(flags: u8) -> Encoding {
    let format = ((flags & FLAGS_FORMAT_MASK) >> FLAGS_FORMAT_SHIFT) as u32;
    let pack = if flags & FLAGS_PACK != 0 {
        ENCODING_PACK
    } else {
        0
    };
    Encoding::from_word(format | pack)
}

const _: () = assert!(Format::Syslog.code() << FLAGS_FORMAT_SHIFT <= FLAGS_FORMAT_MASK as u32);

/// `RecordHeader::flags`, with `RECORD_FRAGMENT`: not a fragment but a
/// notice, without payload, that this datagram's first fragment rejected
/// it after fragments that came before it had been written
/// (`counter::FRAGMENT_EARLY`): the agent drops what it holds of it.
pub const RECORD_FRAGMENT_DISCARD: u8 = 8;

/// Key of the `FRAGS` LRU table, which carries a datagram's decision from
/// its first fragment to the others: what identifies a datagram's
/// fragments (RFC 791 and RFC 8200), the protocol being always UDP.
///
/// Aligned to 8 bytes: the XDP program keeps it on its stack, where the
/// verifier refuses the misaligned 8-byte copies the BPF backend would
/// otherwise make of a 4-byte-aligned struct.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// IPv4 in the first 4 bytes, rest zero.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    pub ip_version: u8,
    pub _pad: [u8; 3],
}

/// `FragState::state`: fragments came before the first one; each is
/// written to the ring (`counter::FRAGMENT_EARLY`) and passed.
pub const FRAG_PENDING: u8 = 1;
/// `FragState::state`: the first fragment chose to capture the datagram;
/// every fragment is written and takes `action`.
pub const FRAG_CAPTURE: u8 = 2;
/// `FragState::state`: the datagram is not captured; every fragment is
/// counted as `outcome` and takes `action`.
pub const FRAG_REJECT: u8 = 3;

/// `FragState::flags`: the per-source limit has been charged for this
/// datagram (by a fragment that came before the first).
pub const FRAG_CHARGED_SOURCE: u8 = 1;
/// `FragState::flags`: the global limit has been charged for it.
pub const FRAG_CHARGED_GLOBAL: u8 = 2;
/// `FragState::flags`: `src_port`/`dst_port` hold the first fragment's ports.
pub const FRAG_PORTS_KNOWN: u8 = 4;

/// A datagram's entry in the `FRAGS` table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragState {
    /// `CLOCK_MONOTONIC_COARSE` when its first-seen fragment arrived; the
    /// entry counts as absent `FRAG_TTL_NS` later.
    pub created_ns: u64,
    /// Fragment records written for it (`FRAG_MAX_RECORDS` at most).
    pub records: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// `FRAG_PENDING`, `FRAG_CAPTURE` or `FRAG_REJECT`.
    pub state: u8,
    /// With `FRAG_REJECT`: the `counter` index each fragment is counted as.
    pub outcome: u8,
    /// The XDP action every fragment takes (`ACTION_PASS`/`ACTION_DROP`).
    pub action: u8,
    /// `FRAG_CHARGED_SOURCE`, `FRAG_CHARGED_GLOBAL`, `FRAG_PORTS_KNOWN`.
    pub flags: u8,
    pub _pad: u32,
}

/// Datagrams the `FRAGS` table follows at once; the least recently used
/// are evicted. Entries live `FRAG_TTL_NS`, so this is room for 8,192
/// fragmented datagrams a second; one evicted early only turns its later
/// fragments into early ones (captured, passed), which the agent still
/// reassembles.
pub const FRAG_ENTRIES: u32 = 8192;

/// How long a `FRAGS` entry holds its datagram's decision. A datagram's
/// fragments arrive within microseconds of each other; a short life keeps
/// a later datagram that reuses the identification (IPv4's is 16 bits) from
/// following an earlier one's decision. A fragment later than this is
/// written as an early one, which the agent still reassembles with the rest
/// (within `--reassembly-timeout`).
pub const FRAG_TTL_NS: u64 = 1_000_000_000;

/// Most fragment records written for one datagram. The largest UDP
/// datagram (65,535 bytes) needs 119 fragments on a path with IPv4's
/// smallest guaranteed MTU (576) and 54 with IPv6's (1,280); more is a
/// flood of one identification, whose surplus is passed and counted
/// (`counter::FRAGMENT_EXCESS`) rather than captured.
pub const FRAG_MAX_RECORDS: u32 = 128;

/// The slot of the XDP program's `FRAGMENT_PATH` program array where the
/// loader puts its second program, `udp_fragment`, which `udp_capture`
/// tail-calls for IP fragments.
pub const FRAGMENT_PATH_SLOT: u32 = 0;
/// Name of that program in the object, and of the map.
pub const FRAGMENT_PROGRAM: &str = "udp_fragment";
pub const FRAGMENT_PATH_MAP: &str = "FRAGMENT_PATH";

/// Size of `RecordHeader` on the ring; the payload starts at this offset.
pub const RECORD_HEADER_LEN: usize = 64;
const _: () = assert!(core::mem::size_of::<RecordHeader>() == RECORD_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<PortRule>() == 24);
const _: () = assert!(core::mem::size_of::<PortState>() == 16);
const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);
const _: () = assert!(core::mem::size_of::<SourceState>() == 24);
const _: () = assert!(core::mem::size_of::<Config>() == 40);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragState>() == 24);

/// Payload room of the ring record size classes, smallest first.
///
/// `bpf_ringbuf_reserve` needs a size the verifier knows as a constant, so
/// the XDP program reserves the smallest class that holds the captured
/// payload and writes the header and the payload straight into it (one copy,
/// out of the frame into the ring). A record is then `RECORD_HEADER_LEN +`
/// its class's room long; the `cap_len` in its header says how many of those
/// bytes are payload, the rest is padding (not zeroed: earlier ring contents)
/// that readers ignore. Steps of at most 1.5× keep the padding under a third
/// of a slot; 1,536 holds the largest payload of a 1,500-byte MTU
/// (1,472 bytes) with 64 to spare, `MAX_CAPTURE` the largest of an EC2
/// jumbo frame.
pub const RECORD_CLASSES: [u32; 17] = [
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
    6144,
    MAX_CAPTURE,
];

const _: () = {
    let mut i = 0;
    while i < RECORD_CLASSES.len() {
        // Ring records are 8-byte aligned; the header is too.
        assert!(RECORD_CLASSES[i] & 7 == 0);
        assert!(i == 0 || RECORD_CLASSES[i] > RECORD_CLASSES[i - 1]);
        assert!(i == 0 || RECORD_CLASSES[i] * 2 <= RECORD_CLASSES[i - 1] * 3);
        i += 1;
    }
    assert!(RECORD_CLASSES[RECORD_CLASSES.len() - 1] == MAX_CAPTURE);
};

/// The payload room of the record that carries `cap_len` captured bytes
/// (`cap_len` ≤ `MAX_CAPTURE`): the smallest class that holds them.
pub const fn record_room(cap_len: u32) -> u32 {
    let mut i = 0;
    while i < RECORD_CLASSES.len() {
        if cap_len <= RECORD_CLASSES[i] {
            return RECORD_CLASSES[i];
        }
        i += 1;
    }
    MAX_CAPTURE
}

/// Ring buffer bytes one record with `cap_len` payload bytes takes: the
/// kernel's 8-byte record header, ours, and the class's room.
pub const fn ring_slot_bytes(cap_len: u32) -> u32 {
    8 + RECORD_HEADER_LEN as u32 + record_room(cap_len)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit
    // padding fields: every bit pattern is a valid value.
    unsafe impl aya::Pod for super::PortRule {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RecordHeader {}
    unsafe impl aya::Pod for super::PortState {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragState {}
}

#[cfg(test)]
mod limit_tests {
    use super::Limit;

    #[test]
    fn burst_then_rate() {
        let l = Limit::per_second(1000, 10); // 1 ms apart, 10 at once
        let mut tat = 0;
        let now = 5_000_000_000;
        let mut passed = 0;
        for _ in 0..20 {
            if let Some(t) = l.conform(tat, now) {
                tat = t;
                passed += 1;
            }
        }
        assert_eq!(passed, 10);
        // 1 ms later exactly one more conforms.
        let later = now + 1_000_000;
        let t = l.conform(tat, later).expect("one more after an interval");
        assert_eq!(l.conform(t, later), None);
    }

    #[test]
    fn sustained_rate_over_a_second() {
        let l = Limit::per_second(1000, 1000);
        let mut tat = 0;
        let mut passed = 0;
        // 20,000 packets/s offered for 5 s, starting at t = 1 s.
        for i in 0..100_000u64 {
            let now = 1_000_000_000 + i * 50_000;
            if let Some(t) = l.conform(tat, now) {
                tat = t;
                passed += 1;
            }
        }
        // burst (1000) + 5 s × 1000/s, give or take one interval.
        assert!((5999..=6001).contains(&passed), "{passed}");
    }

    #[test]
    fn round_trips_rate_and_burst() {
        let l = Limit::per_second(1000, 2000);
        assert_eq!((l.rate(), l.burst()), (1000, 2000));
        assert_eq!(Limit::per_second(500, 0).burst(), 500);
        assert!(!Limit::per_second(0, 0).is_limited());
    }
}

#[cfg(test)]
mod record_class_tests {
    use super::{MAX_CAPTURE, RECORD_CLASSES, record_room, ring_slot_bytes};

    #[test]
    fn smallest_class_that_holds_the_payload() {
        assert_eq!(record_room(0), 32);
        assert_eq!(record_room(5), 32);
        assert_eq!(record_room(32), 32);
        assert_eq!(record_room(33), 48);
        assert_eq!(record_room(64), 64);
        assert_eq!(record_room(1472), 1536);
        assert_eq!(record_room(8900), MAX_CAPTURE);
        assert_eq!(record_room(MAX_CAPTURE), MAX_CAPTURE);
        assert_eq!(ring_slot_bytes(5), 8 + 64 + 32);
    }

    #[test]
    fn padding_stays_under_a_third_of_a_slot() {
        for cap_len in 0..=MAX_CAPTURE {
            let exact = 8 + 64 + cap_len;
            let slot = ring_slot_bytes(cap_len);
            assert!(slot >= exact.next_multiple_of(8));
            assert!(
                (slot - exact) * 3 < slot,
                "{cap_len} bytes take a {slot}-byte slot"
            );
        }
        assert!(RECORD_CLASSES.contains(&1536));
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::{
        Encoding, FLAGS_FORMAT_MASK, FLAGS_PACK, Format, PortRule, RECORD_COARSE_TIME,
        RECORD_FRAGMENT, RECORD_FRAGMENT_DISCARD, RECORD_MORE_FRAGMENTS, encoding_flags,
        encoding_of_flags,
    };

    #[test]
    fn every_encoding_round_trips_through_its_word_and_its_flags() {
        // The encoding's bits leave the record's own flags alone.
        let own =
            RECORD_COARSE_TIME | RECORD_FRAGMENT | RECORD_MORE_FRAGMENTS | RECORD_FRAGMENT_DISCARD;
        assert_eq!(own & (FLAGS_FORMAT_MASK | FLAGS_PACK), 0);
        for format in Format::ALL {
            for pack in [false, true] {
                let e = Encoding { format, pack };
                assert_eq!(Encoding::from_word(e.word()), e);
                let flags = encoding_flags(e.word());
                assert_eq!(flags & own, 0);
                assert_eq!(encoding_of_flags(flags | own), e);
                let rule = PortRule {
                    encoding: e.word(),
                    ..PortRule::enabled()
                };
                assert_eq!(rule.encoding(), e);
            }
        }
        // The word of a rule nobody set an encoding on: base64, unpacked.
        assert_eq!(PortRule::enabled().encoding(), Encoding::default());
        assert_eq!(Encoding::default().word(), 0);
    }

    #[test]
    fn unknown_codes_fall_back_to_base64() {
        assert_eq!(Encoding::from_word(0xFF).format, Format::Base64);
        assert_eq!(
            Encoding::from_word(0x1FE),
            Encoding {
                format: Format::Base64,
                pack: true
            }
        );
        // Bits above the pack flag are ignored.
        assert_eq!(Encoding::from_word(0xFFFF_0001).format, Format::Text);
    }
}

#[cfg(test)]
mod counter_tests {
    use super::counter;

    #[test]
    fn seen_is_the_sum_of_the_terminal_outcomes_only() {
        // Slot i holds 1 << i, so the sum says exactly which were added.
        let seen = counter::seen::<()>(|i| Ok(1u64 << i)).unwrap();
        let terminal: u64 = counter::TERMINAL.iter().map(|i| 1u64 << i).sum();
        assert_eq!(seen, terminal);
        let qualifiers = [
            counter::SEEN,
            counter::TRUNCATED,
            counter::CONSUMED,
            counter::REDIRECTED,
            counter::FRAGMENT_EARLY,
        ];
        for qualifier in qualifiers {
            assert_eq!(seen & (1 << qualifier), 0, "{qualifier} is not terminal");
        }
        // Every named outcome is either terminal or one of those.
        assert_eq!(
            counter::TERMINAL.len() + qualifiers.len(),
            counter::NAMES.len()
        );
    }
}
