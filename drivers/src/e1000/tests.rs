//! Host tests of the e1000 driver against the fake device.

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use duplex_hal::{Error, MacAddress, Nic};

use super::fake::FakeE1000;
use super::registers as reg;
use super::*;
use crate::dma::test_support::{OffsetDma, PHYSICAL_OFFSET};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01];

/// A frame of `len` bytes whose payload encodes `seed`.
fn frame(len: usize, seed: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; len.max(14)];
    bytes[..6].copy_from_slice(&[0xff; 6]);
    bytes[6..12].copy_from_slice(&MAC);
    bytes[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (index, byte) in bytes.iter_mut().enumerate().skip(14) {
        *byte = (seed as usize).wrapping_mul(31).wrapping_add(index) as u8;
    }
    if len >= 18 {
        bytes[14..18].copy_from_slice(&seed.to_be_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn small_config(descriptors: usize) -> Config {
    Config {
        receive_descriptors: descriptors,
        transmit_descriptors: descriptors,
    }
}

fn start(device: &FakeE1000, config: Config) -> E1000<FakeE1000> {
    E1000::new(device.clone(), &OffsetDma, config).expect("driver starts")
}

fn receive_all(nic: &mut impl Nic, budget: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    nic.receive(budget, &mut |f| frames.push(f.to_vec()));
    frames
}

#[test]
fn identifies_supported_and_refused_parts() {
    assert_eq!(
        identify(0x8086, 0x100e),
        Identification::Supported(Model::Intel82540Em)
    );
    assert_eq!(
        identify(0x8086, 0x100f),
        Identification::Supported(Model::Intel82545Em)
    );
    assert!(
        matches!(identify(0x8086, 0x10d3), Identification::Unsupported(reason) if reason.contains("82574"))
    );
    assert_eq!(identify(0x1af4, 0x1000), Identification::Unknown);
    assert_eq!(Model::Intel82540Em.name(), "82540EM");
}

#[test]
fn start_programs_rings_with_physical_addresses() {
    let device = FakeE1000::new(MAC);
    let nic = start(&device, Config::default());
    assert_eq!(nic.mac_address(), MacAddress(MAC));
    assert_eq!(nic.model(), "e1000");
    assert_eq!(nic.max_frame_len(), 1518);

    let rctl = device.peek(reg::RCTL);
    for bit in [
        reg::rctl::EN,
        reg::rctl::UPE,
        reg::rctl::MPE,
        reg::rctl::BAM,
        reg::rctl::SECRC,
    ] {
        assert_ne!(rctl & bit, 0, "RCTL bit {bit:#x}");
    }
    assert_ne!(device.peek(reg::TCTL) & reg::tctl::EN, 0);
    assert_eq!(device.peek(reg::RDLEN), 256 * 16);
    assert_eq!(device.peek(reg::TDLEN), 256 * 16);
    assert_eq!((device.peek(reg::RDH), device.peek(reg::RDT)), (0, 255));
    assert_eq!((device.peek(reg::TDH), device.peek(reg::TDT)), (0, 0));
    // The rings were given as physical addresses (the test allocator shifts them).
    let receive_base =
        (u64::from(device.peek(reg::RDBAH)) << 32) | u64::from(device.peek(reg::RDBAL));
    let transmit_base =
        (u64::from(device.peek(reg::TDBAH)) << 32) | u64::from(device.peek(reg::TDBAL));
    assert!(receive_base >= PHYSICAL_OFFSET && transmit_base >= PHYSICAL_OFFSET);
    assert_eq!(receive_base % 4096, 0);
    // Interrupts masked, MAC filter set and valid.
    assert!(device.writes_to(reg::IMC) >= 1);
    assert_eq!(
        device.peek(reg::RAL0),
        u32::from_le_bytes([0x52, 0x54, 0x00, 0xab])
    );
    assert_eq!(device.peek(reg::RAH0), 0xcd | (0x01 << 8) | reg::rah::AV);
    assert_ne!(device.peek(reg::CTRL) & reg::ctrl::SLU, 0);
}

#[test]
fn mac_comes_from_eeprom_before_receive_address_registers() {
    let device = FakeE1000::new(MAC);
    device.poke(reg::RAL0, 0x0403_0200);
    device.poke(reg::RAH0, 0x0605 | reg::rah::AV);
    let nic = start(&device, small_config(8));
    assert_eq!(nic.mac_address(), MacAddress(MAC));
}

#[test]
fn mac_falls_back_to_receive_address_registers() {
    let device = FakeE1000::new(MAC);
    device.with(|state| state.eeprom_present = false);
    device.poke(reg::RAL0, 0x0403_0200);
    device.poke(reg::RAH0, 0x0605 | reg::rah::AV);
    let nic = start(&device, small_config(8));
    assert_eq!(nic.mac_address(), MacAddress([0, 2, 3, 4, 5, 6]));
}

#[test]
fn blank_eeprom_also_falls_back() {
    let device = FakeE1000::new(MAC);
    device.with(|state| state.eeprom = [0xffff; 64]);
    let nic = start(&device, small_config(8));
    assert_eq!(nic.mac_address(), MacAddress(MAC));
}

#[test]
fn no_valid_mac_is_an_error() {
    let device = FakeE1000::new(MAC);
    device.with(|state| state.eeprom_present = false);
    device.poke(reg::RAH0, 0x0605); // address-valid bit clear
    assert_eq!(
        E1000::new(device.clone(), &OffsetDma, small_config(8)).unwrap_err(),
        Error::Io
    );
}

#[test]
fn stuck_reset_times_out() {
    let device = FakeE1000::new(MAC);
    device.with(|state| state.reset_stuck = true);
    assert_eq!(
        E1000::new(device.clone(), &OffsetDma, small_config(8)).unwrap_err(),
        Error::Timeout
    );
}

#[test]
fn bad_ring_sizes_are_refused() {
    for (receive, transmit) in [(0, 8), (12, 8), (8, 4), (8192, 8)] {
        let config = Config {
            receive_descriptors: receive,
            transmit_descriptors: transmit,
        };
        let device = FakeE1000::new(MAC);
        assert_eq!(
            E1000::new(device, &OffsetDma, config).unwrap_err(),
            Error::OutOfRange
        );
    }
}

#[test]
fn receive_hands_frames_in_order_with_one_tail_write_and_no_register_reads() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, Config::default());
    let sent: Vec<Vec<u8>> = (0..5)
        .map(|seed| frame(60 + seed as usize * 100, seed))
        .collect();
    for f in &sent {
        assert!(device.deliver(f));
    }
    let reads = device.reads();
    let tail_writes = device.writes_to(reg::RDT);
    assert_eq!(receive_all(&mut nic, 64), sent);
    assert_eq!(device.reads(), reads, "receive read a register");
    assert_eq!(
        device.writes_to(reg::RDT),
        tail_writes + 1,
        "one RDT write per batch"
    );
    assert_eq!(device.peek(reg::RDT), 4);

    let counters = nic.counters();
    assert_eq!(counters.rx_frames, 5);
    assert_eq!(
        counters.rx_bytes,
        sent.iter().map(|f| f.len() as u64).sum::<u64>()
    );

    // Nothing new: no frames, no register access at all.
    let writes = device.writes_to(reg::RDT);
    assert!(receive_all(&mut nic, 64).is_empty());
    assert_eq!(
        (device.reads(), device.writes_to(reg::RDT)),
        (reads, writes)
    );
}

#[test]
fn receive_respects_the_budget() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(16));
    for seed in 0..10 {
        assert!(device.deliver(&frame(64, seed)));
    }
    assert_eq!(receive_all(&mut nic, 3).len(), 3);
    assert_eq!(nic.receive(0, &mut |_| panic!("budget 0")), 0);
    let rest = receive_all(&mut nic, 100);
    assert_eq!(rest.len(), 7);
    assert_eq!(rest[0], frame(64, 3));
}

#[test]
fn receive_ring_wraps_around_many_times() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    let mut next_expected = 0u32;
    let mut seed = 0u32;
    for round in 0..60 {
        // Fill up to what the device may use, in varying batch sizes.
        let batch = 1 + round % 7;
        for _ in 0..batch {
            assert!(device.deliver(&frame(100, seed)), "round {round}");
            seed += 1;
        }
        for received in receive_all(&mut nic, 1 + round as usize % 5) {
            assert_eq!(received, frame(100, next_expected));
            next_expected += 1;
        }
        // Drain the rest so the next round has room.
        for received in receive_all(&mut nic, 64) {
            assert_eq!(received, frame(100, next_expected));
            next_expected += 1;
        }
    }
    assert_eq!(next_expected, seed);
    assert!(seed > 8 * 20, "the ring wrapped many times");
    assert_eq!(device.with(|state| state.missed), 0);
}

#[test]
fn full_receive_ring_withholds_one_descriptor_and_recovers() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    for seed in 0..7 {
        assert!(device.deliver(&frame(64, seed)));
    }
    assert!(
        !device.deliver(&frame(64, 99)),
        "the eighth descriptor stays with the driver"
    );
    assert_eq!(device.with(|state| state.missed), 1);
    assert_eq!(receive_all(&mut nic, 2), vec![frame(64, 0), frame(64, 1)]);
    assert!(device.deliver(&frame(64, 7)));
    assert!(device.deliver(&frame(64, 8)));
    assert!(!device.deliver(&frame(64, 100)));
    let rest = receive_all(&mut nic, 64);
    assert_eq!(rest, (2..9).map(|seed| frame(64, seed)).collect::<Vec<_>>());
}

#[test]
fn runt_oversized_and_damaged_frames_are_dropped_and_counted() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(16));
    assert!(device.deliver(&frame(13, 1))); // runt
    assert!(device.deliver(&frame(1519, 2))); // one byte too long
    assert!(device.deliver(&frame(3000, 3))); // spans two buffers
    assert!(device.deliver_with_errors(&frame(64, 4), 0x01)); // CRC error
    assert!(device.deliver_with_errors(&frame(64, 5), 0x40)); // IP checksum bit: not a frame error
    assert!(device.deliver(&frame(1518, 6))); // the longest accepted
    assert!(device.deliver(&frame(14, 7))); // the shortest accepted
    let received = receive_all(&mut nic, 64);
    assert_eq!(received, vec![frame(64, 5), frame(1518, 6), frame(14, 7)]);
    let counters = nic.counters();
    assert_eq!(counters.rx_dropped, 3);
    assert_eq!(counters.rx_errors, 1);
    assert_eq!(counters.rx_frames, 3);
    // All eight descriptors (the long frame took two) went back to the device.
    assert_eq!(device.peek(reg::RDT), 7);
}

#[test]
fn transmit_queues_and_flush_rings_the_doorbell_once() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, Config::default());
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|seed| frame(60 + seed as usize * 140, seed))
        .collect();
    let reads = device.reads();
    let tail_writes = device.writes_to(reg::TDT);
    for f in &frames {
        nic.transmit(f).unwrap();
    }
    assert!(device.take_wire().is_empty(), "nothing leaves before flush");
    assert_eq!(device.writes_to(reg::TDT), tail_writes);
    nic.flush();
    assert_eq!(device.writes_to(reg::TDT), tail_writes + 1);
    assert_eq!(device.reads(), reads, "transmit and flush read no register");
    assert_eq!(device.take_wire(), frames);
    let counters = nic.counters();
    assert_eq!(counters.tx_frames, 10);
    assert_eq!(
        counters.tx_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    // An empty flush touches nothing.
    nic.flush();
    assert_eq!(device.writes_to(reg::TDT), tail_writes + 1);
}

#[test]
fn transmit_refuses_runts_and_oversized_frames() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    assert_eq!(nic.transmit(&frame(13, 0)), Err(Error::OutOfRange));
    assert_eq!(nic.transmit(&frame(1519, 0)), Err(Error::OutOfRange));
    assert_eq!(nic.transmit(&[]), Err(Error::OutOfRange));
    nic.transmit(&frame(14, 1)).unwrap();
    nic.transmit(&frame(1518, 2)).unwrap();
    nic.flush();
    assert_eq!(device.take_wire(), vec![frame(14, 1), frame(1518, 2)]);
    assert_eq!(nic.counters().tx_dropped, 3);
}

#[test]
fn full_transmit_ring_is_busy_until_flushed() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    for seed in 0..7 {
        nic.transmit(&frame(64, seed)).unwrap();
    }
    assert_eq!(nic.transmit(&frame(64, 7)), Err(Error::Busy));
    assert_eq!(nic.counters().tx_dropped, 1);
    nic.flush();
    assert_eq!(device.take_wire().len(), 7);
    for seed in 7..14 {
        nic.transmit(&frame(64, seed)).unwrap();
    }
    nic.flush();
    assert_eq!(
        device.take_wire(),
        (7..14).map(|seed| frame(64, seed)).collect::<Vec<_>>()
    );
}

#[test]
fn stalled_transmitter_fills_the_ring_then_drains() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    device.with(|state| state.transmit_paused = true);
    for seed in 0..7 {
        nic.transmit(&frame(64, seed)).unwrap();
    }
    nic.flush();
    assert_eq!(
        nic.transmit(&frame(64, 7)),
        Err(Error::Busy),
        "device has not sent anything"
    );
    device.resume_transmit();
    nic.transmit(&frame(64, 7))
        .expect("transmit reclaims finished descriptors");
    nic.flush();
    assert_eq!(
        device.take_wire(),
        (0..8).map(|seed| frame(64, seed)).collect::<Vec<_>>()
    );
}

#[test]
fn transmit_ring_wraps_around_many_times() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    let mut sent = Vec::new();
    for seed in 0..200u32 {
        let f = frame(60 + (seed as usize * 37) % 1400, seed);
        nic.transmit(&f).unwrap();
        sent.push(f);
        if seed % 3 == 2 {
            nic.flush();
        }
    }
    nic.flush();
    assert_eq!(device.take_wire(), sent);
    assert_eq!(nic.counters().tx_dropped, 0);
}

#[test]
fn link_changes_are_counted_including_flaps_between_polls() {
    let device = FakeE1000::new(MAC);
    let mut nic = start(&device, small_config(8));
    assert!(nic.link_up());
    assert_eq!(nic.counters().link_changes, 0);
    device.set_link(false);
    assert!(!nic.link_up());
    assert!(!nic.link_up());
    assert_eq!(nic.counters().link_changes, 1);
    device.set_link(true);
    assert!(nic.link_up());
    assert_eq!(nic.counters().link_changes, 2);
    // Down and up again between two polls: ICR.LSC tells.
    device.set_link(false);
    device.set_link(true);
    assert!(nic.link_up());
    assert_eq!(nic.counters().link_changes, 4);
    // Frames do not arrive while the link is down.
    device.set_link(false);
    assert!(!device.deliver(&frame(64, 0)));
}

#[test]
fn several_nics_forward_to_each_other() {
    let left_device = FakeE1000::new(MAC);
    let right_device = FakeE1000::new([0x52, 0x54, 0, 0, 0, 2]);
    let mut nics: Vec<Box<dyn Nic>> = vec![
        Box::new(start(&left_device, small_config(32))),
        Box::new(start(&right_device, small_config(32))),
    ];
    assert_ne!(nics[0].mac_address(), nics[1].mac_address());
    let frames: Vec<Vec<u8>> = (0..100)
        .map(|seed| frame(64 + seed as usize, seed))
        .collect();
    let mut arrived = Vec::new();
    for chunk in frames.chunks(20) {
        for f in chunk {
            assert!(left_device.deliver(f));
        }
        // Forward left -> right in batches, like the appliance's main loop.
        let (left, right) = nics.split_at_mut(1);
        while left[0].receive(8, &mut |f| right[0].transmit(f).unwrap()) > 0 {
            right[0].flush();
        }
        arrived.extend(right_device.take_wire());
    }
    assert_eq!(arrived, frames);
    assert_eq!(nics[0].counters().rx_frames, 100);
    assert_eq!(nics[1].counters().tx_frames, 100);
}

#[test]
fn drop_stops_the_device() {
    let device = FakeE1000::new(MAC);
    let nic = start(&device, small_config(8));
    drop(nic);
    assert_eq!(device.peek(reg::RCTL) & reg::rctl::EN, 0);
    assert_eq!(device.peek(reg::TCTL) & reg::tctl::EN, 0);
}

#[test]
fn mmio_registers_use_volatile_32_bit_accesses() {
    let mut memory = vec![0u32; BAR0_SIZE / 4];
    memory[reg::STATUS / 4] = 0x8008_0783;
    {
        // SAFETY: `memory` stands in for BAR 0: BAR0_SIZE bytes, owned by this test and
        // alive past this block; only `registers` touches it inside the block.
        let mut registers = unsafe { MmioRegisters::new(memory.as_mut_ptr() as usize) };
        assert_eq!(registers.read32(reg::STATUS), 0x8008_0783);
        registers.write32(reg::TDT, 42);
        registers.write32(BAR0_SIZE - 4, 7);
    }
    assert_eq!(memory[reg::TDT / 4], 42);
    assert_eq!(memory[BAR0_SIZE / 4 - 1], 7);
}

#[test]
#[should_panic(expected = "invalid")]
fn mmio_registers_refuse_offsets_outside_the_bar() {
    let mut memory = vec![0u32; BAR0_SIZE / 4];
    // SAFETY: as above.
    let mut registers = unsafe { MmioRegisters::new(memory.as_mut_ptr() as usize) };
    registers.read32(BAR0_SIZE);
}
