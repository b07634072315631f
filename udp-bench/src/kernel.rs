//! Scenario 1 — kernel cost: the real XDP object run by the kernel with
//! `BPF_PROG_TEST_RUN` and a large repeat count, against a program that
//! only returns XDP_PASS (the floor), measured the same way, in the same
//! run, over the same frame.
//!
//! Captures write to the ring buffer on every repetition. The ring is the
//! agent's default size (8 MiB: its memory is reused as in production, not
//! a cold gigabyte), so a capturing run is split into calls whose records
//! fit in 90% of it, and the ring is drained, untimed, after each call: the
//! `ring_full` path is never timed (the counter is read back to prove it).
//! (Draining concurrently from another CPU, as the agent does, is not
//! reproducible on a small shared machine: a preempted consumer lets the
//! ring fill.) Every call has a fixed set-up cost (the frame, and for
//! jumbo frames its fragments, are built once per call) that short calls
//! cannot amortise, so for these cases the program's cost is reported as
//! the floor measured with one long call plus what the program adds over
//! the floor in identical calls: `floor_long + (program − floor)`.
//!
//! A consumed port's capture is also measured both ways it can leave the
//! program ([`redirect_vs_ring`]): written to the ring, or redirected to an
//! AF_XDP socket. Only live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) carry a
//! redirect through (the copy into the socket's UMEM happens after the
//! program returns), so this pair is timed that way, against an XDP_DROP
//! program run the same way.
//!
//! Each captured case also runs the ring path alone
//! ([`bpf::load_ring_path`]: reserve the same record, copy the payload with
//! `bpf_xdp_load_bytes`, submit), interleaved with the other two and
//! derived the same way: the kernel's share of that capture.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::Xdp,
};
use serde::Serialize;
use udp_ebpf_common::{
    CONFIG_AFXDP, Config, DEFAULT_RING_BYTES, MAX_CAPTURE, PORT_DROP, PortRule, RECORD_HEADER_LEN,
    counter,
    frame::FrameBuilder,
    record_room, ring_slot_bytes,
    xsk::{self, Socket},
};

use crate::{
    bpf,
    proc::{check_interrupted, sut_cpu, with_cpu},
    report::{Row, Summary},
};

const XDP_PASS: u32 = 2;
pub(crate) const PORT: u16 = 514;
pub(crate) const OTHER_PORT: u16 = 9999;
pub(crate) const SRC4: [u8; 4] = [198, 18, 250, 2];
pub(crate) const DST4: [u8; 4] = [198, 18, 250, 1];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0xfa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const DST6: [u8; 16] = [0xfd, 0, 0, 0xfa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

pub struct Settings {
    /// Measurements per case (each one floor run + one program run, and
    /// for captured cases one run of the ring path alone).
    pub runs: usize,
    /// Repetitions per run.
    pub repeat: u32,
    /// Ring buffer size; one call repeats as often as fits in 90% of it.
    pub ring_bytes: u32,
    /// Repetitions per run for capturing cases.
    pub capture_repeat: u32,
    /// Only cases whose name contains this (profiling one case).
    pub only: Option<String>,
}

impl Settings {
    /// Whether `case` is measured (`only`).
    pub(crate) fn wants(&self, case: &Case) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| case.name.contains(o.as_str()))
    }

    /// Calls per run and repetitions per call for `case`: one call of
    /// `repeat`, or for a capture as many calls as it takes for
    /// `capture_repeat` records to fit in 90% of the ring each time.
    pub(crate) fn calls(&self, case: &Case) -> (u32, u32) {
        match case.captured_payload {
            None => (1, self.repeat),
            Some(p) => {
                let fit = (u64::from(self.ring_bytes) * 9 / 10 / record_slot(p)).max(1) as u32;
                let per_call = fit.min(self.capture_repeat);
                (self.capture_repeat.div_ceil(per_call), per_call)
            }
        }
    }

    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                runs: 3,
                repeat: 500_000,
                ring_bytes: DEFAULT_RING_BYTES,
                capture_repeat: 100_000,
                only: None,
            }
        } else {
            Settings {
                runs: 9,
                repeat: 2_000_000,
                ring_bytes: DEFAULT_RING_BYTES,
                capture_repeat: 500_000,
                only: None,
            }
        }
    }
}

/// One frame to measure.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) frame: Vec<u8>,
    /// Payload bytes captured per repetition (`None`: not captured).
    pub(crate) captured_payload: Option<usize>,
    /// The target that applies: `Some(1.5)` for "≤ 1.5× the floor",
    /// `Some(-300.0)` for "≤ 300 ns".
    target: Option<Target>,
}

impl Case {
    /// A frame that is not captured, with no target.
    pub(crate) fn uncaptured(name: &'static str, frame: Vec<u8>) -> Case {
        Case {
            name,
            frame,
            captured_payload: None,
            target: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Target {
    FloorRatio(f64),
    Nanoseconds(f64),
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

pub(crate) fn cases() -> Vec<Case> {
    let v4 = |port: u16, len: usize| {
        FrameBuilder::ipv4(SRC4, DST4)
            .udp(40000, port, &payload(len))
            .build()
    };
    vec![
        Case {
            name: "non-IP frame (ARP request)",
            frame: FrameBuilder::arp_request([2, 0, 0, 0, 0, 1], SRC4, DST4).build(),
            captured_payload: None,
            target: Some(Target::FloorRatio(1.5)),
        },
        Case {
            name: "UDP to a disabled port (IPv4, 64 B)",
            frame: v4(OTHER_PORT, 64),
            captured_payload: None,
            target: Some(Target::FloorRatio(1.5)),
        },
        Case {
            name: "enabled port, 64 B payload (IPv4)",
            frame: v4(PORT, 64),
            captured_payload: Some(64),
            target: None,
        },
        Case {
            name: "enabled port, 1,472 B payload (IPv4)",
            frame: v4(PORT, 1472),
            captured_payload: Some(1472),
            target: Some(Target::Nanoseconds(300.0)),
        },
        Case {
            name: "enabled port, 8,900 B payload (IPv4, multi-buffer)",
            frame: v4(PORT, 8900),
            captured_payload: Some(8900),
            target: None,
        },
        Case {
            name: "enabled port, 64 B payload (IPv6)",
            frame: FrameBuilder::ipv6(SRC6, DST6)
                .udp(40000, PORT, &payload(64))
                .build(),
            captured_payload: Some(64),
            target: None,
        },
        Case {
            name: "enabled port, 64 B payload (802.1Q VLAN, IPv4)",
            frame: FrameBuilder::ipv4(SRC4, DST4)
                .dot1q(100)
                .udp(40000, PORT, &payload(64))
                .build(),
            captured_payload: Some(64),
            target: None,
        },
    ]
}

#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub frame_bytes: usize,
    pub captured: bool,
    pub repeat: u32,
    /// ns per packet of the real program (CPU time of the call / repeat).
    pub program_ns: Summary,
    /// ns per packet of the XDP_PASS floor, same frame, same run.
    pub floor_ns: Summary,
    /// program / floor, run by run.
    pub ratio: Summary,
    /// Captured cases: ns per packet of the ring path alone (reserve the
    /// same record, copy the payload, submit; `bpf::load_ring_path`),
    /// interleaved with the other two and derived the same way.
    pub ring_path_ns: Option<Summary>,
    /// The kernel's own whole-nanosecond figures, for reference.
    pub program_kernel_ns: Summary,
    pub floor_kernel_ns: Summary,
    /// Calls per run; above 1, `program_ns` is `floor_ns + (raw program −
    /// raw floor)` and these are the raw per-call figures.
    pub calls_per_run: u32,
    pub program_ns_raw: Summary,
    pub floor_ns_raw: Summary,
    pub ring_path_ns_raw: Option<Summary>,
    /// Records written and `ring_full` over the measured runs.
    pub records: u64,
    pub ring_full: u64,
}

#[derive(Debug, Serialize)]
pub struct KernelResults {
    pub object: String,
    pub runs: usize,
    pub cpu: usize,
    pub method: &'static str,
    pub cases: Vec<CaseResult>,
    pub redirect: Option<RedirectResult>,
}

/// The object loaded with `udp_capture`, port `PORT` enabled and the
/// default config; the ring and the counters taken out.
pub(crate) struct Loaded {
    pub(crate) ebpf: Ebpf,
    pub(crate) ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
}

impl Loaded {
    pub(crate) fn ring_full(&self) -> Result<u64> {
        self.counter(counter::RING_FULL)
    }

    /// One of the program's counters, summed over the CPUs.
    pub(crate) fn counter(&self, index: u32) -> Result<u64> {
        Ok(self.counters.get(&index, 0)?.iter().sum())
    }

    pub(crate) fn load(object: &Path, ring_bytes: u32) -> Result<Loaded> {
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let prog: &mut Xdp = ebpf
            .program_mut("udp_capture")
            .context("no udp_capture program in the object")?
            .try_into()?;
        prog.load().context("the kernel refused udp_capture")?;
        let mut ports: Array<_, PortRule> =
            Array::try_from(ebpf.map_mut("PORTS").context("no PORTS map")?)?;
        ports.set(u32::from(PORT), PortRule::enabled(), 0)?;
        let mut config: Array<_, Config> =
            Array::try_from(ebpf.map_mut("CONFIG").context("no CONFIG map")?)?;
        config.set(0, Config::default(), 0)?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("no EVENTS map")?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("no COUNTERS")?)?;
        Ok(Loaded {
            ebpf,
            ring,
            counters,
        })
    }

    pub(crate) fn fd(&self) -> Result<std::os::fd::RawFd> {
        let prog: &Xdp = self
            .ebpf
            .program("udp_capture")
            .context("no udp_capture program")?
            .try_into()?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }
}

pub(crate) fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

pub fn run(object: &Path, s: &Settings) -> Result<(KernelResults, Vec<Row>)> {
    ensure!(
        object.is_file(),
        "XDP object {} missing (run `cargo xtask build-ebpf`)",
        object.display()
    );
    let floor = bpf::load_xdp_pass().context("loading the XDP_PASS floor program")?;
    let mut k = Loaded::load(object, s.ring_bytes)?;
    let fd = k.fd()?;
    // Every run of every program on the same CPU.
    let cpu = sut_cpu();
    let cases = with_cpu(cpu, || measure(&mut k, fd, floor.as_raw_fd(), s))?;
    let mut rows = rows(&cases);
    let redirect = if s
        .only
        .as_ref()
        .is_none_or(|o| "redirect".contains(o.as_str()))
    {
        let (r, row) = with_cpu(cpu, || redirect_vs_ring(object, s))?;
        rows.push(row);
        Some(r)
    } else {
        None
    };
    Ok((
        KernelResults {
            object: object.display().to_string(),
            runs: s.runs,
            cpu,
            method: "BPF_PROG_TEST_RUN via bpf(2) on one pinned CPU; ns/packet = CPU time of the calling thread during the call / repeat (wall time is inflated whenever other work preempts the pinned CPU); floor = `r0 = XDP_PASS; exit` loaded with BPF_F_XDP_HAS_FRAGS; ring path (captured cases) = reserve the same record, bpf_xdp_load_bytes the payload into it, submit, return XDP_PASS",
            cases,
            redirect,
        },
        rows,
    ))
}

/// Loopback: live frames run as received on its queue 0.
const LO: u32 = 1;

/// A consumed port's 1,472-byte capture, each way out of the program.
#[derive(Debug, Serialize)]
pub struct RedirectResult {
    pub frame_bytes: usize,
    pub frames_per_call: u32,
    /// ns per frame, live frames: XDP_DROP and nothing else.
    pub floor_ns: Summary,
    /// The program writing the ring record, then XDP_DROP.
    pub ring_ns: Summary,
    /// The program redirecting to an AF_XDP socket (copy mode), the copy
    /// into its UMEM included.
    pub redirect_ns: Summary,
    pub ring_over_floor_ns: Summary,
    pub redirect_over_floor_ns: Summary,
}

/// The program's two ways out for a consumed port, timed with live frames
/// on loopback's queue 0, where an AF_XDP socket (copy mode) is bound:
/// `CONFIG_AFXDP` clear (the ring) or set (the redirect), interleaved with
/// an XDP_DROP floor. Each call's frames fit both the ring and the
/// socket, which are drained, untimed, between calls; every frame must
/// arrive where it was sent.
fn redirect_vs_ring(object: &Path, s: &Settings) -> Result<(RedirectResult, Row)> {
    let mut k = Loaded::load(object, s.ring_bytes)?;
    let mut ports: Array<_, PortRule> = Array::try_from(k.ebpf.map_mut("PORTS").context("PORTS")?)?;
    let mut rule = PortRule::enabled();
    rule.flags |= PORT_DROP;
    ports.set(u32::from(PORT), rule, 0)?;
    const FRAMES: u32 = 4096;
    let mut socket = Socket::open(
        LO,
        0,
        xsk::Config {
            frames: FRAMES,
            bind: xsk::Bind::Copy,
        },
    )
    .context("an AF_XDP socket on lo (needs CONFIG_XDP_SOCKETS)")?;
    aya::maps::XskMap::try_from(k.ebpf.map_mut("XSKS").context("XSKS")?)?.set(
        0,
        socket.as_raw_fd(),
        0,
    )?;
    aya::maps::HashMap::<_, u32, u32>::try_from(
        k.ebpf.map_mut("XSK_IFACES").context("XSK_IFACES")?,
    )?
    .insert(LO, 0, 0)?;
    let set_flags = |k: &mut Loaded, flags: u32| -> Result<()> {
        let mut config: Array<_, Config> =
            Array::try_from(k.ebpf.map_mut("CONFIG").context("CONFIG")?)?;
        config.set(
            0,
            Config {
                flags,
                ..Config::default()
            },
            0,
        )?;
        Ok(())
    };
    let floor = bpf::load_xdp_drop().context("loading the XDP_DROP floor")?;
    let fd = k.fd()?;
    let frame = FrameBuilder::ipv4(SRC4, DST4)
        .udp(40000, PORT, &payload(1472))
        .build();
    let per_call = FRAMES / 2;
    let mut descs = Vec::new();
    let mut drain_socket = |socket: &mut Socket| {
        let mut n = 0;
        while socket.peek(&mut descs, 256) > 0 {
            n += descs.len();
            socket.release(descs.len());
        }
        n as u64
    };
    // Warm: JIT images, pages, the socket's first frames.
    for flags in [0, CONFIG_AFXDP] {
        set_flags(&mut k, flags)?;
        bpf::test_run_live(fd, &frame, LO, 256)?;
        drain(&mut k);
        drain_socket(&mut socket);
    }
    let (mut floor_ns, mut ring_ns, mut redirect_ns) = (Vec::new(), Vec::new(), Vec::new());
    let runs = s.runs.max(3);
    for i in 0..runs {
        check_interrupted()?;
        for j in 0..3 {
            match (i + j) % 3 {
                0 => floor_ns
                    .push(bpf::test_run_live(floor.as_raw_fd(), &frame, LO, per_call)?.cpu_ns),
                1 => {
                    set_flags(&mut k, 0)?;
                    ring_ns.push(bpf::test_run_live(fd, &frame, LO, per_call)?.cpu_ns);
                    let (n, _) = drain(&mut k);
                    ensure!(
                        n == u64::from(per_call),
                        "ring path: {n} records for {per_call} frames"
                    );
                }
                _ => {
                    set_flags(&mut k, CONFIG_AFXDP)?;
                    redirect_ns.push(bpf::test_run_live(fd, &frame, LO, per_call)?.cpu_ns);
                    let n = drain_socket(&mut socket);
                    let lost = socket.statistics()?.lost();
                    ensure!(
                        n == u64::from(per_call) && lost == 0,
                        "AF_XDP: the socket received {n} of {per_call} frames ({lost} lost)"
                    );
                }
            }
        }
    }
    let over = |v: &[f64]| -> Vec<f64> { v.iter().zip(&floor_ns).map(|(x, f)| x - f).collect() };
    let r = RedirectResult {
        frame_bytes: frame.len(),
        frames_per_call: per_call,
        ring_over_floor_ns: Summary::of(&over(&ring_ns)),
        redirect_over_floor_ns: Summary::of(&over(&redirect_ns)),
        floor_ns: Summary::of(&floor_ns),
        ring_ns: Summary::of(&ring_ns),
        redirect_ns: Summary::of(&redirect_ns),
    };
    eprintln!(
        "bench: kernel: consumed 1,472 B, live frames: ring {:.1} ns, AF_XDP redirect {:.1} ns, XDP_DROP floor {:.1} ns",
        r.ring_ns.median, r.redirect_ns.median, r.floor_ns.median
    );
    let mut row = Row::new(
        1,
        "kernel: consumed port, 1,472 B payload: AF_XDP redirect vs the ring path (live frames, over an XDP_DROP floor)",
        "ns/packet",
    );
    row.ns_versus(
        ("redirect over the floor ", &r.redirect_over_floor_ns),
        ("ring over the floor ", &r.ring_over_floor_ns),
        r.redirect_over_floor_ns.median / r.ring_over_floor_ns.median,
    );
    row.note = format!(
        "per frame with the live-frames run itself: redirect {:.1} ns, ring {:.1} ns, floor {:.1} ns; the redirect includes the copy into the socket's UMEM (copy mode; zero-copy drivers skip it)",
        r.redirect_ns.median, r.ring_ns.median, r.floor_ns.median
    );
    Ok((r, row))
}

/// Program ns, floor ns, their ratio, and the kernel's own figures, run by
/// run.
type Runs = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// One `BPF_PROG_TEST_RUN` that must return XDP_PASS.
pub(crate) fn run_checked(case: &Case, fd: i32, repeat: u32) -> Result<bpf::TestRun> {
    let r = bpf::test_run(fd, &case.frame, repeat)?;
    if r.retval != XDP_PASS {
        bail!("{}: returned {} (expected XDP_PASS)", case.name, r.retval);
    }
    Ok(r)
}

/// Ring bytes one record of `payload` bytes takes: an 8-byte ring header,
/// the 64-byte record header and the payload's size class.
fn record_slot(payload: usize) -> u64 {
    u64::from(ring_slot_bytes(payload.min(MAX_CAPTURE as usize) as u32))
}

/// Drains the ring (untimed); returns the records and the first one's
/// payload (after the record header), for the caller to check.
pub(crate) fn drain(k: &mut Loaded) -> (u64, Option<Vec<u8>>) {
    let mut n = 0;
    let mut first = None;
    while let Some(rec) = k.ring.next() {
        if first.is_none() {
            first = Some(rec.get(RECORD_HEADER_LEN..).unwrap_or_default().to_vec());
        }
        n += 1;
    }
    (n, first)
}

/// The ring path's program for a captured case: the real program's record
/// size and payload position for this frame.
fn ring_path_for(k: &Loaded, case: &Case) -> Result<Option<OwnedFd>> {
    let Some(payload) = case.captured_payload else {
        return Ok(None);
    };
    let len = payload.min(MAX_CAPTURE as usize) as u32;
    // The frames are built without trailing padding: the payload ends the frame.
    let offset = (case.frame.len() - payload) as u32;
    let record = RECORD_HEADER_LEN as u32 + record_room(len);
    let fd = bpf::load_ring_path(
        k.ring.as_fd(),
        record,
        offset,
        len,
        RECORD_HEADER_LEN as u32,
    )
    .context("loading the ring-path program")?;
    Ok(Some(fd))
}

/// The programs a case runs, in turn.
#[derive(Clone, Copy)]
enum Measured {
    Floor,
    Program,
    /// Captured cases only: the ring-path program's fd.
    RingPath(i32),
}

/// What one run adds up, over its calls.
#[derive(Default)]
struct RunSums {
    program: f64,
    floor: f64,
    ring_path: f64,
    program_kernel: f64,
    floor_kernel: f64,
}

fn measure(k: &mut Loaded, fd: i32, floor: i32, s: &Settings) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for case in cases() {
        check_interrupted()?;
        if !s.wants(&case) {
            continue;
        }
        let ring_path = ring_path_for(k, &case)?;
        let ring_fd = ring_path.as_ref().map(|f| f.as_raw_fd());
        // What the ring path's records must hold: the frame's last bytes.
        let payload = &case.frame[case.frame.len() - case.captured_payload.unwrap_or(0)..];
        let mut programs = vec![Measured::Floor, Measured::Program];
        programs.extend(ring_fd.map(Measured::RingPath));
        // Warm caches and the JIT images, untimed (draining after each:
        // a thousand jumbo records nearly fill the ring).
        bpf::test_run(floor, &case.frame, 1000)?;
        bpf::test_run(fd, &case.frame, 1000)?;
        drain(k);
        if let Some(r) = ring_fd {
            bpf::test_run(r, &case.frame, 1000)?;
            drain(k);
        }
        let full_before = k.ring_full()?;
        let (calls, per_call) = s.calls(&case);
        let repeat = calls * per_call;
        let (mut records, mut ring_path_records) = (0, 0);
        let mut raw: Runs = Default::default();
        let mut ring_raw = Vec::new();
        for i in 0..s.runs {
            check_interrupted()?;
            let mut sum = RunSums::default();
            for c in 0..calls {
                // Rotate the order so that none always runs first. The ring
                // is drained after each capturing call: one call's records
                // fit in it, two may not.
                for j in 0..programs.len() {
                    match programs[(i + c as usize + j) % programs.len()] {
                        Measured::Floor => {
                            let r = run_checked(&case, floor, per_call)?;
                            sum.floor += r.cpu_ns;
                            sum.floor_kernel += f64::from(r.kernel_ns);
                        }
                        Measured::Program => {
                            let r = run_checked(&case, fd, per_call)?;
                            sum.program += r.cpu_ns;
                            sum.program_kernel += f64::from(r.kernel_ns);
                            records += drain(k).0;
                        }
                        Measured::RingPath(ring_fd) => {
                            sum.ring_path += run_checked(&case, ring_fd, per_call)?.cpu_ns;
                            let (n, first) = drain(k);
                            ring_path_records += n;
                            ensure!(
                                first.is_none_or(|p| p.get(..payload.len()) == Some(payload)),
                                "{}: the ring path's record does not hold the payload",
                                case.name
                            );
                        }
                    }
                }
            }
            let n = f64::from(calls);
            raw.0.push(sum.program / n);
            raw.1.push(sum.floor / n);
            raw.2.push(sum.program / sum.floor);
            raw.3.push(sum.program_kernel / n);
            raw.4.push(sum.floor_kernel / n);
            ring_raw.push(sum.ring_path / n);
        }
        // The floor with one long call, for cases split into short calls.
        let (prog_ns, floor_ns, ratio, ring_ns) = if calls == 1 && per_call >= s.repeat {
            (
                raw.0.clone(),
                raw.1.clone(),
                raw.2.clone(),
                ring_raw.clone(),
            )
        } else {
            let mut long = Vec::new();
            for _ in 0..s.runs {
                long.push(run_checked(&case, floor, s.repeat)?.cpu_ns);
            }
            let floor_long = Summary::of(&long).median;
            let over_floor = |v: &[f64]| -> Vec<f64> {
                v.iter()
                    .zip(&raw.1)
                    .map(|(x, f)| floor_long + (x - f))
                    .collect()
            };
            let prog = over_floor(&raw.0);
            let ring = over_floor(&ring_raw);
            let ratio = prog.iter().map(|p| p / floor_long).collect();
            (prog, long, ratio, ring)
        };
        let ring_full = k.ring_full()? - full_before;
        if case.captured_payload.is_some() {
            let want = u64::from(repeat) * s.runs as u64;
            ensure!(
                records == want && ring_full == 0,
                "{}: {records} records and ring_full {ring_full} for {want} captures; the consumer fell behind",
                case.name
            );
            ensure!(
                ring_path_records == want,
                "{}: the ring path wrote {ring_path_records} records for {want} repetitions",
                case.name
            );
        }
        let r = CaseResult {
            name: case.name.to_string(),
            frame_bytes: case.frame.len(),
            captured: case.captured_payload.is_some(),
            repeat,
            program_ns: Summary::of(&prog_ns),
            floor_ns: Summary::of(&floor_ns),
            ratio: Summary::of(&ratio),
            ring_path_ns: ring_fd.map(|_| Summary::of(&ring_ns)),
            program_kernel_ns: Summary::of(&raw.3),
            floor_kernel_ns: Summary::of(&raw.4),
            calls_per_run: calls,
            program_ns_raw: Summary::of(&raw.0),
            floor_ns_raw: Summary::of(&raw.1),
            ring_path_ns_raw: ring_fd.map(|_| Summary::of(&ring_raw)),
            records,
            ring_full,
        };
        let ring_note = r
            .ring_path_ns
            .as_ref()
            .map(|p| format!(", ring path alone {:.1} ns", p.median))
            .unwrap_or_default();
        eprintln!(
            "bench: kernel: {:<52} {:>8.1} ns/packet (±{:.0}%), floor {:>5.1} ns, ratio {:.2}×{ring_note}",
            r.name,
            r.program_ns.median,
            r.program_ns.spread_pct(),
            r.floor_ns.median,
            r.ratio.median
        );
        out.push(r);
    }
    Ok(out)
}

fn rows(cases: &[CaseResult]) -> Vec<Row> {
    let all = self::cases();
    cases
        .iter()
        .map(|c| {
            let target = all.iter().find(|k| k.name == c.name).and_then(|k| k.target);
            let mut row = Row::new(1, format!("kernel: {}", c.name), "ns/packet");
            row.ours = format!(
                "{:.1} ns/packet (±{:.0}%)",
                c.program_ns.median,
                c.program_ns.spread_pct()
            );
            row.peer = format!("XDP_PASS floor {:.1} ns", c.floor_ns.median);
            if let Some(ring) = &c.ring_path_ns {
                row.note = format!(
                    "the ring path alone (reserve this record, copy the payload with \
                     bpf_xdp_load_bytes, submit): {:.1} ns (±{:.0}%), {:.0}% of ours",
                    ring.median,
                    ring.spread_pct(),
                    100.0 * ring.median / c.program_ns.median
                );
            }
            row.ratio = Some(c.ratio.median);
            row.ours_value = Some(c.program_ns.median);
            row.peer_value = Some(c.floor_ns.median);
            match target {
                Some(Target::FloorRatio(x)) => {
                    row.target = Some(format!("≤ {x}× floor"));
                    row.met = Some(c.ratio.median <= x);
                }
                Some(Target::Nanoseconds(ns)) => {
                    row.target = Some(format!("≤ {ns:.0} ns"));
                    row.met = Some(c.program_ns.median <= ns);
                }
                None => {}
            }
            row
        })
        .collect()
}
