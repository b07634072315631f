//! Draining the kernel's ring buffer.
//!
//! The ring's file descriptor is registered with tokio (`AsyncFd`), so the
//! task sleeps until the kernel says records are waiting: no sleep-polling.
//! Each record is encoded where it lies and batched ([`crate::handoff`]);
//! the consumer never blocks: a batch that finds the sink's queue full is
//! counted and dropped, and the ring keeps draining. Records of IP fragments
//! go to the [`Reassembler`] first, and the datagrams it completes on.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
    time::sleep_until,
};
use tracing::warn;

use crate::{
    clock::{self, WallClock},
    handoff::Handoff,
    reassembly::Reassembler,
    record::{self, Packet, Record},
    stats::PipelineStats,
};

/// The kernel's `EVENTS` ring, read through aya. Each item, dropped, hands
/// its slot back to the kernel. A hand-written reader that publishes its
/// position once per 64 KiB instead saved 0–3.6% of the agent's CPU per
/// packet in a same-run A/B (bench/RESULTS.md, "The ring reader"): not
/// enough to keep a 263-line module with nine `unsafe` blocks.
pub type Ring = RingBuf<MapData>;

/// Records drained per wake-up before yielding to other tasks, so a flood
/// cannot starve the sink of CPU time.
const DRAIN_BUDGET: usize = 4096;

/// After a pass that found records, the loop sleeps this long before it
/// looks again, letting records gather: under a steady stream that is one
/// wake-up per millisecond instead of one every few packets (each costs an
/// `epoll_wait` and a trip through the scheduler). A record that arrives
/// meanwhile waits at most this long; the ring holds far more than a
/// millisecond of any stream (8 MiB is ~60,000 small records), and a
/// partial batch waits up to its linger time (20 ms by default) anyway.
const COALESCE: Duration = Duration::from_millis(1);

/// What one pass over the ring did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub records: usize,
    /// The budget ran out with records possibly left.
    pub more: bool,
    /// The receiving side is gone.
    pub closed: bool,
}

/// Drains up to `budget` records from `ring`, encoding each in place and
/// handing whole batches on. Each record's slot goes back to the kernel
/// once it is encoded.
pub fn drain(
    ring: &mut Ring,
    out: &mut Handoff,
    reassembler: &mut Reassembler,
    stats: &PipelineStats,
    budget: usize,
) -> Drained {
    let mut pass = Drained::default();
    let read = ReadTime::now();
    reassembler.expire(read.ns);
    while pass.records < budget {
        let Some(item) = ring.next() else {
            return pass;
        };
        pass.records += 1;
        match read.decode(&item) {
            Ok(Record::Datagram(packet)) => {
                stats.decoded.fetch_add(1, Relaxed);
                out.push(&packet);
            }
            Ok(Record::Fragment(fragment)) => {
                if let Some(packet) = reassembler.push(&fragment) {
                    stats.decoded.fetch_add(1, Relaxed);
                    out.push(&packet.view());
                }
            }
            Ok(Record::Discard(key)) => reassembler.discard(&key),
            Err(e) => decode_error(stats, &e),
        }
        if out.is_closed() {
            pass.closed = true;
            return pass;
        }
    }
    pass.more = true;
    pass
}

/// When a pass over the ring began: every record it reads was captured
/// before then, or — if captured during the pass — within a tick of its
/// stamp. What turns coarse stamps into capture times.
#[derive(Clone, Copy, Debug)]
struct ReadTime {
    ns: u64,
    tick_ns: u64,
}

impl ReadTime {
    fn now() -> Self {
        Self {
            ns: clock::monotonic_ns(),
            tick_ns: clock::coarse_tick_ns(),
        }
    }

    /// Decodes a record read in this pass, with its capture time.
    fn decode(self, item: &[u8]) -> Result<Record<'_>, record::DecodeError> {
        let mut r = record::decode_record(item)?;
        r.narrow_time(self.ns, self.tick_ns);
        Ok(r)
    }
}

fn decode_error(stats: &PipelineStats, e: &record::DecodeError) {
    let n = stats.decode_errors.fetch_add(1, Relaxed) + 1;
    if crate::stats::doubled(n - 1, n) {
        warn!(total = n, error = %e, "undecodable ring record");
    }
}

/// Runs until `stop` turns true, then drains what is left, sends every
/// waiting entry on and returns.
///
/// The caller detaches the XDP program before setting `stop`, so the final
/// drain sees every record the kernel will ever write.
pub async fn run(
    ring: Ring,
    mut out: Handoff,
    mut reassembler: Reassembler,
    stats: std::sync::Arc<PipelineStats>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
    // the RingBuf, and always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    // The wall clock is re-read every second, so events follow NTP steps.
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    loop {
        let deadline = out.deadline();
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    final_drain(fd.get_mut(), &mut out, &mut reassembler, &stats).await;
                    // A CPU may still be finishing a run of the program it
                    // entered before the detach; give it time, then drain
                    // once more.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    final_drain(fd.get_mut(), &mut out, &mut reassembler, &stats).await;
                    reassembler.finish();
                    out.finish().await;
                    return Ok(());
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                out.flush();
            }
            _ = clock.tick() => {
                out.set_clock(WallClock::now());
                // Incomplete datagrams time out without traffic too.
                reassembler.expire(clock::monotonic_ns());
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let pass = drain(
                    guard.get_inner_mut(),
                    &mut out,
                    &mut reassembler,
                    &stats,
                    DRAIN_BUDGET,
                );
                if pass.closed {
                    return Ok(());
                }
                if pass.more {
                    // Keep the readiness: there is more to read after a yield.
                    drop(guard);
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                    if pass.records > 0 {
                        tokio::time::sleep(COALESCE).await;
                    }
                }
            }
        }
    }
}

/// After the program is detached: everything left in the ring goes to the
/// sink, waiting for room rather than dropping (nothing already captured
/// is lost at shutdown).
async fn final_drain(
    ring: &mut Ring,
    out: &mut Handoff,
    reassembler: &mut Reassembler,
    stats: &PipelineStats,
) {
    loop {
        // Owned copies: a ring item cannot be held across an await.
        let mut packets: Vec<Packet> = Vec::new();
        let read = ReadTime::now();
        let mut records = 0;
        while records < DRAIN_BUDGET {
            let Some(item) = ring.next() else { break };
            records += 1;
            let packet = match read.decode(&item) {
                Ok(Record::Datagram(p)) => Some(p.to_packet()),
                Ok(Record::Fragment(f)) => reassembler.push(&f),
                Ok(Record::Discard(key)) => {
                    reassembler.discard(&key);
                    None
                }
                Err(e) => {
                    decode_error(stats, &e);
                    None
                }
            };
            if let Some(p) = packet {
                stats.decoded.fetch_add(1, Relaxed);
                packets.push(p);
            }
        }
        if records == 0 {
            return;
        }
        for p in &packets {
            out.push_waiting(&p.view()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use udp_ebpf_common::{IP_V4, RECORD_COARSE_TIME, RecordHeader};

    use super::*;

    fn record(timestamp_ns: u64, flags: u8) -> Vec<u8> {
        let h = RecordHeader {
            timestamp_ns,
            wire_len: 3,
            cap_len: 3,
            ip_version: IP_V4,
            flags,
            ..RecordHeader::default()
        };
        record::encode_record(&h, b"abc")
    }

    #[test]
    fn a_pass_turns_coarse_stamps_into_capture_times_and_keeps_precise_ones() {
        const TICK: u64 = 4_000_000;
        let at = |ns| ReadTime { ns, tick_ns: TICK };
        let coarse = record(1_000_000_000, RECORD_COARSE_TIME);
        // Read soon after the tick: the read time.
        let datagram = |r| match r {
            Ok(Record::Datagram(p)) => p,
            other => panic!("not a datagram: {other:?}"),
        };
        let p = datagram(at(1_000_300_000).decode(&coarse));
        assert_eq!((p.timestamp_ns, p.coarse_time), (1_000_300_000, false));
        // Read late: at most a tick after the stamp.
        let p = datagram(at(5_000_000_000).decode(&coarse));
        assert_eq!(p.timestamp_ns, 1_000_000_000 + TICK);
        // A precise stamp stays as it is.
        let precise = record(1_000_000_000, 0);
        let p = datagram(at(5_000_000_000).decode(&precise));
        assert_eq!(p.timestamp_ns, 1_000_000_000);
        assert_eq!(p.payload, b"abc");
        // A fragment's coarse stamp is narrowed the same way.
        let mut h = record::decode_header(&coarse).unwrap();
        h.flags |= udp_ebpf_common::RECORD_FRAGMENT;
        match at(1_000_300_000).decode(&record::encode_record(&h, b"abc")) {
            Ok(Record::Fragment(f)) => {
                assert_eq!((f.timestamp_ns, f.coarse_time), (1_000_300_000, false));
            }
            other => panic!("not a fragment: {other:?}"),
        }
    }
}
