//! The stdout sink: one PutEvents request entry per line, nothing else.
//!
//! It runs on a thread of its own with blocking writes: a slow reader of
//! stdout then slows only this thread (the queue in front of it fills and
//! the capture loop counts what it cannot queue), and a busy stream costs
//! one `write` per 64 KiB rather than a hop to tokio's blocking pool per
//! write.

use std::{
    io::Write,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use tokio::sync::mpsc;

use crate::{encode::Entry, stats::PipelineStats};

/// Batches taken from the queue at once.
const RECV_MANY: usize = 64;

/// Writes every entry of every batch as a JSON line to `out`, flushing when
/// no more batches are waiting (so a quiet stream is printed promptly and a
/// busy one in large writes). Blocks: run it with `spawn_blocking` or on a
/// thread of its own.
pub fn run<W: Write>(
    out: W,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    stats: Arc<PipelineStats>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // One text buffer reused for every batch: one copy into the writer per
    // batch, no allocation per line.
    let mut text = String::with_capacity(16 * 1024);
    let mut batches = Vec::with_capacity(RECV_MANY);
    loop {
        if rx.is_empty() {
            // Nothing waiting: what was written goes out now.
            out.flush()?;
        }
        if rx.blocking_recv_many(&mut batches, RECV_MANY) == 0 {
            break;
        }
        for batch in batches.drain(..) {
            text.clear();
            for entry in &batch {
                entry.write_json_line(&mut text);
                text.push('\n');
            }
            if let Err(e) = out.write_all(text.as_bytes()) {
                stats.sink_failed.fetch_add(batch.len() as u64, Relaxed);
                return Err(e);
            }
            stats.emitted.fetch_add(batch.len() as u64, Relaxed);
            // Written (into the buffer, or out if it filled): the stdout
            // sink's acknowledgement.
            let now = crate::clock::monotonic_ns();
            for entry in &batch {
                stats.latency.observe(entry.capture_ns, now);
            }
        }
    }
    out.flush()
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
            detail: format!("{{\"n\":{i}}}"),
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
                run(&mut out, rx, stats).map(|()| out)
            }
        });
        for b in 0..30 {
            tx.blocking_send((0..7).map(|i| entry(b * 7 + i)).collect())
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
        tx.try_send(vec![entry(0), entry(1)]).unwrap();
        drop(tx);
        // Flushing an empty buffer is a no-op, so the error comes from the
        // final flush of the written batch.
        assert!(run(Broken, rx, stats.clone()).is_err());
        assert_eq!(
            stats.emitted.load(Relaxed) + stats.sink_failed.load(Relaxed),
            2
        );
    }
}
