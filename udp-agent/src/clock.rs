//! Capture timestamps: the XDP program stamps packets with CLOCK_MONOTONIC
//! (`bpf_ktime_get_ns`); events carry wall-clock time. The offset between the
//! two clocks is sampled at start and refreshed by the capture loop, so NTP
//! adjustments of the wall clock are followed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Nanoseconds of CLOCK_MONOTONIC now, as `bpf_ktime_get_ns` would report.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        // Sample monotonic on both sides of realtime and use the midpoint.
        let m0 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            offset_ns: r - (m0 + m1) / 2,
        }
    }

    /// A clock with a fixed offset, for tests and golden output.
    pub const fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_system_time(&self, monotonic_ns: u64) -> SystemTime {
        let ns = i128::from(monotonic_ns) + self.offset_ns;
        if ns <= 0 {
            return UNIX_EPOCH;
        }
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_now_to_now() {
        let clock = WallClock::now();
        let t = clock.to_system_time(monotonic_ns());
        let diff = SystemTime::now()
            .duration_since(t)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "off by {diff:?}");
    }

    #[test]
    fn fixed_offset() {
        let clock = WallClock::with_offset_ns(1_000_000_000_000_000_000);
        assert_eq!(
            clock.to_system_time(5),
            UNIX_EPOCH + Duration::from_nanos(1_000_000_000_000_000_005)
        );
    }
}
