//! The serial console on COM1: output for everyone, input for the shell.

use core::fmt::{self, Write};

use duplex_drivers::uart::{COM1, SerialPort};
use spin::Mutex;

static CONSOLE: Mutex<Option<SerialPort>> = Mutex::new(None);

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
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = CONSOLE.lock().as_mut() {
            let _ = port.write_fmt(args);
        }
    });
}

/// Writes raw bytes.
pub fn write_bytes(bytes: &[u8]) {
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
/// may hold; falls back to raw port writes.
pub fn report(s: &str) {
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
