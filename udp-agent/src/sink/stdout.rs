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
/// Text gathered before a `write`.
const WRITE_BYTES: usize = 64 * 1024;

/// Writes every entry of every batch as a JSON line to `out`, writing when
/// no more batches are waiting (so a quiet stream is printed promptly) or
/// 64 KiB have gathered (so a busy one goes out in large writes). Blocks:
/// run it with `spawn_blocking` or on a thread of its own.
pub fn run<W: Write>(
    mut out: W,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    stats: Arc<PipelineStats>,
) -> std::io::Result<()> {
    // Lines gather here, across batches, and go out in one `write` once
    // WRITE_BYTES are waiting or the queue is empty: no second copy through
    // a BufWriter, no allocation per line.
    let mut text = String::with_capacity(WRITE_BYTES + 16 * 1024);
    // Entries written into `text`, acknowledged once it is written out.
    let mut pending: u64 = 0;
    let mut batches = Vec::with_capacity(RECV_MANY);
    loop {
        if rx.is_empty() && !text.is_empty() {
            // Nothing waiting: what was written goes out now.
            write_out(&mut out, &mut text, &mut pending, &stats)?;
        }
        if rx.blocking_recv_many(&mut batches, RECV_MANY) == 0 {
            break;
        }
        for batch in batches.drain(..) {
            for entry in &batch {
                entry.write_json_line(&mut text);
                text.push('\n');
            }
            pending += batch.len() as u64;
            // Written: the stdout sink's acknowledgement (its latency is
            // capture to formatted, which is at most one write earlier).
            let now = crate::clock::monotonic_ns();
            for entry in &batch {
                stats.latency.observe(entry.capture_ns, now);
            }
            if text.len() >= WRITE_BYTES {
                write_out(&mut out, &mut text, &mut pending, &stats)?;
            }
        }
    }
    if !text.is_empty() {
        write_out(&mut out, &mut text, &mut pending, &stats)?;
    }
    out.flush()
}

/// Writes `text` out; its `pending` entries become `emitted`, or
/// `sink_failed` if the write fails.
fn write_out<W: Write>(
    out: &mut W,
    text: &mut String,
    pending: &mut u64,
    stats: &PipelineStats,
) -> std::io::Result<()> {
    let result = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    match result {
        Ok(()) => stats.emitted.fetch_add(*pending, Relaxed),
        Err(_) => stats.sink_failed.fetch_add(*pending, Relaxed),
    };
    *pending = 0;
    text.clear();
    result
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
        assert!(run(Broken, rx, stats.clone()).is_err());
        assert_eq!(stats.emitted.load(Relaxed), 0);
        assert_eq!(stats.sink_failed.load(Relaxed), 2);
    }
}
