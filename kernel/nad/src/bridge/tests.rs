//! Bridge behaviour, as scripts in virtual time.

use std::vec::Vec;

use super::*;
use crate::build;
use crate::wire::{EtherType, EthernetRepr, VlanTag};

const LAN: PortId = PortId::LAN;
const WAN: PortId = PortId::WAN;

fn station(n: u8) -> MacAddress {
    MacAddress([0x02, 0, 0, 0, 0, n])
}

fn at(seconds: u64) -> Instant {
    Instant::from_millis(seconds * 1_000)
}

fn frame(destination: MacAddress, source: MacAddress) -> Vec<u8> {
    tagged(destination, source, None)
}

fn tagged(destination: MacAddress, source: MacAddress, vlan: Option<u16>) -> Vec<u8> {
    let header = EthernetRepr {
        destination,
        source,
        vlan: vlan.map(VlanTag::new),
        ethertype: EtherType::IPV4,
    };
    let mut buffer = [0u8; 64];
    let len = build::ethernet_frame_with(&mut buffer, &header, &[0x45; 20]).unwrap();
    buffer[..len].to_vec()
}

fn bridge() -> Bridge {
    Bridge::new(BridgeConfig::default()).unwrap()
}

#[test]
fn learns_then_forwards() {
    let mut bridge = bridge();
    let (a, b) = (station(1), station(2));
    assert_eq!(bridge.decide(LAN, &frame(b, a), at(0)), Decision::Flood);
    assert_eq!(
        bridge.decide(WAN, &frame(a, b), at(1)),
        Decision::Forward(LAN)
    );
    assert_eq!(
        bridge.decide(LAN, &frame(b, a), at(2)),
        Decision::Forward(WAN)
    );
    assert_eq!(bridge.len(), 2);
    assert_eq!(bridge.lookup(a, 0, at(2)).unwrap().port, LAN);
    assert_eq!(bridge.lookup(b, 0, at(2)).unwrap().port, WAN);
    assert_eq!(bridge.counters().learned, 2);

    let lan = bridge.port_counters(LAN).unwrap();
    assert_eq!(lan.rx_frames, 2);
    assert_eq!(lan.rx_bytes, 120);
    assert_eq!(lan.flooded, 1);
    assert_eq!(lan.forwarded, 1);
    assert_eq!(lan.tx_frames, 1);
    let wan = bridge.port_counters(WAN).unwrap();
    assert_eq!(wan.rx_frames, 1);
    assert_eq!(wan.forwarded, 1);
    assert_eq!(wan.tx_frames, 2);
    assert_eq!(bridge.port_counters(PortId(2)), None);
}

#[test]
fn filters_frames_local_to_the_segment() {
    let mut bridge = bridge();
    let (a, c) = (station(1), station(3));
    bridge.decide(LAN, &frame(c, a), at(0));
    bridge.decide(LAN, &frame(a, c), at(0));
    assert_eq!(
        bridge.decide(LAN, &frame(a, c), at(1)),
        Decision::Drop(DropReason::Filtered)
    );
    assert_eq!(bridge.port_counters(LAN).unwrap().dropped.filtered, 2);
    assert_eq!(bridge.port_counters(WAN).unwrap().tx_frames, 1);
}

#[test]
fn floods_group_and_unknown_destinations() {
    let mut bridge = bridge();
    let a = station(1);
    assert_eq!(
        bridge.decide(LAN, &frame(MacAddress::BROADCAST, a), at(0)),
        Decision::Flood
    );
    let ipv4_multicast = MacAddress([0x01, 0x00, 0x5e, 0, 0, 0xfb]);
    assert_eq!(
        bridge.decide(WAN, &frame(ipv4_multicast, station(2)), at(0)),
        Decision::Flood
    );
    assert_eq!(
        bridge.decide(LAN, &frame(station(9), a), at(0)),
        Decision::Flood
    );
    let stp = MacAddress([0x01, 0x80, 0xc2, 0, 0, 0]);
    let lacp = MacAddress([0x01, 0x80, 0xc2, 0, 0, 2]);
    let not_reserved = MacAddress([0x01, 0x80, 0xc2, 0, 0, 0x10]);
    assert_eq!(
        bridge.decide(LAN, &frame(stp, a), at(0)),
        Decision::Drop(DropReason::Reserved)
    );
    assert_eq!(
        bridge.decide(LAN, &frame(lacp, a), at(0)),
        Decision::Drop(DropReason::Reserved)
    );
    assert_eq!(
        bridge.decide(LAN, &frame(not_reserved, a), at(0)),
        Decision::Flood
    );
    assert_eq!(bridge.port_counters(LAN).unwrap().dropped.reserved, 2);

    let mut transparent = Bridge::new(BridgeConfig {
        forward_reserved: true,
        ..BridgeConfig::default()
    })
    .unwrap();
    assert_eq!(
        transparent.decide(LAN, &frame(stp, a), at(0)),
        Decision::Flood
    );
}

#[test]
fn flood_ports_are_all_but_ingress() {
    let bridge = Bridge::new(BridgeConfig {
        port_count: 4,
        ..BridgeConfig::default()
    })
    .unwrap();
    let ports: Vec<PortId> = bridge.flood_ports(PortId(2)).collect();
    assert_eq!(ports, [PortId(0), PortId(1), PortId(3)]);
    assert_eq!(bridge.ports().count(), 4);
    let two = self::bridge();
    assert_eq!(two.flood_ports(LAN).collect::<Vec<_>>(), [WAN]);
    assert_eq!(two.flood_ports(WAN).collect::<Vec<_>>(), [LAN]);
}

#[test]
fn local_addresses() {
    let mut bridge = bridge();
    let own = MacAddress([0x02, 0x44, 0x50, 0x58, 0, 1]);
    let heartbeat_group = MacAddress([0x03, 0x44, 0x50, 0x58, 0, 1]);
    let a = station(1);
    // Without a local unicast address broadcasts are only flooded.
    bridge.add_local_address(heartbeat_group).unwrap();
    assert_eq!(
        bridge.decide(LAN, &frame(MacAddress::BROADCAST, a), at(0)),
        Decision::Flood
    );
    bridge.add_local_address(own).unwrap();
    bridge.add_local_address(own).unwrap();
    assert_eq!(bridge.local_addresses(), &[heartbeat_group, own]);
    assert_eq!(bridge.decide(LAN, &frame(own, a), at(0)), Decision::Local);
    assert_eq!(
        bridge.decide(WAN, &frame(own, station(2)), at(0)),
        Decision::Local
    );
    assert_eq!(
        bridge.decide(LAN, &frame(heartbeat_group, a), at(0)),
        Decision::Local
    );
    assert_eq!(
        bridge.decide(LAN, &frame(MacAddress::BROADCAST, a), at(0)),
        Decision::FloodAndLocal
    );
    // Frames from our own address are not learned (station 2 was learned on the WAN,
    // so this one is filtered).
    assert_eq!(
        bridge.decide(WAN, &frame(station(2), own), at(0)),
        Decision::Drop(DropReason::Filtered)
    );
    assert!(bridge.lookup(own, 0, at(0)).is_none());

    let lan = bridge.port_counters(LAN).unwrap();
    assert_eq!(lan.local, 3);
    assert_eq!(lan.flooded, 2);
    assert_eq!(lan.rx_frames, 4);

    assert_eq!(
        bridge.add_local_address(MacAddress::BROADCAST),
        Err(Error::InvalidAddress)
    );
    assert_eq!(
        bridge.add_local_address(MacAddress([0; 6])),
        Err(Error::InvalidAddress)
    );
    for n in 2..MAX_LOCAL_ADDRESSES as u8 {
        bridge.add_local_address(station(100 + n)).unwrap();
    }
    assert_eq!(bridge.add_local_address(station(99)), Err(Error::Full));
    assert!(bridge.remove_local_address(own));
    assert!(!bridge.remove_local_address(own));
    assert_eq!(bridge.decide(LAN, &frame(own, a), at(1)), Decision::Flood);
}

#[test]
fn ages_entries_in_virtual_time() {
    let mut bridge = bridge();
    let (a, b) = (station(1), station(2));
    assert_eq!(bridge.poll_at(), Instant::MAX);
    bridge.decide(LAN, &frame(b, a), at(10));
    bridge.decide(WAN, &frame(a, b), at(20));
    assert_eq!(bridge.poll_at(), at(310));
    assert_eq!(bridge.poll(at(309)), 0);

    // Just before expiry: still forwarded. At expiry: flooded even before `poll`.
    let just_before = Instant::from_nanos(at(310).as_nanos() - 1);
    assert_eq!(
        bridge.decide(WAN, &frame(a, b), just_before),
        Decision::Forward(LAN)
    );
    assert_eq!(bridge.decide(WAN, &frame(a, b), at(310)), Decision::Flood);
    assert!(bridge.lookup(a, 0, at(310)).is_none());

    // `poll` at the deadline removes `a`; `b` was refreshed at 310 and stays.
    assert_eq!(bridge.poll(at(310)), 1);
    assert_eq!(bridge.len(), 1);
    assert_eq!(bridge.counters().aged, 1);
    assert_eq!(bridge.poll_at(), at(610));
    // A refresh makes the deadline early, never late: poll finds nothing and moves on.
    bridge.decide(WAN, &frame(a, b), at(500));
    assert_eq!(bridge.poll(at(610)), 0);
    assert_eq!(bridge.poll_at(), at(800));
    assert_eq!(bridge.poll(at(800)), 1);
    assert!(bridge.is_empty());
    assert_eq!(bridge.poll_at(), Instant::MAX);
    assert_eq!(bridge.counters().aged, 2);
}

#[test]
fn ageing_time_is_configurable() {
    let mut bridge = Bridge::new(BridgeConfig {
        ageing_time: Duration::from_secs(5),
        ..BridgeConfig::default()
    })
    .unwrap();
    let a = station(1);
    bridge.decide(LAN, &frame(MacAddress::BROADCAST, a), at(0));
    assert_eq!(bridge.poll_at(), at(5));
    assert!(bridge.lookup(a, 0, at(4)).is_some());
    assert_eq!(bridge.poll(at(5)), 1);
}

#[test]
fn stale_entry_relearned_counts_as_new() {
    let mut bridge = bridge();
    let (a, b) = (station(1), station(2));
    bridge.decide(LAN, &frame(b, a), at(0));
    bridge.decide(WAN, &frame(b, a), at(400));
    assert_eq!(bridge.counters().moves, 0);
    assert_eq!(bridge.counters().learned, 2);
    assert_eq!(bridge.counters().aged, 1);
    assert_eq!(bridge.lookup(a, 0, at(400)).unwrap().port, WAN);
}

#[test]
fn station_move() {
    let mut bridge = bridge();
    let (a, b) = (station(1), station(2));
    bridge.decide(LAN, &frame(b, a), at(0));
    bridge.decide(WAN, &frame(a, b), at(0));
    assert_eq!(
        bridge.decide(WAN, &frame(b, a), at(1)),
        Decision::Drop(DropReason::Filtered)
    );
    assert_eq!(bridge.counters().moves, 1);
    assert_eq!(bridge.lookup(a, 0, at(1)).unwrap().port, WAN);
    assert_eq!(
        bridge.decide(LAN, &frame(a, station(3)), at(1)),
        Decision::Forward(WAN)
    );
    // Same port again: a refresh, not a move.
    bridge.decide(WAN, &frame(b, a), at(2));
    assert_eq!(bridge.counters().moves, 1);
    assert_eq!(bridge.lookup(a, 0, at(2)).unwrap().last_seen, at(2));
}

#[test]
fn full_table_refuses_and_counts() {
    let mut bridge = Bridge::new(BridgeConfig {
        max_entries: 4,
        ..BridgeConfig::default()
    })
    .unwrap();
    let target = station(200);
    for n in 1..=4 {
        bridge.decide(LAN, &frame(target, station(n)), at(0));
    }
    assert_eq!(bridge.len(), 4);
    // The fifth station is not entered, its frame still flooded, and replies to it too.
    assert_eq!(
        bridge.decide(WAN, &frame(station(1), station(5)), at(1)),
        Decision::Forward(LAN)
    );
    assert_eq!(bridge.counters().table_full, 1);
    assert_eq!(bridge.len(), 4);
    assert!(bridge.lookup(station(5), 0, at(1)).is_none());
    assert_eq!(
        bridge.decide(LAN, &frame(station(5), station(1)), at(1)),
        Decision::Flood
    );
    // Known stations keep working; nobody was evicted.
    for n in 1..=4 {
        assert_eq!(bridge.lookup(station(n), 0, at(1)).unwrap().port, LAN);
    }
    // Once entries age out, a new station gets in even without a `poll`.
    bridge.decide(LAN, &frame(target, station(1)), at(200));
    bridge.decide(WAN, &frame(target, station(5)), at(301));
    assert_eq!(bridge.counters().table_full, 1);
    assert_eq!(bridge.len(), 2);
    assert_eq!(bridge.lookup(station(5), 0, at(301)).unwrap().port, WAN);
    assert_eq!(bridge.counters().aged, 3);
    assert_eq!(bridge.add_static(station(9), 0, LAN, at(301)), Ok(()));
    assert_eq!(bridge.add_static(station(10), 0, LAN, at(301)), Ok(()));
    assert_eq!(
        bridge.add_static(station(11), 0, LAN, at(301)),
        Err(Error::Full)
    );
}

#[test]
fn invalid_sources_are_dropped_and_not_learned() {
    let mut bridge = bridge();
    let b = station(2);
    for source in [
        MacAddress::BROADCAST,
        MacAddress([0x01, 0x00, 0x5e, 0, 0, 1]),
        MacAddress([0x03, 0, 0, 0, 0, 1]),
        MacAddress([0; 6]),
    ] {
        assert_eq!(
            bridge.decide(LAN, &frame(b, source), at(0)),
            Decision::Drop(DropReason::InvalidSource)
        );
        assert!(bridge.lookup(source, 0, at(0)).is_none());
    }
    assert!(bridge.is_empty());
    let lan = bridge.port_counters(LAN).unwrap();
    assert_eq!(lan.dropped.invalid_source, 4);
    assert_eq!(lan.dropped.total(), 4);
    assert_eq!(lan.dropped.get(DropReason::InvalidSource), 4);
    assert_eq!(bridge.port_counters(WAN).unwrap().tx_frames, 0);
}

#[test]
fn runts_and_oversized_frames() {
    let mut bridge = bridge();
    let good = frame(station(2), station(1));
    for len in 0..14 {
        assert_eq!(
            bridge.decide(LAN, &good[..len], at(0)),
            Decision::Drop(DropReason::Runt)
        );
    }
    let tagged = tagged(station(2), station(1), Some(5));
    for len in 14..18 {
        assert_eq!(
            bridge.decide(LAN, &tagged[..len], at(0)),
            Decision::Drop(DropReason::Runt)
        );
    }
    assert!(bridge.is_empty());
    // A bare header is short of the 60-byte minimum but parseable: virtual NICs deliver
    // unpadded frames, so it is bridged.
    assert_eq!(bridge.decide(LAN, &good[..14], at(0)), Decision::Flood);
    assert_eq!(bridge.decide(LAN, &tagged[..18], at(0)), Decision::Flood);

    let mut big = std::vec![0u8; 1519];
    big[..14].copy_from_slice(&good[..14]);
    assert_eq!(
        bridge.decide(LAN, &big, at(0)),
        Decision::Drop(DropReason::Oversized)
    );
    assert_eq!(bridge.decide(LAN, &big[..1518], at(0)), Decision::Flood);
    let lan = bridge.port_counters(LAN).unwrap();
    assert_eq!(lan.dropped.runt, 18);
    assert_eq!(lan.dropped.oversized, 1);
    assert_eq!(lan.rx_frames, 18 + 2 + 2);
    assert_eq!(lan.rx_bytes, (0..18).sum::<u64>() + 14 + 18 + 1519 + 1518);
}

#[test]
fn vlans_learn_independently() {
    let mut bridge = bridge();
    let (a, b, router) = (station(1), station(2), station(3));
    // The router has one MAC on two VLANs: behind the LAN on 10, behind the WAN on 20.
    bridge.decide(LAN, &tagged(b, router, Some(10)), at(0));
    bridge.decide(WAN, &tagged(a, router, Some(20)), at(0));
    assert_eq!(bridge.counters().moves, 0);
    assert_eq!(bridge.len(), 2);
    assert_eq!(
        bridge.decide(WAN, &tagged(router, b, Some(10)), at(1)),
        Decision::Forward(LAN)
    );
    assert_eq!(
        bridge.decide(LAN, &tagged(router, a, Some(20)), at(1)),
        Decision::Forward(WAN)
    );
    // Untagged and priority-tagged frames are VLAN 0, where the router is unknown.
    assert_eq!(
        bridge.decide(LAN, &frame(router, a), at(1)),
        Decision::Flood
    );
    assert_eq!(
        bridge.decide(LAN, &tagged(router, a, Some(0)), at(1)),
        Decision::Flood
    );
    assert_eq!(bridge.lookup(router, 10, at(1)).unwrap().port, LAN);
    assert_eq!(bridge.lookup(router, 20, at(1)).unwrap().port, WAN);
    let mut vlans: Vec<u16> = bridge
        .table()
        .filter(|entry| entry.mac == router)
        .map(|entry| entry.vlan)
        .collect();
    vlans.sort();
    assert_eq!(vlans, [10, 20]);

    // Shared learning: the same two frames are a station move.
    let mut shared = Bridge::new(BridgeConfig {
        vlan_learning: false,
        ..BridgeConfig::default()
    })
    .unwrap();
    shared.decide(LAN, &tagged(b, router, Some(10)), at(0));
    shared.decide(WAN, &tagged(a, router, Some(20)), at(0));
    assert_eq!(shared.counters().moves, 1);
    assert_eq!(shared.len(), 1);
    assert_eq!(
        shared.decide(LAN, &frame(router, a), at(1)),
        Decision::Forward(WAN)
    );
    assert_eq!(shared.lookup(router, 10, at(1)).unwrap().vlan, 0);
}

#[test]
fn unknown_ingress_port() {
    let mut bridge = bridge();
    let f = frame(station(2), station(1));
    assert_eq!(
        bridge.decide(PortId(2), &f, at(0)),
        Decision::Drop(DropReason::UnknownPort)
    );
    assert_eq!(bridge.counters().unknown_port, 1);
    assert!(bridge.is_empty());
    assert_eq!(bridge.port_counters(LAN).unwrap().rx_frames, 0);
}

#[test]
fn static_entries_neither_age_nor_move() {
    let mut bridge = bridge();
    let (a, b) = (station(1), station(2));
    bridge.add_static(a, 0, LAN, at(0)).unwrap();
    bridge.decide(WAN, &frame(b, a), at(1));
    assert_eq!(bridge.lookup(a, 0, at(1)).unwrap().port, LAN);
    assert_eq!(bridge.counters().moves, 0);
    assert_eq!(bridge.poll(at(10_000)), 0);
    let entry = bridge.lookup(a, 0, at(10_000)).unwrap();
    assert!(entry.is_static);
    assert_eq!(entry.age(at(10_000)), Duration::from_secs(10_000));
    assert_eq!(
        bridge.decide(WAN, &frame(a, b), at(10_000)),
        Decision::Forward(LAN)
    );
    assert_eq!(
        bridge.add_static(a, 0, PortId(2), at(0)),
        Err(Error::InvalidPort)
    );
    assert_eq!(
        bridge.add_static(MacAddress::BROADCAST, 0, LAN, at(0)),
        Err(Error::InvalidAddress)
    );
    assert_eq!(
        bridge.add_static(b, 4096, LAN, at(0)),
        Err(Error::InvalidAddress)
    );
    assert!(bridge.remove(a, 0));
    assert!(!bridge.remove(a, 0));
}

#[test]
fn flushes() {
    let mut bridge = bridge();
    bridge.add_static(station(9), 0, WAN, at(0)).unwrap();
    for n in 1..=3 {
        bridge.decide(LAN, &frame(station(100), station(n)), at(0));
    }
    for n in 4..=5 {
        bridge.decide(WAN, &frame(station(100), station(n)), at(0));
    }
    assert_eq!(bridge.len(), 6);
    assert_eq!(bridge.flush_port(WAN), 2);
    assert_eq!(bridge.len(), 4);
    assert_eq!(bridge.flush(), 3);
    assert_eq!(bridge.len(), 1);
    assert_eq!(bridge.poll_at(), Instant::MAX);
    assert!(bridge.lookup(station(9), 0, at(0)).is_some());
}

#[test]
fn outbound_frames() {
    let mut bridge = bridge();
    let own = station(50);
    bridge.add_local_address(own).unwrap();
    bridge.decide(WAN, &frame(own, station(2)), at(0));
    assert_eq!(
        bridge.decide_outbound(&frame(station(2), own), at(1)),
        Decision::Forward(WAN)
    );
    assert_eq!(
        bridge.decide_outbound(&frame(station(3), own), at(1)),
        Decision::Flood
    );
    assert_eq!(
        bridge.decide_outbound(&frame(MacAddress::BROADCAST, own), at(1)),
        Decision::Flood
    );
    assert_eq!(
        bridge.decide_outbound(&[0u8; 10], at(1)),
        Decision::Drop(DropReason::Runt)
    );
    assert_eq!(
        bridge.decide_outbound(&[0u8; 2000], at(1)),
        Decision::Drop(DropReason::Oversized)
    );
    assert!(bridge.lookup(own, 0, at(1)).is_none());
    assert_eq!(bridge.port_counters(WAN).unwrap().tx_frames, 3);
    assert_eq!(bridge.port_counters(LAN).unwrap().tx_frames, 2);
    assert_eq!(bridge.port_counters(LAN).unwrap().rx_frames, 0);
}

#[test]
fn table_lists_entries() {
    let mut bridge = bridge();
    bridge.decide(LAN, &frame(station(2), station(1)), at(5));
    bridge.decide(WAN, &tagged(station(1), station(2), Some(7)), at(6));
    let mut entries: Vec<TableEntry> = bridge.table().collect();
    entries.sort_by_key(|entry| (entry.vlan, entry.mac));
    assert_eq!(
        entries,
        [
            TableEntry {
                mac: station(1),
                vlan: 0,
                port: LAN,
                is_static: false,
                last_seen: at(5)
            },
            TableEntry {
                mac: station(2),
                vlan: 7,
                port: WAN,
                is_static: false,
                last_seen: at(6)
            },
        ]
    );
    assert_eq!(entries[0].age(at(8)), Duration::from_secs(3));
}

#[test]
fn snapshot_and_restore() {
    let mut bridge = bridge();
    bridge.add_static(station(9), 3, WAN, at(0)).unwrap();
    bridge.decide(LAN, &frame(station(100), station(1)), at(100));
    bridge.decide(WAN, &tagged(station(100), station(2), Some(42)), at(250));
    bridge.decide(LAN, &frame(station(100), station(3)), at(0));
    // station(3) has aged out by 350 (not yet polled): not in the snapshot.
    let snapshot = bridge.snapshot(at(350));
    assert_eq!(snapshot.entries.len(), 3);
    let bytes = snapshot.encode();
    assert_eq!(bytes.len(), 8 + 3 * 16);
    let decoded = TableSnapshot::decode(&bytes).unwrap();
    assert_eq!(decoded, snapshot);

    // The peer's clock has another origin.
    let mut peer = self::bridge();
    let now = at(1_000_000);
    let summary = peer.restore(&decoded, now);
    assert_eq!(
        summary,
        RestoreSummary {
            restored: 3,
            ..RestoreSummary::default()
        }
    );
    let one = peer.lookup(station(1), 0, now).unwrap();
    assert_eq!((one.port, one.age(now)), (LAN, Duration::from_secs(250)));
    let two = peer.lookup(station(2), 42, now).unwrap();
    assert_eq!((two.port, two.age(now)), (WAN, Duration::from_secs(100)));
    assert!(peer.lookup(station(9), 3, now).unwrap().is_static);
    // It ages out on the peer when it would have on the original.
    assert_eq!(peer.poll_at(), now + Duration::from_secs(50));
    assert_eq!(peer.poll(now + Duration::from_secs(50)), 1);
    assert!(
        peer.lookup(station(1), 0, now + Duration::from_secs(50))
            .is_none()
    );
    assert_eq!(
        peer.decide(
            LAN,
            &tagged(station(2), station(7), Some(42)),
            now + Duration::from_secs(51)
        ),
        Decision::Forward(WAN)
    );

    // Restore replaces; entries the bridge cannot take are skipped and counted.
    let mut small = Bridge::new(BridgeConfig {
        max_entries: 1,
        port_count: 1,
        ..BridgeConfig::default()
    })
    .unwrap();
    small.decide(LAN, &frame(station(100), station(77)), at(0));
    let mut odd = decoded.clone();
    odd.entries.push(SnapshotEntry {
        mac: station(4),
        vlan: 0,
        port: LAN,
        is_static: false,
        age: Duration::from_secs(300),
    });
    odd.entries.push(SnapshotEntry {
        mac: station(5),
        vlan: 0,
        port: LAN,
        is_static: false,
        age: Duration::ZERO,
    });
    let summary = small.restore(&odd, at(10));
    assert_eq!(
        summary,
        RestoreSummary {
            restored: 1,
            expired: 1,
            invalid: 2, // station(2) and station(9) are behind port 1
            refused: 1,
        }
    );
    assert!(small.lookup(station(77), 0, at(10)).is_none());
    assert_eq!(
        small.lookup(station(1), 0, at(10)).unwrap().last_seen,
        Instant::ZERO
    );
}

#[test]
fn ingress_counters_add_up() {
    let mut bridge = bridge();
    bridge.add_local_address(station(50)).unwrap();
    let frames = [
        frame(station(2), station(1)),
        frame(MacAddress::BROADCAST, station(1)),
        frame(station(50), station(1)),
        frame(station(1), station(3)),
        frame(station(1), MacAddress::BROADCAST),
        std::vec![0u8; 5],
    ];
    for (n, f) in frames.iter().enumerate() {
        bridge.decide(LAN, f, at(n as u64));
    }
    let lan = bridge.port_counters(LAN).unwrap();
    let both = 1; // the broadcast was flooded and delivered locally
    assert_eq!(
        lan.rx_frames,
        lan.forwarded + lan.flooded + lan.local + lan.dropped.total() - both
    );
}

#[test]
fn config_is_validated() {
    let bad = [
        BridgeConfig {
            port_count: 0,
            ..BridgeConfig::default()
        },
        BridgeConfig {
            port_count: 257,
            ..BridgeConfig::default()
        },
        BridgeConfig {
            ageing_time: Duration::from_millis(999),
            ..BridgeConfig::default()
        },
        BridgeConfig {
            ageing_time: Duration::from_secs(1_000_001),
            ..BridgeConfig::default()
        },
        BridgeConfig {
            max_entries: 0,
            ..BridgeConfig::default()
        },
        BridgeConfig {
            max_entries: (1 << 20) + 1,
            ..BridgeConfig::default()
        },
        BridgeConfig {
            max_frame_len: 17,
            ..BridgeConfig::default()
        },
    ];
    for config in bad {
        assert!(matches!(Bridge::new(config), Err(Error::InvalidConfig(_))));
    }
    assert!(BridgeConfig::default().validate().is_ok());
}
