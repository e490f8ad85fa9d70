//! The heap behind `alloc`.
//!
//! The heap takes the largest RAM region above the kernel image (and above the loader's
//! boot information), up to 4 GiB, the end of the boot identity mapping.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;
use spin::Mutex;

use crate::bootinfo::BootInfo;

unsafe extern "C" {
    static __kernel_end: u8;
}

const IDENTITY_LIMIT: u64 = 4 << 30;

/// The global allocator: a linked-list heap behind a spin lock.
/// Interrupt handlers must not allocate (the main loop may hold the lock).
pub struct KernelHeap {
    heap: Mutex<Heap>,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    heap: Mutex::new(Heap::empty()),
};

// SAFETY: `Heap` hands out disjoint blocks of the region it owns, aligned as asked,
// and the mutex serialises all access.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.heap
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller returns a block this allocator gave out with this layout.
            unsafe { self.heap.lock().deallocate(ptr, layout) }
        }
    }
}

/// Heap statistics: (bytes in the heap, bytes in use).
pub fn heap_stats() -> (usize, usize) {
    let heap = HEAP.heap.lock();
    (heap.size(), heap.used())
}

/// Gives the heap its region. Called once, from `arch_start64`.
pub(crate) fn init_heap(boot: &BootInfo) {
    // Only the address of the linker-defined symbol is taken.
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let info_end = (boot.info_address + boot.info_len) as u64;
    let mut best = (0u64, 0u64);
    for region in boot.regions() {
        let mut start = region.start;
        let end = (region.start + region.len).min(IDENTITY_LIMIT);
        // Skip the kernel image and the loader's structure when they sit in the region.
        if start < kernel_end && kernel_end < end {
            start = kernel_end;
        }
        if start < info_end && info_end < end && (boot.info_address as u64) >= start {
            start = info_end;
        }
        let start = (start + 4095) & !4095;
        if start >= 1 << 20 && end > start && end - start > best.1 {
            best = (start, end - start);
        }
    }
    if best.1 == 0 {
        let mut out = crate::hooks::ReportWriter;
        let _ = core::fmt::Write::write_str(
            &mut out,
            "fatal: no RAM for the heap in the boot memory map\r\n",
        );
        crate::machine::fail_stop();
    }
    // SAFETY: the region is usable RAM per the loader, identity-mapped, and excludes the
    // kernel image and the boot information; nothing else uses it.
    unsafe { HEAP.heap.lock().init(best.0 as *mut u8, best.1 as usize) };
}
