//! Scenario 1 for IP fragments: what the XDP program costs per fragment,
//! and what the agent spends per datagram it reassembles.
//!
//! Kernel. A fragment cannot be measured with a large repeat count as the
//! other kernel rows are: every repetition would be another copy of one
//! fragment of one datagram (and past 128 of them the program stops
//! writing). So each frame — every fragment of many datagrams, each with
//! its own identification — is run once per `BPF_PROG_TEST_RUN` call, and
//! the kernel's own duration of that one run is taken (the time between
//! two clock reads around it, whole nanoseconds). The XDP_PASS floor is
//! run the same way over the same frame right before or after, so the
//! clock reads and the run's fixed cost are in both; a whole 1,472-byte
//! datagram is measured the same way, for comparison with the kernel rows.
//! Per case the figure is the median over its calls of a round; the
//! rounds give the spread. The ring is drained, untimed, every
//! `DRAIN_EVERY` datagrams: the first record after a drain also pays for
//! waking the (absent) reader, an interrupt-work request that costs
//! microseconds in a VM, and that cost belongs to no case.
//!
//! Agent. `examples/reassembly_speed` (in udp-agent) times, on its thread's
//! CPU clock, decoding the records of a datagram's fragments,
//! reassembling it and encoding its event, against decoding and encoding
//! the same datagram from one whole record.

use std::{os::fd::AsRawFd, path::Path, process::Command};

use anyhow::{Context, Result, bail, ensure};
use aya::{maps::ProgramArray, programs::Xdp};
use serde::Serialize;
use udp_ebpf_common::{
    DEFAULT_RING_BYTES, FRAGMENT_PATH_MAP, FRAGMENT_PATH_SLOT, FRAGMENT_PROGRAM,
    frame::FrameBuilder,
};

use crate::{
    bpf,
    kernel::{self, DST4, Loaded, OTHER_PORT, PORT, SRC4},
    proc::{self, check_interrupted, sut_cpu, with_cpu},
    report::{Row, Summary},
};
/// The datagram of the fragment cases: 8,000 payload bytes, which a
/// 1,500-byte MTU splits into six fragments (five of 1,480 data bytes).
const SIZE: usize = 8000;
const MTU: usize = 1500;
/// Datagram sets between two drains of the ring: each set writes 13
/// records of up to 1.6 KB, so 200 take about half of the 8 MiB ring.
const DRAIN_EVERY: usize = 200;

pub struct Settings {
    pub rounds: usize,
    /// Datagrams per case per round.
    pub datagrams: usize,
    /// Datagrams of the agent's measurement, and its rounds.
    pub agent_datagrams: usize,
    pub agent_rounds: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                rounds: 3,
                datagrams: 200,
                agent_datagrams: 2000,
                agent_rounds: 3,
            }
        } else {
            Settings {
                rounds: 9,
                datagrams: 1000,
                agent_datagrams: 20_000,
                agent_rounds: 9,
            }
        }
    }
}

/// What a frame is, for the figures it goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Whole,
    First,
    Later,
    Early,
    FirstAfterEarly,
    DisabledFirst,
    DisabledLater,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::Whole,
        Case::First,
        Case::Later,
        Case::Early,
        Case::FirstAfterEarly,
        Case::DisabledFirst,
        Case::DisabledLater,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Whole => "whole 1,472 B datagram, one run per call (for comparison)",
            Case::First => "IP fragment: the first, which decides (writes 1,480 B)",
            Case::Later => "IP fragment: a later one, which follows (writes 1,480 B)",
            Case::Early => "IP fragment: one before its first (written provisionally)",
            Case::FirstAfterEarly => "IP fragment: the first, after early ones",
            Case::DisabledFirst => "IP fragment: the first, to a disabled port",
            Case::DisabledLater => "IP fragment: a later one, to a disabled port",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    /// Median ns of one run of the program, round by round.
    pub program_ns: Summary,
    /// Median ns of one run of the XDP_PASS floor, same frames.
    pub floor_ns: Summary,
    /// program − floor, round by round.
    pub over_floor_ns: Summary,
    pub calls: usize,
}

#[derive(Debug, Serialize)]
pub struct AgentResult {
    pub size: usize,
    pub fragments: usize,
    pub reassembled_ns: Summary,
    pub whole_ns: Summary,
}

#[derive(Debug, Serialize)]
pub struct FragmentResults {
    pub method: &'static str,
    pub cpu: usize,
    pub cases: Vec<CaseResult>,
    pub agent: Option<AgentResult>,
}

/// The object as the kernel rows load it, with `udp_fragment` installed
/// in its slot as the agent's loader does.
fn load(object: &Path) -> Result<Loaded> {
    let mut k = Loaded::load(object, DEFAULT_RING_BYTES)?;
    let ebpf = &mut k.ebpf;
    let prog: &mut Xdp = ebpf
        .program_mut(FRAGMENT_PROGRAM)
        .with_context(|| format!("no {FRAGMENT_PROGRAM} program in the object"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("the kernel refused {FRAGMENT_PROGRAM}"))?;
    let fd = prog.fd()?.try_clone()?;
    let mut slots = ProgramArray::try_from(
        ebpf.map_mut(FRAGMENT_PATH_MAP)
            .context("no FRAGMENT_PATH map")?,
    )?;
    slots.set(FRAGMENT_PATH_SLOT, &fd, 0)?;
    Ok(k)
}

fn payload(len: usize, id: u32) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    p[..4].copy_from_slice(&id.to_be_bytes());
    p
}

/// The frames of one datagram of each kind, with what each is.
fn datagram_frames(id: u32) -> Vec<(Case, Vec<u8>)> {
    let b = |port| {
        FrameBuilder::ipv4(SRC4, DST4)
            .frag_id(id & 0xFFFF)
            .udp(40000, port, &payload(SIZE, id))
    };
    let mut out = Vec::new();
    out.push((
        Case::Whole,
        FrameBuilder::ipv4(SRC4, DST4)
            .udp(40000, PORT, &payload(1472, id))
            .build(),
    ));
    // In order.
    for (i, f) in b(PORT).fragments(MTU).into_iter().enumerate() {
        out.push((if i == 0 { Case::First } else { Case::Later }, f));
    }
    out
}

/// A datagram reversed (identification `id`), and one to a disabled port
/// in order.
fn other_frames(id: u32) -> Vec<(Case, Vec<u8>)> {
    let b = |port| {
        FrameBuilder::ipv4(SRC4, DST4)
            .frag_id(id & 0xFFFF)
            .udp(40000, port, &payload(SIZE, id))
    };
    let mut out = Vec::new();
    let mut reversed = b(PORT).fragments(MTU);
    reversed.reverse();
    let last = reversed.len() - 1;
    for (i, f) in reversed.into_iter().enumerate() {
        out.push((
            if i == last {
                Case::FirstAfterEarly
            } else {
                Case::Early
            },
            f,
        ));
    }
    let disabled = FrameBuilder::ipv4(SRC4, [198, 18, 250, 3])
        .frag_id(id & 0xFFFF)
        .udp(40000, OTHER_PORT, &payload(SIZE, id))
        .fragments(MTU);
    for (i, f) in disabled.into_iter().enumerate() {
        out.push((
            if i == 0 {
                Case::DisabledFirst
            } else {
                Case::DisabledLater
            },
            f,
        ));
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(
    object: &Path,
    agent_example: Option<&Path>,
    s: &Settings,
) -> Result<(FragmentResults, Vec<Row>)> {
    let floor = bpf::load_xdp_pass().context("loading the XDP_PASS floor program")?;
    let mut k = load(object)?;
    let fd = k.fd()?;
    let cpu = sut_cpu();
    let cases = with_cpu(cpu, || measure(&mut k, fd, floor.as_raw_fd(), s))?;
    let agent = match agent_example {
        Some(bin) => Some(agent(bin, s)?),
        None => None,
    };
    let rows = rows(&cases, agent.as_ref());
    Ok((
        FragmentResults {
            method: "one BPF_PROG_TEST_RUN call per frame (repeat 1) on one pinned CPU, the kernel's own duration of the run; floor = XDP_PASS over the same frame, alternating; per case the median over the round's calls, spread over rounds",
            cpu,
            cases,
            agent,
        },
        rows,
    ))
}

fn measure(k: &mut Loaded, fd: i32, floor: i32, s: &Settings) -> Result<Vec<CaseResult>> {
    // Per case: per round, the calls' durations.
    let mut prog: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); s.rounds]; Case::ALL.len()];
    let mut flr = prog.clone();
    let idx = |c: Case| Case::ALL.iter().position(|x| *x == c).expect("a case");
    // Identifications must not repeat within the program's entry life (a
    // second), nor wrap within the run: 16 bits, two datagrams each.
    ensure!(
        s.rounds * s.datagrams * 2 < 65_536,
        "too many datagrams for distinct IPv4 identifications"
    );
    // Warm the JIT images and caches, untimed.
    for (_, f) in datagram_frames(65_535) {
        bpf::test_run(fd, &f, 1)?;
        bpf::test_run(floor, &f, 1)?;
    }
    kernel::drain(k);
    let mut written = 0u64;
    for round in 0..s.rounds {
        check_interrupted()?;
        for i in 0..s.datagrams {
            let id = ((round * s.datagrams + i) * 2) as u32;
            let mut frames = datagram_frames(id);
            frames.extend(other_frames(id + 1));
            for (j, (case, f)) in frames.iter().enumerate() {
                // Alternate which runs first.
                let (a, b) = if (i + j) % 2 == 0 {
                    (fd, floor)
                } else {
                    (floor, fd)
                };
                let ra = bpf::test_run(a, f, 1)?;
                let rb = bpf::test_run(b, f, 1)?;
                let (p, fl) = if a == fd { (ra, rb) } else { (rb, ra) };
                if p.retval != 2 {
                    bail!("{}: returned {} (expected XDP_PASS)", case.name(), p.retval);
                }
                prog[idx(*case)][round].push(f64::from(p.kernel_ns));
                flr[idx(*case)][round].push(f64::from(fl.kernel_ns));
            }
            if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
                written += kernel::drain(k).0;
            }
        }
        written += kernel::drain(k).0;
    }
    // Per datagram set: the whole one, six fragments in order, five early
    // ones and the first after them; none to the disabled port.
    let want = (s.rounds * s.datagrams * (1 + 6 + 6)) as u64;
    ensure!(
        written == want,
        "{written} records written where {want} were expected (ring full, or the fragment path not installed?)"
    );
    let mut out = Vec::new();
    for (i, case) in Case::ALL.iter().enumerate() {
        let p: Vec<f64> = prog[i].iter().map(|v| median(&mut v.clone())).collect();
        let f: Vec<f64> = flr[i].iter().map(|v| median(&mut v.clone())).collect();
        let over: Vec<f64> = p.iter().zip(&f).map(|(a, b)| a - b).collect();
        let r = CaseResult {
            name: case.name().to_string(),
            program_ns: Summary::of(&p),
            floor_ns: Summary::of(&f),
            over_floor_ns: Summary::of(&over),
            calls: prog[i].iter().map(Vec::len).sum(),
        };
        eprintln!(
            "bench: fragments: {:<58} {:>7.1} ns (±{:.0}%), floor {:>5.1} ns, over it {:>6.1} ns",
            r.name,
            r.program_ns.median,
            r.program_ns.spread_pct(),
            r.floor_ns.median,
            r.over_floor_ns.median
        );
        out.push(r);
    }
    Ok(out)
}

fn agent(bin: &Path, s: &Settings) -> Result<AgentResult> {
    let v = proc::json_output(
        Command::new(bin)
            .env("N", s.agent_datagrams.to_string())
            .env("ROUNDS", s.agent_rounds.to_string())
            .env("SIZE", SIZE.to_string())
            .env("MTU", MTU.to_string()),
    )?;
    let list = |k: &str| -> Result<Vec<f64>> {
        v[k].as_array()
            .with_context(|| format!("no `{k}` in reassembly_speed's output"))?
            .iter()
            .map(|x| x.as_f64().context("not a number"))
            .collect()
    };
    let r = AgentResult {
        size: SIZE,
        fragments: v["fragments"].as_u64().unwrap_or(0) as usize,
        reassembled_ns: Summary::of(&list("reassembled_ns")?),
        whole_ns: Summary::of(&list("whole_ns")?),
    };
    eprintln!(
        "bench: fragments: agent CPU per {SIZE} B datagram: reassembled from {} fragments {:.0} ns (±{:.0}%), whole {:.0} ns",
        r.fragments,
        r.reassembled_ns.median,
        r.reassembled_ns.spread_pct(),
        r.whole_ns.median
    );
    Ok(r)
}

fn rows(cases: &[CaseResult], agent: Option<&AgentResult>) -> Vec<Row> {
    let whole = cases.iter().find(|c| c.name == Case::Whole.name());
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|c| {
            let unit = if c.name == Case::Whole.name() {
                "ns/packet"
            } else {
                "ns/fragment"
            };
            let mut row = Row::new(1, format!("kernel: {}", c.name), unit);
            row.ours = format!(
                "{:.1} {unit} (±{:.0}%)",
                c.program_ns.median,
                c.program_ns.spread_pct()
            );
            row.peer = format!("XDP_PASS floor {:.1} ns", c.floor_ns.median);
            row.ratio = Some(c.program_ns.median / c.floor_ns.median);
            row.ours_value = Some(c.program_ns.median);
            row.peer_value = Some(c.floor_ns.median);
            row.note = format!(
                "one run per BPF_PROG_TEST_RUN call, the kernel's own duration: {:.1} ns over the floor",
                c.over_floor_ns.median
            );
            if let Some(w) = whole.filter(|w| w.name != c.name) {
                row.note += &format!(
                    " (a whole 1,472 B datagram measured so: {:.1})",
                    w.over_floor_ns.median
                );
            }
            row
        })
        .collect();
    if let Some(a) = agent {
        let mut row = Row::new(
            1,
            format!(
                "agent CPU per {} B datagram reassembled from {} fragments (decode, reassemble, encode)",
                a.size, a.fragments
            ),
            "ns/datagram",
        );
        row.ours = format!(
            "{:.0} ns/datagram (±{:.0}%)",
            a.reassembled_ns.median,
            a.reassembled_ns.spread_pct()
        );
        row.peer = format!(
            "the same datagram from one whole record {:.0} ns",
            a.whole_ns.median
        );
        row.ratio = Some(a.reassembled_ns.median / a.whole_ns.median);
        row.ours_value = Some(a.reassembled_ns.median);
        row.peer_value = Some(a.whole_ns.median);
        row.note = "examples/reassembly_speed, this thread's CPU clock, no kernel".into();
        rows.push(row);
    }
    rows
}
