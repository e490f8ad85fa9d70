//! IPv4 headers (RFC 791) with checksum verification (SPEC.md "IPv4").

use core::fmt;

use super::checksum;
use super::{Ipv4Addr, read_ipv4, read_u16, write_u16};
use crate::{Error, Result};

/// An IP protocol number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// ICMP.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// TCP.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// UDP.
    pub const UDP: IpProtocol = IpProtocol(17);
}

impl fmt::Debug for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpProtocol({})", self.0)
    }
}

/// Field offsets within the header.
mod field {
    use core::ops::Range;
    pub const VERSION_AND_HEADER_LEN: usize = 0;
    pub const DSCP_AND_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENTIFICATION: Range<usize> = 4..6;
    pub const FLAGS_AND_FRAGMENT_OFFSET: Range<usize> = 6..8;
    pub const TIME_TO_LIVE: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const IPV4_MIN_HEADER_LEN: usize = field::DESTINATION.end;

const FLAG_DONT_FRAGMENT: u16 = 0x4000;
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;

/// A zero-copy view of an IPv4 packet (the Ethernet payload; padding allowed behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is short.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`Ipv4Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the lengths: the buffer holds 20 bytes (`Truncated`), the header length is
    /// at least 20 (`Malformed`), the buffer holds the header (`Truncated`), the total
    /// length is at least the header length (`Malformed`), and the buffer holds the total
    /// length (`Truncated`). The version and checksum are [`Ipv4Repr::parse`]'s business.
    pub fn check_len(&self) -> Result {
        let len = self.buffer.as_ref().len();
        if len < IPV4_MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < IPV4_MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if len < total_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4 for IPv4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_AND_HEADER_LEN] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_AND_HEADER_LEN] & 0x0f) * 4
    }

    /// Differentiated services code point.
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_AND_ECN] >> 2
    }

    /// Explicit congestion notification bits.
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_AND_ECN] & 3
    }

    /// Total length of header and payload.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN.start)
    }

    /// Identification.
    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENTIFICATION.start)
    }

    fn flags_and_fragment_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_AND_FRAGMENT_OFFSET.start)
    }

    /// The don't-fragment flag.
    pub fn dont_fragment(&self) -> bool {
        self.flags_and_fragment_offset() & FLAG_DONT_FRAGMENT != 0
    }

    /// The more-fragments flag.
    pub fn more_fragments(&self) -> bool {
        self.flags_and_fragment_offset() & FLAG_MORE_FRAGMENTS != 0
    }

    /// Fragment offset in bytes.
    pub fn fragment_offset(&self) -> u16 {
        (self.flags_and_fragment_offset() & FRAGMENT_OFFSET_MASK) * 8
    }

    /// True for any fragment (more-fragments set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    /// Time to live.
    pub fn time_to_live(&self) -> u8 {
        self.buffer.as_ref()[field::TIME_TO_LIVE]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Source address.
    pub fn source(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SOURCE.start)
    }

    /// Destination address.
    pub fn destination(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DESTINATION.start)
    }

    /// True when the header checksum is right (the packet must be checked).
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_len()];
        checksum::fold(checksum::accumulate(0, header)) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The options (the packet must be checked).
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[IPV4_MIN_HEADER_LEN..self.header_len()]
    }

    /// The payload up to the total length, without link padding (the packet must be
    /// checked).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the time to live (the checksum must be refilled after).
    pub fn set_time_to_live(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TIME_TO_LIVE] = ttl;
    }

    /// Sets the source address (the checksum must be refilled after).
    pub fn set_source(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.octets());
    }

    /// Sets the destination address (the checksum must be refilled after).
    pub fn set_destination(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.octets());
    }

    /// Computes and writes the header checksum (the packet must be checked).
    pub fn fill_checksum(&mut self) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, 0);
        let header_len = self.header_len();
        let sum = checksum::internet_checksum(&self.buffer.as_ref()[..header_len]);
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// The payload up to the total length, mutable (the packet must be checked).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// A validated IPv4 header (options are skipped, fragments are accepted and flagged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub source: Ipv4Addr,
    /// Destination address.
    pub destination: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub time_to_live: u8,
}

impl Ipv4Repr {
    /// Validates a packet: lengths ([`Ipv4Packet::check_len`]), version 4
    /// (`Unsupported` otherwise), header checksum (`BadChecksum`).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Unsupported);
        }
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(Ipv4Repr {
            source: packet.source(),
            destination: packet.destination(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            time_to_live: packet.time_to_live(),
        })
    }

    /// Bytes of header [`Ipv4Repr::emit`] writes: 20.
    pub const fn buffer_len(&self) -> usize {
        IPV4_MIN_HEADER_LEN
    }

    /// Writes a 20-byte header (no options, identification 0, don't-fragment set) with its
    /// checksum into the start of `packet`. `BufferTooSmall` if the buffer is shorter than
    /// the header, `Malformed` if the total length would exceed 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) -> Result {
        let total_len = self
            .payload_len
            .checked_add(IPV4_MIN_HEADER_LEN)
            .and_then(|len| u16::try_from(len).ok())
            .ok_or(Error::Malformed)?;
        let bytes = packet.buffer.as_mut();
        if bytes.len() < IPV4_MIN_HEADER_LEN {
            return Err(Error::BufferTooSmall);
        }
        bytes[field::VERSION_AND_HEADER_LEN] = 0x45;
        bytes[field::DSCP_AND_ECN] = 0;
        write_u16(bytes, field::TOTAL_LEN.start, total_len);
        write_u16(bytes, field::IDENTIFICATION.start, 0);
        write_u16(
            bytes,
            field::FLAGS_AND_FRAGMENT_OFFSET.start,
            FLAG_DONT_FRAGMENT,
        );
        bytes[field::TIME_TO_LIVE] = self.time_to_live;
        bytes[field::PROTOCOL] = self.protocol.0;
        bytes[field::SOURCE].copy_from_slice(&self.source.octets());
        bytes[field::DESTINATION].copy_from_slice(&self.destination.octets());
        write_u16(bytes, field::CHECKSUM.start, 0);
        let sum = checksum::internet_checksum(&bytes[..IPV4_MIN_HEADER_LEN]);
        write_u16(bytes, field::CHECKSUM.start, sum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20-byte TCP/IPv4 header 172.16.10.99 -> 172.16.10.12 with no payload; the tests
    /// refill its checksum field.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x14, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0xb8, 0x75, 0xac, 0x10, 0x0a,
        0x63, 0xac, 0x10, 0x0a, 0x0c,
    ];

    #[test]
    fn verify_and_fields() {
        let mut header = HEADER;
        let mut packet = Ipv4Packet::new_checked(&mut header[..]).unwrap();
        packet.fill_checksum();
        let expected = packet.checksum();
        let packet = Ipv4Packet::new_checked(&header[..]).unwrap();
        assert!(packet.verify_checksum());
        assert_eq!(packet.checksum(), expected);
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 20);
        assert!(packet.dont_fragment());
        assert!(!packet.is_fragment());
        assert_eq!(packet.time_to_live(), 64);
        assert_eq!(packet.protocol(), IpProtocol::TCP);
        assert_eq!(packet.source(), Ipv4Addr::new(172, 16, 10, 99));
        assert_eq!(packet.destination(), Ipv4Addr::new(172, 16, 10, 12));
        assert!(packet.payload().is_empty());
        let repr = Ipv4Repr::parse(&packet).unwrap();
        assert_eq!(repr.payload_len, 0);
    }

    #[test]
    fn known_checksum() {
        // The worked example of the Wikipedia article "Internet checksum": the header
        // 4500 0073 0000 4000 4011 ____ c0a8 0001 c0a8 00c7 has checksum b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum::internet_checksum(&header), 0xb861);
    }

    #[test]
    fn bad_checksum_and_version() {
        let mut header = HEADER;
        Ipv4Packet::new_unchecked(&mut header[..]).fill_checksum();
        header[15] ^= 1;
        let packet = Ipv4Packet::new_checked(&header[..]).unwrap();
        assert!(!packet.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&packet), Err(Error::BadChecksum));
        let mut header = HEADER;
        header[0] = 0x65;
        Ipv4Packet::new_unchecked(&mut header[..]).fill_checksum();
        let packet = Ipv4Packet::new_checked(&header[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet), Err(Error::Unsupported));
    }

    #[test]
    fn length_errors() {
        for len in 0..20 {
            assert_eq!(
                Ipv4Packet::new_checked(&HEADER[..len]),
                Err(Error::Truncated)
            );
        }
        let mut header = HEADER;
        header[0] = 0x44; // IHL 16 bytes
        assert_eq!(Ipv4Packet::new_checked(&header[..]), Err(Error::Malformed));
        header[0] = 0x46; // IHL 24 bytes, buffer 20
        assert_eq!(Ipv4Packet::new_checked(&header[..]), Err(Error::Truncated));
        let mut header = HEADER;
        header[3] = 19; // total length below header length
        assert_eq!(Ipv4Packet::new_checked(&header[..]), Err(Error::Malformed));
        header[3] = 21; // total length beyond buffer
        assert_eq!(Ipv4Packet::new_checked(&header[..]), Err(Error::Truncated));
    }

    #[test]
    fn emit_round_trip_with_padding() {
        let repr = Ipv4Repr {
            source: Ipv4Addr::new(10, 0, 0, 1),
            destination: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::UDP,
            payload_len: 4,
            time_to_live: 63,
        };
        let mut buffer = [0xeeu8; 30]; // 6 bytes of padding behind the packet
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buffer[..]))
            .unwrap();
        let packet = Ipv4Packet::new_checked(&buffer[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet), Ok(repr));
        assert_eq!(packet.payload().len(), 4);
        let huge = Ipv4Repr {
            payload_len: 65_516,
            ..repr
        };
        assert_eq!(
            huge.emit(&mut Ipv4Packet::new_unchecked(&mut buffer[..])),
            Err(Error::Malformed)
        );
    }
}
