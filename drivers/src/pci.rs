//! PCI configuration space and bus enumeration.
//!
//! Configuration space is reached through the legacy 0xCF8/0xCFC mechanism (every PC
//! chipset has it, q35 included). [`enumerate`] walks bus 0 and every bus behind a
//! PCI-to-PCI bridge, reads ids, class and BARs (sized by the usual all-ones write with
//! decoding switched off for the moment of sizing).

use alloc::vec::Vec;
use core::fmt;

use spin::Mutex;
use x86_64::instructions::port::Port;

/// A function's address on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Access to configuration space.
pub trait ConfigSpace {
    /// Reads the aligned dword at `offset` (0..256, multiple of 4).
    fn read32(&self, address: PciAddress, offset: u8) -> u32;
    /// Writes the aligned dword at `offset`.
    fn write32(&self, address: PciAddress, offset: u8, value: u32);

    /// Reads a 16-bit field.
    fn read16(&self, address: PciAddress, offset: u8) -> u16 {
        (self.read32(address, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    /// Reads an 8-bit field.
    fn read8(&self, address: PciAddress, offset: u8) -> u8 {
        (self.read32(address, offset & !3) >> ((offset & 3) * 8)) as u8
    }
    /// Writes a 16-bit field (read-modify-write of its dword).
    fn write16(&self, address: PciAddress, offset: u8, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(address, offset & !3);
        let new = (old & !(0xffff << shift)) | (u32::from(value) << shift);
        self.write32(address, offset & !3, new);
    }
    /// Writes an 8-bit field (read-modify-write of its dword).
    fn write8(&self, address: PciAddress, offset: u8, value: u8) {
        let shift = (offset & 3) * 8;
        let old = self.read32(address, offset & !3);
        let new = (old & !(0xff << shift)) | (u32::from(value) << shift);
        self.write32(address, offset & !3, new);
    }
}

/// The legacy I/O-port mechanism (0xCF8 address, 0xCFC..0xCFF data).
///
/// 8- and 16-bit fields are accessed with 8- and 16-bit cycles on the data port, not
/// by read-modify-write of the dword: some devices act on the access width (the
/// i6300ESB's configuration and lock registers only respond to 16- and 8-bit writes).
pub struct PortConfigSpace {
    ports: Mutex<(Port<u32>, Port<u32>)>,
}

impl PortConfigSpace {
    /// # Safety
    /// The machine must decode 0xCF8/0xCFC as the PCI configuration mechanism #1, and
    /// nothing else may use those ports while this value lives.
    pub const unsafe fn new() -> Self {
        PortConfigSpace {
            ports: Mutex::new((Port::new(0xcf8), Port::new(0xcfc))),
        }
    }

    fn select(address: PciAddress, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(address.bus) << 16)
            | (u32::from(address.device & 31) << 11)
            | (u32::from(address.function & 7) << 8)
            | u32::from(offset & 0xfc)
    }
}

impl ConfigSpace for PortConfigSpace {
    fn read32(&self, address: PciAddress, offset: u8) -> u32 {
        let mut ports = self.ports.lock();
        // SAFETY: `new`'s caller promised these are the configuration ports; the lock
        // keeps the address/data pair atomic.
        unsafe {
            ports.0.write(Self::select(address, offset));
            ports.1.read()
        }
    }

    fn write32(&self, address: PciAddress, offset: u8, value: u32) {
        let mut ports = self.ports.lock();
        // SAFETY: as in `read32`.
        unsafe {
            ports.0.write(Self::select(address, offset));
            ports.1.write(value);
        }
    }

    fn read16(&self, address: PciAddress, offset: u8) -> u16 {
        let mut ports = self.ports.lock();
        // SAFETY: as in `read32`; the data port decodes 16-bit reads at 0xCFC + 0/2.
        unsafe {
            ports.0.write(Self::select(address, offset));
            Port::<u16>::new(0xcfc + u16::from(offset & 2)).read()
        }
    }

    fn read8(&self, address: PciAddress, offset: u8) -> u8 {
        let mut ports = self.ports.lock();
        // SAFETY: as in `read32`; the data port decodes 8-bit reads at 0xCFC + 0..3.
        unsafe {
            ports.0.write(Self::select(address, offset));
            Port::<u8>::new(0xcfc + u16::from(offset & 3)).read()
        }
    }

    fn write16(&self, address: PciAddress, offset: u8, value: u16) {
        let mut ports = self.ports.lock();
        // SAFETY: as in `read16`.
        unsafe {
            ports.0.write(Self::select(address, offset));
            Port::<u16>::new(0xcfc + u16::from(offset & 2)).write(value);
        }
    }

    fn write8(&self, address: PciAddress, offset: u8, value: u8) {
        let mut ports = self.ports.lock();
        // SAFETY: as in `read8`.
        unsafe {
            ports.0.write(Self::select(address, offset));
            Port::<u8>::new(0xcfc + u16::from(offset & 3)).write(value);
        }
    }
}

/// Command register bits.
pub mod command {
    /// Respond to I/O space accesses.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Respond to memory space accesses.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// May master the bus (DMA).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Legacy INTx disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// One base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bar {
    /// Not implemented.
    #[default]
    None,
    /// Memory-mapped.
    Memory {
        /// Physical address.
        address: u64,
        /// Size in bytes.
        size: u64,
        /// A 64-bit BAR (it uses the next slot too).
        wide: bool,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O ports.
    Io {
        /// First port.
        port: u32,
        /// Number of ports.
        size: u32,
    },
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bar::None => f.write_str("-"),
            Bar::Memory {
                address,
                size,
                wide,
                prefetchable,
            } => write!(
                f,
                "mem 0x{address:x} size 0x{size:x}{}{}",
                if wide { " 64-bit" } else { "" },
                if prefetchable { " prefetch" } else { "" }
            ),
            Bar::Io { port, size } => write!(f, "io 0x{port:x} size 0x{size:x}"),
        }
    }
}

/// A function found on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciFunction {
    /// Where it is.
    pub address: PciAddress,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code.
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision.
    pub revision: u8,
    /// Header type (low 7 bits).
    pub header_type: u8,
    /// Interrupt line (as the firmware routed it).
    pub interrupt_line: u8,
    /// The six BARs (two for bridges, the rest `None`).
    pub bars: [Bar; 6],
}

impl PciFunction {
    /// A short name for its class.
    pub fn class_name(&self) -> &'static str {
        match (self.class, self.subclass) {
            (0x01, 0x00) => "SCSI storage",
            (0x01, 0x01) => "IDE storage",
            (0x01, 0x06) => "SATA storage",
            (0x01, _) => "storage",
            (0x02, 0x00) => "Ethernet",
            (0x02, _) => "network",
            (0x03, _) => "display",
            (0x06, 0x00) => "host bridge",
            (0x06, 0x01) => "ISA bridge",
            (0x06, 0x04) => "PCI bridge",
            (0x06, _) => "bridge",
            (0x07, _) => "communication",
            (0x08, _) => "system peripheral",
            (0x0c, 0x03) => "USB",
            (0x0c, 0x05) => "SMBus",
            (0x0c, _) => "serial bus",
            (0xff, _) => "unassigned",
            _ => "other",
        }
    }

    /// The memory BAR `index` as (address, size), if it is one.
    pub fn memory_bar(&self, index: usize) -> Option<(u64, u64)> {
        match self.bars.get(index) {
            Some(&Bar::Memory { address, size, .. }) => Some((address, size)),
            _ => None,
        }
    }

    /// Sets bits in the command register (e.g. `MEMORY_SPACE | BUS_MASTER`).
    pub fn enable(&self, config: &dyn ConfigSpace, bits: u16) {
        let old = config.read16(self.address, 0x04);
        config.write16(self.address, 0x04, old | bits);
    }
}

impl fmt::Display for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x}.{:02x} {}",
            self.address,
            self.vendor,
            self.device,
            self.class,
            self.subclass,
            self.prog_if,
            self.class_name()
        )
    }
}

fn read_bars(config: &dyn ConfigSpace, address: PciAddress, count: usize) -> [Bar; 6] {
    let mut bars = [Bar::None; 6];
    let command = config.read16(address, 0x04);
    // Switch decoding off while sizing, so the all-ones value never decodes anywhere.
    config.write16(
        address,
        0x04,
        command & !(command::IO_SPACE | command::MEMORY_SPACE),
    );
    let mut index = 0;
    while index < count {
        let offset = 0x10 + 4 * index as u8;
        let original = config.read32(address, offset);
        config.write32(address, offset, 0xffff_ffff);
        let mask = config.read32(address, offset);
        config.write32(address, offset, original);
        if mask == 0 || mask == 0xffff_ffff && original == 0xffff_ffff {
            index += 1;
            continue;
        }
        if original & 1 == 1 {
            let size = (!(mask & 0xffff_fffc)).wrapping_add(1) & 0xffff;
            bars[index] = Bar::Io {
                port: original & 0xffff_fffc,
                size,
            };
            index += 1;
            continue;
        }
        let wide = (original >> 1) & 3 == 2;
        let prefetchable = original & 8 != 0;
        let (address_value, size) = if wide && index + 1 < count {
            let high_offset = offset + 4;
            let original_high = config.read32(address, high_offset);
            config.write32(address, high_offset, 0xffff_ffff);
            let mask_high = config.read32(address, high_offset);
            config.write32(address, high_offset, original_high);
            let full_mask = (u64::from(mask_high) << 32) | u64::from(mask & 0xffff_fff0);
            (
                (u64::from(original_high) << 32) | u64::from(original & 0xffff_fff0),
                (!full_mask).wrapping_add(1),
            )
        } else {
            (
                u64::from(original & 0xffff_fff0),
                u64::from((!(mask & 0xffff_fff0)).wrapping_add(1)),
            )
        };
        bars[index] = Bar::Memory {
            address: address_value,
            size,
            wide,
            prefetchable,
        };
        index += if wide { 2 } else { 1 };
    }
    config.write16(address, 0x04, command);
    bars
}

fn probe_function(config: &dyn ConfigSpace, address: PciAddress) -> Option<PciFunction> {
    let id = config.read32(address, 0x00);
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let class = config.read32(address, 0x08);
    let header_type = config.read8(address, 0x0e) & 0x7f;
    let bar_count = match header_type {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    Some(PciFunction {
        address,
        vendor,
        device: (id >> 16) as u16,
        class: (class >> 24) as u8,
        subclass: (class >> 16) as u8,
        prog_if: (class >> 8) as u8,
        revision: class as u8,
        header_type,
        interrupt_line: config.read8(address, 0x3c),
        bars: read_bars(config, address, bar_count),
    })
}

fn scan_bus(config: &dyn ConfigSpace, bus: u8, found: &mut Vec<PciFunction>, depth: u8) {
    for device in 0..32 {
        let first = PciAddress {
            bus,
            device,
            function: 0,
        };
        if config.read16(first, 0x00) == 0xffff {
            continue;
        }
        let multi = config.read8(first, 0x0e) & 0x80 != 0;
        for function in 0..if multi { 8 } else { 1 } {
            let address = PciAddress {
                bus,
                device,
                function,
            };
            let Some(f) = probe_function(config, address) else {
                continue;
            };
            found.push(f);
            if f.header_type == 1 && depth < 8 {
                let secondary = config.read8(address, 0x19);
                if secondary > bus {
                    scan_bus(config, secondary, found, depth + 1);
                }
            }
        }
    }
}

/// Address ranges the kernel may give to BARs the firmware left unassigned.
#[derive(Debug, Clone, Copy)]
pub struct ResourceWindows {
    /// 32-bit memory window: [start, end).
    pub memory: (u64, u64),
    /// I/O port window: [start, end).
    pub io: (u32, u32),
}

impl ResourceWindows {
    /// The windows QEMU's pc and q35 machines leave free below the IOAPIC for guests
    /// with up to 3.5 GiB of RAM.
    pub const QEMU_PC: ResourceWindows = ResourceWindows {
        memory: (0xe000_0000, 0xfec0_0000),
        io: (0xc000, 0x1_0000),
    };
}

/// Gives every unassigned BAR of the functions on bus 0 an address from `windows`
/// (aligned to its size, largest first, from the bottom of the window up) and turns
/// decoding on. Firmware normally does this; minimal firmware (qboot) does not.
/// Functions behind bridges are left alone (their bridge windows would need programming
/// too). Returns how many BARs were assigned, or an error when a window is exhausted.
pub fn assign_unassigned(
    config: &dyn ConfigSpace,
    functions: &mut [PciFunction],
    windows: &ResourceWindows,
) -> Result<usize, &'static str> {
    let mut memory_next = windows.memory.0;
    let mut io_next = windows.io.0;
    let mut assigned = 0;
    // Largest BARs first keeps the alignment holes small.
    let mut requests: Vec<(u64, usize, usize)> = Vec::new();
    for (fi, f) in functions.iter().enumerate() {
        if f.address.bus != 0 || f.header_type != 0 {
            continue;
        }
        for (bi, bar) in f.bars.iter().enumerate() {
            match *bar {
                Bar::Memory {
                    address: 0, size, ..
                } if size > 0 => requests.push((size, fi, bi)),
                Bar::Io { port: 0, size } if size > 0 => requests.push((u64::from(size), fi, bi)),
                _ => {}
            }
        }
    }
    requests.sort_by_key(|r| core::cmp::Reverse(r.0));
    for (size, fi, bi) in requests {
        let f = &mut functions[fi];
        let offset = 0x10 + 4 * bi as u8;
        match f.bars[bi] {
            Bar::Memory {
                wide, prefetchable, ..
            } => {
                let base = memory_next.next_multiple_of(size);
                if base
                    .checked_add(size)
                    .is_none_or(|end| end > windows.memory.1)
                {
                    return Err("PCI memory window exhausted");
                }
                memory_next = base + size;
                let low = config.read32(f.address, offset) & 0xf;
                config.write32(f.address, offset, (base as u32) | low);
                if wide {
                    config.write32(f.address, offset + 4, (base >> 32) as u32);
                }
                f.bars[bi] = Bar::Memory {
                    address: base,
                    size,
                    wide,
                    prefetchable,
                };
                f.enable(config, command::MEMORY_SPACE);
            }
            Bar::Io { size, .. } => {
                let base = io_next.next_multiple_of(size);
                if base.checked_add(size).is_none_or(|end| end > windows.io.1) {
                    return Err("PCI I/O window exhausted");
                }
                io_next = base + size;
                config.write32(f.address, offset, base | 1);
                f.bars[bi] = Bar::Io { port: base, size };
                f.enable(config, command::IO_SPACE);
            }
            Bar::None => continue,
        }
        assigned += 1;
    }
    Ok(assigned)
}

/// Lists every function reachable from bus 0.
pub fn enumerate(config: &dyn ConfigSpace) -> Vec<PciFunction> {
    let mut found = Vec::new();
    scan_bus(config, 0, &mut found, 0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::collections::BTreeMap;

    /// A configuration space in memory with BAR masks, like a real device.
    struct FakeConfig {
        space: RefCell<BTreeMap<(PciAddress, u8), u32>>,
        bar_masks: BTreeMap<(PciAddress, u8), u32>,
    }

    impl ConfigSpace for FakeConfig {
        fn read32(&self, a: PciAddress, o: u8) -> u32 {
            *self
                .space
                .borrow()
                .get(&(a, o))
                .unwrap_or(&if o == 0 { 0xffff_ffff } else { 0 })
        }
        fn write32(&self, a: PciAddress, o: u8, v: u32) {
            let v = match self.bar_masks.get(&(a, o)) {
                Some(mask) if v == 0xffff_ffff => *mask,
                // An unimplemented BAR is hard-wired to zero.
                None if (0x10..=0x24).contains(&o) => return,
                _ => v,
            };
            self.space.borrow_mut().insert((a, o), v);
        }
    }

    #[test]
    fn enumerates_and_sizes_bars_behind_a_bridge() {
        let host = PciAddress {
            bus: 0,
            device: 0,
            function: 0,
        };
        let bridge = PciAddress {
            bus: 0,
            device: 2,
            function: 0,
        };
        let nic = PciAddress {
            bus: 1,
            device: 0,
            function: 0,
        };
        let mut space = BTreeMap::new();
        space.insert((host, 0), 0x29c0_8086);
        space.insert((host, 8), 0x0600_0000);
        space.insert((bridge, 0), 0x000e_1b36);
        space.insert((bridge, 8), 0x0604_0000);
        space.insert((bridge, 0x0c), 0x0001_0000);
        space.insert((bridge, 0x18), 0x0001_0100);
        space.insert((nic, 0), 0x100e_8086);
        space.insert((nic, 8), 0x0200_0003);
        space.insert((nic, 0x10), 0xfeb8_0000);
        space.insert((nic, 0x14), 0xc001);
        space.insert((nic, 0x18), 0xfe00_000c);
        space.insert((nic, 0x1c), 0x1);
        let mut bar_masks = BTreeMap::new();
        bar_masks.insert((nic, 0x10), 0xfffe_0000);
        bar_masks.insert((nic, 0x14), 0xffff_ffc1);
        bar_masks.insert((nic, 0x18), 0xffff_c00c);
        bar_masks.insert((nic, 0x1c), 0xffff_ffff);
        let config = FakeConfig {
            space: RefCell::new(space),
            bar_masks,
        };
        let found = enumerate(&config);
        assert_eq!(found.len(), 3);
        let f = found[2];
        assert_eq!((f.vendor, f.device, f.class), (0x8086, 0x100e, 2));
        assert_eq!(f.memory_bar(0), Some((0xfeb8_0000, 0x2_0000)));
        assert_eq!(
            f.bars[1],
            Bar::Io {
                port: 0xc000,
                size: 0x40
            }
        );
        assert_eq!(
            f.bars[2],
            Bar::Memory {
                address: 0x1_fe00_0000,
                size: 0x4000,
                wide: true,
                prefetchable: true
            }
        );
        // Sizing restored the BARs.
        assert_eq!(config.read32(nic, 0x10), 0xfeb8_0000);
        assert_eq!(f.class_name(), "Ethernet");
    }

    #[test]
    fn unassigned_bars_get_aligned_addresses_in_the_window() {
        let nic = PciAddress {
            bus: 0,
            device: 1,
            function: 0,
        };
        let mut space = BTreeMap::new();
        space.insert((nic, 0), 0x1000_1af4);
        space.insert((nic, 8), 0x0200_0000);
        space.insert((nic, 0x10), 0x1); // I/O, unassigned
        space.insert((nic, 0x14), 0x0); // 32-bit memory, unassigned
        space.insert((nic, 0x20), 0xc); // 64-bit prefetchable, unassigned
        space.insert((nic, 0x24), 0x0);
        let mut bar_masks = BTreeMap::new();
        bar_masks.insert((nic, 0x10), 0xffff_ffe1);
        bar_masks.insert((nic, 0x14), 0xffff_f000);
        bar_masks.insert((nic, 0x20), 0xffff_c00c);
        bar_masks.insert((nic, 0x24), 0xffff_ffff);
        let config = FakeConfig {
            space: RefCell::new(space),
            bar_masks,
        };
        let mut found = enumerate(&config);
        let windows = ResourceWindows {
            memory: (0xe000_0000, 0xe000_5000),
            io: (0xc000, 0xc040),
        };
        assert_eq!(assign_unassigned(&config, &mut found, &windows), Ok(3));
        assert_eq!(found[0].memory_bar(4), Some((0xe000_0000, 0x4000)));
        assert_eq!(found[0].memory_bar(1), Some((0xe000_4000, 0x1000)));
        assert_eq!(
            found[0].bars[0],
            Bar::Io {
                port: 0xc000,
                size: 0x20
            }
        );
        assert_eq!(config.read32(nic, 0x20), 0xe000_000c);
        assert_eq!(config.read16(nic, 4) & 3, 3);
        // A second pass has nothing to do; a window too small is an error.
        assert_eq!(assign_unassigned(&config, &mut found, &windows), Ok(0));
        let mut again = enumerate(&config);
        for bar in again[0].bars.iter_mut() {
            if let Bar::Memory { address, .. } = bar {
                *address = 0;
            }
        }
        let tiny = ResourceWindows {
            memory: (0xe000_0000, 0xe000_1000),
            io: (0xc000, 0xc040),
        };
        assert!(assign_unassigned(&config, &mut again, &tiny).is_err());
    }
}
