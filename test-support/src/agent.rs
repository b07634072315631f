//! The `udp-agent` binary under test: where it is, whether a privileged
//! test can run it, its command with a clean environment, a running agent
//! ([`Agent`]), and the files a killed agent leaves behind.

use std::{
    ffi::OsStr,
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::OnceLock,
    time::Duration,
};

use crate::{
    TIMEOUT,
    event::{Event, parse_all},
    netns::VethNs,
    process::Proc,
    unique_id,
};

/// How long an agent may take to load, verify and attach its program.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory where the agent keeps an instance lock file per pin
/// directory (control.rs `LOCK_DIR`, without systemd's
/// `RUNTIME_DIRECTORY`).
pub const LOCK_DIR: &str = "/run/udp-agent";

/// The `udp-agent` binary Cargo built for the running test:
/// `CARGO_BIN_EXE_udp-agent`, which `cargo test` sets at run time as at
/// build time; for a test binary started directly, the binary beside it
/// in Cargo's layout (`target/<profile>/deps/<test>` →
/// `target/<profile>/udp-agent`).
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_udp-agent") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile = exe
            .parent()
            .filter(|d| d.file_name() == Some(OsStr::new("deps")))
            .and_then(Path::parent)
            .unwrap_or_else(|| {
                panic!(
                    "{} is not in a Cargo target directory: run the tests with `cargo test` (or set CARGO_BIN_EXE_udp-agent)",
                    exe.display()
                )
            });
        profile.join("udp-agent")
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the agent binary carries its XDP object: an ELF file for
/// EM_BPF (247) embedded somewhere in it. A binary built without the eBPF
/// build's output embeds nothing.
pub fn agent_has_object() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let Ok(bin) = fs::read(agent_bin()) else {
            return false;
        };
        // ELF magic, 64-bit, little-endian, version 1; e_machine at 18.
        const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01";
        bin.windows(20)
            .any(|w| w.starts_with(MAGIC) && w[18] == 247 && w[19] == 0)
    })
}

/// Why a privileged test cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (loads XDP programs, creates network namespaces)".into());
    }
    if !agent_has_object() {
        return Some(format!(
            "{} was built without its XDP object (built with AYA_BUILD_SKIP=1; a plain `cargo build` embeds it)",
            agent_bin().display()
        ));
    }
    None
}

/// The skip rule: true if `test` can run; otherwise prints
/// `SKIPPED: <reason>` and returns false (the test then returns, passing).
pub fn privileged(test: &str) -> bool {
    skip_unless(test, skip_reason())
}

/// Prints `SKIPPED: <reason> (<test>)` and returns false if there is a
/// reason; true if there is none.
pub fn skip_unless(test: &str, reason: Option<String>) -> bool {
    match reason {
        None => true,
        Some(reason) => {
            println!("SKIPPED: {reason} ({test})");
            false
        }
    }
}

/// A fresh pin directory under bpffs for one agent: one per test.
pub fn pin_dir(test: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/udp-agent-test-{test}-{}", unique_id()))
}

/// The agent's instance lock file for `pin_dir` (control.rs `lock_name`,
/// in [`LOCK_DIR`]).
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Path::new(LOCK_DIR).join(format!("{name}.lock"))
}

/// Removes what a stopped (or killed) agent may leave: the pins in
/// `pin_dir`, the directory, and its instance lock file (a test's or a
/// benchmark's pin directory is never used again).
pub fn remove_pins(pin_dir: &Path) {
    if let Ok(entries) = fs::read_dir(pin_dir) {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let _ = fs::remove_dir(pin_dir);
    }
    let _ = fs::remove_file(lock_path(pin_dir));
}

/// `bin` with a clean environment: no `UDP_AGENT_*` variable of the
/// caller leaks in, logs at INFO without colour.
pub fn clean_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("UDP_AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

/// The agent under test ([`agent_bin`]) with a clean environment
/// ([`clean_command`]).
pub fn agent_command() -> Command {
    clean_command(agent_bin())
}

/// The signal that ended a process, if a signal did.
pub fn exit_signal(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// How a stopped agent ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub events: Vec<Event>,
    pub stderr: String,
}

impl Stopped {
    /// `name=value` pairs of the stderr line containing `marker` (e.g.
    /// "kernel counters:" or "pipeline counters:").
    pub fn counters(&self, marker: &str) -> std::collections::BTreeMap<String, u64> {
        crate::process::counters_line(&self.stderr, marker)
            .unwrap_or_else(|| panic!("no `{marker}` line in stderr:\n{}", self.stderr))
    }
}

/// A `udp-agent run` child process. Its stdout lines are events, its
/// stderr lines logs; both are collected as they come. Dropping it stops
/// the process (SIGTERM, SIGKILL after 5 s) and removes its pin directory.
pub struct Agent {
    proc: Proc,
    pub pin_dir: PathBuf,
    /// The agent's own spool directory, unless the test gave one.
    _spool: Option<tempfile::TempDir>,
    pub iface: String,
}

impl Agent {
    /// Starts `udp-agent run --iface <iface> --pin-dir <pin_dir> <extra…>`
    /// and waits until it logs "capturing" (attached, ports set). Panics
    /// with its stderr if it exits or does not get there in time.
    pub fn run(iface: &str, pin_dir: &Path, extra: &[&str]) -> Agent {
        Self::run_with_env(iface, pin_dir, extra, &[])
    }

    /// [`run`](Self::run) with extra environment variables (e.g. `AWS_*`
    /// for the EventBridge sink).
    pub fn run_with_env(
        iface: &str,
        pin_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let agent = Self::spawn_with_env(iface, pin_dir, extra, env);
        agent.wait_ready();
        agent
    }

    /// Starts the agent like [`run`](Self::run) without waiting.
    pub fn spawn(iface: &str, pin_dir: &Path, extra: &[&str]) -> Agent {
        Self::spawn_with_env(iface, pin_dir, extra, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_with_env(
        iface: &str,
        pin_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut cmd = agent_command();
        cmd.envs(env.iter().copied());
        // Each agent spools into a directory of its own (removed with it),
        // unless the test names one: agents of parallel tests must not
        // share, nor use the system's /var/lib/udp-agent/spool.
        let spool = (!extra.iter().any(|a| a.starts_with("--spool-dir"))
            && !env.iter().any(|(k, _)| *k == "UDP_AGENT_SPOOL_DIR"))
        .then(|| tempfile::tempdir().expect("a temporary spool directory"));
        if let Some(dir) = &spool {
            cmd.env("UDP_AGENT_SPOOL_DIR", dir.path());
        }
        cmd.arg("run")
            .args(["--iface", iface])
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(extra);
        let proc = Proc::spawn("udp-agent", &mut cmd, false).unwrap_or_else(|e| panic!("{e:#}"));
        Agent {
            proc,
            pin_dir: pin_dir.to_path_buf(),
            _spool: spool,
            iface: iface.to_string(),
        }
    }

    /// The process id (0 once it has been reaped).
    pub fn pid(&self) -> i32 {
        self.proc.pid().unwrap_or(0)
    }

    /// Waits for the "capturing" log line; panics with stderr if the agent
    /// exits first or takes longer than [`START_TIMEOUT`].
    pub fn wait_ready(&self) {
        let (mut up, mut exited) = (false, false);
        self.proc.stderr().wait(START_TIMEOUT, |lines, closed| {
            up = lines.iter().any(|l| l.contains("capturing"));
            exited = closed;
            up || exited
        });
        if !up {
            panic!(
                "agent on {} did not start capturing ({}); stderr:\n{}",
                self.iface,
                if exited { "it exited" } else { "timed out" },
                self.stderr_text()
            );
        }
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.proc.stderr_text()
    }

    /// The first stderr line containing `needle`, waiting up to `timeout`.
    pub fn stderr_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.proc.stderr().wait_for(needle, timeout);
        self.proc
            .stderr()
            .snapshot()
            .into_iter()
            .find(|l| l.contains(needle))
    }

    /// The events printed so far.
    pub fn events(&self) -> Vec<Event> {
        parse_all(&self.proc.stdout().snapshot())
    }

    /// Waits until `done(events so far)` holds; returns whether it did
    /// within `timeout`.
    pub fn wait_events_for(&self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        self.proc
            .stdout()
            .wait(timeout, |lines, _| done(&parse_all(lines)))
    }

    /// Waits until `done(events so far)` holds, returning the events;
    /// panics after [`TIMEOUT`] with `what`, the events and stderr.
    pub fn wait_events(&self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        if self.wait_events_for(TIMEOUT, &done) {
            return self.events();
        }
        let events = self.events();
        let summary: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{}:{} -> {}:{} {} bytes {:?}",
                    e.src_addr,
                    e.src_port,
                    e.dst_addr,
                    e.dst_port,
                    e.payload.len(),
                    e.text().chars().take(24).collect::<String>()
                )
            })
            .collect();
        panic!(
            "timed out after {TIMEOUT:?} waiting for {what}; {} events:\n  {}\nstderr:\n{}",
            events.len(),
            summary.join("\n  "),
            self.stderr_text()
        );
    }

    /// Waits for at least `n` events from source port `src_port` and
    /// returns those.
    pub fn wait_from(&self, src_port: u16, n: usize) -> Vec<Event> {
        let from = |evs: &[Event]| evs.iter().filter(|e| e.src_port == src_port).count();
        self.wait_events(&format!("{n} events from source port {src_port}"), |evs| {
            from(evs) >= n
        })
        .into_iter()
        .filter(|e| e.src_port == src_port)
        .collect()
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: libc::c_int) {
        self.proc
            .signal(sig)
            .unwrap_or_else(|e| panic!("signal {sig} to the agent: {e}"));
    }

    /// Sends `sig`, waits for the exit (panicking after 15 s) and for the
    /// pipes to close, and returns what the agent printed in its whole life.
    pub fn stop(&mut self, sig: libc::c_int) -> Stopped {
        self.signal(sig);
        let exit = self.proc.wait(Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "agent did not exit within 15 s of signal {sig}; stderr:\n{}",
                self.stderr_text()
            )
        });
        Stopped {
            status: exit.status,
            events: parse_all(&exit.stdout),
            stderr: exit.stderr_text(),
        }
    }

    /// SIGTERM: the orderly shutdown. See [`stop`](Self::stop).
    pub fn terminate(&mut self) -> Stopped {
        self.stop(libc::SIGTERM)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The process first (SIGTERM, SIGKILL after 5 s), then what a
        // killed agent leaves.
        self.proc.stop(libc::SIGTERM, Duration::from_secs(5));
        remove_pins(&self.pin_dir);
    }
}

impl VethNs {
    /// Sends a small marker datagram every 100 ms (at most 50 times) until
    /// `agent` prints one from `src_port`: ARP/ND are resolved, the program
    /// is attached and the pipeline delivers. Returns how many were sent.
    pub fn warm_up(&self, agent: &Agent, v6: bool, src_port: u16, dst_port: u16) -> usize {
        for i in 0..50 {
            self.send_udp(
                v6,
                src_port,
                dst_port,
                &[format!("warm-up {i}").into_bytes()],
            );
            let seen = agent.wait_events_for(Duration::from_millis(100), |evs| {
                evs.iter().any(|e| e.src_port == src_port)
            });
            if seen {
                return i + 1;
            }
        }
        panic!(
            "no warm-up datagram from port {src_port} (IPv{}) reached {}'s agent in 5 s; stderr:\n{}",
            if v6 { 6 } else { 4 },
            self.host_if,
            agent.stderr_text()
        );
    }
}
