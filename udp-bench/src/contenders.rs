//! The programs under test, each started the way a user would run it and
//! stopped the way it shuts down cleanly, so that its own end-of-run
//! counters are available:
//!
//! * [`Agent`]: `udp-agent run` (stdout sink to /dev/null, or the
//!   EventBridge sink to a local endpoint). Counters come from its shutdown
//!   log lines (`kernel counters:`, `pipeline counters:`, `sink
//!   counters:`).
//! * [`Tcpdump`]: `tcpdump -w /dev/null` with a port filter; its exit
//!   report says how many packets the kernel dropped.
//! * [`SockReader`]: `udp-bench sock-reader`, a plain UDP socket read with
//!   `recvmmsg`; `/proc/net/snmp`'s `RcvbufErrors` says what its socket
//!   buffer dropped.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use test_support::agent::{START_TIMEOUT, clean_command, remove_pins};

use crate::proc::{
    Exit, Memory, Proc, ProcExt, counters_line, pin_command, sut_cpu, threads_cpu_ns,
};

static PIN_COUNTER: AtomicUsize = AtomicUsize::new(0);
static EXTRA_AGENT_ARGS: OnceLock<Vec<String>> = OnceLock::new();

/// Flags added to every agent run (`udp-bench all --agent-arg`).
pub fn set_extra_agent_args(args: Vec<String>) {
    let _ = EXTRA_AGENT_ARGS.set(args);
}

/// Where the agent's events go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// `--sink stdout`, stdout to /dev/null: every packet is encoded to its
    /// JSON entry and written, and nothing is kept.
    Null,
    /// `--sink eventbridge` to a local endpoint, with the client-side
    /// quota limit and the cost guard off (they protect an AWS account; the
    /// benchmark measures the agent).
    EventBridge { endpoint_url: String },
}

pub struct Agent {
    proc: Proc,
    pin_dir: PathBuf,
    /// The agent's spool directory (EventBridge sink), removed with it.
    spool_dir: Option<PathBuf>,
}

/// What an agent run counted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentCounters {
    pub kernel: BTreeMap<String, u64>,
    pub pipeline: BTreeMap<String, u64>,
    pub eventbridge: BTreeMap<String, u64>,
    /// `af_xdp counters:` (with `--capture-path afxdp`): `received`, `lost`.
    pub xsk: BTreeMap<String, u64>,
    pub max_rss_kib: u64,
    /// CPU seconds the agent process used over its whole life.
    pub cpu_s: f64,
    pub exit_code: i32,
}

impl AgentCounters {
    pub fn k(&self, name: &str) -> u64 {
        self.kernel.get(name).copied().unwrap_or(0)
    }

    pub fn p(&self, name: &str) -> u64 {
        self.pipeline.get(name).copied().unwrap_or(0)
    }

    pub fn x(&self, name: &str) -> u64 {
        self.xsk.get(name).copied().unwrap_or(0)
    }
}

impl Agent {
    pub fn start(bin: &Path, iface: &str, port: u16, sink: &Sink) -> Result<Agent> {
        Agent::start_with(bin, iface, port, sink, &[])
    }

    /// [`Agent::start`] with more flags for `udp-agent run`.
    pub fn start_with(
        bin: &Path,
        iface: &str,
        port: u16,
        sink: &Sink,
        flags: &[&str],
    ) -> Result<Agent> {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/udp-bench-{}-{}",
            std::process::id(),
            PIN_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = clean_command(bin);
        // The benchmark's own AWS settings only (EventBridge sink).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("run")
            .args(["--iface", iface, "--port", &port.to_string()])
            .arg("--pin-dir")
            .arg(&pin_dir)
            // Native mode: the mode the issue asks for, and what veth offers.
            .args(["--xdp-mode", "driver"]);
        let mut spool_dir = None;
        let stdout_null = match sink {
            Sink::Null => {
                cmd.args(["--sink", "stdout"]);
                true
            }
            Sink::EventBridge { endpoint_url } => {
                if !flags.iter().any(|f| f.starts_with("--spool-dir")) {
                    // The product's default spool, in a directory of its own.
                    let dir = std::env::temp_dir().join(format!(
                        "udp-bench-spool-{}-{}",
                        std::process::id(),
                        PIN_COUNTER.fetch_add(1, Ordering::Relaxed)
                    ));
                    cmd.arg("--spool-dir").arg(&dir);
                    spool_dir = Some(dir);
                }
                cmd.args(["--sink", "eventbridge", "--endpoint-url", endpoint_url])
                    .args(["--region", "us-east-1"])
                    .args(["--max-put-events-per-second", "0"])
                    .args(["--max-events-per-hour", "0"])
                    .env("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK")
                    .env("AWS_SECRET_ACCESS_KEY", "benchmark-secret")
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env("AWS_CONFIG_FILE", "/nonexistent/udp-bench")
                    .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/udp-bench");
                true
            }
        };
        cmd.args(flags);
        cmd.args(EXTRA_AGENT_ARGS.get().into_iter().flatten());
        pin_command(&mut cmd, sut_cpu());
        let proc = Proc::spawn("udp-agent", &mut cmd, stdout_null)?;
        let agent = Agent {
            proc,
            pin_dir,
            spool_dir,
        };
        if !agent.proc.stderr().wait_for("capturing", START_TIMEOUT) {
            bail!(
                "udp-agent did not start capturing; stderr:\n{}",
                agent.proc.stderr_text()
            );
        }
        Ok(agent)
    }

    pub fn memory(&self) -> Option<Memory> {
        self.proc.memory()
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.proc.cpu_seconds().unwrap_or(0.0)
    }

    /// Nanoseconds its threads have run so far ([`threads_cpu_ns`]).
    pub fn threads_cpu_ns(&self) -> u64 {
        self.proc.pid().and_then(threads_cpu_ns).unwrap_or(0)
    }

    pub fn stderr_text(&self) -> String {
        self.proc.stderr_text()
    }

    /// SIGTERM: the agent detaches, drains what was captured, logs its
    /// counters and exits.
    pub fn stop(mut self) -> Result<AgentCounters> {
        let exit = self.proc.stop(libc::SIGTERM, Duration::from_secs(60));
        let stderr = exit.stderr_text();
        let kernel = counters_line(&stderr, "kernel counters:");
        let pipeline = counters_line(&stderr, "pipeline counters:");
        let (Some(kernel), Some(pipeline)) = (kernel, pipeline) else {
            bail!(
                "udp-agent exited ({}) without its counter lines; stderr:\n{stderr}",
                exit.code,
            );
        };
        Ok(AgentCounters {
            kernel,
            pipeline,
            eventbridge: counters_line(&stderr, "sink counters:").unwrap_or_default(),
            xsk: counters_line(&stderr, "af_xdp counters:").unwrap_or_default(),
            max_rss_kib: exit.max_rss_kib,
            cpu_s: exit.cpu_s,
            exit_code: exit.code,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The process goes first (Proc's drop runs after this body, so stop
        // it here), then anything a killed agent left behind.
        self.proc.stop(libc::SIGTERM, Duration::from_secs(30));
        if let Some(dir) = &self.spool_dir {
            let _ = fs::remove_dir_all(dir);
        }
        remove_pins(&self.pin_dir);
    }
}

/// `tcpdump -i IFACE -n -B KIB -w /dev/null udp dst port PORT`.
pub struct Tcpdump {
    proc: Proc,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TcpdumpCounters {
    pub captured: u64,
    pub received_by_filter: u64,
    pub dropped_by_kernel: u64,
    pub max_rss_kib: u64,
    pub cpu_s: f64,
}

impl Tcpdump {
    /// `buffer_kib` is tcpdump's `-B` (its packet ring): the benchmark gives
    /// it the same memory as the agent's ring buffer.
    pub fn start(iface: &str, port: u16, buffer_kib: u32) -> Result<Tcpdump> {
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-i", iface, "-n", "-B", &buffer_kib.to_string()])
            .args(["-w", "/dev/null", "udp", "dst", "port", &port.to_string()]);
        pin_command(&mut cmd, sut_cpu());
        let proc = Proc::spawn("tcpdump", &mut cmd, true)?;
        if !proc
            .stderr()
            .wait_for("listening on", Duration::from_secs(10))
        {
            bail!("tcpdump did not start; stderr:\n{}", proc.stderr_text());
        }
        Ok(Tcpdump { proc })
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.proc.cpu_seconds().unwrap_or(0.0)
    }

    pub fn stop(mut self) -> Result<TcpdumpCounters> {
        let exit = self.proc.stop(libc::SIGINT, Duration::from_secs(10));
        parse_tcpdump(&exit).with_context(|| {
            format!(
                "tcpdump's exit report (exit {}):\n{}",
                exit.code,
                exit.stderr.join("\n")
            )
        })
    }
}

fn parse_tcpdump(exit: &Exit) -> Option<TcpdumpCounters> {
    let num = |needle: &str| {
        exit.stderr
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(TcpdumpCounters {
        captured: num("packets captured")?,
        received_by_filter: num("packets received by filter")?,
        dropped_by_kernel: num("packets dropped by kernel")?,
        max_rss_kib: exit.max_rss_kib,
        cpu_s: exit.cpu_s,
    })
}

/// `udp-bench sock-reader` bound to the root side's address.
pub struct SockReader {
    proc: Proc,
    rcvbuf_errors_before: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SockCounters {
    pub received: u64,
    /// `Udp: RcvbufErrors` of the root namespace over the run.
    pub rcvbuf_errors: u64,
    pub max_rss_kib: u64,
    pub cpu_s: f64,
}

/// `RcvbufErrors` from the `Udp:` lines of `/proc/net/snmp`.
pub fn udp_rcvbuf_errors() -> u64 {
    let snmp = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

impl SockReader {
    pub fn start(self_exe: &Path, bind: &str, rcvbuf: u32) -> Result<SockReader> {
        let mut cmd = Command::new(self_exe);
        cmd.args(["sock-reader", "--bind", bind])
            .args(["--rcvbuf", &rcvbuf.to_string()])
            .args(["--max-seconds", "900"]);
        pin_command(&mut cmd, sut_cpu());
        let proc = Proc::spawn("sock-reader", &mut cmd, false)?;
        if !proc.stdout().wait_for("ready", Duration::from_secs(10)) {
            bail!("sock-reader did not start; stderr:\n{}", proc.stderr_text());
        }
        Ok(SockReader {
            proc,
            rcvbuf_errors_before: udp_rcvbuf_errors(),
        })
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.proc.cpu_seconds().unwrap_or(0.0)
    }

    pub fn stop(mut self) -> Result<SockCounters> {
        let exit = self.proc.stop(libc::SIGTERM, Duration::from_secs(10));
        let line = exit
            .stdout
            .iter()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("sock-reader printed no result: {:?}", exit.stderr))?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        Ok(SockCounters {
            received: v["received"].as_u64().unwrap_or(0),
            rcvbuf_errors: udp_rcvbuf_errors().saturating_sub(self.rcvbuf_errors_before),
            max_rss_kib: exit.max_rss_kib,
            cpu_s: exit.cpu_s,
        })
    }
}
