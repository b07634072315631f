//! The benchmark's only network: one namespace joined to the root namespace
//! by a veth pair, addressed from 198.18.0.0/15 (198.18.250.0/30 … 198.18.254.0/30,
//! clear of the tests' slots), with no default route, so nothing sent in the
//! namespace can leave the pair.
//!
//! [`VethNs`] removes the link and the namespace when dropped, also when a
//! scenario fails; the benchmark turns SIGINT/SIGTERM into an orderly unwind
//! so that drop runs. Leftovers of an earlier benchmark process that died
//! (its pid no longer exists) are removed at start.

use std::{
    fs::{self, File, OpenOptions},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::proc::{run, run_quiet};

/// Third octets the benchmark may use, in order of preference. The tests
/// use 198.18.n.0/30 for a slot n they lock; locking the same lock files
/// keeps a benchmark and a test run from ever sharing a subnet.
const SLOTS: [u8; 5] = [250, 251, 252, 253, 254];
const NS_PREFIX: &str = "ubench-";

#[derive(Debug)]
pub struct VethNs {
    pub netns: String,
    /// Root-namespace end: the interface the agent attaches to.
    pub host_if: String,
    /// Namespace end: where the senders transmit.
    pub ns_if: String,
    pub host_v4: Ipv4Addr,
    pub ns_v4: Ipv4Addr,
    pub host_mac: [u8; 6],
    pub ns_mac: [u8; 6],
    _slot_lock: File,
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), Duration::from_secs(20))
        .with_context(|| format!("ip {}", args.join(" ")))?;
    Ok(())
}

fn slot_dir() -> PathBuf {
    std::env::temp_dir().join("udp-agent-test-slots")
}

fn subnet_in_use(n: u8) -> bool {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.contains(&format!(" 198.18.{n}."))
}

fn claim_slot() -> Result<(u8, File)> {
    let dir = slot_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for n in SLOTS {
        let path = dir.join(format!("slot-{n}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if subnet_in_use(n) {
            continue;
        }
        return Ok((n, file));
    }
    bail!("no free 198.18.250-254.0/30 subnet (all locked or in use)")
}

/// Removes namespaces (and their links) left by benchmark processes that
/// no longer exist.
pub fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing leftover namespace {name} and link ubh{pid}");
            run_quiet(Command::new("ip").args(["link", "del", &format!("ubh{pid}")]));
            run_quiet(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

impl VethNs {
    pub fn new() -> Result<VethNs> {
        let (n, lock) = claim_slot()?;
        let pid = std::process::id();
        let v = VethNs {
            netns: format!("{NS_PREFIX}{pid}"),
            host_if: format!("ubh{pid}"),
            ns_if: format!("ubn{pid}"),
            host_v4: Ipv4Addr::new(198, 18, n, 1),
            ns_v4: Ipv4Addr::new(198, 18, n, 2),
            host_mac: [0x02, 0x75, 0x62, 0x68, 0x00, n],
            ns_mac: [0x02, 0x75, 0x62, 0x6e, 0x00, n],
            _slot_lock: lock,
        };
        v.remove();
        // From here on Drop removes whatever was created.
        v.create()?;
        Ok(v)
    }

    fn create(&self) -> Result<()> {
        let hmac = mac_str(&self.host_mac);
        let nmac = mac_str(&self.ns_mac);
        let (host, peer, ns) = (&*self.host_if, &*self.ns_if, &*self.netns);
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", host, "address", &hmac, "type", "veth", "peer", "name", peer, "address",
            &nmac,
        ])?;
        ip(&["link", "set", peer, "netns", ns])?;
        ip(&["addr", "add", &format!("{}/30", self.host_v4), "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", self.ns_v4),
            "dev",
            peer,
        ])?;
        ip(&["-n", ns, "link", "set", peer, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // The root side answers for its address; the senders write frames
        // with its MAC directly, so no neighbour resolution is involved.
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &self.host_v4.to_string(),
            "lladdr",
            &hmac,
            "dev",
            peer,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    fn remove(&self) {
        // Deleting one end of a veth pair deletes both.
        run_quiet(Command::new("ip").args(["link", "del", &self.host_if]));
        run_quiet(Command::new("ip").args(["netns", "del", &self.netns]));
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }

    /// `ip netns exec <ns> <program>`.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        self.remove();
    }
}

pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The index of interface `name` in this namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Enters the network namespace at `path` on the calling thread only.
pub fn enter(path: &std::path::Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: valid fd of a network namespace file; affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Turns generic receive offload on or off for `ifname` in the root
/// namespace (the `ETHTOOL_SGRO` ioctl; no ethtool binary needed). On a
/// veth, GRO also gives the receiving end the NAPI context that XDP frames
/// sent by its peer need when no XDP program is attached there.
pub fn set_gro(ifname: &str, on: bool) -> Result<()> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name too long: {ifname}");
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: plain syscall.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: valid fd; `req` is an ifreq whose data points to a live
    // ethtool_value for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        bail!(
            "turning GRO {} on {ifname}: {}",
            if on { "on" } else { "off" },
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
