//! A batch of entries as the bytes of one spool record.
//!
//! ```text
//! u32 count
//! per entry:
//!   u8  flags      bit 0/1/2: Source / DetailType / EventBusName follow
//!                  (clear: the same as the entry before)
//!   u64 time_ns    capture time, nanoseconds since the Unix epoch
//!   u32 json_len   the Detail's length as AWS counts it
//!   [u16 len, bytes] Source, DetailType, EventBusName, those flagged
//!   u32 len, bytes  the Detail, escaped as `encode::Detail` keeps it
//! ```
//!
//! Little-endian throughout. The three envelope strings are the same for
//! every entry of a run, so a batch carries them once. The record's
//! checksum (`segment`) covers these bytes; decoding still checks every
//! length and that strings are UTF-8, and never panics on bad input.
//!
//! An entry's CLOCK_MONOTONIC capture stamp is not stored (it means
//! nothing to another boot): decoding derives it from the wall-clock time,
//! which keeps the delivery-latency metric right for replayed entries.

use std::{sync::Arc, time::SystemTime};

use thiserror::Error;

use crate::{
    clock,
    encode::{Detail, Entry},
};

const NEW_SOURCE: u8 = 1;
const NEW_DETAIL_TYPE: u8 = 2;
const NEW_BUS: u8 = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the record ends inside an entry")]
    Short,
    #[error("a string in the record is not UTF-8")]
    NotUtf8,
    #[error("an entry refers to an envelope string no entry before it gave")]
    NoEnvelope,
    #[error("{0} bytes follow the last entry")]
    Trailing(usize),
    #[error("an envelope string is longer than 65535 bytes")]
    TooLong,
}

/// Appends `entries` to `out`.
pub fn encode(entries: &[Entry], out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut last: Option<&Entry> = None;
    for e in entries {
        let mut flags = 0;
        let changed = |f: fn(&Entry) -> &Arc<str>| last.is_none_or(|l| f(l) != f(e));
        if changed(|e| &e.source) {
            flags |= NEW_SOURCE;
        }
        if changed(|e| &e.detail_type) {
            flags |= NEW_DETAIL_TYPE;
        }
        if changed(|e| &e.event_bus_name) {
            flags |= NEW_BUS;
        }
        out.push(flags);
        out.extend_from_slice(&nanos_since_epoch(e.time).to_le_bytes());
        out.extend_from_slice(&(e.detail.len() as u32).to_le_bytes());
        for (bit, s) in [
            (NEW_SOURCE, &e.source),
            (NEW_DETAIL_TYPE, &e.detail_type),
            (NEW_BUS, &e.event_bus_name),
        ] {
            if flags & bit != 0 {
                let len = u16::try_from(s.len()).map_err(|_| CodecError::TooLong)?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        let detail = e.detail.escaped().as_bytes();
        out.extend_from_slice(&(detail.len() as u32).to_le_bytes());
        out.extend_from_slice(detail);
        last = Some(e);
    }
    Ok(())
}

/// The entries of a record, stamped for this boot's monotonic clock.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, CodecError> {
    let mut r = Reader(bytes);
    let count = r.u32()? as usize;
    // Each entry takes at least 17 bytes: a bound before allocating.
    if count > bytes.len() / 17 {
        return Err(CodecError::Short);
    }
    let (wall_now, mono_now) = (SystemTime::now(), clock::monotonic_ns());
    let mut out: Vec<Entry> = Vec::with_capacity(count);
    let mut envelope: Option<[Arc<str>; 3]> = None;
    for _ in 0..count {
        let flags = r.u8()?;
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(r.u64()?);
        let json_len = r.u32()? as usize;
        let mut next = |bit: u8, i: usize| -> Result<Arc<str>, CodecError> {
            if flags & bit != 0 {
                let len = usize::from(r.u16()?);
                Ok(Arc::from(r.str(len)?))
            } else {
                envelope
                    .as_ref()
                    .map(|env| env[i].clone())
                    .ok_or(CodecError::NoEnvelope)
            }
        };
        let env = [
            next(NEW_SOURCE, 0)?,
            next(NEW_DETAIL_TYPE, 1)?,
            next(NEW_BUS, 2)?,
        ];
        let detail_len = r.u32()? as usize;
        let detail = r.str(detail_len)?.to_owned();
        // Captured that long before now, by the monotonic clock too.
        let age = wall_now.duration_since(time).unwrap_or_default();
        out.push(Entry {
            source: env[0].clone(),
            detail_type: env[1].clone(),
            event_bus_name: env[2].clone(),
            detail: Detail::from_escaped(detail, json_len),
            time,
            capture_ns: mono_now.saturating_sub(age.as_nanos() as u64).max(1),
        });
        envelope = Some(env);
    }
    if !r.0.is_empty() {
        return Err(CodecError::Trailing(r.0.len()));
    }
    Ok(out)
}

/// Nanoseconds since the epoch, 0 for times before it.
pub fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(i: u32, bus: &str) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from(bus),
            detail: Detail::from_json(&format!("{{\"n\":{i},\"s\":\"é\\\"\\n\"}}")),
            time: SystemTime::UNIX_EPOCH
                + Duration::from_nanos(1_795_822_397_250_000_001 + u64::from(i)),
            capture_ns: 0,
        }
    }

    #[test]
    fn a_batch_round_trips_with_its_envelope_once() {
        let batch: Vec<Entry> = (0..4)
            .map(|i| entry(i, if i < 3 { "a" } else { "b" }))
            .collect();
        let mut bytes = Vec::new();
        encode(&batch, &mut bytes).unwrap();
        // "udp.raw" and "UdpPacket" appear once, bus "a" once, "b" once.
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("udp.raw").count(), 1);
        assert_eq!(text.matches("UdpPacket").count(), 1);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 4);
        for (a, b) in batch.iter().zip(&back) {
            assert_eq!(a.source, b.source);
            assert_eq!(a.detail_type, b.detail_type);
            assert_eq!(a.event_bus_name, b.event_bus_name);
            assert_eq!(a.detail, b.detail);
            assert_eq!(a.time, b.time);
            assert_eq!(a.to_json_line(), b.to_json_line());
            assert!(b.capture_ns > 0);
        }
    }

    #[test]
    fn an_empty_batch_round_trips() {
        let mut bytes = Vec::new();
        encode(&[], &mut bytes).unwrap();
        assert_eq!(decode(&bytes).unwrap(), Vec::new());
    }

    #[test]
    fn every_truncation_and_many_corruptions_are_errors_not_panics() {
        let batch: Vec<Entry> = (0..3).map(|i| entry(i, "a")).collect();
        let mut bytes = Vec::new();
        encode(&batch, &mut bytes).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(&extra), Err(CodecError::Trailing(1)));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut b = bytes.clone();
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
            // Either an error or a batch; never a panic.
            let _ = decode(&b);
        }
        // An entry that leans on an envelope nobody gave.
        let mut b = 1u32.to_le_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&[0; 12]);
        assert_eq!(decode(&b), Err(CodecError::NoEnvelope));
    }

    #[test]
    fn replayed_entries_get_a_monotonic_stamp_their_age_ago() {
        let mut e = entry(0, "a");
        e.time = SystemTime::now() - Duration::from_secs(5);
        let mut bytes = Vec::new();
        encode(&[e], &mut bytes).unwrap();
        let back = decode(&bytes).unwrap();
        let age = clock::monotonic_ns() - back[0].capture_ns;
        assert!((4_900_000_000..6_000_000_000).contains(&age), "{age} ns");
    }
}
