//! The serial console on COM1: output for everyone, input for the shell.

use core::fmt::{self, Write};

use duplex_drivers::uart::{COM1, SerialPort};
use spin::Mutex;

static CONSOLE: Mutex<Option<SerialPort>> = Mutex::new(None);

/// Bytes waiting to go out once the main loop runs: the UART takes a few microseconds a
/// byte (an I/O exit each under emulation), so a long answer written at once would stall
/// the loop for milliseconds. The loop drains [`DRAIN_PER_PASS`] bytes a pass instead.
static PENDING: Mutex<alloc::collections::VecDeque<u8>> =
    Mutex::new(alloc::collections::VecDeque::new());
/// Bytes kept at most; past that, writers wait (nothing is lost).
const PENDING_MAX: usize = 64 * 1024;
/// Bytes sent per main-loop pass.
pub const DRAIN_PER_PASS: usize = 128;
static BUFFERED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// From now on, output is queued and [`drain`] sends it (the main loop runs).
pub fn start_buffering() {
    BUFFERED.store(true, core::sync::atomic::Ordering::Release);
}

/// Sends up to `budget` queued bytes. Returns how many are still queued.
pub fn drain(budget: usize) -> usize {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut pending = PENDING.lock();
        let n = budget.min(pending.len());
        if n > 0
            && let Some(port) = CONSOLE.lock().as_mut()
        {
            let (a, b) = pending.as_slices();
            let first = n.min(a.len());
            port.write_bytes(&a[..first]);
            port.write_bytes(&b[..n - first]);
        }
        pending.drain(..n);
        pending.len()
    })
}

fn queue(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let room = x86_64::instructions::interrupts::without_interrupts(|| {
            let mut pending = PENDING.lock();
            let room = PENDING_MAX.saturating_sub(pending.len()).min(rest.len());
            pending.extend(&rest[..room]);
            room
        });
        rest = &rest[room..];
        if !rest.is_empty() {
            // Full: send some now rather than drop output.
            drain(DRAIN_PER_PASS);
        }
    }
}

/// Sends everything queued (before a reset or a deliberate hang).
pub fn flush_all() {
    while drain(usize::MAX) > 0 {}
}

/// Formats into the queue.
struct Queued;

impl Write for Queued {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        queue(s.as_bytes());
        Ok(())
    }
}

/// Opens COM1. Output before this goes nowhere (reports use the raw path).
pub fn init() {
    // SAFETY: COM1's ports belong to the console alone; nothing else in the image
    // touches 0x3f8..0x3ff except the machine layer's report path, which runs only when
    // this lock cannot be taken (see `report`).
    if let Ok(port) = unsafe { SerialPort::new(COM1) } {
        *CONSOLE.lock() = Some(port);
    }
}

/// Writes formatted text.
pub fn write_fmt(args: fmt::Arguments) {
    if BUFFERED.load(core::sync::atomic::Ordering::Acquire) {
        let _ = Queued.write_fmt(args);
        return;
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = CONSOLE.lock().as_mut() {
            let _ = port.write_fmt(args);
        }
    });
}

/// Writes raw bytes.
pub fn write_bytes(bytes: &[u8]) {
    if BUFFERED.load(core::sync::atomic::Ordering::Acquire) {
        queue(bytes);
        return;
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = CONSOLE.lock().as_mut() {
            port.write_bytes(bytes);
        }
    });
}

/// A received byte, if any.
pub fn read_byte() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| CONSOLE.lock().as_mut()?.try_read())
}

/// The machine layer's report sink: never waits for the lock, which the faulting code
/// may hold; falls back to raw port writes. Queued output goes first, when it can.
pub fn report(s: &str) {
    if let Some(mut pending) = PENDING.try_lock() {
        let queued: alloc::vec::Vec<u8> = pending.drain(..).collect();
        drop(pending);
        if !queued.is_empty() {
            match CONSOLE.try_lock() {
                Some(mut guard) if guard.is_some() => {
                    if let Some(port) = guard.as_mut() {
                        port.write_bytes(&queued);
                    }
                }
                _ => duplex_arch::machine::early_com1_write(
                    &alloc::string::String::from_utf8_lossy(&queued),
                ),
            }
        }
    }
    match CONSOLE.try_lock() {
        Some(mut guard) if guard.is_some() => {
            if let Some(port) = guard.as_mut() {
                let _ = port.write_str(s);
            }
        }
        _ => duplex_arch::machine::early_com1_write(s),
    }
}

/// `print!` to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!($($arg)*)) };
}

/// `println!` to the console (CR LF line ends).
#[macro_export]
macro_rules! println {
    () => { $crate::console::write_bytes(b"\r\n") };
    ($($arg:tt)*) => {{
        $crate::console::write_fmt(format_args!($($arg)*));
        $crate::console::write_bytes(b"\r\n");
    }};
}
