//! `udp_capture`: the XDP program of udp-agent.
//!
//! Per frame: parse Ethernet ▸ VLAN ▸ IPv4|IPv6 ▸ UDP (bounds-checked parsers
//! shared with the host tests), one array lookup by destination port, then
//! copy a fixed header plus the UDP payload into the `EVENTS` ring buffer.
//! It always returns `XDP_PASS`: a capture tool must never break the traffic
//! it watches, so a parse error is a counter, not a drop.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_ns, bpf_ringbuf_output, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use udp_ebpf_common::{
    Config, DEFAULT_RING_BYTES, MAX_CAPTURE, PORT_COUNT, PortRule, RECORD_HEADER_LEN,
    RecordHeader, Scratch, counter,
    parse::{Outcome, parse_frame},
};

/// Destination port → rule. All 65,536 ports, so the lookup is an index.
#[map]
static PORTS: Array<PortRule> = Array::with_max_entries(PORT_COUNT, 0);

/// Global settings (one slot).
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// One u64 per outcome per CPU; the agent sums over CPUs.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Captured packets. The agent sizes it at load time (`--ring-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Where a record is assembled before it is copied, at its exact size, into
/// `EVENTS` (a `bpf_ringbuf_reserve` size must be a constant, which would
/// make every record jumbo-sized).
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; XDP runs with preemption off on this CPU.
        unsafe { *slot += 1 };
    }
}

#[xdp(frags)]
pub fn udp_capture(ctx: XdpContext) -> u32 {
    capture(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn capture(ctx: &XdpContext) {
    count(counter::SEEN);
    let start = ctx.data();
    let end = ctx.data_end();
    // SAFETY: plain helper call on the program's own context.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let meta = match parse_frame(start, end, frame_len) {
        Outcome::Udp(meta) => meta,
        Outcome::NotUdp => return count(counter::NOT_UDP),
        Outcome::Malformed => return count(counter::MALFORMED),
        Outcome::Fragment => return count(counter::FRAGMENT),
    };
    // The non-matching path ends here: one array lookup.
    let enabled = match PORTS.get(meta.dst_port as u32) {
        Some(rule) => rule.is_enabled(),
        None => false,
    };
    if !enabled {
        return count(counter::PORT_DISABLED);
    }

    let snaplen = match CONFIG.get(0) {
        Some(cfg) => cfg.snaplen,
        None => MAX_CAPTURE,
    };
    let mut cap_len = meta.payload_len;
    if cap_len > snaplen {
        cap_len = snaplen;
    }
    if cap_len > MAX_CAPTURE {
        cap_len = MAX_CAPTURE;
    }

    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return count(counter::COPY_FAILED);
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this run.
    let buf = unsafe { &mut (*scratch).buf };

    let header = RecordHeader {
        // SAFETY: plain helper call.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: reading the context the kernel handed us.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        wire_len: meta.payload_len,
        cap_len,
        src_port: meta.src_port,
        dst_port: meta.dst_port,
        ip_version: meta.ip_version,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
        src_addr: meta.src_addr,
        dst_addr: meta.dst_addr,
    };
    // SAFETY: `buf` is at least RECORD_HEADER_LEN bytes, and the ring reader
    // copes with any alignment (it uses read_unaligned).
    unsafe { core::ptr::write_unaligned(buf.as_mut_ptr() as *mut RecordHeader, header) };

    if cap_len > 0 {
        // The helper needs a length the verifier can prove is in
        // 1..=MAX_CAPTURE: mask (so the register has a known bound), clamp,
        // then add one.
        let mut n = (cap_len - 1) & 0x3FFF;
        if n > MAX_CAPTURE - 1 {
            n = MAX_CAPTURE - 1;
        }
        // bpf_xdp_load_bytes reads across fragments of a multi-buffer frame,
        // which direct packet access cannot.
        // SAFETY: destination has MAX_CAPTURE bytes after the header; n + 1
        // is at most that.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                meta.payload_offset,
                buf.as_mut_ptr().add(RECORD_HEADER_LEN) as *mut _,
                n + 1,
            )
        };
        if rc != 0 {
            return count(counter::COPY_FAILED);
        }
    }
    let len = (cap_len & 0x3FFF) as usize;
    if len > MAX_CAPTURE as usize {
        return count(counter::COPY_FAILED);
    }
    // SAFETY: `RECORD_HEADER_LEN + len` ≤ size of `buf`, checked above.
    let rc = unsafe {
        bpf_ringbuf_output(
            &EVENTS as *const _ as *mut _,
            buf.as_mut_ptr() as *mut _,
            (RECORD_HEADER_LEN + len) as u64,
            0,
        )
    };
    if rc != 0 {
        return count(counter::RING_FULL);
    }
    count(counter::CAPTURED);
    if cap_len < meta.payload_len {
        count(counter::TRUNCATED);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
