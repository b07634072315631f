//! Loading the embedded XDP object and attaching it to interfaces.

use std::ffi::CString;

use crate::logging::error_chain;
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, ProgramArray},
    programs::{
        ProgramError, Xdp, XdpMode,
        xdp::{XdpError, XdpLinkId},
    },
};
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};
use udp_ebpf_common::{
    FRAGMENT_PATH_MAP, FRAGMENT_PATH_SLOT, FRAGMENT_PROGRAM, KERNEL_LOG_GLOBAL, KERNEL_LOG_IFACES,
    KERNEL_LOG_INTERVAL_NS,
};

/// The XDP object, built and embedded by build.rs (empty only in a build
/// made with `AYA_BUILD_SKIP` set, for checks and lints).
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
        "this udp-agent binary was built with AYA_BUILD_SKIP set, without its XDP object; build it again without that variable (`cargo xtask build`)"
    )]
    NotEmbedded,
    #[error("loading the eBPF object failed")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("the kernel refused the XDP program")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error("installing the fragment path ({FRAGMENT_PROGRAM} in {FRAGMENT_PATH_MAP}) failed")]
    FragmentPath(#[source] Box<aya::maps::MapError>),
    #[error("reading the XDP program's log (--kernel-log) failed")]
    KernelLog(#[source] Box<dyn std::error::Error + Send + Sync>),
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
/// into the kernel (verification happens here), without its log.
pub fn load(ring_bytes: u32) -> Result<Ebpf, LoadError> {
    load_object(ring_bytes, false)
}

/// [`load`] for `udp-agent run`: with `kernel_log` (`--kernel-log`) the
/// program logs, and its log is forwarded into `tracing` by a task of the
/// current tokio runtime. Without it the kernel removes the program's
/// logging code at load time.
pub fn load_for_run(ring_bytes: u32, kernel_log: bool) -> Result<Ebpf, LoadError> {
    let mut ebpf = load_object(ring_bytes, kernel_log)?;
    if kernel_log {
        forward_kernel_log(&mut ebpf)?;
        info!(
            interval_s = KERNEL_LOG_INTERVAL_NS / 1_000_000_000,
            "kernel log on: the XDP program logs the first frame after each attach and at most one malformed frame per interval"
        );
    }
    Ok(ebpf)
}

fn load_object(ring_bytes: u32, kernel_log: bool) -> Result<Ebpf, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NotEmbedded);
    }
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("EVENTS", ring_bytes)
        .override_global(KERNEL_LOG_GLOBAL, &u8::from(kernel_log), true)
        .load(EBPF_OBJECT)
        .map_err(|e| LoadError::Object(Box::new(e)))?;
    program(&mut ebpf)
        .load()
        .map_err(|e| LoadError::Program(Box::new(e)))?;
    install_fragment_path(&mut ebpf)?;
    Ok(ebpf)
}

/// Reads the program's aya-log records as they come and logs them through
/// the `log` facade, which `logging::init` hands to `tracing`: their
/// target is the program's module (`udp_ebpf::log`).
fn forward_kernel_log(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let logger = aya_log::EbpfLogger::init(ebpf).map_err(|e| LoadError::KernelLog(Box::new(e)))?;
    // SAFETY: the logger owns its ring's map fd for as long as the AsyncFd
    // owns the logger, and always returns that same fd.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| LoadError::KernelLog(Box::new(std::io::Error::from(e))))?;
    tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(e) => {
                    warn!(error = %e, "the XDP program's log can no longer be read; it stops here");
                    return;
                }
            }
        }
    });
    Ok(())
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
    forget_first_frame(ebpf, ifindex);
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

/// With `--kernel-log`, the program logs the first frame on each interface
/// it has no entry for: removing the interface's entry makes it log the
/// first frame after this attach. Without it the entry is never there.
fn forget_first_frame(ebpf: &mut Ebpf, ifindex: u32) {
    let Some(map) = ebpf.map_mut(KERNEL_LOG_IFACES) else {
        return;
    };
    if let Ok(mut logged) = HashMap::<_, u32, u8>::try_from(map) {
        // Absent (the usual case) is an error here, and means the same.
        let _ = logged.remove(&ifindex);
    }
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
    fn the_xdp_object_is_embedded() {
        if option_env!("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
            println!("SKIPPED: built with AYA_BUILD_SKIP, without the XDP object");
            return;
        }
        // ELF, 64-bit, little-endian, e_machine EM_BPF (247): what build.rs
        // builds for bpfel-unknown-none, in every build.
        let o = EBPF_OBJECT;
        assert!(
            o.len() > 64 && o.starts_with(b"\x7fELF\x02\x01") && o[18..20] == [247, 0],
            "embedded object: {} bytes, starting {:02x?}",
            o.len(),
            &o[..o.len().min(20)]
        );
        for name in [PROGRAM, FRAGMENT_PROGRAM] {
            assert!(
                o.windows(name.len()).any(|w| w == name.as_bytes()),
                "no {name} in the object"
            );
        }
    }

    /// The XDP program's log records, as `(level, message)`.
    #[derive(Clone, Default)]
    struct Caught(std::sync::Arc<std::sync::Mutex<Vec<(log::Level, String)>>>);

    impl log::Log for Caught {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let line = (record.level(), record.args().to_string());
            self.0.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    /// The program loaded with `--kernel-log` on or off, with a logger
    /// that catches what it logs; `None` (after saying why) where the
    /// kernel cannot be asked.
    fn kernel(kernel_log: bool) -> Option<(Ebpf, aya_log::EbpfLogger<Caught>, Caught)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || EBPF_OBJECT.is_empty() {
            println!("SKIPPED: loading the XDP program needs root and the embedded object");
            return None;
        }
        let mut ebpf = load_object(1 << 16, kernel_log).expect("load the XDP object");
        let caught = Caught::default();
        let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, caught.clone())
            .expect("the object has aya-log's ring");
        Some((ebpf, logger, caught))
    }

    /// Runs `frame` through `udp_capture` (BPF_PROG_TEST_RUN: the frame
    /// arrives on loopback, ifindex 1, RX queue 0).
    fn run(ebpf: &mut Ebpf, frame: &[u8]) {
        use aya::programs::{TestRun, TestRunOptions};
        let action = program(ebpf)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value;
        assert_eq!(action, 2, "XDP_PASS");
    }

    fn frames() -> (Vec<u8>, Vec<u8>) {
        use udp_ebpf_common::frame::FrameBuilder;
        let whole = FrameBuilder::ipv4([198, 18, 0, 2], [198, 18, 0, 1])
            .udp(40000, 5514, b"hello")
            .build();
        // Ethernet and 6 bytes of an IPv4 header.
        let truncated = whole[..20].to_vec();
        (whole, truncated)
    }

    #[test]
    fn kernel_log_tells_the_first_frame_and_one_malformed_frame_per_interval() {
        let Some((mut ebpf, mut logger, caught)) = kernel(true) else {
            return;
        };
        let (whole, truncated) = frames();
        for frame in [&whole, &whole, &truncated, &truncated, &whole] {
            run(&mut ebpf, frame);
        }
        logger.flush();
        let lines = caught.0.lock().unwrap().clone();
        assert_eq!(
            lines.len(),
            2,
            "one first frame, one malformed frame: {lines:#?}"
        );
        let (level, first) = &lines[0];
        assert_eq!(*level, log::Level::Info);
        assert!(
            first.starts_with("first frame since attach on ifindex 1 (rx queue 0, cpu ")
                && first.contains(&format!(
                    "): {} bytes, {} in its first buffer",
                    whole.len(),
                    whole.len()
                )),
            "{first}"
        );
        let (level, bad) = &lines[1];
        assert_eq!(*level, log::Level::Warn);
        let mut head = truncated.clone();
        head.resize(udp_ebpf_common::KERNEL_LOG_BYTES, 0);
        let head: String = head.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            bad.starts_with(&format!(
                "malformed frame on ifindex 1 (rx queue 0): headers do not parse; 20 bytes, the first 20 of them (then zeros): {head} "
            )),
            "{bad}"
        );
        // A new attach to the interface: its first frame is told again.
        forget_first_frame(&mut ebpf, 1);
        run(&mut ebpf, &whole);
        logger.flush();
        let lines = caught.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[2]
                .1
                .starts_with("first frame since attach on ifindex 1")
        );
    }

    #[test]
    fn without_kernel_log_the_program_logs_nothing() {
        let Some((mut ebpf, mut logger, caught)) = kernel(false) else {
            return;
        };
        let (whole, truncated) = frames();
        for frame in [&whole, &truncated] {
            run(&mut ebpf, frame);
        }
        logger.flush();
        let lines = caught.0.lock().unwrap().clone();
        assert!(lines.is_empty(), "{lines:#?}");
        // And the kernel removed the logging code: the program it runs is
        // smaller than the same object loaded with the log on.
        let (mut on, _, _) = kernel(true).expect("loaded once already");
        let size = |ebpf: &mut Ebpf| {
            let info = program(ebpf).info().expect("program info");
            info.size_translated().expect("translated size")
        };
        let (off, on) = (size(&mut ebpf), size(&mut on));
        assert!(
            off < on,
            "program size with the log off {off} B, on {on} B: nothing removed"
        );
    }

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
