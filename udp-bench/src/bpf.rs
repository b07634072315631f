//! The two `bpf(2)` commands the benchmark needs, called directly:
//! `BPF_PROG_LOAD` of small hand-assembled programs (no object file) and
//! `BPF_PROG_TEST_RUN`. The kernel-cost scenario times its XDP_PASS floor,
//! the ring path alone and the real program alike with it; the capture
//! scenario's sender runs an XDP_TX program over live frames with it
//! ([`crate::traffic::send_live`]).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`'s BPF_XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native mode.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// The program may see multi-buffer frames (`xdp.frags`): the real program
/// is loaded with it, so the floor is too, and both accept jumbo frames.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// `BPF_PROG_TEST_RUN` sends the frames its program returns XDP_TX or
/// XDP_REDIRECT for (Linux 5.18).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_DROP: i32 = 1;
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

/// Loads `r0 = XDP_DROP; exit`: attached to the receiving interface, the
/// baseline of the CPU-per-packet rows (each frame delivered to XDP and
/// freed at once, nothing else done with it).
pub fn load_xdp_drop() -> io::Result<OwnedFd> {
    load_return(XDP_DROP, b"xdp_baseline", BPF_F_XDP_HAS_FRAGS)
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Attaches XDP program `prog` to interface `ifindex` in native mode; it
/// stays attached while the returned link is open.
pub fn attach_native(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Loads `r0 = XDP_TX; exit`: run over live frames received "on" an
/// interface, it transmits every frame out of that interface.
pub fn load_xdp_tx() -> io::Result<OwnedFd> {
    // Live frames are at most a page: no frags.
    load_return(XDP_TX, b"xdp_sender", 0)
}

/// An XDP program that returns `action` and does nothing else.
fn load_return(action: i32, prog_name: &[u8], prog_flags: u32) -> io::Result<OwnedFd> {
    load(&[mov_imm(0, action), exit()], prog_name, prog_flags)
}

/// Helper ids (`enum bpf_func_id`).
const BPF_FUNC_RINGBUF_RESERVE: i32 = 131;
const BPF_FUNC_RINGBUF_SUBMIT: i32 = 132;
const BPF_FUNC_RINGBUF_DISCARD: i32 = 133;
const BPF_FUNC_XDP_LOAD_BYTES: i32 = 189;
/// `src_reg` of a 64-bit immediate load that names a map by fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// One instruction: `code`, the two register nibbles, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}

/// `dst = src` (BPF_ALU64 | BPF_MOV | BPF_X).
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}

/// `dst += imm` (BPF_ALU64 | BPF_ADD | BPF_K).
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}

/// `if dst == imm goto +off` (BPF_JMP | BPF_JEQ | BPF_K).
const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}

/// `if dst != imm goto +off` (BPF_JMP | BPF_JNE | BPF_K).
const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}

/// `goto +off` (BPF_JMP | BPF_JA).
const fn ja(off: i16) -> Insn {
    insn(0x05, 0, 0, off, 0)
}

/// Call helper `id` (BPF_JMP | BPF_CALL).
const fn call(id: i32) -> Insn {
    insn(0x85, 0, 0, 0, id)
}

/// BPF_JMP | BPF_EXIT.
const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}

/// `dst = map` by fd: a 64-bit immediate load, two instruction slots.
const fn ld_map_fd(dst: u8, fd: RawFd) -> [Insn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The instructions of [`load_ring_path`]. Jump offsets count from the
/// next instruction; the map load takes two slots.
fn ring_path_insns(ring: RawFd, record: u32, offset: u32, len: u32, header: u32) -> Vec<Insn> {
    let [map0, map1] = ld_map_fd(1, ring);
    vec![
        /* 0 */ mov_reg(6, 1), // r6 = ctx
        /* 1 */ map0,
        /* 2 */ map1,
        /* 3 */ mov_imm(2, record as i32),
        /* 4 */ mov_imm(3, 0),
        /* 5 */ call(BPF_FUNC_RINGBUF_RESERVE), // r0 = reserve(ring, record, 0)
        /* 6 */ jeq_imm(0, 0, 13), // ring full: to 20
        /* 7 */ mov_reg(7, 0), // r7 = the record
        /* 8 */ mov_reg(1, 6),
        /* 9 */ mov_imm(2, offset as i32),
        /* 10 */ mov_reg(3, 7),
        /* 11 */ add_imm(3, header as i32),
        /* 12 */ mov_imm(4, len as i32),
        /* 13 */ call(BPF_FUNC_XDP_LOAD_BYTES), // r0 = load(ctx, .., r7 + header, len)
        /* 14 */ mov_reg(1, 7),
        /* 15 */ mov_imm(2, 0),
        /* 16 */ jne_imm(0, 0, 2), // copy failed: to 19
        /* 17 */ call(BPF_FUNC_RINGBUF_SUBMIT),
        /* 18 */ ja(1), // to 20
        /* 19 */ call(BPF_FUNC_RINGBUF_DISCARD),
        /* 20 */ mov_imm(0, XDP_PASS),
        /* 21 */ exit(),
    ]
}

/// Loads the kernel's part of a capture, alone: reserve a `record`-byte
/// ring record, copy `len` bytes of the frame from `offset` to `header`
/// bytes into it with `bpf_xdp_load_bytes`, submit, return XDP_PASS. With
/// the real program's record size and payload position, it is the cost of
/// moving that payload through the ring, which no program that captures
/// with these helpers can go below: the ring path's floor.
pub fn load_ring_path(
    ring: BorrowedFd<'_>,
    record: u32,
    offset: u32,
    len: u32,
    header: u32,
) -> io::Result<OwnedFd> {
    let insns = ring_path_insns(ring.as_raw_fd(), record, offset, len, header);
    load(&insns, b"xdp_ring_path", BPF_F_XDP_HAS_FRAGS)
}

/// Loads an XDP program (GPL, so that it may call GPL-only helpers). If the
/// kernel refuses it, the error carries the end of the verifier's log.
fn load(insns: &[Insn], prog_name: &[u8], prog_flags: u32) -> io::Result<OwnedFd> {
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
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) => {
            // Load again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            if let Ok(fd) = again {
                // SAFETY: a new fd that we now own; closing it.
                drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "loading {}: {e}; verifier log ends: {}",
                    String::from_utf8_lossy(prog_name),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            ));
        }
    };
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

pub use test_support::thread_cpu_ns;

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
/// reported here; the receiver's counters tell. With a program that
/// redirects, each frame goes where it redirects it (an AF_XDP socket of
/// `ifindex`'s queue 0, say).
pub fn test_run_live(fd: RawFd, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<TestRun> {
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
    let cpu_start = thread_cpu_ns();
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    let cpu = thread_cpu_ns() - cpu_start;
    Ok(TestRun {
        retval: attr.retval,
        kernel_ns: attr.duration,
        cpu_ns: cpu as f64 / f64::from(repeat.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_paths_jumps_land_where_its_comments_say() {
        let insns = ring_path_insns(3, 1600, 42, 1472, 64);
        let target = |i: usize| (i as i64 + 1 + i64::from(insns[i].off)) as usize;
        assert_eq!(insns[5].imm, BPF_FUNC_RINGBUF_RESERVE);
        assert_eq!(target(6), 20, "ring full: return");
        assert_eq!(insns[13].imm, BPF_FUNC_XDP_LOAD_BYTES);
        assert_eq!(insns[target(16)].imm, BPF_FUNC_RINGBUF_DISCARD);
        assert_eq!(insns[17].imm, BPF_FUNC_RINGBUF_SUBMIT);
        assert_eq!(target(18), 20, "submitted: return");
        assert_eq!((insns[20].code, insns[20].imm), (0xb7, XDP_PASS));
        assert_eq!(insns[21].code, 0x95);
        assert_eq!(insns.len(), 22);
    }

    #[test]
    fn a_refused_program_says_why() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF programs needs root");
            return;
        }
        // r0 is never set: the verifier refuses to exit with it.
        let e = load(&[exit()], b"xdp_bad", 0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("xdp_bad") && msg.contains("R0"), "{msg}");
    }
}
