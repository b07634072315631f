//! Scenario 2 — the whole agent's CPU per datagram for each payload
//! format, against base64 of the same payload in the same round: what a
//! port's format costs the process that runs it, where scenario 1's format
//! rows time the encoder alone.
//!
//! Each step starts the agent with `--format F` on the veth (native XDP,
//! stdout sink to /dev/null, as [`crate::capture`]'s agent), offers one
//! payload at a fixed rate well inside its lossless rate, and divides the
//! CPU time its threads ran from the traffic's start to 300 ms after its
//! end (capture loop, decoding, encoding, batching, the sink's writes; in
//! nanoseconds, from each thread's schedstat) by the entries it wrote.
//! The kernel's share (the XDP program and the ring write, on the sender's
//! CPU) is the same for every format and is left out, so the ratios are
//! the process's alone: the highest a user would see. Formats run in turn
//! within a round, rounds interleave, and each row is the median of the
//! per-round ratios.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use test_support::payloads;

use crate::{
    capture::{Env, PORT},
    contenders::{Agent, Sink},
    formats,
    proc::{check_interrupted, sleep},
    report::{Row, Summary, thousands},
    traffic::{self, HEADERS},
};

pub struct Settings {
    /// Datagrams per second offered.
    pub rate: u64,
    pub rounds: usize,
    pub step: Duration,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                rate: 50_000,
                rounds: 1,
                step: Duration::from_secs(1),
            }
        } else {
            Settings {
                rate: 100_000,
                rounds: 5,
                step: Duration::from_secs(3),
            }
        }
    }
}

/// The payloads and the formats each is sent to (base64 first: the
/// baseline of its rows).
fn cases() -> Vec<(&'static str, Vec<u8>, &'static [&'static str])> {
    vec![
        (
            "RFC 3164 syslog line",
            payloads::SYSLOG_3164.to_vec(),
            &["base64", "text", "hex", "syslog"],
        ),
        (
            "RFC 5424 line with structured data",
            payloads::SYSLOG_5424.to_vec(),
            &["base64", "syslog"],
        ),
        (
            "JSON document",
            payloads::JSON_DOC.to_vec(),
            &["base64", "json"],
        ),
        ("random payload", payloads::binary(), &["base64", "hex"]),
    ]
}

/// One step: the agent's process CPU per entry written (µs), and whether
/// it wrote every datagram offered (within 0.1%).
#[derive(Clone, Debug, Serialize)]
pub struct StepCost {
    pub us: f64,
    pub offered: u64,
    pub emitted: u64,
    pub lossless: bool,
}

#[derive(Debug, Serialize)]
pub struct FormatCost {
    pub payload: &'static str,
    pub bytes: usize,
    pub format: &'static str,
    pub us: Summary,
    pub base64_us: Summary,
    /// `us` / base64's, round by round.
    pub ratio: Summary,
    pub steps: Vec<StepCost>,
}

#[derive(Debug, Serialize)]
pub struct FormatCpuResults {
    pub method: &'static str,
    pub rate: u64,
    pub rounds: usize,
    pub costs: Vec<FormatCost>,
}

fn step(env: &Env, frame: &[u8], format: &str, s: &Settings) -> Result<StepCost> {
    check_interrupted()?;
    let agent = Agent::start_with(
        env.agent,
        &env.ns.host_if,
        PORT,
        &Sink::Null,
        &["--format", format],
    )?;
    let cpu0 = agent.threads_cpu_ns();
    let count = ((s.rate as f64 * s.step.as_secs_f64()) as u64).max(1);
    let sent = env.sender.send(
        env.ns,
        frame,
        s.rate as f64,
        count,
        s.step * 3 + Duration::from_secs(5),
    )?;
    // Time to write what is queued, then the CPU clocks are read before
    // the agent's shutdown.
    sleep(Duration::from_millis(300))?;
    let cpu_ns = agent.threads_cpu_ns() - cpu0;
    let c = agent.stop()?;
    let emitted = c.p("emitted");
    Ok(StepCost {
        us: cpu_ns as f64 / 1e3 / emitted.max(1) as f64,
        offered: sent.packets,
        emitted,
        lossless: emitted as f64 >= sent.packets as f64 * 0.999,
    })
}

pub fn run(env: &Env, s: &Settings) -> Result<(FormatCpuResults, Vec<Row>)> {
    let cases = cases();
    let frames: Vec<Vec<u8>> = cases
        .iter()
        .map(|(_, payload, _)| traffic::udp_frame_of(env.ns, PORT, payload))
        .collect();
    // steps[case][format][round]
    let mut steps: Vec<Vec<Vec<StepCost>>> = cases
        .iter()
        .map(|(_, _, formats)| vec![Vec::new(); formats.len()])
        .collect();
    for round in 0..s.rounds {
        for (c, (name, _, formats)) in cases.iter().enumerate() {
            for (f, format) in formats.iter().enumerate() {
                let st = step(env, &frames[c], format, s)?;
                eprintln!(
                    "bench: format cpu: round {} {name:<36} {format:<7} {:.3} µs/datagram ({} of {} written)",
                    round + 1,
                    st.us,
                    st.emitted,
                    st.offered
                );
                steps[c][f].push(st);
            }
        }
    }
    let mut costs = Vec::new();
    for ((name, _, formats), (frame, per_format)) in cases.iter().zip(frames.iter().zip(steps)) {
        let base: Vec<f64> = per_format[0].iter().map(|st| st.us).collect();
        for (format, steps) in formats.iter().zip(per_format).skip(1) {
            let us: Vec<f64> = steps.iter().map(|st| st.us).collect();
            let ratio: Vec<f64> = us.iter().zip(&base).map(|(a, b)| a / b).collect();
            costs.push(FormatCost {
                payload: name,
                bytes: frame.len() - HEADERS,
                format,
                us: Summary::of(&us),
                base64_us: Summary::of(&base),
                ratio: Summary::of(&ratio),
                steps,
            });
        }
    }
    let results = FormatCpuResults {
        method: "udp-agent --format F (XDP native, stdout sink to /dev/null): its threads' CPU time (schedstat) from the traffic's start to 300 ms after its end, per entry written, over base64's for the same payload in the same round; median of the per-round ratios",
        rate: s.rate,
        rounds: s.rounds,
        costs,
    };
    let rows = rows(&results);
    Ok((results, rows))
}

fn rows(r: &FormatCpuResults) -> Vec<Row> {
    r.costs
        .iter()
        .map(|c| {
            let mut row = Row::new(
                2,
                format!(
                    "agent CPU per datagram, format `{}`: {}-byte {}",
                    c.format, c.bytes, c.payload
                ),
                "µs/datagram",
            );
            formats::versus_base64(
                &mut row,
                c.format,
                (&c.us, &c.base64_us),
                c.ratio.median,
                ("µs", 2),
            );
            row.note = format!(
                "process CPU per entry written at {} datagrams/s (stdout sink to /dev/null; the kernel's share, the same for every format, left out), median of {} rounds (round ratios {:.2}–{:.2}); rounds that lost datagrams: {}",
                thousands(r.rate as f64),
                c.steps.len(),
                c.ratio.min,
                c.ratio.max,
                c.steps.iter().filter(|st| !st.lossless).count()
            );
            row
        })
        .collect()
}
