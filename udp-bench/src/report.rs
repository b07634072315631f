//! Results: the summary table (markdown on stdout, JSON in a file) and the
//! statistics behind each number.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

/// Median and spread of several runs of one measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Summary {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            runs: values.to_vec(),
        }
    }

    /// Half the min–max range as a percentage of the median.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            return 0.0;
        }
        (self.max - self.min) / 2.0 / self.median * 100.0
    }
}

/// One line of the summary table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Which scenario (1–4) the row belongs to.
    pub scenario: u8,
    pub name: String,
    pub ours: String,
    pub peer: String,
    /// ours / peer (see `ratio_note` for which way is better).
    pub ratio: Option<f64>,
    pub ratio_note: String,
    /// The target for this row, if it has one.
    pub target: Option<String>,
    /// Whether the target was met (`None`: no target, or not measurable).
    pub met: Option<bool>,
    /// The raw numbers behind `ours` and `peer`.
    pub ours_value: Option<f64>,
    pub peer_value: Option<f64>,
    pub unit: String,
    pub note: String,
}

impl Row {
    pub fn new(scenario: u8, name: impl Into<String>, unit: &str) -> Row {
        Row {
            scenario,
            name: name.into(),
            ours: String::new(),
            peer: String::new(),
            ratio: None,
            ratio_note: String::new(),
            target: None,
            met: None,
            ours_value: None,
            peer_value: None,
            unit: unit.to_string(),
            note: String::new(),
        }
    }
}

impl Row {
    /// Two timings in ns set side by side, lower is better: `ours` and
    /// `peer` are the cells' words before each median (shown with its
    /// spread), `ratio` the caller's (run by run, or of the medians).
    pub fn ns_versus(&mut self, ours: (&str, &Summary), peer: (&str, &Summary), ratio: f64) {
        let cell = |(words, s): (&str, &Summary)| {
            format!("{words}{:.1} ns (±{:.0}%)", s.median, s.spread_pct())
        };
        self.ours = cell(ours);
        self.peer = cell(peer);
        self.ours_value = Some(ours.1.median);
        self.peer_value = Some(peer.1.median);
        self.ratio = Some(ratio);
        self.ratio_note = "lower is better".into();
    }
}

/// Machine the benchmark ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_mib: u64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let nproc = crate::proc::cpu_count();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Machine {
            nproc,
            cpu_model,
            kernel,
            memory_mib,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} CPUs ({}), {} MiB RAM, Linux {}",
            self.nproc, self.cpu_model, self.memory_mib, self.kernel
        )
    }
}

/// Everything a run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub command: String,
    /// What the agent binary says of itself (`udp-agent --version`: the
    /// release and the git commit it was built from).
    pub revision: String,
    pub machine: Machine,
    pub started_unix: u64,
    pub duration_s: f64,
    pub rows: Vec<Row>,
    /// Scenario details (per-run numbers, search steps, loss locations).
    pub kernel: serde_json::Value,
    pub kernel_log: serde_json::Value,
    pub fragments: serde_json::Value,
    pub formats: serde_json::Value,
    pub capture: serde_json::Value,
    /// CPU per packet at a fixed rate (`cpu`).
    pub cpu: serde_json::Value,
    /// The whole agent's CPU per datagram for each payload format (`cpu`).
    pub format_cpu: serde_json::Value,
    pub forward: serde_json::Value,
    pub memory: serde_json::Value,
    /// Scenarios that could not run, and why.
    pub skipped: Vec<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| # | scenario | ours | peer | ratio (ours/peer) | target |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = match r.ratio {
                Some(x) if x >= 100.0 => format!("{x:.0}×"),
                Some(x) if x >= 10.0 => format!("{x:.1}×"),
                Some(x) => format!("{x:.2}×"),
                None => "—".into(),
            };
            let ratio = if r.ratio_note.is_empty() {
                ratio
            } else {
                format!("{ratio} ({})", r.ratio_note)
            };
            let target = match (&r.target, r.met) {
                (Some(t), Some(true)) => format!("{t} ✅"),
                (Some(t), Some(false)) => format!("{t} ❌"),
                (Some(t), None) => t.clone(),
                (None, _) => String::new(),
            };
            let ours = if r.note.is_empty() {
                r.ours.clone()
            } else {
                format!("{}<br><sub>{}</sub>", r.ours, r.note)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario, r.name, ours, r.peer, ratio, target
            );
        }
        s
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).expect("serialising the report");
        fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// `1234567.0` → `1,234,567`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A latency in nanoseconds, in the unit that reads best.
pub fn duration_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "—".into()
    } else if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.spread_pct(), 50.0);
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_ns(1_500_000.0), "1.5 ms");
        assert_eq!(duration_ns(250.0), "250 ns");
    }
}
