//! The benchmark's only network: test-support's [`VethNs`] with the
//! benchmark's settings. One namespace joined to the root namespace by a
//! veth pair, addressed from 198.18.0.0/15 (198.18.250.0/30 …
//! 198.18.254.0/30, through the same slot locks as the tests, so a
//! benchmark and a test run never share a subnet), with no default route,
//! so nothing sent in the namespace can leave the pair.
//!
//! [`VethNs`] removes the link and the namespace when dropped, also when a
//! scenario fails; the benchmark turns SIGINT/SIGTERM into an orderly unwind
//! so that drop runs. Leftovers of an earlier benchmark process that died
//! (its pid no longer exists) are removed at start ([`remove_leftovers`]).

use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};
use test_support::netns::{Owner, Slots};
pub use test_support::netns::{VethNs, enter, ifindex};

/// The benchmark's namespace and pair: IPv4 only, the kernel's MTU and
/// queues, and a permanent neighbour entry for the root side (the senders
/// write frames with its MAC directly, so no neighbour resolution is
/// involved).
pub fn create() -> Result<VethNs> {
    VethNs::builder("udp-bench")
        .owner(Owner::Bench)
        .slots(Slots::Among(250..=254))
        .no_ipv6()
        .permanent_neighbour()
        .create()
        .context("creating the benchmark's namespace and veth pair")
}

/// Removes namespaces (and their links), and agents' pin directories
/// (`/sys/fs/bpf/udp-bench-<pid>-<n>`), left by benchmark processes that no
/// longer exist.
pub fn remove_leftovers() {
    test_support::netns::remove_leftovers(Owner::Bench);
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("udp-bench-")
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing leftover pin directory /sys/fs/bpf/{name}");
            test_support::agent::remove_pins(&e.path());
        }
    }
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
