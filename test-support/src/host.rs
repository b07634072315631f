//! The host under the tests and benchmarks: a small disk to fill, and the
//! calling thread's CPU clock.

use std::{path::Path, process::Command};

/// A tmpfs of `size` (mount's syntax: `64k`, `512k`) mounted on a fresh
/// temporary directory, mode 0700; unmounted, and the directory removed,
/// on drop. Mounting needs root: callers apply their own skip rule first.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Panics if `mount` fails.
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("running mount")
            .success();
        assert!(ok, "mounting a tmpfs at {}", dir.path().display());
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// CPU time of the calling thread, in nanoseconds: unlike wall time, not
/// inflated while other work preempts the thread.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
