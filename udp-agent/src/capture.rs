//! Draining the kernel's ring buffer.
//!
//! The ring's file descriptor is registered with tokio (`AsyncFd`), so the
//! task sleeps until the kernel says records are waiting: no sleep-polling.
//! The consumer never blocks: a packet that finds the encoder queue full is
//! counted and dropped, and the ring keeps draining.

use std::{
    borrow::Borrow,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::warn;

use crate::{
    record::{self, Packet},
    stats::{PipelineStats, count_drop},
};

/// Records drained per wake-up before yielding to other tasks, so a flood
/// cannot starve the encoder of CPU time.
const DRAIN_BUDGET: usize = 4096;

/// What one pass over the ring did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub records: usize,
    /// The budget ran out with records possibly left.
    pub more: bool,
    /// The receiving side is gone.
    pub closed: bool,
}

/// Drains up to `budget` records from `ring` into `tx`.
pub fn drain<T: Borrow<MapData>>(
    ring: &mut RingBuf<T>,
    tx: &mpsc::Sender<Packet>,
    stats: &PipelineStats,
    budget: usize,
) -> Drained {
    let mut out = Drained::default();
    while out.records < budget {
        let Some(item) = ring.next() else {
            return out;
        };
        out.records += 1;
        match record::decode(&item) {
            Ok(packet) => {
                stats.decoded.fetch_add(1, Relaxed);
                match tx.try_send(packet) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => count_drop(
                        &stats.queue_drops,
                        "encoder queue full: dropping captured packets (raise --queue-capacity or add capacity to the sink)",
                    ),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        out.closed = true;
                        return out;
                    }
                }
            }
            Err(e) => {
                let n = stats.decode_errors.fetch_add(1, Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(total = n, error = %e, "undecodable ring record");
                }
            }
        }
    }
    out.more = true;
    out
}

/// Runs until `stop` turns true, then drains what is left and returns.
///
/// The caller detaches the XDP program before setting `stop`, so the final
/// drain sees every record the kernel will ever write.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Packet>,
    stats: Arc<PipelineStats>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
    // the RingBuf, and always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let pass = drain(guard.get_inner_mut(), &tx, &stats, DRAIN_BUDGET);
                if pass.closed {
                    return Ok(());
                }
                if pass.more {
                    // Keep the readiness: there is more to read after a yield.
                    drop(guard);
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    final_drain(fd.get_mut(), &tx, &stats).await;
                    // A CPU may still be finishing a run of the program it
                    // entered before the detach; give it time, then drain
                    // once more.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    final_drain(fd.get_mut(), &tx, &stats).await;
                    return Ok(());
                }
            }
        }
    }
}

/// After the program is detached: everything left in the ring goes to the
/// encoder, waiting for room rather than dropping (nothing already captured
/// is lost at shutdown).
async fn final_drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Packet>,
    stats: &PipelineStats,
) {
    loop {
        let mut packets = Vec::new();
        while packets.len() < DRAIN_BUDGET {
            let Some(item) = ring.next() else { break };
            match record::decode(&item) {
                Ok(p) => {
                    stats.decoded.fetch_add(1, Relaxed);
                    packets.push(p);
                }
                Err(_) => {
                    stats.decode_errors.fetch_add(1, Relaxed);
                }
            }
        }
        if packets.is_empty() {
            return;
        }
        for p in packets {
            if tx.send(p).await.is_err() {
                return;
            }
        }
    }
}
