//! Whole-machine operations: QEMU's exit device, reset, halting, early output.

use x86_64::instructions::port::Port;

/// The I/O port of QEMU's `isa-debug-exit` device (the lab passes `iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exit status through `isa-debug-exit`: QEMU exits with `(value << 1) | 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exit status 33.
    Success = 0x10,
    /// QEMU exit status 35.
    Failure = 0x11,
}

/// Ends the machine: under QEMU through `isa-debug-exit`; on hardware (where that port
/// does nothing) by a reset, so a fault never leaves the appliance hung.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: a 32-bit write to port 0xf4 is harmless where no device decodes it.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32) };
    reset()
}

/// Report-and-stop path for fatal errors: exit with [`ExitCode::Failure`].
pub fn fail_stop() -> ! {
    exit(ExitCode::Failure)
}

/// Resets the machine: the chipset reset register (0xCF9), then the keyboard
/// controller, then a triple fault.
pub fn reset() -> ! {
    x86_64::instructions::interrupts::disable();
    // SAFETY: 0xCF9 is the reset control register on ICH/PIIX chipsets; 0x06 asks for
    // a hard reset. On a machine without it the write is ignored.
    unsafe { Port::<u8>::new(0xcf9).write(0x06) };
    spin_wait(1_000_000);
    // SAFETY: 0xFE to the 8042 command port pulses the CPU reset line.
    unsafe { Port::<u8>::new(0x64).write(0xfe) };
    spin_wait(1_000_000);
    // Last resort: an empty IDT makes the next interrupt a triple fault.
    let empty = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: we want the triple fault that follows.
    unsafe {
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("int3", options(nomem, nostack));
    }
    halt_forever()
}

/// Stops the CPU with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

fn spin_wait(iterations: u32) {
    for _ in 0..iterations {
        core::hint::spin_loop();
    }
}

/// Writes straight to COM1 by polling, for reports before the console driver exists
/// or when its lock may be held by the interrupted code.
pub fn early_com1_write(s: &str) {
    const COM1: u16 = 0x3f8;
    for byte in s.bytes() {
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of COM1 has no side effect.
            let status = unsafe { Port::<u8>::new(COM1 + 5).read() };
            if status & 0x20 != 0 {
                break;
            }
        }
        // SAFETY: writing the transmit register of COM1 sends one byte.
        unsafe { Port::<u8>::new(COM1).write(byte) };
    }
}
