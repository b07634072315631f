//! Senders. Both transmit whole Ethernet frames out of the namespace's end
//! of the veth pair, so they arrive at the root-side interface exactly as
//! built; both are bounded in packet count and in time, and both run on
//! CPU 0 (where the veth's receive path, XDP included, then runs too).
//!
//! * [`send_paced`]: our paced `AF_PACKET` sender (`sendmmsg`, at most 16
//!   frames per burst) offering a fixed rate. It stamps a CLOCK_MONOTONIC
//!   send time and a sequence number into every payload just before it is
//!   sent (`fake_eventbridge::latency::stamp`), so the endpoint can
//!   compute latency.
//! * [`trafgen`]: netsniff-ng's trafgen at full speed (its TX ring), the
//!   flood check. trafgen cannot offer a fixed rate above ~100k packets/s:
//!   0.6.8's `--rate Npps` sends each second's N packets back to back at
//!   full speed and then sleeps out the second, and `--gap` pacing costs a
//!   nanosleep per packet (about 100k packets/s at most here).

use std::{
    fs,
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fake_eventbridge::latency::stamp;
use serde::Serialize;
use test_support::{RawSocket, frame::FrameBuilder, netns::ifindex};

use crate::{
    bpf,
    netns::{self, VethNs},
    proc::{Proc, interrupted, ksoftirqd_ns, pin_to_cpu},
};

/// Ethernet + IPv4 (no options) + UDP headers.
pub const HEADERS: usize = 14 + 20 + 8;

/// A UDP datagram from the namespace's address to the root side's, port
/// 40000 → `port`, with a printable payload of `len` bytes (checksums
/// valid).
pub fn udp_frame(v: &VethNs, port: u16, len: usize) -> Vec<u8> {
    let text = b"<13>Nov 27 23:42:18 web01 app[2203]: request served in 12ms status=200 ";
    let payload: Vec<u8> = text.iter().copied().cycle().take(len).collect();
    udp_frame_of(v, port, &payload)
}

/// [`udp_frame`] carrying `payload`.
pub fn udp_frame_of(v: &VethNs, port: u16, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::ipv4(v.ns_v4.octets(), v.host_v4.octets())
        .macs(v.host_mac, v.ns_mac)
        .udp(40000, port, payload)
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
    /// CPU seconds the sending thread used while it sent (0 for trafgen):
    /// its own work, and the receiving side's kernel work that ran in its
    /// context (the veth's NAPI poll and the XDP program, run as softirq
    /// work when the sender re-enables bottom halves; this kernel has no
    /// IRQ time accounting, so that time is the sender's).
    #[serde(default)]
    pub cpu_s: f64,
    /// CPU seconds `ksoftirqd/0` ran meanwhile: receive work the kernel
    /// deferred from the sender's context to its thread (on a shared
    /// machine, possibly others' too).
    #[serde(default)]
    pub softirqd_cpu_s: f64,
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
        cpu_s: 0.0,
        softirqd_cpu_s: 0.0,
    })
}

/// Writes `frame` as a trafgen configuration file in `dir`.
pub fn write_trafgen_config(dir: &Path, name: &str, frame: &[u8]) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    fs::write(&path, trafgen_config(frame))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Sends `count` copies of `frame` (a frame from [`udp_frame`] with at
/// least [`stamp::LEN`] payload bytes) at `rate` packets/s from the
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
    if frame.len() < HEADERS + stamp::LEN {
        bail!("frame too short for a timestamp");
    }
    let ifname = v.ns_if.clone();
    let mut template = frame.to_vec();
    // UDP checksum 0 ("none", valid over IPv4): the payload changes per
    // packet and the receivers never need it.
    template[HEADERS - 2..HEADERS].copy_from_slice(&[0, 0]);
    const BATCH: u64 = 16;
    let pace = Pace {
        rate,
        count,
        max,
        min_burst: 1,
        max_burst: BATCH,
    };
    pace.run(v, move || {
        let sock = RawSocket::open(&ifname).context("AF_PACKET socket")?;
        // Skip the qdisc like trafgen does: frames go straight to the driver.
        sock.bypass_qdisc().context("PACKET_QDISC_BYPASS")?;
        let mut frames = vec![template; BATCH as usize];
        Ok(move |sent: u64, n: u64| {
            let n = n as usize;
            let now = stamp::monotonic_ns();
            for (i, f) in frames[..n].iter_mut().enumerate() {
                stamp::write(&mut f[HEADERS..], now, first_seq + sent + i as u64);
            }
            Ok(sock.send_batch(&mut frames[..n])? as u64)
        })
    })
}

/// A paced send from the namespace, on CPU 0: bursts of `min_burst` to
/// `max_burst` frames as they fall due at `rate`, until `count` went out
/// or `max` passed.
struct Pace {
    rate: f64,
    count: u64,
    max: Duration,
    min_burst: u64,
    max_burst: u64,
}

impl Pace {
    /// Runs on a thread that entered the namespace: `setup` there, then
    /// `burst(sent_so_far, n)` for each burst, which returns how many
    /// frames went out.
    fn run<F, B>(&self, v: &VethNs, setup: F) -> Result<Sent>
    where
        F: FnOnce() -> Result<B> + Send,
        B: FnMut(u64, u64) -> Result<u64>,
    {
        let path = v.netns_path();
        let Pace {
            rate,
            count,
            max,
            min_burst,
            max_burst,
        } = *self;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<Sent> {
                netns::enter(&path)?;
                pin_to_cpu(0);
                let mut burst = setup()?;
                let cpu0 = thread_cpu_s();
                let softirqd0 = ksoftirqd_ns(0);
                let start = Instant::now();
                let mut sent = 0u64;
                while sent < count {
                    if interrupted() || start.elapsed() > max {
                        break;
                    }
                    let elapsed = start.elapsed().as_secs_f64();
                    let due = ((elapsed * rate) as u64 + 1).min(count);
                    let want = (count - sent).min(min_burst);
                    if due < sent + want {
                        let next = (sent + want) as f64 / rate;
                        let wait = next - elapsed;
                        if wait > 200e-6 {
                            std::thread::sleep(Duration::from_secs_f64(wait - 100e-6));
                        } else {
                            // Not a spin: the endpoint shares CPU 0 and
                            // must not wait for the sender's time slice
                            // to end.
                            std::thread::yield_now();
                        }
                        continue;
                    }
                    // Behind schedule, a step comes up short rather than
                    // bursting longer.
                    sent += burst(sent, (due - sent).min(max_burst))?;
                }
                let secs = start.elapsed().as_secs_f64();
                Ok(Sent {
                    nominal_pps: rate as u64,
                    packets: sent,
                    secs,
                    pps: sent as f64 / secs.max(1e-9),
                    cpu_s: thread_cpu_s() - cpu0,
                    softirqd_cpu_s: match (softirqd0, ksoftirqd_ns(0)) {
                        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
                        _ => 0.0,
                    },
                })
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    bpf::thread_cpu_ns() as f64 / 1e9
}

/// Sends `count` copies of `frame` at `rate` packets/s from the namespace
/// as XDP frames: an XDP_TX program run by `BPF_PROG_TEST_RUN` over live
/// frames "received" on the namespace's interface, so each copy leaves it
/// through the veth's XDP transmit path and reaches the root side as an
/// XDP frame, the way a NIC driver hands received pages to XDP (no socket
/// buffer before the receiver's XDP program, which then runs in this
/// thread's softirq on CPU 0; see [`crate::capture`]). The frames are
/// identical (no timestamps). Stops at `max` whatever was sent.
pub fn send_live(v: &VethNs, frame: &[u8], rate: f64, count: u64, max: Duration) -> Result<Sent> {
    let ifname = v.ns_if.clone();
    let frame = frame.to_vec();
    // Each call sets up and tears down a page pool (~130 µs, with
    // expedited RCU, see [`Rig`]): a call carries a millisecond's worth of
    // frames, sent back to back. (Not more: a frame a veth turns into a
    // socket buffer is charged a whole page, and a longer burst would
    // overflow a plain socket's default receive buffer where a steady rate
    // does not.)
    let per_call = ((rate / 1000.0) as u64).clamp(1, 8192);
    let pace = Pace {
        rate,
        count,
        max,
        min_burst: per_call,
        max_burst: per_call,
    };
    pace.run(v, move || {
        let ifindex = ifindex(&ifname).with_context(|| format!("interface {ifname}"))?;
        let prog = bpf::load_xdp_tx().context("loading the XDP_TX sender program")?;
        Ok(move |_sent: u64, n: u64| {
            bpf::test_run_live(prog.as_raw_fd(), &frame, ifindex, n as u32)
                .context("BPF_PROG_TEST_RUN with live frames (Linux ≥ 5.18)")?;
            Ok(n)
        })
    })
}

/// How scenario 2 and the soak offer traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    /// [`send_live`]: XDP frames, as a NIC driver would hand them over.
    LiveFrames,
    /// [`send_paced`]: socket buffers from an `AF_PACKET` socket (the
    /// fallback where live frames are not available).
    PacketSocket,
}

impl Sender {
    pub fn send(
        self,
        v: &VethNs,
        frame: &[u8],
        rate: f64,
        count: u64,
        max: Duration,
    ) -> Result<Sent> {
        match self {
            Sender::LiveFrames => send_live(v, frame, rate, count, max),
            Sender::PacketSocket => send_paced(v, frame, rate, count, max, 0),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Sender::LiveFrames => {
                "XDP frames (BPF_PROG_TEST_RUN live frames, XDP_TX out of the namespace's veth; ≤1 ms bursts) on CPU 0"
            }
            Sender::PacketSocket => "paced AF_PACKET sendmmsg (≤16-frame bursts) on CPU 0",
        }
    }
}

/// The live-frames sender's machine settings, restored on drop: RCU
/// grace periods expedited (each `BPF_PROG_TEST_RUN` call ends with
/// `synchronize_rcu()` when it frees its page pool: ~25 ms normally,
/// ~0.1 ms expedited, which is what lets one call carry a millisecond of
/// traffic), and GRO on the root-side veth (a veth takes XDP frames from
/// its peer only with NAPI, which GRO or an XDP program provides, so the
/// contenders without XDP receive the same frames). Held only while
/// scenarios 2 and 4 run. The old RCU setting is also saved in a file, so
/// that a later run restores it if this process is killed outright
/// ([`restore_leftover_settings`]).
pub struct Rig {
    pub sender: Sender,
    /// Why the live-frames sender is not used.
    pub fallback_reason: Option<String>,
    rcu_before: Option<String>,
    gro_on: Option<String>,
}

const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";
const RCU_SAVED_PREFIX: &str = "udp-bench-rcu-expedited-";

fn rcu_saved_path(pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{RCU_SAVED_PREFIX}{pid}"))
}

/// Restores the RCU setting saved by a benchmark process that no longer
/// exists (killed before its [`Rig`] was dropped).
pub fn restore_leftover_settings() {
    let Ok(dir) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(RCU_SAVED_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Ok(before) = fs::read_to_string(entry.path()) {
                eprintln!(
                    "bench: restoring {RCU_EXPEDITED} = {} left by process {pid}",
                    before.trim()
                );
                let _ = fs::write(RCU_EXPEDITED, before.trim());
            }
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl Rig {
    /// The `AF_PACKET` sender, machine settings untouched.
    pub fn packet_socket() -> Rig {
        Rig {
            sender: Sender::PacketSocket,
            fallback_reason: None,
            rcu_before: None,
            gro_on: None,
        }
    }

    /// The live-frames sender if it works here; otherwise the `AF_PACKET`
    /// sender with every setting put back.
    pub fn prepare(v: &VethNs, frame: &[u8]) -> Rig {
        let mut rig = Rig::packet_socket();
        let tried = (|| -> Result<u64> {
            let before = fs::read_to_string(RCU_EXPEDITED)
                .with_context(|| format!("reading {RCU_EXPEDITED}"))?;
            let before = before.trim().to_string();
            fs::write(rcu_saved_path(std::process::id()), &before)
                .context("saving the RCU setting")?;
            rig.rcu_before = Some(before);
            fs::write(RCU_EXPEDITED, "1").with_context(|| format!("writing {RCU_EXPEDITED}"))?;
            netns::set_gro(&v.host_if, true)?;
            rig.gro_on = Some(v.host_if.clone());
            // A trial: the kernel supports live frames, and they arrive.
            let rx0 = rx_packets(&v.host_if);
            let sent = send_live(v, frame, 1000.0, 64, Duration::from_secs(5))?;
            let got = rx_packets(&v.host_if).saturating_sub(rx0);
            if got < sent.packets {
                bail!(
                    "{got} of {} live frames arrived on {}",
                    sent.packets,
                    v.host_if
                );
            }
            Ok(got)
        })();
        match tried {
            Ok(got) => {
                eprintln!("bench: live-frames sender: {got} trial frames arrived");
                rig.sender = Sender::LiveFrames;
            }
            Err(e) => {
                rig.restore();
                rig.fallback_reason = Some(format!("{e:#}"));
            }
        }
        rig
    }

    fn restore(&mut self) {
        if let Some(before) = self.rcu_before.take() {
            let _ = fs::write(RCU_EXPEDITED, before);
            let _ = fs::remove_file(rcu_saved_path(std::process::id()));
        }
        if let Some(host_if) = self.gro_on.take() {
            let _ = netns::set_gro(&host_if, false);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.restore();
    }
}

fn rx_packets(ifname: &str) -> u64 {
    fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/rx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
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
