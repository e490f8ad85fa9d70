//! DMA memory on an identity-mapped machine.
//!
//! The appliance runs in one address space where RAM is mapped virtual == physical, so
//! memory from the global allocator is already "DMA memory": a zeroed, page-aligned heap
//! block is physically contiguous and its physical address is its virtual address.
//!
//! - [`DmaRegion`] owns one such block and knows its device-visible (physical) address.
//!   Drivers reach descriptor rings through its volatile accessors and packet buffers
//!   through [`DmaRegion::copy_from_slice`] and [`DmaRegion::slice`].
//! - [`DmaAllocator`] hands out regions. [`HeapDma`] is the appliance's allocator; host
//!   tests supply their own (for instance one whose physical addresses differ from the
//!   virtual ones, to prove that a driver hands the device physical addresses).
//! - [`IdentityHal`] is the `virtio_drivers::Hal` of the same machine: DMA pages from the
//!   heap, MMIO and buffers shared by address.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::ptr::{self, NonNull};

use duplex_hal::{Error, Result};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// The page size DMA regions are aligned to and rounded up to.
pub const PAGE_SIZE: usize = 4096;

/// Allocates DMA regions.
pub trait DmaAllocator {
    /// Allocates at least `len` bytes (rounded up to whole pages) of zeroed, page-aligned,
    /// physically contiguous memory.
    ///
    /// Fails with [`Error::OutOfRange`] for `len == 0` or a size that overflows, and with
    /// [`Error::Io`] when memory runs out.
    fn allocate(&self, len: usize) -> Result<DmaRegion>;
}

/// How a [`DmaRegion`] gives its memory back: called once, with the region's virtual
/// address and length.
pub type ReleaseFn = unsafe fn(NonNull<u8>, usize);

/// A block of memory the driver shares with a device.
///
/// The device reads and writes it behind the compiler's back, so the region never hands
/// out long-lived references: rings go through the volatile accessors, packet bytes through
/// copies or the short-lived (and `unsafe`) [`DmaRegion::slice`].
///
/// Offsets are the driver's own arithmetic, never device input: an offset out of range or
/// misaligned is a bug in the driver and panics.
#[derive(Debug)]
pub struct DmaRegion {
    virtual_start: NonNull<u8>,
    physical_start: u64,
    len: usize,
    release: ReleaseFn,
}

// SAFETY: a `DmaRegion` owns its memory exclusively (see `from_raw_parts`); nothing in it
// is tied to a thread, so moving it to another thread is sound.
unsafe impl Send for DmaRegion {}

impl DmaRegion {
    /// Wraps memory that an allocator produced.
    ///
    /// # Safety
    ///
    /// 1. `virtual_start` is valid for reads and writes of `len` bytes, aligned to
    ///    [`PAGE_SIZE`], zeroed, and owned by the new region alone until it drops.
    /// 2. A device that is given `physical_start + n` reaches byte `n` of this memory, for
    ///    every `n < len`.
    /// 3. `release(virtual_start, len)` frees the memory, and nothing else does.
    pub unsafe fn from_raw_parts(
        virtual_start: NonNull<u8>,
        physical_start: u64,
        len: usize,
        release: ReleaseFn,
    ) -> Self {
        DmaRegion {
            virtual_start,
            physical_start,
            len,
            release,
        }
    }

    /// The device-visible address of the first byte.
    pub fn physical_address(&self) -> u64 {
        self.physical_start
    }

    /// The device-visible address of byte `offset` (`offset <= len`).
    pub fn physical_address_at(&self, offset: usize) -> u64 {
        self.check(offset, 0, 1);
        // `offset <= len` and the region exists, so this cannot wrap in practice; keep the
        // arithmetic checked anyway.
        let offset = u64::try_from(offset).unwrap_or(u64::MAX);
        self.physical_start.saturating_add(offset)
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a region of no bytes (allocators never make one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The virtual address of the first byte, for code that must hand raw pointers on.
    pub fn as_ptr(&self) -> *mut u8 {
        self.virtual_start.as_ptr()
    }

    /// Panics unless `[offset, offset + size)` lies in the region and `offset` is a
    /// multiple of `align`.
    #[inline]
    fn check(&self, offset: usize, size: usize, align: usize) {
        let end = offset.checked_add(size);
        assert!(
            end.is_some_and(|end| end <= self.len) && offset.is_multiple_of(align),
            "DMA access out of range or misaligned: offset {offset} size {size} in {}",
            self.len
        );
    }

    #[inline]
    fn pointer<T>(&self, offset: usize) -> *mut T {
        self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: `check` proved `offset + size_of::<T>() <= len`, so the result stays in
        // the allocation.
        unsafe { self.virtual_start.as_ptr().add(offset).cast::<T>() }
    }

    /// Reads a byte the device may have written.
    #[inline]
    pub fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: in range (checked by `pointer`), memory owned by this region.
        unsafe { ptr::read_volatile(self.pointer::<u8>(offset)) }
    }

    /// Reads a little-endian `u16` (naturally aligned) the device may have written.
    #[inline]
    pub fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: in range and aligned (checked by `pointer`), memory owned by this region.
        u16::from_le(unsafe { ptr::read_volatile(self.pointer::<u16>(offset)) })
    }

    /// Reads a little-endian `u32` (naturally aligned) the device may have written.
    #[inline]
    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: in range and aligned (checked by `pointer`), memory owned by this region.
        u32::from_le(unsafe { ptr::read_volatile(self.pointer::<u32>(offset)) })
    }

    /// Reads a little-endian `u64` (naturally aligned) the device may have written.
    #[inline]
    pub fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: in range and aligned (checked by `pointer`), memory owned by this region.
        u64::from_le(unsafe { ptr::read_volatile(self.pointer::<u64>(offset)) })
    }

    /// Writes a byte for the device.
    #[inline]
    pub fn write_u8(&mut self, offset: usize, value: u8) {
        // SAFETY: in range (checked by `pointer`), memory owned by this region.
        unsafe { ptr::write_volatile(self.pointer::<u8>(offset), value) }
    }

    /// Writes a little-endian `u16` (naturally aligned) for the device.
    #[inline]
    pub fn write_u16(&mut self, offset: usize, value: u16) {
        // SAFETY: in range and aligned (checked by `pointer`), memory owned by this region.
        unsafe { ptr::write_volatile(self.pointer::<u16>(offset), value.to_le()) }
    }

    /// Writes a little-endian `u32` (naturally aligned) for the device.
    #[inline]
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        // SAFETY: in range and aligned (checked by `pointer`), memory owned by this region.
        unsafe { ptr::write_volatile(self.pointer::<u32>(offset), value.to_le()) }
    }

    /// Writes a little-endian `u64` (naturally aligned) for the device.
    #[inline]
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        // SAFETY: in range and aligned (checked by `pointer`), memory owned by this region.
        unsafe { ptr::write_volatile(self.pointer::<u64>(offset), value.to_le()) }
    }

    /// Copies `source` into the region at `offset` (an ordinary, non-volatile copy: order
    /// it before the doorbell with a release fence).
    #[inline]
    pub fn copy_from_slice(&mut self, offset: usize, source: &[u8]) {
        self.check(offset, source.len(), 1);
        // SAFETY: `check` proved the destination range lies in the region; `source` is a
        // Rust slice, so it cannot overlap memory this region owns exclusively.
        unsafe {
            let destination = self.virtual_start.as_ptr().add(offset);
            ptr::copy_nonoverlapping(source.as_ptr(), destination, source.len())
        }
    }

    /// Copies bytes at `offset` out of the region into `destination` (for tests and slow
    /// paths).
    pub fn copy_to_slice(&self, offset: usize, destination: &mut [u8]) {
        self.check(offset, destination.len(), 1);
        // SAFETY: the source range lies in the region (checked); `destination` is a Rust
        // slice and cannot overlap it.
        unsafe {
            let source = self.virtual_start.as_ptr().add(offset);
            ptr::copy_nonoverlapping(source, destination.as_mut_ptr(), destination.len())
        }
    }

    /// Borrows `len` bytes at `offset`.
    ///
    /// # Safety
    ///
    /// The device must not write these bytes while the slice lives (for a receive buffer:
    /// the device has completed it and it has not been handed back yet).
    #[inline]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        self.check(offset, len, 1);
        // SAFETY: the range lies in the region (checked); the caller promises that nobody
        // writes it while the shared borrow lives.
        unsafe { core::slice::from_raw_parts(self.virtual_start.as_ptr().add(offset), len) }
    }

    /// Borrows `len` bytes at `offset` mutably.
    ///
    /// # Safety
    ///
    /// The device must neither read nor write these bytes while the slice lives.
    #[inline]
    pub unsafe fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        self.check(offset, len, 1);
        // SAFETY: the range lies in the region (checked); `&mut self` excludes other Rust
        // borrows and the caller promises the device stays away.
        unsafe { core::slice::from_raw_parts_mut(self.virtual_start.as_ptr().add(offset), len) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: `from_raw_parts`' caller promised that `release` frees exactly this
        // memory; `drop` runs once.
        unsafe { (self.release)(self.virtual_start, self.len) }
    }
}

/// Allocates `len` bytes rounded up to whole pages, zeroed and page-aligned, from the
/// global allocator. Returns the pointer and the rounded length.
fn allocate_zeroed_pages(len: usize) -> Result<(NonNull<u8>, usize)> {
    if len == 0 {
        return Err(Error::OutOfRange);
    }
    let rounded = len
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or(Error::OutOfRange)?;
    let layout = Layout::from_size_align(rounded, PAGE_SIZE).map_err(|_| Error::OutOfRange)?;
    // SAFETY: `layout` has a non-zero size.
    let pointer = unsafe { alloc_zeroed(layout) };
    NonNull::new(pointer)
        .map(|pointer| (pointer, rounded))
        .ok_or(Error::Io)
}

/// Frees what [`allocate_zeroed_pages`] returned.
///
/// # Safety
///
/// `pointer` and `len` are a pointer and rounded length that `allocate_zeroed_pages`
/// returned, not yet freed.
unsafe fn release_zeroed_pages(pointer: NonNull<u8>, len: usize) {
    // SAFETY: the caller passes back what `allocate_zeroed_pages` built from this very
    // layout (it checked the layout then).
    unsafe {
        dealloc(
            pointer.as_ptr(),
            Layout::from_size_align_unchecked(len, PAGE_SIZE),
        )
    }
}

/// The physical address of `pointer` on the identity-mapped appliance.
fn identity_physical(pointer: *const u8) -> u64 {
    // `usize` is 64 bits on every target this crate builds for.
    pointer.expose_provenance() as u64
}

/// The appliance's DMA allocator: the global heap, with physical == virtual addresses.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapDma;

impl DmaAllocator for HeapDma {
    fn allocate(&self, len: usize) -> Result<DmaRegion> {
        let (pointer, rounded) = allocate_zeroed_pages(len)?;
        // SAFETY:
        // 1. fresh, zeroed, page-aligned heap memory of `rounded` bytes, owned by nobody
        //    else;
        // 2. memory is identity-mapped on the appliance (and in host tests the fakes use the
        //    same identity), so the device reaches byte n at address + n;
        // 3. `release_zeroed_pages` frees exactly what `allocate_zeroed_pages` returned.
        Ok(unsafe {
            DmaRegion::from_raw_parts(
                pointer,
                identity_physical(pointer.as_ptr()),
                rounded,
                release_zeroed_pages,
            )
        })
    }
}

/// `virtio_drivers::Hal` for the identity-mapped appliance.
///
/// DMA pages come from the global heap; MMIO physical addresses are used as virtual
/// addresses (PCI MMIO below 4 GiB is identity-mapped); sharing a buffer means telling the
/// device its address, and unsharing does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned heap memory owned by nobody else until
// `dma_dealloc`; `mmio_phys_to_virt` returns the identity mapping of the MMIO region the
// caller vouches for; physical == virtual for every RAM address on this machine.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match pages.checked_mul(PAGE_SIZE).map(allocate_zeroed_pages) {
            Some(Ok((pointer, _))) => (identity_physical(pointer.as_ptr()), pointer),
            // `virtio_drivers` treats physical address 0 as allocation failure.
            _ => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // `dma_alloc` succeeded with this page count, so the product did not overflow.
        let len = pages.saturating_mul(PAGE_SIZE);
        // SAFETY: the caller passes back what `dma_alloc` returned for `pages` pages, which
        // is what `allocate_zeroed_pages` returned for `len` bytes (already a page multiple).
        unsafe { release_zeroed_pages(vaddr, len) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        let address = usize::try_from(paddr).expect("MMIO address beyond the address space");
        NonNull::new(ptr::with_exposed_provenance_mut(address))
            .expect("MMIO region at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        identity_physical(buffer.cast::<u8>().as_ptr())
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A DMA allocator whose physical addresses are NOT the virtual ones, so that tests
    //! catch a driver handing the device a virtual address.

    use super::*;

    /// Physical = virtual + this offset (an address no host process maps).
    pub const PHYSICAL_OFFSET: u64 = 0x4000_0000_0000;

    /// Allocates from the heap and reports shifted physical addresses.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct OffsetDma;

    impl DmaAllocator for OffsetDma {
        fn allocate(&self, len: usize) -> Result<DmaRegion> {
            let (pointer, rounded) = allocate_zeroed_pages(len)?;
            let physical = identity_physical(pointer.as_ptr()) + PHYSICAL_OFFSET;
            // SAFETY: as for `HeapDma`, except that the device (a fake) reaches byte n at
            // `physical + n` by subtracting `PHYSICAL_OFFSET` (see `physical_to_virtual`).
            Ok(unsafe {
                DmaRegion::from_raw_parts(pointer, physical, rounded, release_zeroed_pages)
            })
        }
    }

    /// What a fake device does with a physical address from `OffsetDma`.
    pub fn physical_to_virtual(physical: u64) -> *mut u8 {
        let address = physical
            .checked_sub(PHYSICAL_OFFSET)
            .expect("not an OffsetDma address");
        ptr::with_exposed_provenance_mut(usize::try_from(address).expect("64-bit host"))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{OffsetDma, PHYSICAL_OFFSET};
    use super::*;
    use std::vec;

    #[test]
    fn heap_regions_are_zeroed_page_aligned_and_identity_mapped() {
        let region = HeapDma.allocate(100).unwrap();
        assert_eq!(region.len(), PAGE_SIZE);
        assert_eq!(region.as_ptr() as usize % PAGE_SIZE, 0);
        assert_eq!(region.physical_address(), region.as_ptr() as u64);
        assert_eq!(region.physical_address_at(16), region.as_ptr() as u64 + 16);
        let mut bytes = vec![0xffu8; PAGE_SIZE];
        region.copy_to_slice(0, &mut bytes);
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn sizes_round_up_and_bad_sizes_fail() {
        assert_eq!(
            HeapDma.allocate(PAGE_SIZE + 1).unwrap().len(),
            2 * PAGE_SIZE
        );
        assert_eq!(HeapDma.allocate(0).unwrap_err(), Error::OutOfRange);
        assert_eq!(HeapDma.allocate(usize::MAX).unwrap_err(), Error::OutOfRange);
    }

    #[test]
    fn volatile_accessors_are_little_endian() {
        let mut region = HeapDma.allocate(64).unwrap();
        region.write_u64(8, 0x0102_0304_0506_0708);
        assert_eq!(region.read_u8(8), 0x08);
        assert_eq!(region.read_u16(8), 0x0708);
        assert_eq!(region.read_u32(12), 0x0102_0304);
        region.write_u16(2, 0xbeef);
        region.write_u32(4, 0xdead_0000);
        region.write_u8(1, 0x42);
        assert_eq!(region.read_u64(0), 0xdead_0000_beef_4200);
        region.copy_from_slice(20, b"frame");
        // SAFETY: no device in this test.
        assert_eq!(unsafe { region.slice(20, 5) }, b"frame");
        // SAFETY: no device in this test.
        let bytes = unsafe { region.slice_mut(20, 1) };
        bytes[0] = b'F';
        assert_eq!(region.read_u8(20), b'F');
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn access_past_the_end_panics() {
        let region = HeapDma.allocate(PAGE_SIZE).unwrap();
        region.read_u32(PAGE_SIZE - 2);
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn misaligned_access_panics() {
        let region = HeapDma.allocate(PAGE_SIZE).unwrap();
        region.read_u32(2);
    }

    #[test]
    fn offset_allocator_reports_shifted_addresses() {
        let region = OffsetDma.allocate(1).unwrap();
        assert_eq!(
            region.physical_address(),
            region.as_ptr() as u64 + PHYSICAL_OFFSET
        );
        assert_eq!(
            test_support::physical_to_virtual(region.physical_address()),
            region.as_ptr()
        );
    }

    #[test]
    fn identity_hal_allocates_zeroed_pages_and_shares_by_address() {
        let (physical, pointer) = IdentityHal::dma_alloc(2, BufferDirection::Both);
        assert_ne!(physical, 0);
        assert_eq!(physical, pointer.as_ptr() as u64);
        assert_eq!(physical % PAGE_SIZE as u64, 0);
        // SAFETY: `dma_alloc` returned two valid, exclusively owned pages.
        let bytes = unsafe { core::slice::from_raw_parts(pointer.as_ptr(), 2 * PAGE_SIZE) };
        assert!(bytes.iter().all(|&b| b == 0));
        let mut buffer = [1u8, 2, 3];
        let shared = NonNull::from(&mut buffer[..]);
        // SAFETY: `buffer` is a valid, non-empty local.
        let address = unsafe { IdentityHal::share(shared, BufferDirection::DriverToDevice) };
        assert_eq!(address, buffer.as_ptr() as u64);
        // SAFETY: as above; `address` came from `share`.
        unsafe { IdentityHal::unshare(address, shared, BufferDirection::DriverToDevice) };
        // SAFETY: the pages came from `dma_alloc(2)` and are freed once.
        assert_eq!(unsafe { IdentityHal::dma_dealloc(physical, pointer, 2) }, 0);
    }

    #[test]
    fn identity_hal_maps_mmio_by_identity() {
        // SAFETY: the pointer is only compared, never dereferenced.
        let pointer = unsafe { IdentityHal::mmio_phys_to_virt(0xfebf_0000, 0x1000) };
        assert_eq!(pointer.as_ptr() as usize, 0xfebf_0000);
    }

    #[test]
    fn identity_hal_reports_failure_as_address_zero() {
        let (physical, _) = IdentityHal::dma_alloc(usize::MAX, BufferDirection::Both);
        assert_eq!(physical, 0);
    }
}
