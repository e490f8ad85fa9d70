//! The fabric against a real QEMU: two `-netdev dgram` NICs built from [`VmPort::netdev_arg`]
//! and joined by QEMU's own hub (`-machine none`, no guest, no CPU). Proves QEMU accepts
//! the arguments, sends from the VM address the fabric expects, and carries frames both
//! ways. Skipped (with a note) when `qemu-system-x86_64` is not installed.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duplex_fabric::{
    Capture, Discard, Fabric, MacAddress, Rate, Sink, Source, SourceConfig, TrafficSpec, VmPort,
};

const PATIENCE: Duration = Duration::from_secs(20);

/// A QEMU process, killed on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts QEMU relaying between two `-netdev` values; `None` without QEMU.
fn qemu_hub(netdev_a: &str, netdev_b: &str) -> Option<Qemu> {
    let child = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-machine", "none", "-display", "none"])
        .args(["-netdev", netdev_a, "-netdev", netdev_b])
        .args(["-netdev", "hubport,id=ha,hubid=0,netdev=a"])
        .args(["-netdev", "hubport,id=hb,hubid=0,netdev=b"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(Qemu(child)),
        Err(error) => {
            eprintln!("skipped: cannot run qemu-system-x86_64: {error}");
            None
        }
    }
}

fn frame(tag: u8) -> Vec<u8> {
    let mut frame = vec![tag; 60];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame
}

#[test]
fn frames_cross_a_real_qemu_by_port_numbers() {
    let fabric = Fabric::new().unwrap();
    let a = fabric
        .add_vm_port("qemu.a", MacAddress([2, 0, 0, 0, 1, 1]))
        .unwrap();
    let b = fabric
        .add_vm_port("qemu.b", MacAddress([2, 0, 0, 0, 1, 2]))
        .unwrap();
    let Some(qemu) = qemu_hub(&a.netdev_arg("a"), &b.netdev_arg("b")) else {
        return;
    };
    check_relay(&fabric, &a, &b, qemu);
}

#[test]
fn frames_cross_a_real_qemu_by_descriptors() {
    let fabric = Fabric::new().unwrap();
    let mac = MacAddress([2, 0, 0, 0, 2, 1]);
    let (a, socket_a) = fabric.add_vm_port_with_socket("qemu.a", mac).unwrap();
    let mac = MacAddress([2, 0, 0, 0, 2, 2]);
    let (b, socket_b) = fabric.add_vm_port_with_socket("qemu.b", mac).unwrap();
    socket_a.make_inheritable().unwrap();
    socket_b.make_inheritable().unwrap();
    let qemu = qemu_hub(&socket_a.netdev_arg("a"), &socket_b.netdev_arg("b"));
    drop((socket_a, socket_b));
    let Some(qemu) = qemu else {
        return;
    };
    check_relay(&fabric, &a, &b, qemu);
}

/// Sends frames through QEMU both ways and checks that all arrive from the VM's address.
fn check_relay(fabric: &Fabric, a: &VmPort, b: &VmPort, _qemu: Qemu) {
    let left = Capture::new();
    let left_port = fabric.add_internal_port("left", left.clone()).unwrap();
    let sink = Sink::new();
    let sink_port = fabric.add_internal_port("sink", sink.clone()).unwrap();
    fabric.wire(left_port, a.id).unwrap();
    fabric.wire(b.id, sink_port).unwrap();

    // QEMU binds its sockets some time after it starts: probe until a frame gets through.
    let deadline = Instant::now() + PATIENCE;
    loop {
        fabric.inject(sink_port, &frame(1)).unwrap();
        if left.recv_timeout(Duration::from_millis(50)).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "QEMU never relayed a frame");
    }
    while left.recv_timeout(Duration::from_millis(200)).is_some() {}

    let source_port = fabric.add_internal_port("source", Discard).unwrap();
    fabric.detach(left_port).unwrap();
    fabric.wire(source_port, a.id).unwrap();
    let traffic = TrafficSpec {
        flows: 2,
        ..TrafficSpec::new(
            MacAddress([2, 0, 0, 0, 0, 1]),
            MacAddress([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 1, 1),
        )
    };
    let mut config = SourceConfig::new(traffic, Rate::FramesPerSecond(2_000.0), 1518);
    config.count = Some(200);
    let report = Source::start(fabric, source_port, config)
        .unwrap()
        .wait()
        .unwrap();
    assert!(sink.wait_for(200, PATIENCE), "got {}", sink.received());
    let received = sink.report();
    assert_eq!(received.loss_against(&report).lost, 0);
    assert_eq!(received.origins[&b.id].frames, 200);
    for port in [a.id, b.id] {
        let counters = fabric.counters(port).unwrap();
        assert_eq!(counters.rx_foreign, 0, "QEMU sends from the VM address");
        assert_eq!(counters.tx_errors, 0);
    }
}
