//! Ethernet II frames with at most one 802.1Q tag (SPEC.md "Ethernet").

use core::fmt;

use super::{MacAddress, read_mac, read_u16, write_u16};
use crate::{Error, Result};

/// An EtherType (or TPID) value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP.
    pub const ARP: EtherType = EtherType(0x0806);
    /// An 802.1Q VLAN tag follows (TPID).
    pub const VLAN: EtherType = EtherType(0x8100);
    /// IPv6.
    pub const IPV6: EtherType = EtherType(0x86DD);
}

impl fmt::Debug for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EtherType({:#06x})", self.0)
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// Field offsets within the frame.
mod field {
    use core::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// Payload of an untagged frame.
    pub const PAYLOAD: usize = 14;
    /// Tag control information of a tagged frame (PCP 3 bits, DEI 1 bit, VID 12 bits).
    pub const VLAN_TCI: Range<usize> = 14..16;
    /// The EtherType behind the tag.
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
    /// Payload of a tagged frame.
    pub const TAGGED_PAYLOAD: usize = 18;
}

/// Length of an untagged Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = field::PAYLOAD;
/// Length of an Ethernet header with one 802.1Q tag.
pub const ETHERNET_TAGGED_HEADER_LEN: usize = field::TAGGED_PAYLOAD;
/// Shortest frame on the wire, without the FCS; [`crate::build`] pads to it.
pub const ETHERNET_MIN_FRAME_LEN: usize = 60;

const HEADER_LEN: usize = ETHERNET_HEADER_LEN;
const TAGGED_HEADER_LEN: usize = ETHERNET_TAGGED_HEADER_LEN;

/// An 802.1Q tag's control information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTag {
    /// Priority code point (0..=7).
    pub priority: u8,
    /// Drop eligible indicator.
    pub drop_eligible: bool,
    /// VLAN identifier (0..=4095; 0 means "priority tag only").
    pub id: u16,
}

impl VlanTag {
    /// A tag with priority 0 for VLAN `id` (masked to 12 bits).
    pub const fn new(id: u16) -> Self {
        VlanTag {
            priority: 0,
            drop_eligible: false,
            id: id & 0x0fff,
        }
    }

    /// Decodes the 16-bit tag control information.
    pub const fn from_tci(tci: u16) -> Self {
        VlanTag {
            priority: (tci >> 13) as u8,
            drop_eligible: tci & 0x1000 != 0,
            id: tci & 0x0fff,
        }
    }

    /// Encodes the 16-bit tag control information (fields masked to their widths).
    pub const fn tci(&self) -> u16 {
        ((self.priority as u16 & 7) << 13)
            | ((self.drop_eligible as u16) << 12)
            | (self.id & 0x0fff)
    }
}

/// A zero-copy view of an Ethernet II frame (no FCS), aware of one 802.1Q tag.
///
/// Only TPID 0x8100 counts as a tag; anything else (0x88A8 included) is an ordinary
/// EtherType. A second tag behind the first is payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is short.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`EthernetFrame::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Truncated` unless the buffer holds the whole header: 14 bytes, or 18 when the
    /// EtherType field says an 802.1Q tag follows.
    pub fn check_len(&self) -> Result {
        let bytes = self.buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if read_u16(bytes, field::ETHERTYPE.start) == EtherType::VLAN.0
            && bytes.len() < TAGGED_HEADER_LEN
        {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    pub fn destination(&self) -> MacAddress {
        read_mac(self.buffer.as_ref(), field::DESTINATION.start)
    }

    /// Source MAC address.
    pub fn source(&self) -> MacAddress {
        read_mac(self.buffer.as_ref(), field::SOURCE.start)
    }

    /// The outer EtherType field (0x8100 for a tagged frame).
    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::ETHERTYPE.start))
    }

    /// True when an 802.1Q tag follows the addresses.
    pub fn is_tagged(&self) -> bool {
        self.ethertype() == EtherType::VLAN
    }

    /// The 802.1Q tag, if any.
    pub fn vlan_tag(&self) -> Option<VlanTag> {
        self.is_tagged()
            .then(|| VlanTag::from_tci(read_u16(self.buffer.as_ref(), field::VLAN_TCI.start)))
    }

    /// The VLAN the frame belongs to for learning: the tag's VID, or 0 when untagged or
    /// priority-tagged.
    pub fn vlan_id(&self) -> u16 {
        self.vlan_tag().map_or(0, |tag| tag.id)
    }

    /// The EtherType of the payload: behind the tag when tagged.
    pub fn inner_ethertype(&self) -> EtherType {
        if self.is_tagged() {
            EtherType(read_u16(self.buffer.as_ref(), field::INNER_ETHERTYPE.start))
        } else {
            self.ethertype()
        }
    }

    /// Length of the header, tag included: 14 or 18.
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// The payload after the header (and tag), padding included.
    pub fn payload(&self) -> &'a [u8] {
        let header_len = self.header_len();
        &self.buffer.as_ref()[header_len..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_destination(&mut self, mac: MacAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC address.
    pub fn set_source(&mut self, mac: MacAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Sets the outer EtherType field.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE.start, ethertype.0);
    }

    /// Sets the tag control information (the frame must already be tagged and checked).
    pub fn set_vlan_tag(&mut self, tag: VlanTag) {
        write_u16(self.buffer.as_mut(), field::VLAN_TCI.start, tag.tci());
    }

    /// Sets the EtherType behind the tag (the frame must already be tagged and checked).
    pub fn set_inner_ethertype(&mut self, ethertype: EtherType) {
        write_u16(
            self.buffer.as_mut(),
            field::INNER_ETHERTYPE.start,
            ethertype.0,
        );
    }

    /// The payload after the header (and tag), mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[header_len..]
    }
}

/// A validated Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Destination MAC address.
    pub destination: MacAddress,
    /// Source MAC address.
    pub source: MacAddress,
    /// The 802.1Q tag, if any.
    pub vlan: Option<VlanTag>,
    /// The payload's EtherType (behind the tag when tagged).
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self> {
        frame.check_len()?;
        Ok(EthernetRepr {
            destination: frame.destination(),
            source: frame.source(),
            vlan: frame.vlan_tag(),
            ethertype: frame.inner_ethertype(),
        })
    }

    /// Length of the header this emits: 14, or 18 with a tag.
    pub const fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header into the start of `frame` (at least [`EthernetRepr::header_len`]
    /// bytes; `BufferTooSmall` otherwise).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) -> Result {
        if frame.buffer.as_ref().len() < self.header_len() {
            return Err(Error::BufferTooSmall);
        }
        frame.set_destination(self.destination);
        frame.set_source(self.source);
        match self.vlan {
            Some(tag) => {
                frame.set_ethertype(EtherType::VLAN);
                frame.set_vlan_tag(tag);
                frame.set_inner_ethertype(self.ethertype);
            }
            None => frame.set_ethertype(self.ethertype),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06, 0xaa, 0xbb,
    ];
    const TAGGED: [u8; 20] = [
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x81, 0x00, 0xa0, 0x2a, 0x08, 0x00, 0x45, 0,
    ];

    #[test]
    fn untagged_fields() {
        let frame = EthernetFrame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(frame.destination(), MacAddress::BROADCAST);
        assert_eq!(frame.source(), MacAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(frame.ethertype(), EtherType::ARP);
        assert_eq!(frame.inner_ethertype(), EtherType::ARP);
        assert_eq!(frame.vlan_tag(), None);
        assert_eq!(frame.vlan_id(), 0);
        assert_eq!(frame.header_len(), 14);
        assert_eq!(frame.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn tagged_fields_skip_one_tag() {
        let frame = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert!(frame.is_tagged());
        assert_eq!(frame.ethertype(), EtherType::VLAN);
        assert_eq!(frame.inner_ethertype(), EtherType::IPV4);
        assert_eq!(
            frame.vlan_tag(),
            Some(VlanTag {
                priority: 5,
                drop_eligible: false,
                id: 42
            })
        );
        assert_eq!(frame.vlan_id(), 42);
        assert_eq!(frame.payload(), &[0x45, 0]);
    }

    #[test]
    fn runts_are_truncated() {
        for len in 0..14 {
            assert_eq!(
                EthernetFrame::new_checked(&UNTAGGED[..len]),
                Err(Error::Truncated)
            );
        }
        for len in 14..18 {
            assert_eq!(
                EthernetFrame::new_checked(&TAGGED[..len]),
                Err(Error::Truncated),
                "tagged frame of {len} bytes"
            );
        }
        assert!(EthernetFrame::new_checked(&TAGGED[..18]).is_ok());
    }

    #[test]
    fn repr_round_trip() {
        for vlan in [None, Some(VlanTag::new(7)), Some(VlanTag::from_tci(0xffff))] {
            let repr = EthernetRepr {
                destination: MacAddress([1, 2, 3, 4, 5, 6]),
                source: MacAddress([2, 3, 4, 5, 6, 7]),
                vlan,
                ethertype: EtherType::IPV6,
            };
            let mut buffer = [0u8; 18];
            let mut frame = EthernetFrame::new_unchecked(&mut buffer[..]);
            repr.emit(&mut frame).unwrap();
            let frame = EthernetFrame::new_checked(&buffer[..repr.header_len()]).unwrap();
            assert_eq!(EthernetRepr::parse(&frame), Ok(repr));
        }
        let mut short = [0u8; 17];
        let repr = EthernetRepr {
            destination: MacAddress::BROADCAST,
            source: MacAddress::default(),
            vlan: Some(VlanTag::new(1)),
            ethertype: EtherType::ARP,
        };
        assert_eq!(
            repr.emit(&mut EthernetFrame::new_unchecked(&mut short[..])),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn tci_round_trip() {
        for tci in [0u16, 1, 0x0fff, 0x1000, 0xe000, 0xffff, 0xa02a] {
            assert_eq!(VlanTag::from_tci(tci).tci(), tci);
        }
    }
}
