//! `udp_capture`: the XDP program of udp-agent.
//!
//! Per frame: parse Ethernet ▸ VLAN ▸ IPv4|IPv6 ▸ UDP (bounds-checked parsers
//! shared with the host tests), one array lookup by destination port — where
//! non-matching traffic leaves — then, for an enabled port: source allow/deny
//! lists ▸ per-source limit ▸ per-port limit ▸ global cap ▸ write a fixed
//! header plus the UDP payload into a size-classed `EVENTS` ring record —
//! or, for a consumed port while the agent reads AF_XDP sockets
//! (`CONFIG_AFXDP`), redirect the frame to the socket of its interface and
//! RX queue (`XSKS`), stamped in place of its Ethernet addresses.
//!
//! IP fragments of UDP datagrams take their own path, the program
//! `udp_fragment` ([`fragment`]), reached by a tail call: the first fragment
//! decides as above, the others follow its decision through an LRU table,
//! and each captured fragment is written as a record of its own for the
//! agent to reassemble.
//!
//! The program never returns `XDP_ABORTED`. It passes everything it does
//! not capture, unless configured to drop over-limit/denied packets or a
//! port's action is `drop` (the agent then is the datagram's only receiver).
#![no_std]
#![no_main]
// The bpfel target has no `AtomicU64` methods (no CAS in its target spec),
// but the BPF ISA has both operations (v3): use the intrinsics directly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod fragment;
mod log;

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::generated::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_ringbuf_discard, bpf_ringbuf_reserve,
        bpf_ringbuf_submit, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    macros::{map, xdp},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, XskMap,
        lpm_trie::Key,
    },
    programs::XdpContext,
};
use udp_ebpf_common::{
    CONFIG_AFXDP, CONFIG_ALLOWLIST, CONFIG_DENYLIST, CONFIG_REJECT_DROP, Config,
    DEFAULT_RING_BYTES, DEFAULT_SOURCE_ENTRIES, FRAGMENT_PATH_SLOT, IP_V4, Limit, MAX_CAPTURE,
    MAX_PREFIXES, PORT_COUNT, PortRule, PortState, RECORD_CLASSES, RECORD_COARSE_TIME,
    RECORD_HEADER_LEN, RecordHeader, SourceKey, SourceState, XSK_MAX_IFACES, XSK_MAX_QUEUES,
    XSK_SLOTS, XSK_STAMP_LEN, XSK_STAMP_MAGIC, XskStamp, counter, encoding_flags,
    parse::{Outcome, parse_headers, read_addresses},
};

/// Destination port → rule. All 65,536 ports, so the lookup is an index.
#[map]
static PORTS: Array<PortRule> = Array::with_max_entries(PORT_COUNT, 0);

/// Destination port → rate-limit state and counters, shared by all CPUs.
#[map]
static PORT_STATE: Array<PortState> = Array::with_max_entries(PORT_COUNT, 0);

/// Destination port → datagrams captured, per CPU (the agent sums them): a
/// count every capture adds to, kept apart from `PORT_STATE` so that CPUs
/// capturing for the same port do not take its line from each other.
/// 512 KiB per CPU.
#[map]
static PORT_CAPTURED: PerCpuArray<u64> = PerCpuArray::with_max_entries(PORT_COUNT, 0);

/// Interface index → its first slot in `XSKS`, for each interface whose RX
/// queues have the agent's AF_XDP sockets (written by the agent after the
/// sockets are in `XSKS`, removed before they go).
#[map]
static XSK_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(XSK_MAX_IFACES, 0);

/// `XSK_IFACES[ifindex] + rx_queue_index` → the agent's AF_XDP socket for
/// that interface and queue.
#[map]
static XSKS: XskMap = XskMap::with_max_entries(XSK_SLOTS, 0);

/// Global settings (one slot).
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The global cap's GCRA state (one slot, shared by all CPUs).
#[map]
static GLOBAL_STATE: Array<u64> = Array::with_max_entries(1, 0);

/// Source address → limit state and counters; least recently seen sources
/// are evicted, so the table stays bounded under a spoofed-source flood.
#[map]
static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(DEFAULT_SOURCE_ENTRIES, 0);

/// Source allow and deny lists, longest-prefix match per address family.
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static DENY_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static DENY_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// One u64 per outcome per CPU; the agent sums over CPUs.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Captured packets. The agent sizes it at load time (`--ring-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Slot `FRAGMENT_PATH_SLOT` holds `udp_fragment`, which the loader puts
/// there. A tail call rather than a function call: the fragment path then
/// has a stack of its own (the verifier allows 512 bytes for a call chain,
/// and this program's frame takes 240 of them), and the path of whole
/// datagrams keeps its code as it is. This program also calls memcpy and
/// memset as functions, and the verifier allows a tail call from such a
/// program only while its frame stays within 256 bytes: if it grows past
/// that, loading fails with "tail_calls are not allowed when call stack of
/// previous frames is … bytes".
#[map]
static FRAGMENT_PATH: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; XDP runs with preemption off on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Adds one to a u64 shared by all CPUs.
#[inline(always)]
fn bump(slot: *mut u64) {
    // SAFETY: `slot` points into a map value, 8-byte aligned, live for the run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
}

/// Takes one packet's worth from a GCRA bucket whose TAT lives at `tat`,
/// shared by all CPUs: compare-and-swap, retried a bounded number of times.
/// A packet that loses the race that often is treated as over the limit,
/// so contention can never let more through than the limit allows.
#[inline(always)]
fn conform(tat: *mut u64, limit: &Limit, now: u64) -> bool {
    let mut tries = 0;
    while tries < 4 {
        // A plain aligned 8-byte load (BPF has no relaxed atomic load before
        // v4; the compare-and-swap below is what makes the update atomic).
        // SAFETY: `tat` points into a map value, 8-byte aligned, live for
        // the run.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let Some(new) = limit.conform(old, now) else {
            return false;
        };
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, old, new,
            )
        };
        if swapped {
            return true;
        }
        tries += 1;
    }
    false
}

#[xdp(frags)]
pub fn udp_capture(ctx: XdpContext) -> u32 {
    capture(&ctx)
}

/// A map key of `N` 4-byte words, written on an 8-byte boundary of the
/// stack with one aligned 4-byte store per word. Left to itself, the BPF
/// backend copies a 16-byte address into a key with 8-byte stores wherever
/// the address lands, 4 bytes into a struct too (it may emit misaligned
/// accesses, see build.rs), and the verifier refuses any misaligned stack
/// access.
#[repr(C, align(8))]
struct StackKey<const N: usize>(core::mem::MaybeUninit<[u32; N]>);

impl<const N: usize> StackKey<N> {
    #[inline(always)]
    fn uninit() -> Self {
        StackKey(core::mem::MaybeUninit::uninit())
    }

    /// Writes `first` (a prefix length, or nothing), then the address's
    /// words, then `last` into the last word. In place: a key returned by
    /// value would be copied, with the stores this is here to avoid.
    #[inline(always)]
    fn fill(&mut self, first: Option<u32>, addr: &[u8; 16], last: Option<u32>) {
        let w = self.0.as_mut_ptr() as *mut u32;
        let a = addr.as_ptr() as *const u32;
        let mut i = 0;
        // SAFETY: every write is one of the N words; reads stay within the
        // 16 address bytes.
        unsafe {
            if let Some(v) = first {
                core::ptr::write_volatile(w, v);
                i = 1;
            }
            let mut j = 0;
            while i < N && j < 4 {
                core::ptr::write_volatile(w.add(i), core::ptr::read_unaligned(a.add(j)));
                i += 1;
                j += 1;
            }
            if let Some(v) = last {
                core::ptr::write_volatile(w.add(N - 1), v);
            }
        }
    }

    /// The key as the map's key type `K`, which must be `4 × N` bytes or
    /// fewer of plain data, after `fill`.
    #[inline(always)]
    fn as_key<K>(&self) -> &K {
        const { assert!(core::mem::size_of::<K>() <= 4 * N) };
        // SAFETY: every word was written in `fill`; K is plain data no
        // larger than the words and needs no more than their 8-byte
        // alignment.
        unsafe { &*(self.0.as_ptr() as *const K) }
    }
}

/// What over-limit and denied packets take: `XDP_DROP` with
/// `CONFIG_REJECT_DROP` in the config's `flags`, else `XDP_PASS`.
#[inline(always)]
fn reject_action(flags: u32) -> u32 {
    if flags & CONFIG_REJECT_DROP != 0 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// True if the source is denied: on the deny list, or — when the allow list
/// is not empty — on no allow prefix. Each list is looked up only while its
/// flag says it has entries.
#[inline(always)]
fn denied(ip_version: u8, src_addr: &[u8; 16], flags: u32) -> bool {
    if flags & (CONFIG_ALLOWLIST | CONFIG_DENYLIST) == 0 {
        return false;
    }
    let deny = flags & CONFIG_DENYLIST != 0;
    if ip_version == IP_V4 {
        // The prefix length, then the 4 address bytes.
        let mut k = StackKey::<2>::uninit();
        k.fill(Some(32), src_addr, None);
        let key: &Key<[u8; 4]> = k.as_key();
        if deny && DENY_V4.get(key).is_some() {
            return true;
        }
        flags & CONFIG_ALLOWLIST != 0 && ALLOW_V4.get(key).is_none()
    } else {
        let mut k = StackKey::<5>::uninit();
        k.fill(Some(128), src_addr, None);
        let key: &Key<[u8; 16]> = k.as_key();
        if deny && DENY_V6.get(key).is_some() {
            return true;
        }
        flags & CONFIG_ALLOWLIST != 0 && ALLOW_V6.get(key).is_none()
    }
}

/// The source's state in the LRU table, created on first sight.
#[inline(always)]
fn source_state(ip_version: u8, src_addr: &[u8; 16]) -> Option<*mut SourceState> {
    // The address, then the IP version and zero padding (little-endian).
    let mut k = StackKey::<5>::uninit();
    k.fill(None, src_addr, Some(u32::from(ip_version)));
    let key: &SourceKey = k.as_key();
    if let Some(st) = SOURCES.get_ptr_mut(key) {
        return Some(st);
    }
    // Another CPU may insert the same key meanwhile: NOEXIST keeps theirs.
    let _ = SOURCES.insert(key, &SourceState::default(), BPF_NOEXIST as u64);
    SOURCES.get_ptr_mut(key)
}

/// Counts a malformed frame, logs it with `--kernel-log` (`why`: one of
/// `log`'s reasons), and passes it.
#[inline(always)]
fn malformed(ctx: &XdpContext, why: u32) -> u32 {
    count(counter::MALFORMED);
    if log::enabled() {
        log::malformed(ctx.ctx, why);
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn capture(ctx: &XdpContext) -> u32 {
    if log::enabled() {
        log::first_frame(ctx.ctx, (ctx.data_end() - ctx.data()) as u32);
    }
    // No `SEEN` count: every return below counts exactly one terminal
    // outcome (`counter::TERMINAL`), and readers sum those.
    let start = ctx.data();
    let end = ctx.data_end();
    let dst_port = match parse_headers(start, end).0 {
        Outcome::Udp(meta) => meta.dst_port,
        Outcome::NotUdp => {
            count(counter::NOT_UDP);
            return xdp_action::XDP_PASS;
        }
        Outcome::Malformed => return malformed(ctx, log::HEADERS),
        Outcome::Unsupported => {
            count(counter::UNSUPPORTED);
            return xdp_action::XDP_PASS;
        }
        Outcome::Fragment => {
            // SAFETY: tail call into our own program array; it returns only
            // if the slot is empty.
            unsafe { FRAGMENT_PATH.tail_call(ctx, FRAGMENT_PATH_SLOT) };
            // Only a loader that did not install udp_fragment gets here: the
            // fragment cannot be read, as far as this program goes.
            count(counter::UNSUPPORTED);
            return xdp_action::XDP_PASS;
        }
    };
    // The non-matching path ends here: one array lookup.
    let rule = match PORTS.get(dst_port as u32) {
        Some(rule) if rule.is_enabled() => *rule,
        _ => {
            count(counter::PORT_DISABLED);
            return xdp_action::XDP_PASS;
        }
    };
    // Parse again rather than keep the first parse's results across the
    // lookup: the compiler would spill them to the stack on every frame,
    // while a second parse costs only the datagrams we capture. The frame
    // has not changed, so neither has the outcome.
    let (Outcome::Udp(meta), ip_end) = parse_headers(start, end) else {
        return malformed(ctx, log::HEADERS);
    };
    // Only now, for a port we capture, the IP length against the whole
    // (possibly multi-buffer) frame. The first buffer is part of the frame,
    // so a packet that ends within it is whole; only one that claims more
    // needs the helper call to learn the length with all fragments.
    // SAFETY: plain helper call on the program's own context.
    if ip_end > end - start && ip_end > unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize {
        return malformed(ctx, log::PAST_FRAME);
    }
    // The addresses, read only now that the datagram is to be captured.
    let Some((src_addr, dst_addr)) = read_addresses(start, end, &meta) else {
        return malformed(ctx, log::ADDRESSES);
    };
    let cfg = match CONFIG.get(0) {
        Some(cfg) => *cfg,
        None => Config::default(),
    };
    let reject = reject_action(cfg.flags);
    if denied(meta.ip_version, &src_addr, cfg.flags) {
        count(counter::DENIED);
        return reject;
    }
    // The precise clock is an ordered TSC read, a fifth to a third of a
    // small capture's cost; the coarse one (the last tick) costs next to nothing.
    // Limits need the precise clock. Without one, the record carries the
    // coarse stamp and says so; the agent narrows it to within how long the
    // record waited in the ring, and never more than one tick.
    let limited = cfg.per_source.is_limited() || rule.limit.is_limited() || cfg.global.is_limited();
    let (now, stamp) = if limited {
        // SAFETY: plain helper call.
        (unsafe { bpf_ktime_get_ns() }, 0)
    } else {
        // SAFETY: plain helper call.
        (unsafe { bpf_ktime_get_coarse_ns() }, RECORD_COARSE_TIME)
    };
    // Sources are tracked (for the limit, and for `stats`' busiest sources)
    // only while a per-source limit is set: an LRU hash update is the
    // dearest step of the capture path.
    let source = if cfg.per_source.is_limited() {
        source_state(meta.ip_version, &src_addr)
    } else {
        None
    };
    if cfg.per_source.is_limited()
        && let Some(st) = source
    {
        // SAFETY: `st` points to a live LRU map value.
        if !conform(unsafe { &raw mut (*st).tat }, &cfg.per_source, now) {
            bump(unsafe { &raw mut (*st).limited });
            count(counter::LIMITED_SOURCE);
            return reject;
        }
    }
    let port_state = PORT_STATE.get_ptr_mut(meta.dst_port as u32);
    if rule.limit.is_limited()
        && let Some(ps) = port_state
    {
        // SAFETY: `ps` points to a live array map value.
        if !conform(unsafe { &raw mut (*ps).tat }, &rule.limit, now) {
            bump(unsafe { &raw mut (*ps).limited });
            count(counter::LIMITED_PORT);
            return reject;
        }
    }
    if cfg.global.is_limited()
        && let Some(g) = GLOBAL_STATE.get_ptr_mut(0)
        && !conform(g, &cfg.global, now)
    {
        count(counter::LIMITED_GLOBAL);
        return reject;
    }

    let cap_len = capture_len(meta.payload_len, cfg.snaplen);
    // The port's format and packing ride in the flags, for the agent.
    let flags = stamp | encoding_flags(rule.encoding);
    // A consumed port's datagram goes to the agent's AF_XDP socket when
    // there is one for its queue; otherwise, and for observed ports (the
    // host must still get those), into the ring.
    let action =
        if rule.drops() && cfg.flags & CONFIG_AFXDP != 0 && redirect(ctx, now, flags, cap_len) {
            count(counter::REDIRECTED);
            xdp_action::XDP_REDIRECT
        } else if write_record(
            ctx,
            &RecordHeader {
                timestamp_ns: now,
                // SAFETY: reading the context the kernel handed us.
                ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
                wire_len: meta.payload_len,
                cap_len,
                src_port: meta.src_port,
                dst_port: meta.dst_port,
                ip_version: meta.ip_version,
                flags,
                frag_offset: 0,
                frag_id: 0,
                src_addr,
                dst_addr,
            },
            meta.payload_offset,
        ) {
            if rule.drops() {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        } else {
            // Not captured (ring full): the host still gets the packet.
            return xdp_action::XDP_PASS;
        };
    count(counter::CAPTURED);
    if cap_len < meta.payload_len {
        count(counter::TRUNCATED);
    }
    if let Some(c) = PORT_CAPTURED.get_ptr_mut(meta.dst_port as u32) {
        // SAFETY: per-CPU slot; XDP runs with preemption off on this CPU.
        unsafe { *c += 1 };
    }
    if let Some(st) = source {
        // SAFETY: `st` points to a live LRU map value.
        bump(unsafe { &raw mut (*st).captured });
    }
    if rule.drops() {
        count(counter::CONSUMED);
    }
    action
}

/// Payload bytes captured of a `payload_len`-byte datagram: the snap
/// length and `MAX_CAPTURE` applied.
#[inline(always)]
fn capture_len(payload_len: u32, snaplen: u32) -> u32 {
    let mut cap_len = payload_len;
    if cap_len > snaplen {
        cap_len = snaplen;
    }
    if cap_len > MAX_CAPTURE {
        cap_len = MAX_CAPTURE;
    }
    cap_len
}

/// Redirects the frame to the agent's AF_XDP socket for its interface and
/// RX queue, stamped ([`XskStamp`]) over its Ethernet addresses. False,
/// with the frame untouched, if there is no such socket: the caller then
/// writes a ring record instead.
#[inline(always)]
fn redirect(ctx: &XdpContext, now: u64, flags: u8, cap_len: u32) -> bool {
    // SAFETY: reading the context the kernel handed us.
    let (ifindex, queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
    if queue >= XSK_MAX_QUEUES {
        return false;
    }
    // SAFETY: a plain value read; the agent only ever inserts and removes
    // whole entries.
    let Some(base) = (unsafe { XSK_IFACES.get(&ifindex) }).copied() else {
        return false;
    };
    let start = ctx.data();
    // The frame was parsed down to its UDP header, so it is longer than
    // this; the verifier needs the check where the store is.
    if start + XSK_STAMP_LEN > ctx.data_end() {
        return false;
    }
    // Decided by the map lookup alone (an empty slot: the socket is gone):
    // a frame the socket then cannot take (its ring full) is dropped, and
    // the agent counts it from the socket's statistics.
    if XSKS.redirect(base.wrapping_add(queue), 0).is_err() {
        return false;
    }
    let stamp = XskStamp {
        timestamp_ns: now,
        cap_len: cap_len as u16,
        flags,
        magic: XSK_STAMP_MAGIC,
    };
    // SAFETY: the first XSK_STAMP_LEN bytes of the frame, checked above.
    unsafe { core::ptr::write_unaligned(start as *mut XskStamp, stamp) };
    true
}

/// Writes the record — `header`, then its `cap_len` (≤ `MAX_CAPTURE`)
/// payload bytes from offset `off` of the frame — straight into a ring slot
/// of the smallest size class that holds it (`RECORD_CLASSES`). False, with
/// the outcome counted, if nothing was written.
#[inline(always)]
fn write_record(ctx: &XdpContext, header: &RecordHeader, off: u32) -> bool {
    let cap_len = header.cap_len;
    // The reserve size must be a constant: one call site per class, picked
    // with a binary search (at most five comparisons).
    macro_rules! class {
        ($i:literal) => {
            emit::<{ RECORD_CLASSES[$i] }>(ctx, header, off, cap_len)
        };
    }
    const C: [u32; 17] = RECORD_CLASSES;
    let c = cap_len;
    let written = if c <= C[5] {
        if c <= C[2] {
            if c <= C[0] {
                class!(0)
            } else if c <= C[1] {
                class!(1)
            } else {
                class!(2)
            }
        } else if c <= C[3] {
            class!(3)
        } else if c <= C[4] {
            class!(4)
        } else {
            class!(5)
        }
    } else if c <= C[11] {
        if c <= C[8] {
            if c <= C[6] {
                class!(6)
            } else if c <= C[7] {
                class!(7)
            } else {
                class!(8)
            }
        } else if c <= C[9] {
            class!(9)
        } else if c <= C[10] {
            class!(10)
        } else {
            class!(11)
        }
    } else if c <= C[13] {
        if c <= C[12] { class!(12) } else { class!(13) }
    } else if c <= C[14] {
        class!(14)
    } else if c <= C[15] {
        class!(15)
    } else {
        class!(16)
    };
    written
}

/// Reserves a record with `ROOM` payload bytes, writes `header` and the
/// `cap_len` (≤ `ROOM`) payload bytes at `off` into it, and submits it.
/// False, with the outcome counted, if nothing was written.
#[inline(always)]
fn emit<const ROOM: u32>(ctx: &XdpContext, header: &RecordHeader, off: u32, cap_len: u32) -> bool {
    // SAFETY: plain helper call on our own ring buffer map.
    let rec = unsafe {
        bpf_ringbuf_reserve(
            &EVENTS as *const _ as *mut _,
            (RECORD_HEADER_LEN as u32 + ROOM) as u64,
            0,
        )
    } as *mut u8;
    if rec.is_null() {
        count(counter::RING_FULL);
        return false;
    }
    // SAFETY: `rec` has RECORD_HEADER_LEN + ROOM writable bytes, 8-byte
    // aligned (ring records are).
    unsafe { core::ptr::write(rec as *mut RecordHeader, *header) };
    if cap_len > 0 {
        // The helper needs a length the verifier can prove is in 1..=ROOM:
        // mask (so the register has a known bound), clamp, then add one.
        let mut n = (cap_len - 1) & 0x3FFF;
        if n > ROOM - 1 {
            n = ROOM - 1;
        }
        // bpf_xdp_load_bytes reads across fragments of a multi-buffer
        // frame, which direct packet access cannot.
        // SAFETY: the destination has ROOM bytes after the header; n + 1 is
        // at most that.
        let rc = unsafe {
            bpf_xdp_load_bytes(ctx.ctx, off, rec.add(RECORD_HEADER_LEN) as *mut _, n + 1)
        };
        if rc != 0 {
            // SAFETY: `rec` is our reservation, not yet submitted.
            unsafe { bpf_ringbuf_discard(rec as *mut _, 0) };
            count(counter::COPY_FAILED);
            return false;
        }
    }
    // SAFETY: `rec` is our reservation, not yet submitted.
    unsafe { bpf_ringbuf_submit(rec as *mut _, 0) };
    true
}

/// Writes `header` alone, without payload, in the smallest record class:
/// a notice to the agent rather than a capture, so a full ring is not
/// counted (the frame that sends it is counted as what it is).
#[inline(always)]
fn notify(header: &RecordHeader) {
    // SAFETY: plain helper call on our own ring buffer map.
    let rec = unsafe {
        bpf_ringbuf_reserve(
            &EVENTS as *const _ as *mut _,
            (RECORD_HEADER_LEN as u32 + RECORD_CLASSES[0]) as u64,
            0,
        )
    } as *mut u8;
    if rec.is_null() {
        return;
    }
    // SAFETY: `rec` has RECORD_HEADER_LEN + RECORD_CLASSES[0] writable
    // bytes, 8-byte aligned; it is our reservation, not yet submitted.
    unsafe {
        core::ptr::write(rec as *mut RecordHeader, *header);
        bpf_ringbuf_submit(rec as *mut _, 0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
