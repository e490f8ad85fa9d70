//! Test traffic frames: Ethernet II, IPv4, UDP, and a 16-byte test header (SPEC.md).
//!
//! | offset in the UDP payload | size | field (big-endian) |
//! | --- | --- | --- |
//! | 0 | 2 | magic 0x4458 ("DX") |
//! | 2 | 2 | flow id |
//! | 4 | 4 | sequence number, from 0 per flow |
//! | 8 | 8 | send time, [`crate::clock::now_ns`] of the sending process |
//!
//! The rest of the payload is padding (byte `i` of the payload is `i mod 256`).
//! Frame sizes follow RFC 2544: they count the 4-byte FCS, which the fabric never carries,
//! so a 64-byte frame is a 60-byte datagram.

use std::net::Ipv4Addr;

use crate::{Error, MacAddress, Result};

/// Bytes of an Ethernet II header.
pub const ETHERNET_HEADER_LENGTH: usize = 14;
/// Bytes of an IPv4 header without options.
pub const IPV4_HEADER_LENGTH: usize = 20;
/// Bytes of a UDP header.
pub const UDP_HEADER_LENGTH: usize = 8;
/// Offset of the test header in a frame built here.
pub const TEST_HEADER_OFFSET: usize =
    ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH;
/// Bytes of the test header.
pub const TEST_HEADER_LENGTH: usize = 16;
/// The test header's magic number.
pub const MAGIC: u16 = 0x4458;
/// Bytes of the Ethernet FCS, counted in frame sizes but never carried.
pub const FCS_LENGTH: usize = 4;
/// Smallest frame size (with FCS).
pub const MIN_FRAME_SIZE: usize = 64;
/// Largest frame size (with FCS) for a 1500-byte MTU.
pub const MAX_FRAME_SIZE: usize = 1518;
/// EtherType of IPv4.
pub const ETHER_TYPE_IPV4: u16 = 0x0800;
/// IP protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;

/// Addresses of one UDP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowAddresses {
    /// Ethernet source.
    pub source_mac: MacAddress,
    /// Ethernet destination.
    pub destination_mac: MacAddress,
    /// IPv4 source.
    pub source_ip: Ipv4Addr,
    /// IPv4 destination.
    pub destination_ip: Ipv4Addr,
    /// UDP source port.
    pub source_port: u16,
    /// UDP destination port.
    pub destination_port: u16,
}

/// The test header of a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestHeader {
    /// Flow id.
    pub flow: u16,
    /// Sequence number within the flow.
    pub sequence: u32,
    /// Send time, [`crate::clock::now_ns`] of the sender.
    pub timestamp_ns: u64,
}

/// A prebuilt frame of one flow; [`FrameTemplate::stamp`] fills in the sequence number and
/// time and fixes the UDP checksum incrementally (the IPv4 header never changes).
#[derive(Clone, Debug)]
pub struct FrameTemplate {
    bytes: Vec<u8>,
    /// One's-complement sum of the UDP pseudo-header, header and payload with the sequence
    /// number, time and checksum fields zero.
    checksum_base: u32,
}

const SEQUENCE_OFFSET: usize = TEST_HEADER_OFFSET + 4;
const TIMESTAMP_OFFSET: usize = TEST_HEADER_OFFSET + 8;
const UDP_CHECKSUM_OFFSET: usize = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH + 6;

impl FrameTemplate {
    /// Builds the frame of `flow` for a frame size of `frame_size` bytes with FCS
    /// ([`MIN_FRAME_SIZE`] to [`MAX_FRAME_SIZE`]).
    pub fn new(addresses: &FlowAddresses, flow: u16, frame_size: usize) -> Result<FrameTemplate> {
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&frame_size) {
            return Err(Error::InvalidArgument("frame size outside 64..=1518"));
        }
        let length = frame_size - FCS_LENGTH;
        let ip_length = length - ETHERNET_HEADER_LENGTH;
        let udp_length = ip_length - IPV4_HEADER_LENGTH;
        let mut bytes = vec![0u8; length];
        bytes[0..6].copy_from_slice(&addresses.destination_mac.0);
        bytes[6..12].copy_from_slice(&addresses.source_mac.0);
        bytes[12..14].copy_from_slice(&ETHER_TYPE_IPV4.to_be_bytes());

        let ip = &mut bytes[ETHERNET_HEADER_LENGTH..][..IPV4_HEADER_LENGTH];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_length as u16).to_be_bytes());
        ip[6] = 0x40; // Don't fragment; identification stays 0.
        ip[8] = 64;
        ip[9] = PROTOCOL_UDP;
        ip[12..16].copy_from_slice(&addresses.source_ip.octets());
        ip[16..20].copy_from_slice(&addresses.destination_ip.octets());
        let ip_checksum = !fold(sum_words(ip));
        ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

        let udp_start = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH;
        let udp = &mut bytes[udp_start..];
        udp[0..2].copy_from_slice(&addresses.source_port.to_be_bytes());
        udp[2..4].copy_from_slice(&addresses.destination_port.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_length as u16).to_be_bytes());
        let payload = &mut udp[UDP_HEADER_LENGTH..];
        for (index, byte) in payload.iter_mut().enumerate() {
            *byte = index as u8;
        }
        payload[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        payload[2..4].copy_from_slice(&flow.to_be_bytes());
        payload[4..16].fill(0);

        let mut pseudo_header = [0u8; 12];
        pseudo_header[0..4].copy_from_slice(&addresses.source_ip.octets());
        pseudo_header[4..8].copy_from_slice(&addresses.destination_ip.octets());
        pseudo_header[9] = PROTOCOL_UDP;
        pseudo_header[10..12].copy_from_slice(&(udp_length as u16).to_be_bytes());
        let checksum_base = sum_words(&pseudo_header) + sum_words(&bytes[udp_start..]);
        Ok(FrameTemplate {
            bytes,
            checksum_base,
        })
    }

    /// Writes `sequence` and `timestamp_ns` and returns the finished frame (no FCS).
    pub fn stamp(&mut self, sequence: u32, timestamp_ns: u64) -> &[u8] {
        let sequence_bytes = sequence.to_be_bytes();
        let timestamp_bytes = timestamp_ns.to_be_bytes();
        self.bytes[SEQUENCE_OFFSET..SEQUENCE_OFFSET + 4].copy_from_slice(&sequence_bytes);
        self.bytes[TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 8].copy_from_slice(&timestamp_bytes);
        let sum = self.checksum_base + sum_words(&sequence_bytes) + sum_words(&timestamp_bytes);
        let checksum = match !fold(sum) {
            0 => 0xffff, // 0 means "no checksum" in UDP over IPv4.
            checksum => checksum,
        };
        self.bytes[UDP_CHECKSUM_OFFSET..UDP_CHECKSUM_OFFSET + 2]
            .copy_from_slice(&checksum.to_be_bytes());
        &self.bytes
    }

    /// The frame as last stamped.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Sum of big-endian 16-bit words (an odd last byte is padded with zero). At most 65,535
/// bytes, so the sum fits in 32 bits.
fn sum_words(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = (&mut chunks)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// True when the Internet checksum over `bytes` (including its checksum field) verifies.
pub fn internet_checksum_ok(bytes: &[u8]) -> bool {
    fold(sum_words(bytes)) == 0xffff
}

/// Reads the test header of an Ethernet II / IPv4 / UDP frame carrying one; `None` for any
/// other frame (never panics).
pub fn parse(frame: &[u8]) -> Option<TestHeader> {
    if frame.get(12..14)? != ETHER_TYPE_IPV4.to_be_bytes() {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER_LENGTH..)?;
    let version_and_length = *ip.first()?;
    let ip_header_length = usize::from(version_and_length & 0x0f) * 4;
    if version_and_length >> 4 != 4 || ip_header_length < IPV4_HEADER_LENGTH {
        return None;
    }
    if *ip.get(9)? != PROTOCOL_UDP {
        return None;
    }
    let header = ip.get(ip_header_length + UDP_HEADER_LENGTH..)?;
    let header = header.get(..TEST_HEADER_LENGTH)?;
    if header[0..2] != MAGIC.to_be_bytes() {
        return None;
    }
    Some(TestHeader {
        flow: u16::from_be_bytes([header[2], header[3]]),
        sequence: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        timestamp_ns: u64::from_be_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn addresses() -> FlowAddresses {
        FlowAddresses {
            source_mac: MacAddress([2, 0, 0, 0, 0, 1]),
            destination_mac: MacAddress([2, 0, 0, 0, 0, 2]),
            source_ip: Ipv4Addr::new(10, 0, 0, 1),
            destination_ip: Ipv4Addr::new(10, 0, 1, 1),
            source_port: 40_000,
            destination_port: 9,
        }
    }

    /// Full UDP checksum check: pseudo-header plus the UDP datagram.
    fn udp_checksum_ok(frame: &[u8]) -> bool {
        let udp = &frame[ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&frame[26..34]);
        pseudo.extend_from_slice(&[0, PROTOCOL_UDP]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        internet_checksum_ok(&pseudo)
    }

    #[test]
    fn frames_have_right_sizes_checksums_and_header() {
        for size in [64, 65, 512, 1518] {
            let mut template = FrameTemplate::new(&addresses(), 7, size).unwrap();
            for (sequence, time) in [(0, 0), (1, 123_456_789), (u32::MAX, u64::MAX)] {
                let frame = template.stamp(sequence, time).to_vec();
                assert_eq!(frame.len(), size - FCS_LENGTH);
                assert!(
                    internet_checksum_ok(&frame[14..34]),
                    "IPv4 checksum, size {size}"
                );
                assert!(udp_checksum_ok(&frame), "UDP checksum, size {size}");
                let header = parse(&frame).unwrap();
                assert_eq!(header.flow, 7);
                assert_eq!(header.sequence, sequence);
                assert_eq!(header.timestamp_ns, time);
            }
        }
    }

    #[test]
    fn bad_sizes_are_refused_and_foreign_frames_not_parsed() {
        assert!(FrameTemplate::new(&addresses(), 0, 63).is_err());
        assert!(FrameTemplate::new(&addresses(), 0, 1519).is_err());
        let frame = FrameTemplate::new(&addresses(), 0, 64)
            .unwrap()
            .stamp(1, 2)
            .to_vec();
        for length in 0..frame.len() {
            let short = &frame[..length];
            assert_eq!(parse(short).is_some(), length >= 58, "length {length}");
        }
        let mut other = frame.clone();
        other[42] ^= 1; // magic
        assert_eq!(parse(&other), None);
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), None);
    }
}
