//! virtio-blk behind the [`BlockDevice`] trait.
//!
//! One split virtqueue of [`QUEUE_SIZE`] entries and one request at a time: the driver
//! writes the request header into its own DMA buffer, copies the data behind it (for a
//! write), publishes one descriptor chain (header, data, status byte), notifies the
//! device and spins on the used ring until the device completes the chain, then reads the
//! status byte (and copies the data out, for a read). A call covering many blocks is one
//! request (up to [`MAX_REQUEST_BLOCKS`] blocks; longer calls become several requests).
//!
//! The data goes through a driver-owned buffer rather than the caller's: the driver can
//! then always take its memory back from a device that stopped answering (it resets the
//! device, and if even the reset is not confirmed it never frees that memory), which it
//! could not promise for a caller's buffer. The copy costs far less than the request.
//!
//! Durability: VIRTIO_BLK_F_FLUSH is negotiated when offered, which turns the device's
//! write cache on (QEMU: even under `cache=writethrough`); [`BlockDevice::flush`] then sends
//! a FLUSH request and returns once the device has completed it. Without FLUSH the driver
//! finds out whether a write cache is on ([`WriteCache`]): with none, writes are durable
//! on completion and `flush` returns `Ok`; with one it cannot flush, `flush` returns
//! [`Error::Unsupported`].
//!
//! Completion is polled (used-buffer interrupts are suppressed), with a bounded spin: a
//! device that does not complete a request within the spin limit (a loop count, see
//! [`DEFAULT_SPIN_LIMIT`]) yields [`Error::Timeout`]; the driver then resets the device and
//! refuses every later request with [`Error::Io`].
//!
//! An asynchronous interface serves callers that must not wait: `start_write` /
//! `start_flush` publish one request and return, `poll_request` checks for its completion
//! (one request in flight still; synchronous calls return `Busy` meanwhile).
//!
//! `SPEC-blk.md` next to this file records the device facts and the request protocol.

use core::hint::spin_loop;
use core::mem::ManuallyDrop;

use alloc::boxed::Box;
use alloc::vec::Vec;

use duplex_hal::{BlockDevice, Error, Result};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

use super::identify_block;
use crate::dma::{DmaAllocator, DmaRegion, HeapDma, IdentityHal, PAGE_SIZE};
use crate::pci::{ConfigSpace, PciAddress};

/// Bytes in one block: virtio-blk addresses the disk in 512-byte sectors, whatever its
/// logical block size.
pub const BLOCK_SIZE: usize = 512;

/// Entries in the virtqueue. One request is in flight at a time; the entries bound the
/// descriptors of one chain (header, up to `QUEUE_SIZE - 2` data segments, status).
pub const QUEUE_SIZE: usize = 16;

/// The most blocks one request carries (128 KiB); a longer call becomes several requests.
pub const MAX_REQUEST_BLOCKS: usize = 256;

/// How many times the driver checks the used ring for a completion before it gives up
/// with [`Error::Timeout`] (2^28). One check is an acquire load and a `pause`; measured on
/// this project's host (AMD EPYC, native code) a check takes 55 ns, so the limit is about
/// 15 s there; a CPU with a cheap `pause` gets below 1 s, and under TCG (where `pause`
/// leaves the translated block) it is likely minutes. Either way far longer than a healthy
/// device needs, a host `fdatasync` under load included. A caller with a calibrated clock
/// should set a time-based limit with [`VirtioBlk::set_spin_limit`].
pub const DEFAULT_SPIN_LIMIT: u64 = 1 << 28;

/// How many times the driver reads the device status back after a reset before it
/// decides the reset did not happen (each read is an MMIO access; QEMU resets at once).
pub const RESET_SPIN_LIMIT: u64 = 1 << 20;

/// Bytes of the device identifier (GET_ID request).
pub const IDENTIFIER_LEN: usize = 20;

/// The largest logical block size the driver accepts (the device's `blk_size`).
const MAX_LOGICAL_BLOCK_SIZE: u32 = 64 * 1024;

/// Bytes of data one request carries at most.
const MAX_REQUEST_BYTES: usize = MAX_REQUEST_BLOCKS * BLOCK_SIZE;

/// The only queue of a virtio-blk device (without the MQ feature).
const REQUEST_QUEUE: u16 = 0;

/// Feature bits (virtio 1.2, 5.2.3 and 6).
mod feature {
    /// `size_max` holds the largest segment the device takes.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` holds the most data segments in one request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` holds the logical block size.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The device takes FLUSH requests (legacy name WCE: cache on after reset).
    pub const FLUSH: u64 = 1 << 9;
    /// `physical_block_exp` and friends are valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// `writeback` shows and switches the cache mode.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// virtio 1.0 or later.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device configuration layout (`struct virtio_blk_config`, little-endian).
mod configuration {
    /// `capacity`, u64 in 512-byte sectors, read as two u32 halves.
    pub const CAPACITY_LOW: usize = 0;
    pub const CAPACITY_HIGH: usize = 4;
    /// `size_max`, u32.
    pub const SIZE_MAX: usize = 8;
    /// `seg_max`, u32.
    pub const SEG_MAX: usize = 12;
    /// `blk_size`, u32.
    pub const BLK_SIZE: usize = 20;
    /// `topology.physical_block_exp`, u8.
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    /// `writeback`, u8: 0 write-through, 1 write-back.
    pub const WRITEBACK: usize = 32;
}

/// Request types (`virtio_blk_req.type`).
mod request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status values the device writes (`virtio_blk_req.status`).
mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
    /// Written by the driver before submitting: a status the device never writes, so a
    /// chain completed without a status reads as an error.
    pub const UNSET: u8 = 0xff;
}

/// Layout of the driver's DMA buffer: the 16-byte request header at 0, the status byte
/// at 16, the data from the second page on (page-aligned, so that QEMU with O_DIRECT
/// need not bounce it).
const HEADER_OFFSET: usize = 0;
const HEADER_LEN: usize = 16;
const STATUS_OFFSET: usize = 16;
const DATA_OFFSET: usize = PAGE_SIZE;

/// What the driver knows about the device's write cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCache {
    /// FLUSH was negotiated: the device may cache writes, and `flush` sends a FLUSH
    /// request and waits for its completion.
    Flushable,
    /// The device has no write cache (FLUSH not offered; the cache is off or was turned
    /// off through `writeback`): a write is durable once it completes, `flush` returns
    /// `Ok` without a request.
    WriteThrough,
    /// The device caches writes but offers no FLUSH (against the virtio specification):
    /// durability cannot be had, `flush` returns [`Error::Unsupported`].
    Unflushable,
}

/// Request counters since the driver started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Read requests sent to the device.
    pub read_requests: u64,
    /// Write requests sent to the device.
    pub write_requests: u64,
    /// Flush requests sent to the device.
    pub flush_requests: u64,
    /// Blocks read successfully.
    pub blocks_read: u64,
    /// Blocks written successfully.
    pub blocks_written: u64,
    /// Requests the device completed with an error status.
    pub device_errors: u64,
    /// Requests the device did not complete within the spin limit.
    pub timeouts: u64,
    /// The longest wait for a completion, in used-ring checks (compare with the spin
    /// limit).
    pub longest_wait: u64,
}

/// Data movement of one request.
#[derive(Debug, Clone, Copy)]
enum Transfer {
    /// No data (FLUSH).
    None,
    /// The device reads this many bytes from the buffer's data area (OUT).
    ToDevice(usize),
    /// The device writes this many bytes into the buffer's data area (IN, GET_ID).
    FromDevice(usize),
}

impl Transfer {
    fn len(self) -> usize {
        match self {
            Transfer::None => 0,
            Transfer::ToDevice(len) | Transfer::FromDevice(len) => len,
        }
    }
}

/// A request published to the device and not yet taken back.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The chain's token (its head descriptor).
    token: u16,
    request_type: u32,
    transfer: Transfer,
    /// Checks of the used ring so far (asynchronous interface).
    polls: u64,
}

/// The one request of the driver that is not finished.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// On the device.
    Device(InFlight),
    /// Finished without the device (a flush of a write-through device), not yet reported.
    Done(Result),
}

/// Builds the descriptor chain of a request over the driver's buffer `$all` (header,
/// status byte, data from `DATA_OFFSET`): the header, then the data in segments of at
/// most `$segment_bytes` (device-readable for OUT, device-writable for IN and GET_ID),
/// then the status byte; binds it to `$inputs` and `$outputs` as virtio-drivers wants
/// them and evaluates `$body`. The same buffer and transfer always give the same chain,
/// so the one built to take a chain back equals the one that was published. (A macro:
/// `pop_used` wants the arrays borrowed as long as the buffer, which a helper function
/// taking a closure cannot offer.)
macro_rules! with_chain {
    ($all:expr, $transfer:expr, $segment_bytes:expr, |$inputs:ident, $outputs:ident| $body:expr) => {{
        let (control, data) = $all.split_at_mut(DATA_OFFSET);
        let (header, rest) = control.split_at_mut(HEADER_LEN);
        let status_byte = &mut rest[STATUS_OFFSET - HEADER_LEN..][..1];
        let mut input_array: [&[u8]; QUEUE_SIZE] = [&[]; QUEUE_SIZE];
        let mut output_array: [&mut [u8]; QUEUE_SIZE] = Default::default();
        input_array[0] = header;
        let (mut input_count, mut output_count) = (1, 0);
        match $transfer {
            Transfer::None => {}
            Transfer::ToDevice(_) => {
                for segment in data.chunks($segment_bytes) {
                    input_array[input_count] = segment;
                    input_count += 1;
                }
            }
            Transfer::FromDevice(_) => {
                for segment in data.chunks_mut($segment_bytes) {
                    output_array[output_count] = segment;
                    output_count += 1;
                }
            }
        }
        output_array[output_count] = status_byte;
        output_count += 1;
        let $inputs = &input_array[..input_count];
        let $outputs = &mut output_array[..output_count];
        $body
    }};
}

/// Maps the crate's errors onto the HAL's (initialisation only).
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

/// Resets the device and waits (at most `RESET_SPIN_LIMIT` reads) until its status reads
/// back 0; true when it did (the device then touches none of the driver's memory).
fn reset<T: Transport>(transport: &mut T) -> bool {
    transport.set_status(DeviceStatus::empty());
    for _ in 0..RESET_SPIN_LIMIT {
        if transport.get_status().is_empty() {
            return true;
        }
        spin_loop();
    }
    false
}

/// Fails the device and resets it (so that it forgets the queue before the queue memory
/// is freed), then returns `error`.
fn give_up<T: Transport>(transport: &mut T, error: Error) -> Error {
    transport.set_status(DeviceStatus::FAILED);
    reset(transport);
    error
}

/// What initialisation read from the configuration.
struct Geometry {
    capacity: u64,
    logical_block_size: u32,
    physical_block_size: u32,
    segment_bytes: usize,
    request_bytes: usize,
}

/// Reads capacity and request limits from the configuration (generation-consistent).
fn read_geometry<T: Transport>(transport: &T, features: u64) -> Result<Geometry> {
    let fields = transport.read_consistent(|| {
        let low = transport.read_config_space::<u32>(configuration::CAPACITY_LOW)?;
        let high = transport.read_config_space::<u32>(configuration::CAPACITY_HIGH)?;
        let optional = |bit: u64, offset: usize| -> virtio_drivers::Result<Option<u32>> {
            if features & bit != 0 {
                transport.read_config_space::<u32>(offset).map(Some)
            } else {
                Ok(None)
            }
        };
        let size_max = optional(feature::SIZE_MAX, configuration::SIZE_MAX)?;
        let seg_max = optional(feature::SEG_MAX, configuration::SEG_MAX)?;
        let blk_size = optional(feature::BLK_SIZE, configuration::BLK_SIZE)?;
        let exponent = if features & feature::TOPOLOGY != 0 {
            transport.read_config_space::<u8>(configuration::PHYSICAL_BLOCK_EXP)?
        } else {
            0
        };
        Ok((
            (u64::from(high) << 32) | u64::from(low),
            size_max,
            seg_max,
            blk_size,
            exponent,
        ))
    });
    let (capacity, size_max, seg_max, blk_size, exponent) = fields.map_err(map_error)?;

    let logical_block_size = blk_size.unwrap_or(BLOCK_SIZE as u32);
    if !logical_block_size.is_power_of_two()
        || !(BLOCK_SIZE as u32..=MAX_LOGICAL_BLOCK_SIZE).contains(&logical_block_size)
    {
        return Err(Error::Unsupported);
    }
    // Informational only: a nonsensical exponent means "same as logical".
    let physical_block_size = logical_block_size
        .checked_shl(u32::from(exponent))
        .filter(|&size| exponent < 16 && size >= logical_block_size)
        .unwrap_or(logical_block_size);

    // A request's data is split into segments of at most `size_max` bytes, and into at most
    // `seg_max` segments (a device reporting 0 gets 1), each limit only when negotiated.
    let segment_bytes = match size_max {
        Some(0) => return Err(Error::Unsupported),
        Some(size) => usize::try_from(size).unwrap_or(usize::MAX),
        None => MAX_REQUEST_BYTES,
    }
    .min(MAX_REQUEST_BYTES);
    let segments = seg_max
        .map_or(usize::MAX, |count| {
            usize::try_from(count.max(1)).unwrap_or(usize::MAX)
        })
        .min(QUEUE_SIZE - 2);
    let logical = logical_block_size as usize;
    let request_bytes = segment_bytes
        .saturating_mul(segments)
        .min(MAX_REQUEST_BYTES)
        / logical
        * logical;
    if request_bytes == 0 {
        return Err(Error::Unsupported);
    }
    Ok(Geometry {
        capacity,
        logical_block_size,
        physical_block_size,
        segment_bytes,
        request_bytes,
    })
}

/// A virtio-blk device, initialised and running.
///
/// Dropping it resets the device before its queue and buffer are freed (and if the
/// device does not confirm the reset, leaks them rather than free memory a device may
/// still write).
pub struct VirtioBlk<T: Transport = PciTransport> {
    /// In `ManuallyDrop` so that `Drop` can leak the transport of a device that does not
    /// reset (`PciTransport`'s own drop would spin forever on it).
    transport: ManuallyDrop<T>,
    /// Boxed: the queue keeps a shadow of its descriptor table.
    queue: ManuallyDrop<Box<VirtQueue<IdentityHal, QUEUE_SIZE>>>,
    /// Header, status and data of the one request in flight (see `DATA_OFFSET`).
    buffer: ManuallyDrop<DmaRegion>,
    capacity: u64,
    read_only: bool,
    write_cache: WriteCache,
    logical_block_size: u32,
    physical_block_size: u32,
    /// Bytes per data descriptor at most.
    segment_bytes: usize,
    /// Data bytes per request at most (a multiple of the logical block size).
    request_bytes: usize,
    features: u64,
    spin_limit: u64,
    /// A request timed out or the device broke the queue protocol: the device was reset
    /// and the driver refuses every request.
    failed: bool,
    /// The request not yet finished (always `None` between synchronous calls).
    pending: Option<Pending>,
    counters: BlockCounters,
}

impl<T: Transport> core::fmt::Debug for VirtioBlk<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("write_cache", &self.write_cache)
            .field("logical_block_size", &self.logical_block_size)
            .field("request_bytes", &self.request_bytes)
            .field("failed", &self.failed)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl VirtioBlk<PciTransport> {
    /// Starts the virtio-blk function at `address`, reached through `config` (the
    /// kernel's configuration-space accessor).
    ///
    /// Checks the PCI id (see [`identify_block`]), sets MEMORY_SPACE, IO_SPACE and
    /// BUS_MASTER in the command register, finds the modern virtio capabilities and maps
    /// their BARs by identity, then initialises the device (see [`VirtioBlk::new`]).
    ///
    /// Errors: [`Error::Unsupported`] for another device or one without the modern
    /// interface (`disable-modern=on`), [`Error::InvalidState`] for unassigned BARs, and
    /// the errors of [`VirtioBlk::new`].
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
            unsafe { super::open_pci(config, address, |v, d| identify_block(v, d).is_some())? };
        VirtioBlk::new(transport)
    }

    /// [`VirtioBlk::new_pci`] for any `virtio_drivers` configuration access (ECAM, say).
    ///
    /// # Safety
    ///
    /// As for [`VirtioBlk::new_pci`].
    pub unsafe fn new_pci_with<C: ConfigurationAccess>(
        root: &mut PciRoot<C>,
        device_function: DeviceFunction,
    ) -> Result<Self> {
        // SAFETY: the caller's promises are `open_pci_with`'s.
        let transport = unsafe {
            super::open_pci_with(root, device_function, |v, d| identify_block(v, d).is_some())?
        };
        VirtioBlk::new(transport)
    }
}

impl<T: Transport> VirtioBlk<T> {
    /// Initialises the device behind `transport`: negotiates features, reads capacity and
    /// limits, settles the write-cache mode, sets up the queue and sets DRIVER_OK.
    ///
    /// Features taken when offered: VERSION_1, FLUSH, RO, BLK_SIZE, TOPOLOGY, SEG_MAX,
    /// SIZE_MAX, and CONFIG_WCE only when FLUSH is not offered.
    ///
    /// Errors: [`Error::Unsupported`] when the transport is not a block device, the
    /// device refuses the features, reports a logical block size that is not a power of
    /// two in 512..=65536 or a zero segment size, or offers a queue smaller than
    /// [`QUEUE_SIZE`]; [`Error::Timeout`] when the device does not confirm its reset;
    /// [`Error::Io`] when DMA memory runs out. On error the device is left reset.
    pub fn new(mut transport: T) -> Result<Self> {
        if transport.device_type() != DeviceType::Block {
            return Err(Error::Unsupported);
        }
        if !reset(&mut transport) {
            return Err(Error::Timeout);
        }
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        let mut features = offered
            & (feature::VERSION_1
                | feature::FLUSH
                | feature::RO
                | feature::BLK_SIZE
                | feature::TOPOLOGY
                | feature::SEG_MAX
                | feature::SIZE_MAX);
        if offered & feature::FLUSH == 0 {
            // Only to learn (and switch off) the cache mode of a device that cannot flush.
            features |= offered & feature::CONFIG_WCE;
        }
        transport.write_driver_features(features);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        if features & feature::VERSION_1 != 0
            && !transport.get_status().contains(DeviceStatus::FEATURES_OK)
        {
            return Err(give_up(&mut transport, Error::Unsupported));
        }

        let geometry = match read_geometry(&transport, features) {
            Ok(geometry) => geometry,
            Err(error) => return Err(give_up(&mut transport, error)),
        };
        let write_cache = match settle_write_cache(&mut transport, features) {
            Ok(mode) => mode,
            Err(error) => return Err(give_up(&mut transport, error)),
        };

        let queue = match VirtQueue::new(&mut transport, REQUEST_QUEUE, false, false) {
            Ok(queue) => Box::new(queue),
            Err(error) => return Err(give_up(&mut transport, map_error(error))),
        };
        let buffer = match HeapDma.allocate(DATA_OFFSET + MAX_REQUEST_BYTES) {
            Ok(buffer) => buffer,
            Err(error) => return Err(give_up(&mut transport, error)),
        };

        let mut blk = VirtioBlk {
            transport: ManuallyDrop::new(transport),
            queue: ManuallyDrop::new(queue),
            buffer: ManuallyDrop::new(buffer),
            capacity: geometry.capacity,
            read_only: features & feature::RO != 0,
            write_cache,
            logical_block_size: geometry.logical_block_size,
            physical_block_size: geometry.physical_block_size,
            segment_bytes: geometry.segment_bytes,
            request_bytes: geometry.request_bytes,
            features,
            spin_limit: DEFAULT_SPIN_LIMIT,
            failed: false,
            pending: None,
            counters: BlockCounters::default(),
        };
        // Polled driver: no used-buffer interrupts.
        blk.queue.set_dev_notify(false);
        blk.transport.finish_init();
        Ok(blk)
    }

    /// Capacity in 512-byte blocks.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True when the device is read-only (VIRTIO_BLK_F_RO): `write` returns
    /// [`Error::InvalidState`].
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The write-cache mode, which decides what `flush` does.
    pub fn write_cache(&self) -> WriteCache {
        self.write_cache
    }

    /// The device's logical block size in bytes (512 unless it reports BLK_SIZE):
    /// requests must start and end on a multiple of it.
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    /// The device's physical block size in bytes (from TOPOLOGY, else the logical block
    /// size); writes aligned to it avoid a read-modify-write below.
    pub fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }

    /// The most bytes one request carries; a longer `read` or `write` is split.
    pub fn max_request_bytes(&self) -> usize {
        self.request_bytes
    }

    /// The feature bits negotiated with the device.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// A short name of the device model, for the console.
    pub fn model(&self) -> &'static str {
        "virtio-blk"
    }

    /// Request counters since the driver started.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// True after a timeout or a queue-protocol error: the device was reset and every
    /// request now fails with [`Error::Io`].
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The spin limit: how many used-ring checks a request may wait (at least 1).
    pub fn spin_limit(&self) -> u64 {
        self.spin_limit
    }

    /// Sets the spin limit (a loop count; see [`DEFAULT_SPIN_LIMIT`]). A caller that
    /// has calibrated a clock can derive it from a time budget and
    /// [`BlockCounters::longest_wait`].
    pub fn set_spin_limit(&mut self, checks: u64) {
        self.spin_limit = checks.max(1);
    }

    /// Reads the device identifier (GET_ID; QEMU's `serial=` property): up to
    /// [`IDENTIFIER_LEN`] bytes, cut at the first NUL.
    ///
    /// Errors: [`Error::Unsupported`] when the device does not know the request, and the
    /// request errors of [`BlockDevice::read`].
    pub fn identifier(&mut self) -> Result<Vec<u8>> {
        self.run(request::GET_ID, 0, Transfer::FromDevice(IDENTIFIER_LEN))?;
        let mut identifier = alloc::vec![0u8; IDENTIFIER_LEN];
        self.buffer.copy_to_slice(DATA_OFFSET, &mut identifier);
        let end = identifier
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(IDENTIFIER_LEN);
        identifier.truncate(end);
        Ok(identifier)
    }

    /// Checks a read or write of `len` bytes at `block`: whole blocks, inside the
    /// capacity, aligned to the logical block size.
    fn check_range(&self, block: u64, len: usize) -> Result {
        if self.failed {
            return Err(Error::Io);
        }
        if !len.is_multiple_of(BLOCK_SIZE) {
            return Err(Error::OutOfRange);
        }
        let blocks = u64::try_from(len / BLOCK_SIZE).map_err(|_| Error::OutOfRange)?;
        let end = block.checked_add(blocks).ok_or(Error::OutOfRange)?;
        if end > self.capacity {
            return Err(Error::OutOfRange);
        }
        let per_logical = u64::from(self.logical_block_size) / BLOCK_SIZE as u64;
        if !block.is_multiple_of(per_logical) || !blocks.is_multiple_of(per_logical) {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }

    /// Sends one request (header and, for a write, the data already in the buffer),
    /// waits for its completion and returns the device's verdict.
    fn run(&mut self, request_type: u32, sector: u64, transfer: Transfer) -> Result {
        if self.pending.is_some() {
            return Err(Error::Busy);
        }
        self.submit(request_type, sector, transfer)?;
        let spin_limit = self.spin_limit;
        let mut waited = 0u64;
        while !self.queue.can_pop() && waited < spin_limit {
            waited += 1;
            spin_loop();
        }
        self.counters.longest_wait = self.counters.longest_wait.max(waited);
        if !self.queue.can_pop() {
            self.pending = None;
            self.counters.timeouts += 1;
            self.abandon();
            return Err(Error::Timeout);
        }
        self.finish()
    }

    /// Writes the request header, publishes the chain (header, data, status) and
    /// notifies the device; the request is then [`Pending::Device`].
    fn submit(&mut self, request_type: u32, sector: u64, transfer: Transfer) -> Result {
        if self.failed {
            return Err(Error::Io);
        }
        match request_type {
            request::IN => self.counters.read_requests += 1,
            request::OUT => self.counters.write_requests += 1,
            request::FLUSH => self.counters.flush_requests += 1,
            _ => {}
        }
        self.buffer.write_u32(HEADER_OFFSET, request_type);
        self.buffer.write_u32(HEADER_OFFSET + 4, 0);
        self.buffer.write_u64(HEADER_OFFSET + 8, sector);
        self.buffer.write_u8(STATUS_OFFSET, status::UNSET);

        let data_len = transfer.len();
        let segment_bytes = self.segment_bytes;
        // Never true today (reads and writes fit by construction of `request_bytes`, and a
        // device whose segments are too small for one block is refused at start, so 20
        // GET_ID bytes fit too); it keeps the descriptor arrays of `with_chain` from
        // overflowing.
        if data_len.div_ceil(segment_bytes) > QUEUE_SIZE - 2 {
            return Err(Error::Unsupported);
        }
        let queue = &mut self.queue;
        // SAFETY: no request is in flight (`pending` is empty: the previous one completed,
        // or the device was reset), so the device touches no byte of the buffer; the
        // borrow ends with this statement.
        let all = unsafe { self.buffer.slice_mut(0, DATA_OFFSET + data_len) };
        let added = with_chain!(all, transfer, segment_bytes, |inputs, outputs| {
            // SAFETY: every buffer lies in `self.buffer`, which the driver neither reads
            // nor writes until `finish` takes the chain back with `pop_used` (`pending`
            // keeps every other request out meanwhile); if the device never returns it,
            // the driver resets the device before the buffer is used again, and never
            // frees the buffer unless a reset is confirmed (see `Drop`).
            unsafe { queue.add(inputs, outputs) }
        });
        let token = match added {
            Ok(token) => token,
            Err(_) => {
                self.abandon();
                return Err(Error::Io);
            }
        };
        if self.queue.should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
        self.pending = Some(Pending::Device(InFlight {
            token,
            request_type,
            transfer,
            polls: 0,
        }));
        Ok(())
    }

    /// Takes the completed chain of the request in flight back and returns the device's
    /// verdict. Call only once `queue.can_pop()`.
    fn finish(&mut self) -> Result {
        let Some(Pending::Device(in_flight)) = self.pending.take() else {
            return Err(Error::InvalidState);
        };
        if self.queue.peek_used() != Some(in_flight.token) {
            self.abandon();
            return Err(Error::Io);
        }
        let queue = &mut self.queue;
        let data_len = in_flight.transfer.len();
        // SAFETY: the device has returned the chain (it is the next used entry), so it no
        // longer accesses the buffer; the borrow ends with this statement.
        let all = unsafe { self.buffer.slice_mut(0, DATA_OFFSET + data_len) };
        let segment_bytes = self.segment_bytes;
        let popped = with_chain!(all, in_flight.transfer, segment_bytes, |inputs, outputs| {
            // SAFETY: these are the buffers `submit` published under this token (the same
            // addresses and lengths, rebuilt by `with_chain!`).
            unsafe { queue.pop_used(in_flight.token, inputs, outputs) }
        });
        if popped.is_err() {
            self.abandon();
            return Err(Error::Io);
        }
        let result = match self.buffer.read_u8(STATUS_OFFSET) {
            status::OK => return Ok(()),
            status::UNSUPP => Error::Unsupported,
            status::IOERR | status::UNSET => Error::Io,
            _ => Error::Io,
        };
        self.counters.device_errors += 1;
        Err(result)
    }

    // ----- the asynchronous interface: one request in flight, polled -----

    /// Starts writing `data` (whole blocks, at most [`VirtioBlk::max_request_bytes`]) at
    /// `block` and returns at once; [`VirtioBlk::poll_request`] says when it is done. The
    /// data is copied into the driver's buffer first, so `data` may change afterwards.
    ///
    /// Errors (nothing is started): [`Error::Busy`] while another request is in flight,
    /// [`Error::OutOfRange`] for a length above one request or those of
    /// [`BlockDevice::write`].
    pub fn start_write(&mut self, block: u64, data: &[u8]) -> Result {
        if self.pending.is_some() {
            return Err(Error::Busy);
        }
        if self.failed {
            return Err(Error::Io);
        }
        if self.read_only {
            return Err(Error::InvalidState);
        }
        self.check_range(block, data.len())?;
        if data.is_empty() || data.len() > self.request_bytes {
            return Err(Error::OutOfRange);
        }
        self.buffer.copy_from_slice(DATA_OFFSET, data);
        self.submit(request::OUT, block, Transfer::ToDevice(data.len()))
    }

    /// Starts a flush and returns at once: once [`VirtioBlk::poll_request`] reports it
    /// done, every write completed before it is durable. Without a write cache
    /// ([`WriteCache::WriteThrough`]) nothing is sent and the flush is done at once;
    /// [`WriteCache::Unflushable`] gives [`Error::Unsupported`].
    ///
    /// Errors (nothing is started): [`Error::Busy`] while another request is in flight,
    /// [`Error::Io`] once the driver has failed.
    pub fn start_flush(&mut self) -> Result {
        if self.pending.is_some() {
            return Err(Error::Busy);
        }
        if self.failed {
            return Err(Error::Io);
        }
        match self.write_cache {
            WriteCache::Flushable => self.submit(request::FLUSH, 0, Transfer::None),
            WriteCache::WriteThrough => {
                self.pending = Some(Pending::Done(Ok(())));
                Ok(())
            }
            WriteCache::Unflushable => Err(Error::Unsupported),
        }
    }

    /// True while a request started with `start_write` or `start_flush` has not been
    /// reported by [`VirtioBlk::poll_request`] yet (synchronous calls then return
    /// [`Error::Busy`]).
    pub fn request_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Checks the request in flight once: `None` while the device works on it,
    /// `Some(result)` once it has completed (the driver is then free for the next). A
    /// request still running after [`VirtioBlk::spin_limit`] checks gives
    /// `Some(Err(Timeout))` and fails the driver, as a synchronous call would;
    /// [`VirtioBlk::abort_request`] gives up earlier. With nothing in flight:
    /// `Some(Err(InvalidState))`.
    pub fn poll_request(&mut self) -> Option<Result> {
        match self.pending.as_mut() {
            None => Some(Err(Error::InvalidState)),
            Some(Pending::Done(_)) => match self.pending.take() {
                Some(Pending::Done(result)) => Some(result),
                _ => Some(Err(Error::InvalidState)),
            },
            Some(Pending::Device(in_flight)) => {
                if self.queue.can_pop() {
                    let (polls, request_type, transfer) =
                        (in_flight.polls, in_flight.request_type, in_flight.transfer);
                    self.counters.longest_wait = self.counters.longest_wait.max(polls);
                    let result = self.finish();
                    if result.is_ok() && request_type == request::OUT {
                        self.counters.blocks_written += (transfer.len() / BLOCK_SIZE) as u64;
                    }
                    return Some(result);
                }
                in_flight.polls += 1;
                if in_flight.polls < self.spin_limit {
                    return None;
                }
                Some(self.abort_request())
            }
        }
    }

    /// Gives up on the request in flight (a caller with a clock decided it took too
    /// long): the driver fails, resets the device and refuses every later request, as
    /// after a timeout of a synchronous call. Returns the error the request ends with
    /// ([`Error::Timeout`]; [`Error::InvalidState`] with nothing in flight).
    pub fn abort_request(&mut self) -> Result {
        match self.pending.take() {
            None => Err(Error::InvalidState),
            Some(Pending::Done(result)) => result,
            Some(Pending::Device(_)) => {
                self.counters.timeouts += 1;
                self.abandon();
                Err(Error::Timeout)
            }
        }
    }

    /// Gives up on the device after a timeout or protocol error: fails and resets it, so
    /// that it lets go of the queue and the buffer, and refuses every later request.
    fn abandon(&mut self) {
        self.failed = true;
        self.pending = None;
        self.transport.set_status(DeviceStatus::FAILED);
        // An unconfirmed reset is handled in `Drop` (which tries again, and leaks the
        // memory if the device still does not answer).
        reset(&mut *self.transport);
    }
}

/// Works out the write-cache mode after FEATURES_OK (virtio 1.2, 5.2.5.1): FLUSH
/// negotiated means a cache that flushes; otherwise CONFIG_WCE shows the mode, and a
/// cache that is on is switched to write-through; without either, the device has none.
fn settle_write_cache<T: Transport>(transport: &mut T, features: u64) -> Result<WriteCache> {
    if features & feature::FLUSH != 0 {
        return Ok(WriteCache::Flushable);
    }
    if features & feature::CONFIG_WCE == 0 {
        return Ok(WriteCache::WriteThrough);
    }
    let read = |transport: &T| {
        transport
            .read_config_space::<u8>(configuration::WRITEBACK)
            .map_err(map_error)
    };
    if read(transport)? == 0 {
        return Ok(WriteCache::WriteThrough);
    }
    // A refused write shows in the value read back.
    let _ = transport.write_config_space::<u8>(configuration::WRITEBACK, 0);
    Ok(if read(transport)? == 0 {
        WriteCache::WriteThrough
    } else {
        WriteCache::Unflushable
    })
}

impl<T: Transport> BlockDevice for VirtioBlk<T> {
    fn block_size(&self) -> usize {
        BLOCK_SIZE
    }

    fn block_count(&self) -> u64 {
        self.capacity
    }

    /// Reads whole blocks: one request per [`VirtioBlk::max_request_bytes`] (128 KiB on
    /// QEMU). An empty `buf` at a block inside the capacity (or at its end) reads nothing.
    ///
    /// Errors: [`Error::OutOfRange`] for a length that is not a multiple of 512, a range
    /// past the capacity, or one not aligned to the logical block size; [`Error::Io`] or
    /// [`Error::Unsupported`] for the device's error status; [`Error::Timeout`] when the
    /// device does not answer; [`Error::Io`] once the driver has failed;
    /// [`Error::Busy`] (here and in every synchronous call) while a request of the
    /// asynchronous interface is in flight.
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result {
        self.check_range(block, buf.len())?;
        let mut sector = block;
        let request_bytes = self.request_bytes;
        for chunk in buf.chunks_mut(request_bytes) {
            self.run(request::IN, sector, Transfer::FromDevice(chunk.len()))?;
            self.buffer.copy_to_slice(DATA_OFFSET, chunk);
            let blocks = (chunk.len() / BLOCK_SIZE) as u64;
            self.counters.blocks_read += blocks;
            // `check_range` proved `block + all blocks <= capacity`: no overflow.
            sector += blocks;
        }
        Ok(())
    }

    /// Writes whole blocks, like [`BlockDevice::read`] reads them. The data may sit in
    /// the device's write cache until [`BlockDevice::flush`].
    ///
    /// Errors: [`Error::InvalidState`] on a read-only device (checked first), then those
    /// of [`BlockDevice::read`].
    fn write(&mut self, block: u64, buf: &[u8]) -> Result {
        if self.failed {
            return Err(Error::Io);
        }
        if self.pending.is_some() {
            // The buffer holds the asynchronous request's data.
            return Err(Error::Busy);
        }
        if self.read_only {
            return Err(Error::InvalidState);
        }
        self.check_range(block, buf.len())?;
        let mut sector = block;
        let request_bytes = self.request_bytes;
        for chunk in buf.chunks(request_bytes) {
            self.buffer.copy_from_slice(DATA_OFFSET, chunk);
            self.run(request::OUT, sector, Transfer::ToDevice(chunk.len()))?;
            let blocks = (chunk.len() / BLOCK_SIZE) as u64;
            self.counters.blocks_written += blocks;
            // `check_range` proved `block + all blocks <= capacity`: no overflow.
            sector += blocks;
        }
        Ok(())
    }

    /// Makes every completed write durable. With [`WriteCache::Flushable`] sends a FLUSH
    /// request and returns once the device completed it; with
    /// [`WriteCache::WriteThrough`] returns `Ok` at once (completed writes are durable);
    /// with [`WriteCache::Unflushable`] returns [`Error::Unsupported`].
    fn flush(&mut self) -> Result {
        if self.failed {
            return Err(Error::Io);
        }
        if self.pending.is_some() {
            return Err(Error::Busy);
        }
        match self.write_cache {
            WriteCache::Flushable => self.run(request::FLUSH, 0, Transfer::None),
            WriteCache::WriteThrough => Ok(()),
            WriteCache::Unflushable => Err(Error::Unsupported),
        }
    }
}

impl<T: Transport> Drop for VirtioBlk<T> {
    fn drop(&mut self) {
        // Stop the device before the queue and buffer are freed.
        if reset(&mut *self.transport) {
            // SAFETY: each field is dropped once, here, and never used again; the device
            // confirmed its reset, so it no longer reaches the queue or the buffer.
            unsafe {
                ManuallyDrop::drop(&mut self.queue);
                ManuallyDrop::drop(&mut self.buffer);
                ManuallyDrop::drop(&mut self.transport);
            }
        }
        // Otherwise the device may still write the queue or the buffer: leak both, and the
        // transport (whose own drop would wait for the reset forever).
    }
}
