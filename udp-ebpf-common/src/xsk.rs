//! An AF_XDP socket for receiving: its UMEM, its fill and completion rings
//! and its RX ring, written on `libc` (see `Documentation/networking/af_xdp.rst`).
//!
//! The agent reads consumed ports from these sockets (one per RX queue of
//! each attached interface), and the benchmark measures the redirect with
//! one, so the code lives here, beside the types both share with the XDP
//! program.
//!
//! Why not a crate: the small no-libbpf one, `xdpilone` 1.3 (builds with
//! Rust 1.95, needs only `libc` and `spin`), does the same socket options,
//! mappings and ring arithmetic as this file, but is licensed EUPL-1.2, a
//! copyleft licence, where this project is MIT OR Apache-2.0 and ships a
//! static binary (a .deb); and its rings hold `&'static` references into
//! mappings whose lifetime the caller must uphold by hand. What it would
//! save is these few hundred lines, which follow the kernel's documented
//! protocol as `ring.rs` in the agent does for the BPF ring buffer; `xsk-rs`
//! and `libxdp` need libbpf/libxdp in C. UMEM frames, multi-buffer
//! packets and the XSKMAP are ours to handle in any case.
//!
//! Ownership: a [`Socket`] owns its fd, its UMEM and the three mappings;
//! every frame of the UMEM is always in exactly one place — the fill ring,
//! the kernel, the RX ring, or held by the caller between [`Socket::peek`]
//! and [`Socket::release`] — so the fill ring (as large as the UMEM has
//! frames) can never overflow.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

/// `sxdp_flags`.
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Multi-buffer: a frame larger than a UMEM chunk arrives as several
/// descriptors (Linux 6.6).
const XDP_USE_SG: u16 = 1 << 4;
/// `xdp_desc::options`: more descriptors of this packet follow.
pub const XDP_PKT_CONTD: u32 = 1;
/// A ring's `flags` word: the kernel waits for a wake-up (`need_wakeup`).
const XDP_RING_NEED_WAKEUP: u32 = 1;

/// Bytes of a UMEM chunk: one frame of a 1,500-byte MTU (the kernel keeps
/// 256 bytes of each for its own headroom); larger frames span chunks
/// (multi-buffer). Zero-copy drivers take 2,048 to a page.
pub const CHUNK_SIZE: u32 = 2048;

#[repr(C)]
#[derive(Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    /// Linux 6.8; zero (as older kernels require of this padding).
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RingOffsets {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MmapOffsets {
    rx: RingOffsets,
    tx: RingOffsets,
    fill: RingOffsets,
    completion: RingOffsets,
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_desc`: one received buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// UMEM offset of the buffer's first byte.
    pub addr: u64,
    pub len: u32,
    /// [`XDP_PKT_CONTD`].
    pub options: u32,
}

/// `struct xdp_statistics` (Linux 5.9 and later fill all six).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Frames the socket could not take: no fill buffer, too large, …
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times a zero-copy driver found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl Statistics {
    /// Frames redirected to the socket that never reached its RX ring.
    pub fn lost(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }
}

/// How the socket may bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// Copy mode: works with every driver and with generic (skb) XDP.
    Copy,
    /// Zero-copy only: fails where the driver does not offer it.
    ZeroCopy,
    /// Zero-copy where the driver offers it, copy mode otherwise.
    Any,
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// UMEM chunks, and the size of the fill and RX rings: a power of two.
    pub frames: u32,
    pub bind: Bind,
}

/// One shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: Option<BorrowedFd<'_>>, len: usize, offset: libc::off_t) -> io::Result<Mapping> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping; the kernel checks length and offset
        // against the ring it belongs to.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The `u32` at byte `off` of the mapping, shared with the kernel.
    fn word(&self, off: u64) -> &AtomicU32 {
        assert!(off as usize + 4 <= self.len);
        // SAFETY: inside the mapping (checked), 4-byte aligned (the kernel
        // lays out its ring words so), live as long as `self`.
        unsafe { &*self.ptr.as_ptr().add(off as usize).cast::<AtomicU32>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping, not used after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One ring of `size` entries of `T`, mapped from the socket.
struct Ring<T> {
    map: Mapping,
    producer: u64,
    consumer: u64,
    flags: u64,
    desc: u64,
    mask: u32,
    /// Our side's position (not yet published, for the producer side).
    head: u32,
    /// The other side's position as last read.
    cached: u32,
    _entry: std::marker::PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    fn map(
        fd: BorrowedFd<'_>,
        off: &RingOffsets,
        size: u32,
        pgoff: libc::off_t,
    ) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * size_of::<T>();
        let map = Mapping::new(Some(fd), len, pgoff)?;
        let mut ring = Ring {
            map,
            producer: off.producer,
            consumer: off.consumer,
            flags: off.flags,
            desc: off.desc,
            mask: size - 1,
            head: 0,
            cached: 0,
            _entry: std::marker::PhantomData,
        };
        ring.head = ring.map.word(ring.producer).load(Ordering::Relaxed);
        ring.cached = ring.map.word(ring.consumer).load(Ordering::Relaxed);
        Ok(ring)
    }

    fn entry(&self, pos: u32) -> *mut T {
        let i = (pos & self.mask) as usize;
        // SAFETY: `i` ≤ mask, and the mapping holds size entries past desc.
        unsafe {
            self.map
                .ptr
                .as_ptr()
                .add(self.desc as usize)
                .cast::<T>()
                .add(i)
        }
    }

    fn needs_wakeup(&self) -> bool {
        self.map.word(self.flags).load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// An AF_XDP socket bound to one interface's RX queue, receiving only.
pub struct Socket {
    // Declared before `fd` and `umem`: unmapped first.
    fill: Ring<u64>,
    rx: Ring<Desc>,
    _completion: Mapping,
    umem: Mapping,
    fd: OwnedFd,
    pub ifindex: u32,
    pub queue: u32,
    zero_copy: bool,
    multi_buffer: bool,
}

// SAFETY: the mappings are owned by the Socket and only reached through it.
unsafe impl Send for Socket {}

fn sockopt<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a socket option into a zeroed `T`; returns it and how many bytes
/// the kernel wrote.
fn getsockopt<T: Default>(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<(T, usize)> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable T of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((value, len as usize))
}

impl Socket {
    /// Creates a socket with its own UMEM of `config.frames` chunks, all of
    /// them in the fill ring, and binds it to `queue` of `ifindex`. Asks for
    /// multi-buffer frames; a kernel or driver without them gets a socket
    /// that drops (and counts) frames larger than a chunk.
    pub fn open(ifindex: u32, queue: u32, config: Config) -> io::Result<Socket> {
        let frames = config.frames;
        if !frames.is_power_of_two() || frames < 64 {
            return Err(io::Error::other(format!(
                "{frames} AF_XDP frames: a power of two of at least 64, please"
            )));
        }
        // SAFETY: plain syscall.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new(None, frames as usize * CHUNK_SIZE as usize, 0)?;
        let reg = UmemReg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: CHUNK_SIZE,
            ..UmemReg::default()
        };
        sockopt(fd.as_fd(), XDP_UMEM_REG, &reg)?;
        sockopt(fd.as_fd(), XDP_UMEM_FILL_RING, &frames)?;
        // Nothing is sent, but the kernel binds only a UMEM with both.
        let completion_size: u32 = 64;
        sockopt(fd.as_fd(), XDP_UMEM_COMPLETION_RING, &completion_size)?;
        sockopt(fd.as_fd(), XDP_RX_RING, &frames)?;
        let (off, _) = getsockopt::<MmapOffsets>(fd.as_fd(), XDP_MMAP_OFFSETS)?;
        let mut fill = Ring::<u64>::map(fd.as_fd(), &off.fill, frames, XDP_UMEM_PGOFF_FILL_RING)?;
        let rx = Ring::<Desc>::map(fd.as_fd(), &off.rx, frames, XDP_PGOFF_RX_RING)?;
        let completion = Mapping::new(
            Some(fd.as_fd()),
            off.completion.desc as usize + completion_size as usize * 8,
            XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        // Every chunk into the fill ring before the bind, so the first
        // frames find room.
        for i in 0..frames {
            // SAFETY: an entry of the fill ring, which holds `frames`.
            unsafe {
                fill.entry(fill.head.wrapping_add(i))
                    .write(u64::from(i) * u64::from(CHUNK_SIZE))
            };
        }
        fill.head = fill.head.wrapping_add(frames);
        fill.map
            .word(fill.producer)
            .store(fill.head, Ordering::Release);

        let mode = match config.bind {
            Bind::Copy => XDP_COPY,
            Bind::ZeroCopy => XDP_ZEROCOPY,
            Bind::Any => 0,
        };
        let bind = |flags: u16| {
            let addr = SockaddrXdp {
                family: libc::AF_XDP as u16,
                flags: flags | XDP_USE_NEED_WAKEUP,
                ifindex,
                queue_id: queue,
                shared_umem_fd: 0,
            };
            // SAFETY: valid fd and a sockaddr_xdp of the stated size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const SockaddrXdp).cast(),
                    size_of::<SockaddrXdp>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // Multi-buffer asked for. A zero-copy driver without it binds in
        // copy mode instead (the kernel falls back by itself unless
        // zero-copy is insisted on, which then fails). A kernel before 6.6
        // refuses the unknown flag before it sets anything up (EINVAL),
        // so the same socket binds again without it.
        let mut multi_buffer = true;
        if let Err(e) = bind(mode | XDP_USE_SG) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            multi_buffer = false;
            bind(mode)?;
        }
        let (options, _) = getsockopt::<u32>(fd.as_fd(), XDP_OPTIONS)?;
        Ok(Socket {
            fill,
            rx,
            _completion: completion,
            umem,
            fd,
            ifindex,
            queue,
            zero_copy: options & XDP_OPTIONS_ZEROCOPY != 0,
            multi_buffer,
        })
    }

    /// Whether the driver bound the socket in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Whether frames larger than a chunk arrive (as several descriptors).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// Copies up to `max` received descriptors, oldest first, into `out`
    /// (which it clears). They and their frames stay ours until
    /// [`Socket::release`] gives them back; until then the next `peek`
    /// sees them again.
    pub fn peek(&mut self, out: &mut Vec<Desc>, max: u32) -> usize {
        out.clear();
        let mut ready = self.rx.cached.wrapping_sub(self.rx.head);
        if ready < max {
            // Acquire: the descriptors (and the frames they point to) were
            // written before the kernel published its producer position.
            self.rx.cached = self.rx.map.word(self.rx.producer).load(Ordering::Acquire);
            ready = self.rx.cached.wrapping_sub(self.rx.head);
        }
        for i in 0..ready.min(max) {
            // SAFETY: an entry the kernel has published and we have not
            // released.
            out.push(unsafe { self.rx.entry(self.rx.head.wrapping_add(i)).read() });
        }
        out.len()
    }

    /// The bytes of a received buffer.
    pub fn frame(&self, desc: &Desc) -> &[u8] {
        let start = desc.addr as usize;
        let end = start + desc.len as usize;
        assert!(
            end <= self.umem.len,
            "descriptor outside the UMEM: {desc:?}"
        );
        // SAFETY: inside the UMEM (checked); the kernel does not write a
        // frame between handing it over and getting it back.
        unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), desc.len as usize) }
    }

    /// Gives the `n` oldest received descriptors back: their frames go to
    /// the fill ring, and the kernel may reuse their RX entries.
    pub fn release(&mut self, n: usize) {
        let n = n as u32;
        assert!(
            n <= self.rx.cached.wrapping_sub(self.rx.head),
            "releasing more than was received"
        );
        if n == 0 {
            return;
        }
        for i in 0..n {
            // SAFETY: entries the kernel handed us; each frame goes back to
            // the fill ring, which has room for every chunk of the UMEM.
            let addr = unsafe { self.rx.entry(self.rx.head.wrapping_add(i)).read() }.addr;
            let chunk = addr - addr % u64::from(CHUNK_SIZE);
            // SAFETY: as above.
            unsafe { self.fill.entry(self.fill.head.wrapping_add(i)).write(chunk) };
        }
        self.fill.head = self.fill.head.wrapping_add(n);
        self.rx.head = self.rx.head.wrapping_add(n);
        // Release: our reads of the frames happen before the kernel reuses
        // them, and the fill entries are written before it sees them.
        self.fill
            .map
            .word(self.fill.producer)
            .store(self.fill.head, Ordering::Release);
        self.rx
            .map
            .word(self.rx.consumer)
            .store(self.rx.head, Ordering::Release);
        if self.fill.needs_wakeup() {
            self.wake();
        }
    }

    /// Tells a driver that stopped for want of fill buffers that there are
    /// some again (zero-copy drivers with `need_wakeup`).
    fn wake(&self) {
        // SAFETY: a zero-length, non-blocking receive on our own socket.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> io::Result<Statistics> {
        Ok(getsockopt::<Statistics>(self.fd.as_fd(), XDP_STATISTICS)?.0)
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A received packet's bytes, gathered from its descriptors: borrowed from
/// the UMEM when it is one buffer, copied into `scratch` when it spans
/// several (multi-buffer).
pub fn packet<'a>(socket: &'a Socket, descs: &[Desc], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    match descs {
        [one] => socket.frame(one),
        many => {
            scratch.clear();
            for d in many {
                scratch.extend_from_slice(socket.frame(d));
            }
            scratch
        }
    }
}

/// How many descriptors from the start of `descs` make up the first
/// packet; `None` if its last descriptor is not among them yet.
pub fn packet_len(descs: &[Desc]) -> Option<usize> {
    descs
        .iter()
        .position(|d| d.options & XDP_PKT_CONTD == 0)
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(addr: u64, contd: bool) -> Desc {
        Desc {
            addr,
            len: 10,
            options: if contd { XDP_PKT_CONTD } else { 0 },
        }
    }

    #[test]
    fn a_packet_ends_at_its_first_descriptor_without_contd() {
        assert_eq!(packet_len(&[desc(0, false), desc(2048, false)]), Some(1));
        assert_eq!(
            packet_len(&[desc(0, true), desc(2048, true), desc(4096, false)]),
            Some(3)
        );
        assert_eq!(packet_len(&[desc(0, true), desc(2048, true)]), None);
        assert_eq!(packet_len(&[]), None);
    }

    #[test]
    fn the_kernel_structs_have_the_kernels_sizes() {
        assert_eq!(size_of::<UmemReg>(), 32);
        assert_eq!(size_of::<MmapOffsets>(), 128);
        assert_eq!(size_of::<SockaddrXdp>(), 16);
        assert_eq!(size_of::<Desc>(), 16);
        assert_eq!(size_of::<Statistics>(), 48);
    }
}
