//! The two `bpf(2)` commands the benchmark needs, called directly:
//! `BPF_PROG_LOAD` of two-instruction programs (no object file) and
//! `BPF_PROG_TEST_RUN`. The kernel-cost scenario times its XDP_PASS floor
//! and the real program alike with it; the capture scenario's sender runs an
//! XDP_TX program over live frames with it ([`crate::traffic::send_live`]).

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// The program may see multi-buffer frames (`xdp.frags`): the real program
/// is loaded with it, so the floor is too, and both accept jumbo frames.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// `BPF_PROG_TEST_RUN` sends the frames its program returns XDP_TX or
/// XDP_REDIRECT for (Linux 5.18).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (fields up to
/// `expected_attach_type`; the kernel treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the stated
    // size; the kernel zero-extends it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `r0 = XDP_PASS; exit` as a frags-aware XDP program: the floor
/// that every measured program is compared with.
pub fn load_xdp_pass() -> io::Result<OwnedFd> {
    load_return(XDP_PASS, b"xdp_floor", BPF_F_XDP_HAS_FRAGS)
}

/// Loads `r0 = XDP_TX; exit`: run over live frames received "on" an
/// interface, it transmits every frame out of that interface.
pub fn load_xdp_tx() -> io::Result<OwnedFd> {
    // Live frames are at most a page: no frags.
    load_return(XDP_TX, b"xdp_sender", 0)
}

/// An XDP program that returns `action` and does nothing else.
fn load_return(action: i32, prog_name: &[u8], prog_flags: u32) -> io::Result<OwnedFd> {
    let insns = [
        // BPF_ALU64 | BPF_MOV | BPF_K: r0 = action
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: action,
        },
        // BPF_JMP | BPF_EXIT
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..prog_name.len()].copy_from_slice(prog_name);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_flags,
        prog_name: name,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What one `BPF_PROG_TEST_RUN` call measured.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    pub retval: u32,
    /// The kernel's own figure: whole nanoseconds per repetition.
    pub kernel_ns: u32,
    /// CPU time of the calling thread during the call, divided by
    /// `repeat`: fractional, and unlike wall time not inflated when other
    /// work preempts the benchmark (the call's fixed cost is spread over
    /// the repetitions).
    pub cpu_ns: f64,
}

fn thread_cpu_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs program `fd` `repeat` times over `frame`.
pub fn test_run(fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    let cpu_start = thread_cpu_ns();
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    let cpu = thread_cpu_ns() - cpu_start;
    Ok(TestRun {
        retval: attr.retval,
        kernel_ns: attr.duration,
        cpu_ns: cpu as f64 / f64::from(repeat.max(1)),
    })
}

/// `struct xdp_md`, the context a test run starts from.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs program `fd` over `repeat` live copies of `frame`, received on
/// interface `ifindex` of the calling thread's namespace: with
/// [`load_xdp_tx`], the kernel transmits each copy out of that interface
/// (in batches of 64, and runs the receiving side's softirq work between
/// batches on this CPU). Frames the interface could not take are not
/// reported here; the receiver's counters tell.
pub fn test_run_live(fd: RawFd, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<()> {
    let mut ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: (&mut ctx as *mut XdpMd) as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(())
}
