//! Zero-copy packet views and validated representations, in smoltcp's style.
//!
//! Each format has a view `Packet<T: AsRef<[u8]>>` over a buffer: `new_unchecked` wraps
//! it, `new_checked` also runs `check_len` so that every accessor after it is in bounds;
//! accessors read the bytes in place. Where the appliance needs a validated value, a
//! `Repr` has `parse` (from a checked view, with every field validated) and `emit`
//! (into a view of at least `buffer_len()` bytes). Field offsets are named ranges in a
//! private `field` module per format.
//!
//! Errors: `Truncated` when the buffer is shorter than a header or a length field says,
//! `Malformed` when lengths contradict each other, `Unsupported` for well-formed input
//! this crate does not handle, `BadChecksum`. No parser panics on any input.

mod arp;
pub mod checksum;
mod ethernet;
mod ipv4;
mod udp;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{
    ETHERNET_HEADER_LEN, ETHERNET_MIN_FRAME_LEN, ETHERNET_TAGGED_HEADER_LEN, EtherType,
    EthernetFrame, EthernetRepr, VlanTag,
};
pub use ipv4::{IPV4_MIN_HEADER_LEN, IpProtocol, Ipv4Packet, Ipv4Repr};
pub use udp::{UDP_HEADER_LEN, UdpPacket};

pub use core::net::Ipv4Addr;
pub use duplex_hal::MacAddress;

/// Reads a big-endian `u16` at `at` (the caller has checked the length).
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Writes a big-endian `u16` at `at` (the caller has checked the length).
fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Reads a MAC address from the six bytes at `at`.
fn read_mac(bytes: &[u8], at: usize) -> MacAddress {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[at..at + 6]);
    MacAddress(mac)
}

/// Reads an IPv4 address from the four bytes at `at`.
fn read_ipv4(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}
