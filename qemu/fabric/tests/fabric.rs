//! Fabric behaviour over internal ports (synchronous, exact) and over UDP on 127.0.0.1
//! (bounded waits with deadlines, never fixed sleeps).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use duplex_fabric::bench::{CeilingPath, RateSearch, TrialConfig, find_max_rate};
use duplex_fabric::{
    Capture, Direction, Discard, Error, Fabric, FabricConfig, MAX_BYPASS_HOPS, MacAddress, PortId,
    Rate, Sink, Source, SourceConfig, TrafficSpec, UdpNic, clock, pcap,
};

/// Generous bound for anything crossing threads or sockets.
const PATIENCE: Duration = Duration::from_secs(10);

const HEARTBEAT: u16 = 0x88b5;

fn mac(last: u8) -> MacAddress {
    MacAddress([2, 0, 0, 0, 0, last])
}

/// An Ethernet frame of `length` bytes with this EtherType, marked by `tag`.
fn frame(ether_type: u16, tag: u8, length: usize) -> Vec<u8> {
    let mut frame = vec![tag; length];
    frame[0..6].copy_from_slice(&mac(0xff).0);
    frame[6..12].copy_from_slice(&mac(tag).0);
    frame[12..14].copy_from_slice(&ether_type.to_be_bytes());
    frame
}

fn captured_port(fabric: &Fabric, name: &str) -> (PortId, Capture) {
    let capture = Capture::new();
    let port = fabric.add_internal_port(name, capture.clone()).unwrap();
    (port, capture)
}

fn recv(nic: &UdpNic) -> Vec<u8> {
    let mut buffer = vec![0; 65_536];
    let length = nic
        .recv(&mut buffer, PATIENCE)
        .unwrap()
        .expect("a frame within the deadline");
    buffer.truncate(length);
    buffer
}

/// A port id that the fabrics of these tests (fewer than ten ports) do not have.
fn unknown_port() -> PortId {
    let other = Fabric::new().unwrap();
    let ids: Vec<_> = (0..10)
        .map(|index| {
            other
                .add_internal_port(&index.to_string(), Discard)
                .unwrap()
        })
        .collect();
    ids[9]
}

/// Polls `condition` until it holds or the deadline passes.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    condition()
}

#[test]
fn hub_sends_to_every_other_port_and_never_echoes() {
    let fabric = Fabric::new().unwrap();
    let ports: Vec<_> = (0..3)
        .map(|index| captured_port(&fabric, &format!("p{index}")))
        .collect();
    fabric
        .hub(&ports.iter().map(|(port, _)| *port).collect::<Vec<_>>())
        .unwrap();
    fabric.inject(ports[0].0, &frame(0x0800, 1, 60)).unwrap();
    assert!(ports[0].1.is_empty(), "the sender got its own frame");
    for (port, capture) in &ports[1..] {
        let got = capture.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].frame, frame(0x0800, 1, 60));
        assert_eq!(got[0].origin, ports[0].0);
        assert_eq!(got[0].port, *port);
    }
    let counters = fabric.counters(ports[0].0).unwrap();
    assert_eq!((counters.rx_frames, counters.tx_frames), (1, 0));
    assert_eq!(fabric.counters(ports[2].0).unwrap().tx_bytes, 60);
}

#[test]
fn hub_never_echoes_over_udp() {
    let fabric = Fabric::new().unwrap();
    let ports: Vec<_> = (0..3)
        .map(|index| {
            fabric
                .add_vm_port(&format!("vm{index}"), mac(index))
                .unwrap()
        })
        .collect();
    let nics: Vec<_> = ports
        .iter()
        .map(|port| UdpNic::bind(port).unwrap())
        .collect();
    fabric
        .hub(&ports.iter().map(|port| port.id).collect::<Vec<_>>())
        .unwrap();
    let first = frame(0x0800, 1, 100);
    let second = frame(0x0800, 2, 100);
    nics[0].send(&first).unwrap();
    assert_eq!(recv(&nics[1]), first);
    assert_eq!(recv(&nics[2]), first);
    nics[1].send(&second).unwrap();
    // Had the hub echoed `first` to its sender, it would have come before `second`.
    assert_eq!(recv(&nics[0]), second);
    assert_eq!(recv(&nics[2]), second);
    assert_eq!(fabric.counters(ports[0].id).unwrap().tx_frames, 1);
}

#[test]
fn wire_delivers_both_ways_over_udp_and_ignores_strangers() {
    let fabric = Fabric::new().unwrap();
    let a = fabric.add_vm_port("a", mac(1)).unwrap();
    let b = fabric.add_vm_port("b", mac(2)).unwrap();
    assert_ne!(a.vm_addr, b.vm_addr);
    let (nic_a, nic_b) = (UdpNic::bind(&a).unwrap(), UdpNic::bind(&b).unwrap());
    fabric.wire(a.id, b.id).unwrap();
    nic_a.send(&frame(0x0800, 1, 1514)).unwrap();
    assert_eq!(recv(&nic_b), frame(0x0800, 1, 1514));
    nic_b.send(&frame(0x0806, 2, 42)).unwrap();
    assert_eq!(recv(&nic_a), frame(0x0806, 2, 42));

    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .send_to(&frame(0x0800, 3, 60), a.fabric_addr)
        .unwrap();
    nic_a.send(&[0u8; 10]).unwrap_err();
    assert!(eventually(|| fabric.counters(a.id).unwrap().rx_foreign == 1));
    let counters = fabric.counters(a.id).unwrap();
    assert_eq!((counters.rx_frames, counters.tx_frames), (1, 1));
}

#[test]
fn a_port_with_its_vm_socket_works_like_one_by_port_number() {
    let fabric = Fabric::new().unwrap();
    let (port, socket) = fabric.add_vm_port_with_socket("vm", mac(1)).unwrap();
    let netdev = socket.netdev_arg("n1");
    assert_eq!(
        netdev,
        format!("dgram,id=n1,local.type=fd,local.str={}", socket.raw_fd())
    );
    socket.make_inheritable().unwrap();
    let nic = UdpNic::from_vm_socket(socket, &port).unwrap();
    assert_eq!(nic.local_addr().unwrap(), port.vm_addr);
    let (other, capture) = captured_port(&fabric, "other");
    fabric.wire(port.id, other).unwrap();
    nic.send(&frame(0x0800, 1, 60)).unwrap();
    let got = capture
        .recv_timeout(PATIENCE)
        .expect("frame from the VM socket");
    assert_eq!((got.frame, got.origin), (frame(0x0800, 1, 60), port.id));
    fabric.inject(other, &frame(0x0800, 2, 60)).unwrap();
    assert_eq!(recv(&nic), frame(0x0800, 2, 60));
}

#[test]
fn qemu_arguments_name_both_sockets_and_the_mac() {
    let fabric = Fabric::new().unwrap();
    let port = fabric
        .add_vm_port_at("lan", MacAddress([0x52, 0x54, 0, 0xaa, 0, 1]), 40_123)
        .unwrap();
    let fabric_port = port.fabric_addr.port();
    assert_eq!(
        port.netdev_arg("n0"),
        format!(
            "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=40123,\
             remote.type=inet,remote.host=127.0.0.1,remote.port={fabric_port}"
        )
    );
    assert_eq!(
        port.qemu_args("n0", "virtio-net-pci")[3],
        "virtio-net-pci,netdev=n0,mac=52:54:00:aa:00:01"
    );
    assert_eq!(fabric.vm_port(port.id).unwrap(), port);
    assert_eq!(fabric.port_by_name("lan"), Some(port.id));
    assert!(matches!(
        fabric.add_vm_port("lan", mac(1)),
        Err(Error::DuplicateName(_))
    ));
}

#[test]
fn loss_is_seeded_and_counted_per_direction() {
    let run = |seed: u64, direction: Direction| {
        let fabric = Fabric::with_config(FabricConfig {
            seed,
            ..FabricConfig::default()
        })
        .unwrap();
        let (a, _) = captured_port(&fabric, "a");
        let (b, capture) = captured_port(&fabric, "b");
        fabric.wire(a, b).unwrap();
        let lossy = if direction == Direction::Ingress {
            a
        } else {
            b
        };
        fabric.set_loss(lossy, direction, 30.0).unwrap();
        for index in 0..10_000u32 {
            fabric
                .inject(a, &frame(0x0800, (index % 200) as u8, 60))
                .unwrap();
        }
        let counters = fabric.counters(lossy).unwrap();
        let dropped = counters.ingress_dropped.loss + counters.egress_dropped.loss;
        assert_eq!(capture.len() as u64 + dropped, 10_000);
        dropped
    };
    let ingress = run(7, Direction::Ingress);
    assert!((2_700..3_300).contains(&ingress), "{ingress}");
    assert_eq!(
        run(7, Direction::Ingress),
        ingress,
        "same seed, same losses"
    );
    let egress = run(8, Direction::Egress);
    assert!((2_700..3_300).contains(&egress), "{egress}");

    let fabric = Fabric::new().unwrap();
    let (a, _) = captured_port(&fabric, "a");
    assert!(matches!(
        fabric.set_loss(a, Direction::Both, 100.5),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        fabric.set_loss(unknown_port(), Direction::Both, 1.0),
        Err(Error::UnknownPort(_))
    ));
}

#[test]
fn a_down_port_drops_both_ways() {
    let fabric = Fabric::new().unwrap();
    let (a, capture_a) = captured_port(&fabric, "a");
    let (b, capture_b) = captured_port(&fabric, "b");
    fabric.wire(a, b).unwrap();
    fabric.set_up(b, false).unwrap();
    fabric.inject(a, &frame(0x0800, 1, 60)).unwrap();
    fabric.inject(b, &frame(0x0800, 2, 60)).unwrap();
    assert!(capture_a.is_empty() && capture_b.is_empty());
    let counters = fabric.counters(b).unwrap();
    assert_eq!(counters.egress_dropped.down, 1);
    assert_eq!(counters.ingress_dropped.down, 1);
    fabric.set_up(b, true).unwrap();
    fabric.inject(a, &frame(0x0800, 3, 60)).unwrap();
    assert_eq!(capture_b.drain()[0].frame, frame(0x0800, 3, 60));
}

#[test]
fn delay_holds_frames_in_order_on_the_timer() {
    let fabric = Fabric::new().unwrap();
    let (a, _) = captured_port(&fabric, "a");
    let (b, capture) = captured_port(&fabric, "b");
    fabric.wire(a, b).unwrap();
    let delay = Duration::from_millis(30);
    fabric.set_delay(a, Direction::Ingress, delay).unwrap();
    fabric.set_delay(b, Direction::Egress, delay).unwrap();
    let sent_ns = clock::now_ns();
    for tag in 0..20 {
        fabric.inject(a, &frame(0x0800, tag, 60)).unwrap();
    }
    for tag in 0..20 {
        let got = capture.recv_timeout(PATIENCE).expect("delayed frame");
        assert_eq!(got.frame[6..12], mac(tag).0, "order kept");
        assert!(
            got.time_ns - sent_ns >= 2 * 30_000_000,
            "both delays applied"
        );
    }
    assert_eq!(fabric.counters(a).unwrap().delayed, 20);
    assert_eq!(fabric.counters(b).unwrap().delayed, 20);
    // Without delay the path is synchronous again.
    fabric
        .set_delay(a, Direction::Both, Duration::ZERO)
        .unwrap();
    fabric
        .set_delay(b, Direction::Both, Duration::ZERO)
        .unwrap();
    fabric.inject(a, &frame(0x0800, 99, 60)).unwrap();
    assert_eq!(capture.len(), 1);
}

#[test]
fn filter_drops_one_ether_type_both_ways() {
    let fabric = Fabric::new().unwrap();
    let (a, capture_a) = captured_port(&fabric, "a");
    let (b, capture_b) = captured_port(&fabric, "b");
    fabric.wire(a, b).unwrap();
    fabric.set_filter(a, HEARTBEAT, true).unwrap();
    let mut tagged = frame(0x8100, 4, 64);
    tagged[16..18].copy_from_slice(&HEARTBEAT.to_be_bytes());
    fabric.inject(a, &frame(HEARTBEAT, 1, 60)).unwrap();
    fabric.inject(a, &tagged).unwrap();
    fabric.inject(a, &frame(0x0800, 2, 60)).unwrap();
    fabric.inject(b, &frame(HEARTBEAT, 3, 60)).unwrap();
    let passed = capture_b.drain();
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].frame, frame(0x0800, 2, 60));
    assert!(capture_a.is_empty());
    let counters = fabric.counters(a).unwrap();
    assert_eq!(counters.ingress_dropped.filter, 2);
    assert_eq!(counters.egress_dropped.filter, 1);
    fabric.set_filter(a, HEARTBEAT, false).unwrap();
    fabric.inject(a, &frame(HEARTBEAT, 5, 60)).unwrap();
    assert_eq!(capture_b.len(), 1);
}

#[test]
fn bypass_shorts_the_box_and_cuts_it_off() {
    let fabric = Fabric::new().unwrap();
    let (source, capture_source) = captured_port(&fabric, "source");
    let (lan, capture_lan) = captured_port(&fabric, "box.lan");
    let (wan, capture_wan) = captured_port(&fabric, "box.wan");
    let (sink, capture_sink) = captured_port(&fabric, "sink");
    fabric.wire(source, lan).unwrap();
    fabric.wire(wan, sink).unwrap();

    fabric.inject(source, &frame(0x0800, 1, 60)).unwrap();
    assert_eq!(capture_lan.drain().len(), 1, "relay open: the box gets it");
    assert!(capture_sink.is_empty());

    fabric.set_bypass(lan, wan, true).unwrap();
    assert_eq!(fabric.bypass_peer(lan).unwrap(), Some(wan));
    fabric.inject(source, &frame(0x0800, 2, 60)).unwrap();
    let through = capture_sink.drain();
    assert_eq!(through.len(), 1);
    assert_eq!(through[0].frame, frame(0x0800, 2, 60));
    assert_eq!(through[0].origin, wan);
    fabric.inject(sink, &frame(0x0800, 3, 60)).unwrap();
    assert_eq!(capture_source.drain().len(), 1, "the relay works both ways");
    fabric.inject(lan, &frame(0x0800, 4, 60)).unwrap();
    assert!(capture_source.is_empty(), "the box is cut off");
    assert!(capture_lan.is_empty() && capture_wan.is_empty());
    assert_eq!(fabric.counters(lan).unwrap().dropped_while_bypassed, 1);
    assert_eq!(fabric.counters(lan).unwrap().bypassed, 1);

    fabric.set_bypass(lan, wan, false).unwrap();
    fabric.inject(source, &frame(0x0800, 5, 60)).unwrap();
    assert_eq!(capture_lan.drain().len(), 1);
    assert!(capture_sink.is_empty());
}

#[test]
fn bypass_refuses_loops_and_stops_the_ones_it_cannot_see() {
    let fabric = Fabric::new().unwrap();
    let (x, capture_x) = captured_port(&fabric, "x");
    let ports: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| captured_port(&fabric, name).0)
        .collect();
    let [a, b, c, d] = ports[..] else {
        unreachable!()
    };
    fabric.hub(&[x, a, d]).unwrap();
    fabric.wire(b, c).unwrap();
    assert!(matches!(
        fabric.set_bypass(a, d, true),
        Err(Error::BypassLoop)
    ));
    assert!(matches!(
        fabric.set_bypass(a, a, true),
        Err(Error::InvalidArgument(_))
    ));
    fabric.set_bypass(a, b, true).unwrap();
    assert!(matches!(
        fabric.set_bypass(a, c, true),
        Err(Error::PortInUse(_))
    ));
    // a -> b -> c -> d -> back into x's hub, and d -> c -> b -> a: a ring through two
    // relays, travelled both ways.
    fabric.set_bypass(c, d, true).unwrap();
    fabric.inject(x, &frame(0x0800, 1, 60)).unwrap();
    let copies = capture_x.drain().len();
    assert!(
        copies >= 1 && copies <= usize::from(MAX_BYPASS_HOPS),
        "{copies}"
    );
    let loops: u64 = [a, b, c, d]
        .iter()
        .map(|&port| fabric.counters(port).unwrap().dropped_loop)
        .sum();
    assert_eq!(loops, 2, "one drop per direction around the ring");
}

#[test]
fn pcap_file_holds_what_the_device_sent_and_got() {
    let fabric = Fabric::new().unwrap();
    let (a, _) = captured_port(&fabric, "a");
    let (b, _) = captured_port(&fabric, "b");
    fabric.wire(a, b).unwrap();
    let path = std::env::temp_dir().join(format!("duplex-fabric-{}.pcap", std::process::id()));
    fabric.start_pcap(a, &path).unwrap();
    fabric.set_loss(a, Direction::Ingress, 100.0).unwrap();
    fabric.inject(a, &frame(0x0800, 1, 60)).unwrap(); // sent, then lost: still captured
    fabric.set_loss(a, Direction::Ingress, 0.0).unwrap();
    fabric.inject(a, &frame(0x0800, 2, 1514)).unwrap();
    fabric.inject(b, &frame(0x0806, 3, 42)).unwrap(); // got by a
    fabric.stop_pcap(a).unwrap();
    fabric.inject(a, &frame(0x0800, 4, 60)).unwrap(); // after the capture
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        bytes[0..4],
        [0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian microsecond magic"
    );
    assert_eq!(bytes[20..24], [1, 0, 0, 0], "link type Ethernet");
    let records = pcap::parse(&bytes).unwrap();
    let lengths: Vec<_> = records.iter().map(|record| record.data.len()).collect();
    assert_eq!(lengths, [60, 1514, 42]);
    assert_eq!(records[2].data, frame(0x0806, 3, 42));
    assert!(
        records
            .iter()
            .all(|record| record.original_length as usize == record.data.len())
    );
    assert!(records[0].seconds > 1_577_836_800, "wall-clock time stamps");
}

fn traffic(flows: u16) -> TrafficSpec {
    TrafficSpec {
        flows,
        ..TrafficSpec::new(
            mac(1),
            mac(2),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 1, 1),
        )
    }
}

#[test]
fn source_sends_its_exact_count_in_sequence() {
    let fabric = Fabric::new().unwrap();
    let source_port = fabric.add_internal_port("source", Discard).unwrap();
    let sink = Sink::new();
    let sink_port = fabric.add_internal_port("sink", sink.clone()).unwrap();
    fabric.wire(source_port, sink_port).unwrap();
    let mut config = SourceConfig::new(traffic(4), Rate::FramesPerSecond(20_000.0), 64);
    config.count = Some(1000);
    let report = Source::start(&fabric, source_port, config)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.sent, 1000);
    assert_eq!(
        report.sent_per_flow.values().copied().collect::<Vec<_>>(),
        [250; 4]
    );
    let received = sink.report();
    assert_eq!(received.total.received, 1000);
    assert_eq!(received.flows.len(), 4);
    let loss = received.loss_against(&report);
    assert_eq!((loss.lost, loss.duplicated, loss.reordered), (0, 0, 0));
    assert_eq!(received.flows[&3].highest_sequence, Some(249));
    assert_eq!(received.origins[&source_port].frames, 1000);
    assert!(received.transitions.is_empty());
    assert_eq!(fabric.counters(sink_port).unwrap().tx_bytes, 1000 * 60);
    assert!(report.end_ns > report.start_ns);
}

#[test]
fn source_stops_on_request_and_refuses_nonsense() {
    let fabric = Fabric::new().unwrap();
    let port = fabric.add_internal_port("source", Discard).unwrap();
    let config = SourceConfig::new(traffic(1), Rate::FramesPerSecond(1000.0), 64);
    let source = Source::start(&fabric, port, config).unwrap();
    assert!(eventually(|| source.sent() > 0));
    let report = source.stop().unwrap();
    assert!(report.sent > 0);
    assert!(matches!(
        Source::start(&fabric, port, config).unwrap().wait(),
        Err(Error::InvalidArgument(_))
    ));
    let bad = [
        SourceConfig::new(traffic(1), Rate::FramesPerSecond(0.0), 64),
        SourceConfig::new(traffic(0), Rate::Unlimited, 64),
        SourceConfig::new(traffic(1), Rate::Unlimited, 63),
    ];
    for config in bad {
        assert!(Source::start(&fabric, port, config).is_err(), "{config:?}");
    }
    let unknown = unknown_port();
    assert!(matches!(
        Source::start(&fabric, unknown, config),
        Err(Error::UnknownPort(_))
    ));
}

#[test]
fn dropping_the_fabric_stops_everything() {
    let fabric = Fabric::new().unwrap();
    let port = fabric.add_vm_port("vm", mac(1)).unwrap();
    let source_port = fabric.add_internal_port("source", Discard).unwrap();
    fabric.wire(source_port, port.id).unwrap();
    fabric
        .set_delay(port.id, Direction::Egress, Duration::from_secs(3600))
        .unwrap();
    let config = SourceConfig::new(traffic(1), Rate::FramesPerSecond(1000.0), 64);
    let source = Source::start(&fabric, source_port, config).unwrap();
    assert!(eventually(|| source.sent() > 0));
    drop(fabric);
    assert!(eventually(|| source.is_finished()), "the source noticed");
    assert!(matches!(source.stop(), Err(Error::Stopped)));
}

#[test]
fn traffic_crosses_two_udp_hops_through_the_loopback_appliance() {
    let path = CeilingPath::new(FabricConfig::default()).unwrap();
    let mut config = SourceConfig::new(CeilingPath::traffic(), Rate::FramesPerSecond(5_000.0), 512);
    config.count = Some(500);
    let report = Source::start(&path.fabric, path.source_port, config)
        .unwrap()
        .wait()
        .unwrap();
    assert!(path.sink.wait_for(500, PATIENCE));
    let received = path.sink.report();
    assert_eq!(received.loss_against(&report).lost, 0);
    assert_eq!(received.origins[&path.wan.id].frames, 500);
    // The appliance counts after its send returns, which may be after the sink got it.
    assert!(eventually(|| path.appliance.forwarded() == (500, 0)));
    assert_eq!(received.total.latency.samples(), 500);
}

#[test]
fn ceiling_search_runs_end_to_end() {
    let path = CeilingPath::new(FabricConfig::default()).unwrap();
    let mut config = TrialConfig::new(CeilingPath::traffic(), 64);
    config.duration = Duration::from_millis(100);
    config.drain_quiet = Duration::from_millis(20);
    let mut runner = path.runner(config);
    let search = RateSearch {
        min_fps: 200.0,
        max_fps: 1_000.0,
        max_trials: 3,
        ..RateSearch::default()
    };
    let outcome = find_max_rate(&search, |rate| runner.run(rate)).unwrap();
    assert!(!outcome.trials.is_empty() && outcome.trials.len() <= 3);
    if let Some((rate, trial)) = outcome.best {
        assert_eq!(trial.offered_fps, rate);
        assert!(trial.loss.sent > 0);
        assert!(trial.latency.is_some());
    }
}

#[test]
fn topology_errors_are_reported() {
    let fabric = Fabric::new().unwrap();
    let (a, _) = captured_port(&fabric, "a");
    let (b, _) = captured_port(&fabric, "b");
    let (c, capture_c) = captured_port(&fabric, "c");
    fabric.wire(a, b).unwrap();
    assert!(matches!(fabric.wire(b, c), Err(Error::PortInUse(_))));
    assert!(matches!(fabric.hub(&[c]), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        fabric.hub(&[c, c]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        fabric.inject(a, &[0; 13]),
        Err(Error::FrameLength(13))
    ));
    assert!(matches!(fabric.vm_port(a), Err(Error::WrongPortKind(_))));
    fabric.inject(c, &frame(0x0800, 1, 60)).unwrap();
    assert_eq!(fabric.counters(c).unwrap().unconnected, 1);
    fabric.detach(b).unwrap();
    fabric.wire(b, c).unwrap();
    fabric.inject(b, &frame(0x0800, 2, 60)).unwrap();
    assert_eq!(capture_c.len(), 1);
    // Left alone by the detach, `a` is free again.
    let (d, capture_d) = captured_port(&fabric, "d");
    fabric.wire(a, d).unwrap();
    fabric.inject(a, &frame(0x0800, 3, 60)).unwrap();
    assert_eq!((capture_c.len(), capture_d.len()), (1, 1));
    assert_eq!(fabric.ports(), [a, b, c, d]);
    assert_eq!(fabric.port_name(c).unwrap(), "c");
}
