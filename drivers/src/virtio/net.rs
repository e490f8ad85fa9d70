//! virtio-net behind the [`Nic`] trait.
//!
//! One receive and one transmit split virtqueue of [`QUEUE_SIZE`] entries, each entry a
//! single descriptor pointing at its own 2 KiB slot of one DMA region: the virtio-net
//! header, then the frame. Receive slots stay posted to the device; `receive` hands a
//! completed slot's frame to the caller in place and posts the slot again. `transmit`
//! copies the frame behind a zeroed header into a free slot and publishes it; `flush`
//! notifies the device once for the batch (only if the device has not suppressed
//! notifications) and reclaims finished slots.
//!
//! Features: VERSION_1, MAC and STATUS when offered; nothing else (no offloads, no
//! mergeable buffers, no event index: the device's NO_NOTIFY flag stays exact for a batch
//! checked once, where the crate's event-index test can miss a kick across the 16-bit
//! index wrap).
//! Used-buffer interrupts are suppressed; the driver is polled.

use alloc::boxed::Box;
use alloc::vec::Vec;

use duplex_hal::{Error, MacAddress, Nic, NicCounters, Result};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

use super::identify_net;
use crate::dma::{DmaAllocator, DmaRegion, HeapDma, IdentityHal};
use crate::pci::{ConfigSpace, PciAddress};

/// Entries in each virtqueue (QEMU's default queue size).
pub const QUEUE_SIZE: usize = 256;

/// Bytes per buffer slot: header plus the largest frame, rounded up.
pub const BUFFER_SIZE: usize = 2048;

/// The largest frame (without FCS) the driver sends or hands out: a full-size Ethernet
/// frame with one 802.1Q tag.
pub const MAX_FRAME_LEN: usize = 1518;

/// The shortest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// Queue indices of virtio-net.
const RECEIVE_QUEUE: u16 = 0;
const TRANSMIT_QUEUE: u16 = 1;

/// Feature bits (virtio 1.2, 5.1.3 and 6).
mod feature {
    /// The device has a MAC address in its configuration.
    pub const MAC: u64 = 1 << 5;
    /// The configuration has a link status field.
    pub const STATUS: u64 = 1 << 16;
    /// virtio 1.0 or later (mandatory for the modern PCI interface).
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device configuration layout: MAC at 0 (6 bytes), status at 6 (u16, bit 0 = link up).
const CONFIG_MAC: usize = 0;
const CONFIG_STATUS: usize = 6;
const STATUS_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr` length: 12 bytes with VERSION_1 (it includes `num_buffers`),
/// 10 bytes for a legacy device without mergeable buffers.
const HEADER_LEN_MODERN: usize = 12;
const HEADER_LEN_LEGACY: usize = 10;

/// Maps the crate's errors onto the HAL's.
fn map_error(error: virtio_drivers::Error) -> Error {
    use virtio_drivers::Error as E;
    match error {
        E::QueueFull => Error::Busy,
        E::NotReady | E::AlreadyUsed | E::WrongToken => Error::InvalidState,
        E::InvalidParam | E::Unsupported | E::ConfigSpaceTooSmall | E::ConfigSpaceMissing => {
            Error::Unsupported
        }
        _ => Error::Io,
    }
}

/// Fails the device and resets it (so that it forgets any queue before the queue memory
/// is freed), then returns `error`.
fn give_up<T: Transport>(transport: &mut T, error: Error) -> Error {
    transport.set_status(DeviceStatus::FAILED);
    transport.set_status(DeviceStatus::empty());
    error
}

/// A virtio-net device, initialised and running.
///
/// Dropping it resets the device before its queues and buffers are freed.
pub struct VirtioNet<T: Transport = PciTransport> {
    transport: T,
    /// Boxed: each queue keeps a 4 KiB shadow of its descriptor table.
    receive_queue: Box<VirtQueue<IdentityHal, QUEUE_SIZE>>,
    transmit_queue: Box<VirtQueue<IdentityHal, QUEUE_SIZE>>,
    receive_buffers: DmaRegion,
    transmit_buffers: DmaRegion,
    /// The receive slot behind each descriptor token.
    receive_slots: [u16; QUEUE_SIZE],
    /// The transmit slot behind each descriptor token.
    transmit_slots: [u16; QUEUE_SIZE],
    /// Bytes handed to the device from each transmit slot (header + frame).
    transmit_lengths: [u16; QUEUE_SIZE],
    /// Transmit slots not in the device's hands (a stack; never grows past QUEUE_SIZE).
    free_transmit_slots: Vec<u16>,
    /// Frames published since the last notification.
    transmit_unflushed: usize,
    header_len: usize,
    mac: MacAddress,
    has_status: bool,
    link: bool,
    /// The device broke the queue protocol; the driver stopped using it.
    failed: bool,
    counters: NicCounters,
}

impl<T: Transport> core::fmt::Debug for VirtioNet<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.mac)
            .field("link", &self.link)
            .field("failed", &self.failed)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl VirtioNet<PciTransport> {
    /// Starts the virtio-net function at `address`, reached through `config` (the
    /// kernel's configuration-space accessor).
    ///
    /// Checks the PCI id (see [`identify_net`]), sets MEMORY_SPACE, IO_SPACE and
    /// BUS_MASTER in the command register, finds the modern virtio capabilities and maps
    /// their BARs by identity, then initialises the device (see [`VirtioNet::new`]).
    ///
    /// Errors: [`Error::Unsupported`] for another device or one without the modern
    /// interface (`disable-modern=on`), [`Error::InvalidState`] for unassigned BARs, and
    /// the errors of [`VirtioNet::new`].
    ///
    /// # Safety
    ///
    /// 1. The function's memory BARs are assigned and lie in identity-mapped, uncached
    ///    MMIO (on the appliance: below 4 GiB), for as long as the driver lives.
    /// 2. RAM is identity-mapped, so heap addresses are the device's DMA addresses.
    /// 3. No other driver instance uses this function.
    pub unsafe fn new_pci(config: &dyn ConfigSpace, address: PciAddress) -> Result<Self> {
        // SAFETY: the caller's promises are `open_pci`'s.
        let transport =
            unsafe { super::open_pci(config, address, |v, d| identify_net(v, d).is_some())? };
        VirtioNet::new(transport)
    }

    /// [`VirtioNet::new_pci`] for any `virtio_drivers` configuration access (ECAM, say).
    ///
    /// # Safety
    ///
    /// As for [`VirtioNet::new_pci`].
    pub unsafe fn new_pci_with<C: ConfigurationAccess>(
        root: &mut PciRoot<C>,
        device_function: DeviceFunction,
    ) -> Result<Self> {
        // SAFETY: the caller's promises are `open_pci_with`'s.
        let transport = unsafe {
            super::open_pci_with(root, device_function, |v, d| identify_net(v, d).is_some())?
        };
        VirtioNet::new(transport)
    }
}

impl<T: Transport> VirtioNet<T> {
    /// Initialises the device behind `transport`: negotiates features, reads the MAC
    /// address, sets up both queues, posts every receive buffer and sets DRIVER_OK.
    ///
    /// Errors: [`Error::Unsupported`] when the transport is not a network device, the
    /// device refuses the features, offers no MAC address or queues smaller than
    /// [`QUEUE_SIZE`]; [`Error::Io`] when DMA memory runs out. The device is left reset.
    pub fn new(mut transport: T) -> Result<Self> {
        if transport.device_type() != DeviceType::Network {
            return Err(Error::Unsupported);
        }
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        let features = offered & (feature::MAC | feature::STATUS | feature::VERSION_1);
        transport.write_driver_features(features);
        let features_ok =
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        transport.set_status(features_ok);
        if features & feature::VERSION_1 != 0
            && !transport.get_status().contains(DeviceStatus::FEATURES_OK)
        {
            return Err(give_up(&mut transport, Error::Unsupported));
        }
        if features & feature::MAC == 0 {
            return Err(give_up(&mut transport, Error::Unsupported));
        }
        let header_len = if features & feature::VERSION_1 != 0 {
            HEADER_LEN_MODERN
        } else {
            HEADER_LEN_LEGACY
        };

        let mac = transport.read_consistent(|| {
            let mut mac = [0u8; 6];
            for (index, byte) in mac.iter_mut().enumerate() {
                *byte = transport.read_config_space::<u8>(CONFIG_MAC + index)?;
            }
            Ok(mac)
        });
        let mac = match mac {
            Ok(mac) => MacAddress(mac),
            Err(error) => return Err(give_up(&mut transport, map_error(error))),
        };
        let has_status = features & feature::STATUS != 0;
        let link = !has_status || read_link(&transport).unwrap_or(true);

        let receive_queue = match VirtQueue::new(&mut transport, RECEIVE_QUEUE, false, false) {
            Ok(queue) => Box::new(queue),
            Err(error) => return Err(give_up(&mut transport, map_error(error))),
        };
        let transmit_queue = match VirtQueue::new(&mut transport, TRANSMIT_QUEUE, false, false) {
            Ok(queue) => Box::new(queue),
            Err(error) => return Err(give_up(&mut transport, map_error(error))),
        };
        let buffers = HeapDma
            .allocate(QUEUE_SIZE * BUFFER_SIZE)
            .and_then(|receive| Ok((receive, HeapDma.allocate(QUEUE_SIZE * BUFFER_SIZE)?)));
        let (receive_buffers, transmit_buffers) = match buffers {
            Ok(buffers) => buffers,
            Err(error) => return Err(give_up(&mut transport, error)),
        };

        let mut net = VirtioNet {
            transport,
            receive_queue,
            transmit_queue,
            receive_buffers,
            transmit_buffers,
            receive_slots: [0; QUEUE_SIZE],
            transmit_slots: [0; QUEUE_SIZE],
            transmit_lengths: [0; QUEUE_SIZE],
            free_transmit_slots: (0..QUEUE_SIZE as u16).rev().collect(),
            transmit_unflushed: 0,
            header_len,
            mac,
            has_status,
            link,
            failed: false,
            counters: NicCounters::default(),
        };
        // Polled driver: no used-buffer interrupts.
        net.receive_queue.set_dev_notify(false);
        net.transmit_queue.set_dev_notify(false);
        for slot in 0..QUEUE_SIZE {
            // From here on, `Drop` resets the device on failure.
            net.post_receive_buffer(slot)?;
        }
        net.transport.finish_init();
        net.transport.notify(RECEIVE_QUEUE);
        Ok(net)
    }

    /// Gives receive slot `slot` to the device.
    fn post_receive_buffer(&mut self, slot: usize) -> Result {
        // SAFETY: the slot is not in the device's hands (it was never posted, or the
        // device returned it and the caller is done with its frame); the borrow ends
        // inside this function.
        let buffer = unsafe {
            self.receive_buffers
                .slice_mut(slot * BUFFER_SIZE, BUFFER_SIZE)
        };
        // SAFETY: the buffer lives in `receive_buffers`, which outlives the queue's use of
        // it (the device is reset before either drops), and the driver does not touch it
        // until `pop_used` returns it.
        let token = unsafe { self.receive_queue.add(&[], &mut [buffer]) }.map_err(map_error)?;
        self.receive_slots[usize::from(token)] = slot as u16;
        Ok(())
    }

    /// Takes back every transmit slot the device has finished with.
    fn reclaim_transmitted(&mut self) {
        while let Some(token) = self.transmit_queue.peek_used() {
            let Some(&slot) = self.transmit_slots.get(usize::from(token)) else {
                self.failed = true;
                return;
            };
            let length = usize::from(self.transmit_lengths[usize::from(slot)]);
            // SAFETY: the device reports this slot's transmission done; the driver only
            // reads the bytes it published.
            let data = unsafe {
                self.transmit_buffers
                    .slice(usize::from(slot) * BUFFER_SIZE, length)
            };
            // SAFETY: `data` is the buffer that was added under this token.
            if unsafe { self.transmit_queue.pop_used(token, &[data], &mut []) }.is_err() {
                self.failed = true;
                return;
            }
            self.free_transmit_slots.push(slot);
        }
    }

    /// The virtio-net header length in use (12, or 10 for a legacy device).
    pub fn header_len(&self) -> usize {
        self.header_len
    }
}

/// Reads the link bit of the configuration's status field.
fn read_link<T: Transport>(transport: &T) -> Option<bool> {
    let status = transport.read_config_space::<u16>(CONFIG_STATUS).ok()?;
    Some(status & STATUS_LINK_UP != 0)
}

impl<T: Transport> Nic for VirtioNet<T> {
    fn mac_address(&self) -> MacAddress {
        self.mac
    }

    /// Reads the link bit from the device configuration (always up without the STATUS
    /// feature) and counts changes. Call it every few milliseconds from the slow path.
    fn link_up(&mut self) -> bool {
        if !self.has_status {
            return true;
        }
        let up = read_link(&self.transport).unwrap_or(self.link);
        if up != self.link {
            self.counters.link_changes += 1;
            self.link = up;
        }
        up
    }

    fn receive(&mut self, budget: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut handed = 0;
        let mut consumed = 0;
        while consumed < budget && !self.failed {
            let Some(token) = self.receive_queue.peek_used() else {
                break;
            };
            let Some(&slot) = self.receive_slots.get(usize::from(token)) else {
                self.failed = true;
                break;
            };
            let slot = usize::from(slot);
            let offset = slot * BUFFER_SIZE;
            // SAFETY: the device has returned this slot (it is in the used ring); the
            // borrow ends with `pop_used`.
            let buffer = unsafe { self.receive_buffers.slice_mut(offset, BUFFER_SIZE) };
            // SAFETY: `buffer` is the one added under this token.
            let used = match unsafe { self.receive_queue.pop_used(token, &[], &mut [buffer]) } {
                Ok(used) => used as usize,
                Err(_) => {
                    self.failed = true;
                    break;
                }
            };
            consumed += 1;
            match used.checked_sub(self.header_len) {
                Some(length)
                    if (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&length) && used <= BUFFER_SIZE =>
                {
                    // SAFETY: the slot is back in the driver's hands until it is posted
                    // again below, after `sink` returns; `used <= BUFFER_SIZE` keeps the
                    // frame inside the slot.
                    let frame =
                        unsafe { self.receive_buffers.slice(offset + self.header_len, length) };
                    sink(frame);
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += length as u64;
                    handed += 1;
                }
                _ => self.counters.rx_dropped += 1,
            }
            if self.post_receive_buffer(slot).is_err() {
                self.failed = true;
            }
        }
        if consumed > 0 && self.receive_queue.should_notify() {
            self.transport.notify(RECEIVE_QUEUE);
        }
        handed
    }

    fn transmit(&mut self, frame: &[u8]) -> Result {
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()) {
            self.counters.tx_dropped += 1;
            return Err(Error::OutOfRange);
        }
        if self.failed {
            self.counters.tx_dropped += 1;
            return Err(Error::Io);
        }
        if self.free_transmit_slots.is_empty() {
            self.reclaim_transmitted();
        }
        let Some(slot) = self.free_transmit_slots.pop() else {
            self.counters.tx_dropped += 1;
            return Err(Error::Busy);
        };
        let offset = usize::from(slot) * BUFFER_SIZE;
        // The header (zeroed at allocation, never written by the device) stays as is.
        self.transmit_buffers
            .copy_from_slice(offset + self.header_len, frame);
        let length = self.header_len + frame.len();
        // SAFETY: the slot is free (not in the device's hands); the borrow ends with `add`.
        let data = unsafe { self.transmit_buffers.slice(offset, length) };
        // SAFETY: `data` lives in `transmit_buffers`, which outlives the queue's use of it,
        // and the driver does not write the slot until `pop_used` returns it.
        match unsafe { self.transmit_queue.add(&[data], &mut []) } {
            Ok(token) => {
                self.transmit_slots[usize::from(token)] = slot;
                self.transmit_lengths[usize::from(slot)] = length as u16;
                self.transmit_unflushed += 1;
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += frame.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.free_transmit_slots.push(slot);
                self.counters.tx_dropped += 1;
                Err(map_error(error))
            }
        }
    }

    fn transmit_room(&mut self) -> usize {
        if self.failed {
            return 0;
        }
        self.reclaim_transmitted();
        self.free_transmit_slots.len()
    }

    fn flush(&mut self) {
        if self.transmit_unflushed > 0 {
            self.transmit_unflushed = 0;
            if self.transmit_queue.should_notify() {
                self.transport.notify(TRANSMIT_QUEUE);
            }
        }
        if !self.failed {
            self.reclaim_transmitted();
        }
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn counters(&self) -> NicCounters {
        self.counters
    }

    fn model(&self) -> &'static str {
        "virtio-net"
    }
}

impl<T: Transport> Drop for VirtioNet<T> {
    fn drop(&mut self) {
        // Stop the device before the queues and buffers (dropped after this) are freed.
        self.transport.set_status(DeviceStatus::empty());
    }
}
