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

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

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
