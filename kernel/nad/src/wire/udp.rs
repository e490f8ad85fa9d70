//! UDP datagrams (RFC 768) over IPv4 (SPEC.md "UDP").

use super::checksum;
use super::{Ipv4Addr, read_u16, write_u16};
use crate::wire::IpProtocol;
use crate::{Error, Result};

/// Field offsets within the datagram.
mod field {
    use core::ops::Range;
    pub const SOURCE_PORT: Range<usize> = 0..2;
    pub const DESTINATION_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = field::PAYLOAD;

/// A zero-copy view of a UDP datagram (the IPv4 payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is short.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps `buffer` after [`UdpPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the lengths: the buffer holds the 8-byte header (`Truncated`), the length
    /// field is at least 8 (`Malformed`), and the buffer holds that length (`Truncated`).
    pub fn check_len(&self) -> Result {
        let len = self.buffer.as_ref().len();
        if len < UDP_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let declared = usize::from(self.length());
        if declared < UDP_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < declared {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn source_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SOURCE_PORT.start)
    }

    /// Destination port.
    pub fn destination_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DESTINATION_PORT.start)
    }

    /// Length field: header plus payload.
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Checksum field (0: the sender computed none).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// True when the checksum is right for a datagram from `source` to `destination`, or
    /// absent (0, allowed over IPv4). The packet must be checked.
    pub fn verify_checksum(&self, source: Ipv4Addr, destination: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let length = self.length();
        let sum = checksum::ipv4_pseudo_header(source, destination, IpProtocol::UDP.0, length);
        let sum = checksum::accumulate(sum, &self.buffer.as_ref()[..usize::from(length)]);
        checksum::fold(sum) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The payload up to the length field (the packet must be checked).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[UDP_HEADER_LEN..usize::from(self.length())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_source_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SOURCE_PORT.start, port);
    }

    /// Sets the destination port.
    pub fn set_destination_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DESTINATION_PORT.start, port);
    }

    /// Sets the length field.
    pub fn set_length(&mut self, length: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, length);
    }

    /// Computes and writes the checksum for `source` to `destination` (0 is sent as
    /// 0xffff). The packet must be checked.
    pub fn fill_checksum(&mut self, source: Ipv4Addr, destination: Ipv4Addr) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, 0);
        let length = self.length();
        let sum = checksum::ipv4_pseudo_header(source, destination, IpProtocol::UDP.0, length);
        let sum = checksum::accumulate(sum, &self.buffer.as_ref()[..usize::from(length)]);
        let value = match !checksum::fold(sum) {
            0 => 0xffff,
            value => value,
        };
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// The payload up to the length field, mutable (the packet must be checked).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.length());
        &mut self.buffer.as_mut()[UDP_HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const DESTINATION: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);

    fn datagram() -> [u8; 12] {
        let mut bytes = [0u8; 12];
        let mut packet = UdpPacket::new_unchecked(&mut bytes[..]);
        packet.set_source_port(5353);
        packet.set_destination_port(53);
        packet.set_length(11);
        packet.payload_mut().copy_from_slice(b"abc");
        packet.fill_checksum(SOURCE, DESTINATION);
        bytes
    }

    #[test]
    fn checksum_round_trip() {
        let bytes = datagram();
        let packet = UdpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.source_port(), 5353);
        assert_eq!(packet.destination_port(), 53);
        assert_eq!(packet.payload(), b"abc");
        assert!(packet.verify_checksum(SOURCE, DESTINATION));
        assert!(!packet.verify_checksum(DESTINATION, Ipv4Addr::new(1, 1, 1, 1)));
        let mut bad = bytes;
        bad[9] ^= 0x40;
        let packet = UdpPacket::new_checked(&bad[..]).unwrap();
        assert!(!packet.verify_checksum(SOURCE, DESTINATION));
        let mut none = bytes;
        none[6..8].fill(0);
        let packet = UdpPacket::new_checked(&none[..]).unwrap();
        assert!(packet.verify_checksum(SOURCE, DESTINATION));
    }

    #[test]
    fn length_errors() {
        let bytes = datagram();
        for len in 0..8 {
            assert_eq!(UdpPacket::new_checked(&bytes[..len]), Err(Error::Truncated));
        }
        assert_eq!(UdpPacket::new_checked(&bytes[..10]), Err(Error::Truncated));
        let mut bad = bytes;
        bad[5] = 7;
        assert_eq!(UdpPacket::new_checked(&bad[..]), Err(Error::Malformed));
    }
}
