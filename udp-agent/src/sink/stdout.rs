//! The stdout sink: one PutEvents request entry per line, nothing else.
//!
//! It runs on a thread of its own with blocking writes: a slow reader of
//! stdout then slows only this thread (the queue in front of it fills and
//! the capture loop counts what it cannot queue), and a busy stream costs
//! one `write` per 64 KiB rather than a hop to tokio's blocking pool per
//! write.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::{Delivery, Limits, Sink, SinkProgress, SinkRun, SinkStats};
use crate::{
    encode::Entry,
    stats::{PipelineStats, Sample},
};

/// Batches taken from the queue at once.
const RECV_MANY: usize = 64;
/// Text gathered before a `write`.
const WRITE_BYTES: usize = 64 * 1024;

/// The stdout sink's batches are the EventBridge sink's, so that a dry run
/// shows exactly the entries the same command line would send.
pub const LIMITS: Limits = super::eventbridge::LIMITS;

/// The dry run: every entry as a JSON line on stdout.
#[derive(Debug)]
pub struct StdoutSink {
    pipeline: Arc<PipelineStats>,
    stats: Arc<StdoutStats>,
    drain_timeout: Duration,
    limits: Limits,
}

/// Entries the stdout sink could not write before the drain timeout ran
/// out at shutdown (a reader of stdout that stopped reading).
#[derive(Debug, Default)]
pub struct StdoutStats {
    /// Entries taken in.
    pub received: AtomicU64,
    pub written: AtomicU64,
    /// Entries whose write failed.
    pub failed: AtomicU64,
    pub undelivered: AtomicU64,
    /// Set when shutdown gives up on the writer thread: whatever it still
    /// holds was counted `undelivered`, and it must not count it again.
    abandoned: AtomicBool,
}

impl SinkStats for StdoutStats {
    fn samples(&self) -> Vec<Sample> {
        vec![
            Sample::counter(
                "stdout_written",
                "Entries written to stdout",
                self.written.load(Relaxed),
            ),
            Sample::counter(
                "stdout_undelivered",
                "Entries not written to stdout before the drain timeout ran out at shutdown",
                self.undelivered.load(Relaxed),
            ),
        ]
    }

    fn summary(&self) -> String {
        format!(
            "received={} written={} failed={} undelivered={}",
            self.received.load(Relaxed),
            self.written.load(Relaxed),
            self.failed.load(Relaxed),
            self.undelivered.load(Relaxed)
        )
    }

    fn progress(&self) -> SinkProgress {
        let delivered = self.written.load(Relaxed);
        let failed = self.failed.load(Relaxed) + self.undelivered.load(Relaxed);
        let received = self.received.load(Relaxed);
        SinkProgress {
            delivered,
            failed,
            pending: received.saturating_sub(delivered + failed),
        }
    }
}

impl StdoutSink {
    /// `max_batch_bytes`: the EventBridge sink's (`--max-entry-bytes`), so
    /// that a dry run batches as the real thing would.
    pub fn new(
        pipeline: Arc<PipelineStats>,
        drain_timeout: Duration,
        max_batch_bytes: usize,
    ) -> Self {
        Self {
            pipeline,
            stats: Arc::default(),
            drain_timeout,
            limits: Limits {
                max_batch_bytes,
                ..LIMITS
            },
        }
    }
}

impl Sink for StdoutSink {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn durable(&self) -> bool {
        false
    }

    fn stats(&self) -> Arc<dyn SinkStats> {
        self.stats.clone()
    }

    /// Writes on a thread of its own. Once `shutdown` fires, the writer gets
    /// the drain timeout to finish; a stdout nobody reads keeps it blocked
    /// in `write`, so then the entries it has not written are counted
    /// `undelivered` (and `sink_failed`) and the thread is left behind for
    /// the process exit to end.
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Delivery>,
        mut shutdown: watch::Receiver<bool>,
    ) -> SinkRun {
        let StdoutSink {
            pipeline,
            stats,
            drain_timeout,
            ..
        } = *self;
        Box::pin(async move {
            let (done_tx, mut done_rx) = oneshot::channel();
            let (p, s) = (pipeline.clone(), stats.clone());
            std::thread::Builder::new()
                .name("stdout-sink".into())
                .spawn(move || {
                    let result = run(std::io::stdout().lock(), input, &p, &s);
                    let _ = done_tx.send(result);
                })
                .context("starting the stdout writer thread")?;
            let finished = tokio::select! {
                r = &mut done_rx => Some(r),
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let finished = match finished {
                Some(r) => Some(r),
                None => tokio::time::timeout(drain_timeout, &mut done_rx).await.ok(),
            };
            match finished {
                Some(Ok(result)) => result.context("writing events to stdout"),
                Some(Err(_)) => anyhow::bail!("the stdout writer thread ended without a result"),
                None => {
                    stats.abandoned.store(true, Relaxed);
                    // Everything handed to the sink and not yet settled.
                    let settled =
                        pipeline.emitted.load(Relaxed) + pipeline.sink_failed.load(Relaxed);
                    let stuck = pipeline.batched.load(Relaxed).saturating_sub(settled);
                    stats.undelivered.fetch_add(stuck, Relaxed);
                    pipeline.sink_failed.fetch_add(stuck, Relaxed);
                    warn!(
                        undelivered = stuck,
                        drain_timeout = %humantime::format_duration(drain_timeout),
                        "stdout: nobody reads stdout; entries not written before the drain timeout are dropped"
                    );
                    Ok(())
                }
            }
        })
    }
}

/// Writes every entry of every batch as a JSON line to `out`, writing when
/// no more batches are waiting (so a quiet stream is printed promptly) or
/// 64 KiB have gathered (so a busy one goes out in large writes). Blocks:
/// run it on a thread of its own.
pub fn run<W: Write>(
    mut out: W,
    mut rx: mpsc::Receiver<Delivery>,
    pipeline: &PipelineStats,
    stats: &StdoutStats,
) -> std::io::Result<()> {
    // Lines gather here, across batches, and go out in one `write` once
    // WRITE_BYTES are waiting or the queue is empty: no second copy through
    // a BufWriter, no allocation per line.
    let mut text = String::with_capacity(WRITE_BYTES + 16 * 1024);
    // Entries written into `text`, acknowledged once it is written out.
    let mut pending: u64 = 0;
    let mut batches = Vec::with_capacity(RECV_MANY);
    let mut out = Counted {
        out: &mut out,
        pipeline,
        stats,
    };
    loop {
        if rx.is_empty() && !text.is_empty() {
            // Nothing waiting: what was written goes out now.
            out.write_out(&mut text, &mut pending)?;
        }
        if rx.blocking_recv_many(&mut batches, RECV_MANY) == 0 {
            break;
        }
        for Delivery { entries, ack } in batches.drain(..) {
            stats.received.fetch_add(entries.len() as u64, Relaxed);
            write_lines(&mut text, &entries);
            pending += entries.len() as u64;
            // Written: the stdout sink's acknowledgement (its latency is
            // capture to formatted, which is at most one write earlier).
            let now = crate::clock::monotonic_ns();
            for entry in &entries {
                pipeline.latency.observe(entry.capture_ns, now);
            }
            ack.done();
            if text.len() >= WRITE_BYTES {
                out.write_out(&mut text, &mut pending)?;
            }
        }
    }
    if !text.is_empty() {
        out.write_out(&mut text, &mut pending)?;
    }
    out.out.flush()
}

fn write_lines(text: &mut String, entries: &[Entry]) {
    for entry in entries {
        entry.write_json_line(text);
        text.push('\n');
    }
}

/// The writer and the counters its writes settle.
struct Counted<'a, W> {
    out: &'a mut W,
    pipeline: &'a PipelineStats,
    stats: &'a StdoutStats,
}

impl<W: Write> Counted<'_, W> {
    /// Writes `text` out; its `pending` entries become `emitted`, or
    /// `sink_failed` if the write fails.
    fn write_out(&mut self, text: &mut String, pending: &mut u64) -> std::io::Result<()> {
        let result = self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush());
        // Shutdown gave up on this thread and counted what it held.
        if !self.stats.abandoned.load(Relaxed) {
            match result {
                Ok(()) => {
                    self.pipeline.emitted.fetch_add(*pending, Relaxed);
                    self.stats.written.fetch_add(*pending, Relaxed);
                }
                Err(_) => {
                    self.pipeline.sink_failed.fetch_add(*pending, Relaxed);
                    self.stats.failed.fetch_add(*pending, Relaxed);
                }
            };
        }
        *pending = 0;
        text.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn entry(i: usize) -> Entry {
        Entry {
            source: "udp.raw".into(),
            detail_type: "UdpPacket".into(),
            event_bus_name: "default".into(),
            detail: format!("{{\"n\":{i}}}").into(),
            time: UNIX_EPOCH,
            capture_ns: 0,
        }
    }

    #[test]
    fn every_entry_becomes_one_line_in_order() {
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel(4);
        let writer = std::thread::spawn({
            let stats = stats.clone();
            move || {
                let mut out = Vec::new();
                run(&mut out, rx, &stats, &StdoutStats::default()).map(|()| out)
            }
        });
        for b in 0..30 {
            tx.blocking_send(Delivery::in_memory(
                (0..7).map(|i| entry(b * 7 + i)).collect(),
            ))
            .unwrap();
        }
        drop(tx);
        let out = String::from_utf8(writer.join().unwrap().unwrap()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 210);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, entry(i).to_json_line());
        }
        assert_eq!(stats.emitted.load(Relaxed), 210);
    }

    /// A writer that fails: the batch is counted as failed, not emitted.
    #[test]
    fn a_write_error_is_counted_and_returned() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
        }
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Delivery::in_memory(vec![entry(0), entry(1)]))
            .unwrap();
        drop(tx);
        assert!(run(Broken, rx, &stats, &StdoutStats::default()).is_err());
        assert_eq!(stats.emitted.load(Relaxed), 0);
        assert_eq!(stats.sink_failed.load(Relaxed), 2);
    }
}
