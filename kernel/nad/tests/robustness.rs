//! Robustness: thousands of seeded random, truncated and mutated frames through every
//! parser and the bridge (nothing may panic, invariants must hold), and the bridge against
//! a reference model on random traffic in virtual time.

use std::collections::BTreeMap;
use std::time::Duration;

use duplex_nad::build;
use duplex_nad::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Addr,
    Ipv4Packet, Ipv4Repr, UdpPacket, VlanTag,
};
use duplex_nad::{
    Bridge, BridgeConfig, Decision, DropReason, Error, Instant, MacAddress, PortId, TableSnapshot,
};

/// xorshift64*: small, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// What the parsers made of the inputs, so that the test fails if it stops exercising
/// both the accepting and the refusing paths.
#[derive(Default, Debug)]
struct Tally {
    ethernet_ok: u64,
    arp_ok: u64,
    ipv4_ok: u64,
    udp_checksum_ok: u64,
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn error(&mut self, what: &'static str, error: Error) {
        let key = match error {
            Error::Truncated => "truncated",
            Error::Malformed => "malformed",
            Error::Unsupported => "unsupported",
            Error::BadChecksum => "bad checksum",
            _ => "other",
        };
        let _ = what;
        *self.errors.entry(key).or_default() += 1;
    }
}

/// One of a few dozen stations, so that the bridge learns and forwards; now and then the
/// appliance's own address.
fn station(rng: &mut Rng) -> MacAddress {
    if rng.chance(16) {
        LOCAL
    } else {
        MacAddress([0x02, 0, 0, 0, 0, rng.below(48) as u8])
    }
}

const LOCAL: MacAddress = MacAddress([0x02, 0, 0, 0, 0xaa, 0xaa]);

fn valid_frame(rng: &mut Rng) -> Vec<u8> {
    let mac = station(rng);
    let vlan = rng.chance(3).then(|| VlanTag::new(rng.below(4096) as u16));
    let mut buffer = [0u8; 1600];
    let len = match rng.below(3) {
        0 => {
            let operation = if rng.chance(2) {
                ArpOperation::Request
            } else {
                ArpOperation::Reply
            };
            let address = Ipv4Addr::new(10, 0, rng.byte(), rng.byte());
            build::gratuitous_arp(&mut buffer, operation, mac, address, vlan).unwrap()
        }
        1 => {
            let payload_len = rng.below(1400) as usize;
            let source = Ipv4Addr::new(192, 168, rng.byte(), rng.byte());
            let destination = Ipv4Addr::new(10, 1, rng.byte(), rng.byte());
            let mut ip = vec![0u8; 20 + 8 + payload_len];
            let repr = Ipv4Repr {
                source,
                destination,
                protocol: IpProtocol::UDP,
                payload_len: 8 + payload_len,
                time_to_live: 64,
            };
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut ip[..]))
                .unwrap();
            let mut udp = UdpPacket::new_unchecked(&mut ip[20..]);
            udp.set_source_port(rng.next() as u16);
            udp.set_destination_port(53);
            udp.set_length((8 + payload_len) as u16);
            for byte in udp.payload_mut() {
                *byte = rng.byte();
            }
            udp.fill_checksum(source, destination);
            let header = EthernetRepr {
                destination: station(rng),
                source: mac,
                vlan,
                ethertype: EtherType::IPV4,
            };
            build::ethernet_frame_with(&mut buffer, &header, &ip).unwrap()
        }
        _ => {
            let payload: Vec<u8> = (0..rng.below(100)).map(|_| rng.byte()).collect();
            let header = EthernetRepr {
                destination: MacAddress::BROADCAST,
                source: mac,
                vlan,
                ethertype: EtherType(rng.next() as u16),
            };
            build::ethernet_frame_with(&mut buffer, &header, &payload).unwrap()
        }
    };
    buffer[..len].to_vec()
}

/// Truncates, flips bytes, plants interesting values (a VLAN TPID, length extremes).
fn mutate(rng: &mut Rng, mut frame: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(4) {
        if frame.is_empty() {
            break;
        }
        let at = rng.below(frame.len() as u64) as usize;
        match rng.below(6) {
            0 => frame[at] ^= 1 << rng.below(8),
            1 => frame[at] = rng.byte(),
            2 => frame[at] = [0x00, 0xff, 0x45, 0x4f, 0x81, 0x08][rng.below(6) as usize],
            3 if frame.len() >= 14 => frame[12..14].copy_from_slice(&[0x81, 0x00]),
            4 => frame.truncate(at),
            _ => {
                // Length fields of IPv4 (total length) and UDP (length), tagged or not.
                for offset in [16usize, 20, 38, 42] {
                    if offset + 1 < frame.len() && rng.chance(2) {
                        frame[offset] = rng.byte();
                        frame[offset + 1] = rng.byte();
                    }
                }
            }
        }
    }
    frame
}

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => rng.below(20) as usize,
        1 => rng.below(64) as usize,
        _ => rng.below(1600) as usize,
    };
    (0..len).map(|_| rng.byte()).collect()
}

/// Runs every parser over `frame` and over its tail at every layer.
fn parse_everything(frame: &[u8], tally: &mut Tally) {
    // Each view directly on the raw bytes as well.
    let _ = ArpPacket::new_checked(frame).map(|packet| ArpRepr::parse(&packet));
    let _ = Ipv4Packet::new_checked(frame).map(|packet| Ipv4Repr::parse(&packet));
    let _ = UdpPacket::new_checked(frame).map(|packet| packet.payload().len());
    let _ = TableSnapshot::decode(frame);

    let ethernet = match EthernetFrame::new_checked(frame) {
        Ok(ethernet) => ethernet,
        Err(error) => return tally.error("ethernet", error),
    };
    tally.ethernet_ok += 1;
    let repr = EthernetRepr::parse(&ethernet).unwrap();
    assert_eq!(repr.header_len(), ethernet.header_len());
    assert_eq!(
        ethernet.payload().len() + ethernet.header_len(),
        frame.len()
    );
    let _ = (
        ethernet.destination(),
        ethernet.source(),
        ethernet.vlan_id(),
    );
    let payload = ethernet.payload();
    match ethernet.inner_ethertype() {
        EtherType::ARP => match ArpPacket::new_checked(payload) {
            Ok(packet) => {
                let _ = (
                    packet.source_hardware_address(),
                    packet.source_protocol_address(),
                    packet.target_hardware_address(),
                    packet.target_protocol_address(),
                );
                match ArpRepr::parse(&packet) {
                    Ok(repr) => {
                        tally.arp_ok += 1;
                        let mut out = [0u8; 28];
                        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]))
                            .unwrap();
                        assert_eq!(&out[..], &payload[..28]);
                    }
                    Err(error) => tally.error("arp", error),
                }
            }
            Err(error) => tally.error("arp", error),
        },
        EtherType::IPV4 => match Ipv4Packet::new_checked(payload) {
            Ok(packet) => {
                let _ = (packet.options(), packet.dscp(), packet.is_fragment());
                let verified = packet.verify_checksum();
                match Ipv4Repr::parse(&packet) {
                    Ok(repr) => {
                        assert!(verified);
                        tally.ipv4_ok += 1;
                        assert_eq!(repr.payload_len, packet.payload().len());
                        if repr.protocol == IpProtocol::UDP {
                            match UdpPacket::new_checked(packet.payload()) {
                                Ok(udp) => {
                                    if udp.verify_checksum(repr.source, repr.destination) {
                                        tally.udp_checksum_ok += 1;
                                    } else {
                                        tally.error("udp", Error::BadChecksum);
                                    }
                                    let _ = udp.payload();
                                }
                                Err(error) => tally.error("udp", error),
                            }
                        }
                    }
                    Err(error) => tally.error("ipv4", error),
                }
            }
            Err(error) => tally.error("ipv4", error),
        },
        _ => {}
    }
}

#[test]
fn parsers_and_bridge_survive_garbage() {
    const ROUNDS: u64 = 30_000;
    let mut rng = Rng::new(0x0ad_5eed);
    let mut tally = Tally::default();
    let config = BridgeConfig {
        port_count: 3,
        max_entries: 64,
        ageing_time: Duration::from_secs(30),
        ..BridgeConfig::default()
    };
    let mut bridge = Bridge::new(config).unwrap();
    bridge.add_local_address(LOCAL).unwrap();
    let mut now = Instant::ZERO;
    let mut decisions = BTreeMap::<&'static str, u64>::new();
    let mut unknown_port = 0;

    for round in 0..ROUNDS {
        let frame = match rng.below(3) {
            0 => random_frame(&mut rng),
            1 => valid_frame(&mut rng),
            _ => {
                let frame = valid_frame(&mut rng);
                mutate(&mut rng, frame)
            }
        };
        parse_everything(&frame, &mut tally);

        now += Duration::from_millis(rng.below(200));
        let ingress = PortId(rng.below(4) as u16);
        let decision = bridge.decide(ingress, &frame, now);
        let name = match decision {
            Decision::Forward(port) => {
                assert_ne!(port, ingress);
                assert!(port.0 < 3);
                "forward"
            }
            Decision::Flood => "flood",
            Decision::Local => "local",
            Decision::FloodAndLocal => "flood+local",
            Decision::Drop(DropReason::UnknownPort) => {
                assert_eq!(ingress, PortId(3));
                unknown_port += 1;
                "unknown port"
            }
            Decision::Drop(_) => "drop",
        };
        *decisions.entry(name).or_default() += 1;
        let _ = bridge.decide_outbound(&frame, now);
        assert!(bridge.len() <= 64);
        if round % 97 == 0 {
            bridge.poll(now);
            assert!(bridge.poll_at() > now);
        }
        if round % 1_009 == 0 {
            // Snapshots of a live table survive encoding and restoring.
            let snapshot = bridge.snapshot(now);
            let bytes = snapshot.encode();
            assert_eq!(TableSnapshot::decode(&bytes).as_ref(), Ok(&snapshot));
            let mut copy = Bridge::new(config).unwrap();
            let summary = copy.restore(&snapshot, now);
            assert_eq!(summary.restored, snapshot.entries.len());
            // Mutated snapshot bytes: decoded or refused, never a panic.
            for _ in 0..20 {
                let mangled = mutate(&mut rng, bytes.clone());
                if let Ok(decoded) = TableSnapshot::decode(&mangled) {
                    copy.restore(&decoded, now);
                    assert!(copy.len() <= 64);
                }
            }
        }
    }

    // Counters are consistent with what was decided.
    let mut rx = 0;
    let mut categories = 0;
    for port in bridge.ports() {
        let counters = bridge.port_counters(port).unwrap();
        rx += counters.rx_frames;
        categories +=
            counters.forwarded + counters.flooded + counters.local + counters.dropped.total();
    }
    let both = decisions.get("flood+local").copied().unwrap_or(0);
    assert_eq!(rx + unknown_port, ROUNDS);
    assert_eq!(categories - both, rx);
    assert_eq!(bridge.counters().unknown_port, unknown_port);

    // The run exercised both sides of every parser.
    println!("{tally:?}\n{decisions:?}");
    assert!(tally.ethernet_ok > ROUNDS / 2);
    assert!(tally.arp_ok > 1_000);
    assert!(tally.ipv4_ok > 1_000);
    assert!(tally.udp_checksum_ok > 1_000);
    for error in ["truncated", "malformed", "unsupported", "bad checksum"] {
        assert!(
            tally.errors.get(error).copied().unwrap_or(0) > 50,
            "{error}: {tally:?}"
        );
    }
    for decision in ["forward", "flood", "local", "flood+local", "drop"] {
        assert!(
            decisions.get(decision).copied().unwrap_or(0) > 10,
            "{decision}: {decisions:?}"
        );
    }
}

/// Every builder's output is accepted by the parsers, for many addresses.
#[test]
fn builders_are_accepted_by_parsers() {
    let mut rng = Rng::new(7);
    for _ in 0..2_000 {
        let mac = MacAddress([
            rng.byte() & 0xfe,
            rng.byte(),
            rng.byte(),
            rng.byte(),
            rng.byte(),
            rng.byte(),
        ]);
        let address = Ipv4Addr::from(rng.next() as u32);
        let vlan = rng.chance(2).then(|| VlanTag::from_tci(rng.next() as u16));
        let operation = if rng.chance(2) {
            ArpOperation::Request
        } else {
            ArpOperation::Reply
        };
        let mut buffer = [0u8; 64];
        let len = build::gratuitous_arp(&mut buffer, operation, mac, address, vlan).unwrap();
        let frame = EthernetFrame::new_checked(&buffer[..len]).unwrap();
        assert_eq!(frame.vlan_tag(), vlan);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
        assert_eq!(repr, build::gratuitous_arp_repr(operation, mac, address));

        let payload: Vec<u8> = (0..rng.below(1500)).map(|_| rng.byte()).collect();
        let ethertype = EtherType(rng.next() as u16 | 0x0600);
        let mut buffer = vec![0u8; 1514];
        let len =
            build::ethernet_frame(&mut buffer, MacAddress::BROADCAST, mac, ethertype, &payload)
                .unwrap();
        assert_eq!(len, (14 + payload.len()).max(60));
        let frame = EthernetFrame::new_checked(&buffer[..len]).unwrap();
        if ethertype != EtherType::VLAN {
            assert_eq!(frame.ethertype(), ethertype);
            assert_eq!(&frame.payload()[..payload.len()], &payload[..]);
        }
    }
}

/// The reference model: a map with the same rules, written for clarity, not speed.
struct Model {
    table: BTreeMap<(u16, MacAddress), (PortId, Instant)>,
    max_entries: usize,
    ageing_time: Duration,
    table_full: u64,
    moves: u64,
}

impl Model {
    fn live(&self, key: &(u16, MacAddress), now: Instant) -> Option<PortId> {
        let (port, seen) = self.table.get(key)?;
        (now.saturating_since(*seen) < self.ageing_time).then_some(*port)
    }

    fn expire(&mut self, now: Instant) {
        let ageing_time = self.ageing_time;
        self.table
            .retain(|_, (_, seen)| now.saturating_since(*seen) < ageing_time);
    }

    fn decide(
        &mut self,
        ingress: PortId,
        destination: MacAddress,
        source: MacAddress,
        vlan: u16,
        now: Instant,
    ) -> Decision {
        let key = (vlan, source);
        if let Some((port, seen)) = self.table.get_mut(&key) {
            if now.saturating_since(*seen) < self.ageing_time && *port != ingress {
                self.moves += 1;
            }
            *port = ingress;
            *seen = now;
        } else {
            if self.table.len() >= self.max_entries {
                self.expire(now);
            }
            if self.table.len() < self.max_entries {
                self.table.insert(key, (ingress, now));
            } else {
                self.table_full += 1;
            }
        }
        if destination.is_multicast() {
            return Decision::Flood;
        }
        match self.live(&(vlan, destination), now) {
            Some(port) if port == ingress => Decision::Drop(DropReason::Filtered),
            Some(port) => Decision::Forward(port),
            None => Decision::Flood,
        }
    }
}

#[test]
fn bridge_matches_reference_model() {
    for seed in 0..40 {
        let mut rng = Rng::new(seed);
        let max_entries = 1 + rng.below(12) as usize;
        let config = BridgeConfig {
            port_count: 3,
            max_entries,
            ageing_time: Duration::from_secs(10),
            hash_seed: rng.next(),
            ..BridgeConfig::default()
        };
        let mut bridge = Bridge::new(config).unwrap();
        let mut model = Model {
            table: BTreeMap::new(),
            max_entries,
            ageing_time: config.ageing_time,
            table_full: 0,
            moves: 0,
        };
        let stations: Vec<MacAddress> = (0..16u8)
            .map(|n| MacAddress([0x02, 0, 0, 0, 0, n]))
            .collect();
        // Each station lives behind a port and occasionally moves.
        let mut home: Vec<PortId> = (0..16).map(|_| PortId(rng.below(3) as u16)).collect();
        let mut now = Instant::ZERO;
        for step in 0..3_000 {
            now += Duration::from_millis(rng.below(1_500));
            let sender = rng.below(16) as usize;
            if rng.chance(40) {
                home[sender] = PortId(rng.below(3) as u16);
            }
            let destination = if rng.chance(8) {
                MacAddress::BROADCAST
            } else {
                stations[rng.below(16) as usize]
            };
            let vlan = if rng.chance(4) { 5 } else { 0 };
            let header = EthernetRepr {
                destination,
                source: stations[sender],
                vlan: (vlan != 0).then(|| VlanTag::new(vlan)),
                ethertype: EtherType::IPV4,
            };
            let mut buffer = [0u8; 64];
            let len = build::ethernet_frame_with(&mut buffer, &header, &[]).unwrap();
            let expected = model.decide(home[sender], destination, stations[sender], vlan, now);
            let decided = bridge.decide(home[sender], &buffer[..len], now);
            assert_eq!(decided, expected, "seed {seed} step {step}");
            if rng.chance(50) {
                bridge.poll(now);
                model.expire(now);
            }
            for key in model.table.keys() {
                assert_eq!(
                    bridge.lookup(key.1, key.0, now).map(|entry| entry.port),
                    model.live(key, now),
                    "seed {seed} step {step}"
                );
            }
        }
        assert_eq!(
            bridge.counters().table_full,
            model.table_full,
            "seed {seed}"
        );
        assert_eq!(bridge.counters().moves, model.moves, "seed {seed}");
        assert!(
            model.table_full > 0 || max_entries >= 16 * 2,
            "seed {seed} never filled"
        );
    }
}
