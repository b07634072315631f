//! From captured packets to batches on the sink's queue.
//!
//! The capture loop encodes each packet where it finds it — in its ring
//! record, without copying the payload — and groups the entries into
//! PutEvents-sized batches ([`Batcher`]). Only whole batches cross to the
//! sink's task, so the queue's bookkeeping and the task wake-ups are paid
//! once per batch, not once per packet.
//!
//! The queue is bounded and the capture loop never waits on it: a batch that
//! finds it full is dropped and its entries counted in `queue_drops`: a
//! slow sink costs whole batches, counted here, while the kernel ring keeps
//! draining and has room for new packets. Only at shutdown, after the
//! program is detached, does [`Handoff::finish`] wait for room, so nothing
//! already captured is lost then.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use crate::{
    batch::Batcher,
    clock::WallClock,
    encode::{Encoder, Entry},
    record::PacketView,
    sink::Limits,
    stats::{PipelineStats, count_drop, count_drops},
};

/// Batches the sink's queue holds for `packets` packets (batches of up to
/// `limits.max_entries`).
pub fn queue_batches(packets: u32, limits: Limits) -> usize {
    (packets as usize)
        .div_ceil(limits.max_entries.max(1))
        .max(1)
}

/// Most bytes of entries the sink's queue holds, besides its count of
/// packets: enough for ~40,000 small entries (a long stall of the sink at a
/// high rate), and a bound on memory when entries are large (16,384 jumbo
/// entries would take ~200 MiB). Estimated from the average size of recent
/// batches, so traffic whose sizes change abruptly can overshoot it briefly.
pub const QUEUE_BYTES: usize = 16 << 20;

/// Encoder, batcher and the sending end of the sink's queue.
pub struct Handoff {
    encoder: Encoder,
    batcher: Batcher,
    tx: mpsc::Sender<Vec<Entry>>,
    linger: Duration,
    /// When the oldest waiting entry must go out even if its batch is not
    /// full.
    deadline: Option<Instant>,
    stats: Arc<PipelineStats>,
    closed: bool,
    /// Bytes of a recent batch, on average ([`Entry::aws_size`]; an
    /// exponential moving average over about eight batches).
    batch_bytes: usize,
    /// Most bytes the queue may hold, estimated as waiting batches ×
    /// `batch_bytes`.
    max_queued_bytes: usize,
}

impl Handoff {
    pub fn new(
        encoder: Encoder,
        tx: mpsc::Sender<Vec<Entry>>,
        limits: Limits,
        linger: Duration,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Self {
            encoder,
            batcher: Batcher::new(limits),
            tx,
            linger,
            deadline: None,
            stats,
            closed: false,
            batch_bytes: 0,
            max_queued_bytes: QUEUE_BYTES,
        }
    }

    /// Encodes one packet into the current batch; a batch that fills goes
    /// to the queue (or, if the queue is full, is counted and dropped).
    pub fn push(&mut self, packet: &PacketView<'_>) {
        for batch in self.add(packet).into_iter().flatten() {
            self.offer(batch);
        }
        if self.batcher.is_empty() {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.linger);
        }
    }

    /// Encodes `packet` into the current batch (or, for a port that packs,
    /// into its pack, which joins the batch when it is complete). Returns
    /// the batches it completed.
    fn add(&mut self, packet: &PacketView<'_>) -> [Option<Vec<Entry>>; 2] {
        let entry = self.encoder.push(packet);
        if packet.encoding.pack {
            self.stats.packed.fetch_add(1, Relaxed);
            if entry.is_some() {
                self.stats.packs.fetch_add(1, Relaxed);
            }
        }
        match entry {
            Some(entry) => self.add_entry(entry),
            None => [None, None],
        }
    }

    /// Adds an entry to the current batch. Returns the batches it
    /// completed: the previous one if the entry did not fit its bytes, and
    /// the current one if the entry filled its count.
    fn add_entry(&mut self, entry: Entry) -> [Option<Vec<Entry>>; 2] {
        let completed = match self.batcher.push(entry) {
            Ok(batch) => batch,
            Err(_) => {
                count_drop(
                    &self.stats.oversize,
                    "entry larger than a request of the sink; dropped",
                );
                None
            }
        };
        let full = if self.batcher.is_full() {
            self.batcher.take()
        } else {
            None
        };
        [completed, full]
    }

    /// When the waiting partial batch, or the oldest pack, is due, if one
    /// is waiting.
    pub fn deadline(&self) -> Option<Instant> {
        let pack = self.encoder.pack_deadline().map(Instant::from_std);
        match (self.deadline, pack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// At [`deadline`](Self::deadline): packs that are due join the batch,
    /// and the partial batch is sent now.
    pub fn flush(&mut self) {
        while let Some(entry) = self.encoder.pop_due_pack(std::time::Instant::now()) {
            self.stats.packs.fetch_add(1, Relaxed);
            for batch in self.add_entry(entry).into_iter().flatten() {
                self.offer(batch);
            }
        }
        self.deadline = None;
        if let Some(batch) = self.batcher.take() {
            self.offer(batch);
        }
    }

    pub fn set_clock(&mut self, clock: WallClock) {
        self.encoder.set_clock(clock);
    }

    /// True once the sink's end of the queue is gone.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Hands a batch to the queue without waiting.
    fn offer(&mut self, batch: Vec<Entry>) {
        let n = batch.len() as u64;
        let bytes: usize = batch.iter().map(Entry::aws_size).sum();
        self.batch_bytes = if self.batch_bytes == 0 {
            bytes
        } else {
            (self.batch_bytes * 7 + bytes) / 8
        };
        let waiting = self.tx.max_capacity() - self.tx.capacity();
        let result = if waiting > 0 && waiting * self.batch_bytes + bytes > self.max_queued_bytes {
            Err(mpsc::error::TrySendError::Full(batch))
        } else {
            self.tx.try_send(batch)
        };
        match result {
            Ok(()) => {
                self.stats.batched.fetch_add(n, Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => count_drops(
                &self.stats.queue_drops,
                n,
                "sink queue full: dropping captured packets (raise --queue-capacity or add capacity to the sink)",
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.closed = true;
                self.stats.batched.fetch_add(n, Relaxed);
                self.stats.sink_failed.fetch_add(n, Relaxed);
            }
        }
    }

    /// Sends the partial batch, waiting for room in the queue: for
    /// shutdown, once nothing new can be captured.
    pub async fn finish(&mut self) {
        while let Some(entry) = self.encoder.pop_pack() {
            self.stats.packs.fetch_add(1, Relaxed);
            for batch in self.add_entry(entry).into_iter().flatten() {
                self.send_waiting(batch).await;
            }
        }
        self.deadline = None;
        if let Some(batch) = self.batcher.take() {
            self.send_waiting(batch).await;
        }
    }

    /// Like [`Handoff::push`], but waits for room instead of dropping: for
    /// the final drain after the program is detached.
    pub async fn push_waiting(&mut self, packet: &PacketView<'_>) {
        for batch in self.add(packet).into_iter().flatten() {
            self.send_waiting(batch).await;
        }
    }

    async fn send_waiting(&mut self, batch: Vec<Entry>) {
        let n = batch.len() as u64;
        self.stats.batched.fetch_add(n, Relaxed);
        if self.tx.send(batch).await.is_err() {
            self.closed = true;
            self.stats.sink_failed.fetch_add(n, Relaxed);
        }
    }
}

impl Drop for Handoff {
    /// A handoff dropped with a partial batch (a shutdown that gave up on a
    /// sink taking nothing) counts those entries as dropped at the queue.
    fn drop(&mut self) {
        if let Some(batch) = self.batcher.take() {
            self.stats
                .queue_drops
                .fetch_add(batch.len() as u64, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::Packet, sink::eventbridge::LIMITS};

    fn packet(i: usize) -> Packet {
        Packet {
            timestamp_ns: 1,
            ifindex: 1,
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            src_port: 40000,
            dst_port: 514,
            wire_len: 8,
            payload: format!("packet{i:02}").into_bytes(),
            encoding: Default::default(),
        }
    }

    fn handoff(queue: usize) -> (Handoff, mpsc::Receiver<Vec<Entry>>, Arc<PipelineStats>) {
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel(queue);
        let mut encoder = Encoder::new("udp.raw", "UdpPacket", "default", WallClock::now());
        encoder.name_interface(1, "eth0");
        let out = Handoff::new(
            encoder,
            tx,
            LIMITS,
            Duration::from_millis(20),
            stats.clone(),
        );
        (out, rx, stats)
    }

    #[test]
    fn queue_holds_the_packets_in_batches() {
        assert_eq!(queue_batches(1, LIMITS), 1);
        assert_eq!(queue_batches(10, LIMITS), 1);
        assert_eq!(queue_batches(11, LIMITS), 2);
        assert_eq!(queue_batches(4096, LIMITS), 410);
    }

    #[tokio::test]
    async fn full_batches_go_at_once_and_a_partial_one_at_its_deadline() {
        let (mut out, mut rx, stats) = handoff(4);
        for i in 0..23 {
            out.push(&packet(i).view());
        }
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert_eq!((a.len(), b.len()), (10, 10));
        assert!(a[0].detail.json().contains("\"Payload\":\"cGFja2V0MDA=\""));
        assert!(rx.try_recv().is_err(), "the partial batch waits");
        assert!(out.deadline().is_some());
        out.flush();
        assert_eq!(rx.try_recv().unwrap().len(), 3);
        assert_eq!(out.deadline(), None);
        assert_eq!(stats.batched.load(Relaxed), 23);
        assert_eq!(stats.queue_drops.load(Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_every_entry() {
        let (mut out, mut rx, stats) = handoff(1);
        for i in 0..35 {
            out.push(&packet(i).view());
        }
        // One batch fits; the next two find the queue full.
        assert_eq!(stats.batched.load(Relaxed), 10);
        assert_eq!(stats.queue_drops.load(Relaxed), 20);
        assert_eq!(rx.try_recv().unwrap().len(), 10);
        // Room again: the partial batch gets through.
        out.flush();
        assert_eq!(rx.try_recv().unwrap().len(), 5);
        assert_eq!(
            stats.batched.load(Relaxed) + stats.queue_drops.load(Relaxed),
            35
        );
    }

    #[test]
    fn large_entries_are_bounded_by_bytes_too() {
        let (mut out, mut rx, stats) = handoff(1000);
        out.max_queued_bytes = 100_000;
        let mut big = packet(0);
        big.payload = vec![b'x'; 3000];
        big.wire_len = 3000;
        // ~4 KB of Detail each: ~40 KB a batch, so two batches fit.
        for _ in 0..50 {
            out.push(&big.view());
        }
        assert_eq!(stats.batched.load(Relaxed), 20);
        assert_eq!(stats.queue_drops.load(Relaxed), 30);
        // Room again once the sink takes them.
        while rx.try_recv().is_ok() {}
        for _ in 0..10 {
            out.push(&big.view());
        }
        assert_eq!(stats.batched.load(Relaxed), 30);
        // Small entries: the count is what bounds them.
        let (mut out, _rx, stats) = handoff(3);
        out.max_queued_bytes = 100_000;
        for i in 0..50 {
            out.push(&packet(i).view());
        }
        assert_eq!(stats.batched.load(Relaxed), 30);
        assert_eq!(stats.queue_drops.load(Relaxed), 20);
    }

    #[test]
    fn a_closed_queue_counts_sink_failed() {
        let (mut out, rx, stats) = handoff(4);
        drop(rx);
        for i in 0..10 {
            out.push(&packet(i).view());
        }
        assert!(out.is_closed());
        assert_eq!(stats.sink_failed.load(Relaxed), 10);
    }

    #[tokio::test]
    async fn packs_go_out_at_their_linger_and_at_shutdown() {
        use udp_ebpf_common::{Encoding, Format};
        let (mut out, mut rx, stats) = handoff(4);
        out.encoder.set_packing(crate::encode::pack::PackSettings {
            max_bytes: 64 * 1024,
            linger: Duration::from_millis(30),
        });
        let packed = |i, port| {
            let mut p = packet(i);
            p.dst_port = port;
            p.encoding = Encoding {
                format: Format::Text,
                pack: true,
            };
            p
        };
        for i in 0..25 {
            out.push(&packed(i, 514).view());
        }
        assert!(rx.try_recv().is_err(), "the pack waits");
        let due = out.deadline().expect("a pack is due later");
        tokio::time::sleep_until(due).await;
        out.flush();
        let batch = rx.try_recv().unwrap();
        assert_eq!(batch.len(), 1);
        assert!(batch[0].detail.json().contains("\"Count\":25}"));
        // Shutdown sends the packs that still wait.
        out.push(&packed(0, 515).view());
        out.push(&packed(1, 515).view());
        out.finish().await;
        let batch = rx.try_recv().unwrap();
        assert!(batch[0].detail.json().contains("\"Count\":2}"));
        assert_eq!(
            (stats.packed.load(Relaxed), stats.packs.load(Relaxed)),
            (27, 2)
        );
        assert_eq!(stats.batched.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn at_shutdown_nothing_is_dropped_for_want_of_room() {
        let (mut out, mut rx, stats) = handoff(1);
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(batch) = rx.recv().await {
                n += batch.len();
            }
            n
        });
        for i in 0..95 {
            out.push_waiting(&packet(i).view()).await;
        }
        out.finish().await;
        drop(out);
        assert_eq!(reader.await.unwrap(), 95);
        assert_eq!(stats.queue_drops.load(Relaxed), 0);
        assert_eq!(stats.batched.load(Relaxed), 95);
    }
}
