//! The process-wide monotonic clock every timestamp of the fabric uses.
//!
//! [`now_ns`] counts nanoseconds since the first call in this process. Sources stamp
//! frames with it, the fabric stamps receptions with it, and the lab should read it when it
//! injects a fault, so that "fault at t, first frame through the new master at t'" compares
//! directly.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Epoch {
    monotonic: Instant,
    /// Wall-clock time at `monotonic`, in nanoseconds since the Unix epoch (for pcap files).
    wall_ns: u64,
}

fn epoch() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| Epoch {
        monotonic: Instant::now(),
        wall_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, duration_ns),
    })
}

/// Nanoseconds since this process first read the clock. Monotonic; shared by all threads.
pub fn now_ns() -> u64 {
    duration_ns(epoch().monotonic.elapsed())
}

/// Converts a [`now_ns`] reading to nanoseconds since the Unix epoch, for files read by
/// other tools (pcap). Keeps the monotonic clock's steadiness: a wall-clock step after the
/// first reading does not show.
pub fn wall_ns(monotonic_ns: u64) -> u64 {
    epoch().wall_ns.saturating_add(monotonic_ns)
}

/// A [`Duration`] in nanoseconds, saturating at `u64::MAX` (584 years).
pub fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_wall_time_is_after_2020() {
        let first = now_ns();
        let second = now_ns();
        assert!(second >= first);
        // 2020-01-01 in nanoseconds since the Unix epoch.
        assert!(wall_ns(first) > 1_577_836_800_000_000_000);
    }
}
