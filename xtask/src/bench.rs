//! `cargo xtask bench [--quick]`: build what the benchmark runs, then run
//! `udp-bench all`, which prints the summary table and writes
//! `target/bench/results.json` (and `results.md`).
//!
//! What is built: the XDP object and the release agent with it embedded
//! (exactly what `cargo xtask build` makes), the object again without its
//! `kernel-log` feature (in `target/bpf-no-log`), the agent's
//! `reassembly_speed` and `format_speed` examples, the `fake-eventbridge`
//! and `udp-bench`
//! binaries, and the Python venv with boto3 for the article's
//! script (`bench/article.py`). The benchmark needs root; `--quick` is the
//! CI smoke test (short runs, numbers not judged).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::toolchain::RouteChoice;
use crate::{cargo, host_target_dir, is_root, root, run_checked};

pub fn bench(route: RouteChoice, quick: bool) -> Result<()> {
    let started = Instant::now();
    let root = root();
    if !is_root() {
        bail!(
            "the benchmark loads BPF programs, creates network namespaces and attaches XDP, \
             which needs root. Run: sudo -E env PATH=\"$PATH\" cargo xtask bench{}",
            if quick { " --quick" } else { "" }
        );
    }
    let object = crate::ebpf(route)?;
    let without_log = crate::ebpf_without_log(route)?;
    let agent = crate::build(route, false)?;
    // The agent's reassembly and payload formats, measured in-process.
    let mut examples = crate::cargo_with_ebpf(route)?;
    examples.args([
        "build",
        "--release",
        "-p",
        "udp-agent",
        "--example",
        "reassembly_speed",
        "--example",
        "format_speed",
    ]);
    run_checked(&mut examples).context("building the agent's speed examples failed")?;
    let mut drivers = cargo();
    drivers.current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "udp-bench",
        "-p",
        "fake-eventbridge",
    ]);
    run_checked(&mut drivers).context("building the benchmark drivers failed")?;
    let release = host_target_dir(&root).join("release");
    crate::ensure_bpffs();
    let python = match crate::venv::ensure_venv(&root) {
        Ok(venv) => Some(venv.join("bin").join("python")),
        Err(e) => {
            eprintln!(
                "warning: no Python venv with boto3, so the article's script is not measured: {e:#}"
            );
            None
        }
    };
    let built = started.elapsed();

    let out = host_target_dir(&root).join("bench");
    let json = out.join("results.json");
    let mut cmd = Command::new(release.join("udp-bench"));
    cmd.current_dir(&root)
        .arg("all")
        .arg("--agent")
        .arg(&agent)
        .arg("--object")
        .arg(&object)
        .arg("--fake-eventbridge")
        .arg(release.join("fake-eventbridge"))
        .arg("--article")
        .arg(root.join("bench").join("article.py"))
        .arg("--reassembly-speed")
        .arg(release.join("examples").join("reassembly_speed"))
        .arg("--format-speed")
        .arg(release.join("examples").join("format_speed"))
        .arg("--object-without-log")
        .arg(&without_log)
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(out.join("results.md"))
        .arg("--command")
        .arg(if quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        });
    if let Some(py) = &python {
        cmd.arg("--python").arg(py);
    }
    if quick {
        cmd.arg("--quick");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let ran = Instant::now();
    let result = run_checked(&mut cmd);
    println!(
        "bench: {} in {:.0} s (building and checking {:.0} s, benchmark {:.0} s); results in {}",
        if result.is_ok() { "done" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        built.as_secs_f64(),
        ran.elapsed().as_secs_f64(),
        display(&json)
    );
    result.context("the benchmark failed; see its output above")?;
    if !quick {
        crate::readme::update(&root.join("README.md"), &json)?;
        println!("bench: README.md's Performance table now shows this run");
    }
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
