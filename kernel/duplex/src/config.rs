//! Node configuration and timing parameters (SPEC §4).

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use duplex_hal::MacAddress;

use crate::state::Mode;
use crate::wire::Key;
use crate::{Error, Result};

/// A node id: unique in a group, `1..=0xFFFE` (0 means "none" on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

impl NodeId {
    /// True for ids a node may use.
    pub const fn is_valid(self) -> bool {
        self.0 != 0 && self.0 != 0xFFFF
    }
}

impl core::fmt::Display for NodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Index of a heartbeat path in [`Config::paths`] (the same on every node of a group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(pub u8);

impl PathId {
    /// The index as `usize`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl core::fmt::Display for PathId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Most paths a node may have (the `traffic` field of a heartbeat is one byte).
pub const MAX_PATHS: usize = 8;
/// Most peers a node keeps track of (groups have 2 to 8 nodes).
pub const MAX_PEERS: usize = 15;
/// Most services that may register with the liveness monitor.
pub const MAX_SERVICES: usize = 16;

/// One heartbeat path: a NIC of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConfig {
    /// A short name for the console ("lan", "wan", "link").
    pub name: String,
    /// This node's MAC address on that NIC (source of the heartbeat frames).
    pub mac: MacAddress,
    /// Raise an interface failure after this long without data traffic (SPEC §6); `None`
    /// does not monitor.
    pub traffic_timeout: Option<Duration>,
    /// Heartbeats go out and are accepted on this interface. False for an interface that is
    /// only watched for traffic (serial mode's outer ports).
    pub heartbeats: bool,
}

impl PathConfig {
    /// A heartbeat path with no traffic monitoring.
    pub fn new(name: &str, mac: MacAddress) -> Self {
        PathConfig {
            name: String::from(name),
            mac,
            traffic_timeout: None,
            heartbeats: true,
        }
    }

    /// An interface that carries no heartbeats and raises an interface failure after
    /// `traffic_timeout` without data traffic.
    pub fn monitor_only(name: &str, mac: MacAddress, traffic_timeout: Duration) -> Self {
        PathConfig {
            name: String::from(name),
            mac,
            traffic_timeout: Some(traffic_timeout),
            heartbeats: false,
        }
    }
}

/// Timing parameters; SPEC §4 gives defaults, bounds and rationale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Normal send interval.
    pub interval: Duration,
    /// Raised send interval (probing, Probe, QuasiMaster).
    pub probe_interval: Duration,
    /// Floor of the adaptive soft timeout.
    pub soft_timeout_min: Duration,
    /// Ceiling of the adaptive soft timeout.
    pub soft_timeout_max: Duration,
    /// Floor of `load / 2^load_factor`.
    pub hard_extension_min: Duration,
    /// Ceiling of `load / 2^load_factor`.
    pub hard_extension_max: Duration,
    /// The paper's `load_factor`: load (bit/s) divided by `2^load_factor` gives microseconds.
    pub load_factor: u8,
    /// Time in Probe before electing; also the orphan wait of a standby without Master.
    pub probe_duration: Duration,
    /// QuasiMaster becomes Master at the latest after this.
    pub confirm_time: Duration,
    /// Serial: a SubMaster whose only failure is missing traffic retries this often.
    pub interface_retry: Duration,
    /// Service restarts (miss action `Restart`) before a miss escalates to `Failover`.
    pub max_restarts: u8,
}

impl Default for Timing {
    fn default() -> Self {
        Timing::scaled(Duration::from_millis(1))
    }
}

impl Timing {
    /// The default ratios around another send interval (SPEC §4).
    pub fn scaled(interval: Duration) -> Self {
        Timing {
            interval,
            probe_interval: interval / 4,
            soft_timeout_min: interval * 3,
            soft_timeout_max: interval * 10,
            hard_extension_min: interval * 2,
            hard_extension_max: interval * 6,
            load_factor: 15,
            probe_duration: interval * 10,
            confirm_time: interval * 5,
            interface_retry: Duration::from_secs(1),
            max_restarts: 3,
        }
    }

    /// A gap in the node's own execution longer than this means every live peer has
    /// declared it dead: `soft_timeout_max + hard_extension_max` (SPEC §4.5).
    pub fn long_freeze(&self) -> Duration {
        self.soft_timeout_max + self.hard_extension_max
    }

    /// How long a claimer holds its traffic after a short freeze (SPEC §4.5):
    /// `soft_timeout_min`, enough for a peer's claim to arrive from the backlog.
    pub fn hold_time(&self) -> Duration {
        self.soft_timeout_min
    }

    /// `soft_timeout_min + hard_extension_min - interval`: a gap in the node's own execution
    /// longer than this means a peer may have declared it dead (SPEC §4.5).
    pub fn freeze_threshold(&self) -> Duration {
        (self.soft_timeout_min + self.hard_extension_min).saturating_sub(self.interval)
    }

    /// The load term of the hard timeout, `load / 2^load_factor` microseconds, clamped
    /// to `[hard_extension_min, hard_extension_max]` (SPEC §4.3).
    pub fn hard_extension(&self, load_bits_per_second: u64) -> Duration {
        let micros = load_bits_per_second
            .checked_shr(u32::from(self.load_factor))
            .unwrap_or(0);
        Duration::from_micros(micros).clamp(self.hard_extension_min, self.hard_extension_max)
    }

    /// `hard_timeout = soft_timeout + current_load / 2^load_factor` (SPEC §4.3).
    pub fn hard_timeout(&self, soft_timeout: Duration, load_bits_per_second: u64) -> Duration {
        soft_timeout + self.hard_extension(load_bits_per_second)
    }

    /// Checks the bounds of SPEC §4.
    pub fn validate(&self) -> Result {
        let check = |ok: bool, what: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidConfig(what))
            }
        };
        check(
            self.interval >= Duration::from_micros(100) && self.interval <= Duration::from_secs(1),
            "interval must be within 100 us ..= 1 s",
        )?;
        check(
            self.probe_interval >= Duration::from_micros(50)
                && self.probe_interval <= self.interval,
            "probe_interval must be within 50 us ..= interval",
        )?;
        check(
            self.soft_timeout_min >= self.interval * 2,
            "soft_timeout_min must be >= 2 x interval",
        )?;
        check(
            self.soft_timeout_max >= self.soft_timeout_min,
            "soft_timeout_max < soft_timeout_min",
        )?;
        check(
            self.hard_extension_min >= self.probe_interval * 2,
            "hard_extension_min must be >= 2 x probe_interval",
        )?;
        check(
            self.hard_extension_max >= self.hard_extension_min,
            "hard_extension_max < hard_extension_min",
        )?;
        check(self.load_factor <= 40, "load_factor must be <= 40")?;
        check(
            self.probe_duration >= self.soft_timeout_min + self.hard_extension_min,
            "probe_duration must be >= soft_timeout_min + hard_extension_min",
        )?;
        check(!self.confirm_time.is_zero(), "confirm_time must be > 0")?;
        check(
            !self.interface_retry.is_zero(),
            "interface_retry must be > 0",
        )?;
        Ok(())
    }
}

/// Everything a node needs to know at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Parallel or serial.
    pub mode: Mode,
    /// Group id (the multicast address and the `group` field).
    pub group: u16,
    /// This node's id.
    pub node_id: NodeId,
    /// Priority in elections and contention ties; higher wins.
    pub priority: u8,
    /// Grows at every boot (persistent boot counter or RTC seconds): anti-replay (SPEC §1).
    pub incarnation: u32,
    /// The group's shared heartbeat key.
    pub key: Key,
    /// Heartbeat paths, in the same order on every node of the group.
    pub paths: Vec<PathConfig>,
    /// Timing parameters.
    pub timing: Timing,
}

impl Config {
    /// Checks the configuration.
    pub fn validate(&self) -> Result {
        if !self.node_id.is_valid() {
            return Err(Error::InvalidConfig("node id must be within 1 ..= 0xFFFE"));
        }
        if self.paths.is_empty() || self.paths.len() > MAX_PATHS {
            return Err(Error::InvalidConfig("a node needs 1 to 8 paths"));
        }
        if !self.paths.iter().any(|p| p.heartbeats) {
            return Err(Error::InvalidConfig(
                "a node needs at least one heartbeat path",
            ));
        }
        if self.incarnation == 0 {
            return Err(Error::InvalidConfig("incarnation must be >= 1"));
        }
        self.timing.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_specified() {
        let t = Timing::default();
        t.validate().unwrap();
        assert_eq!(t.interval, Duration::from_millis(1));
        assert_eq!(t.probe_interval, Duration::from_micros(250));
        assert_eq!(t.soft_timeout_min, Duration::from_millis(3));
        assert_eq!(t.freeze_threshold(), Duration::from_millis(4));
        for ms in [2, 5, 10, 100] {
            Timing::scaled(Duration::from_millis(ms))
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn hard_timeout_is_the_papers_formula() {
        let t = Timing::default();
        let soft = Duration::from_millis(3);
        // Idle: the floor.
        assert_eq!(t.hard_timeout(soft, 0), Duration::from_millis(5));
        // 100 Mbit/s: 1e8 >> 15 = 3051 us.
        assert_eq!(
            t.hard_timeout(soft, 100_000_000),
            soft + Duration::from_micros(3051)
        );
        // 1 Gbit/s: the ceiling.
        assert_eq!(
            t.hard_timeout(soft, 1_000_000_000),
            Duration::from_millis(9)
        );
        // Exactly load / 2^load_factor between the bounds.
        let t2 = Timing {
            load_factor: 10,
            ..t
        };
        assert_eq!(
            t2.hard_extension(3_000 * 1024),
            Duration::from_micros(3_000)
        );
        // No overflow at the extremes.
        let t3 = Timing {
            load_factor: 0,
            ..t
        };
        assert_eq!(t3.hard_extension(u64::MAX), t.hard_extension_max);
    }

    #[test]
    fn bounds_are_checked() {
        let t = Timing {
            soft_timeout_min: Duration::from_micros(1500),
            ..Timing::default()
        };
        assert!(matches!(t.validate(), Err(Error::InvalidConfig(_))));
        let t = Timing {
            probe_duration: Duration::from_millis(1),
            ..Timing::default()
        };
        assert!(t.validate().is_err());
        let t = Timing {
            load_factor: 41,
            ..Timing::default()
        };
        assert!(t.validate().is_err());
    }
}
