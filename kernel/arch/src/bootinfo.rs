//! The loader's boot information: PVH `hvm_start_info` or Multiboot2 tags.
//!
//! Both are read once, at boot, into a [`BootInfo`] that owns copies of what the
//! appliance needs (command line, RAM regions), so the loader's memory can be reused.

use spin::Once;

/// Which loader started us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// QEMU `-kernel` (or any PVH loader).
    Pvh,
    /// GRUB `multiboot2`.
    Multiboot2,
    /// Entered through the Multiboot2 entry without its magic value.
    Unknown,
}

/// A usable RAM region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Most RAM regions kept from the loader's map.
pub const MAX_REGIONS: usize = 32;
/// Longest command line kept; longer ones are cut and flagged.
pub const MAX_CMDLINE: usize = 1024;

/// What the loader told us, copied into kernel memory.
#[derive(Debug)]
pub struct BootInfo {
    /// The loader.
    pub protocol: Protocol,
    /// Physical address of the loader's structure.
    pub info_address: usize,
    /// Bytes of the loader's structure (so the heap avoids it).
    pub info_len: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// True when the command line was longer than [`MAX_CMDLINE`] and was cut.
    pub cmdline_truncated: bool,
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
}

impl BootInfo {
    const fn empty(protocol: Protocol, info_address: usize) -> Self {
        BootInfo {
            protocol,
            info_address,
            info_len: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            cmdline_truncated: false,
            regions: [MemoryRegion { start: 0, len: 0 }; MAX_REGIONS],
            region_count: 0,
        }
    }

    /// The boot command line (invalid UTF-8 is replaced by an empty string).
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Usable RAM regions.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// Total usable RAM in bytes.
    pub fn total_ram(&self) -> u64 {
        self.regions().iter().map(|r| r.len).sum()
    }

    fn push_region(&mut self, start: u64, len: u64) {
        if self.region_count < MAX_REGIONS && len > 0 {
            self.regions[self.region_count] = MemoryRegion { start, len };
            self.region_count += 1;
        }
    }

    /// Copies a NUL-terminated string at `address`, at most [`MAX_CMDLINE`] bytes.
    ///
    /// # Safety
    /// `address` must point to readable memory holding a NUL-terminated string, or to
    /// at least [`MAX_CMDLINE`] readable bytes.
    unsafe fn copy_cmdline(&mut self, address: usize) {
        if address == 0 {
            return;
        }
        let mut len = 0;
        loop {
            // SAFETY: the caller promises the bytes up to the NUL (or MAX_CMDLINE) are readable.
            let byte = unsafe { core::ptr::read_volatile((address + len) as *const u8) };
            if byte == 0 {
                break;
            }
            if len == MAX_CMDLINE {
                self.cmdline_truncated = true;
                break;
            }
            self.cmdline[len] = byte;
            len += 1;
        }
        self.cmdline_len = len;
    }
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// The boot information, once [`parse`] has run.
pub fn get() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}

/// Reads `u32` at `address`.
///
/// # Safety
/// `address..address + 4` must be readable.
unsafe fn read_u32(address: usize) -> u32 {
    // SAFETY: forwarded from the caller; the loader's structures may be unaligned.
    unsafe { core::ptr::read_unaligned(address as *const u32) }
}

/// Reads `u64` at `address`.
///
/// # Safety
/// `address..address + 8` must be readable.
unsafe fn read_u64(address: usize) -> u64 {
    // SAFETY: forwarded from the caller.
    unsafe { core::ptr::read_unaligned(address as *const u64) }
}

const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// Parses the loader's information at `info` into the global [`BootInfo`].
///
/// # Safety
/// `info` must be the address the loader passed, in identity-mapped memory that
/// nothing has overwritten since.
pub unsafe fn parse(protocol: Protocol, info: usize) -> &'static BootInfo {
    BOOT_INFO.call_once(|| {
        let mut boot = BootInfo::empty(protocol, info);
        match protocol {
            // SAFETY: forwarded from the caller.
            Protocol::Pvh => unsafe { parse_pvh(&mut boot, info) },
            // SAFETY: forwarded from the caller.
            Protocol::Multiboot2 => unsafe { parse_multiboot2(&mut boot, info) },
            Protocol::Unknown => {}
        }
        boot
    })
}

/// # Safety
/// `info` points at an `hvm_start_info` (checked by its magic).
unsafe fn parse_pvh(boot: &mut BootInfo, info: usize) {
    // SAFETY: (all reads below) hvm_start_info is 56 bytes (version 1); the loader put
    // it and the structures it points to in readable, identity-mapped memory.
    unsafe {
        if read_u32(info) != PVH_MAGIC {
            return;
        }
        boot.info_len = 56;
        let version = read_u32(info + 4);
        let cmdline = read_u64(info + 24) as usize;
        boot.copy_cmdline(cmdline);
        if version >= 1 {
            let memmap = read_u64(info + 40) as usize;
            let entries = read_u32(info + 48) as usize;
            for i in 0..entries.min(128) {
                let entry = memmap + i * 24;
                if read_u32(entry + 16) == E820_RAM {
                    boot.push_region(read_u64(entry), read_u64(entry + 8));
                }
            }
        }
    }
}

/// # Safety
/// `info` points at a Multiboot2 information structure.
unsafe fn parse_multiboot2(boot: &mut BootInfo, info: usize) {
    // SAFETY: (all reads below) the structure starts with its total size and holds
    // 8-byte-aligned tags up to that size, all in readable memory.
    unsafe {
        let total = read_u32(info) as usize;
        boot.info_len = total;
        let end = info + total;
        let mut tag = info + 8;
        while tag + 8 <= end {
            let kind = read_u32(tag);
            let size = read_u32(tag + 4) as usize;
            if kind == 0 || size < 8 {
                break;
            }
            match kind {
                1 => boot.copy_cmdline(tag + 8),
                6 => {
                    let entry_size = read_u32(tag + 8) as usize;
                    if entry_size >= 24 {
                        let mut entry = tag + 16;
                        while entry + entry_size <= tag + size {
                            if read_u32(entry + 16) == E820_RAM {
                                boot.push_region(read_u64(entry), read_u64(entry + 8));
                            }
                            entry += entry_size;
                        }
                    }
                }
                _ => {}
            }
            tag += (size + 7) & !7;
        }
    }
}
