//! Child processes with bounded lifetimes, the interrupt flag, and what
//! `/proc` says about a process.
//!
//! Every child the benchmark starts is a [`Proc`]: stopped (SIGTERM, then
//! SIGKILL) when it is dropped, reaped with `wait4` so that its peak RSS
//! (`ru_maxrss`, the same number as `VmHWM`) is known even after it exited.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set a flag instead of killing the benchmark, so
/// that it unwinds through its guards (namespaces, links, children) and
/// leaves nothing behind.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Errors out if the benchmark was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps `d` in short slices, returning early with an error on interrupt.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The CPUs this process was allowed when it started, in ascending order:
/// read once, before anything in it is pinned (every pinning function here
/// reads it first), so pinning a thread never changes what the benchmark
/// believes the machine has. (Reading the calling thread's affinity later,
/// as `available_parallelism` does, would see one CPU inside a pinned
/// thread: the kernel scenario once left every later scenario's programs
/// on CPU 0 that way.)
fn allowed_cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        let cpus = current_cpus();
        if cpus.is_empty() { vec![0] } else { cpus }
    })
}

/// How many CPUs the benchmark has (see [`allowed_cpus`]).
pub fn cpu_count() -> usize {
    allowed_cpus().len()
}

/// The CPUs the calling thread may run on now.
fn current_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is empty; valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The CPU the program under test runs on: the last one. CPU 0 is the
/// outside world's (senders, the endpoint, and the kernel's receive path,
/// which runs where the sender sends). On a one-CPU machine, everything
/// shares CPU 0.
pub fn sut_cpu() -> usize {
    allowed_cpus().last().copied().unwrap_or(0)
}

fn set_cpus(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is empty; valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins the calling thread (and what it starts afterwards) to `cpu`. For
/// threads of their own; see [`with_cpu`] for a stretch of the main thread.
pub fn pin_to_cpu(cpu: usize) {
    allowed_cpus();
    set_cpus(&[cpu]);
}

/// Runs `f` with the calling thread pinned to `cpu`, then gives the thread
/// back the CPUs it had before.
pub fn with_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> T {
    allowed_cpus();
    let before = current_cpus();
    set_cpus(&[cpu]);
    let out = f();
    set_cpus(&before);
    out
}

/// Makes `cmd` start pinned to `cpu`.
pub fn pin_command(cmd: &mut Command, cpu: usize) {
    allowed_cpus();
    // SAFETY: set_cpus only fills a cpu_set_t on the stack and calls
    // sched_setaffinity, which is async-signal-safe: fine between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            set_cpus(&[cpu]);
            Ok(())
        });
    }
}

/// User + system CPU seconds `pid` has used so far (`/proc/PID/stat`,
/// clock ticks).
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

/// Nanoseconds `ksoftirqd/<cpu>` has run (`/proc/PID/schedstat`): the
/// kernel's receive work that did not run in the sender's context.
pub fn ksoftirqd_ns(cpu: usize) -> Option<u64> {
    static PIDS: OnceLock<Vec<(usize, i32)>> = OnceLock::new();
    let pids = PIDS.get_or_init(|| {
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if let Some(c) = comm.trim().strip_prefix("ksoftirqd/")
                && let Ok(c) = c.parse()
            {
                out.push((c, pid));
            }
        }
        out
    });
    let pid = pids.iter().find(|(c, _)| *c == cpu)?.1;
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Lines read from a child's pipe by a reader thread.
#[derive(Default)]
pub struct Lines {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn spawn(self: &Arc<Self>, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
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
                        lines.state.lock().expect("lines lock").0.push(line);
                        lines.changed.notify_all();
                    }
                }
            }
            lines.state.lock().expect("lines lock").1 = true;
            lines.changed.notify_all();
        })
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.state.lock().expect("lines lock").0.clone()
    }

    /// Waits until a line contains `needle`; false on timeout or EOF.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("lines lock");
        loop {
            if state.0.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let now = Instant::now();
            if state.1 || now >= deadline || interrupted() {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            state = self
                .changed
                .wait_timeout(state, wait)
                .expect("lines lock")
                .0;
        }
    }
}

/// How a child ended.
#[derive(Clone, Debug)]
pub struct Exit {
    /// Exit code, or `128 + signal`.
    pub code: i32,
    /// Peak resident set size in KiB (`ru_maxrss`, equal to `VmHWM`).
    pub max_rss_kib: u64,
    /// User + system CPU time the child used, in seconds.
    pub cpu_s: f64,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// A running child process, stopped when dropped.
pub struct Proc {
    pub name: String,
    pid: i32,
    started: Instant,
    reaped: Option<Exit>,
    // Held so that the pipes stay open; never waited on through std (we
    // reap with wait4 to get the child's rusage).
    _child: Child,
    out: Arc<Lines>,
    err: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with stdin closed. Stdout is captured line by line
    /// unless `stdout_null`; stderr always is.
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
        let mut readers = vec![err.spawn(child.stderr.take().expect("piped stderr"))];
        if let Some(stdout) = child.stdout.take() {
            readers.push(out.spawn(stdout));
        }
        Ok(Proc {
            name: name.to_string(),
            pid: child.id() as i32,
            started: Instant::now(),
            reaped: None,
            _child: child,
            out,
            err,
            readers,
        })
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

    pub fn stderr_text(&self) -> String {
        self.err.snapshot().join("\n")
    }

    /// Sends `sig` if the child has not been reaped.
    pub fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: our own unreaped child, so the pid is not reused.
            unsafe { libc::kill(self.pid, sig) };
        }
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
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        self.reaped = Some(Exit {
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
        self.signal(sig);
        if let Some(e) = self.wait(timeout) {
            return e;
        }
        eprintln!(
            "bench: {} did not exit within {timeout:?} of signal {sig}; killing it",
            self.name
        );
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} survived SIGKILL", self.name))
    }

    /// CPU seconds used so far, while the child runs.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if self.reaped.is_some() {
            return None;
        }
        cpu_seconds(self.pid)
    }

    /// `VmRSS` and `RssAnon` in KiB, while the child runs.
    pub fn memory(&self) -> Option<Memory> {
        if self.reaped.is_some() {
            return None;
        }
        memory(self.pid)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.stop(libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    /// `RssAnon`: the part of the RSS that is the process's own memory
    /// (heap, stacks). The rest is file-backed: the binary's pages as its
    /// code first runs, and mapped BPF maps such as the ring; both are
    /// bounded by their size.
    pub anon_kib: u64,
}

/// `VmRSS` and `RssAnon` of `pid` from `/proc/PID/status`.
pub fn memory(pid: i32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// Runs a command to completion with a deadline; returns stdout. Errors
/// with its stderr if it fails.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let name = format!("{:?}", cmd.get_program());
    let mut p = Proc::spawn(&name, cmd, false)?;
    let exit = match p.wait(timeout) {
        Some(e) => e,
        None => {
            p.stop(libc::SIGKILL, Duration::from_secs(5));
            bail!("{name} did not finish within {timeout:?}");
        }
    };
    if exit.code != 0 {
        bail!(
            "{name} failed (exit {}): {}",
            exit.code,
            exit.stderr.join("\n")
        );
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

/// `name=value` pairs after `marker` on the last line containing it.
pub fn counters_line(lines: &[String], marker: &str) -> Option<BTreeMap<String, u64>> {
    let line = lines.iter().rev().find(|l| l.contains(marker))?;
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

/// CLOCK_MONOTONIC in nanoseconds: the clock the sender stamps payloads
/// with and the endpoint compares against (one clock for every namespace).
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_stretch_leaves_the_threads_cpus_and_the_sut_cpu_as_they_were() {
        let before = current_cpus();
        let sut = sut_cpu();
        assert!(before.contains(&sut));
        let inside = with_cpu(0, || (current_cpus(), sut_cpu()));
        assert_eq!(inside, (vec![0], sut));
        assert_eq!(current_cpus(), before);
    }
}
