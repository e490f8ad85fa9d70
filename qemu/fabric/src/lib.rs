//! The Duplex lab's network fabric: a host program that plays the cables, hubs and bypass
//! relays between QEMU VMs, injects faults, and sources and sinks test traffic.
//!
//! # Layers
//!
//! ```text
//!  QEMU VM NIC ──UDP 127.0.0.1──▶ VM port ─┐                  ┌─▶ VM port ──UDP──▶ QEMU VM NIC
//!                                          │   segment:       │
//!  Source (thread) ──inject()──▶ internal ─┤   wire or hub    ├─▶ internal port ──▶ Sink / Capture
//!                                  port    │ (never echoes)   │
//!                                          └── bypass relay ──┘
//! ```
//!
//! - [`Fabric`] owns the ports and their threads. A **VM port** is a UDP socket on
//!   127.0.0.1 (one per VM NIC, one thread each doing blocking receives); QEMU reaches it
//!   by port number ([`VmPort::netdev_arg`]) or through a socket the fabric opens for it
//!   ([`VmSocket::netdev_arg`]). An **internal port** hands frames to an [`Endpoint`] (a
//!   [`Sink`], a [`Capture`], [`Discard`], a closure) and takes frames from
//!   [`Fabric::inject`] (a [`Source`]).
//! - Ports join **segments**: [`Fabric::wire`] (two ports) and [`Fabric::hub`] (any number).
//!   A frame entering a segment leaves on every other port of it, never on its own.
//! - Per port, at run time: up/down, loss (seeded), delay (one timer thread, no sleep per
//!   frame), EtherType filters (heartbeat-only partitions), counters, a pcap file.
//! - [`Fabric::set_bypass`] shorts a box's two ports: the relay of a bypass card.
//! - [`Source`] and [`Sink`] measure loss, duplicates, reordering, gaps, latency and
//!   fail-over; [`mod@bench`] holds the rate search and the fabric's own ceiling.
//! - [`UdpNic`] and [`LoopbackAppliance`] play VMs on the host, for tests and the ceiling.
//!
//! Frame formats, the port model and the pcap output are specified in `SPEC.md` next to
//! this crate's `Cargo.toml`.
//!
//! All timestamps come from [`clock::now_ns`], one monotonic clock per process, so that a
//! source's send time, the sink's receive time and a fault injected by the lab compare.

pub mod bench;
mod capture;
pub mod clock;
mod fabric;
pub mod frame;
mod histogram;
pub mod pcap;
mod rng;
mod sink;
mod socket;
mod source;
mod udp_nic;

pub use capture::{Capture, CapturedFrame};
pub use duplex_hal::MacAddress;
pub use fabric::{
    Delivery, Direction, Discard, DropCounters, Endpoint, Fabric, FabricConfig, MAX_BYPASS_HOPS,
    MAX_FRAME_LENGTH, MIN_FRAME_LENGTH, PortCounters, PortId, VmPort,
};
pub use histogram::{Histogram, LatencySummary};
pub use sink::{
    FlowReport, Gap, LossStats, OriginReport, Sink, SinkConfig, SinkReport, Transition,
};
pub use socket::VmSocket;
pub use source::{Rate, Source, SourceConfig, SourceReport, TrafficSpec};
pub use udp_nic::{LoopbackAppliance, UdpNic};

use std::fmt;
use std::io;

/// Everything that can go wrong in the fabric.
#[derive(Debug)]
pub enum Error {
    /// A socket, file or thread operation failed.
    Io(io::Error),
    /// No port has this id in this fabric.
    UnknownPort(PortId),
    /// The port is already part of a segment or a bypass pair.
    PortInUse(PortId),
    /// Another port already has this name.
    DuplicateName(String),
    /// The operation needs another kind of port (for example a VM port).
    WrongPortKind(PortId),
    /// A frame is shorter than an Ethernet header or longer than a UDP datagram can carry.
    FrameLength(usize),
    /// An argument is out of its range; the text names it.
    InvalidArgument(&'static str),
    /// The bypass would join a segment to itself, making a loop.
    BypassLoop,
    /// The fabric has stopped.
    Stopped,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(error) => write!(f, "I/O error: {error}"),
            Error::UnknownPort(port) => write!(f, "unknown port {port}"),
            Error::PortInUse(port) => write!(f, "port {port} is already connected"),
            Error::DuplicateName(name) => write!(f, "a port is already named {name:?}"),
            Error::WrongPortKind(port) => write!(f, "port {port} is not of the needed kind"),
            Error::FrameLength(length) => write!(f, "bad frame length {length}"),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::BypassLoop => f.write_str("bypass would connect a segment to itself"),
            Error::Stopped => f.write_str("the fabric has stopped"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T = ()> = std::result::Result<T, Error>;
