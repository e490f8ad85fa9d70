//! The forwarding loop: frames cross the bridge both ways on virtio and on e1000, link
//! changes are seen, malformed frames do not stop the loop, the management address
//! answers ping.

use std::net::UdpSocket;
use std::time::Duration;

use duplex_fabric::{Capture, Fabric, MacAddress, PortId};
use duplex_lab::appliance::{Appliance, NicModel};
use duplex_tests::{BOOT_TIMEOUT, COMMAND_TIMEOUT, config, shared};

const HOST_L: MacAddress = MacAddress([0x02, 0, 0, 0, 0, 0x0a]);
const HOST_R: MacAddress = MacAddress([0x02, 0, 0, 0, 0, 0x0b]);
const WAIT: Duration = Duration::from_secs(20);

fn ethernet(dst: MacAddress, src: MacAddress, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

struct Bench {
    fabric: Fabric,
    left: Capture,
    right: Capture,
    host_l: PortId,
    host_r: PortId,
    appliance: Appliance,
}

fn bridge_between_two_hosts(model: NicModel, cmdline: &str) -> Bench {
    let fabric = Fabric::new().unwrap_or_else(|e| panic!("{e}"));
    let left = Capture::new();
    let right = Capture::new();
    let host_l = fabric
        .add_internal_port("hostL", left.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let host_r = fabric
        .add_internal_port("hostR", right.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    // One box alone: standalone mode (the data plane on its own, no Duplex election).
    let cmdline = format!("mode=standalone {cmdline}");
    let appliance = Appliance::launch(
        &fabric,
        config(model.name(), &cmdline),
        1,
        &[("A.lan", model), ("A.wan", model)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    fabric
        .wire(host_l, appliance.ports[0].id)
        .unwrap_or_else(|e| panic!("{e}"));
    fabric
        .wire(appliance.ports[1].id, host_r)
        .unwrap_or_else(|e| panic!("{e}"));
    appliance
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    Bench {
        fabric,
        left,
        right,
        host_l,
        host_r,
        appliance,
    }
}

/// Waits for a frame on `capture` whose payload carries `marker`.
fn expect_frame(capture: &Capture, marker: &[u8]) -> Vec<u8> {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(f) = capture.recv_timeout(Duration::from_millis(200))
            && f.frame.windows(marker.len()).any(|w| w == marker)
        {
            return f.frame;
        }
    }
    panic!(
        "no frame with marker {:?} within {WAIT:?}",
        String::from_utf8_lossy(marker)
    );
}

fn frames_cross_both_ways(model: NicModel) {
    let _machine = shared();
    let mut bench = bridge_between_two_hosts(model, "");
    // Unknown destination: flooded to the WAN side; the bridge learns HOST_L on the LAN.
    bench
        .fabric
        .inject(
            bench.host_l,
            &ethernet(HOST_R, HOST_L, 0x88b7, b"left-to-right"),
        )
        .unwrap();
    let f = expect_frame(&bench.right, b"left-to-right");
    assert_eq!(&f[0..6], &HOST_R.0);
    assert_eq!(&f[6..12], &HOST_L.0);
    // Known destination: forwarded back to the LAN side.
    bench
        .fabric
        .inject(
            bench.host_r,
            &ethernet(HOST_L, HOST_R, 0x88b7, b"right-to-left"),
        )
        .unwrap();
    expect_frame(&bench.left, b"right-to-left");
    // A burst crosses too, in order.
    for i in 0..200u32 {
        let payload = format!("burst-{i:04}");
        bench
            .fabric
            .inject(
                bench.host_l,
                &ethernet(HOST_R, HOST_L, 0x88b7, payload.as_bytes()),
            )
            .unwrap();
    }
    for i in 0..200u32 {
        expect_frame(&bench.right, format!("burst-{i:04}").as_bytes());
    }
    let interfaces = bench
        .appliance
        .vm
        .command("show interfaces", COMMAND_TIMEOUT)
        .unwrap();
    assert!(
        interfaces.contains("lan (") && interfaces.contains("wan ("),
        "{interfaces}"
    );
    assert!(interfaces.contains("link up"), "{interfaces}");
    let table = bench
        .appliance
        .vm
        .command("show bridge", COMMAND_TIMEOUT)
        .unwrap();
    assert!(
        table.contains("02:00:00:00:00:0a") && table.contains("lan"),
        "{table}"
    );
    assert!(
        table.contains("02:00:00:00:00:0b") && table.contains("wan"),
        "{table}"
    );
}

#[test]
fn frames_cross_the_bridge_both_ways_on_virtio() {
    frames_cross_both_ways(NicModel::Virtio);
}

#[test]
fn frames_cross_the_bridge_both_ways_on_e1000() {
    frames_cross_both_ways(NicModel::E1000);
}

fn link_down_is_seen(model: NicModel) {
    let _machine = shared();
    let mut bench = bridge_between_two_hosts(model, "");
    let vm = &mut bench.appliance.vm;
    vm.mark();
    vm.qmp()
        .execute(
            "set_link",
            Some(serde_json::json!({"name": "n1", "up": false})),
            COMMAND_TIMEOUT,
        )
        .unwrap();
    vm.wait_for("net: wan link down", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let interfaces = vm.command("show interfaces", COMMAND_TIMEOUT).unwrap();
    assert!(interfaces.contains("link down"), "{interfaces}");
    vm.qmp()
        .execute(
            "set_link",
            Some(serde_json::json!({"name": "n1", "up": true})),
            COMMAND_TIMEOUT,
        )
        .unwrap();
    vm.wait_for("net: wan link up", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn link_down_is_seen_and_reported_on_virtio() {
    link_down_is_seen(NicModel::Virtio);
}

#[test]
fn link_down_is_seen_and_reported_on_e1000() {
    link_down_is_seen(NicModel::E1000);
}

fn garbage_does_not_stop_the_loop(model: NicModel) {
    let _machine = shared();
    let mut bench = bridge_between_two_hosts(model, "");
    // First one frame end to end: QEMU's e1000 model (7.2) wedges its receive path for
    // good when a burst arrives within a second of the receiver being enabled; the
    // garbage comes once the link carries traffic.
    bench
        .fabric
        .inject(bench.host_l, &ethernet(HOST_R, HOST_L, 0x88b7, b"warm-up"))
        .unwrap();
    expect_frame(&bench.right, b"warm-up");
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let vm_lan = bench.appliance.ports[0].vm_addr;
    // Runts straight into QEMU's socket (the fabric refuses to carry them).
    for len in 1..14 {
        raw.send_to(&vec![0xa5; len], vm_lan).unwrap();
    }
    // Oversized, multicast source, reserved destination, seeded garbage.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    raw.send_to(&ethernet(HOST_R, HOST_L, 0x0800, &[0u8; 3000]), vm_lan)
        .unwrap();
    raw.send_to(
        &ethernet(
            HOST_R,
            MacAddress([0x01, 0, 0x5e, 0, 0, 1]),
            0x0800,
            b"bad source",
        ),
        vm_lan,
    )
    .unwrap();
    raw.send_to(
        &ethernet(
            MacAddress([0x01, 0x80, 0xc2, 0, 0, 0]),
            HOST_L,
            0x0026,
            b"stp",
        ),
        vm_lan,
    )
    .unwrap();
    for _ in 0..500 {
        let len = 14 + (next() % 1500) as usize;
        let frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        raw.send_to(&frame, vm_lan).unwrap();
    }
    // The loop still forwards.
    let before = bench
        .appliance
        .vm
        .command("show interfaces", COMMAND_TIMEOUT)
        .unwrap();
    eprintln!("{before}");
    bench
        .fabric
        .inject(
            bench.host_l,
            &ethernet(HOST_R, HOST_L, 0x88b7, b"still-alive"),
        )
        .unwrap();
    expect_frame(&bench.right, b"still-alive");
    let interfaces = bench
        .appliance
        .vm
        .command("show interfaces", COMMAND_TIMEOUT)
        .unwrap();
    // The multicast-source frame (and random ones like it) and the STP frame were counted.
    let counter = |name: &str| -> u64 {
        let at = interfaces
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in {interfaces}"));
        interfaces[at + name.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(counter("bad source ") >= 1, "{interfaces}");
    assert!(counter("reserved ") >= 1, "{interfaces}");
}

#[test]
fn runt_oversized_and_garbage_frames_do_not_stop_the_loop_on_virtio() {
    garbage_does_not_stop_the_loop(NicModel::Virtio);
}

#[test]
fn runt_oversized_and_garbage_frames_do_not_stop_the_loop_on_e1000() {
    garbage_does_not_stop_the_loop(NicModel::E1000);
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn the_management_address_answers_ping() {
    let _machine = shared();
    let bench = bridge_between_two_hosts(NicModel::Virtio, "ip=10.9.0.2/24");
    let me = [10, 9, 0, 1];
    let target = [10, 9, 0, 2];
    // ARP: who has 10.9.0.2?
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&HOST_L.0);
    arp.extend_from_slice(&me);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target);
    bench
        .fabric
        .inject(
            bench.host_l,
            &ethernet(MacAddress([0xff; 6]), HOST_L, 0x0806, &arp),
        )
        .unwrap();
    let reply = expect_frame(&bench.left, &target);
    assert_eq!(
        u16::from_be_bytes([reply[12], reply[13]]),
        0x0806,
        "{reply:02x?}"
    );
    let appliance_mac = MacAddress(reply[6..12].try_into().unwrap());
    // ICMP echo request.
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"duplex-ping");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = 20 + icmp.len();
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0,
        0,
        64,
        1,
        0,
        0,
    ];
    ip.extend_from_slice(&me);
    ip.extend_from_slice(&target);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    bench
        .fabric
        .inject(bench.host_l, &ethernet(appliance_mac, HOST_L, 0x0800, &ip))
        .unwrap();
    let reply = expect_frame(&bench.left, b"duplex-ping");
    assert_eq!(reply[14 + 9], 1, "IP protocol ICMP");
    assert_eq!(reply[14 + 20], 0, "ICMP echo reply: {reply:02x?}");
    assert_eq!(&reply[14 + 12..14 + 16], &target);
    // The WAN side never saw the ping (it was for the appliance itself).
    assert!(
        bench
            .right
            .drain()
            .iter()
            .all(|f| !f.frame.windows(11).any(|w| w == b"duplex-ping"))
    );
}
