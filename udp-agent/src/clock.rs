//! Capture timestamps: the XDP program stamps packets with CLOCK_MONOTONIC
//! (`bpf_ktime_get_ns`, or its coarse form when no limit needs the precise
//! one: see [`narrow_coarse`]); events carry wall-clock time. The offset
//! between the two clocks is sampled at start and refreshed by the capture
//! loop, so NTP adjustments of the wall clock are followed.

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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

/// Nanoseconds of CLOCK_MONOTONIC_COARSE now, as `bpf_ktime_get_coarse_ns`
/// would report.
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE) as u64
}

/// How far apart the kernel's coarse clock steps: one tick (1–10 ms, by
/// the kernel's HZ), read once.
pub fn coarse_tick_ns() -> u64 {
    static TICK: OnceLock<u64> = OnceLock::new();
    *TICK.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec; the clock exists since 2.6.32.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc != 0 {
            // The largest tick Linux has (HZ = 100).
            return 10_000_000;
        }
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    })
}

/// The capture time of a record the kernel stamped with its coarse clock
/// (`RECORD_COARSE_TIME`).
///
/// The stamp `coarse_ns` is the kernel's last tick before the capture, so
/// the capture happened within `[coarse_ns, coarse_ns + tick_ns]`. `read_ns`
/// is a CLOCK_MONOTONIC time the agent took as it began the pass that read
/// the record. The estimate is `read_ns` clamped to that window. A record
/// captured before the pass began comes out late by as long as it waited
/// in the ring, at most one tick; one captured during the pass comes out
/// early, at most by the pass's length (and never before its stamp). The
/// bound assumes the kernel's clock was updated on time: a tick that runs
/// late (a stalled vCPU) lets the stamp lag further, and the clamp then
/// caps the estimate below the capture.
pub fn narrow_coarse(coarse_ns: u64, read_ns: u64, tick_ns: u64) -> u64 {
    read_ns.clamp(coarse_ns, coarse_ns.saturating_add(tick_ns))
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

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar
/// (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (the inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
    fn a_coarse_stamp_is_narrowed_to_the_read_time_within_one_tick() {
        let tick = 4_000_000;
        // Read within the tick after the stamp: the read time.
        assert_eq!(narrow_coarse(10_000_000, 10_250_000, tick), 10_250_000);
        // Read long after (the record waited): one tick after the stamp.
        assert_eq!(narrow_coarse(10_000_000, 99_000_000, tick), 14_000_000);
        // Captured after the read began (same pass): the stamp itself.
        assert_eq!(narrow_coarse(10_000_000, 9_000_000, tick), 10_000_000);
        assert_eq!(narrow_coarse(u64::MAX - 1, u64::MAX, tick), u64::MAX);
    }

    #[test]
    fn the_coarse_tick_is_the_kernels() {
        let tick = coarse_tick_ns();
        // HZ is 100 to 1000.
        assert!((1_000_000..=10_000_000).contains(&tick), "tick {tick} ns");
        // The coarse clock never runs ahead of the precise one.
        let c = monotonic_coarse_ns();
        let m = monotonic_ns();
        assert!(c <= m, "coarse {c}, precise {m}");
    }

    #[test]
    fn fixed_offset() {
        let clock = WallClock::with_offset_ns(1_000_000_000_000_000_000);
        assert_eq!(
            clock.to_system_time(5),
            UNIX_EPOCH + Duration::from_nanos(1_000_000_000_000_000_005)
        );
    }

    #[test]
    fn calendar_arithmetic_matches_humantime() {
        use std::time::{Duration, UNIX_EPOCH};
        // Every day from 1970 to 2100, and leap years' edges.
        for days in 0..47_500i64 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            let t = UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400);
            let text = humantime::format_rfc3339_seconds(t).to_string();
            assert_eq!(text[..10], format!("{y:04}-{m:02}-{d:02}"), "day {days}");
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(
            days_from_civil(2000, 2, 29) + 1,
            days_from_civil(2000, 3, 1)
        );
    }
}
