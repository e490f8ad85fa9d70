//! ARP (RFC 826): a view of any hardware/protocol pair, a representation of Ethernet/IPv4
//! only (SPEC.md "ARP").

use super::{Ipv4Addr, MacAddress, read_ipv4, read_mac, read_u16, write_u16};
use crate::{Error, Result};

/// Hardware type of Ethernet.
const HARDWARE_ETHERNET: u16 = 1;
/// Protocol type of IPv4 (its EtherType).
const PROTOCOL_IPV4: u16 = 0x0800;

/// Field offsets within the packet. The addresses follow `OPERATION` with the lengths the
/// packet declares: sender hardware, sender protocol, target hardware, target protocol.
mod field {
    use core::ops::Range;
    pub const HARDWARE_TYPE: Range<usize> = 0..2;
    pub const PROTOCOL_TYPE: Range<usize> = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Range<usize> = 6..8;
    pub const ADDRESSES: usize = 8;
    /// The addresses of an Ethernet/IPv4 packet.
    pub const SOURCE_MAC: Range<usize> = 8..14;
    pub const SOURCE_IPV4: Range<usize> = 14..18;
    pub const TARGET_MAC: Range<usize> = 18..24;
    pub const TARGET_IPV4: Range<usize> = 24..28;
}

/// Length of the fixed part (up to and including the operation).
const FIXED_LEN: usize = field::ADDRESSES;
/// Length of an Ethernet/IPv4 ARP packet.
const ETHERNET_IPV4_LEN: usize = field::TARGET_IPV4.end;

/// An ARP operation the representation handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// Who has the target protocol address? (1)
    Request,
    /// The sender has the sender protocol address. (2)
    Reply,
}

impl ArpOperation {
    /// The wire value.
    pub const fn code(self) -> u16 {
        match self {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
        }
    }

    /// The operation of a wire value; `Unsupported` for others (RARP, InARP).
    pub const fn from_code(code: u16) -> Result<Self> {
        match code {
            1 => Ok(ArpOperation::Request),
            2 => Ok(ArpOperation::Reply),
            _ => Err(Error::Unsupported),
        }
    }
}

/// A zero-copy view of an ARP packet (the Ethernet payload, padding allowed behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is short.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after [`ArpPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` unless the buffer holds the fixed part and the four addresses at the
    /// lengths the packet declares.
    pub fn check_len(&self) -> Result {
        let bytes = self.buffer.as_ref();
        if bytes.len() < FIXED_LEN {
            return Err(Error::Truncated);
        }
        let addresses = 2 * (usize::from(self.hardware_len()) + usize::from(self.protocol_len()));
        if bytes.len() < FIXED_LEN + addresses {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HARDWARE_TYPE.start)
    }

    /// Protocol type (0x0800 = IPv4).
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PROTOCOL_TYPE.start)
    }

    /// Length of a hardware address.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HARDWARE_LEN]
    }

    /// Length of a protocol address.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL_LEN]
    }

    /// Operation code.
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPERATION.start)
    }

    fn address(&self, index: usize, hardware: bool) -> &[u8] {
        let hardware_len = usize::from(self.hardware_len());
        let protocol_len = usize::from(self.protocol_len());
        let pair = hardware_len + protocol_len;
        let start = field::ADDRESSES + pair * index + if hardware { 0 } else { hardware_len };
        let len = if hardware { hardware_len } else { protocol_len };
        &self.buffer.as_ref()[start..start + len]
    }

    /// Sender hardware address, at the declared length.
    pub fn source_hardware_address(&self) -> &[u8] {
        self.address(0, true)
    }

    /// Sender protocol address, at the declared length.
    pub fn source_protocol_address(&self) -> &[u8] {
        self.address(0, false)
    }

    /// Target hardware address, at the declared length.
    pub fn target_hardware_address(&self) -> &[u8] {
        self.address(1, true)
    }

    /// Target protocol address, at the declared length.
    pub fn target_protocol_address(&self) -> &[u8] {
        self.address(1, false)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes the fixed part of an Ethernet/IPv4 packet with `operation`.
    fn set_ethernet_ipv4_header(&mut self, operation: ArpOperation) {
        let bytes = self.buffer.as_mut();
        write_u16(bytes, field::HARDWARE_TYPE.start, HARDWARE_ETHERNET);
        write_u16(bytes, field::PROTOCOL_TYPE.start, PROTOCOL_IPV4);
        bytes[field::HARDWARE_LEN] = 6;
        bytes[field::PROTOCOL_LEN] = 4;
        write_u16(bytes, field::OPERATION.start, operation.code());
    }
}

/// A validated Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: ArpOperation,
    /// Sender hardware address.
    pub source_hardware_address: MacAddress,
    /// Sender protocol address.
    pub source_protocol_address: Ipv4Addr,
    /// Target hardware address.
    pub target_hardware_address: MacAddress,
    /// Target protocol address.
    pub target_protocol_address: Ipv4Addr,
}

impl ArpRepr {
    /// Validates a packet: `Truncated` if short, `Unsupported` unless it is Ethernet/IPv4
    /// (types 1 and 0x0800, lengths 6 and 4) with operation request or reply.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != PROTOCOL_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        let operation = ArpOperation::from_code(packet.operation())?;
        let bytes = packet.buffer.as_ref();
        Ok(ArpRepr {
            operation,
            source_hardware_address: read_mac(bytes, field::SOURCE_MAC.start),
            source_protocol_address: read_ipv4(bytes, field::SOURCE_IPV4.start),
            target_hardware_address: read_mac(bytes, field::TARGET_MAC.start),
            target_protocol_address: read_ipv4(bytes, field::TARGET_IPV4.start),
        })
    }

    /// Bytes [`ArpRepr::emit`] writes: 28.
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_IPV4_LEN
    }

    /// True for a gratuitous ARP: sender and target protocol addresses are equal.
    pub fn is_gratuitous(&self) -> bool {
        self.source_protocol_address == self.target_protocol_address
    }

    /// Writes the packet into the start of `packet` (`BufferTooSmall` if shorter than
    /// [`ArpRepr::buffer_len`]).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) -> Result {
        if packet.buffer.as_ref().len() < ETHERNET_IPV4_LEN {
            return Err(Error::BufferTooSmall);
        }
        packet.set_ethernet_ipv4_header(self.operation);
        let bytes = packet.buffer.as_mut();
        bytes[field::SOURCE_MAC].copy_from_slice(&self.source_hardware_address.0);
        bytes[field::SOURCE_IPV4].copy_from_slice(&self.source_protocol_address.octets());
        bytes[field::TARGET_MAC].copy_from_slice(&self.target_hardware_address.0);
        bytes[field::TARGET_IPV4].copy_from_slice(&self.target_protocol_address.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request "who has 192.168.1.2? tell 192.168.1.1" as captured, with 18 bytes of
    /// Ethernet padding behind it.
    const REQUEST: [u8; 46] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 192,
        168, 1, 1, 0, 0, 0, 0, 0, 0, 192, 168, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ];

    #[test]
    fn parse_request() {
        let packet = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        let repr = ArpRepr::parse(&packet).unwrap();
        assert_eq!(repr.operation, ArpOperation::Request);
        assert_eq!(
            repr.source_hardware_address,
            MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(repr.source_protocol_address, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(repr.target_hardware_address, MacAddress([0; 6]));
        assert_eq!(repr.target_protocol_address, Ipv4Addr::new(192, 168, 1, 2));
        assert!(!repr.is_gratuitous());
        assert_eq!(packet.source_protocol_address(), &[192, 168, 1, 1]);
    }

    #[test]
    fn emit_round_trip() {
        let repr = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_address: MacAddress([2, 0, 0, 0, 0, 9]),
            source_protocol_address: Ipv4Addr::new(10, 0, 0, 9),
            target_hardware_address: MacAddress([2, 0, 0, 0, 0, 8]),
            target_protocol_address: Ipv4Addr::new(10, 0, 0, 8),
        };
        let mut buffer = [0u8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buffer[..]))
            .unwrap();
        let packet = ArpPacket::new_checked(&buffer[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Ok(repr));
        let mut short = [0u8; 27];
        assert_eq!(
            repr.emit(&mut ArpPacket::new_unchecked(&mut short[..])),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn rejects_truncated_and_unsupported() {
        for len in 0..28 {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]),
                Err(Error::Truncated),
                "{len}"
            );
        }
        let mut other = REQUEST;
        other[7] = 3; // RARP request
        let packet = ArpPacket::new_checked(&other[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Err(Error::Unsupported));
        let mut other = REQUEST;
        other[0..2].copy_from_slice(&6u16.to_be_bytes()); // IEEE 802 hardware
        let packet = ArpPacket::new_checked(&other[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Err(Error::Unsupported));
        // Declared lengths larger than the buffer: the view refuses it.
        let mut other = REQUEST;
        other[4] = 255;
        other[5] = 255;
        assert_eq!(ArpPacket::new_checked(&other[..]), Err(Error::Truncated));
        // Smaller declared lengths: the view accepts, the repr does not.
        let mut other = REQUEST;
        other[4] = 1;
        let packet = ArpPacket::new_checked(&other[..]).unwrap();
        assert_eq!(packet.source_hardware_address().len(), 1);
        assert_eq!(ArpRepr::parse(&packet), Err(Error::Unsupported));
    }
}
