//! `cargo xtask`: the one way to set up, build, run, lint and test udp-agent.

mod bench;
mod package;
mod readme;
mod toolchain;
mod venv;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use toolchain::RouteChoice;

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test udp-agent"
)]
struct Cli {
    /// Toolchain route for the eBPF build.
    #[arg(long, global = true, value_enum, default_value_t = RouteChoice::Auto)]
    route: RouteChoice,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find (and as root install) the eBPF toolchain; prints the route used.
    Setup,
    /// Build the agent (target/release/udp-agent); its build.rs builds the
    /// XDP object and embeds it.
    Build {
        /// Build the agent with the dev profile (the XDP object is always release).
        #[arg(long)]
        debug: bool,
    },
    /// Build only the XDP object (target/bpf/bpfel-unknown-none/release/udp-ebpf).
    BuildEbpf,
    /// Build, then run target/release/udp-agent with ARGS (needs root to attach).
    Run {
        /// Build and run the agent with the dev profile.
        #[arg(long)]
        debug: bool,
        /// Arguments for udp-agent (put them after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the XDP object and run all test rings that this user can run.
    ///
    /// Extra arguments go to `cargo test --workspace`, e.g.
    /// `cargo xtask test -- -p udp-agent -- --nocapture`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy --workspace --all-targets -D warnings`.
    Lint,
    /// Build the Debian package (target/package/udp-agent_*.deb): the agent,
    /// its systemd unit and sysusers file, /etc/default/udp-agent, manual
    /// pages and shell completions. Needs cargo-deb.
    Package,
    /// Benchmarks: kernel cost, lossless capture rate, forwarding rate and
    /// memory, against the XDP_PASS floor, tcpdump, a UDP socket and the
    /// article's script (needs root). Writes target/bench/results.json.
    Bench {
        /// Short runs (under two minutes): the CI smoke test.
        #[arg(long)]
        quick: bool,
    },
    /// Write the README's Performance table from a full benchmark's
    /// target/bench/results.json (`cargo xtask bench` does this itself).
    Readme,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(cli.route),
        Cmd::Build { debug } => build(cli.route, debug).map(|bin| {
            println!("built: {}", bin.display());
        }),
        Cmd::BuildEbpf => ebpf(cli.route).map(|_| ()),
        Cmd::Run { debug, args } => run(cli.route, debug, &args),
        Cmd::Test { args } => test(cli.route, &args),
        Cmd::Lint => lint(cli.route),
        Cmd::Package => package::package(cli.route).map(|deb| {
            println!("package: {}", deb.display());
        }),
        Cmd::Bench { quick } => bench::bench(cli.route, quick),
        Cmd::Readme => {
            let root = root();
            readme::update(
                &root.join("README.md"),
                &host_target_dir(&root).join("bench").join("results.json"),
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The cargo that runs xtask (set by `cargo run`), for host builds.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// The host target directory, honouring CARGO_TARGET_DIR like cargo does.
fn host_target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// A shell-like rendering of a command, with the variables it sets.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        s += &format!("(cd {}) ", dir.display());
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s += &format!("{}={} ", k.to_string_lossy(), quote(&v.to_string_lossy()));
        }
    }
    s += &cmd.get_program().to_string_lossy();
    for a in cmd.get_args() {
        s.push(' ');
        s += &quote(&a.to_string_lossy());
    }
    s
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run a command with inherited stdio; error if it fails.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn setup(route: RouteChoice) -> Result<()> {
    let route = toolchain::ensure(route)?;
    toolchain::report(&route);
    println!("setup: OK");
    Ok(())
}

/// Toolchain checks + the XDP object; returns its absolute path.
fn ebpf(route: RouteChoice) -> Result<PathBuf> {
    let route = toolchain::ensure(route)?;
    println!("ebpf: route {route}");
    toolchain::build_ebpf(&root(), &route)
}

/// The XDP object without its `kernel-log` feature (the bench's baseline
/// for what the log costs when off).
fn ebpf_without_log(route: RouteChoice) -> Result<PathBuf> {
    let route = toolchain::ensure(route)?;
    toolchain::build_ebpf_without_log(&root(), &route)
}

/// A host cargo command whose udp-agent build script builds the XDP object
/// with `route`, which is checked (and as root installed) first.
fn cargo_with_ebpf(route: RouteChoice) -> Result<Command> {
    let found = toolchain::ensure(route)?;
    println!("ebpf: route {found}");
    let mut cmd = cargo();
    let (key, value) = route.env();
    cmd.current_dir(root()).env(key, value);
    Ok(cmd)
}

fn build(route: RouteChoice, debug: bool) -> Result<PathBuf> {
    let root = root();
    let mut cmd = cargo_with_ebpf(route)?;
    cmd.args(["build", "-p", "udp-agent"]);
    if !debug {
        cmd.arg("--release");
    }
    run_checked(&mut cmd).context("building udp-agent failed; see the compiler output above")?;
    let bin = host_target_dir(&root)
        .join(if debug { "debug" } else { "release" })
        .join("udp-agent");
    if !bin.is_file() {
        bail!("cargo reported success but {} is missing", bin.display());
    }
    Ok(bin)
}

fn run(route: RouteChoice, debug: bool, args: &[String]) -> Result<()> {
    let bin = build(route, debug)?;
    if !is_root() {
        eprintln!(
            "note: udp-agent loads and attaches an XDP program, which needs root \
             (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON). If it fails, run:\n    sudo {}",
            describe(Command::new(&bin).args(args))
        );
    }
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    println!("$ {}", describe(&cmd));
    // exec: the agent's exit code and signals are ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not execute {}", bin.display()))
}

const BPFFS: &str = "/sys/fs/bpf";

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace().skip(1);
            f.next() == Some(BPFFS) && f.next() == Some("bpf")
        })
    })
}

fn ensure_bpffs() {
    if bpffs_mounted() {
        return;
    }
    let _ = fs::create_dir_all(BPFFS);
    if let Err(e) = run_checked(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])) {
        eprintln!(
            "warning: bpffs is not mounted at {BPFFS} and mounting it failed ({e:#}); \
             tests that pin maps will fail. Mount it with: mount -t bpf bpf {BPFFS}"
        );
    }
}

fn test(route: RouteChoice, args: &[String]) -> Result<()> {
    let root = root();
    let mut cmd = cargo_with_ebpf(route)?;
    let root_user = is_root();
    if root_user {
        ensure_bpffs();
    }
    let python = match venv::ensure_venv(&root) {
        Ok(venv) => Some(venv.join("bin").join("python")),
        Err(e) => {
            eprintln!("warning: no Python venv for the network ring, its tests will skip: {e:#}");
            None
        }
    };

    println!("== test rings ==");
    let ring = |name: &str, what: &str, verdict: &str| {
        println!("  {name:<8} {what:<42} {verdict}");
    };
    ring("host", "unprivileged: parse, encode, batch, retry", "RUN");
    if root_user {
        ring("kernel", "XDP object under BPF_PROG_TEST_RUN", "RUN");
        ring(
            "network",
            "netns + veth + agent + moto endpoint",
            if python.is_some() {
                "RUN"
            } else {
                "RUN (tests needing moto SKIP: no venv, see warning above)"
            },
        );
        println!("  bpffs mounted at {BPFFS}: {}", bpffs_mounted());
    } else {
        ring(
            "kernel",
            "XDP object under BPF_PROG_TEST_RUN",
            "SKIP (not root: loading BPF programs needs euid 0)",
        );
        ring(
            "network",
            "netns + veth + agent + moto endpoint",
            "SKIP (not root: netns, veth and XDP attach need euid 0)",
        );
        println!("  to run every ring: sudo -E env PATH=\"$PATH\" cargo xtask test");
    }
    if let Some(p) = &python {
        println!("  python for tests: {}", p.display());
    }

    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    if let Some(p) = &python {
        cmd.env("UDP_AGENT_TEST_PYTHON", p);
    }
    run_checked(&mut cmd).context("tests failed; see the output above")?;
    println!("test: OK");
    Ok(())
}

fn lint(route: RouteChoice) -> Result<()> {
    let root = root();
    let mut failed = Vec::new();

    let mut fmt = cargo();
    fmt.current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]);
    if let Err(e) = run_checked(&mut fmt) {
        eprintln!("lint: {e:#}");
        failed.push("cargo fmt --all --check (fix: cargo fmt --all)");
    }
    let mut fmt_ebpf = cargo();
    fmt_ebpf.current_dir(&root).args([
        "fmt",
        "--manifest-path",
        "udp-ebpf/Cargo.toml",
        "--",
        "--check",
    ]);
    if let Err(e) = run_checked(&mut fmt_ebpf) {
        eprintln!("lint: {e:#}");
        failed.push(
            "cargo fmt --check for udp-ebpf (fix: cargo fmt --manifest-path udp-ebpf/Cargo.toml)",
        );
    }

    // udp-agent's build.rs builds the XDP object, so clippy needs the
    // toolchain.
    let mut clippy = cargo_with_ebpf(route)?;
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    if let Err(e) = run_checked(&mut clippy) {
        eprintln!("lint: {e:#}");
        failed.push("cargo clippy --workspace --all-targets -- -D warnings");
    }

    if !failed.is_empty() {
        bail!("lint failed:\n  {}", failed.join("\n  "));
    }
    println!("lint: OK");
    Ok(())
}
