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

/// Number of UDP ports: the port table has one slot per port, so a lookup is
/// a single array index (O(1), no hashing on the hot path).
pub const PORT_COUNT: u32 = 65536;

/// Largest number of payload bytes one ring record can carry. An EC2 jumbo
/// frame (MTU 9001) carries at most 9001 - 20 (IPv4) - 8 (UDP) = 8,973 bytes
/// of UDP payload; 9,216 leaves room for that and rounds to a common jumbo
/// size. Larger payloads (loopback has MTU 65536) are captured truncated.
pub const MAX_CAPTURE: u32 = 9216;

/// Default ring buffer size in bytes (must be a power-of-two number of pages).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Kernel counter indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Every frame the program ran on.
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
    /// An IP fragment (not reassembled yet).
    pub const FRAGMENT: u32 = 7;
    /// The payload could not be copied out of the frame (should not happen).
    pub const COPY_FAILED: u32 = 8;

    /// Slots in the array; spare slots are reserved for later outcomes.
    pub const COUNT: u32 = 16;

    /// Names in index order, as shown by `udp-agent stats` and metrics.
    pub const NAMES: [&str; 9] = [
        "seen",
        "not_udp",
        "port_disabled",
        "captured",
        "ring_full",
        "truncated",
        "malformed",
        "fragment",
        "copy_failed",
    ];
}

/// `PortRule::flags` bit: this destination port is captured.
pub const PORT_ENABLED: u32 = 1;

/// One slot of the `PORTS` array, indexed by destination port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// `PORT_ENABLED` and future per-port flags.
    pub flags: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

impl PortRule {
    pub const fn enabled() -> Self {
        Self {
            flags: PORT_ENABLED,
            _reserved: 0,
        }
    }

    pub const fn is_enabled(&self) -> bool {
        self.flags & PORT_ENABLED != 0
    }
}

/// The single slot of the `CONFIG` array: settings that apply to all ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most payload bytes copied per packet (clamped to `MAX_CAPTURE`).
    pub snaplen: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            snaplen: MAX_CAPTURE,
            _reserved: 0,
        }
    }
}

/// `RecordHeader::ip_version` values.
pub const IP_V4: u8 = 4;
pub const IP_V6: u8 = 6;

/// Fixed header at the start of every ring buffer record; `cap_len` payload
/// bytes follow it directly. Layout (little-endian, 64 bytes):
///
/// ```text
///  0  u64 timestamp_ns   CLOCK_MONOTONIC at capture (bpf_ktime_get_ns)
///  8  u32 ifindex        receiving interface
/// 12  u32 wire_len       UDP payload length on the wire (UDP length - 8)
/// 16  u32 cap_len        payload bytes that follow this header
/// 20  u16 src_port       host byte order
/// 22  u16 dst_port       host byte order
/// 24  u8  ip_version     4 or 6
/// 25  u8  _pad0
/// 26  u16 _pad1
/// 28  u32 _pad2
/// 32  [u8;16] src_addr   IPv4 in the first 4 bytes, rest zero
/// 48  [u8;16] dst_addr
/// ```
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
    pub _pad0: u8,
    pub _pad1: u16,
    pub _pad2: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

/// Size of `RecordHeader` on the ring; the payload starts at this offset.
pub const RECORD_HEADER_LEN: usize = 64;
const _: () = assert!(core::mem::size_of::<RecordHeader>() == RECORD_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<PortRule>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 8);

/// Per-CPU scratch area the XDP program assembles a record in before
/// `bpf_ringbuf_output` copies exactly `RECORD_HEADER_LEN + cap_len` bytes of
/// it into the ring: the ring slot is sized to the datagram, not to the
/// largest possible one.
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; RECORD_HEADER_LEN + MAX_CAPTURE as usize],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit
    // padding fields: every bit pattern is a valid value.
    unsafe impl aya::Pod for super::PortRule {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RecordHeader {}
}
