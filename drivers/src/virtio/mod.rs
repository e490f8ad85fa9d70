//! virtio devices over PCI, through the `virtio-drivers` crate (0.13).
//!
//! - [`net::VirtioNet`]: virtio-net behind the [`duplex_hal::Nic`] trait. It uses the
//!   crate's PCI transport and split virtqueues directly (not its `VirtIONet` device), so
//!   that a batch costs one doorbell, and received frames go to the caller straight from
//!   their DMA buffers.
//! - [`ConfigSpaceAccess`]: the crate's `ConfigurationAccess` over this crate's
//!   [`crate::pci::ConfigSpace`] (the kernel's 0xCF8/0xCFC accessor), so both share one
//!   lock on the configuration ports.
//! - Probing: [`identify_net`] maps PCI ids to [`NetDeviceKind`].
//! - [`blk::VirtioBlk`]: virtio-blk behind [`duplex_hal::BlockDevice`]; probe with
//!   [`identify_block`] ([`BlockDeviceKind`]).
//!
//! DMA memory comes from [`crate::dma::IdentityHal`] (identity-mapped heap). `SPEC.md`
//! next to this file records the device facts and the notification policy.

pub mod blk;
pub mod net;

#[cfg(test)]
mod blk_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};

use crate::dma::IdentityHal;

use crate::pci::{ConfigSpace, PciAddress};

pub use net::VirtioNet;

/// The virtio PCI vendor id (Red Hat / Qumranet).
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;

/// The two PCI faces of a virtio-net device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetDeviceKind {
    /// 1af4:1000, transitional (legacy I/O BAR plus modern capabilities); QEMU's
    /// `virtio-net-pci` on a conventional PCI slot or the q35 root bus. The driver uses
    /// the modern interface.
    Transitional,
    /// 1af4:1041, modern only (QEMU's `virtio-net-pci` behind a PCIe root port, or with
    /// `disable-legacy=on`).
    Modern,
}

/// Supported virtio-net PCI (vendor, device) ids.
pub const SUPPORTED_NET_DEVICES: &[(u16, u16, NetDeviceKind)] = &[
    (VIRTIO_VENDOR_ID, 0x1000, NetDeviceKind::Transitional),
    (VIRTIO_VENDOR_ID, 0x1041, NetDeviceKind::Modern),
];

/// Which virtio-net face a PCI (vendor, device) id is, if any.
pub fn identify_net(vendor: u16, device: u16) -> Option<NetDeviceKind> {
    SUPPORTED_NET_DEVICES
        .iter()
        .find(|&&(v, d, _)| (v, d) == (vendor, device))
        .map(|&(_, _, kind)| kind)
}

/// The two PCI faces of a virtio-blk device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockDeviceKind {
    /// 1af4:1001, transitional (QEMU's `virtio-blk-pci` on a conventional PCI slot or the
    /// q35 root bus). The driver uses the modern interface.
    Transitional,
    /// 1af4:1042, modern only (behind a PCIe root port, or `disable-legacy=on`).
    Modern,
}

/// Supported virtio-blk PCI (vendor, device) ids.
pub const SUPPORTED_BLOCK_DEVICES: &[(u16, u16, BlockDeviceKind)] = &[
    (VIRTIO_VENDOR_ID, 0x1001, BlockDeviceKind::Transitional),
    (VIRTIO_VENDOR_ID, 0x1042, BlockDeviceKind::Modern),
];

/// Which virtio-blk face a PCI (vendor, device) id is, if any.
pub fn identify_block(vendor: u16, device: u16) -> Option<BlockDeviceKind> {
    SUPPORTED_BLOCK_DEVICES
        .iter()
        .find(|&&(v, d, _)| (v, d) == (vendor, device))
        .map(|&(_, _, kind)| kind)
}

/// `virtio_drivers`' configuration-space access over a [`ConfigSpace`].
#[derive(Clone, Copy)]
pub struct ConfigSpaceAccess<'a> {
    config: &'a dyn ConfigSpace,
}

impl<'a> ConfigSpaceAccess<'a> {
    /// Wraps `config`.
    pub fn new(config: &'a dyn ConfigSpace) -> Self {
        ConfigSpaceAccess { config }
    }
}

impl core::fmt::Debug for ConfigSpaceAccess<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ConfigSpaceAccess")
    }
}

/// This crate's address of `virtio_drivers`' device function.
fn pci_address(device_function: DeviceFunction) -> PciAddress {
    PciAddress {
        bus: device_function.bus,
        device: device_function.device,
        function: device_function.function,
    }
}

impl ConfigurationAccess for ConfigSpaceAccess<'_> {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        self.config
            .read32(pci_address(device_function), register_offset)
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        self.config
            .write32(pci_address(device_function), register_offset, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// Opens a virtio function for a driver: checks its PCI id with `supported`, sets
/// IO_SPACE, MEMORY_SPACE and BUS_MASTER, and builds the modern PCI transport (BARs mapped
/// by identity).
///
/// Errors: [`duplex_hal::Error::Unsupported`] for another device or one without the
/// modern interface, [`duplex_hal::Error::InvalidState`] for unassigned BARs.
///
/// # Safety
///
/// 1. The function's memory BARs are assigned and lie in identity-mapped, uncached MMIO,
///    for as long as the transport lives.
/// 2. RAM is identity-mapped, so heap addresses are the device's DMA addresses.
/// 3. No other driver instance uses this function.
pub(crate) unsafe fn open_pci(
    config: &dyn ConfigSpace,
    address: PciAddress,
    supported: fn(u16, u16) -> bool,
) -> duplex_hal::Result<PciTransport> {
    let id = config.read32(address, 0x00);
    if !supported(id as u16, (id >> 16) as u16) {
        return Err(duplex_hal::Error::Unsupported);
    }
    let mut root = PciRoot::new(ConfigSpaceAccess::new(config));
    let device_function = DeviceFunction {
        bus: address.bus,
        device: address.device,
        function: address.function,
    };
    // SAFETY: the caller's promises are `start_pci`'s; the id was checked.
    unsafe { start_pci(&mut root, device_function) }
}

/// [`open_pci`] for any `virtio_drivers` configuration access (ECAM, say).
///
/// # Safety
///
/// As for [`open_pci`].
pub(crate) unsafe fn open_pci_with<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    device_function: DeviceFunction,
    supported: fn(u16, u16) -> bool,
) -> duplex_hal::Result<PciTransport> {
    if !device_function.valid() {
        return Err(duplex_hal::Error::OutOfRange);
    }
    // `PciRoot` keeps its accessor to itself: read the id through bus enumeration.
    let found = root
        .enumerate_bus(device_function.bus)
        .find(|(found, _)| *found == device_function)
        .is_some_and(|(_, info)| supported(info.vendor_id, info.device_id));
    if !found {
        return Err(duplex_hal::Error::Unsupported);
    }
    // SAFETY: the caller's promises are `start_pci`'s; the id was checked.
    unsafe { start_pci(root, device_function) }
}

/// Enables the function and builds its transport.
///
/// # Safety
///
/// As for [`open_pci`], and the function is a virtio device.
unsafe fn start_pci<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    device_function: DeviceFunction,
) -> duplex_hal::Result<PciTransport> {
    let (_, command) = root.get_status_command(device_function);
    root.set_command(
        device_function,
        command | Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
    PciTransport::new::<IdentityHal, C>(root, device_function).map_err(|error| {
        use virtio_drivers::transport::pci::VirtioPciError as P;
        match error {
            P::BarNotAllocated(_) => duplex_hal::Error::InvalidState,
            _ => duplex_hal::Error::Unsupported,
        }
    })
}
