//! Send-to-acknowledged latency of stamped payloads.
//!
//! A sender (udp-bench's paced `AF_PACKET` sender) writes a [`stamp`] at
//! the start of a datagram's payload: a magic number, the CLOCK_MONOTONIC
//! time it sent the datagram, and a sequence number. The agent carries the
//! payload in the entry's `Detail.Payload` (base64); an endpoint with
//! [`Config::record_latency`](crate::Config::record_latency) reads the stamp
//! back and records `now − send time` the moment the request's body has
//! arrived, before it answers. Sender and endpoint must share the clock:
//! CLOCK_MONOTONIC is one clock for every network namespace of a host.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// The stamp's layout, and reading it back.
pub mod stamp {
    /// First bytes of a stamped payload.
    pub const MAGIC: &[u8; 4] = b"UBT1";
    /// Magic, send time (u64 ns, little-endian), sequence number (u64,
    /// little-endian).
    pub const LEN: usize = 4 + 8 + 8;

    /// Writes a stamp into the first [`LEN`] bytes of `payload`.
    ///
    /// # Panics
    /// If `payload` is shorter than [`LEN`].
    pub fn write(payload: &mut [u8], sent_ns: u64, seq: u64) {
        payload[..4].copy_from_slice(MAGIC);
        payload[4..12].copy_from_slice(&sent_ns.to_le_bytes());
        payload[12..20].copy_from_slice(&seq.to_le_bytes());
    }

    /// The send time of a payload given as the agent's base64 (`Payload`),
    /// if it carries a stamp.
    pub fn read(payload_b64: &str) -> Option<u64> {
        use base64::{Engine as _, engine::general_purpose::STANDARD};
        // 28 base64 characters are 21 bytes: the whole stamp, decoded
        // without the rest of the payload.
        let head = STANDARD.decode(payload_b64.get(..28)?).ok()?;
        if &head[..4] != MAGIC {
            return None;
        }
        Some(u64::from_le_bytes(head[4..12].try_into().ok()?))
    }

    /// CLOCK_MONOTONIC in nanoseconds: the clock of the send time.
    pub fn monotonic_ns() -> u64 {
        // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid clock id and out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// Log-linear histogram: 32 linear sub-buckets per power of two (about 3%
/// resolution), lock-free.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

const SUB: u32 = 32;
const SUB_BITS: u32 = 5;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..(64 * SUB) as usize)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < u64::from(SUB) {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        let sub = (v >> (exp - SUB_BITS)) & u64::from(SUB - 1);
        ((exp - SUB_BITS + 1) * SUB) as usize + sub as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let i = i as u32;
        if i < SUB {
            return f64::from(i);
        }
        let exp = i / SUB + SUB_BITS - 1;
        let sub = u64::from(i % SUB);
        let low = (1u64 << exp) + (sub << (exp - SUB_BITS));
        low as f64 + (1u64 << (exp - SUB_BITS)) as f64 / 2.0
    }

    pub fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Relaxed);
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
    }

    /// Count and quantiles of what was recorded since the last reset.
    pub fn snapshot(&self) -> Latency {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let q = |p: f64| -> f64 {
            if total == 0 {
                return f64::NAN;
            }
            let rank = ((p * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::value(i);
                }
            }
            f64::NAN
        };
        Latency {
            samples: total,
            p50_ns: q(0.50),
            p90_ns: q(0.90),
            p99_ns: q(0.99),
            max_ns: q(1.0),
        }
    }
}

/// Send-to-acknowledged latency quantiles (NaN without samples).
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub max_ns: f64,
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_few_percent() {
        let h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let l = h.snapshot();
        assert_eq!(l.samples, 100_000);
        assert!((l.p50_ns / 50_000_000.0 - 1.0).abs() < 0.04, "{l:?}");
        assert!((l.p99_ns / 99_000_000.0 - 1.0).abs() < 0.04, "{l:?}");
        for v in [0u64, 1, 31, 32, 33, 1000, u64::MAX / 2] {
            let i = Histogram::index(v);
            assert!(i < 64 * 32);
            let mid = Histogram::value(i);
            assert!(
                (mid - v as f64).abs() <= (v as f64 / 16.0).max(1.0),
                "{v} → {mid}"
            );
        }
        h.reset();
        assert_eq!(h.snapshot().samples, 0);
    }

    #[test]
    fn a_stamp_written_is_read_back_from_the_base64_payload() {
        let mut p = vec![0u8; 64];
        stamp::write(&mut p, 123_456, 7);
        assert_eq!(&p[..4], stamp::MAGIC);
        assert_eq!(stamp::read(&STANDARD.encode(&p)), Some(123_456));
        assert_eq!(stamp::read(&STANDARD.encode(b"hello")), None);
        assert_eq!(stamp::read(&STANDARD.encode([b'x'; 30])), None, "no magic");
    }
}
