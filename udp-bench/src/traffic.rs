//! Senders. Both transmit whole Ethernet frames out of the namespace's end
//! of the veth pair, so they arrive at the root-side interface exactly as
//! built; both are bounded in packet count and in time, and both run on
//! CPU 0 (where the veth's receive path, XDP included, then runs too).
//!
//! * [`send_paced`]: our paced `AF_PACKET` sender (`sendmmsg`, at most 16
//!   frames per burst) offering a fixed rate. It writes a CLOCK_MONOTONIC
//!   timestamp and a sequence number into every payload just before it is
//!   sent, so the endpoint can compute latency.
//! * [`trafgen`]: netsniff-ng's trafgen at full speed (its TX ring), the
//!   flood check. trafgen cannot offer a fixed rate above ~100k packets/s:
//!   0.6.8's `--rate Npps` sends each second's N packets back to back at
//!   full speed and then sleeps out the second, and `--gap` pacing costs a
//!   nanosleep per packet (about 100k packets/s at most here).

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use udp_ebpf_common::frame::FrameBuilder;

use crate::{
    netns::{self, VethNs},
    proc::{Proc, interrupted, monotonic_ns, pin_to_cpu},
};

/// Ethernet + IPv4 (no options) + UDP headers.
pub const HEADERS: usize = 14 + 20 + 8;
/// First bytes of a timestamped payload.
pub const MAGIC: &[u8; 4] = b"UBT1";
/// Magic, timestamp, sequence number.
pub const STAMP_LEN: usize = 4 + 8 + 8;

/// A UDP datagram from the namespace's address to the root side's, port
/// 40000 → `port`, with a printable payload of `len` bytes (checksums
/// valid).
pub fn udp_frame(v: &VethNs, port: u16, len: usize) -> Vec<u8> {
    let text = b"<13>Nov 27 23:42:18 web01 app[2203]: request served in 12ms status=200 ";
    let payload: Vec<u8> = text.iter().copied().cycle().take(len).collect();
    FrameBuilder::ipv4(v.ns_v4.octets(), v.host_v4.octets())
        .macs(v.host_mac, v.ns_mac)
        .udp(40000, port, &payload)
        .build()
}

/// A trafgen packet configuration sending `frame` as is.
pub fn trafgen_config(frame: &[u8]) -> String {
    let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
    let mut s = String::from("/* udp-bench: one UDP datagram, sent as is */\n{\n");
    for chunk in bytes.chunks(16) {
        s += "  ";
        s += &chunk.join(", ");
        s += ",\n";
    }
    s.truncate(s.len() - 2);
    s += "\n}\n";
    s
}

/// What one sender run did.
#[derive(Clone, Debug, Serialize)]
pub struct Sent {
    /// Rate asked for (0: as fast as possible).
    pub nominal_pps: u64,
    pub packets: u64,
    pub secs: f64,
    /// Rate achieved: packets / seconds.
    pub pps: f64,
}

impl Sent {
    /// The sender reached at most 97% of the rate asked for.
    pub fn short(&self) -> bool {
        self.pps < 0.97 * self.nominal_pps as f64
    }
}

/// Runs trafgen in the namespace: `count` copies of the frame in `conf` as
/// fast as it can (its TX ring), one process on CPU 0, without touching the
/// system's socket memory settings or IRQ affinity. Killed after `limit`.
pub fn trafgen(v: &VethNs, conf: &Path, count: u64, limit: Duration) -> Result<Sent> {
    let rate = 0;
    let mut cmd = v.exec("trafgen");
    cmd.args(["--dev", &v.ns_if, "--conf"])
        .arg(conf)
        .args(["--cpus", "1", "--no-sock-mem", "--notouch-irq"])
        .arg("--num")
        .arg(count.to_string());
    let mut p = Proc::spawn("trafgen", &mut cmd, false)?;
    let exit = loop {
        if let Some(e) = p.wait(Duration::from_millis(100)) {
            break e;
        }
        if interrupted() {
            p.stop(libc::SIGINT, Duration::from_secs(5));
            bail!("interrupted");
        }
        if p.age() > limit {
            eprintln!("bench: trafgen exceeded {limit:?}; stopping it");
            break p.stop(libc::SIGINT, Duration::from_secs(5));
        }
    };
    if exit.code != 0 {
        bail!(
            "trafgen failed (exit {}): {}",
            exit.code,
            exit.stderr.join("\n")
        );
    }
    parse_trafgen(&exit.stdout.join("\n"), rate)
        .with_context(|| format!("reading trafgen's output: {}", exit.stdout.join("\n")))
}

fn parse_trafgen(out: &str, rate: u64) -> Option<Sent> {
    let packets = out
        .lines()
        .find(|l| l.contains("packets outgoing"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // "   1 sec, 975765 usec on CPU0 (1200000 packets)"
    let line = out.lines().find(|l| l.contains("usec on CPU"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let sec: f64 = words.first()?.parse().ok()?;
    let usec: f64 = words.get(2)?.parse().ok()?;
    let secs = sec + usec / 1e6;
    Some(Sent {
        nominal_pps: rate,
        packets,
        secs,
        pps: if secs > 0.0 {
            packets as f64 / secs
        } else {
            0.0
        },
    })
}

/// Writes `frame` as a trafgen configuration file in `dir`.
pub fn write_trafgen_config(dir: &Path, name: &str, frame: &[u8]) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    fs::write(&path, trafgen_config(frame))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// An `AF_PACKET` socket bound to one interface of the current namespace.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: this socket only sends.
        // SAFETY: plain syscall.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: valid fd and a sockaddr_ll of the stated size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Skip the qdisc like trafgen does: frames go straight to the driver.
        let one: libc::c_int = 1;
        // SAFETY: valid fd and an int of the stated size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(PacketSocket { fd })
    }

    /// Sends every frame in `frames`; returns how many went out.
    fn send_batch(&self, frames: &mut [Vec<u8>]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdrs are valid; the iovecs outlive the call.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut done = 0;
        while done < msgs.len() {
            // SAFETY: valid fd and message array of the stated length.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (msgs.len() - done) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::yield_now();
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(done)
    }
}

/// Sends `count` copies of `frame` (a frame from [`udp_frame`] with at
/// least [`STAMP_LEN`] payload bytes) at `rate` packets/s from the
/// namespace, each stamped with CLOCK_MONOTONIC and its sequence number
/// starting at `first_seq`. Stops at `max` whatever was sent.
pub fn send_paced(
    v: &VethNs,
    frame: &[u8],
    rate: f64,
    count: u64,
    max: Duration,
    first_seq: u64,
) -> Result<Sent> {
    if frame.len() < HEADERS + STAMP_LEN {
        bail!("frame too short for a timestamp");
    }
    let path = v.netns_path();
    let ifname = v.ns_if.clone();
    let mut template = frame.to_vec();
    // UDP checksum 0 ("none", valid over IPv4): the payload changes per
    // packet and the receivers never need it.
    template[HEADERS - 2..HEADERS].copy_from_slice(&[0, 0]);
    let frame = template;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<Sent> {
            netns::enter(&path)?;
            pin_to_cpu(0);
            let sock = PacketSocket::open(&ifname).context("AF_PACKET socket")?;
            const BATCH: usize = 16;
            let mut frames = vec![frame.clone(); BATCH];
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < count {
                if interrupted() || start.elapsed() > max {
                    break;
                }
                let elapsed = start.elapsed().as_secs_f64();
                let due = ((elapsed * rate) as u64 + 1).min(count);
                if due <= sent {
                    let next = (sent + 1) as f64 / rate;
                    let wait = next - elapsed;
                    if wait > 200e-6 {
                        std::thread::sleep(Duration::from_secs_f64(wait - 100e-6));
                    } else {
                        // Not a spin: the endpoint shares CPU 0 and must
                        // not wait for the sender's time slice to end.
                        std::thread::yield_now();
                    }
                    continue;
                }
                let n = ((due - sent) as usize).min(BATCH);
                let now = monotonic_ns();
                for (i, f) in frames[..n].iter_mut().enumerate() {
                    let p = &mut f[HEADERS..HEADERS + STAMP_LEN];
                    p[..4].copy_from_slice(MAGIC);
                    p[4..12].copy_from_slice(&now.to_le_bytes());
                    p[12..20].copy_from_slice(&(first_seq + sent + i as u64).to_le_bytes());
                }
                sent += sock.send_batch(&mut frames[..n])? as u64;
            }
            let secs = start.elapsed().as_secs_f64();
            Ok(Sent {
                nominal_pps: rate as u64,
                packets: sent,
                secs,
                pps: sent as f64 / secs.max(1e-9),
            })
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trafgen_output_is_read() {
        let out = "\n     1200000 packets outgoing\n   127200000 bytes outgoing\n           1 sec, 975765 usec on CPU0 (1200000 packets)\n";
        let s = parse_trafgen(out, 600_000).unwrap();
        assert_eq!(s.packets, 1_200_000);
        assert!((s.secs - 1.975765).abs() < 1e-9);
        assert!(!s.short());
    }

    #[test]
    fn config_lists_every_byte() {
        let c = trafgen_config(&[1, 2, 255]);
        assert!(c.contains("0x01, 0x02, 0xff\n}"), "{c}");
    }
}
