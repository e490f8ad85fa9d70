//! Frames the appliance sends itself (SPEC.md "Builders").
//!
//! Every builder writes into a caller buffer, returns the frame length, and fails with
//! [`Error::BufferTooSmall`] rather than writing part of a frame. Frames are zero-padded
//! to the 60-byte Ethernet minimum ([`ETHERNET_MIN_FRAME_LEN`]; the NIC adds the FCS),
//! 64 bytes when tagged so that a switch stripping the tag still sends a legal frame,
//! since not every NIC pads short frames itself.

use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, ETHERNET_HEADER_LEN, ETHERNET_MIN_FRAME_LEN, EtherType,
    EthernetFrame, EthernetRepr, Ipv4Addr, MacAddress, VlanTag,
};
use crate::{Error, Result};

/// Length of an ARP packet for Ethernet/IPv4.
const ARP_LEN: usize = 28;

/// Length of the frame [`ethernet_frame_with`] writes for `header` and `payload_len`
/// bytes of payload: header plus payload, at least 60 (64 when tagged). `None` on
/// overflow.
pub fn frame_len(header: &EthernetRepr, payload_len: usize) -> Option<usize> {
    let minimum = ETHERNET_MIN_FRAME_LEN + header.header_len() - ETHERNET_HEADER_LEN;
    header
        .header_len()
        .checked_add(payload_len)
        .map(|len| len.max(minimum))
}

/// Writes the frame `header` + `payload` (zero-padded to 60 bytes, 64 when tagged) into `buffer` and
/// returns its length.
pub fn ethernet_frame_with(
    buffer: &mut [u8],
    header: &EthernetRepr,
    payload: &[u8],
) -> Result<usize> {
    let len = frame_len(header, payload.len()).ok_or(Error::BufferTooSmall)?;
    let frame_bytes = buffer.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    let mut frame = EthernetFrame::new_unchecked(&mut *frame_bytes);
    header.emit(&mut frame)?;
    let payload_start = header.header_len();
    let payload_end = payload_start + payload.len();
    frame_bytes[payload_start..payload_end].copy_from_slice(payload);
    frame_bytes[payload_end..].fill(0);
    Ok(len)
}

/// Writes an untagged frame `destination`, `source`, `ethertype`, `payload` (zero-padded
/// to 60 bytes) into `buffer` and returns its length.
pub fn ethernet_frame(
    buffer: &mut [u8],
    destination: MacAddress,
    source: MacAddress,
    ethertype: EtherType,
    payload: &[u8],
) -> Result<usize> {
    let header = EthernetRepr {
        destination,
        source,
        vlan: None,
        ethertype,
    };
    ethernet_frame_with(buffer, &header, payload)
}

/// The ARP packet of a gratuitous ARP announcing that `address` is at `mac`.
///
/// Request form (RFC 5227 "ARP Announcement"): sender = target protocol address =
/// `address`, target hardware address zero. Reply form (RFC 5944 §4.6): sender = target
/// protocol address = `address`, target hardware address = `mac`. Hosts that ignore one
/// form usually honour the other, so fail-over sends both.
pub fn gratuitous_arp_repr(operation: ArpOperation, mac: MacAddress, address: Ipv4Addr) -> ArpRepr {
    ArpRepr {
        operation,
        source_hardware_address: mac,
        source_protocol_address: address,
        target_hardware_address: match operation {
            ArpOperation::Request => MacAddress([0; 6]),
            ArpOperation::Reply => mac,
        },
        target_protocol_address: address,
    }
}

/// Writes a broadcast gratuitous ARP frame from `mac` for `address` (60 bytes untagged,
/// 64 tagged) into `buffer` and returns its length. See [`gratuitous_arp_repr`] for the
/// two forms.
pub fn gratuitous_arp(
    buffer: &mut [u8],
    operation: ArpOperation,
    mac: MacAddress,
    address: Ipv4Addr,
    vlan: Option<VlanTag>,
) -> Result<usize> {
    let header = EthernetRepr {
        destination: MacAddress::BROADCAST,
        source: mac,
        vlan,
        ethertype: EtherType::ARP,
    };
    let mut arp = [0u8; ARP_LEN];
    gratuitous_arp_repr(operation, mac, address)
        .emit(&mut ArpPacket::new_unchecked(&mut arp[..]))?;
    ethernet_frame_with(buffer, &header, &arp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddress = MacAddress([0x02, 0x44, 0x50, 0, 0, 1]);
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    #[test]
    fn ethernet_frame_pads_and_checks_room() {
        let mut buffer = [0xaau8; 100];
        let len = ethernet_frame(
            &mut buffer,
            MacAddress::BROADCAST,
            MAC,
            EtherType(0x88B5),
            b"hi",
        )
        .unwrap();
        assert_eq!(len, 60);
        let frame = EthernetFrame::new_checked(&buffer[..len]).unwrap();
        assert_eq!(frame.destination(), MacAddress::BROADCAST);
        assert_eq!(frame.source(), MAC);
        assert_eq!(frame.ethertype(), EtherType(0x88B5));
        assert_eq!(&frame.payload()[..2], b"hi");
        assert!(frame.payload()[2..].iter().all(|&b| b == 0));
        assert_eq!(buffer[60], 0xaa, "nothing written past the frame");

        let payload = [7u8; 100];
        let mut exact = [0u8; 114];
        assert_eq!(
            ethernet_frame(&mut exact, MAC, MAC, EtherType::IPV4, &payload),
            Ok(114)
        );
        let mut short = [0u8; 113];
        assert_eq!(
            ethernet_frame(&mut short, MAC, MAC, EtherType::IPV4, &payload),
            Err(Error::BufferTooSmall)
        );
        let mut tiny = [0u8; 59];
        assert_eq!(
            ethernet_frame(&mut tiny, MAC, MAC, EtherType::IPV4, &[]),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(
            frame_len(&EthernetRepr::parse(&frame).unwrap(), usize::MAX),
            None
        );
    }

    #[test]
    fn gratuitous_arp_parses_back() {
        for operation in [ArpOperation::Request, ArpOperation::Reply] {
            for vlan in [None, Some(VlanTag::new(100))] {
                let mut buffer = [0u8; 64];
                let len = gratuitous_arp(&mut buffer, operation, MAC, ADDRESS, vlan).unwrap();
                assert_eq!(len, if vlan.is_some() { 64 } else { 60 });
                let frame = EthernetFrame::new_checked(&buffer[..len]).unwrap();
                assert_eq!(frame.destination(), MacAddress::BROADCAST);
                assert_eq!(frame.source(), MAC);
                assert_eq!(frame.vlan_tag(), vlan);
                assert_eq!(frame.inner_ethertype(), EtherType::ARP);
                let packet = ArpPacket::new_checked(frame.payload()).unwrap();
                let repr = ArpRepr::parse(&packet).unwrap();
                assert!(repr.is_gratuitous());
                assert_eq!(repr.operation, operation);
                assert_eq!(repr.source_hardware_address, MAC);
                assert_eq!(repr.source_protocol_address, ADDRESS);
                assert_eq!(repr.target_protocol_address, ADDRESS);
                let expected_target = match operation {
                    ArpOperation::Request => MacAddress([0; 6]),
                    ArpOperation::Reply => MAC,
                };
                assert_eq!(repr.target_hardware_address, expected_target);
                // Padding after the 28 ARP bytes is zero.
                let header_len = frame.header_len();
                assert!(buffer[header_len + 28..len].iter().all(|&b| b == 0));
                assert!(header_len >= ETHERNET_HEADER_LEN);
            }
        }
        let mut short = [0u8; 63];
        assert_eq!(
            gratuitous_arp(
                &mut short,
                ArpOperation::Request,
                MAC,
                ADDRESS,
                Some(VlanTag::new(1))
            ),
            Err(Error::BufferTooSmall)
        );
    }
}
