//! Host tests of the virtio-net driver against the fake device.

use std::boxed::Box;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use duplex_hal::{Error, MacAddress, Nic};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::transport::{DeviceStatus, DeviceType};

use super::fake::{AVAILABLE_NO_INTERRUPT, FakeNetDevice};
use super::net::{QUEUE_SIZE, VirtioNet};
use super::*;
use crate::pci::{ConfigSpace, PciAddress};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x77];
const FEATURE_MAC: u64 = 1 << 5;
const FEATURE_STATUS: u64 = 1 << 16;
const FEATURE_VERSION_1: u64 = 1 << 32;
/// What QEMU's virtio-net offers besides, which the driver must decline: checksum
/// offloads, mergeable buffers, control queue, event index, indirect descriptors.
const FEATURES_DECLINED: u64 = (1 << 0) | (1 << 1) | (1 << 15) | (1 << 17) | (1 << 28) | (1 << 29);
const QEMU_FEATURES: u64 = FEATURE_MAC | FEATURE_STATUS | FEATURE_VERSION_1 | FEATURES_DECLINED;

fn frame(len: usize, seed: u32) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len.max(18))
        .map(|i| (i as u32).wrapping_mul(7).wrapping_add(seed) as u8)
        .collect();
    bytes[..6].copy_from_slice(&[0xff; 6]);
    bytes[6..12].copy_from_slice(&MAC);
    bytes[14..18].copy_from_slice(&seed.to_be_bytes());
    bytes.truncate(len);
    bytes
}

fn start(device: &FakeNetDevice) -> VirtioNet<FakeNetDevice> {
    VirtioNet::new(device.clone()).expect("driver starts")
}

fn receive_all(nic: &mut impl Nic, budget: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    nic.receive(budget, &mut |f| frames.push(f.to_vec()));
    frames
}

#[test]
fn identifies_virtio_net_ids() {
    assert_eq!(
        identify_net(0x1af4, 0x1000),
        Some(NetDeviceKind::Transitional)
    );
    assert_eq!(identify_net(0x1af4, 0x1041), Some(NetDeviceKind::Modern));
    assert_eq!(identify_net(0x1af4, 0x1001), None, "virtio-blk");
    assert_eq!(identify_net(0x8086, 0x100e), None);
}

#[test]
fn start_negotiates_only_what_it_uses_and_posts_every_receive_buffer() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let nic = start(&device);
    assert_eq!(nic.mac_address(), MacAddress(MAC));
    assert_eq!(nic.model(), "virtio-net");
    assert_eq!(nic.max_frame_len(), 1518);
    assert_eq!(nic.header_len(), 12);
    assert_eq!(
        device.with(|state| state.driver_features),
        FEATURE_MAC | FEATURE_STATUS | FEATURE_VERSION_1
    );
    assert!(
        device
            .status()
            .contains(DeviceStatus::DRIVER_OK | DeviceStatus::FEATURES_OK)
    );
    assert_eq!(device.available_index(0), QUEUE_SIZE as u16);
    assert_eq!(device.available_index(1), 0);
    assert_eq!(
        device.notifications(0),
        1,
        "one notification for all receive buffers"
    );
    // Used-buffer interrupts are suppressed on both queues.
    assert_eq!(device.available_flags(0), AVAILABLE_NO_INTERRUPT);
    assert_eq!(device.available_flags(1), AVAILABLE_NO_INTERRUPT);
}

#[test]
fn start_refuses_what_it_cannot_drive() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    device.with(|state| state.device_type = DeviceType::Block);
    assert_eq!(VirtioNet::new(device).unwrap_err(), Error::Unsupported);

    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    device.with(|state| state.accept_features = false);
    assert_eq!(
        VirtioNet::new(device.clone()).unwrap_err(),
        Error::Unsupported
    );
    assert!(device.status().is_empty(), "device left reset");

    let device = FakeNetDevice::new(MAC, QEMU_FEATURES & !FEATURE_MAC);
    assert_eq!(
        VirtioNet::new(device.clone()).unwrap_err(),
        Error::Unsupported
    );
    assert!(device.status().is_empty());

    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    device.with(|state| state.max_queue_size = 128);
    assert_eq!(
        VirtioNet::new(device.clone()).unwrap_err(),
        Error::Unsupported
    );
    assert!(device.status().is_empty());
}

#[test]
fn receive_hands_frames_in_place_and_reposts_buffers() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    let sent: Vec<Vec<u8>> = (0..20)
        .map(|seed| frame(60 + seed as usize * 70, seed))
        .collect();
    for f in &sent {
        assert!(device.deliver(f));
    }
    let first = receive_all(&mut nic, 8);
    assert_eq!(first, sent[..8]);
    assert_eq!(
        device.available_index(0),
        QUEUE_SIZE as u16 + 8,
        "buffers posted again"
    );
    assert_eq!(receive_all(&mut nic, 64), sent[8..]);
    let counters = nic.counters();
    assert_eq!(counters.rx_frames, 20);
    assert_eq!(
        counters.rx_bytes,
        sent.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    // Nothing pending: nothing happens.
    let notifications = device.notifications(0);
    assert!(receive_all(&mut nic, 64).is_empty());
    assert_eq!(device.notifications(0), notifications);
}

#[test]
fn receive_notifies_once_per_batch_and_only_when_asked() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    for seed in 0..10 {
        assert!(device.deliver(&frame(64, seed)));
    }
    let before = device.notifications(0);
    assert_eq!(receive_all(&mut nic, 64).len(), 10);
    assert_eq!(device.notifications(0), before + 1);

    device.suppress_notifications(0, true);
    for seed in 0..10 {
        assert!(device.deliver(&frame(64, seed)));
    }
    assert_eq!(receive_all(&mut nic, 64).len(), 10);
    assert_eq!(
        device.notifications(0),
        before + 1,
        "device said it does not need one"
    );
}

#[test]
fn runt_and_oversized_received_frames_are_dropped() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    assert!(device.deliver(&frame(13, 1)));
    assert!(device.deliver(&frame(1519, 2)));
    assert!(device.deliver(&frame(14, 3)));
    assert!(device.deliver(&frame(1518, 4)));
    assert_eq!(
        receive_all(&mut nic, 64),
        vec![frame(14, 3), frame(1518, 4)]
    );
    assert_eq!(nic.counters().rx_dropped, 2);
    // Dropped frames' buffers were posted again too.
    assert_eq!(device.available_index(0), QUEUE_SIZE as u16 + 4);
}

#[test]
fn transmit_batches_behind_one_notification() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|seed| frame(60 + seed as usize * 140, seed))
        .collect();
    for f in &frames {
        nic.transmit(f).unwrap();
    }
    assert_eq!(device.notifications(1), 0);
    nic.flush();
    assert_eq!(device.notifications(1), 1);
    assert_eq!(device.take_wire(), frames);
    assert_eq!(
        device.with(|state| state.bad_headers),
        0,
        "headers are zero"
    );
    nic.flush();
    assert_eq!(device.notifications(1), 1, "empty flush does not notify");
    let counters = nic.counters();
    assert_eq!(counters.tx_frames, 10);
    assert_eq!(
        counters.tx_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn transmit_refuses_runts_and_oversized_frames() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    assert_eq!(nic.transmit(&frame(13, 0)), Err(Error::OutOfRange));
    assert_eq!(nic.transmit(&frame(1519, 0)), Err(Error::OutOfRange));
    nic.transmit(&frame(14, 1)).unwrap();
    nic.transmit(&frame(1518, 2)).unwrap();
    nic.flush();
    assert_eq!(device.take_wire(), vec![frame(14, 1), frame(1518, 2)]);
    assert_eq!(nic.counters().tx_dropped, 2);
}

#[test]
fn full_transmit_queue_is_busy_until_the_device_catches_up() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    device.with(|state| state.transmit_on_notify = false);
    for seed in 0..QUEUE_SIZE as u32 {
        nic.transmit(&frame(64, seed)).unwrap();
    }
    assert_eq!(nic.transmit(&frame(64, 999)), Err(Error::Busy));
    nic.flush();
    assert_eq!(
        nic.transmit(&frame(64, 999)),
        Err(Error::Busy),
        "device has not sent yet"
    );
    assert_eq!(nic.counters().tx_dropped, 2);
    device.process_transmit();
    nic.transmit(&frame(64, 1000))
        .expect("transmit reclaims finished slots");
    nic.flush();
    device.process_transmit();
    let wire = device.take_wire();
    assert_eq!(wire.len(), QUEUE_SIZE + 1);
    assert_eq!(wire[QUEUE_SIZE], frame(64, 1000));
}

#[test]
fn suppressed_transmit_notifications_are_respected() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    device.suppress_notifications(1, true);
    nic.transmit(&frame(64, 1)).unwrap();
    nic.flush();
    assert_eq!(device.notifications(1), 0);
    // The device, busy anyway, picks the frame up by itself.
    device.process_transmit();
    assert_eq!(device.take_wire(), vec![frame(64, 1)]);
}

#[test]
fn queues_wrap_past_the_16_bit_ring_indices() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    let total = 70_000u32;
    let mut received = 0u32;
    let mut seed = 0u32;
    while seed < total {
        for _ in 0..37 {
            assert!(device.deliver(&frame(64, seed)), "frame {seed}");
            seed += 1;
        }
        let mut ok = true;
        let mut next = received;
        nic.receive(64, &mut |f| {
            ok &= f == frame(64, next).as_slice();
            next += 1;
        });
        assert!(ok, "frames in order around {received}");
        received = next;
    }
    assert_eq!(received, seed);

    let mut sent = 0u32;
    while sent < total {
        for _ in 0..41 {
            nic.transmit(&frame(60, sent)).unwrap();
            sent += 1;
        }
        nic.flush();
        let wire = device.take_wire();
        assert_eq!(wire.len(), 41);
        assert_eq!(wire[40], frame(60, sent - 1));
    }
}

#[test]
fn link_changes_are_counted() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let mut nic = start(&device);
    assert!(nic.link_up());
    device.set_link(false);
    assert!(!nic.link_up());
    assert!(!nic.link_up());
    device.set_link(true);
    assert!(nic.link_up());
    assert_eq!(nic.counters().link_changes, 2);

    // Without the STATUS feature the link is always up.
    let device = FakeNetDevice::new(MAC, FEATURE_MAC | FEATURE_VERSION_1);
    let mut nic = start(&device);
    device.set_link(false);
    assert!(nic.link_up());
    assert_eq!(nic.counters().link_changes, 0);
}

#[test]
fn legacy_header_without_version_1() {
    let device = FakeNetDevice::new(MAC, FEATURE_MAC | FEATURE_STATUS);
    let mut nic = start(&device);
    assert_eq!(nic.header_len(), 10);
    assert!(device.deliver(&frame(100, 5)));
    assert_eq!(receive_all(&mut nic, 8), vec![frame(100, 5)]);
    nic.transmit(&frame(100, 6)).unwrap();
    nic.flush();
    assert_eq!(device.take_wire(), vec![frame(100, 6)]);
}

#[test]
fn drop_resets_the_device() {
    let device = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let nic = start(&device);
    drop(nic);
    assert!(device.status().is_empty());
    assert!(!device.deliver(&frame(64, 0)));
}

/// Moves every frame `input` has to `output`, in batches of 16.
fn forward(input: &mut dyn Nic, output: &mut dyn Nic) {
    while input.receive(16, &mut |f| output.transmit(f).unwrap()) > 0 {
        output.flush();
    }
}

#[test]
fn virtio_and_e1000_side_by_side() {
    use crate::dma::test_support::OffsetDma;
    use crate::e1000::{Config, E1000, fake::FakeE1000};

    let lan = FakeNetDevice::new(MAC, QEMU_FEATURES);
    let wan = FakeE1000::new([0x52, 0x54, 0, 0, 0, 9]);
    let config = Config {
        receive_descriptors: 64,
        transmit_descriptors: 64,
    };
    let mut nics: Vec<Box<dyn Nic>> = vec![
        Box::new(start(&lan)),
        Box::new(E1000::new(wan.clone(), &OffsetDma, config).unwrap()),
    ];
    let inbound: Vec<Vec<u8>> = (0..150)
        .map(|seed| frame(64 + seed as usize * 9, seed))
        .collect();
    let outbound: Vec<Vec<u8>> = (0..150)
        .map(|seed| frame(1400 - seed as usize * 3, seed))
        .collect();
    let (mut from_lan, mut from_wan) = (Vec::new(), Vec::new());
    for (lan_frames, wan_frames) in inbound.chunks(25).zip(outbound.chunks(25)) {
        for f in lan_frames {
            assert!(lan.deliver(f));
        }
        for f in wan_frames {
            assert!(wan.deliver(f));
        }
        // One round of a bridging main loop: each side's frames go out the other side.
        let (lan_nic, wan_nic) = nics.split_at_mut(1);
        forward(&mut *lan_nic[0], &mut *wan_nic[0]);
        forward(&mut *wan_nic[0], &mut *lan_nic[0]);
        from_lan.extend(wan.take_wire());
        from_wan.extend(lan.take_wire());
    }
    assert_eq!(from_lan, inbound);
    assert_eq!(from_wan, outbound);
}

/// Configuration space of one fake function, for the PCI glue.
struct FakeConfig {
    registers: RefCell<BTreeMap<(PciAddress, u8), u32>>,
}

impl ConfigSpace for FakeConfig {
    fn read32(&self, address: PciAddress, offset: u8) -> u32 {
        self.registers
            .borrow()
            .get(&(address, offset))
            .copied()
            .unwrap_or(0xffff_ffff)
    }
    fn write32(&self, address: PciAddress, offset: u8, value: u32) {
        self.registers.borrow_mut().insert((address, offset), value);
    }
}

#[test]
fn configuration_access_goes_through_the_kernel_accessor() {
    let address = PciAddress {
        bus: 0,
        device: 3,
        function: 0,
    };
    let config = FakeConfig {
        registers: RefCell::new(BTreeMap::new()),
    };
    config.write32(address, 0x00, 0x1000_1af4);
    let mut access = ConfigSpaceAccess::new(&config);
    let function = DeviceFunction {
        bus: 0,
        device: 3,
        function: 0,
    };
    assert_eq!(access.read_word(function, 0x00), 0x1000_1af4);
    access.write_word(function, 0x04, 0x0007);
    assert_eq!(config.read32(address, 0x04), 0x0007);
}

#[test]
fn new_pci_refuses_other_devices_without_touching_them() {
    let address = PciAddress {
        bus: 0,
        device: 4,
        function: 0,
    };
    let config = FakeConfig {
        registers: RefCell::new(BTreeMap::new()),
    };
    config.write32(address, 0x00, 0x100e_8086);
    config.write32(address, 0x04, 0);
    // SAFETY: the function is refused before anything is mapped or written.
    let result = unsafe { VirtioNet::new_pci(&config, address) };
    assert_eq!(result.unwrap_err(), Error::Unsupported);
    assert_eq!(
        config.read32(address, 0x04),
        0,
        "command register untouched"
    );
}
