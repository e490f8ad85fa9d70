//! The Service Programming Interface's liveness part (SPEC §8): services register a deadline
//! and the action to take when they miss it; they prove they run with `iam_alive`.

use alloc::string::String;
use core::fmt;
use core::time::Duration;

use duplex_hal::Instant;

/// A registered service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId(pub u8);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the node does when a service misses its deadline (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MissAction {
    /// Ask the image to restart the service; escalate to `Failover` after `max_restarts`.
    Restart,
    /// Local failure until the service is alive again: silent, Suspend / SubMaster.
    Failover,
    /// Local failure until the operator's `Resume`.
    Suspend,
    /// As `Failover` (serial mode: the bypass relay closes).
    Bypass,
    /// As `Failover`, and ask the image to reset the machine.
    Reset,
}

impl MissAction {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            MissAction::Restart => "restart",
            MissAction::Failover => "failover",
            MissAction::Suspend => "suspend",
            MissAction::Bypass => "bypass",
            MissAction::Reset => "reset",
        }
    }
}

impl fmt::Display for MissAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One service's bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub name: String,
    pub deadline: Duration,
    pub on_miss: MissAction,
    pub last_alive: Instant,
    /// Restarts since the last `iam_alive`.
    pub restarts_in_row: u8,
    pub restarts: u64,
    pub misses: u64,
    /// The service is a local failure right now.
    pub failed: bool,
    /// The failure needs the operator's `Resume`.
    pub sticky: bool,
    pub registered: bool,
}

impl Service {
    pub fn new(name: &str, deadline: Duration, on_miss: MissAction, now: Instant) -> Self {
        Service {
            name: String::from(name),
            deadline,
            on_miss,
            last_alive: now,
            restarts_in_row: 0,
            restarts: 0,
            misses: 0,
            failed: false,
            sticky: false,
            registered: true,
        }
    }

    /// The instant the service misses its deadline, unless it is failed or unregistered.
    pub fn deadline_at(&self) -> Option<Instant> {
        (self.registered && !self.failed).then(|| self.last_alive + self.deadline)
    }
}
