//! Consumed ports over AF_XDP (`--capture-path afxdp|auto`).
//!
//! A port whose action is `drop` has the agent as its only receiver, so
//! the XDP program may hand it the frame itself instead of copying the
//! payload into the ring: it redirects the frame to an AF_XDP socket of
//! the agent — one per RX queue of each attached interface — and the
//! kernel puts it into that socket's UMEM (copy mode on veth and generic
//! XDP; zero-copy where the driver offers it, the frame then never copied
//! at all). Observed ports (`pass`) stay on the ring: the host must still
//! get those frames, and a redirected frame leaves the host's path.
//!
//! [`Sockets`] opens the sockets of an interface when the watcher attaches
//! to it and registers them in the program's maps (`XSKS`, then
//! `XSK_IFACES`, which switches the interface over); it deregisters them
//! before they close. Until an interface has its sockets — and for a queue
//! above `XSK_MAX_QUEUES` — consumed datagrams take the ring, so nothing
//! depends on the order. [`run`] is the capture loop: it reads every
//! socket's RX ring, decodes each frame into the [`PacketView`] the ring
//! path builds (record::decode_frame) and hands it to the same
//! [`Handoff`], then gives the frames back to the fill ring.
//!
//! Counting: the kernel counts a redirected datagram as `captured` and
//! `redirected`; a frame the socket then could not take (RX ring full, no
//! fill buffer) is in the socket's statistics, reported here as `lost`.
//! So `redirected = received + lost`, and `received` is part of the
//! pipeline's `decoded`.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, XskMap},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
    time::sleep_until,
};
use tracing::{info, warn};
use udp_ebpf_common::{
    XSK_MAX_IFACES, XSK_MAX_QUEUES,
    xsk::{self, Bind, Desc, Socket},
};

use crate::{
    clock::{self, WallClock},
    handoff::Handoff,
    hotplug::IfaceState,
    loader::Attached,
    record::{self, Packet},
    stats::PipelineStats,
};

/// `--capture-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CapturePath {
    /// Everything through the BPF ring buffer.
    Ringbuf,
    /// Consumed ports through AF_XDP sockets (copy mode where the driver
    /// has no zero-copy), observed ports through the ring.
    Afxdp,
    /// AF_XDP for consumed ports on interfaces whose driver binds the
    /// sockets in zero-copy mode, the ring everywhere else: in copy mode
    /// (veth, generic XDP) the ring path measured cheaper
    /// (`bench/RESULTS.md`, "AF_XDP").
    Auto,
}

/// Whether `auto` uses copy-mode sockets: the benchmark's same-run
/// comparison on veth (copy mode) decides; see [`CapturePath::Auto`].
const AUTO_TAKES_COPY_MODE: bool = false;

/// Descriptors read from one socket per pass before the next socket's
/// turn (and, over all sockets, before yielding to other tasks).
const BATCH: u32 = 256;
const PASS_BUDGET: usize = 4096;

/// As the ring loop does: after a pass that found frames, let the next
/// ones gather for a millisecond (one wake-up per millisecond under a
/// steady stream instead of one every few frames).
const COALESCE: Duration = Duration::from_millis(1);

/// RX queues of an interface, as sysfs lists them (`queues/rx-N`).
pub fn rx_queues(iface: &str) -> io::Result<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))?;
    let n = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32;
    Ok(n.max(1))
}

/// The agent's side of the program's AF_XDP maps, and the sockets it
/// opened per interface (handed to [`run`] through `to_loop`).
pub struct Sockets {
    path: CapturePath,
    frames: u32,
    xsks: XskMap<MapData>,
    ifaces: HashMap<MapData, u32, u32>,
    /// Interface name → (ifindex, its first slot in `XSKS`, queues).
    open: BTreeMap<String, (u32, u32, u32)>,
    /// Interface name → the ifindex it had when its sockets were not
    /// opened (`auto` chose the ring, or opening failed): not tried again
    /// until the interface comes back under another index.
    declined: BTreeMap<String, u32>,
    to_loop: mpsc::UnboundedSender<Command>,
}

/// What the capture loop is told.
pub enum Command {
    /// Read these sockets too.
    Add(Vec<Socket>),
    /// Read what is left in the sockets of this ifindex, then close them.
    Remove(u32),
}

impl Sockets {
    /// Takes the AF_XDP maps out of a loaded object. `path` is not
    /// `Ringbuf`.
    pub fn new(
        ebpf: &mut Ebpf,
        path: CapturePath,
        frames: u32,
        to_loop: mpsc::UnboundedSender<Command>,
    ) -> Result<Sockets> {
        let xsks = ebpf
            .take_map("XSKS")
            .ok_or_else(|| anyhow!("no XSKS map"))?;
        let ifaces = ebpf
            .take_map("XSK_IFACES")
            .ok_or_else(|| anyhow!("no XSK_IFACES map"))?;
        Ok(Sockets {
            path,
            frames,
            xsks: XskMap::try_from(xsks)?,
            ifaces: HashMap::try_from(ifaces)?,
            open: BTreeMap::new(),
            declined: BTreeMap::new(),
            to_loop,
        })
    }

    /// Brings the sockets in line with the interfaces attached now: opens
    /// those of a newly attached interface, closes those of one that went
    /// away (or came back under a new index). An interface whose sockets
    /// cannot be opened keeps the ring path, with a warning; with
    /// `--capture-path afxdp` the first such error is returned too (at
    /// start-up the agent then refuses to run).
    pub fn sync(&mut self, interfaces: &[IfaceState]) -> Result<()> {
        let mut first_error = None;
        let gone: Vec<String> = self
            .open
            .iter()
            .filter(|(name, (ifindex, _, _))| {
                !interfaces
                    .iter()
                    .any(|s| s.name == **name && s.ifindex == Some(*ifindex))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.close(&name);
        }
        for s in interfaces {
            let (Some(ifindex), Some(mode)) = (s.ifindex, s.mode) else {
                continue;
            };
            if self.open.contains_key(&s.name) || self.declined.get(&s.name) == Some(&ifindex) {
                continue;
            }
            self.declined.remove(&s.name);
            let opened = self.open_iface(&s.name, ifindex, mode);
            if !self.open.contains_key(&s.name) {
                self.declined.insert(s.name.clone(), ifindex);
            }
            if let Err(e) = opened {
                warn!(
                    iface = s.name,
                    error = %format!("{e:#}"),
                    "AF_XDP sockets not opened; consumed ports on this interface take the ring buffer"
                );
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) if self.path == CapturePath::Afxdp => Err(e),
            _ => Ok(()),
        }
    }

    fn open_iface(&mut self, name: &str, ifindex: u32, mode: Attached) -> Result<()> {
        let queues =
            rx_queues(name).with_context(|| format!("counting the RX queues of {name}"))?;
        let used = queues.min(XSK_MAX_QUEUES);
        if queues > XSK_MAX_QUEUES {
            warn!(
                iface = name,
                queues,
                "more RX queues than AF_XDP slots ({XSK_MAX_QUEUES}); the higher queues take the ring buffer"
            );
        }
        let base = (0..XSK_MAX_IFACES)
            .map(|i| i * XSK_MAX_QUEUES)
            .find(|b| self.open.values().all(|(_, base, _)| base != b))
            .ok_or_else(|| anyhow!("AF_XDP sockets on {XSK_MAX_IFACES} interfaces already"))?;
        // Generic XDP hands sockets copies; a natively attached program may
        // redirect to zero-copy sockets where the driver has them.
        let bind = match (self.path, mode) {
            (CapturePath::Auto, Attached::Skb) if !AUTO_TAKES_COPY_MODE => {
                info!(
                    iface = name,
                    "capture path auto: consumed ports take the ring buffer on this interface \
                     (generic XDP gives AF_XDP sockets copies only, and in copy mode the ring \
                     measured cheaper; --capture-path afxdp insists on AF_XDP)"
                );
                return Ok(());
            }
            (CapturePath::Auto, Attached::Driver) if !AUTO_TAKES_COPY_MODE => Bind::ZeroCopy,
            (_, Attached::Skb) => Bind::Copy,
            (_, Attached::Driver) => Bind::Any,
        };
        // `auto` asks first with a socket of the smallest UMEM, so that an
        // interface without zero-copy (veth, say) costs no 8 MiB of locked
        // memory, however briefly.
        if bind == Bind::ZeroCopy {
            let probe = xsk::Config { frames: 64, bind };
            if let Err(e) = Socket::open(ifindex, 0, probe) {
                info!(
                    iface = name,
                    error = %e,
                    "capture path auto: consumed ports take the ring buffer on this interface \
                     (no zero-copy AF_XDP socket: in copy mode the ring measured cheaper; \
                     --capture-path afxdp insists on AF_XDP)"
                );
                return Ok(());
            }
        }
        let mut sockets = Vec::with_capacity(used as usize);
        for queue in 0..used {
            let config = xsk::Config {
                frames: self.frames,
                bind,
            };
            match Socket::open(ifindex, queue, config) {
                Ok(s) => sockets.push(s),
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!(
                            "opening the AF_XDP socket for {name} queue {queue} \
                             (needs CAP_NET_RAW, and locked memory for {} KiB of UMEM)",
                            u64::from(self.frames) * u64::from(xsk::CHUNK_SIZE) / 1024
                        )
                    });
                }
            }
        }
        for s in &sockets {
            self.xsks
                .set(base + s.queue, s.as_raw_fd(), 0)
                .with_context(|| {
                    format!("registering the AF_XDP socket of {name} queue {}", s.queue)
                })?;
        }
        // Last: from here on the program redirects this interface's
        // consumed datagrams.
        self.ifaces
            .insert(ifindex, base, 0)
            .with_context(|| format!("switching {name} to its AF_XDP sockets"))?;
        let zero_copy = sockets.iter().all(Socket::zero_copy);
        let multi_buffer = sockets.iter().all(Socket::multi_buffer);
        info!(
            iface = name,
            ifindex,
            queues = used,
            mode = if zero_copy { "zero-copy" } else { "copy" },
            multi_buffer,
            frames = self.frames,
            "AF_XDP sockets bound: consumed ports are read from them"
        );
        if !multi_buffer {
            warn!(
                iface = name,
                "this kernel has no multi-buffer AF_XDP (Linux 6.6): frames over {} bytes are dropped by the socket and counted as lost",
                xsk::CHUNK_SIZE - 256
            );
        }
        self.open.insert(name.to_string(), (ifindex, base, used));
        let _ = self.to_loop.send(Command::Add(sockets));
        Ok(())
    }

    fn close(&mut self, name: &str) {
        let Some((ifindex, base, queues)) = self.open.remove(name) else {
            return;
        };
        // First: the program stops redirecting to them.
        let _ = self.ifaces.remove(&ifindex);
        for q in 0..queues {
            let _ = self.xsks.unset(base + q);
        }
        let _ = self.to_loop.send(Command::Remove(ifindex));
    }
}

/// An epoll instance over the sockets: one fd for tokio to watch, however
/// many sockets there are.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: valid fds and event.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Empties the ready list (without waiting), so that the next frame on
    /// any socket makes the epoll fd readable again for tokio.
    fn consume(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: a valid buffer of 16 events; no wait.
        while unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), 16, 0) } == 16 {}
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// One socket as the loop keeps it.
struct Reader {
    socket: Socket,
    received: u64,
}

/// What the sockets did, for the shutdown report.
#[derive(Debug, Default)]
pub struct Totals {
    /// Datagrams read from the sockets.
    pub received: u64,
    /// Frames the sockets could not take (their statistics).
    pub lost: u64,
    /// Per socket: `ifindex:queue received=… lost=… zero_copy=…`.
    pub sockets: Vec<String>,
}

impl Totals {
    fn add(&mut self, r: &Reader) {
        let stats = r.socket.statistics().unwrap_or_default();
        self.received += r.received;
        self.lost += stats.lost();
        self.sockets.push(format!(
            "{}:{} received={} lost={} zero_copy={}",
            r.socket.ifindex,
            r.socket.queue,
            r.received,
            stats.lost(),
            r.socket.zero_copy()
        ));
    }

    /// What follows `af_xdp counters:` in the shutdown log.
    pub fn line(&self) -> String {
        format!(
            "received={} lost={} sockets={}",
            self.received,
            self.lost,
            self.sockets.len()
        )
    }
}

/// Reads one batch of descriptors from `r`: every whole packet in it is
/// decoded and passed to `push`, then its frames go back to the kernel.
/// Returns how many packets, and whether the batch was full (more may be
/// waiting); `None` if there was no whole packet to read. `descs` and
/// `scratch` are reused buffers.
fn read_batch(
    r: &mut Reader,
    stats: &PipelineStats,
    read: (u64, u64),
    descs: &mut Vec<Desc>,
    scratch: &mut Vec<u8>,
    mut push: impl FnMut(&record::PacketView<'_>),
) -> Option<(usize, bool)> {
    if r.socket.peek(descs, BATCH) == 0 {
        return None;
    }
    let (mut used, mut packets) = (0, 0);
    while let Some(n) = xsk::packet_len(&descs[used..]) {
        let frame = xsk::packet(&r.socket, &descs[used..used + n], scratch);
        decoded(
            stats,
            record::decode_frame(frame, r.socket.ifindex),
            read,
            &mut push,
        );
        used += n;
        packets += 1;
    }
    if used == 0 {
        // A packet longer than a whole batch of descriptors cannot come (a
        // frame spans at most 9,216 / 1,792 + 1 chunks): the kernel has not
        // finished publishing it. Next pass.
        return None;
    }
    r.received += packets as u64;
    r.socket.release(used);
    Some((packets, used == BATCH as usize))
}

/// Reads up to about `budget` packets from `r`, handing each on; returns
/// how many.
fn drain_socket(
    r: &mut Reader,
    out: &mut Handoff,
    stats: &PipelineStats,
    read: (u64, u64),
    budget: usize,
    descs: &mut Vec<Desc>,
    scratch: &mut Vec<u8>,
) -> usize {
    let mut packets = 0;
    while packets < budget {
        match read_batch(r, stats, read, descs, scratch, |p| out.push(p)) {
            Some((n, full)) => {
                packets += n;
                if !full {
                    break;
                }
            }
            None => break,
        }
    }
    packets
}

/// Counts a decoded frame and passes it to `push`, with its time narrowed
/// as the ring loop narrows its records' (`read`: monotonic ns when the
/// pass began, the coarse clock's tick).
fn decoded(
    stats: &PipelineStats,
    result: Result<record::PacketView<'_>, record::DecodeError>,
    read: (u64, u64),
    push: impl FnOnce(&record::PacketView<'_>),
) {
    match result {
        Ok(mut p) => {
            p.narrow_time(read.0, read.1);
            stats.decoded.fetch_add(1, Relaxed);
            push(&p);
        }
        Err(e) => {
            let n = stats.decode_errors.fetch_add(1, Relaxed) + 1;
            if crate::stats::doubled(n - 1, n) {
                warn!(total = n, error = %e, "undecodable AF_XDP frame");
            }
        }
    }
}

fn now() -> (u64, u64) {
    (clock::monotonic_ns(), clock::coarse_tick_ns())
}

/// The capture loop over every socket [`Sockets`] sends it, until `stop`
/// turns true; then it reads what is left (the program is detached by
/// then), sends every waiting entry on, and returns what the sockets did.
pub async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut out: Handoff,
    stats: Arc<PipelineStats>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<Totals> {
    // SAFETY: the Epoll owns its fd for as long as the AsyncFd owns the
    // Epoll, and always returns that same fd.
    let epoll = unsafe { AsyncFd::register_with_interest(Epoll::new()?, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let mut readers: Vec<Reader> = Vec::new();
    let mut totals = Totals::default();
    let mut descs = Vec::with_capacity(BATCH as usize);
    let mut scratch = Vec::new();
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    loop {
        let deadline = out.deadline();
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    // As the ring loop: a CPU may still be in a run of the
                    // program that began before the detach.
                    final_drain(&mut readers, &mut out, &stats, &mut descs, &mut scratch).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    final_drain(&mut readers, &mut out, &stats, &mut descs, &mut scratch).await;
                    out.finish().await;
                    for r in &readers {
                        totals.add(r);
                    }
                    return Ok(totals);
                }
            }
            command = commands.recv() => match command {
                Some(Command::Add(sockets)) => {
                    for socket in sockets {
                        epoll.get_ref().ctl(libc::EPOLL_CTL_ADD, socket.as_raw_fd())?;
                        readers.push(Reader { socket, received: 0 });
                    }
                }
                Some(Command::Remove(ifindex)) => {
                    let (mut gone, kept): (Vec<Reader>, Vec<Reader>) =
                        readers.into_iter().partition(|r| r.socket.ifindex == ifindex);
                    readers = kept;
                    final_drain(&mut gone, &mut out, &stats, &mut descs, &mut scratch).await;
                    for r in &gone {
                        let _ = epoll.get_ref().ctl(libc::EPOLL_CTL_DEL, r.socket.as_raw_fd());
                        totals.add(r);
                    }
                }
                None => {}
            },
            _ = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                out.flush();
            }
            _ = clock.tick() => out.set_clock(WallClock::now()),
            guard = epoll.readable() => {
                let mut guard = guard?;
                guard.get_inner().consume();
                let read = now();
                let share = (PASS_BUDGET / readers.len().max(1)).max(BATCH as usize);
                let mut packets = 0;
                let mut more = false;
                for r in &mut readers {
                    let n = drain_socket(r, &mut out, &stats, read, share, &mut descs, &mut scratch);
                    more |= n >= share;
                    packets += n;
                }
                if out.is_closed() {
                    return Ok(totals);
                }
                if more {
                    drop(guard);
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                    if packets > 0 {
                        tokio::time::sleep(COALESCE).await;
                    }
                }
            }
        }
    }
}

/// Everything left in `readers`' RX rings to the sink, waiting for room
/// rather than dropping.
async fn final_drain(
    readers: &mut [Reader],
    out: &mut Handoff,
    stats: &PipelineStats,
    descs: &mut Vec<Desc>,
    scratch: &mut Vec<u8>,
) {
    for r in readers {
        loop {
            // Owned copies: the frames go back to the kernel before the
            // awaits below.
            let mut packets: Vec<Packet> = Vec::new();
            let batch = read_batch(r, stats, now(), descs, scratch, |p| {
                packets.push(p.to_packet())
            });
            for p in &packets {
                out.push_waiting(&p.view()).await;
            }
            if batch.is_none() {
                break;
            }
        }
    }
}
