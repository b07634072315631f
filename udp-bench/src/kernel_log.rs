//! Scenario 1 — what `--kernel-log` costs when it is off: the agent's XDP
//! object loaded with the log off (the default), against the same program
//! built without the `kernel-log` feature, so that no log code, map or
//! switch is in it. Both run under `BPF_PROG_TEST_RUN` on one pinned CPU,
//! alternating call by call over the same frame, for the paths that test
//! the switch: a port that is not captured, a capture (the first-frame
//! test) and a malformed frame (the malformed-frame test).
//!
//! The row's figure is the ratio of the two programs' CPU time per packet,
//! run by run; the instruction counts after verification (xlated bytes)
//! show what the verifier left of the log code.

use std::path::Path;

use anyhow::{Result, ensure};
use aya::programs::Xdp;
use serde::Serialize;
use udp_ebpf_common::{counter, frame::FrameBuilder};

use crate::{
    kernel::{self, Case, Loaded, Settings},
    proc::{check_interrupted, sut_cpu, with_cpu},
    report::{Row, Summary},
};

/// The target: the log switched off costs at most this much over no log at
/// all, which is what the run-to-run noise of these calls allows.
const TARGET_RATIO: f64 = 1.05;

#[derive(Debug, Serialize)]
pub struct KernelLogResults {
    pub object: String,
    pub object_without_log: String,
    pub cpu: usize,
    pub runs: usize,
    /// Bytes of the verified program (`xlated_prog_len`), with the log
    /// present but off, and built without it.
    pub xlated_bytes_log_off: Option<u32>,
    pub xlated_bytes_without_log: Option<u32>,
    pub cases: Vec<KernelLogCase>,
}

#[derive(Debug, Serialize)]
pub struct KernelLogCase {
    pub name: String,
    pub repeat: u32,
    /// ns per packet of the agent's object, log off.
    pub log_off_ns: Summary,
    /// ns per packet of the object built without the log.
    pub without_log_ns: Summary,
    /// log_off / without_log, run by run.
    pub ratio: Summary,
}

/// The cases: the kernel bench's frames whose paths test the switch, and
/// a malformed frame (its IPv4 total length runs past the frame).
fn cases() -> Vec<Case> {
    let wanted = [
        "UDP to a disabled port (IPv4, 64 B)",
        "enabled port, 64 B payload (IPv4)",
        "enabled port, 1,472 B payload (IPv4)",
    ];
    let mut out: Vec<Case> = kernel::cases()
        .into_iter()
        .filter(|c| wanted.contains(&c.name))
        .collect();
    let mut frame = FrameBuilder::ipv4(kernel::SRC4, kernel::DST4)
        .udp(40000, kernel::PORT, &[0x5a; 64])
        .build();
    // Ethernet header (14 B), then the IPv4 total length at bytes 2..4.
    frame[16..18].copy_from_slice(&1500u16.to_be_bytes());
    out.push(Case::uncaptured(
        "malformed frame (IPv4 length past the frame)",
        frame,
    ));
    out
}

fn xlated(k: &Loaded) -> Option<u32> {
    let prog: &Xdp = k.ebpf.program("udp_capture")?.try_into().ok()?;
    prog.info().ok()?.size_translated()
}

pub fn run(
    object: &Path,
    without_log: &Path,
    s: &Settings,
) -> Result<(KernelLogResults, Vec<Row>)> {
    for o in [object, without_log] {
        ensure!(o.is_file(), "XDP object {} missing", o.display());
    }
    let mut on = Loaded::load(object, s.ring_bytes)?;
    let mut off = Loaded::load(without_log, s.ring_bytes)?;
    // The two objects must be the two builds: the log's map is in one only.
    ensure!(
        on.ebpf.map("LOGGED_IFACES").is_some(),
        "{} has no kernel log (LOGGED_IFACES): not the agent's object",
        object.display()
    );
    ensure!(
        off.ebpf.map("LOGGED_IFACES").is_none(),
        "{} has the kernel log: not built without the `kernel-log` feature",
        without_log.display()
    );
    let cpu = sut_cpu();
    let cases = with_cpu(cpu, || measure(&mut on, &mut off, s))?;
    let result = KernelLogResults {
        object: object.display().to_string(),
        object_without_log: without_log.display().to_string(),
        cpu,
        runs: s.runs,
        xlated_bytes_log_off: xlated(&on),
        xlated_bytes_without_log: xlated(&off),
        cases,
    };
    let rows = rows(&result);
    Ok((result, rows))
}

fn measure(on: &mut Loaded, off: &mut Loaded, s: &Settings) -> Result<Vec<KernelLogCase>> {
    let (fd_on, fd_off) = (on.fd()?, off.fd()?);
    let mut out = Vec::new();
    for case in cases() {
        check_interrupted()?;
        if !s.wants(&case) {
            continue;
        }
        // Warm caches and both JIT images, untimed.
        for (k, fd) in [(&mut *on, fd_on), (&mut *off, fd_off)] {
            kernel::run_checked(&case, fd, 1000)?;
            kernel::drain(k);
        }
        let (calls, per_call) = s.calls(&case);
        let malformed_before = [
            on.counter(counter::MALFORMED)?,
            off.counter(counter::MALFORMED)?,
        ];
        let full_before = [on.ring_full()?, off.ring_full()?];
        let mut records = [0u64; 2];
        let (mut ns_on, mut ns_off, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..s.runs {
            check_interrupted()?;
            let mut sum = [0.0f64; 2];
            for c in 0..calls {
                // Alternate which runs first.
                for j in 0..2 {
                    let which = (i + c as usize + j) % 2;
                    let (k, fd) = if which == 0 {
                        (&mut *on, fd_on)
                    } else {
                        (&mut *off, fd_off)
                    };
                    sum[which] += kernel::run_checked(&case, fd, per_call)?.cpu_ns;
                    records[which] += kernel::drain(k).0;
                }
            }
            let n = f64::from(calls);
            ns_on.push(sum[0] / n);
            ns_off.push(sum[1] / n);
            ratio.push(sum[0] / sum[1]);
        }
        let repeat = calls * per_call;
        let want = u64::from(repeat) * s.runs as u64;
        if case.captured_payload.is_some() {
            let full = [
                on.ring_full()? - full_before[0],
                off.ring_full()? - full_before[1],
            ];
            ensure!(
                records == [want; 2] && full == [0; 2],
                "{}: records {records:?}, ring_full {full:?} for {want} captures each",
                case.name
            );
        } else {
            ensure!(records == [0; 2], "{}: captured {records:?}", case.name);
        }
        if case.name.starts_with("malformed") {
            let counted = [
                on.counter(counter::MALFORMED)? - malformed_before[0],
                off.counter(counter::MALFORMED)? - malformed_before[1],
            ];
            ensure!(
                counted == [want; 2],
                "{}: counted malformed {counted:?} for {want} frames each",
                case.name
            );
        }
        let r = KernelLogCase {
            name: case.name.to_string(),
            repeat,
            log_off_ns: Summary::of(&ns_on),
            without_log_ns: Summary::of(&ns_off),
            ratio: Summary::of(&ratio),
        };
        eprintln!(
            "bench: kernel log off vs built without: {:<46} {:>7.1} ns vs {:>7.1} ns, ratio {:.3} (runs {:.3}–{:.3})",
            r.name,
            r.log_off_ns.median,
            r.without_log_ns.median,
            r.ratio.median,
            r.ratio.min,
            r.ratio.max
        );
        out.push(r);
    }
    Ok(out)
}

fn rows(r: &KernelLogResults) -> Vec<Row> {
    let size = match (r.xlated_bytes_log_off, r.xlated_bytes_without_log) {
        (Some(a), Some(b)) => {
            format!("; verified program {a} B with the log off, {b} B built without it")
        }
        _ => String::new(),
    };
    r.cases
        .iter()
        .map(|c| {
            let mut row = Row::new(
                1,
                format!("kernel: --kernel-log off vs built without it, {}", c.name),
                "ns/packet",
            );
            row.ns_versus(
                ("log off ", &c.log_off_ns),
                ("without the log ", &c.without_log_ns),
                c.ratio.median,
            );
            row.target = Some(format!("≤ {TARGET_RATIO}×"));
            row.met = Some(c.ratio.median <= TARGET_RATIO);
            row.note = format!(
                "median of {} interleaved runs of {} packets; run ratios {:.3}–{:.3}{size}",
                r.runs, c.repeat, c.ratio.min, c.ratio.max
            );
            row
        })
        .collect()
}
