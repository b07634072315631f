//! Child processes with bounded lifetimes, and the interrupt flag.
//!
//! Every child is a [`Proc`]: its output is collected line by line by
//! reader threads ([`Lines`]), it is reaped with `wait4` so that its peak
//! RSS and CPU time are known even after it exited, and it is stopped
//! (SIGTERM, then SIGKILL) when dropped.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read},
    os::unix::process::ExitStatusExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set a flag instead of killing the process, so
/// that it unwinds through its guards (namespaces, links, children) and
/// leaves nothing behind. Waits here ([`Lines::wait`]) return early once
/// it is set; a long-running caller checks [`interrupted`].
pub fn install_interrupt_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether a signal asked this process to stop (always false without
/// [`install_interrupt_handlers`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Errors out if this process was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

/// Lines read from a child's pipe by a reader thread.
#[derive(Default)]
pub struct Lines {
    state: Mutex<LinesState>,
    changed: Condvar,
}

impl Lines {
    fn spawn_reader(self: &Arc<Self>, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let lines = self.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        lines.lock().lines.push(line);
                        lines.changed.notify_all();
                    }
                }
            }
            lines.lock().closed = true;
            lines.changed.notify_all();
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinesState> {
        // A reader thread holds the lock only to push a line: a poisoned
        // lock still holds every line read.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lines read so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Waits until `done(lines so far, pipe closed)` holds, `timeout`
    /// passes or the process is [`interrupted`]; returns whether it held.
    pub fn wait(&self, timeout: Duration, mut done: impl FnMut(&[String], bool) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state.lines, state.closed) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || interrupted() {
                return false;
            }
            // Woken by every new line; the slice bounds how late an
            // interrupt is noticed.
            let slice = (deadline - now).min(Duration::from_millis(100));
            state = self
                .changed
                .wait_timeout(state, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until a line contains `needle`; false on timeout, at the end
    /// of the pipe, or on interrupt.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let mut found = false;
        self.wait(timeout, |lines, closed| {
            found = lines.iter().any(|l| l.contains(needle));
            found || closed
        });
        found
    }
}

/// How a child ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// Exit code, or `128 + signal`.
    pub code: i32,
    /// Peak resident set size in KiB (`ru_maxrss`, equal to `VmHWM`).
    pub max_rss_kib: u64,
    /// User + system CPU time the child used, in seconds.
    pub cpu_s: f64,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Exit {
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

/// A running child process, stopped when dropped: SIGTERM, then SIGKILL
/// after a grace period (5 s unless [`Proc::drop_grace`] says otherwise).
pub struct Proc {
    pub name: String,
    pid: i32,
    started: Instant,
    reaped: Option<Exit>,
    grace: Duration,
    // Held so that the pipes stay open; never waited on through std (the
    // child is reaped with wait4, for its rusage).
    _child: Child,
    out: Arc<Lines>,
    err: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with stdin closed. Stdout is collected line by line
    /// unless `stdout_null` (then it goes to /dev/null); stderr always is.
    pub fn spawn(name: &str, cmd: &mut Command, stdout_null: bool) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        if stdout_null {
            cmd.stdout(Stdio::null());
        } else {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        let mut readers = vec![err.spawn_reader(child.stderr.take().expect("piped stderr"))];
        if let Some(stdout) = child.stdout.take() {
            readers.push(out.spawn_reader(stdout));
        }
        Ok(Proc {
            name: name.to_string(),
            pid: child.id() as i32,
            started: Instant::now(),
            reaped: None,
            grace: Duration::from_secs(5),
            _child: child,
            out,
            err,
            readers,
        })
    }

    /// How long dropping waits after SIGTERM before it sends SIGKILL.
    pub fn drop_grace(mut self, grace: Duration) -> Proc {
        self.grace = grace;
        self
    }

    /// The child's pid while it has not been reaped (after that the number
    /// may belong to another process).
    pub fn pid(&self) -> Option<i32> {
        self.reaped.is_none().then_some(self.pid)
    }

    /// Time since the child was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stdout(&self) -> &Lines {
        &self.out
    }

    pub fn stderr(&self) -> &Lines {
        &self.err
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.err.snapshot().join("\n")
    }

    /// Sends `sig`; an error if the child was reaped already or `kill`
    /// fails.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        if self.reaped.is_some() {
            return Err(io::Error::other(format!(
                "{} was reaped already",
                self.name
            )));
        }
        // SAFETY: our own unreaped child, so the pid is not reused.
        if unsafe { libc::kill(self.pid, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reaps the child if it has exited.
    fn try_reap(&mut self) -> Option<&Exit> {
        if self.reaped.is_some() {
            return self.reaped.as_ref();
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child with valid out-pointers.
        let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if rc != self.pid {
            return None;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        // The pipes close with the child: the readers have everything.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        self.reaped = Some(Exit {
            status: ExitStatus::from_raw(status),
            code,
            max_rss_kib: ru.ru_maxrss as u64,
            cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
            stdout: self.out.snapshot(),
            stderr: self.err.snapshot(),
        });
        self.reaped.as_ref()
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_reap() {
                return Some(e.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig`, waits up to `timeout`, then SIGKILLs. Always returns
    /// how the child ended.
    pub fn stop(&mut self, sig: libc::c_int, timeout: Duration) -> Exit {
        let _ = self.signal(sig);
        if let Some(e) = self.wait(timeout) {
            return e;
        }
        eprintln!(
            "{} did not exit within {timeout:?} of signal {sig}; killing it",
            self.name
        );
        let _ = self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} survived SIGKILL", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.stop(libc::SIGTERM, self.grace);
        }
    }
}

/// Runs a command to completion with a deadline; returns its stdout, or an
/// error with its stderr if it fails.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let name = format!("{:?}", cmd.get_program());
    let mut p = Proc::spawn(&name, cmd, false)?;
    let Some(exit) = p.wait(timeout) else {
        p.stop(libc::SIGKILL, Duration::from_secs(5));
        bail!("{name} did not finish within {timeout:?}");
    };
    if exit.code != 0 {
        bail!("{name} failed (exit {}): {}", exit.code, exit.stderr_text());
    }
    Ok(exit.stdout.join("\n"))
}

/// Runs a command, ignoring its outcome (cleanup).
pub fn run_quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `name=value` pairs after `marker` on the last line of `text` containing
/// it (the agent's shutdown lines: "kernel counters:", "pipeline
/// counters:", "sink counters:", "af_xdp counters:").
pub fn counters_line(text: &str, marker: &str) -> Option<BTreeMap<String, u64>> {
    let line = text.lines().rev().find(|l| l.contains(marker))?;
    let rest = &line[line.find(marker)? + marker.len()..];
    Some(
        rest.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_reaped_with_its_output_and_status() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            false,
        )
        .unwrap();
        let exit = p.wait(Duration::from_secs(10)).expect("sh exits");
        assert_eq!((exit.code, exit.status.code()), (3, Some(3)));
        assert_eq!(exit.stdout, ["out"]);
        assert_eq!(exit.stderr, ["err"]);
        assert_eq!(p.pid(), None);
        assert!(
            p.signal(libc::SIGTERM).is_err(),
            "a reaped child is not signalled"
        );
    }

    #[test]
    fn stop_ends_a_child_with_the_signal_and_drop_kills_one_that_ignores_it() {
        let mut p = Proc::spawn("sleep", Command::new("sleep").arg("60"), true).unwrap();
        let exit = p.stop(libc::SIGINT, Duration::from_secs(10));
        assert_eq!(exit.status.signal(), Some(libc::SIGINT));
        assert_eq!(exit.code, 128 + libc::SIGINT);

        let p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "trap '' TERM; echo ready; exec sleep 60"]),
            false,
        )
        .unwrap()
        .drop_grace(Duration::from_millis(200));
        assert!(p.stdout().wait_for("ready", Duration::from_secs(10)));
        let pid = p.pid().unwrap();
        drop(p);
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "pid {pid} still exists after drop");
    }

    #[test]
    fn a_wait_sees_the_end_of_the_pipe() {
        let p = Proc::spawn("echo", Command::new("echo").arg("last"), false).unwrap();
        let mut seen = Vec::new();
        assert!(p.stdout().wait(Duration::from_secs(600), |lines, closed| {
            seen = lines.to_vec();
            closed
        }));
        assert_eq!(seen, ["last"]);
        assert!(!p.stdout().wait_for("never", Duration::from_secs(600)));
    }

    #[test]
    fn run_returns_stdout_or_the_error_with_stderr() {
        let out = run(Command::new("echo").arg("hi"), Duration::from_secs(10)).unwrap();
        assert_eq!(out, "hi");
        let err = run(
            Command::new("sh").args(["-c", "echo broken >&2; exit 2"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("exit 2): broken"), "{err:#}");
        let err = run(Command::new("sleep").arg("60"), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
    }

    #[test]
    fn counters_are_read_from_the_last_line_with_the_marker() {
        let text = "x kernel counters: captured=1\nINFO kernel counters: captured=5 bad=x ring_full=2\nother";
        let c = counters_line(text, "kernel counters:").unwrap();
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            [("captured".to_string(), 5), ("ring_full".to_string(), 2)]
        );
        assert!(counters_line(text, "sink counters:").is_none());
    }
}
