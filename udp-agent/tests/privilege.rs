//! Least privilege: `udp-agent run` as an unprivileged user (nobody) with
//! only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON — what deploy/udp-agent.service
//! grants — captures datagrams; with any one of the three missing it stops
//! with an error naming it; and the maps it pins are its own (0600).
//!
//! The pin directory, as a hostile user or a careless operator meets it
//! (agents run as root there, on a world-writable bpffs as /sys/fs/bpf
//! often is): every spelling of a running agent's pin directory is that
//! agent, refused for a second one and found by `ports list`; a pin
//! directory (or a parent) that another user owns or may write is refused
//! before anything in it is touched; and a source list past its capacity
//! is refused whole.
//!
//! Why each capability (measured on this kernel with the agent's own
//! pre-flight check disabled):
//! * CAP_BPF: without it, creating the first map fails (EPERM).
//! * CAP_NET_ADMIN: XDP is a networking program type; BPF_PROG_LOAD fails
//!   (EPERM) without it.
//! * CAP_PERFMON: without it the verifier rejects the program ("pointer
//!   arithmetic with it prohibited for !root" on the packet pointer).
//!
//! Not needed: CAP_SYS_ADMIN (only to mount bpffs, which systemd has
//! mounted), CAP_SYS_RESOURCE (RLIMIT_MEMLOCK; BPF memory is charged to
//! the cgroup since 5.11), CAP_DAC_OVERRIDE (the unit prepares a directory
//! the user owns).
//!
//! Each test builds the host the way deploy/udp-agent.service leaves it
//! for the agent, but private to the test:
//! * a bpffs instance of its own mounted with mode 0700, as systemd mounts
//!   /sys/fs/bpf, then made traversable (o+x) and given a directory owned
//!   by the agent's user, as the unit's ExecStartPre=+ lines do;
//! * the instance lock file in /run/udp-agent owned by the agent's user
//!   (the unit's RuntimeDirectory= makes the whole directory the user's;
//!   the agent has no flag to put its lock elsewhere);
//! * a network namespace joined to the root namespace by a veth pair
//!   (`test_support::VethNs`: 198.18.0.0/15 and fd00::/8, no default
//!   route): the agent attaches to the root end, a thread inside the
//!   namespace sends.
//!
//! Everything is removed on drop, also when a test panics.

use std::{
    ffi::CString,
    fs::{self, File},
    net::Ipv4Addr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use test_support::{
    Event, TIMEOUT, VethNs,
    agent::{LOCK_DIR, START_TIMEOUT, agent_bin, agent_has_object, lock_path, skip_unless},
    is_root,
    process::Proc,
    unique_id,
};

/// The unprivileged user the agent runs as (nobody / nogroup).
const AGENT_UID: u32 = 65534;
/// Another unprivileged user, for checking what others can reach.
const OTHER_UID: u32 = 65533;

/// setpriv's names for what deploy/udp-agent.service grants.
const CAPS: [&str; 3] = ["bpf", "net_admin", "perfmon"];

// ---------------------------------------------------------------------------
// Skip rule
// ---------------------------------------------------------------------------

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if the test can run; otherwise prints `SKIPPED: reason`.
fn can_run(test: &str) -> bool {
    let reason = if !is_root() {
        Some("needs root (creates network namespaces, mounts bpffs, switches users)".to_string())
    } else if !runs("setpriv", "--version") {
        Some("setpriv is not installed (Debian: util-linux)".to_string())
    } else if !runs("ip", "-V") {
        Some("ip is not installed (Debian: iproute2)".to_string())
    } else if !agent_has_object() {
        Some(format!(
            "{} was built without its XDP object (built with AYA_BUILD_SKIP=1; a plain `cargo build` embeds it)",
            agent_bin().display()
        ))
    } else {
        None
    };
    skip_unless(test, reason)
}

// ---------------------------------------------------------------------------
// The lab: netns + veth + private bpffs + lock file
// ---------------------------------------------------------------------------

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// How the lab prepares bpffs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bpffs {
    /// As deploy/udp-agent.service does: o+x on the root, a directory
    /// owned by the agent's user.
    AsTheUnit,
    /// systemd's mount, untouched: mode 0700, nothing for the agent's user.
    SystemdDefault,
    /// For an agent run as root: the root world-writable and sticky (mode
    /// 1777, as a plain `mount -t bpf` leaves it), a directory root owns
    /// (0755) for the pin directory. No lock file is made: root makes its
    /// own.
    Open,
}

/// Everything one test sets up; removed on drop.
struct Lab {
    /// The namespace and the veth pair (removed by their own drop).
    net: VethNs,
    root: PathBuf,
    bpffs: PathBuf,
    pin_dir: PathBuf,
    lock_file: PathBuf,
}

impl Lab {
    fn new(bpffs_prep: Bpffs) -> Self {
        let root = PathBuf::from(format!("/run/udp-agent-priv-{}", unique_id()));
        let bpffs = root.join("bpf");
        let pin_dir = bpffs.join("udp-agent").join("pins");
        let lab = Lab {
            net: VethNs::new("privilege"),
            lock_file: lock_path(&pin_dir),
            pin_dir,
            root,
            bpffs,
        };
        // From here on, Drop cleans up whatever was made.
        lab.make_bpffs(bpffs_prep);
        if bpffs_prep != Bpffs::Open {
            lab.make_lock_file();
        }
        lab
    }

    fn make_bpffs(&self, prep: Bpffs) {
        fs::create_dir_all(&self.bpffs).expect("create lab dir");
        chmod(&self.root, 0o755);
        // As systemd mounts /sys/fs/bpf (mount-setup.c: "mode=0700"), or
        // as a plain mount does.
        let mode = if prep == Bpffs::Open {
            c"mode=1777"
        } else {
            c"mode=0700"
        };
        let src = c"bpf";
        let target = CString::new(self.bpffs.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated strings; data is a constant option string.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                mode.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a bpffs at {}: {}",
            self.bpffs.display(),
            std::io::Error::last_os_error()
        );
        let owned = self.pin_dir.parent().unwrap();
        fs::create_dir(owned).expect("create the agent's bpffs directory");
        chmod(owned, if prep == Bpffs::Open { 0o755 } else { 0o700 });
        if prep == Bpffs::AsTheUnit {
            // ExecStartPre=+/usr/bin/chmod o+x /sys/fs/bpf
            let mode = fs::metadata(&self.bpffs).unwrap().permissions().mode();
            chmod(&self.bpffs, (mode & 0o7777) | 0o001);
            // ExecStartPre=+/usr/bin/install -d -o udp-agent -g udp-agent -m 0700 …
            chown(owned, AGENT_UID);
        }
    }

    /// What RuntimeDirectory=udp-agent gives the agent: a lock file it may
    /// write. The name is the agent's (control.rs `lock_path`).
    fn make_lock_file(&self) {
        fs::create_dir_all(LOCK_DIR).expect("create /run/udp-agent");
        File::create(&self.lock_file).expect("create the lock file");
        chown(&self.lock_file, AGENT_UID);
        chmod(&self.lock_file, 0o600);
    }

    fn has_xdp(&self) -> bool {
        let out = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.net.host_if])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.bpffs.as_os_str().as_encoded_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_file(&self.lock_file);
        // Lock files of other pin directories in the lab, left by an agent
        // that was killed (or that failed before removing its own).
        let prefix = lock_path(&self.root);
        let prefix = prefix.file_name().unwrap().to_string_lossy();
        // `_run_udp_agent_priv_<pid>_<slot>_`: the separator keeps slot 1
        // from matching slot 10.
        let prefix = format!("{}_", prefix.trim_end_matches(".lock"));
        if let Ok(entries) = fs::read_dir(LOCK_DIR) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The agent as an unprivileged user
// ---------------------------------------------------------------------------

/// `setpriv …` running `args` as `uid` with exactly `caps` (inheritable,
/// ambient and bounding set, and no new privileges: what the unit's
/// User=, AmbientCapabilities=, CapabilityBoundingSet= and
/// NoNewPrivileges= give).
fn as_user(uid: u32, caps: &[&str], args: &[&str]) -> Command {
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps=-all{set}"))
        .arg(format!("--ambient-caps=-all{set}"))
        .arg(format!("--bounding-set=-all{set}"))
        .arg("--no-new-privs")
        .arg("--")
        .arg(agent_bin())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// `udp-agent args…` as root, with a clean environment.
fn as_root(args: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Runs `udp-agent args…` as root to completion.
fn ctl_as_root(args: &[&str]) -> std::process::Output {
    as_root(args).output().expect("run udp-agent")
}

/// A running agent; killed on drop.
struct Agent {
    proc: Proc,
}

impl Agent {
    fn start(lab: &Lab, caps: &[&str], port: u16) -> Self {
        let pin_dir = lab.pin_dir.to_string_lossy().into_owned();
        let port = port.to_string();
        Self::spawn(as_user(
            AGENT_UID,
            caps,
            &[
                "run",
                "--iface",
                &lab.net.host_if,
                "--port",
                &port,
                "--pin-dir",
                &pin_dir,
                "--sink",
                "stdout",
            ],
        ))
    }

    /// The agent as root (all capabilities), with `--pin-dir pin_dir` and
    /// `extra` arguments.
    fn start_as_root(lab: &Lab, pin_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(as_root(
            &[
                "run",
                "--iface",
                &lab.net.host_if,
                "--pin-dir",
                &pin_dir.to_string_lossy(),
                "--sink",
                "stdout",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        ))
    }

    fn spawn(mut cmd: Command) -> Self {
        let proc = Proc::spawn("udp-agent", &mut cmd, false).unwrap_or_else(|e| panic!("{e:#}"));
        Agent { proc }
    }

    fn pid(&self) -> i32 {
        self.proc.pid().expect("a running agent")
    }

    fn log(&self) -> String {
        self.proc.stderr_text()
    }

    /// Waits for the `capturing` log line, which the agent writes once it
    /// is attached and just before it handles SIGTERM (an agent stopped
    /// earlier dies of the signal rather than shutting down).
    fn wait_capturing(&mut self, lab: &Lab) {
        self.wait_attached(lab);
        assert!(
            self.proc.stderr().wait_for("capturing", START_TIMEOUT),
            "no `capturing` line within {START_TIMEOUT:?}; its log:\n{}",
            self.log()
        );
    }

    /// Waits until the program is attached; panics if the agent exits or
    /// the time runs out.
    fn wait_attached(&mut self, lab: &Lab) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(exit) = self.proc.wait(Duration::ZERO) {
                panic!(
                    "the agent exited ({}) before attaching; its log:\n{}",
                    exit.status,
                    exit.stderr_text()
                );
            }
            if lab.has_xdp() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not attach within {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.proc.wait(timeout) {
            Some(exit) => exit.status,
            None => panic!(
                "the agent did not exit within {timeout:?}; its log:\n{}",
                self.log()
            ),
        }
    }

    fn stop(&mut self) -> ExitStatus {
        self.proc
            .signal(libc::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM to the agent: {e}"));
        self.wait_exit(TIMEOUT)
    }

    /// The events printed so far.
    fn events(&self) -> Vec<Event> {
        self.proc
            .stdout()
            .snapshot()
            .iter()
            .map(|line| Event::parse(line).unwrap_or_else(|e| panic!("bad stdout line: {e}")))
            .collect()
    }

    /// Payloads of the events printed so far, with their `Detail`.
    fn payloads(&self) -> Vec<(Vec<u8>, Value)> {
        self.events()
            .into_iter()
            .map(|e| (e.payload, e.detail))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Killed outright: the lab removes what it leaves.
        if self.proc.signal(libc::SIGKILL).is_ok() {
            self.proc.wait(Duration::from_secs(10));
        }
    }
}

/// Runs the agent with `caps` until it exits (it is expected to fail).
fn run_to_failure(lab: &Lab, caps: &[&str]) -> (ExitStatus, String) {
    let mut agent = Agent::start(lab, caps, 5514);
    let status = agent.wait_exit(START_TIMEOUT);
    (status, agent.log())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn nobody_with_bpf_net_admin_perfmon_captures() {
    if !can_run("nobody_with_bpf_net_admin_perfmon_captures") {
        return;
    }
    let lab = Lab::new(Bpffs::AsTheUnit);
    let port = 5514;
    let mut agent = Agent::start(&lab, &CAPS, port);
    agent.wait_attached(&lab);

    // Datagrams over IPv4 and IPv6, each with a payload of its own.
    let v4: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("priv-v4-{i}").into_bytes())
        .collect();
    let v6: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("priv-v6-{i}").into_bytes())
        .collect();
    let wanted: Vec<Vec<u8>> = v4.iter().chain(&v6).cloned().collect();
    let deadline = Instant::now() + TIMEOUT;
    // Bounded: at most 5 rounds, resending only what has not arrived (a
    // first datagram can wait on neighbour discovery).
    for _round in 0..5 {
        let seen: Vec<Vec<u8>> = agent.payloads().into_iter().map(|(p, _)| p).collect();
        let missing4: Vec<Vec<u8>> = v4.iter().filter(|p| !seen.contains(p)).cloned().collect();
        let missing6: Vec<Vec<u8>> = v6.iter().filter(|p| !seen.contains(p)).cloned().collect();
        if missing4.is_empty() && missing6.is_empty() {
            break;
        }
        lab.net.send_udp(false, 0, port, &missing4);
        lab.net.send_udp(true, 0, port, &missing6);
        let round_end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < round_end.min(deadline) {
            let got = agent.payloads();
            if wanted.iter().all(|w| got.iter().any(|(p, _)| p == w)) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    let got = agent.payloads();
    for w in &wanted {
        let Some((_, detail)) = got.iter().find(|(p, _)| p == w) else {
            panic!(
                "no event with payload {:?}; events: {:#?}; log:\n{}",
                String::from_utf8_lossy(w),
                agent.proc.stdout().snapshot(),
                agent.log()
            );
        };
        assert_eq!(detail["Destination"]["Port"], u64::from(port));
        assert_eq!(detail["Interface"], lab.net.host_if.as_str());
        let from = if w.starts_with(b"priv-v4") {
            lab.net.ns_v4.to_string()
        } else {
            lab.net.ns_v6.to_string()
        };
        assert_eq!(detail["Source"]["Address"], from.as_str());
    }
    println!(
        "nobody with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON captured {} datagrams",
        wanted.len()
    );

    // The pins are the agent user's, 0600: no other user can open them.
    let mut pins = Vec::new();
    for entry in fs::read_dir(&lab.pin_dir).expect("read pin dir") {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let mode = meta.mode() & 0o7777;
        println!(
            "pin {}: mode {mode:04o} uid {}",
            entry.path().display(),
            meta.uid()
        );
        assert_eq!(meta.uid(), AGENT_UID, "{}", entry.path().display());
        assert_eq!(
            mode & 0o077,
            0,
            "{} is accessible to group/others (mode {mode:04o})",
            entry.path().display()
        );
        pins.push(entry.file_name());
    }
    assert!(!pins.is_empty(), "no pins under {}", lab.pin_dir.display());
    let dir_mode = fs::metadata(&lab.pin_dir).unwrap().mode() & 0o7777;
    assert_eq!(
        dir_mode & 0o002,
        0,
        "pin directory is world-writable ({dir_mode:04o})"
    );

    // The agent's user, with CAP_BPF alone, can read its counters…
    let pin_dir = lab.pin_dir.to_string_lossy().to_string();
    let out = as_user(
        AGENT_UID,
        &["bpf"],
        &["stats", "--json", "--pin-dir", &pin_dir],
    )
    .output()
    .expect("stats");
    assert!(
        out.status.success(),
        "`udp-agent stats` as the agent's user with CAP_BPF failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats --json");
    assert!(
        stats["counters"]["captured"].as_u64().unwrap_or(0) >= wanted.len() as u64,
        "stats: {stats}"
    );
    // …another user, even with CAP_BPF, cannot.
    let out = as_user(
        OTHER_UID,
        &["bpf"],
        &["stats", "--json", "--pin-dir", &pin_dir],
    )
    .output()
    .expect("stats");
    println!(
        "`udp-agent stats` as uid {OTHER_UID} with CAP_BPF: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        !out.status.success(),
        "another user read the agent's maps: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // SIGTERM: a clean exit that detaches and removes the pins, all
    // without privileges beyond the three.
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.log());
    assert!(!lab.has_xdp(), "XDP still attached after exit");
    assert!(
        !lab.pin_dir.exists(),
        "pins left behind: {}",
        lab.pin_dir.display()
    );
}

/// With one of the three capabilities missing the agent exits non-zero and
/// says which one, before it touches the interface or bpffs.
fn refused_without(missing: &str) {
    let lab = Lab::new(Bpffs::AsTheUnit);
    let caps: Vec<&str> = CAPS.iter().copied().filter(|c| *c != missing).collect();
    let (status, log) = run_to_failure(&lab, &caps);
    let name = format!("CAP_{}", missing.to_uppercase());
    println!("without {name}: {status}: {}", log.trim());
    assert!(!status.success(), "the agent ran without {name}");
    assert!(
        log.contains(&name) && log.contains("missing"),
        "the error does not name {name}: {log}"
    );
    assert!(!lab.has_xdp(), "XDP attached without {name}");
    assert!(!lab.pin_dir.exists(), "pins made without {name}");
}

#[test]
fn refused_without_cap_bpf() {
    if can_run("refused_without_cap_bpf") {
        refused_without("bpf");
    }
}

#[test]
fn refused_without_cap_net_admin() {
    if can_run("refused_without_cap_net_admin") {
        refused_without("net_admin");
    }
}

#[test]
fn refused_without_cap_perfmon() {
    if can_run("refused_without_cap_perfmon") {
        refused_without("perfmon");
    }
}

/// On systemd's bpffs (mode 0700) the agent's user cannot reach its pin
/// directory: why deploy/udp-agent.service makes /sys/fs/bpf traversable
/// and gives it a directory. The error names the path and the cause.
#[test]
fn refused_on_an_unprepared_bpffs() {
    if !can_run("refused_on_an_unprepared_bpffs") {
        return;
    }
    let lab = Lab::new(Bpffs::SystemdDefault);
    let (status, log) = run_to_failure(&lab, &CAPS);
    println!("on a mode 0700 bpffs: {status}: {}", log.trim());
    assert!(!status.success());
    assert!(
        log.contains(&*lab.pin_dir.to_string_lossy()) && log.contains("Permission denied"),
        "the error does not say which path it could not use and why: {log}"
    );
    assert!(!lab.has_xdp(), "XDP attached although pinning failed");
}

// ---------------------------------------------------------------------------
// The pin directory and the source lists, with agents run as root
// ---------------------------------------------------------------------------

/// `udp-agent args…` as root must fail; its stderr.
fn ctl_fails(args: &[&str]) -> String {
    let out = ctl_as_root(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "`udp-agent {}` succeeded: {err}",
        args.join(" ")
    );
    err
}

/// `udp-agent args…` as root must succeed; its stdout.
fn ctl_ok(args: &[&str]) -> String {
    let out = ctl_as_root(args);
    assert!(
        out.status.success(),
        "`udp-agent {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a root agent on `pin_dir` with `extra` and waits for it to
/// exit, which it must do with an error; its log.
fn refused(lab: &Lab, pin_dir: &Path, extra: &[&str]) -> String {
    let mut agent = Agent::start_as_root(lab, pin_dir, extra);
    let status = agent.wait_exit(START_TIMEOUT);
    let log = agent.log();
    assert!(
        !status.success(),
        "an agent started on {}: {log}",
        pin_dir.display()
    );
    println!("--pin-dir {}: {}", pin_dir.display(), log.trim());
    log
}

/// One running agent; a second one on any other spelling of its pin
/// directory is refused without touching its pins, and `ports list` with
/// any spelling finds it. Its lock file is gone once it exits.
#[test]
fn every_spelling_of_the_pin_directory_is_one_instance() {
    if !can_run("every_spelling_of_the_pin_directory_is_one_instance") {
        return;
    }
    let lab = Lab::new(Bpffs::Open);
    let mut first = Agent::start_as_root(&lab, &lab.pin_dir, &["--port", "5514"]);
    first.wait_capturing(&lab);
    let pid = first.pid();

    // A symbolic link to the pin directory inside bpffs, and one to bpffs
    // from outside it.
    let link_in = lab.bpffs.join("pins-link");
    std::os::unix::fs::symlink(&lab.pin_dir, &link_in).expect("symlink in bpffs");
    let link_out = lab.root.join("bpf-link");
    std::os::unix::fs::symlink(&lab.bpffs, &link_out).expect("symlink to bpffs");
    let owned = lab.pin_dir.parent().unwrap().display().to_string();
    let spellings = [
        format!("{owned}//pins"),
        format!("{owned}/./pins"),
        format!("{owned}/pins/"),
        format!("{owned}/../udp-agent/pins"),
        link_in.display().to_string(),
        format!("{}/udp-agent/pins", link_out.display()),
    ];
    for spelling in &spellings {
        let log = refused(&lab, Path::new(spelling), &["--port", "5515"]);
        assert!(
            log.contains(&format!("another udp-agent (pid {pid}) is running")),
            "--pin-dir {spelling}: {log}"
        );
        for dir in [spelling.as_str(), &lab.pin_dir.to_string_lossy()] {
            let listed = ctl_ok(&["ports", "list", "--pin-dir", dir]);
            assert!(
                listed.lines().any(|l| l.starts_with("5514 ")),
                "`ports list --pin-dir {dir}` after a second agent on {spelling}: {listed}"
            );
        }
    }
    println!(
        "refused a second agent on {} spellings: {spellings:?}",
        spellings.len()
    );

    // The first one still captures.
    let payload = b"still here".to_vec();
    lab.net
        .send_udp(false, 0, 5514, std::slice::from_ref(&payload));
    let deadline = Instant::now() + TIMEOUT;
    while !first.payloads().iter().any(|(p, _)| *p == payload) {
        assert!(Instant::now() < deadline, "no event; log:\n{}", first.log());
        thread::sleep(Duration::from_millis(20));
        lab.net
            .send_udp(false, 0, 5514, std::slice::from_ref(&payload));
    }

    let status = first.stop();
    assert!(status.success(), "exit {status}; log:\n{}", first.log());
    assert!(!lab.pin_dir.exists(), "pins left behind");
    assert!(
        !lab.lock_file.exists(),
        "lock file {} left behind",
        lab.lock_file.display()
    );
}

/// Pin directories, or parents inside bpffs, that someone else owns or
/// may write are refused before anything in them is touched: on a
/// world-writable bpffs any user can create the directory an agent will
/// use, and later swap its pins.
#[test]
fn a_pin_directory_others_control_is_refused() {
    if !can_run("a_pin_directory_others_control_is_refused") {
        return;
    }
    let lab = Lab::new(Bpffs::Open);
    let bpffs = &lab.bpffs;
    let make = |path: &Path, uid: u32, mode: u32| {
        fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        chown(path, uid);
        chmod(path, mode);
    };

    // Refused before attaching, too.
    let refused_here = |pin_dir: &Path| {
        let log = refused(&lab, pin_dir, &["--port", "5514"]);
        assert!(!lab.has_xdp(), "attached: {log}");
        log
    };

    // Created first by another user.
    let theirs = bpffs.join("theirs");
    make(&theirs, OTHER_UID, 0o755);
    let log = refused_here(&theirs);
    assert!(
        log.contains(&format!(
            "{} is owned by uid {OTHER_UID}, not by the agent's user (uid 0)",
            theirs.display()
        )),
        "{log}"
    );
    let meta = fs::metadata(&theirs).unwrap();
    assert_eq!(meta.uid(), OTHER_UID);
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0, "pinned into it");

    // The same through a symbolic link (which anyone may create there).
    let link = bpffs.join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    let log = refused_here(&link);
    assert!(log.contains("is owned by uid 65533"), "{log}");

    // Root's, but anyone may write in it.
    let open = bpffs.join("open");
    make(&open, 0, 0o777);
    let log = refused_here(&open);
    assert!(
        log.contains("is writable by group or others (mode 0777)"),
        "{log}"
    );

    // A parent another user owns.
    let under_theirs = bpffs.join("evil");
    make(&under_theirs, OTHER_UID, 0o755);
    let log = refused_here(&under_theirs.join("pins"));
    assert!(
        log.contains(&format!(
            "{} (a parent) is owned by uid {OTHER_UID}",
            under_theirs.display()
        )),
        "{log}"
    );
    assert!(
        !under_theirs.join("pins").exists(),
        "made a directory in theirs"
    );
    // A parent anyone may write, without the sticky bit.
    let shared = bpffs.join("shared");
    make(&shared, 0, 0o777);
    let log = refused_here(&shared.join("pins"));
    assert!(log.contains("without the sticky bit (mode 0777)"), "{log}");
    assert!(
        !shared.join("pins").exists(),
        "made a directory in a shared one"
    );

    // Its own directory under root-owned parents, and the sticky
    // world-writable bpffs root, is fine.
    let mut agent = Agent::start_as_root(&lab, &lab.pin_dir, &["--port", "5514"]);
    agent.wait_capturing(&lab);
    let mode = fs::metadata(&lab.pin_dir).unwrap().mode() & 0o7777;
    assert_eq!(mode & 0o077, 0, "pin directory made with mode {mode:04o}");
    // Dropping the agent kills it; the lab removes what it leaves.
}

/// `sources deny` (and `allow`) past the list's capacity changes nothing
/// and says what the limit is; up to it, everything is applied.
#[test]
fn a_source_list_past_capacity_is_refused_whole() {
    if !can_run("a_source_list_past_capacity_is_refused_whole") {
        return;
    }
    const LIMIT: u32 = 65_536;
    let lab = Lab::new(Bpffs::Open);
    let pin_dir = lab.pin_dir.to_string_lossy().into_owned();
    let mut agent = Agent::start_as_root(
        &lab,
        &lab.pin_dir,
        &["--port", "5514", "--deny", "203.0.113.0/24"],
    );
    agent.wait_capturing(&lab);
    let hosts = |first: u32, n: u32| -> Vec<String> {
        (first..first + n)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .collect()
    };
    let sources = |verb: &str, nets: &[String]| -> Vec<String> {
        let mut args = vec!["sources", verb, "--pin-dir", &pin_dir];
        args.extend(nets.iter().map(String::as_str));
        args.into_iter().map(str::to_owned).collect()
    };
    let listed = |kind: &str| -> usize {
        ctl_ok(&["sources", "list", "--pin-dir", &pin_dir])
            .lines()
            .filter(|l| l.starts_with(kind))
            .count()
    };

    // One more than fits: nothing is added.
    let too_many = sources("deny", &hosts(0, LIMIT));
    let args: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let err = ctl_fails(&args);
    assert!(
        err.contains(&format!(
            "the deny list holds at most {LIMIT} IPv4 prefixes: it has 1 and this adds {LIMIT} more, so nothing was changed"
        )),
        "{err}"
    );
    assert_eq!(listed("deny "), 1);

    // Exactly what fits (a repeat of a listed prefix takes no room).
    let mut fits = hosts(0, LIMIT - 1);
    fits.push("203.0.113.0/24".into());
    let fits = sources("deny", &fits);
    let args: Vec<&str> = fits.iter().map(String::as_str).collect();
    ctl_ok(&args);
    assert_eq!(listed("deny "), LIMIT as usize);
    let err = ctl_fails(&["sources", "deny", "--pin-dir", &pin_dir, "192.0.2.1"]);
    assert!(err.contains("it has 65536 and this adds 1 more"), "{err}");

    // The allow list and IPv6 have room of their own.
    ctl_ok(&[
        "sources",
        "allow",
        "--pin-dir",
        &pin_dir,
        "10.0.0.0/8",
        "fd00::/8",
    ]);
    assert_eq!(listed("allow "), 2);
    assert!(agent.stop().success(), "{}", agent.log());
}
