//! Ring 2: the real XDP object run by the kernel with `BPF_PROG_TEST_RUN`
//! over crafted frames — no interface needed. Each test loads its own copy
//! of the object (its own maps), runs frames through it, and asserts the
//! action, the ring records and the counters a user would see.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON) and an agent built
//! with the eBPF object (`cargo xtask test` does both); otherwise each test
//! prints `SKIPPED:` and returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::{os::fd::AsRawFd, sync::Arc, time::Duration};

use aya::{Ebpf, TestRun, TestRunOptions};
use udp_agent::{
    capture::Ring,
    clock,
    control::{Action, Control, Limits, PortSettings, parse_net},
    loader,
    ports::PortRange,
    reassembly::{self, Reassembler},
    record::{self, Packet, Record},
    stats::PipelineStats,
};
use udp_ebpf_common::{
    CONFIG_DENYLIST, Config, MAX_CAPTURE, MAX_SNAPLEN, RECORD_CLASSES, RECORD_COARSE_TIME,
    RECORD_HEADER_LEN, counter, frame::FrameBuilder, record_room,
};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const SRC4: [u8; 4] = [198, 18, 0, 2];
const DST4: [u8; 4] = [198, 18, 0, 1];
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const PORT: u16 = 514;

struct Kernel {
    ebpf: Ebpf,
    ring: Ring,
    control: Control,
}

fn skip_reason() -> Option<String> {
    if loader::EBPF_OBJECT.is_empty() {
        return Some("agent built without the eBPF object (use `cargo xtask test`)".into());
    }
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("BPF_PROG_TEST_RUN needs root".into());
    }
    None
}

macro_rules! kernel_or_skip {
    ($ring_bytes:expr) => {
        match skip_reason() {
            Some(reason) => {
                println!("SKIPPED: {reason}");
                return;
            }
            None => Kernel::load($ring_bytes),
        }
    };
    () => {
        kernel_or_skip!(1 << 20)
    };
}

impl Kernel {
    fn load(ring_bytes: u32) -> Self {
        let mut ebpf = loader::load(ring_bytes).expect("load XDP object");
        let events = ebpf.take_map("EVENTS").expect("an EVENTS map");
        let ring = Ring::try_from(events).expect("map the ring");
        let control = Control::take_unpinned(&mut ebpf).unwrap();
        let mut k = Self {
            ebpf,
            ring,
            control,
        };
        k.set_snaplen(MAX_CAPTURE);
        k.enable(PORT);
        k
    }

    fn enable(&mut self, port: u16) {
        self.control
            .set_ports(PortRange::single(port), true)
            .unwrap();
    }

    /// Sets the test port's rate, burst and action.
    fn set_port(&mut self, settings: PortSettings) {
        self.control
            .add_ports(PortRange::single(PORT), settings)
            .unwrap();
    }

    fn set_snaplen(&mut self, snaplen: u32) {
        self.control
            .set_config(Config {
                snaplen,
                ..Config::default()
            })
            .unwrap();
    }

    /// Runs one frame and returns the XDP action.
    fn action(&mut self, frame: &[u8]) -> u32 {
        let prog = loader::program(&mut self.ebpf);
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    /// Runs one frame that must leave with XDP_PASS (the default action).
    fn run(&mut self, frame: &[u8]) {
        let action = self.action(frame);
        assert_eq!(
            action,
            XDP_PASS,
            "with default settings nothing is dropped or aborted ({} byte frame)",
            frame.len()
        );
    }

    /// Raw ring records, in order.
    fn raw_records(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(item.to_vec());
        }
        out
    }

    /// Whether the ring's fd polls readable now.
    fn readable(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    fn packets(&mut self) -> Vec<Packet> {
        self.raw_records()
            .iter()
            .map(|r| record::decode(r).expect("decodable record"))
            .collect()
    }

    fn counter(&self, index: u32) -> u64 {
        self.control.counter(index).unwrap()
    }

    /// All counters by name, for readable assertion failures.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        counter::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, self.counter(i as u32)))
            .collect()
    }

    fn assert_counters(&self, expected: &[(&str, u64)]) {
        let got = self.counters();
        for (name, value) in got.iter() {
            let want = expected
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v);
            assert_eq!(*value, want, "counter {name}: all counters {got:?}");
        }
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn v4(payload: &[u8]) -> FrameBuilder {
    FrameBuilder::ipv4(SRC4, DST4).udp(40000, PORT, payload)
}

fn v6(payload: &[u8]) -> FrameBuilder {
    FrameBuilder::ipv6(SRC6.octets(), DST6.octets()).udp(40000, PORT, payload)
}

fn assert_v4_packet(p: &Packet, sent: &[u8]) {
    assert_eq!(p.src, IpAddr::V4(Ipv4Addr::from(SRC4)));
    assert_eq!(p.dst, IpAddr::V4(Ipv4Addr::from(DST4)));
    assert_eq!((p.src_port, p.dst_port), (40000, PORT));
    assert_eq!(p.wire_len as usize, sent.len());
    assert_eq!(p.payload, sent, "payload bytes");
    assert!(!p.truncated());
}

#[test]
fn ipv4_datagram_is_captured_with_every_field() {
    let mut k = kernel_or_skip!();
    let sent = b"<13>Nov 27 host app: hello".to_vec();
    k.run(&v4(&sent).build());
    let packets = k.packets();
    assert_eq!(packets.len(), 1);
    assert_v4_packet(&packets[0], &sent);
    assert_eq!(packets[0].ip_version(), 4);
    k.assert_counters(&[("seen", 1), ("captured", 1)]);
}

#[test]
fn every_record_carries_its_port_rules_encoding() {
    use udp_ebpf_common::{Encoding, Format};
    let mut k = kernel_or_skip!();
    for format in Format::ALL {
        for pack in [false, true] {
            let encoding = Encoding { format, pack };
            k.set_port(PortSettings {
                encoding,
                ..PortSettings::default()
            });
            k.run(&v4(b"hello").build());
            let packets = k.packets();
            assert_eq!(packets.len(), 1, "{encoding:?}");
            assert_eq!(packets[0].encoding, encoding);
            assert_eq!(packets[0].payload, b"hello");
        }
    }
}

#[test]
fn a_small_datagram_takes_a_small_ring_record() {
    let mut k = kernel_or_skip!();
    k.run(&v4(b"hello").build());
    let records = k.raw_records();
    assert_eq!(records.len(), 1);
    // The smallest size class: header + 32 bytes, 5 of them payload.
    assert_eq!(records[0].len(), RECORD_HEADER_LEN + 32);
    assert_eq!(record::decode(&records[0]).unwrap().payload, b"hello");
}

#[test]
fn every_record_takes_the_smallest_size_class_that_holds_its_payload() {
    let mut k = kernel_or_skip!();
    // Each class's room, and one byte more (the next class), up to the
    // largest datagram a frame can carry here.
    let mut lens = vec![0usize, 1];
    for room in RECORD_CLASSES {
        lens.push(room as usize);
        lens.push(room as usize + 1);
    }
    lens.retain(|&l| l <= 8973);
    for &len in &lens {
        let sent = payload(len);
        k.run(&v4(&sent).build());
        let records = k.raw_records();
        assert_eq!(records.len(), 1, "{len}-byte payload");
        let room = record_room(len as u32) as usize;
        assert!(room >= len);
        assert_eq!(
            records[0].len(),
            RECORD_HEADER_LEN + room,
            "{len}-byte payload"
        );
        let p = record::decode(&records[0]).unwrap();
        assert_eq!(p.payload, sent, "{len}-byte payload");
        assert!(!p.truncated());
    }
    let n = lens.len() as u64;
    k.assert_counters(&[("seen", n), ("captured", n)]);
}

#[test]
fn ring_holds_as_many_small_records_as_their_size_allows_then_counts_ring_full() {
    // 64 KiB ring; a 5-byte datagram is a 104-byte slot (8-byte ring
    // header + 64-byte record header + the smallest class, 32 bytes): 630
    // fit. Jumbo-sized slots would fit 7.
    let mut k = kernel_or_skip!(64 * 1024);
    let frame = v4(b"hello").build();
    for _ in 0..600 {
        k.run(&frame);
    }
    assert_eq!(k.counter(counter::RING_FULL), 0, "{:?}", k.counters());
    for _ in 0..100 {
        k.run(&frame);
    }
    let captured = k.counter(counter::CAPTURED);
    let full = k.counter(counter::RING_FULL);
    assert_eq!(captured, 630, "{:?}", k.counters());
    assert_eq!(captured + full, 700);
    assert_eq!(k.raw_records().len() as u64, captured);
}

#[test]
fn records_wrap_around_the_ring_many_times_whole_and_in_order() {
    // Sizes that do not divide the ring, so records keep landing across
    // its end (read through the double mapping as one slice).
    let mut k = kernel_or_skip!(64 * 1024);
    let lens = [5usize, 100, 700, 1400, 3000, 33];
    let mut seq = 0u32;
    let mut bytes = 0;
    for round in 0..100 {
        let mut sent = Vec::new();
        for i in 0..12 {
            let len = lens[(round + i) % lens.len()];
            let mut p = payload(len.max(4));
            p[..4].copy_from_slice(&seq.to_be_bytes());
            seq += 1;
            bytes += p.len();
            k.run(&v4(&p).build());
            sent.push(p);
        }
        let got: Vec<Vec<u8>> = k.packets().into_iter().map(|p| p.payload).collect();
        assert_eq!(got, sent, "round {round}");
    }
    assert!(
        bytes > 10 * 64 * 1024,
        "the test wraps the ring ({bytes} bytes)"
    );
    k.assert_counters(&[("seen", u64::from(seq)), ("captured", u64::from(seq))]);
}

#[test]
fn a_read_record_frees_its_slot() {
    // 64 KiB ring: 630 slots of 104 bytes.
    let mut k = kernel_or_skip!(64 * 1024);
    let frame = v4(b"hello").build();
    for _ in 0..631 {
        k.run(&frame);
    }
    assert_eq!(k.counter(counter::RING_FULL), 1, "{:?}", k.counters());
    // One record read: its slot is free again.
    assert!(k.ring.next().is_some());
    k.run(&frame);
    assert_eq!(k.counter(counter::RING_FULL), 1, "{:?}", k.counters());
    k.run(&frame);
    assert_eq!(k.counter(counter::RING_FULL), 2, "{:?}", k.counters());
    // Reading to the end frees the whole ring.
    assert_eq!(k.raw_records().len(), 630);
    for _ in 0..630 {
        k.run(&frame);
    }
    assert_eq!(k.counter(counter::RING_FULL), 2, "{:?}", k.counters());
    assert_eq!(k.raw_records().len(), 630);
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn a_reader_on_another_cpu_waiting_edge_triggered_is_never_left_asleep() {
    // The producer runs the program on one CPU while the reader, on the
    // other, reads until the ring is empty and then sleeps in epoll
    // (edge-triggered, as tokio registers it) until the kernel wakes it.
    // It meets records the kernel has reserved but not yet submitted; if a
    // wake-up were ever lost, the reader would sleep through the timeout
    // with records waiting.
    let k = kernel_or_skip!(64 * 1024);
    let Kernel {
        mut ebpf,
        mut ring,
        control,
    } = k;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    const FRAMES: u32 = 20_000;
    // SAFETY: plain syscalls on fds we own; the event struct outlives them.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0);
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    assert_eq!(
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, ring.as_raw_fd(), &mut ev) },
        0
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut seqs = Vec::new();
    let mut stalls = 0;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            if cpus > 1 {
                pin_to_cpu(0);
            }
            let prog = loader::program(&mut ebpf);
            for seq in 0..FRAMES {
                let mut p = payload(16);
                p[..4].copy_from_slice(&seq.to_be_bytes());
                let frame = v4(&p).build();
                prog.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        if cpus > 1 {
            pin_to_cpu(1);
        }
        loop {
            while let Some(r) = ring.next() {
                let p = record::decode(&r).expect("decodable record");
                seqs.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let mut out = [libc::epoll_event { events: 0, u64: 0 }];
            // SAFETY: one event slot.
            let n = unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), 1, 2000) };
            if n == 0 {
                // Asleep for 2 s: allowed only once the producer is done and
                // nothing is left.
                if let Some(r) = ring.next() {
                    stalls += 1;
                    let p = record::decode(&r).expect("decodable record");
                    seqs.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                    continue;
                }
                if finished {
                    break;
                }
            }
        }
    });
    // SAFETY: our epoll fd.
    unsafe { libc::close(epfd) };
    assert_eq!(stalls, 0, "the reader slept with records waiting");
    let captured = control.counter(counter::CAPTURED).unwrap();
    let full = control.counter(counter::RING_FULL).unwrap();
    assert_eq!(captured + full, u64::from(FRAMES));
    assert_eq!(
        seqs.len() as u64,
        captured,
        "every captured record was read"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[test]
fn a_reader_that_caught_up_polls_readable_at_the_next_record() {
    let mut k = kernel_or_skip!(64 * 1024);
    assert!(!k.readable());
    let frame = v4(b"hello").build();
    k.run(&frame);
    assert!(k.readable());
    assert_eq!(k.raw_records().len(), 1);
    assert!(!k.readable(), "everything read is published when caught up");
    k.run(&frame);
    k.run(&frame);
    assert!(k.readable());
    assert!(k.ring.next().is_some());
    assert!(k.readable(), "one record left");
    assert!(k.ring.next().is_some());
    assert!(k.ring.next().is_none());
    assert!(!k.readable());
}

#[test]
fn disabled_port_is_counted_and_passed() {
    let mut k = kernel_or_skip!();
    k.run(&FrameBuilder::ipv4(SRC4, DST4).udp(40000, 515, b"x").build());
    assert!(k.packets().is_empty());
    k.assert_counters(&[("seen", 1), ("port_disabled", 1)]);
    k.enable(515);
    k.run(&FrameBuilder::ipv4(SRC4, DST4).udp(40000, 515, b"x").build());
    assert_eq!(
        k.packets().len(),
        1,
        "enabled at runtime: next packet is captured"
    );
}

#[test]
fn non_udp_is_counted_and_passed() {
    let mut k = kernel_or_skip!();
    k.run(&FrameBuilder::arp_request([2, 0, 0, 0, 0, 1], SRC4, DST4).build());
    k.run(
        &FrameBuilder::ipv4(SRC4, DST4)
            .protocol(6)
            .payload(&[0; 20])
            .build(),
    );
    k.run(
        &FrameBuilder::ipv6(SRC6.octets(), DST6.octets())
            .protocol(58)
            .payload(&[0; 8])
            .build(),
    );
    assert!(k.packets().is_empty());
    k.assert_counters(&[("seen", 3), ("not_udp", 3)]);
}

#[test]
fn ipv4_options_of_every_length_are_stepped_over() {
    let mut k = kernel_or_skip!();
    for words in 1..=10usize {
        let opts = vec![1u8; words * 4]; // NOPs
        let sent = payload(10 + words);
        k.run(&v4(&sent).ipv4_options(&opts).build());
        let packets = k.packets();
        assert_eq!(packets.len(), 1, "IHL {}", 5 + words);
        assert_v4_packet(&packets[0], &sent);
    }
    k.assert_counters(&[("seen", 10), ("captured", 10)]);
}

#[test]
fn ipv6_with_extension_headers_is_captured() {
    let mut k = kernel_or_skip!();
    let sent = payload(300);
    let frames = [
        v6(&sent).build(),
        v6(&sent).ipv6_ext(0, 0).build(),
        v6(&sent)
            .ipv6_ext(0, 1)
            .ipv6_ext(43, 2)
            .ipv6_ext(60, 0)
            .build(),
        v6(&sent).ipv6_fragment(0, false).build(), // atomic fragment
    ];
    for f in &frames {
        k.run(f);
        let packets = k.packets();
        assert_eq!(packets.len(), 1);
        let p = &packets[0];
        assert_eq!(p.src, IpAddr::V6(SRC6));
        assert_eq!(p.dst, IpAddr::V6(DST6));
        assert_eq!(p.ip_version(), 6);
        assert_eq!(p.payload, sent);
        assert_eq!(p.wire_len, 300);
    }
    k.assert_counters(&[("seen", 4), ("captured", 4)]);
}

#[test]
fn vlan_and_qinq_are_captured() {
    let mut k = kernel_or_skip!();
    let sent = payload(64);
    k.run(&v4(&sent).dot1q(100).build());
    k.run(&v4(&sent).qinq(200, 300).build());
    k.run(&v6(&sent).qinq(200, 300).build());
    let packets = k.packets();
    assert_eq!(packets.len(), 3);
    assert_v4_packet(&packets[0], &sent);
    assert_v4_packet(&packets[1], &sent);
    assert_eq!(packets[2].payload, sent);
    // A third tag is deeper than we look: counted apart from traffic that
    // is not UDP, since this may be.
    k.run(
        &v4(&sent)
            .vlan(0x88A8, 1)
            .vlan(0x8100, 2)
            .vlan(0x8100, 3)
            .build(),
    );
    assert!(k.packets().is_empty());
    k.assert_counters(&[("seen", 4), ("captured", 3), ("unsupported", 1)]);
}

#[test]
fn truncation_at_every_header_boundary_is_malformed() {
    let mut k = kernel_or_skip!();
    let frames = [
        v4(b"abc").build(),
        v4(b"abc").ipv4_options(&[1; 8]).build(),
        v6(b"abc").ipv6_ext(0, 0).build(),
        v4(b"abc").qinq(1, 2).build(),
    ];
    let mut runs = 0;
    for f in &frames {
        // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
        for cut in 14..f.len() - 3 {
            k.run(&f[..cut]);
            runs += 1;
        }
    }
    assert!(k.packets().is_empty());
    k.assert_counters(&[("seen", runs), ("malformed", runs)]);
}

#[test]
fn lying_length_fields_are_malformed() {
    let mut k = kernel_or_skip!();
    let sent = payload(20);
    k.run(&v4(&sent).udp_len_override(7).build());
    k.run(&v4(&sent).udp_len_override(29).build()); // 1 past the IP payload
    k.run(&v4(&sent).udp_len_override(60_000).build());
    k.run(&v4(&sent).ip_total_len_override(1500).build()); // past the frame
    k.run(&v6(&sent).udp_len_override(4).build());
    k.run(&v6(&sent).ip_total_len_override(1000).build());
    assert!(k.packets().is_empty());
    k.assert_counters(&[("seen", 6), ("malformed", 6)]);
    // A UDP length shorter than the IP payload is believed (as Linux does).
    k.run(&v4(&sent).udp_len_override(8 + 5).build());
    let packets = k.packets();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].payload, sent[..5]);
}

#[test]
fn empty_and_one_byte_payloads() {
    let mut k = kernel_or_skip!();
    k.run(&v4(b"").build());
    k.run(&v6(b"").build());
    k.run(&v4(b"\x00").build());
    let packets = k.packets();
    assert_eq!(packets.len(), 3);
    assert!(packets[0].payload.is_empty() && packets[0].wire_len == 0);
    assert!(packets[1].payload.is_empty() && packets[1].wire_len == 0);
    assert_eq!(packets[2].payload, [0]);
    k.assert_counters(&[("seen", 3), ("captured", 3)]);
}

#[test]
fn jumbo_payloads_are_captured_whole_across_fragments() {
    // Frames larger than a page reach a frags-aware program as multi-buffer
    // frames in BPF_PROG_TEST_RUN, as they do on veth at MTU 9001.
    let mut k = kernel_or_skip!();
    for len in [1472usize, 3000, 4096, 8900, 8973] {
        let sent = payload(len);
        k.run(&v4(&sent).build());
        let packets = k.packets();
        assert_eq!(packets.len(), 1, "{len}-byte payload");
        assert_v4_packet(&packets[0], &sent);
    }
    let sent = payload(8953); // the IPv6 maximum at MTU 9001
    k.run(&v6(&sent).build());
    assert_eq!(k.packets()[0].payload, sent);
    k.assert_counters(&[("seen", 6), ("captured", 6)]);
}

#[test]
fn a_multi_buffer_frame_shorter_than_its_ip_length_is_malformed() {
    // The IP length reaches past the first buffer, so only the length of
    // the whole frame, fragments included, can tell: one byte too many is
    // malformed, the exact length is captured.
    let mut k = kernel_or_skip!();
    let sent = payload(8900);
    k.run(&v4(&sent).ip_total_len_override(20 + 8 + 8901).build());
    k.run(&v6(&sent).ip_total_len_override(8 + 8901).build());
    assert!(k.packets().is_empty());
    k.run(&v4(&sent).ip_total_len_override(20 + 8 + 8900).build());
    assert_eq!(k.packets()[0].payload, sent);
    k.assert_counters(&[("seen", 3), ("malformed", 2), ("captured", 1)]);
}

#[test]
fn snaplen_truncates_and_marks() {
    let mut k = kernel_or_skip!();
    k.set_snaplen(100);
    let sent = payload(1000);
    k.run(&v4(&sent).build());
    let packets = k.packets();
    assert_eq!(packets[0].payload, sent[..100]);
    assert_eq!(packets[0].wire_len, 1000);
    assert!(packets[0].truncated());
    k.set_snaplen(0);
    k.run(&v4(&sent).build());
    let packets = k.packets();
    assert!(packets[0].payload.is_empty());
    assert_eq!(packets[0].wire_len, 1000);
    k.assert_counters(&[("seen", 2), ("captured", 2), ("truncated", 2)]);
}

#[test]
fn payloads_beyond_the_capture_limit_are_truncated_to_it() {
    let mut k = kernel_or_skip!();
    let sent = payload(12_000); // possible on loopback (MTU 65536)
    k.run(&v4(&sent).build());
    let packets = k.packets();
    assert_eq!(packets[0].payload.len(), MAX_CAPTURE as usize);
    assert_eq!(packets[0].payload, sent[..MAX_CAPTURE as usize]);
    assert_eq!(packets[0].wire_len, 12_000);
    k.assert_counters(&[("seen", 1), ("captured", 1), ("truncated", 1)]);
}

fn from(src: [u8; 4]) -> Vec<u8> {
    FrameBuilder::ipv4(src, DST4).udp(40000, PORT, b"x").build()
}

fn from6(src: &str) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    FrameBuilder::ipv6(src.octets(), DST6.octets())
        .udp(40000, PORT, b"x")
        .build()
}

#[test]
fn deny_list_longest_prefix_match_v4_and_v6() {
    let mut k = kernel_or_skip!();
    k.control
        .add_source(parse_net("198.18.0.0/24").unwrap(), false)
        .unwrap();
    k.control
        .add_source(parse_net("fd00:1::/32").unwrap(), false)
        .unwrap();
    k.run(&from([198, 18, 0, 77])); // denied
    k.run(&from([198, 18, 1, 77])); // outside the /24
    k.run(&from6("fd00:1::5")); // denied
    k.run(&from6("fd00:2::5"));
    let packets = k.packets();
    let srcs: Vec<String> = packets.iter().map(|p| p.src.to_string()).collect();
    assert_eq!(srcs, ["198.18.1.77", "fd00:2::5"]);
    k.assert_counters(&[("seen", 4), ("denied", 2), ("captured", 2)]);
    // Emptying the deny list clears its flag (the kernel then skips the
    // lookups) and admits the sources again.
    let flag = |k: &Kernel| k.control.config().unwrap().flags & CONFIG_DENYLIST;
    assert_ne!(flag(&k), 0);
    for net in ["198.18.0.0/24", "fd00:1::/32"] {
        assert!(
            k.control
                .remove_source(parse_net(net).unwrap(), false)
                .unwrap()
        );
    }
    assert_eq!(flag(&k), 0);
    k.run(&from([198, 18, 0, 77]));
    assert_eq!(k.packets().len(), 1);
}

#[test]
fn allow_list_admits_only_its_prefixes_and_deny_wins() {
    let mut k = kernel_or_skip!();
    k.control
        .add_source(parse_net("198.18.0.0/16").unwrap(), true)
        .unwrap();
    k.control
        .add_source(parse_net("198.18.5.0/24").unwrap(), false)
        .unwrap();
    k.run(&from([198, 18, 9, 1])); // allowed
    k.run(&from([198, 19, 9, 1])); // not on the allow list
    k.run(&from([198, 18, 5, 1])); // allowed by /16 but denied by /24
    k.run(&from6("fd00::9")); // allow list non-empty and has no v6 prefix
    let srcs: Vec<String> = k.packets().iter().map(|p| p.src.to_string()).collect();
    assert_eq!(srcs, ["198.18.9.1"]);
    k.assert_counters(&[("seen", 4), ("denied", 3), ("captured", 1)]);
    // Emptying the allow list admits everyone again.
    assert!(
        k.control
            .remove_source(parse_net("198.18.0.0/16").unwrap(), true)
            .unwrap()
    );
    k.run(&from([198, 19, 9, 1]));
    assert_eq!(k.packets().len(), 1);
    let (allow, deny) = k.control.sources().unwrap();
    assert!(allow.is_empty());
    assert_eq!(
        deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["198.18.5.0/24"]
    );
}

#[test]
fn port_action_drop_consumes_captured_packets() {
    let mut k = kernel_or_skip!();
    k.set_port(PortSettings {
        action: Action::Drop,
        ..PortSettings::default()
    });
    assert_eq!(k.action(&from([198, 18, 0, 2])), XDP_DROP);
    assert_eq!(k.packets().len(), 1, "consumed packets are still captured");
    // Other traffic is untouched.
    assert_eq!(
        k.action(&FrameBuilder::ipv4(SRC4, DST4).udp(1, 53, b"x").build()),
        XDP_PASS
    );
    k.assert_counters(&[
        ("seen", 2),
        ("captured", 1),
        ("consumed", 1),
        ("port_disabled", 1),
    ]);
}

#[test]
fn port_rate_limit_allows_the_burst_then_counts() {
    let mut k = kernel_or_skip!();
    // 1 packet/s with a burst of 10: within the few milliseconds this test
    // takes, exactly 10 of 100 conform.
    k.set_port(PortSettings {
        rate: 1,
        burst: 10,
        action: Action::Pass,
        ..PortSettings::default()
    });
    let frame = from([198, 18, 0, 2]);
    for _ in 0..100 {
        k.run(&frame);
    }
    assert_eq!(k.packets().len(), 10);
    k.assert_counters(&[("seen", 100), ("captured", 10), ("limited_port", 90)]);
    let busiest = k.control.busiest_ports(5).unwrap();
    assert_eq!(busiest.len(), 1);
    assert_eq!(
        (busiest[0].port, busiest[0].captured, busiest[0].limited),
        (PORT, 10, 90)
    );
}

#[test]
fn records_carry_the_coarse_clock_unless_a_limit_needs_the_precise_one() {
    let mut k = kernel_or_skip!();
    let frame = v4(b"tick").build();

    // No limit: the kernel's last tick before the capture, marked as such.
    let before = clock::monotonic_coarse_ns();
    k.run(&frame);
    let after = clock::monotonic_coarse_ns();
    let raw = k.raw_records();
    assert_eq!(raw.len(), 1);
    let h = record::decode_header(&raw[0]).unwrap();
    assert_eq!(h.flags, RECORD_COARSE_TIME);
    assert!(
        (before..=after).contains(&h.timestamp_ns),
        "coarse stamp {} outside {before}..={after}",
        h.timestamp_ns
    );
    // The agent narrows it with the time it reads the record: after the
    // stamp, within one tick of it, and not after the read.
    let tick = clock::coarse_tick_ns();
    let read = clock::monotonic_ns();
    let mut view = record::decode_view(&raw[0]).unwrap();
    assert!(view.coarse_time);
    view.narrow_time(read, tick);
    assert!(!view.coarse_time);
    assert!(
        view.timestamp_ns >= h.timestamp_ns
            && view.timestamp_ns <= h.timestamp_ns + tick
            && view.timestamp_ns <= read,
        "narrowed {} from stamp {} (tick {tick}) read at {read}",
        view.timestamp_ns,
        h.timestamp_ns
    );

    // Any limit on the packet's way needs the precise clock: the stamp is
    // that, unmarked. A port's rate, then a per-source, then a global limit.
    let precise = |k: &mut Kernel, what: &str| {
        let before = clock::monotonic_ns();
        k.run(&frame);
        let after = clock::monotonic_ns();
        let raw = k.raw_records();
        assert_eq!(raw.len(), 1, "{what}");
        let h = record::decode_header(&raw[0]).unwrap();
        assert_eq!(h.flags, 0, "{what}");
        assert!(
            (before..=after).contains(&h.timestamp_ns),
            "{what}: precise stamp {} outside {before}..={after}",
            h.timestamp_ns
        );
    };
    k.set_port(PortSettings {
        rate: 1000,
        burst: 10,
        action: Action::Pass,
        ..PortSettings::default()
    });
    precise(&mut k, "port rate");
    k.set_port(PortSettings::default());
    let limits = |global_rate, source_rate| Limits {
        global_rate,
        global_burst: 10,
        source_rate,
        source_burst: 10,
        reject_action: Action::Pass,
    };
    k.control.set_limits(&limits(0, 1000)).unwrap();
    precise(&mut k, "per-source limit");
    k.control.set_limits(&limits(1000, 0)).unwrap();
    precise(&mut k, "global limit");
    // And back to none: coarse again.
    k.control.set_limits(&limits(0, 0)).unwrap();
    k.run(&frame);
    let raw = k.raw_records();
    assert_eq!(
        record::decode_header(&raw[0]).unwrap().flags,
        RECORD_COARSE_TIME
    );
}

#[test]
fn rejected_packets_follow_the_configured_action() {
    let mut k = kernel_or_skip!();
    k.control
        .add_source(parse_net("198.18.0.9").unwrap(), false)
        .unwrap();
    assert_eq!(
        k.action(&from([198, 18, 0, 9])),
        XDP_PASS,
        "default reject action is pass"
    );
    k.control
        .set_limits(&Limits {
            global_rate: 0,
            global_burst: 0,
            source_rate: 0,
            source_burst: 0,
            reject_action: Action::Drop,
        })
        .unwrap();
    assert_eq!(k.action(&from([198, 18, 0, 9])), XDP_DROP);
    assert_eq!(
        k.action(&from([198, 18, 0, 8])),
        XDP_PASS,
        "allowed packets still pass"
    );
    k.assert_counters(&[("seen", 3), ("denied", 2), ("captured", 1)]);
}

#[test]
fn per_source_limit_isolates_sources_and_global_cap_bounds_all() {
    let mut k = kernel_or_skip!();
    k.control
        .set_limits(&Limits {
            global_rate: 0,
            global_burst: 0,
            source_rate: 1,
            source_burst: 5,
            reject_action: Action::Pass,
        })
        .unwrap();
    let flooder = from([198, 18, 0, 66]);
    let quiet = from([198, 18, 0, 7]);
    for _ in 0..50 {
        k.run(&flooder);
    }
    for _ in 0..3 {
        k.run(&quiet);
    }
    let packets = k.packets();
    let quiet_seen = packets
        .iter()
        .filter(|p| p.src.to_string() == "198.18.0.7")
        .count();
    assert_eq!(quiet_seen, 3, "the quiet source is not starved");
    assert_eq!(packets.len(), 5 + 3);
    k.assert_counters(&[("seen", 53), ("captured", 8), ("limited_source", 45)]);
    let top = k.control.busiest_sources(1).unwrap();
    assert_eq!(top[0].addr.to_string(), "198.18.0.66");
    assert_eq!((top[0].captured, top[0].limited), (5, 45));

    // Global cap: 1/s with burst 2 across every source and port.
    k.control
        .set_limits(&Limits {
            global_rate: 1,
            global_burst: 2,
            source_rate: 0,
            source_burst: 0,
            reject_action: Action::Pass,
        })
        .unwrap();
    for last in 100..110 {
        k.run(&from([198, 18, 1, last]));
    }
    assert_eq!(k.packets().len(), 2);
    assert_eq!(k.counter(counter::LIMITED_GLOBAL), 8);
}

// ---------------------------------------------------------------------------
// AF_XDP: the redirect of consumed ports, and the per-CPU port counters
// ---------------------------------------------------------------------------

const XDP_REDIRECT: u32 = 4;

/// Loopback's index: `BPF_PROG_TEST_RUN` runs frames as received on its
/// queue 0.
const LO: u32 = 1;

/// The object with `CONFIG_AFXDP` set and the test port consumed, and an
/// AF_XDP socket (copy mode) bound to loopback's queue 0 in `XSKS` slot 0.
fn afxdp_kernel() -> Option<(Kernel, udp_ebpf_common::xsk::Socket)> {
    use udp_ebpf_common::xsk::{Bind, Config as XskConfig, Socket};
    let mut k = match skip_reason() {
        Some(reason) => {
            println!("SKIPPED: {reason}");
            return None;
        }
        None => Kernel::load(1 << 20),
    };
    k.set_port(PortSettings {
        action: Action::Drop,
        ..PortSettings::default()
    });
    k.control
        .set_config(Config {
            flags: udp_ebpf_common::CONFIG_AFXDP,
            ..Config::default()
        })
        .unwrap();
    let socket = Socket::open(
        LO,
        0,
        XskConfig {
            frames: 64,
            bind: Bind::Copy,
        },
    )
    .expect("an AF_XDP socket on lo (CONFIG_XDP_SOCKETS)");
    let mut xsks: aya::maps::XskMap<_> =
        aya::maps::XskMap::try_from(k.ebpf.map_mut("XSKS").unwrap()).unwrap();
    xsks.set(0, socket.as_raw_fd(), 0).unwrap();
    Some((k, socket))
}

impl Kernel {
    /// Points interface `ifindex` at `XSKS` slot `base` (or, with `None`,
    /// removes it).
    fn xsk_iface(&mut self, ifindex: u32, base: Option<u32>) {
        let mut ifaces: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("XSK_IFACES").unwrap()).unwrap();
        match base {
            Some(b) => ifaces.insert(ifindex, b, 0).unwrap(),
            None => ifaces.remove(&ifindex).unwrap(),
        }
    }

    /// Runs one frame and returns the action and the frame as the program
    /// left it.
    fn action_and_frame(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = loader::program(&mut self.ebpf);
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}

#[test]
fn consumed_ports_are_redirected_to_the_socket_of_their_queue_stamped_and_counted() {
    let Some((mut k, _socket)) = afxdp_kernel() else {
        return;
    };
    let sent = payload(1472);
    let frame = v4(&sent).build();
    // No socket registered for the interface yet: the ring, as before.
    assert_eq!(k.action(&frame), XDP_DROP);
    assert_eq!(k.packets().len(), 1);
    k.assert_counters(&[("seen", 1), ("captured", 1), ("consumed", 1)]);

    k.xsk_iface(LO, Some(0));
    let (action, out) = k.action_and_frame(&frame);
    assert_eq!(action, XDP_REDIRECT, "a consumed port with a socket");
    assert!(k.raw_records().is_empty(), "no ring record for a redirect");
    k.assert_counters(&[
        ("seen", 2),
        ("captured", 2),
        ("consumed", 2),
        ("redirected", 1),
    ]);
    // What the agent reads from the socket: the frame, its Ethernet
    // addresses replaced by the stamp, decoding to the ring's packet.
    let before = clock::monotonic_ns();
    let p = record::decode_frame(&out, 7)
        .expect("a stamped frame")
        .to_packet();
    assert_v4_packet(&p, &sent);
    assert_eq!(p.ifindex, 7);
    assert!(p.timestamp_ns <= before + clock::coarse_tick_ns());
    assert_eq!(out[12..], frame[12..], "only the addresses change");

    // Snap length: the stamp says how much to take, and it is counted.
    k.control
        .set_config(Config {
            snaplen: 100,
            flags: udp_ebpf_common::CONFIG_AFXDP,
            ..Config::default()
        })
        .unwrap();
    let (action, out) = k.action_and_frame(&frame);
    assert_eq!(action, XDP_REDIRECT);
    let p = record::decode_frame(&out, 7).unwrap();
    assert_eq!((p.payload, p.wire_len), (&sent[..100], 1472));
    assert_eq!(k.counter(counter::TRUNCATED), 1);
    k.control
        .set_config(Config {
            flags: udp_ebpf_common::CONFIG_AFXDP,
            ..Config::default()
        })
        .unwrap();

    // An observed port never leaves the host's path.
    k.set_port(PortSettings::default());
    assert_eq!(k.action(&frame), XDP_PASS);
    assert_eq!(k.packets().len(), 1);
    // Without CONFIG_AFXDP (--capture-path ringbuf) consumed ports use the ring.
    k.set_port(PortSettings {
        action: Action::Drop,
        ..PortSettings::default()
    });
    k.set_snaplen(MAX_CAPTURE);
    assert_eq!(k.action(&frame), XDP_DROP);
    assert_eq!(k.packets().len(), 1);
    // Deregistered (the interface went away): the ring again.
    k.control
        .set_config(Config {
            flags: udp_ebpf_common::CONFIG_AFXDP,
            ..Config::default()
        })
        .unwrap();
    k.xsk_iface(LO, None);
    assert_eq!(k.action(&frame), XDP_DROP);
    assert_eq!(k.packets().len(), 1);
    k.assert_counters(&[
        ("seen", 6),
        ("captured", 6),
        ("consumed", 5),
        ("redirected", 2),
        ("truncated", 1),
    ]);
    assert_eq!(k.control.port_captured(PORT).unwrap(), 6);
}

#[test]
fn a_registered_interface_with_an_empty_slot_takes_the_ring() {
    let Some((mut k, _socket)) = afxdp_kernel() else {
        return;
    };
    // Slot 64 (another interface's base) has no socket.
    k.xsk_iface(LO, Some(64));
    let sent = payload(64);
    assert_eq!(k.action(&v4(&sent).build()), XDP_DROP);
    let packets = k.packets();
    assert_eq!(packets.len(), 1);
    assert_v4_packet(&packets[0], &sent);
    k.assert_counters(&[("seen", 1), ("captured", 1), ("consumed", 1)]);
}

#[test]
fn port_captured_counts_are_kept_per_cpu_and_summed() {
    let mut k = kernel_or_skip!();
    let frame = v4(b"per cpu").build();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs = [3usize, 5];
    for (i, n) in runs.iter().enumerate() {
        pin_to_cpu(i % cpus);
        for _ in 0..*n {
            k.run(&frame);
        }
    }
    assert_eq!(k.control.port_captured(PORT).unwrap(), 8);
    let busiest = k.control.busiest_ports(5).unwrap();
    assert_eq!(busiest.len(), 1);
    assert_eq!((busiest[0].port, busiest[0].captured), (PORT, 8));
    assert_eq!(k.control.port_captured(PORT + 1).unwrap(), 0);
}

// ---------------------------------------------------------------------------
// IP fragments: the first fragment decides, the others follow; the records
// go through the agent's reassembler as the capture loop sends them.
// ---------------------------------------------------------------------------

/// The agent's reassembler with default settings, and its counters.
fn reassembler() -> (Reassembler, Arc<PipelineStats>) {
    let stats = Arc::new(PipelineStats::default());
    (
        Reassembler::new(reassembly::Settings::default(), stats.clone()),
        stats.clone(),
    )
}

/// The reassembly counters that are not zero.
fn reassembly_counters(stats: &PipelineStats) -> Vec<(&'static str, u64)> {
    stats
        .reassembly
        .snapshot()
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .collect()
}

impl Kernel {
    /// The datagrams the ring's records make, as the capture loop makes
    /// them: whole ones as they are, fragments through `r`.
    fn datagrams(&mut self, r: &mut Reassembler) -> Vec<Packet> {
        let mut out = Vec::new();
        for raw in self.raw_records() {
            match record::decode_record(&raw).expect("decodable record") {
                Record::Datagram(p) => out.push(p.to_packet()),
                Record::Fragment(f) => out.extend(r.push(&f)),
                Record::Discard(key) => r.discard(&key),
            }
        }
        out
    }

    /// Runs every frame; each must leave with `want`.
    fn run_all(&mut self, frames: &[Vec<u8>], want: u32) {
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(self.action(f), want, "frame {i} of {}", frames.len());
        }
    }
}

/// An 8,000-byte datagram (six fragments at MTU 1500) with identification
/// `id`, its payload and its fragments.
fn fragmented(v6_: bool, id: u32, len: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut sent = payload(len);
    sent[..4].copy_from_slice(&id.to_be_bytes());
    let b = if v6_ { v6(&sent) } else { v4(&sent) };
    let frames = b.frag_id(id).fragments(1500);
    (sent, frames)
}

#[test]
fn fragments_in_order_reversed_and_interleaved_make_one_exact_datagram_each() {
    let mut k = kernel_or_skip!();
    let (mut r, stats) = reassembler();
    for v6_ in [false, true] {
        // In order: every fragment follows the first's decision.
        let (sent, frames) = fragmented(v6_, 1, 8000);
        assert_eq!(frames.len(), 6);
        k.run_all(&frames, XDP_PASS);
        let got = k.datagrams(&mut r);
        assert_eq!(got.len(), 1);
        if v6_ {
            assert_eq!(got[0].payload, sent);
            assert_eq!((got[0].src, got[0].ip_version()), (IpAddr::V6(SRC6), 6));
        } else {
            assert_v4_packet(&got[0], &sent);
        }
        // Reversed: five come before the first (provisionally), the first
        // decides, and the agent completes the datagram.
        let (sent, mut frames) = fragmented(v6_, 2, 8000);
        frames.reverse();
        k.run_all(&frames, XDP_PASS);
        let got = k.datagrams(&mut r);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, sent);
        // Interleaved across three datagrams, each in a different order.
        let sets: Vec<(Vec<u8>, Vec<Vec<u8>>)> = (3..6)
            .map(|id| fragmented(v6_, id, 5000 + id as usize))
            .collect();
        let mut mixed = Vec::new();
        for i in 0..4 {
            mixed.push(sets[0].1[i].clone());
            mixed.push(sets[1].1[3 - i].clone());
            mixed.push(sets[2].1[(i + 2) % 4].clone());
        }
        k.run_all(&mixed, XDP_PASS);
        let mut got = k.datagrams(&mut r);
        got.sort_by_key(|p| p.payload.len());
        let payloads: Vec<&Vec<u8>> = got.iter().map(|p| &p.payload).collect();
        assert_eq!(payloads, [&sets[0].0, &sets[1].0, &sets[2].0]);
    }
    // Per IP version: 6 + 6 + 12 fragments written, of which 5 reversed
    // ones and, interleaved, the 3 + 2 before their datagrams' first.
    k.assert_counters(&[("seen", 48), ("fragment", 48), ("fragment_early", 20)]);
    assert_eq!(
        reassembly_counters(&stats),
        [("fragments", 48), ("reassembled", 10)]
    );
}

#[test]
fn ipv6_fragments_behind_extension_headers_are_captured() {
    let mut k = kernel_or_skip!();
    let (mut r, _) = reassembler();
    let sent = payload(4000);
    let chains: [&[(u8, u8)]; 3] = [&[(0, 0)], &[(0, 1), (43, 0)], &[(0, 0), (60, 2), (43, 1)]];
    for (i, chain) in chains.iter().enumerate() {
        let mut b = FrameBuilder::ipv6(SRC6.octets(), DST6.octets());
        for &(kind, units) in *chain {
            b = b.ipv6_ext(kind, units);
        }
        let frames = b
            .frag_id(100 + i as u32)
            .udp(40000, PORT, &sent)
            .fragments(1280);
        k.run_all(&frames, XDP_PASS);
        let got = k.datagrams(&mut r);
        assert_eq!(got.len(), 1, "chain {chain:?}");
        assert_eq!(got[0].payload, sent, "chain {chain:?}");
        assert_eq!((got[0].src_port, got[0].dst_port), (40000, PORT));
    }
}

#[test]
fn duplicate_fragments_make_one_datagram() {
    let mut k = kernel_or_skip!();
    let (mut r, stats) = reassembler();
    let (sent, f) = fragmented(false, 7, 6000);
    // The first fragment twice (the copy follows the decision, counted
    // once per datagram against the port), a middle one three times.
    let frames = [&f[0], &f[1], &f[0], &f[2], &f[2], &f[3], &f[2], &f[4]];
    for frame in frames {
        k.run(frame);
    }
    let got = k.datagrams(&mut r);
    assert_eq!(got.len(), 1);
    assert_v4_packet(&got[0], &sent);
    k.assert_counters(&[("seen", 8), ("fragment", 8)]);
    assert_eq!(
        reassembly_counters(&stats),
        [
            ("fragments", 8),
            ("reassembled", 1),
            ("fragment_duplicate", 3)
        ]
    );
    assert_eq!(k.control.busiest_ports(1).unwrap()[0].captured, 1);
}

#[test]
fn overlapping_fragments_make_nothing() {
    let mut k = kernel_or_skip!();
    let (mut r, stats) = reassembler();
    let b = v4(&payload(3000)).frag_id(8);
    let d = b.udp_datagram();
    // The second fragment starts 8 bytes into the first's data (the same
    // bytes, even: RFC 5722 drops the datagram all the same).
    let frames = [
        b.fragment(0, true, &d[..1480]),
        b.fragment(1472, true, &d[1472..2960]),
        b.fragment(2960, false, &d[2960..]),
    ];
    k.run_all(&frames, XDP_PASS);
    assert!(k.datagrams(&mut r).is_empty());
    assert_eq!(
        stats
            .reassembly
            .overlap
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    k.assert_counters(&[("seen", 3), ("fragment", 3)]);
}

#[test]
fn a_datagram_missing_a_fragment_times_out() {
    let mut k = kernel_or_skip!();
    let stats = Arc::new(PipelineStats::default());
    let mut r = Reassembler::new(
        reassembly::Settings {
            timeout: Duration::from_millis(200),
            ..reassembly::Settings::default()
        },
        stats.clone(),
    );
    let (_, f) = fragmented(false, 9, 8000);
    for (i, frame) in f.iter().enumerate() {
        if i != 3 {
            k.run(frame);
        }
    }
    assert!(k.datagrams(&mut r).is_empty());
    assert_eq!(r.len(), 1);
    std::thread::sleep(Duration::from_millis(250));
    r.expire(clock::monotonic_ns());
    assert!(r.is_empty());
    assert_eq!(
        reassembly_counters(&stats),
        [("fragments", 5), ("fragment_timeout", 1)]
    );
}

#[test]
fn the_largest_datagrams_are_captured_whole() {
    let mut k = kernel_or_skip!(8 << 20);
    let (mut r, _) = reassembler();
    // The agent's default: every payload whole.
    k.set_snaplen(MAX_SNAPLEN);
    // 65,535 bytes of IPv4 packet; 65,535 of IPv6 payload (fragment header
    // included), at IPv6's minimum MTU: 54 fragments.
    for (v6_, len, mtu) in [(false, 65_507usize, 1500), (true, 65_519, 1280)] {
        let mut sent = payload(len);
        sent[..4].copy_from_slice(&(len as u32).to_be_bytes());
        let b = if v6_ { v6(&sent) } else { v4(&sent) };
        let mut frames = b.frag_id(11).fragments(mtu);
        frames.rotate_left(7);
        k.run_all(&frames, XDP_PASS);
        let got = k.datagrams(&mut r);
        assert_eq!(got.len(), 1, "{len}");
        assert_eq!(got[0].wire_len as usize, len);
        assert!(got[0].payload == sent, "{len}-byte payload differs");
        assert!(!got[0].truncated());
    }
}

#[test]
fn fragments_to_a_disabled_port_become_nothing() {
    let mut k = kernel_or_skip!();
    let (mut r, stats) = reassembler();
    let other = |id: u32| {
        FrameBuilder::ipv4(SRC4, DST4)
            .frag_id(id)
            .udp(40000, 9999, &payload(5000))
            .fragments(1500)
    };
    // In order: the first decides, nothing is written.
    k.run_all(&other(20), XDP_PASS);
    assert!(k.raw_records().is_empty());
    k.assert_counters(&[("seen", 4), ("port_disabled", 4)]);
    // Reversed: three come early and are written; the first rejects the
    // datagram and tells the agent, which drops them.
    let mut frames = other(21);
    frames.reverse();
    k.run_all(&frames, XDP_PASS);
    assert!(k.datagrams(&mut r).is_empty());
    assert!(r.is_empty());
    k.assert_counters(&[
        ("seen", 8),
        ("port_disabled", 5),
        ("fragment", 3),
        ("fragment_early", 3),
    ]);
    assert_eq!(
        reassembly_counters(&stats),
        [("fragments", 4), ("fragment_discarded", 1)]
    );
}

#[test]
fn a_port_limit_counts_a_fragmented_datagram_once() {
    let mut k = kernel_or_skip!();
    let (mut r, _) = reassembler();
    // Two datagrams a second, both at once: six fragments each.
    k.set_port(PortSettings {
        rate: 1,
        burst: 2,
        action: Action::Pass,
        ..PortSettings::default()
    });
    let sets: Vec<_> = (30..33).map(|id| fragmented(false, id, 8000)).collect();
    for (_, frames) in &sets {
        k.run_all(frames, XDP_PASS);
    }
    let got = k.datagrams(&mut r);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, sets[0].0);
    assert_eq!(got[1].payload, sets[1].0);
    k.assert_counters(&[("seen", 18), ("fragment", 12), ("limited_port", 6)]);
    let busiest = k.control.busiest_ports(1).unwrap();
    assert_eq!((busiest[0].captured, busiest[0].limited), (2, 1));
}

#[test]
fn the_source_and_global_limits_count_a_datagram_once_whichever_fragment_comes_first() {
    let mut k = kernel_or_skip!();
    let (mut r, _) = reassembler();
    k.control
        .set_limits(&Limits {
            global_rate: 1,
            global_burst: 2,
            source_rate: 0,
            source_burst: 0,
            reject_action: Action::Pass,
        })
        .unwrap();
    let sets: Vec<_> = (40..43).map(|id| fragmented(true, id, 8000)).collect();
    for (i, (_, frames)) in sets.iter().enumerate() {
        let mut frames = frames.clone();
        if i == 1 {
            frames.reverse();
        }
        k.run_all(&frames, XDP_PASS);
    }
    let got = k.datagrams(&mut r);
    assert_eq!(got.len(), 2);
    k.assert_counters(&[
        ("seen", 18),
        ("fragment", 12),
        ("fragment_early", 5),
        ("limited_global", 6),
    ]);
}

#[test]
fn action_drop_consumes_every_fragment_of_a_captured_datagram() {
    let mut k = kernel_or_skip!();
    let (mut r, _) = reassembler();
    k.set_port(PortSettings {
        action: Action::Drop,
        ..PortSettings::default()
    });
    let (sent, frames) = fragmented(false, 50, 8000);
    k.run_all(&frames, XDP_DROP);
    let got = k.datagrams(&mut r);
    assert_eq!(got.len(), 1);
    assert_v4_packet(&got[0], &sent);
    k.assert_counters(&[("seen", 6), ("fragment", 6), ("consumed", 6)]);
    // Fragments that come before the first cannot know the action yet:
    // they are passed (the host's reassembly drops what never completes);
    // from the first on, the rest are consumed.
    let (sent, mut frames) = fragmented(false, 51, 8000);
    frames.swap(0, 2);
    let actions: Vec<u32> = frames.iter().map(|f| k.action(f)).collect();
    assert_eq!(
        actions,
        [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP]
    );
    assert_eq!(k.datagrams(&mut r)[0].payload, sent);
}

#[test]
fn denied_sources_are_refused_on_every_fragment() {
    let mut k = kernel_or_skip!();
    k.control
        .add_source(parse_net("198.18.0.0/24").unwrap(), false)
        .unwrap();
    let (_, frames) = fragmented(false, 60, 8000);
    // Any order: every fragment is looked up, the first or not.
    for f in frames.iter().rev() {
        k.run(f);
    }
    assert!(k.raw_records().is_empty());
    k.assert_counters(&[("seen", 6), ("denied", 6)]);
}

#[test]
fn snaplen_cuts_a_fragmented_datagram_and_its_fragments_carry_no_more() {
    let mut k = kernel_or_skip!();
    let (mut r, _) = reassembler();
    k.set_snaplen(2000);
    let (sent, frames) = fragmented(false, 70, 8000);
    k.run_all(&frames, XDP_PASS);
    let raw = k.raw_records();
    // Fragment data past 8 + 2,000 bytes of the datagram is not written.
    let caps: Vec<u32> = raw
        .iter()
        .map(|r| record::decode_header(r).unwrap().cap_len)
        .collect();
    assert_eq!(caps, [1480, 528, 0, 0, 0, 0]);
    let mut got = Vec::new();
    for rec in &raw {
        if let Record::Fragment(f) = record::decode_record(rec).unwrap() {
            got.extend(r.push(&f));
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, sent[..2000]);
    assert_eq!(got[0].wire_len, 8000);
    assert!(got[0].truncated());
}

#[test]
fn a_flood_of_one_identification_is_written_only_so_often() {
    let mut k = kernel_or_skip!(4 << 20);
    let b = v4(&payload(100)).frag_id(80);
    let tail = b.fragment(8, true, &[0xEE; 8]);
    for _ in 0..200 {
        k.run(&tail);
    }
    assert_eq!(k.raw_records().len(), 128);
    k.assert_counters(&[
        ("seen", 200),
        ("fragment", 128),
        ("fragment_early", 128),
        ("fragment_excess", 72),
    ]);
}

#[test]
fn a_new_datagram_reusing_an_identification_decides_for_itself() {
    let mut k = kernel_or_skip!();
    let (mut r, stats) = reassembler();
    let (sent, frames) = fragmented(false, 95, 5000);
    k.run_all(&frames, XDP_PASS);
    assert_eq!(k.datagrams(&mut r)[0].payload, sent);
    // Within the entry's life, another datagram with that identification,
    // to a port that is not enabled, its first fragment last: the others
    // follow the earlier decision and are written, then the first fragment
    // (other ports) decides for itself and tells the agent to drop them.
    let mut other = FrameBuilder::ipv4(SRC4, DST4)
        .frag_id(95)
        .udp(40001, 9999, &payload(5000))
        .fragments(1500);
    other.reverse();
    k.run_all(&other, XDP_PASS);
    assert!(k.datagrams(&mut r).is_empty());
    assert!(r.is_empty());
    k.assert_counters(&[("seen", 8), ("fragment", 7), ("port_disabled", 1)]);
    assert_eq!(
        stats
            .reassembly
            .discarded
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn malformed_fragments_are_counted_and_passed() {
    let mut k = kernel_or_skip!();
    let b = v4(&payload(100)).frag_id(90);
    let d = b.udp_datagram();
    let b6 = v6(&payload(100)).frag_id(90);
    let frames = [
        // A first fragment without the whole UDP header.
        b.fragment(0, true, &d[..4]),
        // Data past 65,535 bytes.
        b.fragment(65_504, false, &[0; 16]),
        // An empty fragment.
        b.fragment(16, true, &[]),
        b6.fragment(16, true, &[]),
    ];
    for f in &frames {
        k.run(f);
    }
    assert!(k.raw_records().is_empty());
    k.assert_counters(&[("seen", 4), ("malformed", 4)]);
}

// ---------------------------------------------------------------------------
// Headers deeper than the program looks: `unsupported`, not `not_udp`.
// ---------------------------------------------------------------------------

#[test]
fn eight_ipv6_extension_headers_are_walked_and_more_are_unsupported() {
    let mut k = kernel_or_skip!();
    let sent = payload(50);
    let chain = |n: usize| {
        let mut b = FrameBuilder::ipv6(SRC6.octets(), DST6.octets()).ipv6_ext(0, 0);
        for i in 1..n {
            b = b.ipv6_ext(if i % 2 == 0 { 43 } else { 60 }, 0);
        }
        b.udp(40000, PORT, &sent).build()
    };
    k.run(&chain(8));
    k.run(&chain(udp_ebpf_common::parse::IPV6_EXT_MAX_DEPTH));
    let packets = k.packets();
    assert_eq!(packets.len(), 2);
    assert!(packets.iter().all(|p| p.payload == sent));
    k.run(&chain(udp_ebpf_common::parse::IPV6_EXT_MAX_DEPTH + 1));
    // Headers that are not walked at all: AH, in IPv6 and in IPv4.
    k.run(&v6(&sent).ipv6_ext(51, 1).build());
    k.run(
        &FrameBuilder::ipv4(SRC4, DST4)
            .protocol(51)
            .payload(&[0; 32])
            .build(),
    );
    // ESP is not UDP as far as anyone can tell.
    k.run(
        &FrameBuilder::ipv4(SRC4, DST4)
            .protocol(50)
            .payload(&[0; 32])
            .build(),
    );
    assert!(k.packets().is_empty());
    k.assert_counters(&[
        ("seen", 6),
        ("captured", 2),
        ("unsupported", 3),
        ("not_udp", 1),
    ]);
}
