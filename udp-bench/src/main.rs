//! `udp-bench`: the benchmark drivers behind `cargo xtask bench`.
//!
//! `udp-bench all` runs the four scenarios of the benchmark and writes the
//! summary table (markdown on stdout, JSON to `--json`):
//!
//! 1. [`kernel`]: the XDP program's cost per packet under
//!    `BPF_PROG_TEST_RUN`, against an XDP_PASS floor; [`kernel_log`]: what
//!    `--kernel-log` costs when off; [`fragments`]: its cost per IP
//!    fragment, and the agent's CPU per reassembled datagram; [`formats`]:
//!    the agent's CPU per datagram for each payload format;
//! 2. [`capture`]: the highest lossless capture rate over a veth pair,
//!    against tcpdump and a plain UDP socket;
//! 3. [`forward`]: the forwarding rate and latency to a local PutEvents
//!    endpoint, against the article's script;
//! 4. memory: the agent's peak RSS in each scenario and over a soak.
//!
//! The other subcommands are the pieces `all` runs as separate processes
//! (`sock-reader`), or useful alone (`kernel`, `endpoint`).
//!
//! Everything here needs root: BPF programs, network namespaces, XDP.

mod bpf;
mod capture;
mod contenders;
mod cpu;
mod format_cpu;
mod formats;
mod forward;
mod fragments;
mod kernel;
mod kernel_log;
mod netns;
mod proc;
mod report;
mod search;
mod sockread;
mod traffic;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::report::{Machine, Report, Row};

#[derive(Parser)]
#[command(
    name = "udp-bench",
    about = "Benchmarks of udp-agent (run through `cargo xtask bench`)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark scenarios and write the results.
    All(Box<AllArgs>),
    /// Scenario 1 only: the XDP object under BPF_PROG_TEST_RUN (JSON on stdout).
    Kernel {
        /// The XDP object (target/bpf/bpfel-unknown-none/release/udp-ebpf).
        #[arg(long)]
        object: PathBuf,
        #[arg(long)]
        quick: bool,
        /// Only the cases whose name contains this.
        #[arg(long)]
        case: Option<String>,
        /// Repetitions per run (overrides the default).
        #[arg(long)]
        repeat: Option<u32>,
        /// Ring buffer size in bytes (default: the agent's, 8 MiB).
        #[arg(long)]
        ring_bytes: Option<u32>,
        /// Measurements per case (overrides the default).
        #[arg(long)]
        runs: Option<usize>,
    },
    /// Scenario 1's `--kernel-log` rows only: the agent's object with the
    /// log off against the object built without it (JSON on stdout).
    KernelLog {
        #[arg(long)]
        object: PathBuf,
        /// The object built without the `kernel-log` feature.
        #[arg(long)]
        object_without_log: PathBuf,
        #[arg(long)]
        quick: bool,
        /// Measurements per case (overrides the default).
        #[arg(long)]
        runs: Option<usize>,
    },
    /// Scenario 1's format rows only: udp-agent's `examples/format_speed`
    /// (JSON on stdout).
    Formats {
        #[arg(long)]
        format_speed: PathBuf,
        #[arg(long)]
        quick: bool,
    },
    /// Scenario 1's fragment rows only: the XDP object's cost per IP
    /// fragment, and with --reassembly-speed the agent's CPU per
    /// reassembled datagram (JSON on stdout).
    Fragments {
        #[arg(long)]
        object: PathBuf,
        #[arg(long)]
        quick: bool,
        /// udp-agent's `examples/reassembly_speed` binary.
        #[arg(long)]
        reassembly_speed: Option<PathBuf>,
    },
    /// A plain UDP socket reader (recvmmsg, counting); prints `ready`, and
    /// `{"received":N,"bytes":B}` on SIGTERM.
    SockReader {
        #[arg(long)]
        bind: SocketAddrV4,
        /// SO_RCVBUF in bytes (set with SO_RCVBUFFORCE).
        #[arg(long, default_value_t = 212_992)]
        rcvbuf: u32,
        /// Exit after this long whatever happens.
        #[arg(long, default_value_t = 600)]
        max_seconds: u64,
    },
    /// Scenario 3's PutEvents endpoint (`fake-eventbridge`, timing stamped
    /// entries) on 127.0.0.1, until Ctrl-C; prints its URL and, every
    /// second, entries acknowledged and latency quantiles.
    Endpoint,
    /// An experiment on scenario 2's rig: contenders measured in interleaved
    /// rounds at one asked rate (no search), each step printed, then the
    /// medians. Contenders as for `all`, plus `tcpdump-xdp` (tcpdump while
    /// the agent is attached natively for another port).
    Rounds {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "agent,tcpdump")]
        contenders: Vec<String>,
        /// UDP payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Packets per second asked of the sender.
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per step.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Extra flags for every `udp-agent run`.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Where the steps go as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Args)]
struct AllArgs {
    /// Short runs (under two minutes): CI's smoke test.
    #[arg(long)]
    quick: bool,
    /// The agent binary, with its XDP object embedded.
    #[arg(long)]
    agent: PathBuf,
    /// The XDP object the agent embeds.
    #[arg(long)]
    object: PathBuf,
    /// The fake-eventbridge binary (forwarding cross-check, full mode).
    #[arg(long)]
    fake_eventbridge: Option<PathBuf>,
    /// Python with boto3 for the article's script.
    #[arg(long)]
    python: Option<PathBuf>,
    /// The article's script.
    #[arg(long)]
    article: PathBuf,
    /// Where the JSON results go.
    #[arg(long)]
    json: PathBuf,
    /// Where the markdown table goes (it is printed on stdout too).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Scratch directory (trafgen configurations).
    #[arg(long, default_value = "/tmp")]
    workdir: PathBuf,
    /// Scenarios to run (default: all): kernel, capture, cpu, format-cpu,
    /// forward, memory.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Extra flags for every `udp-agent run` (experiments), e.g.
    /// `--agent-arg=--max-in-flight=32`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Scenario 2 contenders (default: all): agent, agent-drop, agent-xsk,
    /// tcpdump, socket.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// The sender of scenarios 2 and 4: `live` (XDP frames, the default) or
    /// `packet` (an AF_PACKET socket; also the fallback).
    #[arg(long, default_value = "live", value_parser = ["live", "packet"])]
    sender: String,
    /// How to reproduce this run, for the report.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
    /// udp-agent's `examples/reassembly_speed` binary, for the row of the
    /// agent's CPU per reassembled datagram (scenario 1).
    #[arg(long)]
    reassembly_speed: Option<PathBuf>,
    /// Scenario 4 alone: the soak's rate (default: scenario 2's highest
    /// lossless 64-byte rate, else 200,000 pps) and length in seconds.
    #[arg(long)]
    soak_pps: Option<u64>,
    #[arg(long)]
    soak_seconds: Option<u64>,
    /// The XDP object built without the `kernel-log` feature, for the rows
    /// of what `--kernel-log` costs when off (scenario 1).
    #[arg(long)]
    object_without_log: Option<PathBuf>,
    /// udp-agent's `examples/format_speed` binary, for the rows of the
    /// agent's CPU per datagram for each format (scenario 1).
    #[arg(long)]
    format_speed: Option<PathBuf>,
}

fn main() -> ExitCode {
    proc::install_interrupt_handlers();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::All(a) => all(&a),
        Cmd::Kernel {
            object,
            quick,
            case,
            repeat,
            ring_bytes,
            runs,
        } => {
            let mut s = kernel::Settings::new(quick);
            s.only = case;
            if let Some(r) = runs {
                s.runs = r;
            }
            if let Some(r) = ring_bytes {
                s.ring_bytes = r;
            }
            if let Some(r) = repeat {
                s.repeat = r;
                s.capture_repeat = r;
            }
            kernel::run(&object, &s)
                .map(|(r, _)| println!("{}", serde_json::to_string_pretty(&r).expect("json")))
        }
        Cmd::KernelLog {
            object,
            object_without_log,
            quick,
            runs,
        } => {
            let mut s = kernel::Settings::new(quick);
            if let Some(r) = runs {
                s.runs = r;
            }
            kernel_log::run(&object, &object_without_log, &s)
                .map(|(r, _)| println!("{}", serde_json::to_string_pretty(&r).expect("json")))
        }
        Cmd::Formats {
            format_speed,
            quick,
        } => formats::run(&format_speed, &formats::Settings::new(quick))
            .map(|(r, _)| println!("{}", serde_json::to_string_pretty(&r).expect("json"))),
        Cmd::Fragments {
            object,
            quick,
            reassembly_speed,
        } => fragments::run(
            &object,
            reassembly_speed.as_deref(),
            &fragments::Settings::new(quick),
        )
        .map(|(r, _)| println!("{}", serde_json::to_string_pretty(&r).expect("json"))),
        Cmd::SockReader {
            bind,
            rcvbuf,
            max_seconds,
        } => sockread::run(bind, rcvbuf, Duration::from_secs(max_seconds)),
        Cmd::Endpoint => endpoint_forever(),
        Cmd::Rounds {
            agent,
            contenders,
            size,
            rate,
            rounds,
            seconds,
            agent_args,
            json,
        } => run_rounds(
            &agent,
            &contenders,
            size,
            rate,
            rounds,
            Duration::from_secs_f64(seconds),
            agent_args,
            json.as_deref(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn endpoint_forever() -> Result<()> {
    let e = forward::start_endpoint("127.0.0.1:0".parse()?)?;
    println!("listening on {}", e.url());
    while !proc::interrupted() {
        std::thread::sleep(Duration::from_secs(1));
        let l = e.latency();
        let s = e.stats();
        println!(
            "accepted {} requests {} latency p50 {} p99 {}",
            s.entries_accepted,
            s.requests,
            report::duration_ns(l.p50_ns),
            report::duration_ns(l.p99_ns)
        );
    }
    Ok(())
}

fn parse_contenders(names: &[String]) -> Result<Vec<capture::Contender>> {
    names
        .iter()
        .map(|c| match c.as_str() {
            "agent" => Ok(capture::Contender::Agent),
            "agent-drop" => Ok(capture::Contender::AgentDrop),
            "agent-xsk" => Ok(capture::Contender::AgentXsk),
            "tcpdump" => Ok(capture::Contender::Tcpdump),
            "socket" => Ok(capture::Contender::Socket),
            "tcpdump-xdp" => Ok(capture::Contender::TcpdumpXdp),
            other => Err(anyhow::anyhow!("unknown contender {other}")),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_rounds(
    agent: &Path,
    contenders: &[String],
    size: usize,
    rate: u64,
    n: usize,
    secs: Duration,
    agent_args: Vec<String>,
    json: Option<&Path>,
) -> Result<()> {
    require_root()?;
    let who = parse_contenders(contenders)?;
    contenders::set_extra_agent_args(agent_args);
    let self_exe = std::env::current_exe().context("locating udp-bench")?;
    netns::remove_leftovers();
    traffic::restore_leftover_settings();
    let ns = netns::create()?;
    let rig = traffic::Rig::prepare(&ns, &traffic::udp_frame(&ns, capture::PORT, size));
    if let Some(why) = &rig.fallback_reason {
        eprintln!("bench: live-frames sender unavailable ({why}); AF_PACKET sender");
    }
    let workdir = std::env::temp_dir();
    let env = capture::Env {
        sender: rig.sender,
        agent,
        self_exe: &self_exe,
        ns: &ns,
        workdir: &workdir,
    };
    let out = capture::rounds(&env, &who, size, rate, n, secs)?;
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(rig);
    drop(ns);
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (BPF programs, network namespaces, XDP)");
    }
    Ok(())
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file()
}

/// What the scenarios of `all` have given: their rows, and what failed.
#[derive(Default)]
struct Outcome {
    rows: Vec<Row>,
    failed: Vec<String>,
}

impl Outcome {
    /// Keeps a scenario's rows and returns its details for the report, or
    /// notes its failure (the other scenarios still run) and returns null.
    /// An interrupt ends the run.
    fn take<T: serde::Serialize>(
        &mut self,
        what: &str,
        result: Result<(T, Vec<Row>)>,
    ) -> Result<serde_json::Value> {
        match result {
            Ok((details, rows)) => {
                self.rows.extend(rows);
                Ok(serde_json::to_value(&details)?)
            }
            Err(e) => {
                proc::check_interrupted()?;
                eprintln!("bench: {what} failed: {e:#}");
                self.failed.push(format!("{what}: {e:#}"));
                Ok(serde_json::Value::Null)
            }
        }
    }
}

fn all(a: &AllArgs) -> Result<()> {
    require_root()?;
    let started = Instant::now();
    let wanted = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    let self_exe = std::env::current_exe().context("locating udp-bench")?;
    contenders::set_extra_agent_args(a.agent_args.clone());
    let mut outcome = Outcome::default();
    let mut skipped = Vec::new();
    let mut report = Report {
        mode: if a.quick { "quick" } else { "full" }.into(),
        command: a.command.clone(),
        revision: std::process::Command::new(&a.agent)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        machine: Machine::detect(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        duration_s: 0.0,
        rows: Vec::new(),
        kernel: serde_json::Value::Null,
        kernel_log: serde_json::Value::Null,
        fragments: serde_json::Value::Null,
        formats: serde_json::Value::Null,
        format_cpu: serde_json::Value::Null,
        capture: serde_json::Value::Null,
        cpu: serde_json::Value::Null,
        forward: serde_json::Value::Null,
        memory: serde_json::Value::Null,
        skipped: Vec::new(),
    };
    eprintln!("bench: {} mode on {}", report.mode, report.machine.line());

    if wanted("kernel") {
        eprintln!("bench: scenario 1: kernel cost (BPF_PROG_TEST_RUN)");
        let r = kernel::run(&a.object, &kernel::Settings::new(a.quick));
        report.kernel = outcome.take("kernel", r)?;
        if let Some(without) = &a.object_without_log {
            eprintln!("bench: scenario 1: --kernel-log off against no log at all");
            let r = kernel_log::run(&a.object, without, &kernel::Settings::new(a.quick));
            report.kernel_log = outcome.take("kernel log", r)?;
        }
        eprintln!("bench: scenario 1: IP fragments (BPF_PROG_TEST_RUN; the agent's reassembly)");
        let s = fragments::Settings::new(a.quick);
        let r = fragments::run(&a.object, a.reassembly_speed.as_deref(), &s);
        report.fragments = outcome.take("fragments", r)?;
        if let Some(bin) = &a.format_speed {
            eprintln!("bench: scenario 1: the agent's CPU per datagram for each payload format");
            let r = formats::run(bin, &formats::Settings::new(a.quick));
            report.formats = outcome.take("formats", r)?;
        }
    }

    let net = wanted("capture")
        || wanted("cpu")
        || wanted("format-cpu")
        || wanted("forward")
        || wanted("memory");
    let tools_missing: Vec<&str> = ["trafgen", "tcpdump", "ip"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if net && !tools_missing.is_empty() {
        let why = format!(
            "scenarios 2–4 skipped: {} not installed (Debian: apt-get install netsniff-ng tcpdump iproute2)",
            tools_missing.join(", ")
        );
        eprintln!("bench: {why}");
        skipped.push(why);
    } else if net {
        netns::remove_leftovers();
        traffic::restore_leftover_settings();
        let ns = netns::create()?;
        eprintln!(
            "bench: namespace {} ({} {}) ⇄ root ({} {})",
            ns.netns, ns.ns_if, ns.ns_v4, ns.host_if, ns.host_v4
        );
        let workdir = a.workdir.join(format!("udp-bench-{}", std::process::id()));
        std::fs::create_dir_all(&workdir)?;
        // The sender of scenarios 2 and 4, with the machine settings it
        // needs held only while they run (dropping the rig restores them).
        let prepare_rig = || {
            let r = if a.sender == "live" {
                traffic::Rig::prepare(&ns, &traffic::udp_frame(&ns, capture::PORT, 64))
            } else {
                traffic::Rig::packet_socket()
            };
            if let Some(why) = &r.fallback_reason {
                eprintln!(
                    "bench: live-frames sender unavailable ({why}); the AF_PACKET sender offers the traffic"
                );
            }
            r
        };
        let mut cenv = capture::Env {
            sender: traffic::Sender::PacketSocket,
            agent: &a.agent,
            self_exe: &self_exe,
            ns: &ns,
            workdir: &workdir,
        };
        let mut csettings = capture::Settings::new(a.quick);
        if !a.contenders.is_empty() {
            csettings.contenders = parse_contenders(&a.contenders)?;
        }
        let mut soak_rate = None;
        if wanted("capture") {
            let rig = prepare_rig();
            cenv.sender = rig.sender;
            eprintln!(
                "bench: scenario 2: lossless capture rate ({})",
                cenv.sender.describe()
            );
            let r = capture::run(&cenv, &csettings).inspect(|(r, _)| {
                soak_rate = r
                    .searches
                    .iter()
                    .find(|s| s.contender == capture::Contender::Agent && s.payload == 64)
                    .and_then(|s| s.lossless_pps.or(s.search_pps))
                    .map(|pps| pps as u64);
            });
            report.capture = outcome.take("capture", r)?;
        }
        if wanted("cpu") {
            let rig = prepare_rig();
            cenv.sender = rig.sender;
            let mut s = cpu::Settings::new(a.quick);
            if !a.contenders.is_empty() {
                s.contenders = parse_contenders(&a.contenders)?;
            }
            eprintln!(
                "bench: scenario 2: CPU per packet at {} pps ({})",
                s.rate,
                cenv.sender.describe()
            );
            report.cpu = outcome.take("cpu", cpu::run(&cenv, &s))?;
        }
        if wanted("format-cpu") {
            let rig = prepare_rig();
            cenv.sender = rig.sender;
            let s = format_cpu::Settings::new(a.quick);
            eprintln!(
                "bench: scenario 2: the whole agent's CPU per datagram for each payload format, at {} pps",
                s.rate
            );
            report.format_cpu = outcome.take("format cpu", format_cpu::run(&cenv, &s))?;
        }
        if wanted("forward") {
            eprintln!("bench: scenario 3: forwarding rate (agent → local PutEvents endpoint)");
            let fenv = forward::Env {
                agent: &a.agent,
                python: a.python.as_deref(),
                article: &a.article,
                fake_eventbridge: a.fake_eventbridge.as_deref(),
                ns: &ns,
            };
            let r = forward::run(&fenv, &forward::Settings::new(a.quick)).inspect(|(r, _)| {
                if let Some(why) = &r.article_skipped {
                    skipped.push(format!("article.py: {why}"));
                }
            });
            report.forward = outcome.take("forward", r)?;
        }
        if wanted("memory") {
            // The soak runs at the highest lossless 64-byte rate found;
            // without scenario 2, at a rate well inside the target.
            let rate = a.soak_pps.or(soak_rate).unwrap_or(200_000);
            if let Some(s) = a.soak_seconds {
                csettings.soak = Duration::from_secs(s);
            }
            eprintln!(
                "bench: scenario 4: {} s soak at {rate} pps",
                csettings.soak.as_secs()
            );
            let rig = prepare_rig();
            cenv.sender = rig.sender;
            let r = capture::soak(&cenv, rate, csettings.soak).map(|(s, row)| (s, vec![row]));
            report.memory = outcome.take("memory", r)?;
        }
        let _ = std::fs::remove_dir_all(&workdir);
        drop(ns);
    }

    let Outcome { mut rows, failed } = outcome;
    rows.sort_by_key(|r| r.scenario);
    report.rows = rows;
    report.skipped = skipped;
    report
        .skipped
        .extend(failed.iter().map(|f| format!("FAILED {f}")));
    report.duration_s = started.elapsed().as_secs_f64();
    report.write_json(&a.json)?;
    let table = report.markdown();
    if let Some(md) = &a.markdown {
        std::fs::write(md, &table).with_context(|| format!("writing {}", md.display()))?;
    }
    println!();
    println!(
        "udp-agent benchmark ({} mode, {:.0} s) on {}",
        report.mode,
        report.duration_s,
        report.machine.line()
    );
    println!();
    print!("{table}");
    for s in &report.skipped {
        println!("\n- {s}");
    }
    println!("\nJSON: {}", a.json.display());
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}
