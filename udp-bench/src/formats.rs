//! Scenario 1 — the encoder's CPU per datagram for each payload format,
//! against base64 of the same payload in the same run (the whole agent's:
//! [`crate::format_cpu`]): udp-agent's
//! `examples/format_speed` (encode the datagram into its entry and write
//! the entry's line, on this thread's CPU clock, formats interleaved round
//! by round), run as a child process with `JSON=1`.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    proc,
    report::{Row, Summary},
};

/// Datagrams per round and rounds.
pub struct Settings {
    pub datagrams: usize,
    pub rounds: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                datagrams: 5_000,
                rounds: 5,
            }
        } else {
            Settings {
                datagrams: 20_000,
                rounds: 15,
            }
        }
    }
}

#[derive(Deserialize)]
struct Output {
    cpu: String,
    rows: Vec<OutputRow>,
}

#[derive(Deserialize)]
struct OutputRow {
    payload: String,
    bytes: usize,
    format: String,
    packed: bool,
    ns: Vec<f64>,
    base64_ns: Vec<f64>,
    entry_bytes: f64,
    per_entry: f64,
}

#[derive(Debug, Serialize)]
pub struct FormatResult {
    pub payload: String,
    pub bytes: usize,
    pub format: String,
    pub packed: bool,
    pub ns: Summary,
    pub base64_ns: Summary,
    /// ns / base64 ns, round by round.
    pub ratio: Summary,
    pub entry_bytes_per_datagram: f64,
    pub datagrams_per_entry: f64,
}

#[derive(Debug, Serialize)]
pub struct FormatResults {
    pub cpu: String,
    pub datagrams: usize,
    pub rounds: usize,
    pub rows: Vec<FormatResult>,
}

pub fn run(bin: &Path, s: &Settings) -> Result<(FormatResults, Vec<Row>)> {
    let o: Output = serde_json::from_value(proc::json_output(
        Command::new(bin)
            .env("JSON", "1")
            .env("N", s.datagrams.to_string())
            .env("ROUNDS", s.rounds.to_string()),
    )?)
    .context("format_speed's JSON")?;
    let rows = o
        .rows
        .into_iter()
        .map(|r| {
            let ratio: Vec<f64> = r.ns.iter().zip(&r.base64_ns).map(|(a, b)| a / b).collect();
            FormatResult {
                payload: r.payload,
                bytes: r.bytes,
                format: r.format,
                packed: r.packed,
                ns: Summary::of(&r.ns),
                base64_ns: Summary::of(&r.base64_ns),
                ratio: Summary::of(&ratio),
                entry_bytes_per_datagram: r.entry_bytes,
                datagrams_per_entry: r.per_entry,
            }
        })
        .collect::<Vec<_>>();
    for r in &rows {
        eprintln!(
            "bench: formats: {:<12} {:>4} B {:<15} {:>5.0} ns/datagram, {:.2}× base64",
            r.payload,
            r.bytes,
            label(r),
            r.ns.median,
            r.ratio.median
        );
    }
    let results = FormatResults {
        cpu: o.cpu,
        datagrams: s.datagrams,
        rounds: s.rounds,
        rows,
    };
    let rows = table(&results);
    Ok((results, rows))
}

fn label(r: &FormatResult) -> String {
    if r.packed {
        format!("{} packed", r.format)
    } else {
        r.format.clone()
    }
}

/// What `format_speed` calls a payload, for a reader.
fn describe(payload: &str) -> &str {
    match payload {
        "syslog 3164" => "RFC 3164 syslog line",
        "syslog 5424" => "RFC 5424 line with structured data",
        "json" => "JSON document",
        "binary" => "random payload",
        other => other,
    }
}

/// A format's row against base64 of the same payload, lower is better:
/// the medians of `ours` and `base64` in `unit` with `decimals`, and
/// `ratio`, the median of the per-round ratios. Sets issue 16's goals:
/// `text` and `hex` within 1.2×, `syslog` and `json` within 2×; packing
/// base64 has none. (The whole agent's rows, in [`crate::format_cpu`], are
/// made so too.)
pub fn versus_base64(
    row: &mut Row,
    format: &str,
    (ours, base64): (&Summary, &Summary),
    ratio: f64,
    (unit, decimals): (&str, usize),
) {
    row.ours = format!(
        "{:.decimals$} {unit} (±{:.0}%)",
        ours.median,
        ours.spread_pct()
    );
    row.peer = format!("base64 {:.decimals$} {unit}", base64.median);
    row.ours_value = Some(ours.median);
    row.peer_value = Some(base64.median);
    row.ratio = Some(ratio);
    row.ratio_note = "lower is better".into();
    let target = match format {
        "text" | "hex" => 1.2,
        "syslog" | "json" => 2.0,
        _ => return,
    };
    row.target = Some(format!("≤ {target}× base64"));
    row.met = Some(ratio <= target);
}

fn table(r: &FormatResults) -> Vec<Row> {
    r.rows
        .iter()
        .filter(|f| f.format != "base64" || f.packed)
        .map(|f| {
            let mut row = Row::new(
                1,
                format!(
                    "encoder CPU per datagram, format `{}`: {}-byte {}",
                    label(f),
                    f.bytes,
                    describe(&f.payload)
                ),
                "ns/datagram",
            );
            versus_base64(
                &mut row,
                &f.format,
                (&f.ns, &f.base64_ns),
                f.ratio.median,
                ("ns", 0),
            );
            row.note = format!(
                "examples/format_speed: encode and write the line, this thread's CPU clock, median of {} interleaved rounds of {} (round ratios {:.2}–{:.2}); {:.0} entry bytes per datagram, {:.1} datagrams per entry",
                r.rounds,
                r.datagrams,
                f.ratio.min,
                f.ratio.max,
                f.entry_bytes_per_datagram,
                f.datagrams_per_entry
            );
            row
        })
        .collect()
}
