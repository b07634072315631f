//! Grouping entries into PutEvents requests within AWS's limits.

use crate::encode::Entry;

/// PutEvents accepts at most 10 entries per request (quota "PutEvents
/// entries per request").
pub const MAX_ENTRIES: usize = 10;
/// PutEvents requests are at most 256 KB, counting entries as
/// [`Entry::aws_size`] does.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Where a Region accepts events of up to 1 MB, requests may be as large
/// (`--max-entry-bytes`).
pub const MAX_LARGE_REQUEST_BYTES: usize = 1024 * 1024;

/// Accumulates entries; hands out a batch when the next entry would not fit.
#[derive(Debug)]
pub struct Batcher {
    entries: Vec<Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Self::new(MAX_ENTRIES, MAX_REQUEST_BYTES)
    }
}

impl Batcher {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let max_entries = max_entries.clamp(1, MAX_ENTRIES);
        Self {
            entries: Vec::with_capacity(max_entries),
            bytes: 0,
            max_entries,
            max_bytes: max_bytes.min(MAX_LARGE_REQUEST_BYTES),
        }
    }

    /// Adds an entry. Returns a completed batch when one is ready, or gives
    /// the entry back (`Err`) if it is larger than any request may be.
    pub fn push(&mut self, entry: Entry) -> Result<Option<Vec<Entry>>, Entry> {
        let size = entry.aws_size();
        if size > self.max_bytes {
            return Err(entry);
        }
        let mut done = None;
        if self.bytes + size > self.max_bytes {
            done = self.take();
        }
        self.bytes += size;
        self.entries.push(entry);
        if self.entries.len() >= self.max_entries {
            // A full batch goes out now; if one was already completed above,
            // it is returned first and this one on the next call to `take`.
            if done.is_none() {
                done = self.take();
            }
        }
        Ok(done)
    }

    /// True if entries are waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if the pending entries make a full batch.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// Takes whatever is pending.
    pub fn take(&mut self) -> Option<Vec<Entry>> {
        if self.entries.is_empty() {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::replace(
            &mut self.entries,
            Vec::with_capacity(self.max_entries),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;

    fn entry(detail_len: usize) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("default"),
            detail: "x".repeat(detail_len).into(),
            time: UNIX_EPOCH,
            capture_ns: 0,
        }
    }

    /// Overhead of an entry besides its Detail: Time + Source + DetailType.
    const OVERHEAD: usize = 14 + 7 + 9;

    #[test]
    fn ten_entries_make_a_batch() {
        let mut b = Batcher::default();
        for _ in 0..9 {
            assert_eq!(b.push(entry(10)).unwrap(), None);
        }
        let batch = b.push(entry(10)).unwrap().unwrap();
        assert_eq!(batch.len(), 10);
        assert!(b.is_empty());
    }

    #[test]
    fn a_batch_never_exceeds_256_kib() {
        let mut b = Batcher::default();
        let detail = 100 * 1024 - OVERHEAD; // each entry exactly 100 KiB
        assert_eq!(b.push(entry(detail)).unwrap(), None);
        assert_eq!(b.push(entry(detail)).unwrap(), None);
        let batch = b.push(entry(detail)).unwrap().unwrap();
        assert_eq!(batch.len(), 2);
        let total: usize = batch.iter().map(Entry::aws_size).sum();
        assert_eq!(total, 200 * 1024);
        assert_eq!(b.take().unwrap().len(), 1);
    }

    #[test]
    fn exactly_256_kib_fits() {
        let mut b = Batcher::default();
        let detail = 128 * 1024 - OVERHEAD;
        assert_eq!(b.push(entry(detail)).unwrap(), None);
        assert_eq!(b.push(entry(detail)).unwrap(), None);
        assert_eq!(b.take().unwrap().len(), 2);
    }

    #[test]
    fn an_entry_larger_than_a_request_is_given_back() {
        let mut b = Batcher::default();
        let too_big = entry(MAX_REQUEST_BYTES - OVERHEAD + 1);
        assert_eq!(b.push(too_big.clone()), Err(too_big));
        assert!(b.is_empty());
    }

    #[test]
    fn size_split_and_count_split_together() {
        // Nine small entries then one that does not fit: the nine go out,
        // the big one starts the next batch.
        let mut b = Batcher::default();
        for _ in 0..9 {
            b.push(entry(20 * 1024)).unwrap();
        }
        let batch = b.push(entry(100 * 1024)).unwrap().unwrap();
        assert_eq!(batch.len(), 9);
        assert_eq!(b.take().unwrap().len(), 1);
    }
}
