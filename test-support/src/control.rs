//! `udp-agent ports`/`stats` against a running agent, through its pin
//! directory.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Output, Stdio},
};

use serde_json::Value;

use crate::{TIMEOUT, agent::agent_command, wait_until};

/// Runs `udp-agent <group> --pin-dir <pin_dir> <rest…>` to completion,
/// where `args` is `[group, rest…]` (e.g. `["ports", "add", "514"]`).
///
/// `--pin-dir` goes right after the command group (`ports`, `stats`), the
/// one place the CLI accepts it for every subcommand.
pub fn ctl(pin_dir: &Path, args: &[&str]) -> Output {
    let (group, rest) = args.split_first().expect("a command");
    agent_command()
        .arg(group)
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running udp-agent {}: {e}", args.join(" ")))
}

/// Like [`ctl`], panicking with its output unless it succeeds; returns
/// stdout.
pub fn ctl_ok(pin_dir: &Path, args: &[&str]) -> String {
    let out = ctl(pin_dir, args);
    if !out.status.success() {
        panic!(
            "`udp-agent {}` with --pin-dir {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            pin_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `udp-agent ports list`, one port or range per entry (the first word of
/// each line; the rest is the port's limit and action).
pub fn ports_list(pin_dir: &Path) -> Vec<String> {
    ctl_ok(pin_dir, &["ports", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `udp-agent stats --json`: the kernel counters of a running agent.
pub fn stats(pin_dir: &Path) -> BTreeMap<String, u64> {
    let text = ctl_ok(pin_dir, &["stats", "--json"]);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("`stats --json` printed {text:?}: {e}"));
    v["counters"]
        .as_object()
        .unwrap_or_else(|| panic!("`stats --json` printed {text:?}, not an object"))
        .iter()
        .map(|(k, v)| {
            let n = v
                .as_u64()
                .unwrap_or_else(|| panic!("counter {k} = {v} is not a number"));
            (k.clone(), n)
        })
        .collect()
}

/// One kernel counter, `0` if `stats` does not list it.
pub fn counter(pin_dir: &Path, name: &str) -> u64 {
    stats(pin_dir).get(name).copied().unwrap_or(0)
}

/// Waits until kernel counter `name` reaches at least `target` and returns
/// its value then (which a test can compare for equality).
pub fn wait_counter(pin_dir: &Path, name: &str, target: u64) -> u64 {
    wait_until(
        TIMEOUT,
        &format!("kernel counter {name} >= {target}"),
        || {
            let v = counter(pin_dir, name);
            (v >= target).then_some(v)
        },
        || format!("{:?}", stats(pin_dir)),
    )
}
