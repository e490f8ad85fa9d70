//! The Duplex core: what makes two (or more) network access devices one fault-tolerant unit.
//!
//! Layers, bottom up (SPEC.md next to this crate is the normative description):
//!
//! | module | what |
//! | --- | --- |
//! | [`wire`] | the heartbeat frame: EtherType 0x88B5, zero-copy [`wire::Packet`], [`wire::HeartbeatRepr`], BLAKE3-keyed MAC |
//! | [`config`] | node configuration and [`config::Timing`]: adaptive interval, soft timeout, the paper's hard timeout `soft + load / 2^load_factor` |
//! | [`state`] | device states, forwarding roles, transition causes, and the transition table [`state::TABLE`] |
//! | [`spi`] | the Service Programming Interface: services, deadlines, actions on a miss |
//! | [`node`] | [`Node`]: heartbeats in and out on every path, peers with per-path health, the parallel and serial state machines |
//! | [`status`] | [`Status`]: what `show duplex` prints, as text or JSON |
//! | [`sim`] | a deterministic discrete-event simulator of N nodes on lossy paths, the property checks and the benchmark |
//!
//! The crate does no I/O and never reads a clock: time comes in as `now`, and
//! [`Node::poll_at`] says when to call [`Node::poll`] again (as smoltcp does).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod config;
pub mod node;
pub mod sim;
pub mod spi;
pub mod state;
pub mod status;
pub mod wire;

#[cfg(test)]
mod tests;

use core::fmt;

pub use config::{Config, NodeId, PathConfig, PathId, Timing};
pub use node::{Action, DeviceState, Failure, Node, OperatorCommand, Received};
pub use spi::{MissAction, ServiceId};
pub use state::{Cause, ForwardingRole, Mode, State, Transition};
pub use status::Status;
pub use wire::{FrameBytes, Key};

/// Errors of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The frame is shorter than a heartbeat.
    Truncated,
    /// The frame does not carry the heartbeat EtherType.
    NotHeartbeat,
    /// The frame's version is not 1.
    UnsupportedVersion(u8),
    /// The MAC tag does not match (wrong key, corruption, forgery).
    BadMac,
    /// An authentic frame with a field out of range.
    Malformed(&'static str),
    /// The sender runs the other mode.
    ModeMismatch,
    /// The sender belongs to another group.
    WrongGroup,
    /// The frame is our own (loop, or a duplicate node id).
    OwnFrame,
    /// The frame was sent on another path than it arrived on (cables crossed).
    WrongPath,
    /// No such path.
    UnknownPath,
    /// Sequence not above the last one seen from that sender on that path.
    Replayed,
    /// Epoch lower than the sender's previous one in the same incarnation.
    Stale,
    /// More peers than a node tracks.
    TooManyPeers,
    /// More services than the monitor holds.
    TooManyServices,
    /// No such service.
    UnknownService,
    /// A configuration value out of bounds.
    InvalidConfig(&'static str),
    /// The command does not apply in the current state.
    InvalidState,
    /// Fail-over asked but no standby is alive.
    NoStandby,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("frame truncated"),
            Error::NotHeartbeat => f.write_str("not a heartbeat"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Error::BadMac => f.write_str("bad MAC"),
            Error::Malformed(what) => write!(f, "malformed: {what}"),
            Error::ModeMismatch => f.write_str("mode mismatch"),
            Error::WrongGroup => f.write_str("wrong group"),
            Error::OwnFrame => f.write_str("own frame"),
            Error::WrongPath => f.write_str("sent on another path"),
            Error::UnknownPath => f.write_str("unknown path"),
            Error::Replayed => f.write_str("replayed"),
            Error::Stale => f.write_str("stale epoch"),
            Error::TooManyPeers => f.write_str("too many peers"),
            Error::TooManyServices => f.write_str("too many services"),
            Error::UnknownService => f.write_str("unknown service"),
            Error::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            Error::InvalidState => f.write_str("not possible in this state"),
            Error::NoStandby => f.write_str("no live standby"),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T = ()> = core::result::Result<T, Error>;
