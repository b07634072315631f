//! Bounded senders: every send times out after 5 s, and the callers bound
//! how many they make.

use std::{
    io,
    marker::PhantomData,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use rustix::net::sockopt::{self, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery};

use crate::netns::ifindex;

/// How long one send may block.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A UDP socket bound to `addr` with path-MTU discovery "do": DF set, never
/// fragmented locally. Sends time out after 5 s.
pub fn bind_udp(addr: SocketAddr) -> UdpSocket {
    bind_udp_with(addr, true)
}

/// [`bind_udp`], or with `df` false, path-MTU discovery "don't": a datagram
/// bigger than the MTU is fragmented by the sending kernel.
pub fn bind_udp_with(addr: SocketAddr, df: bool) -> UdpSocket {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding UDP {addr}: {e}"));
    let set = match (addr, df) {
        (SocketAddr::V4(_), true) => sockopt::set_ip_mtu_discover(&sock, Ipv4PathMtuDiscovery::DO),
        (SocketAddr::V4(_), false) => {
            sockopt::set_ip_mtu_discover(&sock, Ipv4PathMtuDiscovery::DONT)
        }
        (SocketAddr::V6(_), true) => {
            sockopt::set_ipv6_mtu_discover(&sock, Ipv6PathMtuDiscovery::DO)
        }
        (SocketAddr::V6(_), false) => {
            sockopt::set_ipv6_mtu_discover(&sock, Ipv6PathMtuDiscovery::DONT)
        }
    };
    set.unwrap_or_else(|e| panic!("setting path-MTU discovery on {addr}: {e}"));
    sock.set_write_timeout(Some(SEND_TIMEOUT))
        .expect("SO_SNDTIMEO");
    sock
}

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface of the calling
/// thread's namespace, for sending whole Ethernet frames (destination and
/// source MAC included): they leave the interface exactly as built.
pub struct RawSocket {
    fd: OwnedFd,
    pub ifindex: i32,
}

impl RawSocket {
    pub fn open(ifname: &str) -> io::Result<Self> {
        let ifindex = ifindex(ifname)?;
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
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(SEND_TIMEOUT))?;
        Ok(Self {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Frames skip the qdisc, as trafgen's do: straight to the driver.
    pub fn bypass_qdisc(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: valid fd and an int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one frame.
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

    /// Sends every frame in `frames` with `sendmmsg`, retrying while the
    /// device has no room (ENOBUFS); returns how many went out.
    pub fn send_batch(&self, frames: &mut [Vec<u8>]) -> io::Result<usize> {
        let mut headers = MmsgHeaders::new(frames);
        let msgs = &mut headers.msgs;
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

/// The message headers of `sendmmsg`/`recvmmsg`: one `mmsghdr` per
/// buffer, each with one `iovec` over its whole buffer. The buffers stay
/// borrowed while the headers live, so the pointers in them stay valid.
pub struct MmsgHeaders<'a> {
    pub msgs: Vec<libc::mmsghdr>,
    // Where `msgs` point: heap memory that moving the Vec does not move.
    _iov: Vec<libc::iovec>,
    _bufs: PhantomData<&'a mut [Vec<u8>]>,
}

impl<'a> MmsgHeaders<'a> {
    pub fn new(bufs: &'a mut [Vec<u8>]) -> Self {
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let msgs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: an all-zero mmsghdr is valid (no name, no
                // control data); the one iovec is set below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        MmsgHeaders {
            msgs,
            _iov: iov,
            _bufs: PhantomData,
        }
    }
}
