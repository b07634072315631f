//! Shared helpers for udp-agent's privileged integration tests.
//!
//! A test file uses them with `mod support;`. What is here:
//!
//! * [`privileged`]: the skip rule. Network tests need root and an agent
//!   binary with its XDP object embedded; without either they print
//!   `SKIPPED: <reason>` and return.
//! * [`VethNs`]: a network namespace joined to the root namespace by a veth
//!   pair, addressed from 198.18.0.0/15 and fd00::/8, with no default route.
//!   The namespace and the link are removed on drop, also when the test
//!   panics. [`VethNs::in_ns`] runs a closure on a thread inside the
//!   namespace; [`VethNs::send_udp`] and [`VethNs::send_frames`] are the
//!   bounded senders built on it.
//! * [`Agent`]: a running `udp-agent run` child whose stdout (the events) and
//!   stderr (the logs) are collected by reader threads, with bounded waits.
//!   It is stopped (SIGTERM, then SIGKILL) and its pins removed on drop.
//! * [`Event`]: one stdout line, parsed the way a user reads it (the
//!   `Detail` string decoded, the payload base64-decoded).
//! * [`ctl`], [`stats`], [`wait_counter`]: `udp-agent ports`/`stats` against
//!   a running agent.
//!
//! Nothing here sleeps for correctness: every wait polls a condition with a
//! deadline and panics with what it observed when the deadline passes.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::Value;

/// The agent binary Cargo built for this test crate.
pub const AGENT: &str = env!("CARGO_BIN_EXE_udp-agent");

/// How long a test waits for something that should happen promptly (an
/// event, a counter) before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long an agent may take to load, verify and attach its program.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// MTU of both veth ends: an EC2 jumbo frame.
pub const MTU: u32 = 9001;

/// Distinguishes the names and pin directories of tests in one process.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<pid>-<n>`, unique among the tests of this process.
pub fn unique_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh pin directory under bpffs for one agent: one per test.
pub fn pin_dir(test: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/udp-agent-test-{test}-{}", unique_id()))
}

// ---------------------------------------------------------------------------
// Skip rule
// ---------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the agent binary carries its XDP object: an ELF file for
/// EM_BPF (247) embedded somewhere in it. A binary built without
/// `UDP_EBPF_OBJECT` (or the default eBPF build output) embeds nothing.
pub fn agent_has_object() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let Ok(bin) = fs::read(AGENT) else {
            return false;
        };
        // ELF magic, 64-bit, little-endian, version 1; e_machine at 18.
        const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01";
        bin.windows(20)
            .any(|w| w.starts_with(MAGIC) && w[18] == 247 && w[19] == 0)
    })
}

/// Why a privileged test cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (loads XDP programs, creates network namespaces)".into());
    }
    if !agent_has_object() {
        return Some(format!(
            "{AGENT} was built without its XDP object (build with UDP_EBPF_OBJECT set, e.g. `cargo xtask build`)"
        ));
    }
    None
}

/// The skip rule: true if `test` can run; otherwise prints
/// `SKIPPED: <reason>` and returns false (the test then returns, passing).
pub fn privileged(test: &str) -> bool {
    match skip_reason() {
        None => true,
        Some(reason) => {
            println!("SKIPPED: {reason} ({test})");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` and the last observation `describe` gives.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; observed: {}",
                describe()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `len` bytes of a pattern that differs for every `seed` (so a payload
/// delivered under the wrong datagram's header cannot pass for the right one).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (x >> 13) as u8 ^ (i as u8)
        })
        .collect()
}

/// Runs `ip args…`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip {}`: {e}", args.join(" ")));
    if !out.status.success() {
        panic!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Runs `ip args…`, ignoring the outcome (cleanup).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------
// Network namespace + veth pair
// ---------------------------------------------------------------------------

/// Where per-slot lock files live: a slot is the third octet `n` of
/// 198.18.n.0/30 (and of fd00:n::/64), held by a test for its lifetime so
/// that parallel tests, in this process or another, never share a subnet.
fn slot_dir() -> PathBuf {
    std::env::temp_dir().join("udp-agent-test-slots")
}

/// Addresses assigned to interfaces of the current network namespace.
fn addresses_in_use() -> Vec<IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("running `ip -o addr show`");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut addrs = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if (w == "inet" || w == "inet6")
                && let Some(a) = words.next()
                && let Ok(addr) = a.split('/').next().unwrap_or("").parse()
            {
                addrs.push(addr);
            }
        }
    }
    addrs
}

fn slot_in_use(n: u8, used: &[IpAddr]) -> bool {
    used.iter().any(|a| match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 198 && o[1] == 18 && o[2] == n
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd00 && s[1] == u16::from(n) && s[2] == 0 && s[3] == 0
        }
    })
}

/// Claims a free slot 1..=255: its lock file is flocked (released when the
/// returned file is closed) and no address of its subnets is in use.
fn claim_slot() -> (u8, File) {
    let dir = slot_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let start = std::process::id() as usize * 31 + COUNTER.fetch_add(1, Ordering::Relaxed) * 7;
    for i in 0..255 {
        let n = 1 + ((start + i) % 255) as u8;
        let path = dir.join(format!("slot-{n}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // SAFETY: valid fd owned by `file`. flock locks belong to the open
        // file description, so two claims in one process also exclude each
        // other.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Checked under the lock: an address left behind by a crashed run
        // (or someone else's interface) keeps its slot out of use.
        if slot_in_use(n, &addresses_in_use()) {
            continue;
        }
        return (n, file);
    }
    panic!("no free 198.18.<n>.0/30 slot (all 255 locked or in use)");
}

/// Enters the network namespace pinned at `path` on the calling thread.
pub fn enter_netns(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: valid fd of a network namespace file; affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns({}): {}", path.display(), io::Error::last_os_error());
    }
}

/// A network namespace `uat-<id>` joined to the root namespace by a veth
/// pair: `host_if` (`uah<id>`) stays in the root namespace with
/// 198.18.n.1/30 and fd00:n::1/64, `ns_if` (`uan<id>`) is in the namespace
/// with 198.18.n.2/30 and fd00:n::2/64. MTU 9001 (or another, with
/// [`VethNs::with_mtu`]), no default route, so nothing sent in the
/// namespace can leave this pair.
///
/// Dropping it deletes the link (both ends) and the namespace.
#[derive(Debug)]
pub struct VethNs {
    /// What the test called it, for messages.
    pub tag: String,
    pub netns: String,
    pub host_if: String,
    pub ns_if: String,
    pub slot: u8,
    pub host_v4: Ipv4Addr,
    pub ns_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub ns_v6: Ipv6Addr,
    pub host_mac: [u8; 6],
    pub ns_mac: [u8; 6],
    /// MTU of both ends.
    pub mtu: u32,
    _slot_lock: File,
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

impl VethNs {
    /// Creates the namespace and the pair. Panics (after cleaning up what
    /// it created) if any step fails.
    pub fn new(tag: &str) -> Self {
        Self::with(tag, MTU, 1)
    }

    /// [`new`](Self::new) with `queues` RX and TX queues on each end: a
    /// frame a namespace socket sends leaves on the TX queue its flow
    /// hashes to and arrives on the root side's RX queue of that number.
    pub fn with_queues(tag: &str, queues: u32) -> Self {
        Self::with(tag, MTU, queues)
    }

    /// [`new`](Self::new) with both ends at `mtu` (1500: the Internet's,
    /// where bigger datagrams arrive in IP fragments).
    pub fn with_mtu(tag: &str, mtu: u32) -> Self {
        Self::with(tag, mtu, 1)
    }

    fn with(tag: &str, mtu: u32, queues: u32) -> Self {
        let (n, lock) = claim_slot();
        let pid = std::process::id();
        // Interface names: at most 15 bytes. "uah" + 7-digit pid + "s" + 3.
        let id = format!("{pid}s{n}");
        let ns = Self {
            tag: tag.to_string(),
            netns: format!("uat-{id}"),
            host_if: format!("uah{id}"),
            ns_if: format!("uan{id}"),
            slot: n,
            host_v4: Ipv4Addr::new(198, 18, n, 1),
            ns_v4: Ipv4Addr::new(198, 18, n, 2),
            host_v6: Ipv6Addr::new(0xfd00, u16::from(n), 0, 0, 0, 0, 0, 1),
            ns_v6: Ipv6Addr::new(0xfd00, u16::from(n), 0, 0, 0, 0, 0, 2),
            // Locally administered, unicast, unique per slot.
            host_mac: [0x02, 0x75, 0x61, 0x68, 0x00, n],
            ns_mac: [0x02, 0x75, 0x61, 0x6e, 0x00, n],
            mtu,
            _slot_lock: lock,
        };
        assert!(ns.host_if.len() <= 15 && ns.ns_if.len() <= 15);
        // Leftovers of a crashed earlier process with the same pid.
        ns.remove();
        // From here on, Drop cleans up whatever was created.
        ns.create(queues);
        ns
    }

    fn create(&self, queues: u32) {
        let mtu = self.mtu.to_string();
        let q = queues.to_string();
        let (hmac, nmac) = (mac_str(&self.host_mac), mac_str(&self.ns_mac));
        let (h4, n4) = (format!("{}/30", self.host_v4), format!("{}/30", self.ns_v4));
        let (h6, n6) = (format!("{}/64", self.host_v6), format!("{}/64", self.ns_v6));
        let (host, peer, netns) = (&*self.host_if, &*self.ns_if, &*self.netns);
        ip(&["netns", "add", netns]);
        ip(&[
            "link",
            "add",
            host,
            "address",
            &hmac,
            "mtu",
            &mtu,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "address",
            &nmac,
            "mtu",
            &mtu,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        ip(&["link", "set", peer, "netns", netns]);
        ip(&["addr", "add", &h4, "dev", host]);
        ip(&["-6", "addr", "add", &h6, "dev", host, "nodad"]);
        ip(&["link", "set", host, "up"]);
        ip(&["-n", netns, "addr", "add", &n4, "dev", peer]);
        ip(&["-n", netns, "-6", "addr", "add", &n6, "dev", peer, "nodad"]);
        ip(&["-n", netns, "link", "set", peer, "up"]);
        ip(&["-n", netns, "link", "set", "lo", "up"]);
        let read = fs::read_to_string(format!("/sys/class/net/{host}/address")).unwrap_or_default();
        assert_eq!(
            parse_mac(&read),
            Some(self.host_mac),
            "MAC of {host} as sysfs shows it: {read:?}"
        );
    }

    fn remove(&self) {
        // Deleting one end of a veth pair deletes both.
        ip_quiet(&["link", "del", &self.host_if]);
        ip_quiet(&["netns", "del", &self.netns]);
    }

    /// `/var/run/netns/<name>`, the handle `setns` opens.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }

    pub fn host_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.host_v6.into()
        } else {
            self.host_v4.into()
        }
    }

    pub fn ns_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ns_v6.into()
        } else {
            self.ns_v4.into()
        }
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns
    /// its result (a panic in `f` is re-raised here). Sockets created in `f`
    /// belong to the namespace.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.netns_path();
        thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sends each payload as one UDP datagram from the namespace's address
    /// (`src_port`) to the root-side address (`dst_port`), with DF set: a
    /// datagram that does not fit the MTU fails instead of fragmenting.
    pub fn send_udp(&self, v6: bool, src_port: u16, dst_port: u16, payloads: &[Vec<u8>]) {
        let src = SocketAddr::new(self.ns_addr(v6), src_port);
        let dst = SocketAddr::new(self.host_addr(v6), dst_port);
        self.in_ns(|| {
            let sock = bind_udp(src);
            for p in payloads {
                let n = sock
                    .send_to(p, dst)
                    .unwrap_or_else(|e| panic!("send {} bytes {src} -> {dst}: {e}", p.len()));
                assert_eq!(n, p.len(), "short send {src} -> {dst}");
            }
        });
    }

    /// Sends each payload as one UDP datagram like [`send_udp`](Self::send_udp),
    /// but with path-MTU discovery off: a datagram bigger than the MTU
    /// leaves in IP fragments, as the sending kernel splits it.
    pub fn send_udp_fragmenting(
        &self,
        v6: bool,
        src_port: u16,
        dst_port: u16,
        payloads: &[Vec<u8>],
    ) {
        let src = SocketAddr::new(self.ns_addr(v6), src_port);
        let dst = SocketAddr::new(self.host_addr(v6), dst_port);
        self.in_ns(|| {
            let sock = bind_udp_with(src, false);
            for p in payloads {
                let n = sock
                    .send_to(p, dst)
                    .unwrap_or_else(|e| panic!("send {} bytes {src} -> {dst}: {e}", p.len()));
                assert_eq!(n, p.len(), "short send {src} -> {dst}");
            }
        });
    }

    /// Sends raw Ethernet frames out of the namespace's end of the pair (an
    /// `AF_PACKET` socket): they arrive at `host_if` exactly as built.
    pub fn send_frames(&self, frames: &[Vec<u8>]) {
        let ifname = self.ns_if.clone();
        self.in_ns(move || {
            let sock = RawSocket::open(&ifname)
                .unwrap_or_else(|e| panic!("AF_PACKET socket on {ifname}: {e}"));
            for f in frames {
                sock.send(f)
                    .unwrap_or_else(|e| panic!("sending a {}-byte frame: {e}", f.len()));
            }
        });
    }

    /// Sends a small marker datagram every 100 ms (at most 50 times) until
    /// `agent` prints one from `src_port`: ARP/ND are resolved, the program
    /// is attached and the pipeline delivers. Returns how many were sent.
    pub fn warm_up(&self, agent: &Agent, v6: bool, src_port: u16, dst_port: u16) -> usize {
        for i in 0..50 {
            self.send_udp(
                v6,
                src_port,
                dst_port,
                &[format!("warm-up {i}").into_bytes()],
            );
            let seen = agent.wait_events_for(Duration::from_millis(100), |evs| {
                evs.iter().any(|e| e.src_port == src_port)
            });
            if seen {
                return i + 1;
            }
        }
        panic!(
            "no warm-up datagram from port {src_port} (IPv{}) reached {}'s agent in 5 s; stderr:\n{}",
            if v6 { 6 } else { 4 },
            self.host_if,
            agent.stderr_text()
        );
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A UDP socket bound to `addr` with path-MTU discovery "do": DF set, never
/// fragmented locally. Sends time out after 5 s (every sender is bounded).
pub fn bind_udp(addr: SocketAddr) -> UdpSocket {
    bind_udp_with(addr, true)
}

/// [`bind_udp`], or with `df` false, path-MTU discovery "don't": a datagram
/// bigger than the MTU is fragmented by the sending kernel.
pub fn bind_udp_with(addr: SocketAddr, df: bool) -> UdpSocket {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding UDP {addr}: {e}"));
    let (level, name, value) = match (addr, df) {
        (SocketAddr::V4(_), true) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        (SocketAddr::V4(_), false) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        ),
        (SocketAddr::V6(_), true) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
        (SocketAddr::V6(_), false) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        ),
    };
    // SAFETY: valid socket fd and a pointer to an int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setting path-MTU discovery on {addr}: {}",
        io::Error::last_os_error()
    );
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("SO_SNDTIMEO");
    sock
}

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface of the current
/// namespace, for sending whole Ethernet frames.
pub struct RawSocket {
    fd: OwnedFd,
    pub ifindex: i32,
}

impl RawSocket {
    pub fn open(ifname: &str) -> io::Result<Self> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: this socket sends only, it receives nothing.
        // SAFETY: plain syscall.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
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
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid fd and a timeval of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Sends one frame (destination and source MAC included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: valid fd; pointer and length describe `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Events as the stdout sink prints them
// ---------------------------------------------------------------------------

/// One stdout line of `udp-agent run`: a PutEvents request entry, with its
/// `Detail` decoded.
#[derive(Clone, Debug)]
pub struct Event {
    pub source: String,
    pub detail_type: String,
    pub time: String,
    pub event_bus_name: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub src_addr: String,
    pub src_port: u16,
    /// `Payload`, base64-decoded.
    pub payload: Vec<u8>,
    pub length: u64,
    pub truncated: bool,
    pub interface: String,
    pub ip_version: u64,
    /// `Format`: the representation the event holds.
    pub format: String,
    /// The whole `Detail`, parsed (a packed event's `Packets` are here;
    /// its per-datagram fields above are empty).
    pub detail: Value,
    /// The line as printed.
    pub line: String,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for k in path {
        cur = cur
            .get(k)
            .ok_or_else(|| format!("no `{}`", path.join(".")))?;
    }
    Ok(cur)
}

fn str_field(v: &Value, path: &[&str]) -> Result<String, String> {
    field(v, path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{}` is not a string", path.join(".")))
}

fn u64_field(v: &Value, path: &[&str]) -> Result<u64, String> {
    field(v, path)?
        .as_u64()
        .ok_or_else(|| format!("`{}` is not a non-negative JSON number", path.join(".")))
}

/// The payload bytes an event (or one element of a packed event's
/// `Packets`) carries, from whichever representation it holds: `Payload`
/// (base64), `Text`, `Hex`, or `Json` (its value, written out again).
pub fn payload_of(d: &Value) -> Result<Vec<u8>, String> {
    if let Some(p) = d.get("Payload") {
        let b64 = p.as_str().ok_or("`Payload` is not a string")?;
        return STANDARD
            .decode(b64)
            .map_err(|e| format!("Payload is not standard base64: {e}"));
    }
    if let Some(t) = d.get("Text") {
        let t = t.as_str().ok_or("`Text` is not a string")?;
        return Ok(t.as_bytes().to_vec());
    }
    if let Some(h) = d.get("Hex") {
        let h = h.as_str().ok_or("`Hex` is not a string")?;
        if h.len() % 2 != 0 || h.bytes().any(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("`Hex` {h:?} is not lowercase hex"));
        }
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect();
    }
    if let Some(j) = d.get("Json") {
        return Ok(j.to_string().into_bytes());
    }
    Err("no `Payload`, `Text`, `Hex` or `Json`".into())
}

fn port_field(v: &Value, path: &[&str]) -> Result<u16, String> {
    let n = u64_field(v, path)?;
    u16::try_from(n).map_err(|_| format!("`{}` = {n} is not a port", path.join(".")))
}

impl Event {
    /// Parses one stdout line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Event, String> {
        let err = |e: String| format!("{e} in line {line}");
        let top: Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let detail_text = str_field(&top, &["Detail"]).map_err(err)?;
        let d: Value = serde_json::from_str(&detail_text)
            .map_err(|e| err(format!("Detail is not JSON: {e}")))?;
        let packed = d.get("Packets").is_some();
        let mut ev = Event {
            source: str_field(&top, &["Source"]).map_err(err)?,
            detail_type: str_field(&top, &["DetailType"]).map_err(err)?,
            time: str_field(&top, &["Time"]).map_err(err)?,
            event_bus_name: str_field(&top, &["EventBusName"]).map_err(err)?,
            dst_addr: str_field(&d, &["Destination", "Address"]).map_err(err)?,
            dst_port: port_field(&d, &["Destination", "Port"]).map_err(err)?,
            src_addr: String::new(),
            src_port: 0,
            payload: Vec::new(),
            length: 0,
            truncated: false,
            interface: str_field(&d, &["Interface"]).map_err(err)?,
            ip_version: u64_field(&d, &["IpVersion"]).map_err(err)?,
            format: str_field(&d, &["Format"]).map_err(err)?,
            detail: Value::Null,
            line: line.to_string(),
        };
        if !packed {
            ev.src_addr = str_field(&d, &["Source", "Address"]).map_err(err)?;
            ev.src_port = port_field(&d, &["Source", "Port"]).map_err(err)?;
            ev.payload = payload_of(&d).map_err(err)?;
            ev.length = u64_field(&d, &["Length"]).map_err(err)?;
            ev.truncated = field(&d, &["Truncated"])
                .map_err(err)?
                .as_bool()
                .ok_or_else(|| err("`Truncated` is not a boolean".into()))?;
        }
        ev.detail = d;
        Ok(ev)
    }

    /// The payload as text, lossily (for messages and markers).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Panics unless the envelope is the default one (`udp.raw`,
    /// `UdpPacket`, bus `default`) and `Time` is an RFC 3339 time within a
    /// few minutes of now.
    pub fn assert_default_envelope(&self) {
        assert_eq!(self.source, "udp.raw", "Source of {}", self.line);
        assert_eq!(self.detail_type, "UdpPacket", "DetailType of {}", self.line);
        assert_eq!(
            self.event_bus_name, "default",
            "EventBusName of {}",
            self.line
        );
        let t = humantime::parse_rfc3339(&self.time).unwrap_or_else(|e| {
            panic!("Time {:?} is not RFC 3339 ({e}): {}", self.time, self.line)
        });
        let now = SystemTime::now();
        let skew = now.duration_since(t).unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_secs(300),
            "Time {} is {skew:?} away from now: {}",
            self.time,
            self.line
        );
    }
}

/// What a test expects one event to say.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The payload bytes the event should carry (the captured part).
    pub payload: &'a [u8],
    /// `Length`: the payload length on the wire.
    pub length: usize,
    pub truncated: bool,
    pub interface: &'a str,
}

/// Every field of `ev` that differs from what `exp` expects, described
/// (empty when the event is right).
pub fn event_diff(ev: &Event, exp: &Expected) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |name: &str, got: String, want: String| {
        if got != want {
            wrong.push(format!("{name}: got {got}, want {want}"));
        }
    };
    check(
        "Destination.Address",
        ev.dst_addr.clone(),
        exp.dst.ip().to_string(),
    );
    check(
        "Destination.Port",
        ev.dst_port.to_string(),
        exp.dst.port().to_string(),
    );
    check(
        "Source.Address",
        ev.src_addr.clone(),
        exp.src.ip().to_string(),
    );
    check(
        "Source.Port",
        ev.src_port.to_string(),
        exp.src.port().to_string(),
    );
    check("Length", ev.length.to_string(), exp.length.to_string());
    check(
        "Truncated",
        ev.truncated.to_string(),
        exp.truncated.to_string(),
    );
    check("Interface", ev.interface.clone(), exp.interface.to_string());
    let version = if exp.src.is_ipv6() { 6 } else { 4 };
    check("IpVersion", ev.ip_version.to_string(), version.to_string());
    if ev.payload != exp.payload {
        let first_diff = ev
            .payload
            .iter()
            .zip(exp.payload)
            .position(|(a, b)| a != b)
            .unwrap_or(ev.payload.len().min(exp.payload.len()));
        wrong.push(format!(
            "Payload: got {} bytes, want {} bytes, first difference at byte {first_diff}",
            ev.payload.len(),
            exp.payload.len()
        ));
    }
    wrong
}

/// Panics, naming every field that differs, unless `ev` says what `exp`
/// expects.
pub fn assert_event(ev: &Event, exp: &Expected) {
    let wrong = event_diff(ev, exp);
    if !wrong.is_empty() {
        let line: String = ev.line.chars().take(600).collect();
        panic!(
            "event from {} is wrong:\n  {}\nline: {line}",
            exp.src,
            wrong.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

/// Lines read from a child's pipe by a reader thread.
#[derive(Default)]
struct Lines {
    state: Mutex<LinesState>,
    changed: Condvar,
}

impl Lines {
    fn spawn_reader(self: &Arc<Self>, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let lines = self.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        lines.state.lock().unwrap().lines.push(line);
                        lines.changed.notify_all();
                    }
                }
            }
            lines.state.lock().unwrap().closed = true;
            lines.changed.notify_all();
        })
    }

    fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Waits until `done(lines, closed)` holds or `timeout` passes; returns
    /// whether it held.
    fn wait(&self, timeout: Duration, mut done: impl FnMut(&[String], bool) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if done(&state.lines, state.closed) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

/// Parses every line, panicking on one that is not a valid entry.
fn parse_all(lines: &[String]) -> Vec<Event> {
    lines
        .iter()
        .map(|l| Event::parse(l).unwrap_or_else(|e| panic!("bad stdout line: {e}")))
        .collect()
}

/// How a stopped agent ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub events: Vec<Event>,
    pub stderr: String,
}

impl Stopped {
    /// `name=value` pairs of the stderr line containing `marker` (e.g.
    /// "kernel counters:" or "pipeline counters:").
    pub fn counters(&self, marker: &str) -> BTreeMap<String, u64> {
        counters_line(&self.stderr, marker)
            .unwrap_or_else(|| panic!("no `{marker}` line in stderr:\n{}", self.stderr))
    }
}

/// `name=value` pairs after `marker` on the last stderr line containing it.
pub fn counters_line(stderr: &str, marker: &str) -> Option<BTreeMap<String, u64>> {
    let line = stderr.lines().rev().find(|l| l.contains(marker))?;
    let rest = &line[line.find(marker)? + marker.len()..];
    Some(
        rest.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// A `udp-agent` child process. Its stdout lines are events, its stderr
/// lines logs; both are collected as they come. Dropping it stops the
/// process (SIGTERM, SIGKILL after 5 s) and removes its pin directory.
pub struct Agent {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    /// The agent's own spool directory, unless the test gave one.
    _spool: Option<tempfile::TempDir>,
    pub iface: String,
    out: Arc<Lines>,
    err: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

/// The agent command with a clean environment: no `UDP_AGENT_*` variable of
/// the caller leaks in, logs at INFO without colour.
pub fn agent_command() -> Command {
    let mut cmd = Command::new(AGENT);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("UDP_AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

impl Agent {
    /// Starts `udp-agent run --iface <iface> --pin-dir <pin_dir> <extra…>`
    /// and waits until it logs "capturing" (attached, ports set). Panics
    /// with its stderr if it exits or does not get there in time.
    pub fn run(iface: &str, pin_dir: &Path, extra: &[&str]) -> Agent {
        Self::run_with_env(iface, pin_dir, extra, &[])
    }

    /// [`run`](Self::run) with extra environment variables (e.g. `AWS_*`
    /// for the EventBridge sink).
    pub fn run_with_env(
        iface: &str,
        pin_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let agent = Self::spawn_with_env(iface, pin_dir, extra, env);
        agent.wait_ready();
        agent
    }

    /// Starts the agent like [`run`](Self::run) without waiting.
    pub fn spawn(iface: &str, pin_dir: &Path, extra: &[&str]) -> Agent {
        Self::spawn_with_env(iface, pin_dir, extra, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_with_env(
        iface: &str,
        pin_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut cmd = agent_command();
        cmd.envs(env.iter().copied());
        // Each agent spools into a directory of its own (removed with it),
        // unless the test names one: agents of parallel tests must not
        // share, nor use the system's /var/lib/udp-agent/spool.
        let spool = (!extra.iter().any(|a| a.starts_with("--spool-dir"))
            && !env.iter().any(|(k, _)| *k == "UDP_AGENT_SPOOL_DIR"))
        .then(|| tempfile::tempdir().expect("a temporary spool directory"));
        if let Some(dir) = &spool {
            cmd.env("UDP_AGENT_SPOOL_DIR", dir.path());
        }
        cmd.arg("run")
            .args(["--iface", iface])
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {AGENT}: {e}"));
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        let readers = vec![
            out.spawn_reader(child.stdout.take().expect("piped stdout")),
            err.spawn_reader(child.stderr.take().expect("piped stderr")),
        ];
        Agent {
            child: Some(child),
            pin_dir: pin_dir.to_path_buf(),
            _spool: spool,
            iface: iface.to_string(),
            out,
            err,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for the "capturing" log line; panics with stderr if the agent
    /// exits first or takes longer than [`START_TIMEOUT`].
    pub fn wait_ready(&self) {
        let mut exited = false;
        let ready = self.err.wait(START_TIMEOUT, |lines, closed| {
            exited = closed;
            closed || lines.iter().any(|l| l.contains("capturing"))
        });
        let up = self.err.snapshot().iter().any(|l| l.contains("capturing"));
        if !ready || !up {
            panic!(
                "agent on {} did not start capturing ({}); stderr:\n{}",
                self.iface,
                if exited { "it exited" } else { "timed out" },
                self.stderr_text()
            );
        }
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.err.snapshot().join("\n")
    }

    /// The first stderr line containing `needle`, waiting up to `timeout`.
    pub fn stderr_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.err
            .wait(timeout, |lines, _| lines.iter().any(|l| l.contains(needle)));
        self.err.snapshot().into_iter().find(|l| l.contains(needle))
    }

    /// The events printed so far.
    pub fn events(&self) -> Vec<Event> {
        parse_all(&self.out.snapshot())
    }

    /// Waits until `done(events so far)` holds; returns whether it did
    /// within `timeout`.
    pub fn wait_events_for(&self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        self.out.wait(timeout, |lines, _| done(&parse_all(lines)))
    }

    /// Waits until `done(events so far)` holds, returning the events;
    /// panics after [`TIMEOUT`] with `what`, the events and stderr.
    pub fn wait_events(&self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        if self.wait_events_for(TIMEOUT, &done) {
            return self.events();
        }
        let events = self.events();
        let summary: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{}:{} -> {}:{} {} bytes {:?}",
                    e.src_addr,
                    e.src_port,
                    e.dst_addr,
                    e.dst_port,
                    e.payload.len(),
                    e.text().chars().take(24).collect::<String>()
                )
            })
            .collect();
        panic!(
            "timed out after {TIMEOUT:?} waiting for {what}; {} events:\n  {}\nstderr:\n{}",
            events.len(),
            summary.join("\n  "),
            self.stderr_text()
        );
    }

    /// Waits for at least `n` events from source port `src_port` and
    /// returns those.
    pub fn wait_from(&self, src_port: u16, n: usize) -> Vec<Event> {
        let from = |evs: &[Event]| evs.iter().filter(|e| e.src_port == src_port).count();
        self.wait_events(&format!("{n} events from source port {src_port}"), |evs| {
            from(evs) >= n
        })
        .into_iter()
        .filter(|e| e.src_port == src_port)
        .collect()
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid();
        assert!(pid > 0, "agent already reaped");
        // SAFETY: plain syscall on our own child's pid (not yet reaped, so
        // the pid cannot have been reused).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    /// Sends `sig`, waits for the exit (panicking after 15 s) and for the
    /// pipes to close, and returns what the agent printed in its whole life.
    pub fn stop(&mut self, sig: libc::c_int) -> Stopped {
        self.signal(sig);
        let status = self.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "agent did not exit within 15 s of signal {sig}; stderr:\n{}",
                self.stderr_text()
            )
        });
        self.child = None;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Stopped {
            status,
            events: self.events(),
            stderr: self.stderr_text(),
        }
    }

    /// SIGTERM: the orderly shutdown. See [`stop`](Self::stop).
    pub fn terminate(&mut self) -> Stopped {
        self.stop(libc::SIGTERM)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().map(|c| c.id() as i32) {
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if self.wait_exit(Duration::from_secs(5)).is_none()
                && let Some(child) = self.child.as_mut()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.child = None;
        }
        // A killed agent leaves its pins; remove them so bpffs stays clean.
        if let Ok(entries) = fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
            let _ = fs::remove_dir(&self.pin_dir);
        }
        // The agent keeps an instance lock file per pin directory in
        // /run/udp-agent (named as control.rs names it); a test's pin
        // directory is never reused, so its lock file goes too.
        let name: String = self
            .pin_dir
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let _ = fs::remove_file(Path::new("/run/udp-agent").join(format!("{name}.lock")));
    }
}

/// The signal that ended a process, if a signal did.
pub fn exit_signal(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

// ---------------------------------------------------------------------------
// Controlling a running agent
// ---------------------------------------------------------------------------

/// Runs `udp-agent <group> --pin-dir <pin_dir> <rest…>` to completion,
/// where `args` is `[group, rest…]` (e.g. `["ports", "add", "514"]`).
///
/// `--pin-dir` goes right after the command group (`ports`, `stats`), the
/// one place the CLI accepts it for every subcommand.
pub fn ctl(pin_dir: &Path, args: &[&str]) -> Output {
    let (group, rest) = args.split_first().expect("a command");
    agent_command()
        .arg(group)
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running udp-agent {}: {e}", args.join(" ")))
}

/// Like [`ctl`], panicking with its output unless it succeeds; returns
/// stdout.
pub fn ctl_ok(pin_dir: &Path, args: &[&str]) -> String {
    let out = ctl(pin_dir, args);
    if !out.status.success() {
        panic!(
            "`udp-agent {}` with --pin-dir {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            pin_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `udp-agent ports list`, one port or range per entry (the first word of
/// each line; the rest is the port's limit and action).
pub fn ports_list(pin_dir: &Path) -> Vec<String> {
    ctl_ok(pin_dir, &["ports", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `udp-agent stats --json`: the kernel counters of a running agent.
pub fn stats(pin_dir: &Path) -> BTreeMap<String, u64> {
    let text = ctl_ok(pin_dir, &["stats", "--json"]);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("`stats --json` printed {text:?}: {e}"));
    v["counters"]
        .as_object()
        .unwrap_or_else(|| panic!("`stats --json` printed {text:?}, not an object"))
        .iter()
        .map(|(k, v)| {
            let n = v
                .as_u64()
                .unwrap_or_else(|| panic!("counter {k} = {v} is not a number"));
            (k.clone(), n)
        })
        .collect()
}

/// One kernel counter, `0` if `stats` does not list it.
pub fn counter(pin_dir: &Path, name: &str) -> u64 {
    stats(pin_dir).get(name).copied().unwrap_or(0)
}

/// Waits until kernel counter `name` reaches at least `target` and returns
/// its value then (which a test can compare for equality).
pub fn wait_counter(pin_dir: &Path, name: &str, target: u64) -> u64 {
    wait_until(
        TIMEOUT,
        &format!("kernel counter {name} >= {target}"),
        || {
            let v = counter(pin_dir, name);
            (v >= target).then_some(v)
        },
        || format!("{:?}", stats(pin_dir)),
    )
}
