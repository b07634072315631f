//! IP fragments of UDP datagrams: the first fragment decides, the others
//! follow.
//!
//! Only a datagram's first fragment (offset 0) holds the UDP header, so only
//! it can be matched to a port. It decides for the whole datagram, as a
//! whole datagram is decided: port rule, limits (charged once per
//! datagram), action. The decision goes into `FRAGS`, keyed by addresses,
//! IP version and identification, where the other fragments find it: each
//! is then written to the ring as a record of its own (`fragment`) and
//! takes the datagram's action, or is counted as the datagram's rejection
//! and takes its action. The agent reassembles the records. Allow and deny
//! need only the source address, so they apply to every fragment.
//!
//! Fragments that arrive before their first fragment (reordering is
//! normal) cannot be decided, and XDP cannot hold a frame back. They are
//! captured provisionally: written to the ring (`fragment_early`) and
//! passed, and the datagram's entry is marked pending. When the first
//! fragment arrives it decides as usual; if it rejects the datagram it also
//! writes a discard notice (`RECORD_FRAGMENT_DISCARD`), on which the agent
//! drops what it holds. The agent completes a datagram only with its first
//! fragment, which is written only when the datagram is captured, so
//! nothing the first fragment rejects becomes an event. An early fragment
//! is passed even when the port's action is `drop`: the host's own
//! reassembly then discards the incomplete datagram after its timeout.
//!
//! Provisional capture must not open a way around the limits for a flood
//! of fragments whose first fragment never comes: the per-source and
//! global limits, which need no port, are charged by whichever fragment of
//! a datagram is seen first (still once per datagram), and at most
//! `FRAG_MAX_RECORDS` records are written per datagram.
//!
//! An entry lives `FRAG_TTL_NS`. Two CPUs that see fragments of one
//! datagram at the same instant may overwrite each other's update of its
//! entry (a plain LRU update, no lock); the worst outcome is that later
//! fragments are captured as early ones, which the agent still reassembles.

use aya_ebpf::{
    bindings::{BPF_ANY, xdp_action, xdp_md},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_get_buff_len},
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};
use udp_ebpf_common::{
    ACTION_DROP, ACTION_PASS, Config, FRAG_CAPTURE, FRAG_CHARGED_GLOBAL, FRAG_CHARGED_SOURCE,
    FRAG_ENTRIES, FRAG_MAX_RECORDS, FRAG_PENDING, FRAG_PORTS_KNOWN, FRAG_REJECT, FRAG_TTL_NS,
    FragKey, FragState, MAX_CAPTURE, PortRule, RECORD_COARSE_TIME, RECORD_FRAGMENT,
    RECORD_FRAGMENT_DISCARD, RECORD_MORE_FRAGMENTS, RecordHeader, counter, encoding_flags,
    parse::{FragMeta, Outcome, parse_fragment, read_addresses_at},
};

use crate::{
    CONFIG, GLOBAL_STATE, PORT_CAPTURED, PORT_STATE, PORTS, bump, conform, count, denied, log,
    malformed, notify, reject_action, source_state, write_record,
};

/// Datagram being received in fragments → its first fragment's decision.
#[map]
static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(FRAG_ENTRIES, 0);

/// One fragment and what every step needs of its context. The settings are
/// read in place (`cfg` points into the `CONFIG` map) rather than copied to
/// the stack, which the verifier limits to 512 bytes for a call chain.
#[repr(C, align(8))]
struct Frag {
    key: FragKey,
    meta: FragMeta,
    cfg: *const Config,
    /// CLOCK_MONOTONIC_COARSE at arrival.
    now: u64,
    /// `XDP_PASS` or `XDP_DROP`: what a rejected datagram's fragments take.
    reject: u32,
    ifindex: u32,
}

impl Frag {
    #[inline(always)]
    fn cfg(&self) -> &Config {
        // SAFETY: a value of the CONFIG array map, live for the run.
        unsafe { &*self.cfg }
    }
}

/// The XDP action a `FragState::action` stands for.
#[inline(always)]
fn action(a: u8) -> u32 {
    if a == ACTION_DROP as u8 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn pass(outcome: u32) -> u32 {
    count(outcome);
    xdp_action::XDP_PASS
}

/// A frame `parse_headers` found to be a fragment: `udp_capture` hands it
/// over with a tail call.
#[xdp(frags)]
pub fn udp_fragment(ctx: XdpContext) -> u32 {
    capture(&ctx)
}

#[inline(always)]
fn capture(ctx: &XdpContext) -> u32 {
    let raw = ctx.ctx;
    let (start, end) = (ctx.data(), ctx.data_end());
    let (meta, ip_end) = match parse_fragment(start, end) {
        (Ok(meta), ip_end) => (meta, ip_end),
        (Err(Outcome::NotUdp), _) => return pass(counter::NOT_UDP),
        (Err(Outcome::Unsupported), _) => return pass(counter::UNSUPPORTED),
        (Err(_), _) => return malformed(ctx, log::HEADERS),
    };
    // As for a whole datagram: the IP length against the whole frame.
    // SAFETY: plain helper call on the program's own context.
    if ip_end > end - start && ip_end > unsafe { bpf_xdp_get_buff_len(raw) } as usize {
        return malformed(ctx, log::PAST_FRAME);
    }
    let Some((src_addr, dst_addr)) = read_addresses_at(start, end, meta.ip_version, meta.l3_offset)
    else {
        return malformed(ctx, log::ADDRESSES);
    };
    // The one slot of an array map: always there.
    let Some(cfg) = CONFIG.get(0) else {
        return malformed(ctx, log::NO_CONFIG);
    };
    let reject = reject_action(cfg.flags);
    if denied(meta.ip_version, &src_addr, cfg.flags) {
        count(counter::DENIED);
        return reject;
    }
    let mut f = Frag {
        meta,
        key: FragKey::default(),
        cfg: cfg as *const Config,
        reject,
        // SAFETY: plain helper call.
        now: unsafe { bpf_ktime_get_coarse_ns() },
        // SAFETY: reading the context the kernel handed us.
        ifindex: unsafe { (*raw).ingress_ifindex },
    };
    set_key(&mut f.key, &src_addr, &dst_addr, meta.id, meta.ip_version);
    // An entry older than FRAG_TTL_NS belongs to an earlier datagram that
    // had this identification: as good as absent.
    let entry = match FRAGS.get_ptr_mut(&f.key) {
        // SAFETY: `e` points to a live LRU map value.
        Some(e) if f.now.wrapping_sub(unsafe { (*e).created_ns }) < FRAG_TTL_NS => Some(e),
        _ => None,
    };
    if meta.offset == 0 {
        if let Some(e) = entry {
            // SAFETY: as above.
            let st = unsafe { *e };
            // Decided already with these ports (or without knowing them, by
            // a limit an early fragment met): a copy of the first fragment,
            // which follows. Other ports: another datagram that reuses the
            // identification, which decides for itself.
            if st.state != FRAG_PENDING
                && (st.flags & FRAG_PORTS_KNOWN == 0
                    || (st.src_port == meta.src_port && st.dst_port == meta.dst_port))
            {
                return follow(ctx, &f, e);
            }
        }
        return decide(ctx, &f, entry);
    }
    match entry {
        Some(e) => follow(ctx, &f, e),
        None => early(ctx, &f),
    }
}

/// Fills `key` with five aligned 8-byte stores. Built field by field, the
/// BPF backend splits the addresses into 4- and 8-byte pieces at whatever
/// offsets it likes, and the verifier refuses a misaligned stack store.
#[inline(always)]
fn set_key(key: &mut FragKey, src: &[u8; 16], dst: &[u8; 16], id: u32, ip_version: u8) {
    let words = key as *mut FragKey as *mut u64;
    let half = |a: &[u8; 16], i: usize| {
        // SAFETY: `i` is 0 or 1: within the 16 bytes.
        u64::from_le(unsafe { core::ptr::read_unaligned((a.as_ptr() as *const u64).add(i)) })
    };
    // SAFETY: FragKey is 40 bytes, 8-byte aligned: five u64 slots, the last
    // holding `id`, `ip_version` and zero padding (little-endian).
    unsafe {
        core::ptr::write_volatile(words, half(src, 0).to_le());
        core::ptr::write_volatile(words.add(1), half(src, 1).to_le());
        core::ptr::write_volatile(words.add(2), half(dst, 0).to_le());
        core::ptr::write_volatile(words.add(3), half(dst, 1).to_le());
        core::ptr::write_volatile(
            words.add(4),
            (u64::from(id) | (u64::from(ip_version) << 32)).to_le(),
        );
    }
}

/// A fragment of a datagram that has an entry: counted as its rejection,
/// or written as one of its fragments.
#[inline(always)]
fn follow(ctx: &XdpContext, f: &Frag, e: *mut FragState) -> u32 {
    // SAFETY: `e` points to a live LRU map value.
    let st = unsafe { *e };
    if st.state == FRAG_REJECT {
        count(st.outcome as u32);
        return action(st.action);
    }
    if st.records >= FRAG_MAX_RECORDS {
        return pass(counter::FRAGMENT_EXCESS);
    }
    // SAFETY: as above.
    unsafe { (*e).records = st.records + 1 };
    if !write_fragment(ctx.ctx, f, st.src_port, st.dst_port, 0) {
        lose(e);
        return xdp_action::XDP_PASS;
    }
    count(counter::FRAGMENT);
    if st.state == FRAG_PENDING {
        count(counter::FRAGMENT_EARLY);
        return xdp_action::XDP_PASS;
    }
    if st.action == ACTION_DROP as u8 {
        count(counter::CONSUMED);
    }
    action(st.action)
}

/// The first fragment of a datagram with no decision yet (no entry, or a
/// pending one): port rule, limits, action, then the fragment itself.
#[inline(always)]
fn decide(ctx: &XdpContext, f: &Frag, entry: Option<*mut FragState>) -> u32 {
    let m = &f.meta;
    // SAFETY: `e` points to a live LRU map value.
    let prior = entry.map(|e| unsafe { *e });
    let pending = match prior {
        Some(p) if p.state == FRAG_PENDING => Some(p),
        _ => None,
    };
    let charged = pending.map_or(0, |p| p.flags);
    let rule = match PORTS.get(m.dst_port as u32) {
        Some(rule) if rule.is_enabled() => Some(*rule),
        _ => None,
    };
    let (state, outcome, act) = match rule {
        None => (FRAG_REJECT, counter::PORT_DISABLED, ACTION_PASS),
        Some(rule) => match limit(f, Some(&rule), charged) {
            Err(outcome) => (FRAG_REJECT, outcome, f.reject),
            Ok(_) if rule.drops() => (FRAG_CAPTURE, counter::FRAGMENT, ACTION_DROP),
            Ok(_) => (FRAG_CAPTURE, counter::FRAGMENT, ACTION_PASS),
        },
    };
    let records = pending.map_or(0, |p| p.records);
    let st = FragState {
        created_ns: pending.map_or(f.now, |p| p.created_ns),
        records: if state == FRAG_CAPTURE {
            records + 1
        } else {
            records
        },
        src_port: m.src_port,
        dst_port: m.dst_port,
        state,
        outcome: outcome as u8,
        action: act as u8,
        flags: charged | FRAG_PORTS_KNOWN,
        _pad: 0,
    };
    match entry {
        // SAFETY: as above.
        Some(e) => unsafe { *e = st },
        None => {
            let _ = FRAGS.insert(&f.key, &st, BPF_ANY as u64);
        }
    }
    if state == FRAG_REJECT {
        // Fragments already written under a pending entry (or under an
        // earlier datagram's decision) are in the ring: the agent drops them.
        if prior.is_some_and(|p| p.state != FRAG_REJECT) {
            notify(&f.header(
                0,
                m.src_port,
                m.dst_port,
                RECORD_COARSE_TIME | RECORD_FRAGMENT | RECORD_FRAGMENT_DISCARD,
            ));
        }
        count(outcome);
        return action(act as u8);
    }
    if records >= FRAG_MAX_RECORDS {
        return pass(counter::FRAGMENT_EXCESS);
    }
    // The first fragment carries the port's format and packing for the
    // datagram (the others follow it in the agent).
    let encoding = rule.map_or(0, |r| encoding_flags(r.encoding));
    if !write_fragment(ctx.ctx, f, m.src_port, m.dst_port, encoding) {
        if let Some(e) = FRAGS.get_ptr_mut(&f.key) {
            lose(e);
        }
        return xdp_action::XDP_PASS;
    }
    // Per port and per source, the datagram counts once: here.
    if let Some(c) = PORT_CAPTURED.get_ptr_mut(m.dst_port as u32) {
        // SAFETY: per-CPU slot; XDP runs with preemption off on this CPU.
        unsafe { *c += 1 };
    }
    if f.cfg().per_source.is_limited()
        && let Some(st) = source_state(m.ip_version, &f.key.src_addr)
    {
        // SAFETY: `st` points to a live LRU map value.
        bump(unsafe { &raw mut (*st).captured });
    }
    count(counter::FRAGMENT);
    if act == ACTION_DROP {
        count(counter::CONSUMED);
    }
    action(act as u8)
}

/// A fragment other than the first, of a datagram not seen before: written
/// provisionally, unless the limits that need no port refuse the datagram.
#[inline(always)]
fn early(ctx: &XdpContext, f: &Frag) -> u32 {
    let (st, admitted) = match limit(f, None, 0) {
        Ok(charged) => (
            FragState {
                created_ns: f.now,
                records: 1,
                state: FRAG_PENDING,
                outcome: counter::FRAGMENT as u8,
                action: ACTION_PASS as u8,
                flags: charged,
                ..FragState::default()
            },
            true,
        ),
        Err(outcome) => (
            FragState {
                created_ns: f.now,
                state: FRAG_REJECT,
                outcome: outcome as u8,
                action: if f.reject == xdp_action::XDP_DROP {
                    ACTION_DROP as u8
                } else {
                    ACTION_PASS as u8
                },
                ..FragState::default()
            },
            false,
        ),
    };
    let _ = FRAGS.insert(&f.key, &st, BPF_ANY as u64);
    if !admitted {
        count(st.outcome as u32);
        return f.reject;
    }
    if !write_fragment(ctx.ctx, f, 0, 0, 0) {
        if let Some(e) = FRAGS.get_ptr_mut(&f.key) {
            lose(e);
        }
        return xdp_action::XDP_PASS;
    }
    count(counter::FRAGMENT);
    count(counter::FRAGMENT_EARLY);
    xdp_action::XDP_PASS
}

/// Charges the datagram against the limits `charged` does not mark as
/// charged already: per source, the port's `rule` (none for an early
/// fragment, whose port is unknown), global. `Ok` with the limits now
/// charged, or `Err` with the outcome of the first one it is over.
#[inline(always)]
fn limit(f: &Frag, rule: Option<&PortRule>, charged: u8) -> Result<u8, u32> {
    let per_source = f.cfg().per_source.is_limited() && charged & FRAG_CHARGED_SOURCE == 0;
    let global = f.cfg().global.is_limited() && charged & FRAG_CHARGED_GLOBAL == 0;
    let port = rule.filter(|r| r.limit.is_limited());
    if !per_source && !global && port.is_none() {
        return Ok(charged);
    }
    // Limits need the precise clock, as for whole datagrams.
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut charged = charged;
    if per_source && let Some(st) = source_state(f.meta.ip_version, &f.key.src_addr) {
        // SAFETY: `st` points to a live LRU map value.
        if !conform(unsafe { &raw mut (*st).tat }, &f.cfg().per_source, now) {
            bump(unsafe { &raw mut (*st).limited });
            return Err(counter::LIMITED_SOURCE);
        }
        charged |= FRAG_CHARGED_SOURCE;
    }
    if let Some(rule) = port
        && let Some(ps) = PORT_STATE.get_ptr_mut(f.meta.dst_port as u32)
    {
        // SAFETY: `ps` points to a live array map value.
        if !conform(unsafe { &raw mut (*ps).tat }, &rule.limit, now) {
            bump(unsafe { &raw mut (*ps).limited });
            return Err(counter::LIMITED_PORT);
        }
    }
    if global && let Some(g) = GLOBAL_STATE.get_ptr_mut(0) {
        if !conform(g, &f.cfg().global, now) {
            return Err(counter::LIMITED_GLOBAL);
        }
        charged |= FRAG_CHARGED_GLOBAL;
    }
    Ok(charged)
}

/// A fragment that could not be written: its datagram cannot be completed,
/// so its other fragments are passed uncaptured (counted `ring_full`) rather
/// than take ring space for nothing. The agent lets go of what it holds at
/// its reassembly timeout.
#[inline(always)]
fn lose(e: *mut FragState) {
    // SAFETY: `e` points to a live LRU map value.
    unsafe {
        (*e).state = FRAG_REJECT;
        (*e).outcome = counter::RING_FULL as u8;
        (*e).action = ACTION_PASS as u8;
    }
}

impl Frag {
    /// The record header of this fragment (or of a notice about its
    /// datagram), carrying `cap_len` bytes.
    #[inline(always)]
    fn header(&self, cap_len: u32, src_port: u16, dst_port: u16, flags: u8) -> RecordHeader {
        RecordHeader {
            timestamp_ns: self.now,
            ifindex: self.ifindex,
            wire_len: if flags & RECORD_FRAGMENT_DISCARD != 0 {
                0
            } else {
                self.meta.data_len
            },
            cap_len,
            src_port,
            dst_port,
            ip_version: self.meta.ip_version,
            flags,
            frag_offset: (self.meta.offset / 8) as u16,
            frag_id: self.meta.id,
            src_addr: self.key.src_addr,
            dst_addr: self.key.dst_addr,
        }
    }
}

/// Writes the fragment's record. Of its data it captures the bytes within
/// the UDP header and `--snaplen` bytes of payload: what lies past that is
/// cut from the event anyway, and the record still says how long the
/// fragment is, which is all the agent needs of it to know when the
/// datagram is complete. False, with the outcome counted, if nothing was
/// written. Not inlined: one copy of the record writer (and its header on
/// the stack) serves every caller.
#[inline(never)]
fn write_fragment(raw: *mut xdp_md, f: &Frag, src_port: u16, dst_port: u16, encoding: u8) -> bool {
    let ctx = XdpContext::new(raw);
    let m = &f.meta;
    let wanted = f.cfg().snaplen.saturating_add(8);
    let mut cap_len = wanted.saturating_sub(m.offset);
    if cap_len > m.data_len {
        cap_len = m.data_len;
    }
    if cap_len > MAX_CAPTURE {
        cap_len = MAX_CAPTURE;
    }
    let mut flags = RECORD_COARSE_TIME | RECORD_FRAGMENT | encoding;
    if m.more {
        flags |= RECORD_MORE_FRAGMENTS;
    }
    write_record(
        &ctx,
        &f.header(cap_len, src_port, dst_port, flags),
        m.data_offset,
    )
}
