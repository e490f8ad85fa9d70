//! The network function of the Duplex appliance: a network access device (NAD) between a
//! LAN and a WAN.
//!
//! # Layers
//!
//! Bottom up (SPEC.md next to this crate is the normative description):
//!
//! | module | what |
//! | --- | --- |
//! | [`wire`] | zero-copy packet views in smoltcp's style: [`wire::EthernetFrame`] (one 802.1Q tag), [`wire::ArpPacket`] + [`wire::ArpRepr`], [`wire::Ipv4Packet`] + [`wire::Ipv4Repr`], [`wire::UdpPacket`], the Internet checksum |
//! | [`build`] | frames the appliance sends itself: any Ethernet frame into a caller buffer, gratuitous ARP for fail-over |
//! | [`bridge`] | [`Bridge`]: transparent learning bridge between N ports; one [`Decision`] per frame, MAC table with ageing and a hard size bound, per-port counters, table snapshot for the replicated log |
//!
//! A later layer (firewall, connection tracking, NAT) sits *between* the bridge's decision
//! and the transmit: the bridge answers "which port", the filter answers "may it pass, and
//! rewritten how". It will reuse [`wire`] and see the frame as `&mut [u8]` for in-place NAT.
//!
//! # The forwarding loop
//!
//! ```text
//! let mut bridge = Bridge::new(BridgeConfig::default())?;       // ports 0 = LAN, 1 = WAN
//! bridge.add_local_address(management_mac)?;
//! for each received frame on port `ingress` (heartbeat/replication EtherTypes taken out first):
//!     match bridge.decide(ingress, frame, now) {
//!         Decision::Forward(port)   => nic[port].transmit(frame),
//!         Decision::Flood           => for port in bridge.flood_ports(ingress) { nic[port].transmit(frame) }
//!         Decision::Local           => management.receive(frame),
//!         Decision::FloodAndLocal   => both of the above,
//!         Decision::Drop(_)         => {}                        // already counted
//!     }
//! bridge.poll(now);                  // ageing; call again at bridge.poll_at()
//! ```
//!
//! Nothing here does I/O or reads a clock: `now` comes in, and [`Bridge::poll_at`] says
//! when to call [`Bridge::poll`] again (as smoltcp does). Every parser returns an
//! [`Error`] on malformed input and never panics; `decide` never panics on any frame.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bridge;
pub mod build;
pub mod wire;

pub use bridge::{
    Bridge, BridgeConfig, BridgeCounters, Decision, DropCounters, DropReason, PortCounters, PortId,
    RestoreSummary, SnapshotEntry, TableEntry, TableSnapshot,
};
pub use duplex_hal::{Instant, MacAddress};

use core::fmt;

/// Errors of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header or a length field says.
    Truncated,
    /// A length or field is inconsistent (IPv4 header length below 20, UDP length below 8,
    /// reserved bits set in a snapshot).
    Malformed,
    /// Well-formed but not handled here (ARP for other than Ethernet/IPv4, IP version not 4,
    /// unknown snapshot version).
    Unsupported,
    /// A checksum does not match.
    BadChecksum,
    /// The caller's output buffer is too small.
    BufferTooSmall,
    /// The address cannot be used here (group address as a station, broadcast as local).
    InvalidAddress,
    /// No such bridge port.
    InvalidPort,
    /// A bounded table is full.
    Full,
    /// A configuration value out of bounds.
    InvalidConfig(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated"),
            Error::Malformed => f.write_str("malformed"),
            Error::Unsupported => f.write_str("unsupported"),
            Error::BadChecksum => f.write_str("bad checksum"),
            Error::BufferTooSmall => f.write_str("buffer too small"),
            Error::InvalidAddress => f.write_str("invalid address"),
            Error::InvalidPort => f.write_str("no such port"),
            Error::Full => f.write_str("table full"),
            Error::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T = ()> = core::result::Result<T, Error>;
