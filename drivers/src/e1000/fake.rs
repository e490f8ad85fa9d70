//! A fake 8254x for host tests: it plays the device side of the register file and of
//! the descriptor rings, reaching the driver's DMA memory through the physical addresses
//! the driver programmed (translated back with `dma::test_support`).
//!
//! It follows the datasheet (and QEMU where they agree): RDH/RDT and TDH/TDT ring
//! semantics, DD/EOP write-back, TDT writes transmit synchronously, ICR clears on read,
//! EERD returns EEPROM words, CTRL.RST self-clears. It counts register reads and writes
//! so that tests can hold the driver to "no register reads on the fast path".

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use super::registers::{self as reg, RegisterBlock, descriptor};
use crate::dma::test_support::physical_to_virtual;

/// Receive buffer size the fake assumes (RCTL.BSIZE = 2048).
const BUFFER_SIZE: usize = 2048;

/// The device's state; tests reach it through [`FakeE1000`].
#[derive(Debug)]
pub struct FakeState {
    registers: Vec<u32>,
    /// EEPROM contents (words 0-2: the MAC address).
    pub eeprom: [u16; 64],
    /// When false, EERD never reports DONE.
    pub eeprom_present: bool,
    /// When true, CTRL.RST never clears.
    pub reset_stuck: bool,
    /// When true, the transmitter ignores TDT (a stalled link on real hardware).
    pub transmit_paused: bool,
    /// Frames the device put on the wire.
    pub wire: VecDeque<Vec<u8>>,
    /// Frames dropped because the receive ring had no free descriptor.
    pub missed: u64,
    /// Register reads so far.
    pub reads: u64,
    /// Register writes so far, per offset.
    pub writes: BTreeMap<usize, u64>,
    /// Every value written to RDT, in order.
    pub rdt_writes: Vec<u32>,
    partial_transmit: Vec<u8>,
}

/// A handle on a fake device; clones share it (the driver owns one, the test another).
#[derive(Debug, Clone)]
pub struct FakeE1000(Rc<RefCell<FakeState>>);

impl FakeE1000 {
    /// A device whose EEPROM and RAL0/RAH0 hold `mac`, link up, as after power-on.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut eeprom = [0u16; 64];
        for (word, pair) in eeprom.iter_mut().zip(mac.chunks_exact(2)) {
            *word = u16::from_le_bytes([pair[0], pair[1]]);
        }
        let mut state = FakeState {
            registers: vec![0; reg::BAR0_SIZE / 4],
            eeprom,
            eeprom_present: true,
            reset_stuck: false,
            transmit_paused: false,
            wire: VecDeque::new(),
            missed: 0,
            reads: 0,
            writes: BTreeMap::new(),
            rdt_writes: Vec::new(),
            partial_transmit: Vec::new(),
        };
        state.set(reg::STATUS, reg::status::LU);
        state.set(
            reg::RAL0,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        );
        state.set(
            reg::RAH0,
            u32::from_le_bytes([mac[4], mac[5], 0, 0]) | reg::rah::AV,
        );
        FakeE1000(Rc::new(RefCell::new(state)))
    }

    /// Runs `f` on the device's state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.borrow_mut())
    }

    /// The current value of a register, without the side effects of a read.
    pub fn peek(&self, offset: usize) -> u32 {
        self.0.borrow().get(offset)
    }

    /// Sets a register directly (test setup).
    pub fn poke(&self, offset: usize, value: u32) {
        self.0.borrow_mut().set(offset, value);
    }

    /// Changes the link state, raising ICR.LSC if it changed.
    pub fn set_link(&self, up: bool) {
        let mut state = self.0.borrow_mut();
        let status = state.get(reg::STATUS);
        let new = if up {
            status | reg::status::LU
        } else {
            status & !reg::status::LU
        };
        if new != status {
            state.set(reg::STATUS, new);
            let cause = state.get(reg::ICR) | reg::icr::LSC;
            state.set(reg::ICR, cause);
        }
    }

    /// A frame arrives from the wire. Returns false if it was dropped (receiver off,
    /// link down, or not enough free descriptors).
    pub fn deliver(&self, frame: &[u8]) -> bool {
        self.deliver_with_errors(frame, 0)
    }

    /// A frame arrives with the receive `errors` byte set (e.g. 0x01, CRC error).
    pub fn deliver_with_errors(&self, frame: &[u8], errors: u8) -> bool {
        self.0.borrow_mut().receive(frame, errors)
    }

    /// Un-stalls the transmitter and lets it catch up with TDT.
    pub fn resume_transmit(&self) {
        let mut state = self.0.borrow_mut();
        state.transmit_paused = false;
        state.transmit();
    }

    /// Takes the frames the device transmitted so far.
    pub fn take_wire(&self) -> Vec<Vec<u8>> {
        self.0.borrow_mut().wire.drain(..).collect()
    }

    /// Register reads so far.
    pub fn reads(&self) -> u64 {
        self.0.borrow().reads
    }

    /// Register writes to `offset` so far.
    pub fn writes_to(&self, offset: usize) -> u64 {
        self.0.borrow().writes.get(&offset).copied().unwrap_or(0)
    }
}

impl FakeState {
    fn get(&self, offset: usize) -> u32 {
        self.registers[offset / 4]
    }

    fn set(&mut self, offset: usize, value: u32) {
        self.registers[offset / 4] = value;
    }

    fn ring_count(&self, length_register: usize) -> u32 {
        self.get(length_register) / descriptor::SIZE as u32
    }

    /// Virtual address of descriptor `index` of the ring at `(low, high)`.
    fn descriptor(&self, low: usize, high: usize, index: u32) -> *mut u8 {
        let base = (u64::from(self.get(high)) << 32) | u64::from(self.get(low) & !0xf);
        physical_to_virtual(base + u64::from(index) * descriptor::SIZE as u64)
    }

    fn receive(&mut self, frame: &[u8], errors: u8) -> bool {
        let enabled = self.get(reg::RCTL) & reg::rctl::EN != 0;
        let link = self.get(reg::STATUS) & reg::status::LU != 0;
        if !enabled || !link {
            return false;
        }
        let count = self.ring_count(reg::RDLEN);
        let (head, tail) = (self.get(reg::RDH), self.get(reg::RDT));
        let free = if tail >= head {
            tail - head
        } else {
            count - head + tail
        };
        let needed = frame.len().max(1).div_ceil(BUFFER_SIZE) as u32;
        if free < needed {
            self.missed += 1;
            return false;
        }
        let mut head = head;
        let chunks: Vec<&[u8]> = frame.chunks(BUFFER_SIZE).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let last = index + 1 == chunks.len();
            let slot = self.descriptor(reg::RDBAL, reg::RDBAH, head);
            // SAFETY: `slot` is a descriptor of the ring the driver programmed (RDBA,
            // RDLEN), translated from its physical address; the driver handed it to the
            // device (between RDH and RDT), so nothing else writes it now.
            unsafe {
                let address = slot.cast::<u64>().read_volatile();
                let buffer = physical_to_virtual(address);
                core::ptr::copy_nonoverlapping(chunk.as_ptr(), buffer, chunk.len());
                slot.add(descriptor::LENGTH)
                    .cast::<u16>()
                    .write_volatile(chunk.len() as u16);
                slot.add(descriptor::ERRORS)
                    .write_volatile(if last { errors } else { 0 });
                let status = descriptor::STATUS_DD | if last { descriptor::STATUS_EOP } else { 0 };
                slot.add(descriptor::STATUS).write_volatile(status);
            }
            head = (head + 1) % count;
        }
        self.set(reg::RDH, head);
        true
    }

    fn transmit(&mut self) {
        if self.get(reg::TCTL) & reg::tctl::EN == 0 || self.transmit_paused {
            return;
        }
        let count = self.ring_count(reg::TDLEN);
        if self.get(reg::TDT) >= count || self.get(reg::TDH) >= count {
            return;
        }
        while self.get(reg::TDH) != self.get(reg::TDT) {
            let head = self.get(reg::TDH);
            let slot = self.descriptor(reg::TDBAL, reg::TDBAH, head);
            // SAFETY: a descriptor of the ring the driver programmed (TDBA, TDLEN), between
            // TDH and TDT, so the driver has handed it and its buffer to the device.
            unsafe {
                let address = slot.cast::<u64>().read_volatile();
                let length =
                    usize::from(slot.add(descriptor::LENGTH).cast::<u16>().read_volatile());
                let command = slot.add(descriptor::STATUS - 1).read_volatile();
                let buffer = physical_to_virtual(address);
                let bytes = core::slice::from_raw_parts(buffer, length);
                self.partial_transmit.extend_from_slice(bytes);
                if command & descriptor::COMMAND_EOP != 0 {
                    let frame = core::mem::take(&mut self.partial_transmit);
                    self.wire.push_back(frame);
                }
                if command & descriptor::COMMAND_RS != 0 {
                    let status = slot.add(descriptor::STATUS);
                    status.write_volatile(status.read_volatile() | descriptor::STATUS_DD);
                }
            }
            self.set(reg::TDH, (head + 1) % count);
        }
    }

    fn eerd_read(&self) -> u32 {
        let value = self.get(reg::EERD);
        if value & reg::eerd::START == 0 || !self.eeprom_present {
            return value & !reg::eerd::DONE;
        }
        let word = ((value >> reg::eerd::ADDRESS_SHIFT) & 0xff) as usize;
        let data = self.eeprom.get(word).copied().unwrap_or(0);
        (u32::from(data) << reg::eerd::DATA_SHIFT)
            | reg::eerd::DONE
            | (value & 0xffff & !reg::eerd::DONE)
    }
}

impl RegisterBlock for FakeE1000 {
    fn read32(&mut self, offset: usize) -> u32 {
        let mut state = self.0.borrow_mut();
        assert!(
            offset < reg::BAR0_SIZE && offset.is_multiple_of(4),
            "bad register offset {offset:#x}"
        );
        state.reads += 1;
        match offset {
            reg::ICR => {
                let cause = state.get(reg::ICR);
                state.set(reg::ICR, 0);
                cause
            }
            reg::EERD => state.eerd_read(),
            _ => state.get(offset),
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let mut state = self.0.borrow_mut();
        assert!(
            offset < reg::BAR0_SIZE && offset.is_multiple_of(4),
            "bad register offset {offset:#x}"
        );
        *state.writes.entry(offset).or_default() += 1;
        match offset {
            reg::CTRL => {
                let stuck = state.reset_stuck;
                state.set(
                    offset,
                    if stuck {
                        value
                    } else {
                        value & !reg::ctrl::RST
                    },
                );
            }
            reg::STATUS => {}
            reg::ICR => {
                let cause = state.get(reg::ICR) & !value;
                state.set(reg::ICR, cause);
            }
            reg::RDLEN | reg::TDLEN => state.set(offset, value & 0xf_ff80),
            reg::RDT => {
                state.rdt_writes.push(value);
                state.set(offset, value & 0xffff);
            }
            reg::TDT | reg::TCTL => {
                state.set(
                    offset,
                    if offset == reg::TDT {
                        value & 0xffff
                    } else {
                        value
                    },
                );
                state.transmit();
            }
            _ => state.set(offset, value),
        }
    }
}
