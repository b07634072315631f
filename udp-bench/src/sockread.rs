//! `udp-bench sock-reader`: the plain userspace alternative to the agent —
//! a UDP socket bound to the port, read with `recvmmsg` in batches of 64,
//! counting datagrams. Prints `ready` once bound; on SIGTERM/SIGINT it
//! reads what is still queued, then prints `{"received":N,"bytes":B}`.

use std::{
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use test_support::socket::MmsgHeaders;

use crate::proc::interrupted;

const BATCH: usize = 64;
/// Room for any datagram up to a jumbo frame's payload.
const BUF: usize = 9216;

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: valid fd and an int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv_batch(fd: i32, bufs: &mut [Vec<u8>], flags: i32) -> io::Result<(usize, u64)> {
    let mut headers = MmsgHeaders::new(bufs);
    let msgs = &mut headers.msgs;
    // SAFETY: valid fd and message array of the stated length.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            flags,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let bytes = msgs[..n].iter().map(|m| u64::from(m.msg_len)).sum();
    Ok((n, bytes))
}

pub fn run(bind: SocketAddrV4, rcvbuf: u32, max: Duration) -> Result<()> {
    // SAFETY: plain syscall.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if raw < 0 {
        bail!("socket: {}", io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();
    // SO_RCVBUFFORCE (root) so that the size is not capped by rmem_max.
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf as i32)
        .context("SO_RCVBUFFORCE")?;
    // A receive timeout so that the loop sees SIGTERM promptly.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd and a timeval of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: bind.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*bind.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid fd and a sockaddr_in of the stated size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("bind {bind}: {}", io::Error::last_os_error());
    }
    println!("ready");
    let mut bufs = vec![vec![0u8; BUF]; BATCH];
    let (mut received, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while !interrupted() && start.elapsed() < max {
        match recv_batch(fd, &mut bufs, libc::MSG_WAITFORONE) {
            Ok((n, b)) => {
                received += n as u64;
                bytes += b;
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT)
                ) => {}
            Err(e) => return Err(e).context("recvmmsg"),
        }
    }
    // Whatever is still queued was received by the socket: count it.
    while let Ok((n, b)) = recv_batch(fd, &mut bufs, libc::MSG_DONTWAIT) {
        if n == 0 {
            break;
        }
        received += n as u64;
        bytes += b;
    }
    println!("{{\"received\":{received},\"bytes\":{bytes}}}");
    Ok(())
}
