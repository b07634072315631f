//! `cargo xtask readme`: the README's Performance table, written from a
//! benchmark's `target/bench/results.json` between the README's
//! `performance:begin` and `performance:end` markers.
//!
//! The table keeps what a user compares (scenario, ours, peer, ratio) for
//! the rows in [`SHOWN`], and names the machine and the command; every
//! other row, and each row's notes (spread, what limited it), stay in
//! `results.md` and `bench/RESULTS.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

const BEGIN: &str = "<!-- performance:begin";

/// The rows a user reads first, by the start of their names: the cost of
/// a port that is off and of a capture, of the kernel log when off, of the
/// parsed formats against base64 (the encoder alone and the whole agent),
/// capture and forwarding rates
/// against the peers, delivery through the spool, and memory.
const SHOWN: &[&str] = &[
    "kernel: UDP to a disabled port",
    "kernel: enabled port, 64 B payload (IPv4)",
    "kernel: enabled port, 1,472 B payload (IPv4)",
    "kernel: --kernel-log off vs built without it, enabled port, 64 B",
    "encoder CPU per datagram, format `syslog`: 183-byte",
    "encoder CPU per datagram, format `json`",
    "agent CPU per datagram, format `syslog`: 183-byte",
    "agent CPU per datagram, format `json`",
    "lossless capture rate",
    "CPU per packet at 200,000 pps, 1400 B (udp-agent --action drop",
    "lossless forwarding rate, 64 B datagrams",
    "capture → acknowledged latency p99",
    "lossless forwarding rate, spool, fsync interval",
    "replay after an outage",
    "peak RSS while",
];
const END: &str = "<!-- performance:end -->";

/// Rewrites the table in `readme` from the results at `json`.
pub fn update(readme: &Path, json: &Path) -> Result<()> {
    let results = std::fs::read_to_string(json)
        .with_context(|| format!("reading {} (run `cargo xtask bench` first)", json.display()))?;
    let results: Value = serde_json::from_str(&results)
        .with_context(|| format!("{} is not a benchmark's results", json.display()))?;
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let new =
        splice(&text, &table(&results)?).with_context(|| format!("in {}", readme.display()))?;
    std::fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))
}

/// `text` with everything between the markers replaced by `table`.
fn splice(text: &str, table: &str) -> Result<String> {
    let Some(begin) = text.find(BEGIN) else {
        bail!("no `{BEGIN} …-->` marker");
    };
    let body = begin
        + text[begin..]
            .find("-->")
            .context("the begin marker is not closed")?
        + 3;
    let Some(end) = text[body..].find(END).map(|i| body + i) else {
        bail!("no `{END}` marker after the begin marker");
    };
    Ok(format!("{}\n{table}{}", &text[..body], &text[end..]))
}

/// The Markdown table and its caption.
fn table(results: &Value) -> Result<String> {
    let mode = results["mode"].as_str().unwrap_or("");
    if mode != "full" {
        bail!(
            "these results are from a `{mode}` run; the README shows a full one \
             (`cargo xtask bench`)"
        );
    }
    let machine = &results["machine"];
    let rows = results["rows"]
        .as_array()
        .context("the results have no rows")?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "One run of `{}` on {} vCPUs ({}), Linux {}, sender and agent on the same machine{}. \
         Higher is better for rates, lower for costs and memory.\n",
        results["command"].as_str().unwrap_or("cargo xtask bench"),
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("unknown CPU"),
        machine["kernel"].as_str().unwrap_or("?"),
        match results["revision"].as_str() {
            Some(rev) if !rev.is_empty() => format!(", of `{rev}`"),
            _ => String::new(),
        }
    );
    let _ = writeln!(s, "| scenario | udp-agent | peer | ratio |");
    let _ = writeln!(s, "|---|---|---|---|");
    let shown = |r: &&Value| {
        let name = r["name"].as_str().unwrap_or("");
        SHOWN.iter().any(|p| name.starts_with(p))
    };
    for r in rows.iter().filter(shown) {
        let ratio = match r["ratio"].as_f64() {
            Some(x) if x >= 100.0 => format!("{x:.0}×"),
            Some(x) if x >= 10.0 => format!("{x:.1}×"),
            Some(x) => format!("{x:.2}×"),
            None => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            cell(&r["name"]),
            cell(&r["ours"]),
            cell(&r["peer"]),
            ratio
        );
    }
    let _ = writeln!(
        s,
        "\nEvery row, with its spread and what limited it, is in `target/bench/results.md` \
         after a run; [bench/RESULTS.md](bench/RESULTS.md) has the analysis."
    );
    Ok(s)
}

/// A result string without its `<br><sub>` note, as one table cell.
fn cell(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    let s = s.split("<br>").next().unwrap_or("").trim();
    if s.is_empty() {
        "—".into()
    } else {
        s.replace('|', "\\|")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn results(mode: &str) -> Value {
        json!({
            "mode": mode,
            "command": "cargo xtask bench",
            "machine": {"nproc": 2, "cpu_model": "Intel(R) Xeon(R) Processor", "kernel": "6.18.0", "memory_mib": 24000},
            "rows": [
                {"name": "lossless capture rate, 64 B", "ours": "757,022 pps", "peer": "697,303 pps<br><sub>limit: the sender</sub>", "ratio": 1.0857, "ratio_note": "higher is better"},
                {"name": "peak RSS while | forwarding", "ours": "39.9 MiB", "peer": "", "ratio": null, "ratio_note": ""},
                {"name": "trafgen flood at full speed", "ours": "0.00%", "peer": "", "ratio": null, "ratio_note": ""},
                {"name": "lossless forwarding rate, 64 B datagrams vs article.py", "ours": "193,728 events/s", "peer": "900 events/s", "ratio": 215.25, "ratio_note": ""}
            ]
        })
    }

    #[test]
    fn the_table_keeps_each_rows_figures_without_their_notes() {
        let t = table(&results("full")).unwrap();
        assert!(
            t.contains("2 vCPUs (Intel(R) Xeon(R) Processor), Linux 6.18.0"),
            "{t}"
        );
        assert!(
            t.contains("| lossless capture rate, 64 B | 757,022 pps | 697,303 pps | 1.09× |"),
            "{t}"
        );
        assert!(
            t.contains("| peak RSS while \\| forwarding | 39.9 MiB | — | — |"),
            "{t}"
        );
        assert!(t.contains("| 900 events/s | 215× |"), "{t}");
        assert!(!t.contains("trafgen"), "a row not in SHOWN: {t}");
        assert!(!t.contains("<sub>"), "{t}");
    }

    #[test]
    fn a_quick_run_is_not_shown() {
        assert!(table(&results("quick")).is_err());
    }

    #[test]
    fn the_table_replaces_only_what_is_between_the_markers() {
        let readme = "# x\n\n## Performance\n\n<!-- performance:begin (generated) -->\nold\n<!-- performance:end -->\n\nafter\n";
        let out = splice(readme, "| new |\n").unwrap();
        assert_eq!(
            out,
            "# x\n\n## Performance\n\n<!-- performance:begin (generated) -->\n| new |\n<!-- performance:end -->\n\nafter\n"
        );
        // Idempotent: a second run finds the same markers.
        assert_eq!(splice(&out, "| new |\n").unwrap(), out);
        assert!(splice("no markers", "t").is_err());
    }
}
