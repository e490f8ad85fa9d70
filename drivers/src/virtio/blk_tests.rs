//! Host tests of the virtio-blk driver against a fake block device.
//!
//! The fake is a `Transport` plus the device side of the split virtqueue, built like the
//! virtio-net fake in `fake.rs`: memory is identity-mapped in host tests too
//! (`IdentityHal` shares buffers by address), so ring and buffer addresses are used as
//! pointers. It models a disk with a volatile write cache (on when FLUSH is negotiated, or
//! as `writeback` says under CONFIG_WCE, as QEMU does), keeps a log of every request, and
//! injects faults: error statuses, a missing status, a wrong used token, requests never
//! completed, a reset that never completes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use duplex_hal::{BlockDevice, Error};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error as VirtioError, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::blk::{
    BLOCK_SIZE, DEFAULT_SPIN_LIMIT, MAX_REQUEST_BLOCKS, QUEUE_SIZE, VirtioBlk, WriteCache,
};
use super::{BlockDeviceKind, identify_block};
use crate::pci::{ConfigSpace, PciAddress};

const FEATURE_SIZE_MAX: u64 = 1 << 1;
const FEATURE_SEG_MAX: u64 = 1 << 2;
const FEATURE_GEOMETRY: u64 = 1 << 4;
const FEATURE_RO: u64 = 1 << 5;
const FEATURE_BLK_SIZE: u64 = 1 << 6;
const FEATURE_FLUSH: u64 = 1 << 9;
const FEATURE_TOPOLOGY: u64 = 1 << 10;
const FEATURE_CONFIG_WCE: u64 = 1 << 11;
const FEATURE_VERSION_1: u64 = 1 << 32;
/// What QEMU's virtio-blk offers besides, which the driver must decline: multiqueue,
/// discard, write zeroes, indirect descriptors, event index.
const FEATURES_DECLINED: u64 = (1 << 12) | (1 << 13) | (1 << 14) | (1 << 28) | (1 << 29);
/// QEMU 7.2's `virtio-blk-pci` with default properties.
const QEMU_FEATURES: u64 = FEATURE_SEG_MAX
    | FEATURE_GEOMETRY
    | FEATURE_BLK_SIZE
    | FEATURE_FLUSH
    | FEATURE_TOPOLOGY
    | FEATURE_CONFIG_WCE
    | FEATURE_VERSION_1
    | FEATURES_DECLINED;

const TYPE_IN: u32 = 0;
const TYPE_OUT: u32 = 1;
const TYPE_FLUSH: u32 = 4;
const TYPE_GET_ID: u32 = 8;
const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;

const DESCRIPTOR_NEXT: u16 = 1;
const DESCRIPTOR_WRITE: u16 = 2;
const AVAILABLE_NO_INTERRUPT: u16 = 1;

const CONFIG_SIZE_MAX: usize = 8;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_BLK_SIZE: usize = 20;
const CONFIG_PHYSICAL_BLOCK_EXP: usize = 24;
const CONFIG_WRITEBACK: usize = 32;

/// Blocks on the fake disk (1 MiB).
const CAPACITY: u64 = 2048;
/// A spin limit small enough for tests of a dead device.
const SHORT_SPIN: u64 = 1000;

/// Where the driver put the queue.
#[derive(Debug, Clone, Copy)]
struct Queue {
    size: u16,
    descriptors: u64,
    driver_area: u64,
    device_area: u64,
    next_available: u16,
    used_index: u16,
}

/// One descriptor of a chain: (address, length, device-writable).
type Segment = (u64, u32, bool);

/// A request as the device saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    request_type: u32,
    sector: u64,
    /// Data bytes (read or written), status byte excluded.
    data_len: usize,
    /// Data descriptors (header and status excluded).
    data_segments: usize,
    /// The device completed it (pushed it to the used ring).
    completed: bool,
}

/// The fake device's state.
#[derive(Debug)]
struct BlockState {
    device_type: DeviceType,
    offered_features: u64,
    driver_features: u64,
    /// When false, the device refuses FEATURES_OK.
    accept_features: bool,
    max_queue_size: u32,
    status: DeviceStatus,
    /// When true, writing 0 to the status does not reset the device.
    reset_ignored: bool,
    queue: Option<Queue>,
    notifications: u64,
    config: [u8; 64],
    /// The device takes writes to `writeback` (under CONFIG_WCE).
    writeback_switchable: bool,
    /// The medium: what survives a power loss.
    durable: Vec<u8>,
    /// The volatile write cache, block by block.
    cache: BTreeMap<u64, Vec<u8>>,
    log: Vec<Request>,
    /// Requests of this type are taken but never completed (`u32::MAX`: all types).
    stall: Option<u32>,
    /// The next request completes with this status instead of being executed.
    fail_next: Option<u8>,
    /// The next request completes without a status byte written.
    skip_status_next: bool,
    /// The next completion names the wrong descriptor chain.
    wrong_token_next: bool,
    identifier: Vec<u8>,
    /// While true, notifications leave the chains in the available ring (a device still
    /// working); `release` processes them.
    hold: bool,
}

/// A handle on a fake block device; clones share it (the driver owns one, the test
/// another).
#[derive(Debug, Clone)]
struct FakeBlock(Rc<RefCell<BlockState>>);

/// Reads a value at an identity-mapped address.
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

/// A recognisable block of data.
fn pattern(blocks: usize, seed: u32) -> Vec<u8> {
    (0..blocks * BLOCK_SIZE)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(seed.wrapping_mul(7)) as u8
                ^ 0x5a
        })
        .collect()
}

impl FakeBlock {
    /// A block device of `capacity` blocks offering `features`, cache mode write-back in
    /// its configuration (QEMU's default with `cache=writeback`).
    fn new(capacity: u64, features: u64) -> Self {
        let mut config = [0u8; 64];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        config[CONFIG_SEG_MAX..][..4].copy_from_slice(&254u32.to_le_bytes());
        config[CONFIG_BLK_SIZE..][..4].copy_from_slice(&512u32.to_le_bytes());
        config[CONFIG_WRITEBACK] = 1;
        FakeBlock(Rc::new(RefCell::new(BlockState {
            device_type: DeviceType::Block,
            offered_features: features,
            driver_features: 0,
            accept_features: true,
            max_queue_size: 256,
            status: DeviceStatus::empty(),
            reset_ignored: false,
            queue: None,
            notifications: 0,
            config,
            writeback_switchable: true,
            durable: vec![0; capacity as usize * BLOCK_SIZE],
            cache: BTreeMap::new(),
            log: Vec::new(),
            stall: None,
            fail_next: None,
            skip_status_next: false,
            wrong_token_next: false,
            identifier: b"duplex-disk-0".to_vec(),
            hold: false,
        })))
    }

    fn qemu() -> Self {
        FakeBlock::new(CAPACITY, QEMU_FEATURES)
    }

    fn with<T>(&self, f: impl FnOnce(&mut BlockState) -> T) -> T {
        f(&mut self.0.borrow_mut())
    }

    fn status(&self) -> DeviceStatus {
        self.0.borrow().status
    }

    fn log(&self) -> Vec<Request> {
        self.0.borrow().log.clone()
    }

    fn clear_log(&self) {
        self.0.borrow_mut().log.clear();
    }

    /// The device finishes what it holds and works at once from now on.
    fn release(&self) {
        let mut state = self.0.borrow_mut();
        state.hold = false;
        state.process();
    }

    /// Power loss: the write cache is gone.
    fn lose_power(&self) {
        self.0.borrow_mut().cache.clear();
    }

    /// Bytes of `blocks` blocks at `block` on the medium (what survives power loss).
    fn durable(&self, block: u64, blocks: usize) -> Vec<u8> {
        let state = self.0.borrow();
        let start = block as usize * BLOCK_SIZE;
        state.durable[start..start + blocks * BLOCK_SIZE].to_vec()
    }

    /// The driver's available-ring flags.
    fn available_flags(&self) -> u16 {
        let queue = self.0.borrow().queue.expect("queue set up");
        // SAFETY: the driver area the driver programmed: flags u16 first.
        unsafe { read::<u16>(queue.driver_area) }
    }
}

impl Queue {
    /// Takes the next available chain: its head and its descriptors.
    fn take_available(&mut self) -> Option<(u16, Vec<Segment>)> {
        // SAFETY: the driver area the driver programmed: idx at 2, ring at 4.
        let available = unsafe { read::<u16>(self.driver_area + 2) };
        if available == self.next_available {
            return None;
        }
        let slot = u64::from(self.next_available % self.size);
        // SAFETY: ring entry `slot` of the available ring.
        let head = unsafe { read::<u16>(self.driver_area + 4 + 2 * slot) };
        self.next_available = self.next_available.wrapping_add(1);
        let mut chain = Vec::new();
        let mut index = head;
        loop {
            assert!(index < self.size, "descriptor index out of range");
            assert!(chain.len() < usize::from(self.size), "descriptor loop");
            let descriptor = self.descriptors + 16 * u64::from(index);
            // SAFETY: descriptor `index`: addr u64, len u32, flags u16, next u16.
            let (address, length, flags, next) = unsafe {
                (
                    read::<u64>(descriptor),
                    read::<u32>(descriptor + 8),
                    read::<u16>(descriptor + 12),
                    read::<u16>(descriptor + 14),
                )
            };
            chain.push((address, length, flags & DESCRIPTOR_WRITE != 0));
            if flags & DESCRIPTOR_NEXT == 0 {
                break;
            }
            index = next;
        }
        Some((head, chain))
    }

    /// Returns chain `head` to the driver with `length` bytes written.
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

/// Copies `bytes` into the device-writable segments, in order.
fn scatter(segments: &[Segment], bytes: &[u8]) {
    let mut rest = bytes;
    for &(address, length, _) in segments {
        let take = rest.len().min(length as usize);
        // SAFETY: the driver offered `length` device-writable bytes at `address`.
        unsafe { core::ptr::copy_nonoverlapping(rest.as_ptr(), address as usize as *mut u8, take) };
        rest = &rest[take..];
    }
    assert!(rest.is_empty(), "writable buffers too small");
}

/// Concatenates the bytes of `segments`.
fn gather(segments: &[Segment]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &(address, length, _) in segments {
        // SAFETY: the driver published `length` readable bytes at `address`.
        bytes.extend_from_slice(unsafe {
            core::slice::from_raw_parts(address as usize as *const u8, length as usize)
        });
    }
    bytes
}

impl BlockState {
    fn write_cache_on(&self) -> bool {
        if self.driver_features & FEATURE_CONFIG_WCE != 0 {
            self.config[CONFIG_WRITEBACK] != 0
        } else {
            self.driver_features & FEATURE_FLUSH != 0
        }
    }

    fn capacity(&self) -> u64 {
        u64::from_le_bytes(self.config[..8].try_into().unwrap())
    }

    fn read_block(&self, block: u64) -> Vec<u8> {
        match self.cache.get(&block) {
            Some(bytes) => bytes.clone(),
            None => {
                let start = block as usize * BLOCK_SIZE;
                self.durable[start..start + BLOCK_SIZE].to_vec()
            }
        }
    }

    fn write_block(&mut self, block: u64, bytes: &[u8]) {
        if self.write_cache_on() {
            self.cache.insert(block, bytes.to_vec());
        } else {
            let start = block as usize * BLOCK_SIZE;
            self.durable[start..start + BLOCK_SIZE].copy_from_slice(bytes);
        }
    }

    /// Executes every available chain.
    fn process(&mut self) {
        if !self.status.contains(DeviceStatus::DRIVER_OK) {
            return;
        }
        let Some(mut queue) = self.queue else {
            return;
        };
        while let Some((head, chain)) = queue.take_available() {
            let first_writable = chain
                .iter()
                .position(|&(_, _, writable)| writable)
                .expect("a status byte");
            let (readable, writable) = chain.split_at(first_writable);
            assert!(
                writable.iter().all(|&(_, _, w)| w),
                "readable descriptors after writable ones"
            );
            assert_eq!(readable[0].1, 16, "header descriptor of 16 bytes");
            let (status_segment, data_in) = writable.split_last().unwrap();
            assert_eq!(status_segment.1, 1, "status descriptor of 1 byte");
            let readable_bytes = gather(readable);
            let header = &readable_bytes[..16];
            let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
            let data_out = &readable_bytes[16..];
            let in_len: usize = data_in.iter().map(|&(_, len, _)| len as usize).sum();
            let data_segments = readable.len() - 1 + data_in.len();
            let stalled = self
                .stall
                .is_some_and(|kind| kind == u32::MAX || kind == request_type);
            self.log.push(Request {
                request_type,
                sector,
                data_len: data_out.len() + in_len,
                data_segments,
                completed: !stalled,
            });
            if stalled {
                continue;
            }
            let mut status = STATUS_OK;
            let mut written = 0usize;
            if let Some(injected) = self.fail_next.take() {
                status = injected;
            } else {
                match request_type {
                    TYPE_IN | TYPE_OUT => {
                        let len = data_out.len() + in_len;
                        let blocks = (len / BLOCK_SIZE) as u64;
                        if !len.is_multiple_of(BLOCK_SIZE)
                            || sector + blocks > self.capacity()
                            || (request_type == TYPE_OUT && self.driver_features & FEATURE_RO != 0)
                        {
                            status = STATUS_IOERR;
                        } else if request_type == TYPE_IN {
                            let mut bytes = Vec::new();
                            for block in sector..sector + blocks {
                                bytes.extend(self.read_block(block));
                            }
                            scatter(data_in, &bytes);
                            written = bytes.len();
                        } else {
                            for (index, block) in (sector..sector + blocks).enumerate() {
                                let bytes = data_out[index * BLOCK_SIZE..][..BLOCK_SIZE].to_vec();
                                self.write_block(block, &bytes);
                            }
                        }
                    }
                    TYPE_FLUSH => {
                        for (block, bytes) in core::mem::take(&mut self.cache) {
                            let start = block as usize * BLOCK_SIZE;
                            self.durable[start..start + BLOCK_SIZE].copy_from_slice(&bytes);
                        }
                    }
                    TYPE_GET_ID => {
                        let mut bytes = vec![0u8; in_len];
                        let n = self.identifier.len().min(in_len);
                        bytes[..n].copy_from_slice(&self.identifier[..n]);
                        scatter(data_in, &bytes);
                        written = in_len;
                    }
                    _ => status = STATUS_UNSUPP,
                }
            }
            if !core::mem::take(&mut self.skip_status_next) {
                scatter(core::slice::from_ref(status_segment), &[status]);
            }
            let token = if core::mem::take(&mut self.wrong_token_next) {
                head.wrapping_add(1) % queue.size
            } else {
                head
            };
            queue.push_used(token, (written + 1) as u32);
        }
        self.queue = Some(queue);
    }
}

impl Transport for FakeBlock {
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
        assert_eq!(queue, 0, "virtio-blk has one queue");
        let mut state = self.0.borrow_mut();
        state.notifications += 1;
        if !state.hold {
            state.process();
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
            if state.reset_ignored {
                return;
            }
            state.queue = None;
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
        assert_eq!(queue, 0);
        self.0.borrow_mut().queue = Some(Queue {
            size: size as u16,
            descriptors,
            driver_area,
            device_area,
            next_available: 0,
            used_index: 0,
        });
    }

    fn queue_unset(&mut self, _queue: u16) {
        self.0.borrow_mut().queue = None;
    }

    fn queue_used(&mut self, _queue: u16) -> bool {
        self.0.borrow().queue.is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let state = self.0.borrow();
        let bytes = offset
            .checked_add(size_of::<T>())
            .and_then(|end| state.config.get(offset..end))
            .ok_or(VirtioError::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| VirtioError::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), VirtioError> {
        let mut state = self.0.borrow_mut();
        let bytes = value.as_bytes();
        if offset == CONFIG_WRITEBACK
            && bytes.len() == 1
            && state.driver_features & FEATURE_CONFIG_WCE != 0
            && state.writeback_switchable
        {
            state.config[CONFIG_WRITEBACK] = bytes[0];
            Ok(())
        } else {
            Err(VirtioError::Unsupported)
        }
    }
}

fn start(device: &FakeBlock) -> VirtioBlk<FakeBlock> {
    VirtioBlk::new(device.clone()).expect("driver starts")
}

fn read_back(disk: &mut impl BlockDevice, block: u64, blocks: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; blocks * BLOCK_SIZE];
    disk.read(block, &mut bytes).expect("read");
    bytes
}

#[test]
fn identifies_virtio_blk_ids() {
    assert_eq!(
        identify_block(0x1af4, 0x1001),
        Some(BlockDeviceKind::Transitional)
    );
    assert_eq!(
        identify_block(0x1af4, 0x1042),
        Some(BlockDeviceKind::Modern)
    );
    assert_eq!(identify_block(0x1af4, 0x1000), None, "virtio-net");
    assert_eq!(identify_block(0x1af4, 0x1041), None, "virtio-net");
    assert_eq!(identify_block(0x8086, 0x1001), None);
}

#[test]
fn start_negotiates_flush_and_only_what_it_uses() {
    let device = FakeBlock::qemu();
    let disk = start(&device);
    assert_eq!(
        device.with(|state| state.driver_features),
        FEATURE_VERSION_1 | FEATURE_FLUSH | FEATURE_SEG_MAX | FEATURE_BLK_SIZE | FEATURE_TOPOLOGY,
        "CONFIG_WCE is not needed when FLUSH is there"
    );
    assert_eq!(disk.features(), device.with(|state| state.driver_features));
    assert!(
        device
            .status()
            .contains(DeviceStatus::DRIVER_OK | DeviceStatus::FEATURES_OK)
    );
    assert_eq!(disk.capacity(), CAPACITY);
    assert_eq!(disk.block_count(), CAPACITY);
    assert_eq!(disk.block_size(), 512);
    assert_eq!(disk.model(), "virtio-blk");
    assert!(!disk.read_only());
    assert_eq!(disk.write_cache(), WriteCache::Flushable);
    assert!(device.with(|state| state.write_cache_on()));
    assert_eq!(disk.logical_block_size(), 512);
    assert_eq!(disk.physical_block_size(), 512);
    assert_eq!(disk.max_request_bytes(), MAX_REQUEST_BLOCKS * BLOCK_SIZE);
    assert_eq!(disk.spin_limit(), DEFAULT_SPIN_LIMIT);
    assert!(!disk.is_failed());
    // Used-buffer interrupts are suppressed.
    assert_eq!(device.available_flags(), AVAILABLE_NO_INTERRUPT);
    assert!(device.log().is_empty(), "no request at start");
}

#[test]
fn start_refuses_what_it_cannot_drive() {
    let device = FakeBlock::qemu();
    device.with(|state| state.device_type = DeviceType::Network);
    assert_eq!(VirtioBlk::new(device).unwrap_err(), Error::Unsupported);

    let device = FakeBlock::qemu();
    device.with(|state| state.accept_features = false);
    assert_eq!(
        VirtioBlk::new(device.clone()).unwrap_err(),
        Error::Unsupported
    );
    assert!(device.status().is_empty(), "device left reset");

    let device = FakeBlock::qemu();
    device.with(|state| state.max_queue_size = QUEUE_SIZE as u32 / 2);
    assert_eq!(
        VirtioBlk::new(device.clone()).unwrap_err(),
        Error::Unsupported
    );
    assert!(device.status().is_empty());

    for bad in [0u32, 256, 768, 1 << 17] {
        let device = FakeBlock::qemu();
        device
            .with(|state| state.config[CONFIG_BLK_SIZE..][..4].copy_from_slice(&bad.to_le_bytes()));
        assert_eq!(
            VirtioBlk::new(device.clone()).unwrap_err(),
            Error::Unsupported,
            "blk_size {bad}"
        );
        assert!(device.status().is_empty());
    }

    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES | FEATURE_SIZE_MAX);
    device.with(|state| state.config[CONFIG_SIZE_MAX..][..4].fill(0));
    assert_eq!(VirtioBlk::new(device).unwrap_err(), Error::Unsupported);

    let device = FakeBlock::qemu();
    device.with(|state| state.reset_ignored = true);
    device.with(|state| state.status = DeviceStatus::ACKNOWLEDGE);
    assert_eq!(VirtioBlk::new(device).unwrap_err(), Error::Timeout);
}

#[test]
fn read_after_write() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    assert_eq!(
        read_back(&mut disk, 5, 1),
        vec![0; BLOCK_SIZE],
        "fresh disk"
    );
    let data = pattern(1, 1);
    disk.write(5, &data).unwrap();
    assert_eq!(read_back(&mut disk, 5, 1), data);
    assert_eq!(
        read_back(&mut disk, 4, 1),
        vec![0; BLOCK_SIZE],
        "neighbour untouched"
    );
    assert_eq!(
        read_back(&mut disk, 6, 1),
        vec![0; BLOCK_SIZE],
        "neighbour untouched"
    );
    // Last block of the disk too.
    let last = pattern(1, 2);
    disk.write(CAPACITY - 1, &last).unwrap();
    assert_eq!(read_back(&mut disk, CAPACITY - 1, 1), last);
    let counters = disk.counters();
    assert_eq!(counters.write_requests, 2);
    assert_eq!(counters.read_requests, 5);
    assert_eq!(counters.blocks_written, 2);
    assert_eq!(counters.blocks_read, 5);
    assert_eq!(counters.device_errors, 0);
}

#[test]
fn multi_block_calls_are_one_request_with_one_data_descriptor() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    // A 4 KiB-aligned commit: 8 blocks.
    let commit = pattern(8, 3);
    disk.write(64, &commit).unwrap();
    assert_eq!(
        device.log(),
        vec![Request {
            request_type: TYPE_OUT,
            sector: 64,
            data_len: 4096,
            data_segments: 1,
            completed: true,
        }]
    );
    device.clear_log();
    assert_eq!(read_back(&mut disk, 64, 8), commit);
    assert_eq!(
        device.log(),
        vec![Request {
            request_type: TYPE_IN,
            sector: 64,
            data_len: 4096,
            data_segments: 1,
            completed: true,
        }]
    );
    // Overlapping reads see the same bytes.
    assert_eq!(read_back(&mut disk, 66, 2), commit[1024..2048]);
}

#[test]
fn calls_longer_than_one_request_are_split() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let blocks = MAX_REQUEST_BLOCKS + 44;
    let data = pattern(blocks, 4);
    disk.write(100, &data).unwrap();
    let log = device.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].sector, log[0].data_len),
        (100, MAX_REQUEST_BLOCKS * BLOCK_SIZE)
    );
    assert_eq!(
        (log[1].sector, log[1].data_len),
        (100 + MAX_REQUEST_BLOCKS as u64, 44 * BLOCK_SIZE)
    );
    assert_eq!(read_back(&mut disk, 100, blocks), data);
    assert_eq!(disk.counters().read_requests, 2);
}

#[test]
fn segment_limits_of_the_device_are_kept() {
    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES | FEATURE_SIZE_MAX);
    device.with(|state| {
        state.config[CONFIG_SIZE_MAX..][..4].copy_from_slice(&1024u32.to_le_bytes());
        state.config[CONFIG_SEG_MAX..][..4].copy_from_slice(&3u32.to_le_bytes());
    });
    let mut disk = start(&device);
    assert_eq!(disk.max_request_bytes(), 3072);
    let data = pattern(8, 5);
    disk.write(8, &data).unwrap();
    let log = device.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].sector, log[0].data_len, log[0].data_segments),
        (8, 3072, 3)
    );
    assert_eq!(
        (log[1].sector, log[1].data_len, log[1].data_segments),
        (14, 1024, 1)
    );
    assert_eq!(read_back(&mut disk, 8, 8), data);
}

#[test]
fn out_of_range_requests_never_reach_the_device() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let one = pattern(1, 6);
    let mut buffer = vec![0u8; 2 * BLOCK_SIZE];
    assert_eq!(disk.write(CAPACITY, &one), Err(Error::OutOfRange));
    assert_eq!(
        disk.write(CAPACITY - 1, &pattern(2, 6)),
        Err(Error::OutOfRange)
    );
    assert_eq!(disk.read(CAPACITY - 1, &mut buffer), Err(Error::OutOfRange));
    assert_eq!(disk.read(u64::MAX, &mut buffer), Err(Error::OutOfRange));
    assert_eq!(
        disk.write(u64::MAX - 1, &pattern(2, 6)),
        Err(Error::OutOfRange)
    );
    assert!(device.log().is_empty());
    // Empty calls inside the disk (or at its end) do nothing and succeed.
    assert_eq!(disk.read(CAPACITY, &mut []), Ok(()));
    assert_eq!(disk.write(0, &[]), Ok(()));
    assert_eq!(disk.read(CAPACITY + 1, &mut []), Err(Error::OutOfRange));
    assert!(device.log().is_empty());
    assert!(!disk.is_failed());
}

#[test]
fn lengths_that_are_not_whole_blocks_are_refused() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    for len in [1usize, 100, 511, 513, 4095] {
        let mut buffer = vec![0u8; len];
        assert_eq!(
            disk.read(0, &mut buffer),
            Err(Error::OutOfRange),
            "read {len}"
        );
        assert_eq!(
            disk.write(0, &buffer),
            Err(Error::OutOfRange),
            "write {len}"
        );
    }
    assert!(device.log().is_empty());
}

#[test]
fn device_error_status_is_an_error_and_the_driver_goes_on() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let data = pattern(2, 7);
    device.with(|state| state.fail_next = Some(STATUS_IOERR));
    assert_eq!(disk.write(10, &data), Err(Error::Io));
    device.with(|state| state.fail_next = Some(STATUS_IOERR));
    let mut buffer = vec![0u8; 2 * BLOCK_SIZE];
    assert_eq!(disk.read(10, &mut buffer), Err(Error::Io));
    device.with(|state| state.fail_next = Some(STATUS_UNSUPP));
    assert_eq!(disk.flush(), Err(Error::Unsupported));
    device.with(|state| state.fail_next = Some(0x7f));
    assert_eq!(disk.flush(), Err(Error::Io), "unknown status");
    device.with(|state| state.skip_status_next = true);
    assert_eq!(
        disk.write(10, &data),
        Err(Error::Io),
        "status never written"
    );
    assert_eq!(disk.counters().device_errors, 5);
    assert!(!disk.is_failed());
    disk.write(10, &data).unwrap();
    assert_eq!(read_back(&mut disk, 10, 2), data);
}

#[test]
fn flush_follows_the_writes_and_makes_them_durable() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let first = pattern(8, 8);
    let second = pattern(8, 9);
    disk.write(0, &first).unwrap();
    disk.write(8, &second).unwrap();
    // Completed but cached: a power loss now loses both.
    assert_eq!(device.durable(0, 16), vec![0; 16 * BLOCK_SIZE]);
    disk.flush().unwrap();
    let kinds: Vec<(u32, bool)> = device
        .log()
        .iter()
        .map(|request| (request.request_type, request.completed))
        .collect();
    assert_eq!(
        kinds,
        vec![(TYPE_OUT, true), (TYPE_OUT, true), (TYPE_FLUSH, true)],
        "writes, then one flush, all completed"
    );
    let flush = &device.log()[2];
    assert_eq!(
        (flush.data_len, flush.data_segments),
        (0, 0),
        "flush carries no data"
    );
    assert_eq!(device.durable(0, 8), first);
    assert_eq!(device.durable(8, 8), second);
    device.lose_power();
    assert_eq!(read_back(&mut disk, 0, 16), [first, second].concat());

    // Unflushed writes die with the power.
    disk.write(16, &pattern(8, 10)).unwrap();
    device.lose_power();
    assert_eq!(read_back(&mut disk, 16, 8), vec![0; 8 * BLOCK_SIZE]);
    assert_eq!(disk.counters().flush_requests, 1);
}

#[test]
fn flush_waits_for_the_device_to_complete_it() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    disk.set_spin_limit(SHORT_SPIN);
    disk.write(0, &pattern(8, 11)).unwrap();
    device.with(|state| state.stall = Some(TYPE_FLUSH));
    assert_eq!(disk.flush(), Err(Error::Timeout), "flush never completed");
    let log = device.log();
    assert_eq!(
        log.last().map(|r| (r.request_type, r.completed)),
        Some((TYPE_FLUSH, false))
    );
    assert_eq!(disk.counters().longest_wait, SHORT_SPIN);
    assert_eq!(disk.counters().timeouts, 1);
}

#[test]
fn read_only_device_refuses_writes_but_reads() {
    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES | FEATURE_RO);
    device.with(|state| state.durable[..BLOCK_SIZE].copy_from_slice(&pattern(1, 12)));
    let mut disk = start(&device);
    assert!(disk.read_only());
    assert_ne!(device.with(|state| state.driver_features) & FEATURE_RO, 0);
    assert_eq!(disk.write(0, &pattern(1, 13)), Err(Error::InvalidState));
    assert_eq!(
        disk.write(CAPACITY, &[1]),
        Err(Error::InvalidState),
        "checked first"
    );
    assert!(device.log().is_empty(), "nothing sent");
    assert_eq!(read_back(&mut disk, 0, 1), pattern(1, 12));
    assert!(!disk.is_failed());
}

#[test]
fn without_flush_or_cache_control_writes_are_durable_and_flush_is_free() {
    let device = FakeBlock::new(
        CAPACITY,
        QEMU_FEATURES & !(FEATURE_FLUSH | FEATURE_CONFIG_WCE),
    );
    let mut disk = start(&device);
    assert_eq!(disk.write_cache(), WriteCache::WriteThrough);
    assert_eq!(
        device.with(|state| state.driver_features) & FEATURE_FLUSH,
        0
    );
    let data = pattern(8, 14);
    disk.write(0, &data).unwrap();
    assert_eq!(device.durable(0, 8), data, "durable on completion");
    assert_eq!(disk.flush(), Ok(()));
    assert!(
        device
            .log()
            .iter()
            .all(|request| request.request_type != TYPE_FLUSH),
        "no flush request"
    );
    assert_eq!(disk.counters().flush_requests, 0);
}

#[test]
fn without_flush_a_write_back_cache_is_switched_off() {
    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES & !FEATURE_FLUSH);
    let mut disk = start(&device);
    assert_ne!(
        device.with(|state| state.driver_features) & FEATURE_CONFIG_WCE,
        0
    );
    assert_eq!(device.with(|state| state.config[CONFIG_WRITEBACK]), 0);
    assert_eq!(disk.write_cache(), WriteCache::WriteThrough);
    let data = pattern(1, 15);
    disk.write(3, &data).unwrap();
    assert_eq!(device.durable(3, 1), data);
    assert_eq!(disk.flush(), Ok(()));

    // Already write-through: left alone.
    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES & !FEATURE_FLUSH);
    device.with(|state| {
        state.config[CONFIG_WRITEBACK] = 0;
        state.writeback_switchable = false;
    });
    assert_eq!(start(&device).write_cache(), WriteCache::WriteThrough);
}

#[test]
fn without_flush_a_cache_that_stays_on_makes_flush_unsupported() {
    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES & !FEATURE_FLUSH);
    device.with(|state| state.writeback_switchable = false);
    let mut disk = start(&device);
    assert_eq!(disk.write_cache(), WriteCache::Unflushable);
    disk.write(0, &pattern(1, 16)).unwrap();
    assert_eq!(disk.flush(), Err(Error::Unsupported), "never pretends");
    assert!(device.log().iter().all(|r| r.request_type != TYPE_FLUSH));
    assert!(!disk.is_failed());
}

#[test]
fn a_dead_device_times_out_is_reset_and_stays_refused() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    disk.set_spin_limit(SHORT_SPIN);
    disk.write(0, &pattern(1, 17)).unwrap();
    device.with(|state| state.stall = Some(u32::MAX));
    let mut buffer = vec![0u8; BLOCK_SIZE];
    assert_eq!(disk.read(0, &mut buffer), Err(Error::Timeout));
    assert!(disk.is_failed());
    assert!(device.status().is_empty(), "device reset");
    assert!(device.with(|state| state.queue.is_none()));
    device.with(|state| state.stall = None);
    let requests = device.log().len();
    assert_eq!(disk.read(0, &mut buffer), Err(Error::Io));
    assert_eq!(disk.write(0, &buffer), Err(Error::Io));
    assert_eq!(disk.flush(), Err(Error::Io));
    assert_eq!(disk.identifier(), Err(Error::Io));
    assert_eq!(
        device.log().len(),
        requests,
        "nothing sent after the failure"
    );
    assert_eq!(disk.counters().timeouts, 1);
}

#[test]
fn a_wrong_completion_fails_the_driver() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    device.with(|state| state.wrong_token_next = true);
    assert_eq!(disk.write(0, &pattern(1, 18)), Err(Error::Io));
    assert!(disk.is_failed());
    assert!(device.status().is_empty(), "device reset");
    assert_eq!(disk.flush(), Err(Error::Io));
}

#[test]
fn a_device_that_does_not_reset_is_leaked_not_freed() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    disk.set_spin_limit(SHORT_SPIN);
    device.with(|state| {
        state.stall = Some(u32::MAX);
        state.reset_ignored = true;
    });
    assert_eq!(disk.flush(), Err(Error::Timeout));
    assert!(device.status().contains(DeviceStatus::FAILED));
    // Dropping must not hang, nor free the queue and buffer under the device's feet: the
    // driver leaks them, with the transport (whose handle on the fake therefore stays).
    assert_eq!(Rc::strong_count(&device.0), 2);
    drop(disk);
    assert_eq!(Rc::strong_count(&device.0), 2, "leaked, not dropped");
}

#[test]
fn logical_blocks_larger_than_512_bytes_need_aligned_requests() {
    let device = FakeBlock::qemu();
    device.with(|state| {
        state.config[CONFIG_BLK_SIZE..][..4].copy_from_slice(&4096u32.to_le_bytes());
        state.config[CONFIG_PHYSICAL_BLOCK_EXP] = 2;
    });
    let mut disk = start(&device);
    assert_eq!(disk.logical_block_size(), 4096);
    assert_eq!(disk.physical_block_size(), 16384);
    assert_eq!(disk.block_size(), 512, "addresses stay in 512-byte blocks");
    assert_eq!(disk.write(1, &pattern(8, 19)), Err(Error::OutOfRange));
    assert_eq!(disk.write(8, &pattern(1, 19)), Err(Error::OutOfRange));
    assert!(device.log().is_empty());
    let data = pattern(8, 19);
    disk.write(8, &data).unwrap();
    assert_eq!(read_back(&mut disk, 8, 8), data);
}

#[test]
fn physical_block_size_comes_from_the_topology() {
    let device = FakeBlock::qemu();
    device.with(|state| state.config[CONFIG_PHYSICAL_BLOCK_EXP] = 3);
    assert_eq!(start(&device).physical_block_size(), 4096);
    // Without TOPOLOGY the field is not read.
    let device = FakeBlock::new(CAPACITY, QEMU_FEATURES & !FEATURE_TOPOLOGY);
    device.with(|state| state.config[CONFIG_PHYSICAL_BLOCK_EXP] = 3);
    assert_eq!(start(&device).physical_block_size(), 512);
    // Nonsense means "same as logical".
    let device = FakeBlock::qemu();
    device.with(|state| state.config[CONFIG_PHYSICAL_BLOCK_EXP] = 200);
    assert_eq!(start(&device).physical_block_size(), 512);
}

#[test]
fn identifier_reads_the_serial() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    assert_eq!(disk.identifier().unwrap(), b"duplex-disk-0");
    device.with(|state| state.identifier = b"twenty-byte-serial-X".to_vec());
    assert_eq!(disk.identifier().unwrap(), b"twenty-byte-serial-X");
    device.with(|state| state.fail_next = Some(STATUS_UNSUPP));
    assert_eq!(disk.identifier(), Err(Error::Unsupported));
    let get_id = &device.log()[0];
    assert_eq!((get_id.request_type, get_id.data_len), (TYPE_GET_ID, 20));
}

#[test]
fn queue_indices_wrap_past_16_bits() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let mut block = [0u8; BLOCK_SIZE];
    for round in 0..70_000u32 {
        block[..4].copy_from_slice(&round.to_le_bytes());
        let sector = u64::from(round) % CAPACITY;
        disk.write(sector, &block).unwrap();
        if round % 1000 == 999 {
            assert_eq!(read_back(&mut disk, sector, 1), block, "round {round}");
        }
    }
    assert_eq!(disk.counters().write_requests, 70_000);
    assert!(!disk.is_failed());
}

#[test]
fn drop_resets_the_device() {
    let device = FakeBlock::qemu();
    let disk = start(&device);
    assert_eq!(Rc::strong_count(&device.0), 2);
    drop(disk);
    assert!(device.status().is_empty());
    assert!(device.with(|state| state.queue.is_none()));
    assert_eq!(Rc::strong_count(&device.0), 1, "transport dropped");
}

#[test]
fn usable_as_a_trait_object() {
    let device = FakeBlock::qemu();
    let mut disk: std::boxed::Box<dyn BlockDevice> = std::boxed::Box::new(start(&device));
    let data = pattern(8, 20);
    disk.write(40, &data).unwrap();
    disk.flush().unwrap();
    let mut bytes = vec![0u8; data.len()];
    disk.read(40, &mut bytes).unwrap();
    assert_eq!(bytes, data);
    assert_eq!(device.durable(40, 8), data);
}

/// Configuration space of one fake function, for the PCI glue.
struct FakeConfig {
    registers: RefCell<BTreeMap<(PciAddress, u8), u32>>,
}

impl ConfigSpace for FakeConfig {
    fn read32(&self, address: PciAddress, offset: u8) -> u32 {
        self.registers
            .borrow()
            .get(&(address, offset))
            .copied()
            .unwrap_or(0xffff_ffff)
    }
    fn write32(&self, address: PciAddress, offset: u8, value: u32) {
        self.registers.borrow_mut().insert((address, offset), value);
    }
}

#[test]
fn new_pci_refuses_other_devices_without_touching_them() {
    let address = PciAddress {
        bus: 0,
        device: 5,
        function: 0,
    };
    for id in [0x1000_1af4u32, 0x100e_8086] {
        let config = FakeConfig {
            registers: RefCell::new(BTreeMap::new()),
        };
        config.write32(address, 0x00, id);
        config.write32(address, 0x04, 0);
        // SAFETY: the function is refused before anything is mapped or written.
        let result = unsafe { VirtioBlk::new_pci(&config, address) };
        assert_eq!(result.unwrap_err(), Error::Unsupported);
        assert_eq!(
            config.read32(address, 0x04),
            0,
            "command register untouched"
        );
    }
}

#[test]
fn asynchronous_write_and_flush_complete_when_the_device_does() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let data = pattern(8, 40);
    device.with(|state| state.hold = true);
    assert!(!disk.request_in_flight());
    disk.start_write(8, &data).unwrap();
    assert!(disk.request_in_flight());
    assert_eq!(disk.poll_request(), None, "the device has not completed it");
    assert_eq!(disk.poll_request(), None);
    // One request at a time: everything else waits, and the buffer is left alone.
    let mut buffer = vec![0u8; BLOCK_SIZE];
    assert_eq!(disk.read(0, &mut buffer), Err(Error::Busy));
    assert_eq!(disk.write(0, &pattern(1, 41)), Err(Error::Busy));
    assert_eq!(disk.flush(), Err(Error::Busy));
    assert_eq!(disk.start_flush(), Err(Error::Busy));
    assert_eq!(disk.start_write(0, &pattern(1, 41)), Err(Error::Busy));
    device.release();
    assert_eq!(disk.poll_request(), Some(Ok(())));
    assert!(!disk.request_in_flight());
    assert_eq!(disk.counters().blocks_written, 8);
    assert_eq!(
        disk.counters().longest_wait,
        2,
        "two checks before the completion"
    );
    // Written but cached until the flush completes.
    assert_eq!(device.durable(8, 8), vec![0; 8 * BLOCK_SIZE]);
    device.with(|state| state.hold = true);
    disk.start_flush().unwrap();
    assert_eq!(disk.poll_request(), None);
    assert_eq!(device.durable(8, 8), vec![0; 8 * BLOCK_SIZE]);
    device.release();
    assert_eq!(disk.poll_request(), Some(Ok(())));
    assert_eq!(device.durable(8, 8), data);
    assert_eq!(
        read_back(&mut disk, 8, 8),
        data,
        "synchronous calls work again"
    );
    let kinds: Vec<u32> = device.log().iter().map(|r| r.request_type).collect();
    assert_eq!(kinds, vec![TYPE_OUT, TYPE_FLUSH, TYPE_IN]);
    assert_eq!(
        disk.poll_request(),
        Some(Err(Error::InvalidState)),
        "nothing in flight"
    );
}

#[test]
fn asynchronous_requests_are_checked_like_synchronous_ones() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    let limit = disk.max_request_bytes();
    assert_eq!(disk.start_write(0, &[]), Err(Error::OutOfRange));
    assert_eq!(disk.start_write(0, &[0; 100]), Err(Error::OutOfRange));
    assert_eq!(
        disk.start_write(0, &vec![0; limit + BLOCK_SIZE]),
        Err(Error::OutOfRange),
        "longer than one request"
    );
    assert_eq!(
        disk.start_write(CAPACITY, &pattern(1, 42)),
        Err(Error::OutOfRange)
    );
    assert!(device.log().is_empty(), "nothing reached the device");
    assert!(!disk.request_in_flight());
    // The device's error status is the request's result; the driver goes on.
    device.with(|state| state.fail_next = Some(STATUS_IOERR));
    disk.start_write(0, &pattern(1, 43)).unwrap();
    assert_eq!(disk.poll_request(), Some(Err(Error::Io)));
    disk.start_write(0, &pattern(1, 43)).unwrap();
    assert_eq!(disk.poll_request(), Some(Ok(())));

    let read_only = FakeBlock::new(CAPACITY, QEMU_FEATURES | FEATURE_RO);
    let mut disk = start(&read_only);
    assert_eq!(
        disk.start_write(0, &pattern(1, 44)),
        Err(Error::InvalidState)
    );
}

#[test]
fn a_write_through_flush_is_done_at_once() {
    let device = FakeBlock::new(CAPACITY, FEATURE_VERSION_1 | FEATURE_SEG_MAX);
    let mut disk = start(&device);
    assert_eq!(disk.write_cache(), WriteCache::WriteThrough);
    disk.start_flush().unwrap();
    assert!(disk.request_in_flight());
    assert_eq!(disk.poll_request(), Some(Ok(())));
    assert!(device.log().is_empty(), "no request sent");
}

#[test]
fn an_asynchronous_request_that_never_completes_times_out_or_is_aborted() {
    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    disk.set_spin_limit(5);
    device.with(|state| state.stall = Some(TYPE_FLUSH));
    disk.start_flush().unwrap();
    for _ in 0..4 {
        assert_eq!(disk.poll_request(), None);
    }
    assert_eq!(disk.poll_request(), Some(Err(Error::Timeout)));
    assert!(disk.is_failed());
    assert!(device.status().is_empty(), "device reset");
    assert_eq!(disk.start_write(0, &pattern(1, 45)), Err(Error::Io));
    assert_eq!(disk.counters().timeouts, 1);

    let device = FakeBlock::qemu();
    let mut disk = start(&device);
    device.with(|state| state.stall = Some(TYPE_OUT));
    disk.start_write(0, &pattern(1, 46)).unwrap();
    assert_eq!(disk.poll_request(), None);
    assert_eq!(disk.abort_request(), Err(Error::Timeout));
    assert!(disk.is_failed());
    assert!(device.status().is_empty(), "device reset");
    assert!(!disk.request_in_flight());
    assert_eq!(disk.abort_request(), Err(Error::InvalidState));
}
