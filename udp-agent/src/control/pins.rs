//! Pin directories and the instance lock: where `udp-agent run` pins its
//! maps, how another process finds them, and how one agent per directory
//! is ensured.
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
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Component, Path, PathBuf},
};

use aya::maps::{Map, MapData};

use super::{ControlError, io_err};

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
pub(super) const PINNED: [&str; 10] = [
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

pub(super) fn open_pin(pin_dir: &Path, name: &'static str) -> Result<Map, ControlError> {
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
pub(super) fn wrap(name: &str, data: MapData) -> Map {
    match name {
        COUNTERS_PIN | PORT_CAPTURED_PIN => Map::PerCpuArray(data),
        SOURCES_PIN => Map::LruHashMap(data),
        ALLOW_V4_PIN | DENY_V4_PIN | ALLOW_V6_PIN | DENY_V6_PIN => Map::LpmTrie(data),
        _ => Map::Array(data),
    }
}

/// Refuses a `run` whose pin directory is not absolute (pins must be found
/// again by other processes).
pub fn check_pin_dir(pin_dir: &Path) -> anyhow::Result<()> {
    if !pin_dir.is_absolute() {
        anyhow::bail!(
            "--pin-dir {} must be an absolute path under a bpffs mount",
            pin_dir.display()
        );
    }
    Ok(())
}
