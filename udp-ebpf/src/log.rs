//! Diagnostics from the kernel side (`udp-agent run --kernel-log`), through
//! aya-log; the agent forwards them into its own logs (target
//! `udp_ebpf::log`). Never per packet:
//! - on the first frame after each attach to an interface, what the kernel
//!   shows of it ([`first_frame`]): RX queue, CPU, frame length, whether
//!   the frame is in more than one buffer, the settings in force;
//! - the first malformed frame per `KERNEL_LOG_INTERVAL_NS` ([`malformed`]),
//!   all CPUs together, with its first bytes.
//!
//! Off, it costs nothing measurable (bench/RESULTS.md): `KERNEL_LOG` is
//! read-only data that the loader sets, so with it 0 (the default) the
//! verifier knows every test of it is false and removes the code behind
//! them from the program it loads; what is left at each test is a load of
//! the switch and a jump. On, a frame costs one hash lookup
//! (`LOGGED_IFACES`), and a malformed frame a clock read and a
//! compare-and-swap.
//!
//! Built without the `kernel-log` feature (default on), none of it is in
//! the object: `enabled` is a constant false and the writers are empty.
//! That build exists for the bench row that compares it with the default
//! object loaded with the log off (`udp-bench kernel-log`).
//!
//! Both writers are functions of their own (`inline(never)`), so that what
//! they keep on the stack is not added to the frame of `udp_capture`, whose
//! tail call into `udp_fragment` needs that frame under 256 bytes.

#[cfg(not(feature = "kernel-log"))]
use aya_ebpf::bindings::xdp_md;
#[cfg(feature = "kernel-log")]
pub use on::{first_frame, malformed};

/// Whether `--kernel-log` is on.
#[cfg(feature = "kernel-log")]
#[inline(always)]
pub fn enabled() -> bool {
    on::KERNEL_LOG.load() != 0
}

/// Built without the log: never.
#[cfg(not(feature = "kernel-log"))]
#[inline(always)]
pub fn enabled() -> bool {
    false
}

#[cfg(not(feature = "kernel-log"))]
#[inline(always)]
pub fn first_frame(_ctx: *mut xdp_md, _first_buffer: u32) {}

#[cfg(not(feature = "kernel-log"))]
#[inline(always)]
pub fn malformed(_ctx: *mut xdp_md, _why: u32) {}

/// Why a frame is malformed, for [`malformed`].
pub const HEADERS: u32 = 0;
pub const PAST_FRAME: u32 = 1;
pub const ADDRESSES: u32 = 2;
pub const NO_CONFIG: u32 = 3;

#[cfg(feature = "kernel-log")]
mod on {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};

    use aya_ebpf::{
        Global,
        bindings::{BPF_NOEXIST, xdp_md},
        helpers::generated::{
            bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_xdp_get_buff_len,
            bpf_xdp_load_bytes,
        },
        macros::map,
        maps::{Array, HashMap},
    };
    use aya_log_ebpf::{info, warn};
    use udp_ebpf_common::{
        CONFIG_AFXDP, CONFIG_ALLOWLIST, CONFIG_DENYLIST, CONFIG_REJECT_DROP, KERNEL_LOG_BYTES,
        KERNEL_LOG_INTERVAL_NS, XSK_MAX_IFACES,
    };

    use super::{ADDRESSES, HEADERS, PAST_FRAME};
    use crate::CONFIG;

    /// 1 to log, set by the loader (`--kernel-log`); read-only for the program.
    #[unsafe(no_mangle)]
    pub(super) static KERNEL_LOG: Global<u8> = Global::new(0);

    /// Interfaces whose first frame since the attach has been logged. The agent
    /// removes an interface's entry when it attaches to it.
    #[map]
    static LOGGED_IFACES: HashMap<u32, u8> = HashMap::with_max_entries(4 * XSK_MAX_IFACES, 0);

    /// When the last malformed frame was logged (CLOCK_MONOTONIC_COARSE, ns).
    #[map]
    static MALFORMED_LOGGED: Array<u64> = Array::with_max_entries(1, 0);

    /// Logs the first frame on its interface since the agent attached to it;
    /// `first_buffer` is the length of its first (or only) buffer. (Taken by
    /// the caller: the packet pointers are not scalars the verifier lets this
    /// function keep on its stack.)
    #[inline(never)]
    pub fn first_frame(ctx: *mut xdp_md, first_buffer: u32) {
        // SAFETY: reading the context the kernel handed us.
        let (ifindex, queue) = unsafe { ((*ctx).ingress_ifindex, (*ctx).rx_queue_index) };
        // SAFETY: a plain value read.
        if unsafe { LOGGED_IFACES.get(&ifindex) }.is_some() {
            return;
        }
        // CPUs that see the interface's first frames at once all get here:
        // NOEXIST lets one of them log.
        if LOGGED_IFACES
            .insert(&ifindex, &1, BPF_NOEXIST as u64)
            .is_err()
        {
            return;
        }
        // SAFETY: plain helper calls.
        let (whole, cpu) = unsafe { (bpf_xdp_get_buff_len(ctx), bpf_get_smp_processor_id()) };
        let (snaplen, flags) = match CONFIG.get(0) {
            Some(c) => (c.snaplen, c.flags),
            None => (0, 0),
        };
        let on = |bit: u32| if flags & bit != 0 { "on" } else { "off" };
        info!(
            &(),
            "first frame since attach on ifindex {} (rx queue {}, cpu {}): {} bytes, {} in its first buffer; snaplen {}, allow list {}, deny list {}, consumed ports to AF_XDP {}, rejected frames {}",
            ifindex,
            queue,
            cpu,
            whole,
            first_buffer,
            snaplen,
            on(CONFIG_ALLOWLIST),
            on(CONFIG_DENYLIST),
            if flags & CONFIG_AFXDP != 0 {
                "where a socket is registered"
            } else {
                "off"
            },
            if flags & CONFIG_REJECT_DROP != 0 {
                "dropped"
            } else {
                "passed"
            }
        );
    }

    /// Logs a malformed frame (`why` says which check it failed), unless one
    /// was logged less than `KERNEL_LOG_INTERVAL_NS` ago.
    #[inline(never)]
    pub fn malformed(ctx: *mut xdp_md, why: u32) {
        let Some(last) = MALFORMED_LOGGED.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // SAFETY: `last` points into a map value, 8-byte aligned, live for the
        // run; a plain load, the compare-and-swap decides.
        let old = unsafe { core::ptr::read_volatile(last) };
        if old != 0 && now.wrapping_sub(old) < KERNEL_LOG_INTERVAL_NS {
            return;
        }
        // One CPU wins the interval.
        // SAFETY: as above.
        let (_, won) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                last, old, now,
            )
        };
        if !won {
            return;
        }
        // SAFETY: reading the context the kernel handed us; plain helper call.
        let (ifindex, queue, whole) = unsafe {
            (
                (*ctx).ingress_ifindex,
                (*ctx).rx_queue_index,
                bpf_xdp_get_buff_len(ctx),
            )
        };
        // The frame's first bytes, read across buffers, then zeros: a fixed
        // length, because the verifier cannot follow aya-log's copy of a slice
        // whose length is only known at run time.
        let mut head = [0u8; KERNEL_LOG_BYTES];
        let mut n = whole as u32;
        if n > KERNEL_LOG_BYTES as u32 {
            n = KERNEL_LOG_BYTES as u32;
        }
        if n > 0 {
            // The helper needs a length the verifier can prove is in
            // 1..=KERNEL_LOG_BYTES (a power of two): mask, then add one.
            let len = ((n - 1) & (KERNEL_LOG_BYTES as u32 - 1)) + 1;
            // SAFETY: `head` has KERNEL_LOG_BYTES bytes; 1 <= len <= that.
            unsafe { bpf_xdp_load_bytes(ctx, 0, head.as_mut_ptr() as *mut _, len) };
        }
        let reason = match why {
            HEADERS => "headers do not parse",
            PAST_FRAME => "IP length past the frame",
            ADDRESSES => "addresses unreadable",
            _ => "no settings",
        };
        warn!(
            &(),
            "malformed frame on ifindex {} (rx queue {}): {}; {} bytes, the first {} of them (then zeros): {:x} (one logged per {} s; all are counted as malformed)",
            ifindex,
            queue,
            reason,
            whole,
            n,
            &head,
            KERNEL_LOG_INTERVAL_NS / 1_000_000_000
        );
    }
}
