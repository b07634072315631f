//! CPU per packet at a fixed rate: what each contender costs the machine
//! for each packet it receives, and how many packets per second one core
//! would carry at that cost (capacity). Unlike the lossless-rate searches,
//! which on two CPUs end where the sender runs out of CPU, this measures
//! the contender and not the rig.
//!
//! A contender's cost is its own process's CPU time (user and system,
//! from the traffic's start to its exit: the agent's capture loop, its
//! encoding and its sink thread) plus its share of the kernel's receive
//! path. That share runs on the sender's CPU, in the sender thread's
//! context (the veth's NAPI poll, the XDP program, the ring write or the
//! copy into an AF_XDP socket, the host's stack for the socket and
//! tcpdump) or in `ksoftirqd/0`; the sender measures both while it sends
//! ([`Sent::cpu_s`], [`Sent::softirqd_cpu_s`]). The same sender at the
//! same rate into an XDP program that drops every frame at once
//! (`bpf::load_xdp_drop`, attached natively) is the baseline: what is
//! left over it is the contender's. Baseline and contenders run in
//! interleaved rounds; each figure is the median over the rounds.
//!
//! On a machine shared with other work the process figures stay honest
//! (they are the process's own CPU time); the kernel share can take in
//! softirq work of others that `ksoftirqd/0` ran during the step, which
//! shows as a spread between rounds.

use std::{os::fd::AsFd, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    bpf,
    capture::{self, Contender, Env, PORT, Step},
    proc::check_interrupted,
    report::{Row, Summary, thousands},
    traffic::{self, Sent},
};

pub struct Settings {
    pub sizes: Vec<usize>,
    /// Packets per second offered: well below every contender's lossless
    /// rate, so each one receives every packet.
    pub rate: u64,
    pub rounds: usize,
    pub step: Duration,
    pub contenders: Vec<Contender>,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        let contenders = vec![
            Contender::Agent,
            Contender::Tcpdump,
            Contender::AgentDrop,
            Contender::AgentXsk,
            Contender::Socket,
        ];
        if quick {
            Settings {
                sizes: vec![64, 1400],
                rate: 100_000,
                rounds: 1,
                step: Duration::from_secs(1),
                contenders,
            }
        } else {
            Settings {
                sizes: vec![64, 1400],
                rate: 200_000,
                rounds: 5,
                step: Duration::from_secs(3),
                contenders,
            }
        }
    }
}

/// The sender's CPU per packet sent, its thread and `ksoftirqd/0`, in µs.
fn sender_us(sent: &Sent) -> f64 {
    (sent.cpu_s + sent.softirqd_cpu_s) * 1e6 / sent.packets.max(1) as f64
}

/// One contender at one size, over the rounds.
#[derive(Debug, Serialize)]
pub struct Cost {
    pub contender: Contender,
    pub label: &'static str,
    pub payload: usize,
    pub rate: u64,
    /// The contender's process CPU per packet delivered (µs).
    pub process_us: Summary,
    /// The sender's CPU per packet with this contender, less the
    /// baseline's, round by round (µs): the contender's kernel share.
    pub kernel_us: Summary,
    /// `process_us + kernel_us`, round by round.
    pub total_us: Summary,
    /// Packets per second one core would carry at the median total.
    pub capacity_pps: f64,
    /// Rounds in which the contender lost more than 0.1%.
    pub lossy_rounds: usize,
    pub steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
pub struct CpuResults {
    pub method: &'static str,
    pub baseline: Vec<(usize, Vec<Sent>)>,
    pub costs: Vec<Cost>,
}

/// One step of the sender at `rate` into the XDP_DROP baseline.
fn baseline_step(env: &Env, frame: &[u8], rate: u64, secs: Duration) -> Result<Sent> {
    check_interrupted()?;
    let prog = bpf::load_xdp_drop().context("loading the XDP_DROP baseline")?;
    let ifindex = crate::netns::ifindex(&env.ns.host_if)
        .with_context(|| format!("interface {}", env.ns.host_if))?;
    let _link = bpf::attach_native(prog.as_fd(), ifindex)
        .with_context(|| format!("attaching the XDP_DROP baseline to {}", env.ns.host_if))?;
    let count = ((rate as f64 * secs.as_secs_f64()) as u64).max(1);
    let sent = env.sender.send(
        env.ns,
        frame,
        rate as f64,
        count,
        secs * 3 + Duration::from_secs(5),
    )?;
    eprintln!(
        "bench: cpu: {:<24} {:>4} B  sent {:>7.0} pps  sender {:.3} µs/packet",
        "baseline (XDP_DROP)",
        frame.len() - traffic::HEADERS,
        sent.pps,
        sender_us(&sent)
    );
    Ok(sent)
}

pub fn run(env: &Env, s: &Settings) -> Result<(CpuResults, Vec<Row>)> {
    let mut costs = Vec::new();
    let mut baselines = Vec::new();
    for &size in &s.sizes {
        let frame = traffic::udp_frame(env.ns, PORT, size);
        let mut base: Vec<Sent> = Vec::new();
        let mut steps: Vec<Vec<Step>> = vec![Vec::new(); s.contenders.len()];
        for _ in 0..s.rounds {
            base.push(baseline_step(env, &frame, s.rate, s.step)?);
            for (i, &who) in s.contenders.iter().enumerate() {
                let st = capture::step(env, who, &frame, s.rate, s.step)?;
                eprintln!(
                    "bench: cpu: {:<24} {size:>4} B  process {:.3} µs/packet  sender {:.3} µs/packet",
                    format!("{who:?}"),
                    st.cpu_us_per_packet,
                    sender_us(&st.sent)
                );
                steps[i].push(st);
            }
        }
        let base_us: Vec<f64> = base.iter().map(sender_us).collect();
        for (&who, steps) in s.contenders.iter().zip(steps) {
            let process: Vec<f64> = steps.iter().map(|st| st.cpu_us_per_packet).collect();
            // Round by round against that round's baseline.
            let kernel: Vec<f64> = steps
                .iter()
                .zip(&base_us)
                .map(|(st, b)| sender_us(&st.sent) - b)
                .collect();
            let total: Vec<f64> = process.iter().zip(&kernel).map(|(p, k)| p + k).collect();
            let total = Summary::of(&total);
            costs.push(Cost {
                contender: who,
                label: who.label(),
                payload: size,
                rate: s.rate,
                process_us: Summary::of(&process),
                kernel_us: Summary::of(&kernel),
                capacity_pps: 1e6 / total.median,
                total_us: total,
                lossy_rounds: steps.iter().filter(|st| !st.lossless).count(),
                steps,
            });
        }
        baselines.push((size, base));
    }
    let rows = rows(&costs, s);
    Ok((
        CpuResults {
            method: "contender process CPU (utime+stime from the traffic's start to its exit) per packet delivered, plus the sender thread's CPU and ksoftirqd/0's run time per packet sent, less the same with an XDP_DROP program attached natively (the baseline), round by round; medians over interleaved rounds",
            baseline: baselines,
            costs,
        },
        rows,
    ))
}

fn median_sent(c: &Cost) -> f64 {
    let sent: Vec<f64> = c.steps.iter().map(|st| st.sent.pps).collect();
    Summary::of(&sent).median
}

fn cost_text(c: &Cost) -> String {
    format!(
        "{:.2} µs (process {:.2} + kernel {:.2}) → {} pps/core",
        c.total_us.median,
        c.process_us.median,
        c.kernel_us.median,
        thousands(c.capacity_pps)
    )
}

fn rows(costs: &[Cost], s: &Settings) -> Vec<Row> {
    let find = |who: Contender, size: usize| {
        costs
            .iter()
            .find(|c| c.contender == who && c.payload == size)
    };
    let mut rows = Vec::new();
    for c in costs.iter().filter(|c| c.contender.is_agent()) {
        let Some(peer) = c.contender.peer().and_then(|p| find(p, c.payload)) else {
            continue;
        };
        let mut row = Row::new(
            2,
            format!(
                "CPU per packet at {} pps, {} B ({} vs {})",
                thousands(s.rate as f64),
                c.payload,
                c.contender.short(),
                peer.contender.short()
            ),
            "µs/packet",
        );
        row.ours = cost_text(c);
        row.peer = cost_text(peer);
        row.ours_value = Some(c.total_us.median);
        row.peer_value = Some(peer.total_us.median);
        row.ratio = Some(c.total_us.median / peer.total_us.median);
        row.ratio_note = "lower is better".into();
        row.note = format!(
            "limit: the rate asked, a fixed {} pps (the sender reached a median {} / {}); rounds with loss over 0.1%: ours {} of {n}, peer {} of {n} (its process figure is then per packet delivered); spread of the total ±{:.0}% / ±{:.0}%",
            thousands(s.rate as f64),
            thousands(median_sent(c)),
            thousands(median_sent(peer)),
            c.lossy_rounds,
            peer.lossy_rounds,
            c.total_us.spread_pct(),
            peer.total_us.spread_pct(),
            n = c.steps.len(),
        );
        rows.push(row);
    }
    if let (Some(xsk), Some(ring)) = (
        find(Contender::AgentXsk, 1400),
        find(Contender::AgentDrop, 1400),
    ) {
        let mut row = Row::new(
            2,
            format!(
                "AF_XDP consume vs the ring path, 1,400 B at {} pps: capacity per core",
                thousands(s.rate as f64)
            ),
            "packets/s per core",
        );
        row.ours = cost_text(xsk);
        row.peer = format!("ring path {}", cost_text(ring));
        row.ours_value = Some(xsk.capacity_pps);
        row.peer_value = Some(ring.capacity_pps);
        let ratio = xsk.capacity_pps / ring.capacity_pps;
        row.ratio = Some(ratio);
        row.ratio_note = "higher is better".into();
        let less = 1.0 - xsk.total_us.median / ring.total_us.median;
        row.note = format!(
            "{:.0}% {} CPU per packet than the ring path",
            less.abs() * 100.0,
            if less >= 0.0 { "less" } else { "more" }
        );
        row.target = Some("≥ 1.3× the ring path's capacity, or ≥ 30% less CPU per packet".into());
        row.met = Some(ratio >= 1.3 || less >= 0.3);
        rows.push(row);
    }
    rows
}
