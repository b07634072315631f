//! Child processes, CPUs, and what `/proc` says about a process.
//!
//! Every child the benchmark starts is test-support's [`Proc`]: stopped
//! (SIGTERM, then SIGKILL) when it is dropped, reaped with `wait4` so that
//! its peak RSS (`ru_maxrss`, the same number as `VmHWM`) is known even
//! after it exited. SIGINT/SIGTERM/SIGHUP set test-support's interrupt flag
//! ([`install_interrupt_handlers`]) so that the benchmark unwinds through
//! its guards (namespaces, links, children) and leaves nothing behind.

use std::{
    fs,
    os::unix::process::CommandExt,
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
pub use test_support::process::{
    Exit, Proc, check_interrupted, counters_line, install_interrupt_handlers, interrupted,
};

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

/// Nanoseconds the threads of process `pid` have run, summed over its
/// live threads' `/proc/PID/task/TID/schedstat` (nanoseconds, where
/// `/proc/PID/stat` counts clock ticks of 10 ms).
pub fn threads_cpu_ns(pid: i32) -> Option<u64> {
    let mut total = 0;
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let stat = fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
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

/// What `/proc` says about a running child.
pub trait ProcExt {
    /// CPU seconds used so far, while the child runs.
    fn cpu_seconds(&self) -> Option<f64>;
    /// `VmRSS` and `RssAnon` in KiB, while the child runs.
    fn memory(&self) -> Option<Memory>;
}

impl ProcExt for Proc {
    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid()?)
    }

    fn memory(&self) -> Option<Memory> {
        memory(self.pid()?)
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

/// Runs `cmd` (one of udp-agent's speed examples, in its JSON mode) to the
/// end and returns what it printed, as JSON.
pub fn json_output(cmd: &mut Command) -> Result<serde_json::Value> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| format!("running {name}"))?;
    ensure!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading {name}'s JSON"))
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
