//! The stdout sink: one PutEvents request entry per line, nothing else.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use crate::{encode::Entry, stats::PipelineStats};

/// Writes every entry of every batch as a JSON line to `out`, flushing when
/// no more batches are waiting (so a quiet stream is printed promptly and a
/// busy one in large writes).
pub async fn run<W: AsyncWrite + Unpin>(
    out: W,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    stats: Arc<PipelineStats>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    // One text buffer reused for every batch: one write per batch, no
    // allocation per line.
    let mut text = String::with_capacity(16 * 1024);
    while let Some(batch) = rx.recv().await {
        text.clear();
        for entry in &batch {
            entry.write_json_line(&mut text);
            text.push('\n');
        }
        if let Err(e) = out.write_all(text.as_bytes()).await {
            stats.sink_failed.fetch_add(batch.len() as u64, Relaxed);
            return Err(e);
        }
        stats.emitted.fetch_add(batch.len() as u64, Relaxed);
        if rx.is_empty() {
            out.flush().await?;
        }
        // Written (into the buffer, or out if flushed just now): the stdout
        // sink's acknowledgement.
        let now = crate::clock::monotonic_ns();
        for entry in &batch {
            stats.latency.observe(entry.capture_ns, now);
        }
    }
    out.flush().await
}
