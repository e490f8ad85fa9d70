//! The 8254x register file: offsets, bits, and the two ways to reach it (MMIO on the
//! appliance, a fake in host tests).
//!
//! Offsets and bits are those of Intel's "PCI/PCI-X Family of Gigabit Ethernet
//! Controllers Software Developer's Manual" (8254x SDM), section 13, for the 82540EM
//! and 82545EM. Only what the driver uses is named here.

use core::ptr::{self, NonNull};

/// 32-bit access to the device's registers.
///
/// Reads take `&mut self` because some registers change when read (ICR clears).
pub trait RegisterBlock {
    /// Reads the register at byte `offset` (a multiple of 4).
    fn read32(&mut self, offset: usize) -> u32;
    /// Writes the register at byte `offset` (a multiple of 4).
    fn write32(&mut self, offset: usize, value: u32);
}

/// Size of the memory BAR 0 of an 8254x (128 KiB).
pub const BAR0_SIZE: usize = 0x2_0000;

/// The registers of a real device, through its memory BAR 0.
#[derive(Debug)]
pub struct MmioRegisters {
    base: NonNull<u32>,
}

// SAFETY: the value is the only handle on the device's registers (promised to `new`);
// volatile MMIO works from any thread.
unsafe impl Send for MmioRegisters {}

impl MmioRegisters {
    /// Wraps the register file mapped at virtual address `base`.
    ///
    /// # Safety
    ///
    /// 1. `base` is the virtual address of an 8254x memory BAR 0: [`BAR0_SIZE`] bytes of
    ///    uncached, mapped MMIO (on the appliance, the BAR's physical address, since MMIO
    ///    below 4 GiB is identity-mapped), valid as long as this value lives.
    /// 2. This is the only value accessing that device (one driver per NIC).
    pub unsafe fn new(base: usize) -> Self {
        let pointer = ptr::with_exposed_provenance_mut::<u32>(base);
        MmioRegisters {
            base: NonNull::new(pointer).expect("e1000 BAR 0 at address 0"),
        }
    }

    /// A pointer to the register at `offset`, or `None` outside the BAR or misaligned.
    #[inline]
    fn register(&self, offset: usize) -> Option<*mut u32> {
        if offset >= BAR0_SIZE || !offset.is_multiple_of(4) {
            // A driver bug: loud in debug builds, harmless (reads all-ones, writes dropped)
            // in release builds.
            if cfg!(debug_assertions) {
                panic!("e1000 register offset {offset:#x} invalid");
            }
            return None;
        }
        // SAFETY: `offset` lies inside the BAR (checked above), which `new`'s caller
        // promised is mapped.
        Some(unsafe { self.base.as_ptr().byte_add(offset) })
    }
}

impl RegisterBlock for MmioRegisters {
    #[inline]
    fn read32(&mut self, offset: usize) -> u32 {
        match self.register(offset) {
            // SAFETY: an aligned register inside the BAR that `new`'s caller vouched for.
            Some(register) => unsafe { ptr::read_volatile(register) },
            None => u32::MAX,
        }
    }

    #[inline]
    fn write32(&mut self, offset: usize, value: u32) {
        if let Some(register) = self.register(offset) {
            // SAFETY: an aligned register inside the BAR that `new`'s caller vouched for.
            unsafe { ptr::write_volatile(register, value) }
        }
    }
}

/// Device control.
pub const CTRL: usize = 0x0000;
/// Device status.
pub const STATUS: usize = 0x0008;
/// EEPROM read (82540EM/82545EM layout).
pub const EERD: usize = 0x0014;
/// Flow control address low.
pub const FCAL: usize = 0x0028;
/// Flow control address high.
pub const FCAH: usize = 0x002c;
/// Flow control type.
pub const FCT: usize = 0x0030;
/// Interrupt cause read (clears on read).
pub const ICR: usize = 0x00c0;
/// Interrupt mask clear.
pub const IMC: usize = 0x00d8;
/// Receive control.
pub const RCTL: usize = 0x0100;
/// Flow control transmit timer value.
pub const FCTTV: usize = 0x0170;
/// Transmit control.
pub const TCTL: usize = 0x0400;
/// Transmit inter-packet gap.
pub const TIPG: usize = 0x0410;
/// Receive descriptor base address low.
pub const RDBAL: usize = 0x2800;
/// Receive descriptor base address high.
pub const RDBAH: usize = 0x2804;
/// Receive descriptor ring length in bytes.
pub const RDLEN: usize = 0x2808;
/// Receive descriptor head.
pub const RDH: usize = 0x2810;
/// Receive descriptor tail.
pub const RDT: usize = 0x2818;
/// Receive delay timer.
pub const RDTR: usize = 0x2820;
/// Receive interrupt absolute delay.
pub const RADV: usize = 0x282c;
/// Transmit descriptor base address low.
pub const TDBAL: usize = 0x3800;
/// Transmit descriptor base address high.
pub const TDBAH: usize = 0x3804;
/// Transmit descriptor ring length in bytes.
pub const TDLEN: usize = 0x3808;
/// Transmit descriptor head.
pub const TDH: usize = 0x3810;
/// Transmit descriptor tail.
pub const TDT: usize = 0x3818;
/// Transmit interrupt delay.
pub const TIDV: usize = 0x3820;
/// Transmit absolute interrupt delay.
pub const TADV: usize = 0x382c;
/// Receive checksum control.
pub const RXCSUM: usize = 0x5000;
/// Multicast table array: 128 registers.
pub const MTA: usize = 0x5200;
/// Number of registers in the multicast table array.
pub const MTA_LEN: usize = 128;
/// Receive address 0, low 32 bits.
pub const RAL0: usize = 0x5400;
/// Receive address 0, high 16 bits and flags.
pub const RAH0: usize = 0x5404;

/// CTRL bits.
pub mod ctrl {
    /// Link reset.
    pub const LRST: u32 = 1 << 3;
    /// Auto-speed detection enable.
    pub const ASDE: u32 = 1 << 5;
    /// Set link up.
    pub const SLU: u32 = 1 << 6;
    /// Invert loss-of-signal.
    pub const ILOS: u32 = 1 << 7;
    /// Device reset (self-clearing).
    pub const RST: u32 = 1 << 26;
    /// VLAN mode enable (strips tags: kept off).
    pub const VME: u32 = 1 << 30;
    /// PHY reset.
    pub const PHY_RST: u32 = 1 << 31;
}

/// STATUS bits.
pub mod status {
    /// Link up.
    pub const LU: u32 = 1 << 1;
}

/// EERD fields (82540EM/82545EM; other family members place them differently).
pub mod eerd {
    /// Start a read.
    pub const START: u32 = 1 << 0;
    /// Read done.
    pub const DONE: u32 = 1 << 4;
    /// Word address shift.
    pub const ADDRESS_SHIFT: u32 = 8;
    /// Data shift.
    pub const DATA_SHIFT: u32 = 16;
}

/// ICR bits.
pub mod icr {
    /// Link status change.
    pub const LSC: u32 = 1 << 2;
}

/// RCTL bits.
pub mod rctl {
    /// Receiver enable.
    pub const EN: u32 = 1 << 1;
    /// Unicast promiscuous.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous.
    pub const MPE: u32 = 1 << 4;
    /// Broadcast accept.
    pub const BAM: u32 = 1 << 15;
    /// Strip Ethernet CRC.
    pub const SECRC: u32 = 1 << 26;
    // Buffer size 2048: BSIZE (bits 17:16) = 00 with BSEX (bit 25) clear, the reset value.
}

/// TCTL bits and fields.
pub mod tctl {
    /// Transmitter enable.
    pub const EN: u32 = 1 << 1;
    /// Pad short packets.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold, the SDM's recommended 0x0f.
    pub const CT_RECOMMENDED: u32 = 0x0f << 4;
    /// Collision distance for full duplex, the SDM's recommended 0x40.
    pub const COLD_FULL_DUPLEX: u32 = 0x40 << 12;
}

/// TIPG for the 82540EM/82545EM copper PHY: IPGT 10, IPGR1 8, IPGR2 6.
pub const TIPG_COPPER: u32 = 10 | (8 << 10) | (6 << 20);

/// RAH bits.
pub mod rah {
    /// Address valid.
    pub const AV: u32 = 1 << 31;
}

/// Legacy descriptor layout (16 bytes), shared by both rings.
pub mod descriptor {
    /// Bytes per descriptor.
    pub const SIZE: usize = 16;
    /// Offset of the 64-bit buffer address.
    pub const ADDRESS: usize = 0;
    /// Offset of the 16-bit length.
    pub const LENGTH: usize = 8;
    /// Offset of the upper 8 bytes as one `u64` (length, checksum/cmd, status, ...).
    pub const UPPER: usize = 8;
    /// Offset of the status byte.
    pub const STATUS: usize = 12;
    /// Offset of the receive errors byte.
    pub const ERRORS: usize = 13;

    /// Status: descriptor done.
    pub const STATUS_DD: u8 = 1 << 0;
    /// Receive status: end of packet.
    pub const STATUS_EOP: u8 = 1 << 1;

    /// Receive errors that mean a damaged frame: CRC/alignment (CE), symbol (SE),
    /// sequence (SEQ), carrier extension (CXE), RX data error (RXE). The checksum-offload
    /// bits (TCPE, IPE) are not errors of the frame and are ignored.
    pub const ERRORS_FRAME: u8 = 0x01 | 0x02 | 0x04 | 0x10 | 0x80;

    /// Transmit command: end of packet.
    pub const COMMAND_EOP: u8 = 1 << 0;
    /// Transmit command: insert FCS.
    pub const COMMAND_IFCS: u8 = 1 << 1;
    /// Transmit command: report status (write DD back).
    pub const COMMAND_RS: u8 = 1 << 3;
    /// Shift of the command byte inside the upper `u64`.
    pub const COMMAND_SHIFT: u32 = 24;
}
