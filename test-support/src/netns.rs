//! The only network the tests and the benchmark use: a network namespace
//! joined to the root namespace by a veth pair, on a subnet of
//! 198.18.0.0/15 and fd00::/8 that no one else holds, with no default
//! route, so nothing sent in the namespace can leave the pair.
//!
//! A subnet is a *slot*: the third octet `n` of 198.18.n.0/30 and the
//! second group of fd00:n::/64. A [`VethNs`] holds its slot's lock file
//! (flocked, in the temporary directory) for its lifetime, so that
//! parallel test processes and benchmarks never share a subnet, and skips a
//! slot with an address already in use (a crashed run's leftover, or
//! someone else's interface). Dropping it deletes the link and the
//! namespace, also when the test or scenario fails.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    process::{run, run_quiet},
    socket::{RawSocket, bind_udp, bind_udp_with},
};

/// MTU of both ends of a test's pair: an EC2 jumbo frame.
pub const MTU: u32 = 9001;

/// Runs `ip args…`; an error with its stderr if it fails or takes longer
/// than 20 s.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), Duration::from_secs(20))
        .with_context(|| format!("ip {}", args.join(" ")))?;
    Ok(())
}

/// Runs `ip args…`, ignoring the outcome (cleanup).
fn ip_quiet(args: &[&str]) {
    run_quiet(Command::new("ip").args(args));
}

/// Who made a namespace: part of every name and MAC address, so that one
/// party's leftover cleanup ([`remove_leftovers`]) never touches the
/// other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// udp-agent's tests: `uat-…`, `uah…`, `uan…`.
    Tests,
    /// udp-bench: `ubt-…`, `ubh…`, `ubn…`.
    Bench,
}

impl Owner {
    fn letter(self) -> u8 {
        match self {
            Owner::Tests => b'a',
            Owner::Bench => b'b',
        }
    }

    /// `u<owner><kind>`: `kind` is `t` (namespace), `h` (root end) or `n`
    /// (namespace end).
    fn prefix(self, kind: char) -> String {
        format!("u{}{kind}", self.letter() as char)
    }
}

/// Which slots a [`VethNs`] may claim.
#[derive(Clone, Debug)]
pub enum Slots {
    /// Any of 1..=255, tried from a starting point that differs per
    /// process and per claim (parallel claims rarely meet).
    Any,
    /// These, in order.
    Among(RangeInclusive<u8>),
}

/// Distinguishes the claims of one process.
static CLAIMS: AtomicUsize = AtomicUsize::new(0);

/// Where the per-slot lock files live.
fn slot_dir() -> PathBuf {
    std::env::temp_dir().join("udp-agent-test-slots")
}

/// Addresses assigned to interfaces of the current network namespace.
fn addresses_in_use() -> Result<Vec<IpAddr>> {
    let text = run(
        Command::new("ip").args(["-o", "addr", "show"]),
        Duration::from_secs(20),
    )?;
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
    Ok(addrs)
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

/// Claims a free slot: its lock file is flocked (released when the returned
/// file is closed) and no address of its subnets is in use.
fn claim_slot(slots: &Slots) -> Result<(u8, File)> {
    let dir = slot_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let order: Vec<u8> = match slots {
        Slots::Any => {
            let start =
                std::process::id() as usize * 31 + CLAIMS.fetch_add(1, Ordering::Relaxed) * 7;
            (0..255).map(|i| 1 + ((start + i) % 255) as u8).collect()
        }
        Slots::Among(range) => range.clone().collect(),
    };
    for &n in &order {
        let path = dir.join(format!("slot-{n}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid fd owned by `file`. flock locks belong to the open
        // file description, so two claims in one process also exclude each
        // other.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Checked under the lock: an address left behind by a crashed run
        // (or someone else's interface) keeps its slot out of use.
        if slot_in_use(n, &addresses_in_use()?) {
            continue;
        }
        return Ok((n, file));
    }
    bail!(
        "no free 198.18.<n>.0/30 slot among {} (all locked or in use; `ip -o addr show` lists who holds them)",
        match slots {
            Slots::Any => "1..=255".to_string(),
            Slots::Among(r) => format!("{}..={}", r.start(), r.end()),
        }
    )
}

/// Enters the network namespace pinned at `path` on the calling thread
/// only.
pub fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: valid fd of a network namespace file; affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({}): {}", path.display(), io::Error::last_os_error());
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
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

/// Removes the namespaces (and their links) that `owner`'s processes left
/// behind when they died without unwinding (their pid no longer exists).
pub fn remove_leftovers(owner: Owner) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let prefix = format!("{}-", owner.prefix('t'));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(id) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = id.split('s').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let link = format!("{}{id}", owner.prefix('h'));
            eprintln!("removing leftover namespace {name} and link {link}");
            ip_quiet(&["link", "del", &link]);
            ip_quiet(&["netns", "del", name]);
        }
    }
}

/// How to make a [`VethNs`]: [`VethNs::builder`].
#[derive(Clone, Debug)]
pub struct Builder {
    tag: String,
    owner: Owner,
    slots: Slots,
    mtu: Option<u32>,
    queues: Option<u32>,
    ipv6: bool,
    permanent_neighbour: bool,
    link: bool,
}

impl Builder {
    /// Whose names and MAC addresses (default: the tests').
    pub fn owner(mut self, owner: Owner) -> Self {
        self.owner = owner;
        self
    }

    /// Which slots to claim (default: any).
    pub fn slots(mut self, slots: Slots) -> Self {
        self.slots = slots;
        self
    }

    /// MTU of both ends (default: the kernel's, 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// RX and TX queues on each end (default: the kernel's, one per
    /// possible CPU): a frame a namespace socket sends leaves on the TX
    /// queue its flow hashes to and arrives on the root side's RX queue
    /// of that number.
    pub fn queues(mut self, queues: u32) -> Self {
        self.queues = Some(queues);
        self
    }

    /// Without the fd00:n::/64 addresses (IPv4 only).
    pub fn no_ipv6(mut self) -> Self {
        self.ipv6 = false;
        self
    }

    /// A permanent neighbour entry for the root end's IPv4 address in the
    /// namespace, so that frames written with its MAC need no ARP.
    pub fn permanent_neighbour(mut self) -> Self {
        self.permanent_neighbour = true;
        self
    }

    /// The namespace only; [`VethNs::create_link`] adds the pair later.
    pub fn without_link(mut self) -> Self {
        self.link = false;
        self
    }

    /// Claims a slot and creates the namespace (and the pair, with its
    /// addresses, up). On an error, whatever was created is removed.
    pub fn create(self) -> Result<VethNs> {
        let (n, lock) = claim_slot(&self.slots)?;
        // Interface names: at most 15 bytes. "uah" + 7-digit pid + "s" + 3.
        let id = format!("{}s{n}", std::process::id());
        let o = self.owner.letter();
        let ns = VethNs {
            netns: format!("{}-{id}", self.owner.prefix('t')),
            host_if: format!("{}{id}", self.owner.prefix('h')),
            ns_if: format!("{}{id}", self.owner.prefix('n')),
            slot: n,
            host_v4: Ipv4Addr::new(198, 18, n, 1),
            ns_v4: Ipv4Addr::new(198, 18, n, 2),
            host_v6: Ipv6Addr::new(0xfd00, u16::from(n), 0, 0, 0, 0, 0, 1),
            ns_v6: Ipv6Addr::new(0xfd00, u16::from(n), 0, 0, 0, 0, 0, 2),
            // Locally administered, unicast, unique per owner and slot:
            // 02:'u':owner:'h'|'n':00:n.
            host_mac: [0x02, b'u', o, b'h', 0x00, n],
            ns_mac: [0x02, b'u', o, b'n', 0x00, n],
            mtu: self.mtu.unwrap_or(1500),
            tag: self.tag,
            queues: self.queues,
            ipv6: self.ipv6,
            permanent_neighbour: self.permanent_neighbour,
            _slot_lock: lock,
        };
        assert!(ns.host_if.len() <= 15 && ns.ns_if.len() <= 15);
        // Leftovers of a crashed earlier process with the same pid.
        ns.remove();
        // From here on, Drop removes whatever was created.
        ip(&["netns", "add", &ns.netns])?;
        ip(&["-n", &ns.netns, "link", "set", "lo", "up"])?;
        if self.link {
            ns.try_create_link()?;
        }
        Ok(ns)
    }
}

/// A network namespace `u?t-<id>` joined to the root namespace by a veth
/// pair: `host_if` (`u?h<id>`) stays in the root namespace with
/// 198.18.n.1/30 and fd00:n::1/64, `ns_if` (`u?n<id>`) is in the namespace
/// with 198.18.n.2/30 and fd00:n::2/64. No default route, so nothing sent
/// in the namespace can leave this pair.
///
/// Dropping it deletes the link (both ends) and the namespace.
#[derive(Debug)]
pub struct VethNs {
    /// What the test called it, for messages.
    pub tag: String,
    pub netns: String,
    /// Root-namespace end: where the agent attaches.
    pub host_if: String,
    /// Namespace end: where the senders transmit.
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
    queues: Option<u32>,
    ipv6: bool,
    permanent_neighbour: bool,
    _slot_lock: File,
}

impl VethNs {
    /// How to make one other than the tests' defaults.
    pub fn builder(tag: &str) -> Builder {
        Builder {
            tag: tag.to_string(),
            owner: Owner::Tests,
            slots: Slots::Any,
            mtu: None,
            queues: None,
            ipv6: true,
            permanent_neighbour: false,
            link: true,
        }
    }

    /// A test's pair: MTU 9001 ([`MTU`]), one queue. Panics (after
    /// cleaning up what it created) if any step fails.
    pub fn new(tag: &str) -> Self {
        Self::with(tag, MTU, 1)
    }

    /// [`new`](Self::new) with `queues` RX and TX queues on each end (see
    /// [`Builder::queues`]).
    pub fn with_queues(tag: &str, queues: u32) -> Self {
        Self::with(tag, MTU, queues)
    }

    /// [`new`](Self::new) with both ends at `mtu` (1500: the Internet's,
    /// where bigger datagrams arrive in IP fragments).
    pub fn with_mtu(tag: &str, mtu: u32) -> Self {
        Self::with(tag, mtu, 1)
    }

    /// A test's namespace without the pair: [`create_link`](Self::create_link)
    /// adds it, [`delete_link`](Self::delete_link) takes it away again,
    /// under the same names.
    pub fn without_link(tag: &str) -> Self {
        Self::builder(tag)
            .mtu(MTU)
            .queues(1)
            .without_link()
            .create()
            .unwrap_or_else(|e| panic!("creating the namespace for {tag}: {e:#}"))
    }

    fn with(tag: &str, mtu: u32, queues: u32) -> Self {
        Self::builder(tag)
            .mtu(mtu)
            .queues(queues)
            .create()
            .unwrap_or_else(|e| panic!("creating the namespace and veth pair for {tag}: {e:#}"))
    }

    fn try_create_link(&self) -> Result<()> {
        let (hmac, nmac) = (mac_str(&self.host_mac), mac_str(&self.ns_mac));
        let (host, peer, netns) = (&*self.host_if, &*self.ns_if, &*self.netns);
        let mtu = self.mtu.to_string();
        let q = self.queues.map(|q| q.to_string());
        // The same settings for each end.
        let end = |name: &'static str, mac: &str| {
            let mut args = vec![name.to_string(), mac.to_string(), "mtu".into(), mtu.clone()];
            if let Some(q) = &q {
                args.extend([
                    "numtxqueues".into(),
                    q.clone(),
                    "numrxqueues".into(),
                    q.clone(),
                ]);
            }
            args
        };
        let mut add: Vec<String> = ["link", "add", host].map(String::from).to_vec();
        add.extend(end("address", &hmac));
        add.extend(["type", "veth", "peer", "name", peer].map(String::from));
        add.extend(end("address", &nmac));
        ip(&add.iter().map(String::as_str).collect::<Vec<_>>())?;
        ip(&["link", "set", peer, "netns", netns])?;
        ip(&["addr", "add", &format!("{}/30", self.host_v4), "dev", host])?;
        if self.ipv6 {
            let h6 = format!("{}/64", self.host_v6);
            ip(&["-6", "addr", "add", &h6, "dev", host, "nodad"])?;
        }
        ip(&["link", "set", host, "up"])?;
        let n4 = format!("{}/30", self.ns_v4);
        ip(&["-n", netns, "addr", "add", &n4, "dev", peer])?;
        if self.ipv6 {
            let n6 = format!("{}/64", self.ns_v6);
            ip(&["-n", netns, "-6", "addr", "add", &n6, "dev", peer, "nodad"])?;
        }
        ip(&["-n", netns, "link", "set", peer, "up"])?;
        if self.permanent_neighbour {
            let h4 = self.host_v4.to_string();
            ip(&[
                "-n",
                netns,
                "neigh",
                "replace",
                &h4,
                "lladdr",
                &hmac,
                "dev",
                peer,
                "nud",
                "permanent",
            ])?;
        }
        let read = fs::read_to_string(format!("/sys/class/net/{host}/address")).unwrap_or_default();
        if parse_mac(&read) != Some(self.host_mac) {
            bail!("MAC of {host} as sysfs shows it is {read:?}, not {hmac}");
        }
        Ok(())
    }

    /// Creates the pair (again), addressed and up, under the same names.
    /// Panics if a step fails.
    pub fn create_link(&self) {
        self.try_create_link()
            .unwrap_or_else(|e| panic!("creating the veth pair {}: {e:#}", self.host_if));
    }

    /// Deletes the pair (both ends); the namespace stays.
    pub fn delete_link(&self) {
        // Deleting one end of a veth pair deletes both.
        ip_quiet(&["link", "del", &self.host_if]);
    }

    /// Whether the root end exists.
    pub fn link_exists(&self) -> bool {
        Path::new(&format!("/sys/class/net/{}", self.host_if)).exists()
    }

    fn remove(&self) {
        self.delete_link();
        ip_quiet(&["netns", "del", &self.netns]);
    }

    /// `/var/run/netns/<name>`, the handle `setns` opens.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }

    /// `ip netns exec <namespace> <program>`.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
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
                enter(&path).unwrap_or_else(|e| panic!("{e:#}"));
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
        self.send_udp_with(v6, src_port, dst_port, payloads, true);
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
        self.send_udp_with(v6, src_port, dst_port, payloads, false);
    }

    fn send_udp_with(
        &self,
        v6: bool,
        src_port: u16,
        dst_port: u16,
        payloads: &[Vec<u8>],
        df: bool,
    ) {
        let src = SocketAddr::new(self.ns_addr(v6), src_port);
        let dst = SocketAddr::new(self.host_addr(v6), dst_port);
        self.in_ns(|| {
            let sock = if df {
                bind_udp(src)
            } else {
                bind_udp_with(src, false)
            };
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
}

impl Drop for VethNs {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_say_who_made_them() {
        assert_eq!(Owner::Tests.prefix('h'), "uah");
        assert_eq!(Owner::Bench.prefix('t'), "ubt");
        assert_eq!(
            parse_mac(" 02:75:61:68:00:0a\n"),
            Some([2, 0x75, 0x61, 0x68, 0, 10])
        );
        assert_eq!(mac_str(&[2, 0x75, 0x62, 0x6e, 0, 255]), "02:75:62:6e:00:ff");
        assert_eq!(parse_mac("02:75"), None);
    }

    #[test]
    fn a_slot_is_in_use_when_an_address_of_either_subnet_is() {
        let used: Vec<IpAddr> = vec![
            "198.18.7.1".parse().unwrap(),
            "fd00:9::2".parse().unwrap(),
            "fd00:10:1::1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        assert!(slot_in_use(7, &used));
        assert!(slot_in_use(9, &used));
        assert!(
            !slot_in_use(10, &used),
            "fd00:10:1::/64 is not fd00:10::/64"
        );
        assert!(!slot_in_use(8, &used));
    }
}
