//! Loading the embedded XDP object and attaching it to interfaces.

use std::ffi::CString;

use crate::logging::error_chain;
use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{
        ProgramError, Xdp, XdpMode,
        xdp::{XdpError, XdpLinkId},
    },
};
use thiserror::Error;
use tracing::{info, warn};
use udp_ebpf_common::{FRAGMENT_PATH_MAP, FRAGMENT_PATH_SLOT, FRAGMENT_PROGRAM};

/// The XDP object, embedded at build time by build.rs (empty if the agent
/// was built without `cargo xtask build`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udp-ebpf.o"));

pub const PROGRAM: &str = "udp_capture";

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Native (driver) mode, falling back to generic (skb) mode if the driver
    /// refuses, with a warning naming the reason.
    Auto,
    /// Native mode only: fail if the driver refuses.
    Driver,
    /// Generic mode: works on every interface, slower.
    Skb,
}

/// The mode an interface ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Driver,
    Skb,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attached::Driver => "driver",
            Attached::Skb => "skb",
        })
    }
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "this udp-agent binary was built without its XDP object; build it with `cargo xtask build` (or run `cargo xtask run -- …`)"
    )]
    NotEmbedded,
    #[error("loading the eBPF object failed")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("the kernel refused the XDP program")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error("installing the fragment path ({FRAGMENT_PROGRAM} in {FRAGMENT_PATH_MAP}) failed")]
    FragmentPath(#[source] Box<aya::maps::MapError>),
    #[error("unknown interface `{0}` (list interfaces with `ip link`)")]
    UnknownInterface(String),
    #[error("attaching XDP to {iface} in {mode} mode failed: {reason}{hint}", reason = error_chain(.error))]
    Attach {
        iface: String,
        mode: &'static str,
        error: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
}

/// Interface index of `name`, or `UnknownInterface`.
pub fn ifindex(name: &str) -> Result<u32, LoadError> {
    let c = CString::new(name).map_err(|_| LoadError::UnknownInterface(name.to_string()))?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(LoadError::UnknownInterface(name.to_string())),
        i => Ok(i),
    }
}

/// Loads the object with a ring buffer of `ring_bytes`, and the program
/// into the kernel (verification happens here).
pub fn load(ring_bytes: u32) -> Result<Ebpf, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NotEmbedded);
    }
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("EVENTS", ring_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| LoadError::Object(Box::new(e)))?;
    program(&mut ebpf)
        .load()
        .map_err(|e| LoadError::Program(Box::new(e)))?;
    install_fragment_path(&mut ebpf)?;
    Ok(ebpf)
}

/// Loads `udp_fragment`, the program `udp_capture` tail-calls for IP
/// fragments, and puts it in its slot. Without it fragments are counted
/// `unsupported` and passed.
pub fn install_fragment_path(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let prog: &mut Xdp = ebpf
        .program_mut(FRAGMENT_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the udp_fragment XDP program");
    prog.load().map_err(|e| LoadError::Program(Box::new(e)))?;
    let fd = prog
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|e| LoadError::Program(Box::new(e)))?;
    let map = ebpf
        .map_mut(FRAGMENT_PATH_MAP)
        .expect("the embedded object has the FRAGMENT_PATH program array");
    let mut slots: ProgramArray<_> =
        ProgramArray::try_from(map).map_err(|e| LoadError::FragmentPath(Box::new(e)))?;
    slots
        .set(FRAGMENT_PATH_SLOT, &fd, 0)
        .map_err(|e| LoadError::FragmentPath(Box::new(e)))
}

pub fn program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the udp_capture XDP program")
}

/// Before 5.11 BPF memory counted against RLIMIT_MEMLOCK; lifting it is
/// harmless after.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not lift RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

/// One attachment, to be detached at shutdown.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: Attached,
    link: XdpLinkId,
}

fn hint(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => {
            " (the driver may not support native XDP, or not at this MTU — ENA refuses MTUs above about 3,498; try --xdp-mode skb)"
        }
        _ => " (is another XDP program attached? see `ip link show`)",
    }
}

/// Attaches the loaded program to `iface`.
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: ModeArg) -> Result<Attachment, LoadError> {
    let ifindex = ifindex(iface)?;
    let prog = program(ebpf);
    let try_mode = |prog: &mut Xdp, mode: XdpMode| {
        prog.attach_to_if_index(ifindex, mode)
            .map_err(|error| LoadError::Attach {
                iface: iface.to_string(),
                mode: if mode == XdpMode::Skb {
                    "skb"
                } else {
                    "driver"
                },
                error: Box::new(error),
                hint: hint(mode),
            })
    };
    let (link, attached) = match mode {
        ModeArg::Driver => (try_mode(prog, XdpMode::Driver)?, Attached::Driver),
        ModeArg::Skb => (try_mode(prog, XdpMode::Skb)?, Attached::Skb),
        ModeArg::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(link) => (link, Attached::Driver),
            Err(LoadError::Attach { error, .. }) => {
                let reason =
                    native_refusal(iface, &error_chain(&error), os_error(&error), mtu(iface));
                warn!(
                    iface,
                    %reason,
                    "native XDP refused; falling back to generic (skb) mode, which is slower"
                );
                (try_mode(prog, XdpMode::Skb)?, Attached::Skb)
            }
            Err(e) => return Err(e),
        },
    };
    info!(iface, ifindex, mode = %attached, "attached");
    Ok(Attachment {
        iface: iface.to_string(),
        ifindex,
        mode: attached,
        link,
    })
}

/// ENA (the EC2 network driver) attaches native XDP only at an MTU of at
/// most 3,498 bytes (ENA Linux driver documentation, "XDP"), and EC2's
/// default MTU is 9,001: native mode then fails with ERANGE or EINVAL.
pub const ENA_NATIVE_XDP_MAX_MTU: u32 = 3498;

/// The MTU of `iface` as sysfs shows it.
pub fn mtu(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The errno behind an attach error, if there is one.
fn os_error(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(XdpError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    }
}

/// Why native mode was refused, in words an operator can act on: an
/// ERANGE/EINVAL at an MTU above what ENA's native XDP takes is said to be
/// the MTU, with the fix.
pub fn native_refusal(iface: &str, reason: &str, errno: Option<i32>, mtu: Option<u32>) -> String {
    match (errno, mtu) {
        (Some(libc::ERANGE | libc::EINVAL), Some(mtu)) if mtu > ENA_NATIVE_XDP_MAX_MTU => format!(
            "{reason}; the MTU of {iface} is {mtu}, above the {ENA_NATIVE_XDP_MAX_MTU} bytes that \
             ENA's native XDP allows (for native mode: `ip link set dev {iface} mtu {ENA_NATIVE_XDP_MAX_MTU}`)"
        ),
        _ => reason.to_owned(),
    }
}

/// Drops an attachment whose interface is gone: the kernel has already
/// removed the program from it, so a failure to detach only means that.
pub fn forget(ebpf: &mut Ebpf, attachment: Attachment) {
    if let Err(e) = program(ebpf).detach(attachment.link) {
        tracing::debug!(iface = attachment.iface, error = %e, "detaching from a vanished interface");
    }
}

/// Detaches an attachment made by [`attach`].
pub fn detach(ebpf: &mut Ebpf, attachment: Attachment) {
    if let Err(e) = program(ebpf).detach(attachment.link) {
        warn!(iface = attachment.iface, error = %e, "detach failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mtu_refusal_says_mtu() {
        let r = native_refusal(
            "ens5",
            "`bpf_link_create` failed: Numerical result out of range (os error 34)",
            Some(libc::ERANGE),
            Some(9001),
        );
        assert!(r.contains("the MTU of ens5 is 9001"), "{r}");
        assert!(r.contains("ip link set dev ens5 mtu 3498"), "{r}");
        let r = native_refusal("ens5", "x", Some(libc::EINVAL), Some(9001));
        assert!(r.contains("MTU"), "{r}");
    }

    #[test]
    fn other_refusals_are_passed_on() {
        assert_eq!(
            native_refusal("ens5", "x", Some(libc::ERANGE), Some(1500)),
            "x"
        );
        assert_eq!(
            native_refusal("lo", "x", Some(libc::EOPNOTSUPP), Some(65536)),
            "x"
        );
        assert_eq!(native_refusal("ens5", "x", None, Some(9001)), "x");
        assert_eq!(native_refusal("ens5", "x", Some(libc::EINVAL), None), "x");
    }

    #[test]
    fn reads_the_mtu_of_loopback() {
        // Every Linux host has lo; its MTU is 65536 by default.
        assert!(mtu("lo").is_some_and(|m| m >= 1500));
        assert_eq!(mtu("no-such-if0"), None);
    }
}
