//! A fake virtio-net device for host tests: a `Transport` that records what the driver
//! programs, plus the device side of the split virtqueues (it reads the rings the driver
//! set up, fills receive buffers, consumes transmit buffers, writes the used rings).
//!
//! Memory is identity-mapped in host tests too (`IdentityHal` shares buffers by
//! address), so ring and buffer addresses are used as pointers.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec::Vec;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Descriptor flag: the device writes this buffer.
const DESCRIPTOR_WRITE: u16 = 2;
/// Descriptor flag: the chain continues.
const DESCRIPTOR_NEXT: u16 = 1;
/// Used ring flag: do not notify me.
const USED_NO_NOTIFY: u16 = 1;
/// Available ring flag: do not interrupt me.
pub const AVAILABLE_NO_INTERRUPT: u16 = 1;
/// VERSION_1 feature bit.
const VERSION_1: u64 = 1 << 32;

/// Where the driver put one queue.
#[derive(Debug, Clone, Copy)]
struct Queue {
    size: u16,
    descriptors: u64,
    driver_area: u64,
    device_area: u64,
    /// The next available-ring entry the device will take.
    next_available: u16,
    /// The device's used index.
    used_index: u16,
}

/// The device's state; tests reach it through [`FakeNetDevice`].
#[derive(Debug)]
pub struct FakeState {
    /// Device type the transport reports.
    pub device_type: DeviceType,
    /// Features the device offers.
    pub offered_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// When false, the device refuses FEATURES_OK.
    pub accept_features: bool,
    /// Queue size the device supports.
    pub max_queue_size: u32,
    status: DeviceStatus,
    queues: [Option<Queue>; 2],
    /// Notifications per queue.
    pub notifications: [u64; 2],
    /// Configuration space: MAC (6 bytes), status (u16), padding.
    pub config: [u8; 12],
    /// When true, a transmit notification makes the device send at once.
    pub transmit_on_notify: bool,
    /// Frames the device transmitted (header removed).
    pub wire: VecDeque<Vec<u8>>,
    /// Headers of transmitted frames that were not all zeros.
    pub bad_headers: u64,
}

/// A handle on a fake device; clones share it (the driver owns one, the test another).
#[derive(Debug, Clone)]
pub struct FakeNetDevice(Rc<RefCell<FakeState>>);

/// Reads a little-endian value at an identity-mapped address.
///
/// # Safety
///
/// `address` is valid for reads of `T` and aligned.
unsafe fn read<T: Copy>(address: u64) -> T {
    // SAFETY: the caller's promise.
    unsafe { (address as usize as *const T).read_volatile() }
}

/// Writes a value at an identity-mapped address.
///
/// # Safety
///
/// `address` is valid for writes of `T` and aligned.
unsafe fn write<T: Copy>(address: u64, value: T) {
    // SAFETY: the caller's promise.
    unsafe { (address as usize as *mut T).write_volatile(value) }
}

impl FakeNetDevice {
    /// A network device with `mac`, link up, offering `features`.
    pub fn new(mac: [u8; 6], features: u64) -> Self {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6] = 1; // link up
        FakeNetDevice(Rc::new(RefCell::new(FakeState {
            device_type: DeviceType::Network,
            offered_features: features,
            driver_features: 0,
            accept_features: true,
            max_queue_size: 256,
            status: DeviceStatus::empty(),
            queues: [None; 2],
            notifications: [0; 2],
            config,
            transmit_on_notify: true,
            wire: VecDeque::new(),
            bad_headers: 0,
        })))
    }

    /// Runs `f` on the device's state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.borrow_mut())
    }

    /// The device status the driver set.
    pub fn status(&self) -> DeviceStatus {
        self.0.borrow().status
    }

    /// Notifications the driver sent for `queue`.
    pub fn notifications(&self, queue: usize) -> u64 {
        self.0.borrow().notifications[queue]
    }

    /// The driver's available index of `queue` (how many buffers it ever offered).
    pub fn available_index(&self, queue: usize) -> u16 {
        let state = self.0.borrow();
        let queue = state.queues[queue].expect("queue set up");
        // SAFETY: the driver area the driver programmed: flags u16, idx u16, ...
        unsafe { read::<u16>(queue.driver_area + 2) }
    }

    /// The driver's available-ring flags of `queue`.
    pub fn available_flags(&self, queue: usize) -> u16 {
        let state = self.0.borrow();
        let queue = state.queues[queue].expect("queue set up");
        // SAFETY: the driver area the driver programmed.
        unsafe { read::<u16>(queue.driver_area) }
    }

    /// Sets or clears the used ring's NO_NOTIFY flag of `queue`.
    pub fn suppress_notifications(&self, queue: usize, suppress: bool) {
        let state = self.0.borrow();
        let queue = state.queues[queue].expect("queue set up");
        // SAFETY: the device area the driver programmed: flags u16 first.
        unsafe { write::<u16>(queue.device_area, if suppress { USED_NO_NOTIFY } else { 0 }) }
    }

    /// Changes the link bit in the configuration.
    pub fn set_link(&self, up: bool) {
        self.0.borrow_mut().config[6] = u8::from(up);
    }

    /// A frame arrives: it goes into the next receive buffer. False if the driver is not
    /// ready or offered no buffer.
    pub fn deliver(&self, frame: &[u8]) -> bool {
        let mut state = self.0.borrow_mut();
        if !state.status.contains(DeviceStatus::DRIVER_OK) {
            return false;
        }
        let header_len = state.header_len();
        let Some(queue) = state.queues[0].as_mut() else {
            return false;
        };
        let Some((head, address, length, flags)) = queue.take_available() else {
            return false;
        };
        assert_eq!(
            flags & DESCRIPTOR_NEXT,
            0,
            "one descriptor per receive buffer"
        );
        assert_ne!(
            flags & DESCRIPTOR_WRITE,
            0,
            "receive buffers are device-writable"
        );
        let total = header_len + frame.len();
        assert!(
            total <= length as usize,
            "buffer of {length} too small for {total}"
        );
        // SAFETY: the driver offered `length` device-writable bytes at `address`.
        unsafe {
            core::ptr::write_bytes(address as usize as *mut u8, 0, header_len);
            let payload = (address as usize + header_len) as *mut u8;
            core::ptr::copy_nonoverlapping(frame.as_ptr(), payload, frame.len());
        }
        queue.push_used(head, total as u32);
        true
    }

    /// The device sends everything the driver published on the transmit queue.
    pub fn process_transmit(&self) {
        let mut state = self.0.borrow_mut();
        state.process_transmit();
    }

    /// Takes the frames the device transmitted so far.
    pub fn take_wire(&self) -> Vec<Vec<u8>> {
        self.0.borrow_mut().wire.drain(..).collect()
    }
}

impl Queue {
    /// Takes the next available descriptor: (head, address, length, flags).
    fn take_available(&mut self) -> Option<(u16, u64, u32, u16)> {
        // SAFETY: the driver area the driver programmed: idx at 2, ring at 4.
        let available = unsafe { read::<u16>(self.driver_area + 2) };
        if available == self.next_available {
            return None;
        }
        let slot = u64::from(self.next_available % self.size);
        // SAFETY: ring entry `slot` of the available ring.
        let head = unsafe { read::<u16>(self.driver_area + 4 + 2 * slot) };
        assert!(head < self.size, "descriptor index out of range");
        let descriptor = self.descriptors + 16 * u64::from(head);
        // SAFETY: descriptor `head` of the table: addr u64, len u32, flags u16, next u16.
        let (address, length, flags) = unsafe {
            (
                read::<u64>(descriptor),
                read::<u32>(descriptor + 8),
                read::<u16>(descriptor + 12),
            )
        };
        self.next_available = self.next_available.wrapping_add(1);
        Some((head, address, length, flags))
    }

    /// Returns descriptor chain `head` to the driver with `length` bytes written.
    fn push_used(&mut self, head: u16, length: u32) {
        let slot = u64::from(self.used_index % self.size);
        let element = self.device_area + 4 + 8 * slot;
        // SAFETY: used ring element `slot`: id u32, len u32; then idx at 2.
        unsafe {
            write::<u32>(element, u32::from(head));
            write::<u32>(element + 4, length);
        }
        self.used_index = self.used_index.wrapping_add(1);
        // SAFETY: the used ring's idx field.
        unsafe { write::<u16>(self.device_area + 2, self.used_index) }
    }
}

impl FakeState {
    fn header_len(&self) -> usize {
        if self.driver_features & VERSION_1 != 0 {
            12
        } else {
            10
        }
    }

    fn process_transmit(&mut self) {
        if !self.status.contains(DeviceStatus::DRIVER_OK) {
            return;
        }
        let header_len = self.header_len();
        let Some(mut queue) = self.queues[1] else {
            return;
        };
        while let Some((head, address, length, flags)) = queue.take_available() {
            assert_eq!(
                flags & (DESCRIPTOR_NEXT | DESCRIPTOR_WRITE),
                0,
                "one readable descriptor"
            );
            let length = length as usize;
            assert!(length >= header_len);
            // SAFETY: the driver published `length` readable bytes at `address`.
            let bytes =
                unsafe { core::slice::from_raw_parts(address as usize as *const u8, length) };
            if bytes[..header_len].iter().any(|&b| b != 0) {
                self.bad_headers += 1;
            }
            self.wire.push_back(bytes[header_len..].to_vec());
            queue.push_used(head, 0);
        }
        self.queues[1] = Some(queue);
    }
}

impl Transport for FakeNetDevice {
    fn device_type(&self) -> DeviceType {
        self.0.borrow().device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.0.borrow().offered_features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.0.borrow_mut().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        self.0.borrow().max_queue_size
    }

    fn notify(&mut self, queue: u16) {
        let mut state = self.0.borrow_mut();
        state.notifications[usize::from(queue)] += 1;
        if queue == 1 && state.transmit_on_notify {
            state.process_transmit();
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.0.borrow().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut state = self.0.borrow_mut();
        let mut status = status;
        if !state.accept_features {
            status.remove(DeviceStatus::FEATURES_OK);
        }
        if status.is_empty() {
            state.queues = [None; 2];
        }
        state.status = status;
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.0.borrow_mut().queues[usize::from(queue)] = Some(Queue {
            size: size as u16,
            descriptors,
            driver_area,
            device_area,
            next_available: 0,
            used_index: 0,
        });
    }

    fn queue_unset(&mut self, queue: u16) {
        self.0.borrow_mut().queues[usize::from(queue)] = None;
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.borrow().queues[usize::from(queue)].is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let state = self.0.borrow();
        let bytes = offset
            .checked_add(size_of::<T>())
            .and_then(|end| state.config.get(offset..end))
            .ok_or(Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
}
