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

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use thiserror::Error;
use udp_ebpf_common::{Config, PORT_COUNT, PortRule, counter};

use crate::ports::{PortRange, compact};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/udp-agent";
/// Where instance locks live (systemd's `RuntimeDirectory=udp-agent`).
pub const LOCK_DIR: &str = "/run/udp-agent";
const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

pub const PORTS_PIN: &str = "PORTS";
pub const CONFIG_PIN: &str = "CONFIG";
pub const COUNTERS_PIN: &str = "COUNTERS";

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
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

/// Held for the life of a running agent.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_path(pin_dir: &Path) -> PathBuf {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Path::new(LOCK_DIR).join(format!("{name}.lock"))
}

/// Takes the instance lock for `pin_dir`, then removes stale pins and
/// creates the directory afresh.
pub fn claim(pin_dir: &Path) -> Result<InstanceLock, ControlError> {
    ensure_bpffs(pin_dir)?;
    let lock_dir = Path::new(LOCK_DIR);
    fs::create_dir_all(lock_dir).map_err(io_err(lock_dir))?;
    let path = lock_path(pin_dir);
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
    file.set_len(0).map_err(io_err(&path))?;
    write!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    remove_pins(pin_dir)?;
    fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
    Ok(InstanceLock { _file: file, path })
}

/// Removes the pins and the directory (the lock holder's job at exit, and
/// the cleanup of a killed agent's leftovers).
pub fn remove_pins(pin_dir: &Path) -> Result<(), ControlError> {
    match fs::read_dir(pin_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
            fs::remove_dir(pin_dir).map_err(io_err(pin_dir))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(pin_dir)(e)),
    }
}

fn open_pin(pin_dir: &Path, name: &'static str) -> Result<Map, ControlError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(ControlError::NotRunning(pin_dir.to_path_buf()));
    }
    let data = MapData::from_pin(&path).map_err(|source| ControlError::Map {
        what: "opening pinned map",
        path: path.clone(),
        source,
    })?;
    Ok(match name {
        COUNTERS_PIN => Map::PerCpuArray(data),
        _ => Map::Array(data),
    })
}

/// Reads and changes a running agent's maps.
pub struct Control {
    pin_dir: PathBuf,
    ports: Array<MapData, PortRule>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
}

impl Control {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, ControlError> {
        let conv = |name: &'static str| {
            move |source| ControlError::Map {
                what: "using pinned map",
                path: pin_dir.join(name),
                source,
            }
        };
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            ports: Array::try_from(open_pin(pin_dir, PORTS_PIN)?).map_err(conv(PORTS_PIN))?,
            config: Array::try_from(open_pin(pin_dir, CONFIG_PIN)?).map_err(conv(CONFIG_PIN))?,
            counters: PerCpuArray::try_from(open_pin(pin_dir, COUNTERS_PIN)?)
                .map_err(conv(COUNTERS_PIN))?,
        })
    }

    /// Takes the control maps out of a freshly loaded object, pins them
    /// under `pin_dir`, and wraps them.
    pub fn take_and_pin(ebpf: &mut aya::Ebpf, pin_dir: &Path) -> Result<Self, ControlError> {
        let mut take = |name: &'static str| -> Result<Map, ControlError> {
            let path = pin_dir.join(name);
            let map = ebpf.take_map(name).ok_or_else(|| ControlError::Io {
                path: path.clone(),
                source: io::Error::other(format!("the eBPF object has no map {name}")),
            })?;
            map.pin(&path).map_err(|e| ControlError::Io {
                path,
                source: io::Error::other(e),
            })?;
            Ok(map)
        };
        let ports = take(PORTS_PIN)?;
        let config = take(CONFIG_PIN)?;
        let counters = take(COUNTERS_PIN)?;
        let conv = |name: &'static str| {
            move |source| ControlError::Map {
                what: "using map",
                path: pin_dir.join(name),
                source,
            }
        };
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            ports: Array::try_from(ports).map_err(conv(PORTS_PIN))?,
            config: Array::try_from(config).map_err(conv(CONFIG_PIN))?,
            counters: PerCpuArray::try_from(counters).map_err(conv(COUNTERS_PIN))?,
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

    /// Enables or disables every port in `range`.
    pub fn set_ports(&mut self, range: PortRange, enabled: bool) -> Result<(), ControlError> {
        let rule = if enabled {
            PortRule::enabled()
        } else {
            PortRule::default()
        };
        for port in range.iter() {
            let err = self.map_err("updating", PORTS_PIN);
            self.ports.set(u32::from(port), rule, 0).map_err(err)?;
        }
        Ok(())
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

    /// Kernel counters summed over CPUs, in `counter::NAMES` order.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, ControlError> {
        let mut out = Vec::with_capacity(counter::NAMES.len());
        for (i, name) in counter::NAMES.iter().enumerate() {
            let err = self.map_err("reading", COUNTERS_PIN);
            let values = self.counters.get(&(i as u32), 0).map_err(err)?;
            out.push((*name, values.iter().sum()));
        }
        Ok(out)
    }

    /// One kernel counter summed over CPUs.
    pub fn counter(&self, index: u32) -> Result<u64, ControlError> {
        let err = self.map_err("reading", COUNTERS_PIN);
        Ok(self.counters.get(&index, 0).map_err(err)?.iter().sum())
    }
}
