//! Hardware drivers of the Duplex appliance.
//!
//! Each driver sits behind a trait of `duplex-hal` and keeps its `unsafe` in the
//! register and DMA layer: one `unsafe fn new()` whose `# Safety` says what the caller
//! promises (a valid port or BAR, a single instance); methods after that are safe.
//!
//! Modules: [`pci`] (configuration space), [`uart`] (COM ports), [`dma`] (DMA memory on
//! an identity-mapped machine), [`e1000`] (Intel 8254x NICs), [`virtio`] (virtio-net and
//! virtio-blk over PCI).

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bypass;
pub mod dma;
pub mod e1000;
pub mod pci;
pub mod uart;
pub mod virtio;
pub mod watchdog;
