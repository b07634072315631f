//! Runtime control through maps pinned in bpffs.
//!
//! `udp-agent run` pins `PORTS`, `CONFIG` and `COUNTERS` under its pin
//! directory. Any other process with the right privileges (`udp-agent ports`,
//! `udp-agent stats`, bpftool) opens those pins and reads or writes the very
//! maps the running XDP program uses: a port change applies to the next
//! packet, without a restart, and nothing in flight is lost.
//!
//! An instance lock (`flock` on a file under `/run/udp-agent`) tells a live
//! agent from pins left behind by one that was killed: pins under a pin
//! directory nobody holds the lock for are stale and are removed at start.
//! The lock is named after the pin directory as the kernel resolves it, so
//! every spelling of one directory (`//`, `/./`, a trailing `/`, symbolic
//! links) is one instance.
//!
//! Whoever can write to the pin directory can replace a pin with a map or
//! directory of their own, and `udp-agent ports`/`sources` would then
//! configure that instead. `/sys/fs/bpf` is often world-writable (sticky,
//! mode 1777), so any user can create the default pin directory before the
//! agent first starts: the agent refuses a pin directory that is not its
//! user's or that others may write, and a parent inside bpffs that is
//! neither root's nor its user's or that others may write without the
//! sticky bit.

use std::{
    collections::BTreeSet,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Component, Path, PathBuf},
};

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;
use udp_ebpf_common::{
    CONFIG_ALLOWLIST, CONFIG_DENYLIST, CONFIG_REJECT_DROP, Config, Encoding, Limit, MAX_PREFIXES,
    PORT_COUNT, PortRule, PortState, SourceKey, SourceState, counter,
};

use crate::ports::{PortRange, compact};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/udp-agent";
/// Where instance locks live (systemd's `RuntimeDirectory=udp-agent`).
pub const LOCK_DIR: &str = "/run/udp-agent";
const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

pub const PORTS_PIN: &str = "PORTS";
pub const PORT_STATE_PIN: &str = "PORT_STATE";
pub const CONFIG_PIN: &str = "CONFIG";
pub const COUNTERS_PIN: &str = "COUNTERS";
pub const SOURCES_PIN: &str = "SOURCES";
pub const ALLOW_V4_PIN: &str = "ALLOW_V4";
pub const DENY_V4_PIN: &str = "DENY_V4";
pub const ALLOW_V6_PIN: &str = "ALLOW_V6";
pub const DENY_V6_PIN: &str = "DENY_V6";
pub const PORT_CAPTURED_PIN: &str = "PORT_CAPTURED";

/// Every map another process may need, in pinning order.
const PINNED: [&str; 10] = [
    PORTS_PIN,
    PORT_STATE_PIN,
    CONFIG_PIN,
    COUNTERS_PIN,
    SOURCES_PIN,
    ALLOW_V4_PIN,
    DENY_V4_PIN,
    ALLOW_V6_PIN,
    DENY_V6_PIN,
    PORT_CAPTURED_PIN,
];

#[derive(Debug, Error)]
pub enum ControlError {
    #[error(
        "no running udp-agent at {0}: start one with `udp-agent run` (or pass the same --pin-dir it uses)"
    )]
    NotRunning(PathBuf),
    #[error(
        "another udp-agent (pid {pid}) is running with pin directory {dir}; stop it or pass a different --pin-dir"
    )]
    AlreadyRunning { dir: PathBuf, pid: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    Map {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "{0} is not on a BPF filesystem and mounting one there failed: {1} (mount it with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NotBpfFs(PathBuf, io::Error),
    #[error("--pin-dir {0} must be an absolute path under a bpffs mount")]
    NotAbsolute(PathBuf),
    #[error("{path} {why}: whoever can write there can swap the agent's pins for their own. {fix}")]
    Unsafe {
        path: PathBuf,
        why: String,
        fix: &'static str,
    },
    #[error(
        "the {list} list holds at most {limit} {family} prefixes: it has {present} and this adds {adding} more, so nothing was changed (merge neighbouring prefixes into shorter ones, or remove some with `udp-agent sources remove`)"
    )]
    ListFull {
        list: &'static str,
        family: &'static str,
        limit: u32,
        present: usize,
        adding: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure the parent of `pin_dir` is on bpffs, mounting
/// `/sys/fs/bpf` if that is where it should be and nothing is mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), ControlError> {
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Err(ControlError::NotBpfFs(
            pin_dir.to_path_buf(),
            io::Error::other("not under /sys/fs/bpf"),
        ));
    }
    fs::create_dir_all(root).map_err(io_err(root))?;
    // SAFETY: constant, NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ControlError::NotBpfFs(
            pin_dir.to_path_buf(),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Held for the life of a running agent. Dropping it removes the lock file
/// (while the lock is still held, so no one can take a lock on a file that
/// is going away: see [`lock`]).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Only our own file: an operator may have removed it, and another
        // agent made a new one, meanwhile. An unprivileged agent cannot
        // remove a file in a lock directory root made for it; systemd
        // removes its RuntimeDirectory= when the service stops.
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` (not followed if a symbolic link) is the file `file` has
/// open.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Where instance locks go: systemd's `$RUNTIME_DIRECTORY` when the unit
/// has `RuntimeDirectory=`, else `/run/udp-agent`.
pub fn lock_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_string_lossy()
                .split(':')
                .next()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(LOCK_DIR))
}

/// The lock file's name for a pin directory (resolved by
/// [`resolve_pin_dir`]).
pub fn lock_name(pin_dir: &Path) -> String {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{name}.lock")
}

/// `pin_dir` as the kernel resolves it: repeated and trailing `/`, `.`,
/// `..` and symbolic links resolved, so that every spelling of a directory
/// gives the same path (and the same instance lock). A directory that does
/// not exist yet is its deepest existing ancestor, resolved, followed by
/// the missing components as given.
pub fn resolve_pin_dir(pin_dir: &Path) -> Result<PathBuf, ControlError> {
    if !pin_dir.is_absolute() {
        return Err(ControlError::NotAbsolute(pin_dir.to_path_buf()));
    }
    let components: Vec<Component> = pin_dir.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        match fs::canonicalize(&prefix) {
            Ok(mut resolved) => {
                for c in &components[existing..] {
                    match c {
                        Component::Normal(name) => resolved.push(name),
                        // `missing/..` cannot be resolved: the kernel would
                        // refuse it too.
                        _ => return Err(io_err(pin_dir)(io::ErrorKind::NotFound.into())),
                    }
                }
                return Ok(resolved);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&prefix)(e)),
        }
    }
    Err(io_err(pin_dir)(io::ErrorKind::NotFound.into()))
}

/// Takes the instance lock for `pin_dir`, makes sure the directory is the
/// agent's own (see the module documentation), then removes stale pins.
/// The pins go in [`resolve_pin_dir`]`(pin_dir)`.
pub fn claim(pin_dir: &Path) -> Result<InstanceLock, ControlError> {
    let pin_dir = &resolve_pin_dir(pin_dir)?;
    ensure_bpffs(pin_dir)?;
    let lock = lock(pin_dir)?;
    // The directory itself is kept from run to run: it may have been
    // prepared by root for an unprivileged agent, as the systemd unit does.
    check_ownership(pin_dir)?;
    // Pins left by an agent that was killed: nobody holds the lock, so they
    // are stale.
    clear_pins(pin_dir)?;
    Ok(lock)
}

/// `flock`s the lock file of `pin_dir` and writes our pid into it.
fn lock(pin_dir: &Path) -> Result<InstanceLock, ControlError> {
    let lock_dir = lock_dir();
    fs::create_dir_all(&lock_dir).map_err(io_err(&lock_dir))?;
    let path = lock_dir.join(lock_name(pin_dir));
    // An agent removes its lock file as it exits, still holding the lock.
    // A lock then taken on the removed file excludes no one, so it counts
    // only if the file is still the one at `path`; otherwise try again with
    // the file now there. Each retry means another agent exited meanwhile.
    for _ in 0..16 {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(ControlError::AlreadyRunning {
                dir: pin_dir.to_path_buf(),
                pid: pid.trim().to_string(),
            });
        }
        if !same_file(&file, &path) {
            continue;
        }
        file.set_len(0).map_err(io_err(&path))?;
        write!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        return Ok(InstanceLock { file, path });
    }
    Err(io_err(&path)(io::Error::other(
        "the lock file was replaced 16 times while taking it; are agents being restarted in a loop?",
    )))
}

/// Refuses `pin_dir` unless it is a directory owned by the agent's
/// effective user that group and others cannot write, and every parent
/// inside its bpffs is owned by root or that user and not writable by
/// group or others (the sticky bit aside, which keeps others from renaming
/// or removing what is not theirs). A pin directory that does not exist
/// yet is created (0700) once the parents it goes in have passed.
///
/// Each directory is opened once, without following a symbolic link, and
/// checked through that descriptor (`fstat`); its parents are reached
/// through `..` of it. What is checked is what the path named when it was
/// opened, and the path must still name it at the end; from then on no
/// other user can change which directory the path names.
fn check_ownership(pin_dir: &Path) -> Result<(), ControlError> {
    let existing = pin_dir
        .ancestors()
        .find(|a| fs::symlink_metadata(a).is_ok())
        .unwrap_or(Path::new("/"));
    if existing != pin_dir {
        let dir = open_dir(existing)?;
        let meta = dir.metadata().map_err(io_err(existing))?;
        check_parent(existing, &meta)?;
        check_parents(existing, dir, meta)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pin_dir)
            .map_err(io_err(pin_dir))?;
    }
    let dir = open_dir(pin_dir)?;
    let meta = dir.metadata().map_err(io_err(pin_dir))?;
    let checked = (meta.dev(), meta.ino());
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(unsafe_dir(
            pin_dir,
            format!(
                "is owned by uid {}, not by the agent's user (uid {euid})",
                meta.uid()
            ),
            "Remove it (the agent creates it), or chown it to the agent's user, or pick another --pin-dir.",
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(
            pin_dir,
            format!(
                "is writable by group or others (mode {:04o})",
                meta.mode() & 0o7777
            ),
            "Make it 0700 (chmod go-w), or pick another --pin-dir.",
        ));
    }
    check_parents(pin_dir, dir, meta)?;
    let now = fs::symlink_metadata(pin_dir).map_err(io_err(pin_dir))?;
    if (now.dev(), now.ino()) != checked {
        return Err(unsafe_dir(
            pin_dir,
            "was replaced while it was being checked".into(),
            "Find out who else writes there, then start again.",
        ));
    }
    Ok(())
}

fn unsafe_dir(path: &Path, why: String, fix: &'static str) -> ControlError {
    ControlError::Unsafe {
        path: path.to_path_buf(),
        why,
        fix,
    }
}

/// `path` opened for `fstat` only: O_PATH needs search permission on the
/// way, as pinning does (an unprivileged agent may traverse a parent it
/// cannot list), and no symbolic link is followed at the end.
fn open_dir(path: &Path) -> Result<File, ControlError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR | libc::ELOOP) => unsafe_dir(
                path,
                "is not a directory (a symbolic link made after the agent resolved it?)".into(),
                "Remove it, or pick another --pin-dir.",
            ),
            _ => io_err(path)(e),
        })
}

/// The rule for a directory above the pin directory.
fn check_parent(path: &Path, meta: &fs::Metadata) -> Result<(), ControlError> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(unsafe_dir(
            path,
            format!(
                "(a parent) is owned by uid {}, neither root nor the agent's user (uid {euid})",
                meta.uid()
            ),
            "Use a pin directory whose parents inside bpffs belong to root or the agent's user.",
        ));
    }
    let sticky = meta.mode() & libc::S_ISVTX != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(unsafe_dir(
            path,
            format!(
                "(a parent) is writable by group or others without the sticky bit (mode {:04o})",
                meta.mode() & 0o7777
            ),
            "chmod go-w (or +t) that directory, or pick another --pin-dir.",
        ));
    }
    Ok(())
}

/// Checks the directories above `dir` (opened at `path`, `meta` its
/// status) up to the root of its bpffs: `..` of a mount's root is on
/// another filesystem (or, at `/`, is itself).
fn check_parents(path: &Path, dir: File, meta: fs::Metadata) -> Result<(), ControlError> {
    let (mut child, mut child_meta) = (dir, meta);
    let mut names = path.ancestors().skip(1);
    loop {
        let name = names.next().unwrap_or(Path::new("/"));
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                child.as_raw_fd(),
                c"..".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io_err(name)(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let parent = unsafe { File::from_raw_fd(fd) };
        let meta = parent.metadata().map_err(io_err(name))?;
        if meta.dev() != child_meta.dev() || meta.ino() == child_meta.ino() {
            return Ok(());
        }
        check_parent(name, &meta)?;
        (child, child_meta) = (parent, meta);
    }
}

/// Removes every pin in `pin_dir`, keeping the directory.
fn clear_pins(pin_dir: &Path) -> Result<(), ControlError> {
    match fs::read_dir(pin_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(pin_dir)(e)),
    }
}

/// Removes the pins and, where we may, the directory (the lock holder's job
/// at exit). An unprivileged agent cannot remove a directory root made for
/// it; that is fine.
pub fn remove_pins(pin_dir: &Path) -> Result<(), ControlError> {
    clear_pins(pin_dir)?;
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(io_err(pin_dir)(e)),
    }
}

fn open_pin(pin_dir: &Path, name: &'static str) -> Result<Map, ControlError> {
    let path = pin_dir.join(name);
    match fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ControlError::NotRunning(pin_dir.to_path_buf()));
        }
        // Most often EACCES: say so rather than "not running".
        Err(e) => return Err(io_err(&path)(e)),
    }
    let data = MapData::from_pin(&path).map_err(|source| ControlError::Map {
        what: "opening pinned map",
        path: path.clone(),
        source,
    })?;
    Ok(wrap(name, data))
}

/// The `Map` variant each of our maps is.
fn wrap(name: &str, data: MapData) -> Map {
    match name {
        COUNTERS_PIN | PORT_CAPTURED_PIN => Map::PerCpuArray(data),
        SOURCES_PIN => Map::LruHashMap(data),
        ALLOW_V4_PIN | DENY_V4_PIN | ALLOW_V6_PIN | DENY_V6_PIN => Map::LpmTrie(data),
        _ => Map::Array(data),
    }
}

/// `pass` or `drop`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Hand the packet on to the host's network stack.
    #[default]
    Pass,
    /// Consume it: nothing else on the host sees it (no ICMP port
    /// unreachable goes back to the sender).
    Drop,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
        })
    }
}

/// What `ports add` sets on a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSettings {
    /// Packets per second; 0 is unlimited.
    pub rate: u64,
    /// Largest burst in packets; 0 means one second's worth (= rate).
    pub burst: u64,
    /// What happens to a captured packet.
    pub action: Action,
    /// How its datagrams become events (format, packing).
    pub encoding: Encoding,
}

impl PortSettings {
    /// Refuses combinations that cannot be what the user meant.
    pub fn validate(&self) -> Result<(), String> {
        validate_rate("", self.rate, self.burst)
    }

    pub fn rule(&self) -> PortRule {
        let mut flags = udp_ebpf_common::PORT_ENABLED;
        if self.action == Action::Drop {
            flags |= udp_ebpf_common::PORT_DROP;
        }
        PortRule {
            flags,
            encoding: self.encoding.word(),
            limit: Limit::per_second(self.rate, self.burst),
        }
    }

    pub fn from_rule(rule: &PortRule) -> Self {
        Self {
            rate: rule.limit.rate(),
            burst: rule.limit.burst(),
            action: if rule.drops() {
                Action::Drop
            } else {
                Action::Pass
            },
            encoding: rule.encoding(),
        }
    }
}

impl std::fmt::Display for PortSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rate == 0 {
            write!(f, "rate=unlimited action={}", self.action)?;
        } else {
            write!(
                f,
                "rate={}/s burst={} action={}",
                self.rate, self.burst, self.action
            )?;
        }
        write!(f, " format={}", self.encoding.format.name())?;
        if self.encoding.pack {
            f.write_str(" pack")?;
        }
        Ok(())
    }
}

/// Checks a rate/burst pair from the command line.
pub fn validate_rate(what: &str, rate: u64, burst: u64) -> Result<(), String> {
    if rate == 0 && burst != 0 {
        return Err(format!(
            "{what}burst {burst} without a {what}rate: give a rate (packets/s) too, or neither for no limit"
        ));
    }
    if rate > 1_000_000_000 {
        return Err(format!(
            "{what}rate {rate}/s is above 1,000,000,000/s, the finest the kernel's nanosecond clock can pace"
        ));
    }
    if burst > 1_000_000_000 {
        return Err(format!(
            "{what}burst {burst} is unreasonably large (max 1,000,000,000)"
        ));
    }
    Ok(())
}

/// One row of the busiest-ports table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub port: u16,
    pub settings: Option<PortSettings>,
    pub captured: u64,
    pub limited: u64,
}

/// One row of the busiest-sources table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStats {
    pub addr: std::net::IpAddr,
    pub captured: u64,
    pub limited: u64,
}

/// The settings that apply to all ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub global_rate: u64,
    pub global_burst: u64,
    pub source_rate: u64,
    pub source_burst: u64,
    pub reject_action: Action,
}

/// Reads and changes a running agent's maps.
pub struct Control {
    pin_dir: PathBuf,
    ports: Array<MapData, PortRule>,
    port_state: Array<MapData, PortState>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    allow_v4: LpmTrie<MapData, [u8; 4], u8>,
    deny_v4: LpmTrie<MapData, [u8; 4], u8>,
    allow_v6: LpmTrie<MapData, [u8; 16], u8>,
    deny_v6: LpmTrie<MapData, [u8; 16], u8>,
    /// Per port, per CPU: datagrams captured.
    port_captured: PerCpuArray<MapData, u64>,
}

impl Control {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, ControlError> {
        let mut maps = Vec::with_capacity(PINNED.len());
        for name in PINNED {
            maps.push(open_pin(pin_dir, name)?);
        }
        Self::from_maps(pin_dir, maps)
    }

    /// Takes the control maps out of a freshly loaded object, pins them
    /// under `pin_dir`, and wraps them.
    pub fn take_and_pin(ebpf: &mut aya::Ebpf, pin_dir: &Path) -> Result<Self, ControlError> {
        Self::take(ebpf, pin_dir, true)
    }

    /// Takes the control maps without pinning them (tests, benchmarks).
    pub fn take_unpinned(ebpf: &mut aya::Ebpf) -> Result<Self, ControlError> {
        Self::take(ebpf, Path::new("(unpinned)"), false)
    }

    fn take(ebpf: &mut aya::Ebpf, pin_dir: &Path, pin: bool) -> Result<Self, ControlError> {
        let mut maps = Vec::with_capacity(PINNED.len());
        for name in PINNED {
            let path = pin_dir.join(name);
            let map = ebpf.take_map(name).ok_or_else(|| ControlError::Io {
                path: path.clone(),
                source: io::Error::other(format!("the eBPF object has no map {name}")),
            })?;
            if pin {
                map.pin(&path).map_err(|e| ControlError::Io {
                    path,
                    source: io::Error::other(e),
                })?;
            }
            maps.push(map);
        }
        Self::from_maps(pin_dir, maps)
    }

    /// `maps` in `PINNED` order.
    fn from_maps(pin_dir: &Path, maps: Vec<Map>) -> Result<Self, ControlError> {
        let conv = |name: &'static str| {
            move |source| ControlError::Map {
                what: "using map",
                path: pin_dir.join(name),
                source,
            }
        };
        let mut it = maps.into_iter();
        let mut next = || it.next().expect("one map per pinned name");
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            ports: Array::try_from(next()).map_err(conv(PORTS_PIN))?,
            port_state: Array::try_from(next()).map_err(conv(PORT_STATE_PIN))?,
            config: Array::try_from(next()).map_err(conv(CONFIG_PIN))?,
            counters: PerCpuArray::try_from(next()).map_err(conv(COUNTERS_PIN))?,
            sources: HashMap::try_from(next()).map_err(conv(SOURCES_PIN))?,
            allow_v4: LpmTrie::try_from(next()).map_err(conv(ALLOW_V4_PIN))?,
            deny_v4: LpmTrie::try_from(next()).map_err(conv(DENY_V4_PIN))?,
            allow_v6: LpmTrie::try_from(next()).map_err(conv(ALLOW_V6_PIN))?,
            deny_v6: LpmTrie::try_from(next()).map_err(conv(DENY_V6_PIN))?,
            port_captured: PerCpuArray::try_from(next()).map_err(conv(PORT_CAPTURED_PIN))?,
        })
    }

    fn map_err(
        &self,
        what: &'static str,
        name: &str,
    ) -> impl FnOnce(aya::maps::MapError) -> ControlError + use<> {
        let path = self.pin_dir.join(name);
        move |source| ControlError::Map { what, path, source }
    }

    /// Enables every port in `range` with `settings`.
    pub fn add_ports(
        &mut self,
        range: PortRange,
        settings: PortSettings,
    ) -> Result<(), ControlError> {
        let rule = settings.rule();
        for port in range.iter() {
            let index = u32::from(port);
            let err = self.map_err("reading", PORTS_PIN);
            let old = self.ports.get(&index, 0).map_err(err)?;
            if old.limit != rule.limit {
                // A new limit starts with a full burst: forget the bucket's
                // theoretical arrival time, which was paced by the old one.
                // (Counters written back here may lose an increment that
                // races with this update; they are informational.)
                let err = self.map_err("reading", PORT_STATE_PIN);
                let mut state = self.port_state.get(&index, 0).map_err(err)?;
                state.tat = 0;
                let err = self.map_err("updating", PORT_STATE_PIN);
                self.port_state.set(index, state, 0).map_err(err)?;
            }
            let err = self.map_err("updating", PORTS_PIN);
            self.ports.set(index, rule, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Enables or disables every port in `range` (no limit, action pass).
    pub fn set_ports(&mut self, range: PortRange, enabled: bool) -> Result<(), ControlError> {
        if enabled {
            return self.add_ports(range, PortSettings::default());
        }
        for port in range.iter() {
            let err = self.map_err("updating", PORTS_PIN);
            self.ports
                .set(u32::from(port), PortRule::default(), 0)
                .map_err(err)?;
        }
        Ok(())
    }

    /// The rule of one port, if it is enabled.
    pub fn port(&self, port: u16) -> Result<Option<PortSettings>, ControlError> {
        let err = self.map_err("reading", PORTS_PIN);
        let rule = self.ports.get(&u32::from(port), 0).map_err(err)?;
        Ok(rule.is_enabled().then(|| PortSettings::from_rule(&rule)))
    }

    /// Enabled ports grouped into ranges of identical settings.
    pub fn port_rules(&self) -> Result<Vec<(PortRange, PortSettings)>, ControlError> {
        let mut out: Vec<(PortRange, PortSettings)> = Vec::new();
        for port in 1..PORT_COUNT {
            let Some(settings) = self.port(port as u16)? else {
                continue;
            };
            let port = port as u16;
            match out.last_mut() {
                Some((r, s)) if *s == settings && r.last.checked_add(1) == Some(port) => {
                    r.last = port;
                }
                _ => out.push((PortRange::single(port), settings)),
            }
        }
        Ok(out)
    }

    /// The enabled ports, as compact ranges.
    pub fn enabled_ports(&self) -> Result<Vec<PortRange>, ControlError> {
        let mut enabled = Vec::new();
        for port in 1..PORT_COUNT {
            let err = self.map_err("reading", PORTS_PIN);
            if self.ports.get(&port, 0).map_err(err)?.is_enabled() {
                enabled.push(port as u16);
            }
        }
        Ok(compact(enabled))
    }

    pub fn set_config(&mut self, config: Config) -> Result<(), ControlError> {
        let err = self.map_err("updating", CONFIG_PIN);
        self.config.set(0, config, 0).map_err(err)
    }

    pub fn config(&self) -> Result<Config, ControlError> {
        let err = self.map_err("reading", CONFIG_PIN);
        self.config.get(&0, 0).map_err(err)
    }

    pub fn limits(&self) -> Result<Limits, ControlError> {
        let c = self.config()?;
        Ok(Limits {
            global_rate: c.global.rate(),
            global_burst: c.global.burst(),
            source_rate: c.per_source.rate(),
            source_burst: c.per_source.burst(),
            reject_action: if c.flags & CONFIG_REJECT_DROP != 0 {
                Action::Drop
            } else {
                Action::Pass
            },
        })
    }

    /// Writes the limits in one map update (validated by the caller).
    pub fn set_limits(&mut self, limits: &Limits) -> Result<(), ControlError> {
        let mut c = self.config()?;
        c.global = Limit::per_second(limits.global_rate, limits.global_burst);
        c.per_source = Limit::per_second(limits.source_rate, limits.source_burst);
        c.flags &= !CONFIG_REJECT_DROP;
        if limits.reject_action == Action::Drop {
            c.flags |= CONFIG_REJECT_DROP;
        }
        self.set_config(c)
    }

    /// Adds a prefix to the allow (`allow = true`) or deny list.
    pub fn add_source(&mut self, net: IpNet, allow: bool) -> Result<(), ControlError> {
        self.add_sources(&[net], allow).map(drop)
    }

    /// Adds prefixes to the allow (`allow = true`) or deny list, all or
    /// none: the room left in each list ([`MAX_PREFIXES`] per address
    /// family) is checked before the first write, and if a write still
    /// fails (another process filled the list meanwhile), what this call
    /// added is removed again. Returns how many prefixes were not on the
    /// list before.
    pub fn add_sources(&mut self, nets: &[IpNet], allow: bool) -> Result<usize, ControlError> {
        let nets: BTreeSet<IpNet> = nets.iter().map(IpNet::trunc).collect();
        let (present4, present6) = (self.list4(allow)?, self.list6(allow)?);
        let new: Vec<IpNet> = nets
            .into_iter()
            .filter(|n| match n {
                IpNet::V4(n) => !present4.contains(n),
                IpNet::V6(n) => !present6.contains(n),
            })
            .collect();
        let new4 = new.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
        check_room(allow, "IPv4", present4.len(), new4)?;
        check_room(allow, "IPv6", present6.len(), new.len() - new4)?;
        for (i, net) in new.iter().enumerate() {
            let name = list_name(net, allow);
            let result = match (net, allow) {
                (IpNet::V4(n), true) => self.allow_v4.insert(&key4(n), 1, 0),
                (IpNet::V4(n), false) => self.deny_v4.insert(&key4(n), 1, 0),
                (IpNet::V6(n), true) => self.allow_v6.insert(&key6(n), 1, 0),
                (IpNet::V6(n), false) => self.deny_v6.insert(&key6(n), 1, 0),
            };
            if let Err(e) = result {
                let err = self.map_err("updating", name)(e);
                for added in &new[..i] {
                    let _ = self.remove_source(*added, allow);
                }
                return Err(err);
            }
        }
        self.sync_list_flags()?;
        Ok(new.len())
    }

    /// Removes a prefix from a list; `Ok(false)` if it was not there.
    pub fn remove_source(&mut self, net: IpNet, allow: bool) -> Result<bool, ControlError> {
        let net = net.trunc();
        let name = list_name(&net, allow);
        let result = match (net, allow) {
            (IpNet::V4(n), true) => self.allow_v4.remove(&key4(&n)),
            (IpNet::V4(n), false) => self.deny_v4.remove(&key4(&n)),
            (IpNet::V6(n), true) => self.allow_v6.remove(&key6(&n)),
            (IpNet::V6(n), false) => self.deny_v6.remove(&key6(&n)),
        };
        let removed = match result {
            Ok(()) => true,
            Err(e) if key_not_found(&e) => false,
            Err(e) => return Err(self.map_err("updating", name)(e)),
        };
        self.sync_list_flags()?;
        Ok(removed)
    }

    /// The allow and deny lists.
    pub fn sources(&self) -> Result<(Vec<IpNet>, Vec<IpNet>), ControlError> {
        let list = |allow| -> Result<Vec<IpNet>, ControlError> {
            let mut out: Vec<IpNet> = self.list4(allow)?.into_iter().map(IpNet::V4).collect();
            out.extend(self.list6(allow)?.into_iter().map(IpNet::V6));
            out.sort();
            Ok(out)
        };
        Ok((list(true)?, list(false)?))
    }

    /// The prefixes of the IPv4 allow (`allow = true`) or deny list.
    fn list4(&self, allow: bool) -> Result<BTreeSet<Ipv4Net>, ControlError> {
        let (trie, name) = if allow {
            (&self.allow_v4, ALLOW_V4_PIN)
        } else {
            (&self.deny_v4, DENY_V4_PIN)
        };
        self.prefixes(trie, name, |a, len| Ipv4Net::new(a.into(), len))
    }

    /// The prefixes of the IPv6 allow (`allow = true`) or deny list.
    fn list6(&self, allow: bool) -> Result<BTreeSet<Ipv6Net>, ControlError> {
        let (trie, name) = if allow {
            (&self.allow_v6, ALLOW_V6_PIN)
        } else {
            (&self.deny_v6, DENY_V6_PIN)
        };
        self.prefixes(trie, name, |a, len| Ipv6Net::new(a.into(), len))
    }

    /// The keys of one list's trie, each made a prefix by `net`.
    fn prefixes<const N: usize, T: Ord, E>(
        &self,
        trie: &LpmTrie<MapData, [u8; N], u8>,
        name: &str,
        net: impl Fn([u8; N], u8) -> Result<T, E>,
    ) -> Result<BTreeSet<T>, ControlError> {
        trie.keys()
            .map(|k| {
                let k = k.map_err(self.map_err("reading", name))?;
                Ok(net(k.data(), k.prefix_len() as u8)
                    .ok()
                    .expect("kernel keeps valid prefixes"))
            })
            .collect()
    }

    /// An empty allow list means everyone, an empty deny list no one: the
    /// kernel looks a list up only while its flag says it has entries. The
    /// flag is set after a first prefix is added and cleared after the last
    /// one is removed, so it never hides an entry once a change returns.
    fn sync_list_flags(&mut self) -> Result<(), ControlError> {
        let allow = self.allow_v4.keys().next().is_some() || self.allow_v6.keys().next().is_some();
        let deny = self.deny_v4.keys().next().is_some() || self.deny_v6.keys().next().is_some();
        let mut c = self.config()?;
        let mut flags = c.flags & !(CONFIG_ALLOWLIST | CONFIG_DENYLIST);
        if allow {
            flags |= CONFIG_ALLOWLIST;
        }
        if deny {
            flags |= CONFIG_DENYLIST;
        }
        if flags != c.flags {
            c.flags = flags;
            self.set_config(c)?;
        }
        Ok(())
    }

    /// Ports with the most captured + limited packets, busiest first.
    pub fn busiest_ports(&self, n: usize) -> Result<Vec<PortStats>, ControlError> {
        let mut rows = Vec::new();
        for port in 1..PORT_COUNT {
            let err = self.map_err("reading", PORT_STATE_PIN);
            let st = self.port_state.get(&port, 0).map_err(err)?;
            let captured = self.port_captured(port as u16)?;
            if captured + st.limited > 0 {
                rows.push(PortStats {
                    port: port as u16,
                    settings: self.port(port as u16)?,
                    captured,
                    limited: st.limited,
                });
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.captured + r.limited));
        rows.truncate(n);
        Ok(rows)
    }

    /// Datagrams captured on `port`, summed over CPUs.
    pub fn port_captured(&self, port: u16) -> Result<u64, ControlError> {
        let err = self.map_err("reading", PORT_CAPTURED_PIN);
        let per_cpu = self.port_captured.get(&u32::from(port), 0).map_err(err)?;
        Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
    }

    /// Sources with the most captured + limited packets, busiest first.
    pub fn busiest_sources(&self, n: usize) -> Result<Vec<SourceStats>, ControlError> {
        let mut rows = Vec::new();
        for item in self.sources.iter() {
            // An entry can be evicted between listing and reading it.
            let Ok((k, st)) = item else { continue };
            let addr = if k.ip_version == udp_ebpf_common::IP_V4 {
                std::net::IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
            } else {
                std::net::IpAddr::V6(Ipv6Addr::from(k.addr))
            };
            rows.push(SourceStats {
                addr,
                captured: st.captured,
                limited: st.limited,
            });
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.captured + r.limited));
        rows.truncate(n);
        Ok(rows)
    }

    /// Kernel counters summed over CPUs, in `counter::NAMES` order.
    /// `seen` is the sum of the terminal outcomes as read here, so the
    /// figures add up even while traffic flows.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, ControlError> {
        let mut values = [0u64; counter::NAMES.len()];
        for (i, value) in values.iter_mut().enumerate() {
            if i as u32 != counter::SEEN {
                *value = self.kernel_counter(i as u32)?;
            }
        }
        values[counter::SEEN as usize] = counter::seen::<ControlError>(|i| Ok(values[i as usize]))?;
        Ok(counter::NAMES.iter().copied().zip(values).collect())
    }

    /// One kernel counter summed over CPUs. `seen` is not counted by the
    /// kernel: it is the sum of the terminal outcomes (`counter::seen`).
    pub fn counter(&self, index: u32) -> Result<u64, ControlError> {
        if index == counter::SEEN {
            return counter::seen(|i| self.kernel_counter(i));
        }
        self.kernel_counter(index)
    }

    /// One slot of the kernel's per-CPU `COUNTERS` array, summed over CPUs.
    fn kernel_counter(&self, index: u32) -> Result<u64, ControlError> {
        let err = self.map_err("reading", COUNTERS_PIN);
        Ok(self.counters.get(&index, 0).map_err(err)?.iter().sum())
    }
}

/// A delete of a missing key: aya reports it as ENOENT from the syscall.
fn key_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Refuses `adding` more prefixes to a list of `present` that would then
/// not fit in its map.
pub fn check_room(
    allow: bool,
    family: &'static str,
    present: usize,
    adding: usize,
) -> Result<(), ControlError> {
    if adding > 0 && present + adding > MAX_PREFIXES as usize {
        return Err(ControlError::ListFull {
            list: if allow { "allow" } else { "deny" },
            family,
            limit: MAX_PREFIXES,
            present,
            adding,
        });
    }
    Ok(())
}

fn list_name(net: &IpNet, allow: bool) -> &'static str {
    match (net, allow) {
        (IpNet::V4(_), true) => ALLOW_V4_PIN,
        (IpNet::V4(_), false) => DENY_V4_PIN,
        (IpNet::V6(_), true) => ALLOW_V6_PIN,
        (IpNet::V6(_), false) => DENY_V6_PIN,
    }
}

fn key4(n: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

fn key6(n: &Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

/// Parses `198.18.0.0/15`, `fd00::/8`, or a bare address (one host).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(format!(
        "`{s}` is not a CIDR prefix or address (examples: 198.18.0.0/15, 203.0.113.7, fd00::/8)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixes_and_addresses() {
        assert_eq!(
            parse_net("198.18.0.0/15").unwrap().to_string(),
            "198.18.0.0/15"
        );
        assert_eq!(
            parse_net("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(parse_net("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(parse_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_net("198.18.0.0/33").is_err());
        assert!(parse_net("nonsense").is_err());
        assert!(parse_net("198.18.0/16").is_err());
    }

    #[test]
    fn host_bits_are_ignored_so_remove_matches_add() {
        let a = parse_net("198.18.7.9/16").unwrap().trunc();
        assert_eq!(a.to_string(), "198.18.0.0/16");
    }

    #[test]
    fn refuses_burst_without_rate() {
        assert!(validate_rate("", 0, 100).is_err());
        assert!(validate_rate("", 0, 0).is_ok());
        assert!(validate_rate("", 1000, 0).is_ok());
        assert!(validate_rate("global-", 2_000_000_000, 0).is_err());
    }

    #[test]
    fn port_settings_round_trip_through_the_rule() {
        let s = PortSettings {
            rate: 1000,
            burst: 2000,
            action: Action::Drop,
            encoding: Encoding {
                format: udp_ebpf_common::Format::Syslog,
                pack: true,
            },
        };
        let rule = s.rule();
        assert!(rule.is_enabled() && rule.drops());
        assert_eq!(PortSettings::from_rule(&rule), s);
        assert_eq!(
            s.to_string(),
            "rate=1000/s burst=2000 action=drop format=syslog pack"
        );
        let unlimited = PortSettings::default();
        assert_eq!(
            unlimited.to_string(),
            "rate=unlimited action=pass format=base64"
        );
        assert!(!unlimited.rule().limit.is_limited());
    }
}
