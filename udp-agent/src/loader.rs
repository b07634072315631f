//! Loading the embedded XDP object and attaching it to interfaces.

use std::ffi::CString;

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use thiserror::Error;
use tracing::{info, warn};

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
    Ok(ebpf)
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
                warn!(
                    iface,
                    reason = %error_chain(&error),
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

/// Detaches an attachment made by [`attach`].
pub fn detach(ebpf: &mut Ebpf, attachment: Attachment) {
    if let Err(e) = program(ebpf).detach(attachment.link) {
        warn!(iface = attachment.iface, error = %e, "detach failed");
    }
}

/// An error and its sources on one line: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
