//! Intel 8254x ("e1000") NIC driver, for the parts QEMU emulates: the 82540EM
//! (`-device e1000`, 8086:100e) and the 82545EM (`-device e1000-82545em`, 8086:100f).
//!
//! Layers, bottom up:
//! - [`RegisterBlock`]: 32-bit register access. [`MmioRegisters`] is the real BAR 0 (the
//!   only `unsafe` here: [`MmioRegisters::new`]); host tests plug in a fake device.
//! - `ring`: the receive and transmit descriptor rings in DMA memory (legacy
//!   descriptors, 2 KiB buffers, 256 of each by default).
//! - [`E1000`]: reset, MAC address (EEPROM through EERD, else RAL0/RAH0), ring setup,
//!   link polling, and the [`Nic`] trait.
//!
//! The fast path reads no register: received frames are found by the DD bit in
//! descriptor memory, finished transmissions likewise, and each batch costs one register
//! write (RDT after `receive`, TDT in `flush`). Interrupts stay masked; the driver is
//! polled. Both rings are promiscuous: the appliance forwards frames that are not
//! addressed to it. `SPEC.md` next to this file records the hardware facts used.
//!
//! The 82574L (8086:10d3, QEMU `-device e1000e`) is a different device family and is
//! not supported: [`identify`] says so.

mod registers;
mod ring;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use core::sync::atomic::{Ordering, fence};

use duplex_hal::{Error, MacAddress, Nic, NicCounters, Result};

pub use registers::{BAR0_SIZE, MmioRegisters, RegisterBlock};

use crate::dma::{DmaAllocator, HeapDma};
use registers::{ctrl, eerd, icr, rah, rctl, status, tctl};
use ring::{BUFFER_SIZE, MIN_FRAME_LEN, ReceiveRing, TransmitRing};

/// The largest frame (without FCS) the driver sends or hands out: a full-size Ethernet
/// frame with one 802.1Q tag.
pub const MAX_FRAME_LEN: usize = 1518;

// Every accepted frame fits one buffer.
const _: () = assert!(MAX_FRAME_LEN <= BUFFER_SIZE);

/// Intel's PCI vendor id.
pub const INTEL_VENDOR_ID: u16 = 0x8086;

/// A supported member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// 82540EM, PCI id 8086:100e (QEMU `-device e1000`).
    Intel82540Em,
    /// 82545EM copper, PCI id 8086:100f (QEMU `-device e1000-82545em`).
    Intel82545Em,
}

impl Model {
    /// The part's name, for the console.
    pub const fn name(self) -> &'static str {
        match self {
            Model::Intel82540Em => "82540EM",
            Model::Intel82545Em => "82545EM",
        }
    }
}

/// Supported PCI (vendor, device) ids.
pub const SUPPORTED_DEVICES: &[(u16, u16, Model)] = &[
    (INTEL_VENDOR_ID, 0x100e, Model::Intel82540Em),
    (INTEL_VENDOR_ID, 0x100f, Model::Intel82545Em),
];

/// PCI ids of Intel NICs people may expect to work, with the reason they do not.
pub const UNSUPPORTED_DEVICES: &[(u16, u16, &str)] = &[(
    INTEL_VENDOR_ID,
    0x10d3,
    "82574L (e1000e, QEMU -device e1000e) is not supported; use -device e1000 or virtio-net",
)];

/// What a PCI id means to this driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identification {
    /// A part this driver drives.
    Supported(Model),
    /// A known part this driver refuses, and why.
    Unsupported(&'static str),
    /// Not an 8254x this driver knows.
    Unknown,
}

/// Looks a PCI (vendor, device) id up in [`SUPPORTED_DEVICES`] and
/// [`UNSUPPORTED_DEVICES`].
pub fn identify(vendor: u16, device: u16) -> Identification {
    if let Some(&(_, _, model)) = SUPPORTED_DEVICES
        .iter()
        .find(|&&(v, d, _)| (v, d) == (vendor, device))
    {
        return Identification::Supported(model);
    }
    match UNSUPPORTED_DEVICES
        .iter()
        .find(|&&(v, d, _)| (v, d) == (vendor, device))
    {
        Some(&(_, _, reason)) => Identification::Unsupported(reason),
        None => Identification::Unknown,
    }
}

/// Ring sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Receive descriptors (and 2 KiB buffers): a multiple of 8 in 8..=4096.
    pub receive_descriptors: usize,
    /// Transmit descriptors (and 2 KiB buffers): a multiple of 8 in 8..=4096.
    pub transmit_descriptors: usize,
}

impl Default for Config {
    /// 256 receive and 256 transmit descriptors: 1 MiB of buffers and 8 KiB of rings.
    fn default() -> Self {
        Config {
            receive_descriptors: 256,
            transmit_descriptors: 256,
        }
    }
}

impl Config {
    /// Ring lengths in bytes must be multiples of 128 (8 descriptors); 4096 bounds memory.
    fn check(&self) -> Result {
        let valid = |count: usize| (8..=4096).contains(&count) && count.is_multiple_of(8);
        if valid(self.receive_descriptors) && valid(self.transmit_descriptors) {
            Ok(())
        } else {
            Err(Error::OutOfRange)
        }
    }
}

/// Register reads to wait for the self-clearing reset bit.
const RESET_POLLS: u32 = 100_000;
/// Register reads to wait for one EEPROM word.
const EEPROM_POLLS: u32 = 10_000;

/// An 8254x NIC, initialised and running.
///
/// Dropping it stops the receiver and transmitter and resets the device before the DMA
/// memory is freed.
#[derive(Debug)]
pub struct E1000<R: RegisterBlock> {
    registers: R,
    mac: MacAddress,
    receive_ring: ReceiveRing,
    transmit_ring: TransmitRing,
    link: bool,
    counters: NicCounters,
}

impl E1000<MmioRegisters> {
    /// Starts the NIC whose memory BAR 0 is at physical address `bar0`, with DMA memory
    /// from the heap and the default ring sizes.
    ///
    /// The caller has enabled MEMORY_SPACE and BUS_MASTER in the function's PCI command
    /// register (QEMU drops received frames without BUS_MASTER).
    ///
    /// # Safety
    ///
    /// 1. `bar0` is the BAR 0 address of a supported 8254x (see [`identify`]), mapped
    ///    identity (virtual == physical) and uncached, for as long as the driver lives.
    /// 2. RAM is identity-mapped, so heap addresses are the device's DMA addresses.
    /// 3. No other driver instance uses this device.
    pub unsafe fn new_mmio(bar0: u64) -> Result<Self> {
        let base = usize::try_from(bar0).map_err(|_| Error::OutOfRange)?;
        // SAFETY: the caller's promises 1 and 3 are `MmioRegisters::new`'s.
        let registers = unsafe { MmioRegisters::new(base) };
        E1000::new(registers, &HeapDma, Config::default())
    }
}

impl<R: RegisterBlock> E1000<R> {
    /// Resets the device behind `registers`, reads its MAC address, sets up rings of
    /// `config`'s sizes in memory from `allocator`, and starts receive and transmit.
    ///
    /// Errors: [`Error::OutOfRange`] for bad ring sizes, [`Error::Timeout`] when the reset
    /// does not complete, [`Error::Io`] when no valid MAC address is found or DMA memory
    /// runs out.
    pub fn new(mut registers: R, allocator: &dyn DmaAllocator, config: Config) -> Result<Self> {
        config.check()?;
        let receive_ring = ReceiveRing::new(allocator, config.receive_descriptors)?;
        let transmit_ring = TransmitRing::new(allocator, config.transmit_descriptors)?;

        // Quiet the device: no interrupts, receiver and transmitter off (a boot loader
        // may have left them running on its own rings).
        registers.write32(registers::IMC, u32::MAX);
        registers.write32(registers::RCTL, 0);
        registers.write32(registers::TCTL, tctl::PSP);
        reset(&mut registers)?;
        registers.write32(registers::IMC, u32::MAX);
        registers.read32(registers::ICR);

        // Link: let the MAC follow the PHY; no link reset, no VLAN stripping.
        let control = registers.read32(registers::CTRL);
        let control = (control | ctrl::SLU | ctrl::ASDE)
            & !(ctrl::LRST | ctrl::PHY_RST | ctrl::ILOS | ctrl::VME);
        registers.write32(registers::CTRL, control);
        // No flow control.
        for register in [
            registers::FCAL,
            registers::FCAH,
            registers::FCT,
            registers::FCTTV,
        ] {
            registers.write32(register, 0);
        }

        let mac = read_mac_address(&mut registers).ok_or(Error::Io)?;
        let [m0, m1, m2, m3, m4, m5] = mac.0;
        registers.write32(registers::RAL0, u32::from_le_bytes([m0, m1, m2, m3]));
        registers.write32(
            registers::RAH0,
            u32::from_le_bytes([m4, m5, 0, 0]) | rah::AV,
        );
        for index in 0..registers::MTA_LEN {
            registers.write32(registers::MTA + 4 * index, 0);
        }

        // Receive ring: RDH = RDT = 0 while the receiver starts, then hand over all but one
        // descriptor. No interrupt delays, no checksum offload.
        let (low, high) = split(receive_ring.physical_address());
        registers.write32(registers::RDBAL, low);
        registers.write32(registers::RDBAH, high);
        registers.write32(registers::RDLEN, receive_ring.byte_len());
        registers.write32(registers::RDH, 0);
        registers.write32(registers::RDT, 0);
        registers.write32(registers::RDTR, 0);
        registers.write32(registers::RADV, 0);
        registers.write32(registers::RXCSUM, 0);
        registers.write32(registers::RDT, receive_ring.initial_tail());
        registers.write32(
            registers::RCTL,
            rctl::EN | rctl::UPE | rctl::MPE | rctl::BAM | rctl::SECRC,
        );

        // Transmit ring: empty (TDH = TDT = 0).
        let (low, high) = split(transmit_ring.physical_address());
        registers.write32(registers::TDBAL, low);
        registers.write32(registers::TDBAH, high);
        registers.write32(registers::TDLEN, transmit_ring.byte_len());
        registers.write32(registers::TDH, 0);
        registers.write32(registers::TDT, 0);
        registers.write32(registers::TIDV, 0);
        registers.write32(registers::TADV, 0);
        registers.write32(registers::TIPG, registers::TIPG_COPPER);
        registers.write32(
            registers::TCTL,
            tctl::EN | tctl::PSP | tctl::CT_RECOMMENDED | tctl::COLD_FULL_DUPLEX,
        );

        let link = registers.read32(registers::STATUS) & status::LU != 0;
        // Forget link changes from before: `link_up` counts from here.
        registers.read32(registers::ICR);

        Ok(E1000 {
            registers,
            mac,
            receive_ring,
            transmit_ring,
            link,
            counters: NicCounters::default(),
        })
    }
}

/// Low and high 32 bits of a physical address.
fn split(address: u64) -> (u32, u32) {
    (address as u32, (address >> 32) as u32)
}

/// Sets CTRL.RST and waits for the device to clear it.
fn reset<R: RegisterBlock>(registers: &mut R) -> Result {
    let control = registers.read32(registers::CTRL);
    registers.write32(registers::CTRL, control | ctrl::RST);
    for _ in 0..RESET_POLLS {
        if registers.read32(registers::CTRL) & ctrl::RST == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(Error::Timeout)
}

/// Reads one 16-bit EEPROM word through EERD, or `None` if the read never completes.
fn read_eeprom_word<R: RegisterBlock>(registers: &mut R, word: u8) -> Option<u16> {
    registers.write32(
        registers::EERD,
        eerd::START | (u32::from(word) << eerd::ADDRESS_SHIFT),
    );
    for _ in 0..EEPROM_POLLS {
        let value = registers.read32(registers::EERD);
        if value & eerd::DONE != 0 {
            return Some((value >> eerd::DATA_SHIFT) as u16);
        }
        core::hint::spin_loop();
    }
    None
}

/// A MAC address a NIC may own: not zero, not a group address.
fn usable(mac: MacAddress) -> bool {
    mac.0 != [0; 6] && !mac.is_multicast()
}

/// The MAC address from EEPROM words 0-2, else from RAL0/RAH0 if marked valid.
fn read_mac_address<R: RegisterBlock>(registers: &mut R) -> Option<MacAddress> {
    let mut from_eeprom = [0u8; 6];
    let mut complete = true;
    for (word, pair) in from_eeprom.chunks_exact_mut(2).enumerate() {
        match read_eeprom_word(registers, word as u8) {
            Some(value) => pair.copy_from_slice(&value.to_le_bytes()),
            None => {
                complete = false;
                break;
            }
        }
    }
    if complete && usable(MacAddress(from_eeprom)) {
        return Some(MacAddress(from_eeprom));
    }

    let low = registers.read32(registers::RAL0).to_le_bytes();
    let high = registers.read32(registers::RAH0);
    let [h0, h1, _, _] = high.to_le_bytes();
    let from_registers = MacAddress([low[0], low[1], low[2], low[3], h0, h1]);
    (high & rah::AV != 0 && usable(from_registers)).then_some(from_registers)
}

impl<R: RegisterBlock> Nic for E1000<R> {
    fn mac_address(&self) -> MacAddress {
        self.mac
    }

    /// Reads STATUS.LU and counts link changes; ICR.LSC (read and cleared here) reveals a
    /// down-and-up flap between two calls, counted as two changes. Call it every few
    /// milliseconds from the slow path: it costs two register reads.
    fn link_up(&mut self) -> bool {
        let cause = self.registers.read32(registers::ICR);
        let up = self.registers.read32(registers::STATUS) & status::LU != 0;
        if up != self.link {
            self.counters.link_changes += 1;
        } else if cause & icr::LSC != 0 {
            self.counters.link_changes += 2;
        }
        self.link = up;
        up
    }

    fn receive(&mut self, budget: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let (handed, tail) =
            self.receive_ring
                .receive(budget, MAX_FRAME_LEN, &mut self.counters, sink);
        if let Some(tail) = tail {
            // Descriptor re-arming happens before the device may reuse them.
            fence(Ordering::Release);
            self.registers.write32(registers::RDT, tail);
        }
        handed
    }

    fn transmit(&mut self, frame: &[u8]) -> Result {
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()) {
            self.counters.tx_dropped += 1;
            return Err(Error::OutOfRange);
        }
        if !self.transmit_ring.has_room() {
            self.transmit_ring.reclaim();
            if !self.transmit_ring.has_room() {
                self.counters.tx_dropped += 1;
                return Err(Error::Busy);
            }
        }
        self.transmit_ring.push(frame);
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn transmit_room(&mut self) -> usize {
        self.transmit_ring.reclaim();
        self.transmit_ring.room()
    }

    fn flush(&mut self) {
        if let Some(tail) = self.transmit_ring.take_doorbell() {
            // Frame copies and descriptors are in memory before the device looks.
            fence(Ordering::Release);
            self.registers.write32(registers::TDT, tail);
        }
        self.transmit_ring.reclaim();
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn counters(&self) -> NicCounters {
        self.counters
    }

    fn model(&self) -> &'static str {
        "e1000"
    }

    fn diagnostics(&mut self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let rdh = self.registers.read32(registers::RDH);
        let rdt = self.registers.read32(registers::RDT);
        let tdh = self.registers.read32(registers::TDH);
        let tdt = self.registers.read32(registers::TDT);
        let rctl = self.registers.read32(registers::RCTL);
        // Statistics registers (clear on read): total and good packets received,
        // missed packets, receive-no-buffers.
        let tpr = self.registers.read32(0x40d0);
        let gprc = self.registers.read32(0x4074);
        let mpc = self.registers.read32(0x4010);
        let rnbc = self.registers.read32(0x40a0);
        write!(
            out,
            "RDH {rdh} RDT {rdt} next {} TDH {tdh} TDT {tdt} RCTL {rctl:#x} TPR {tpr} GPRC {gprc} MPC {mpc} RNBC {rnbc}",
            self.receive_ring.next_index()
        )
    }
}

impl<R: RegisterBlock> Drop for E1000<R> {
    fn drop(&mut self) {
        // Stop DMA before the rings and buffers are freed (they drop after this).
        self.registers.write32(registers::IMC, u32::MAX);
        self.registers.write32(registers::RCTL, 0);
        self.registers.write32(registers::TCTL, 0);
        let control = self.registers.read32(registers::CTRL);
        self.registers.write32(registers::CTRL, control | ctrl::RST);
    }
}
