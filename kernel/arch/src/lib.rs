//! The x86_64 machine layer of the Duplex appliance.
//!
//! This is the only kernel crate with `unsafe`: it owns the CPU. Layers, from the
//! bottom:
//!
//! 1. [`boot`]: the ELF notes and headers that QEMU (PVH) and GRUB (Multiboot2) read,
//!    and the 32-bit trampoline that builds identity page tables for the first 4 GiB,
//!    enters long mode and calls [`boot::arch_start64`].
//! 2. [`bootinfo`]: the PVH start info or the Multiboot2 tags, read into a
//!    [`bootinfo::BootInfo`] (command line, memory map).
//! 3. [`cpu`]: GDT with a TSS and IST stacks, the IDT, the interrupt entry stubs and the
//!    one `extern "C"` dispatcher; every CPU exception prints a report and exits.
//! 4. [`timer`]: the i8254 PIT and the local APIC timer (1 kHz tick), the TSC clock
//!    calibrated against the PIT.
//! 5. [`memory`]: the heap behind `alloc`, and identity mappings of MMIO above 4 GiB.
//! 6. [`machine`]: port I/O helpers, `isa-debug-exit`, reset.
//!
//! The image provides `kernel_main` and installs hooks (console output for reports,
//! the timer tick) through [`hooks`].

#![no_std]

pub mod boot;
pub mod bootinfo;
pub mod cpu;
pub mod hooks;
pub mod machine;
pub mod memory;
pub mod rtc;
pub mod timer;

pub use bootinfo::BootInfo;
