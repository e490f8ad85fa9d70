//! COM ports (16550 UARTs) through the `uart_16550` crate.

use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

pub use uart_16550::BaudRate;

/// I/O base of COM1.
pub const COM1: u16 = 0x3f8;
/// I/O base of COM2.
pub const COM2: u16 = 0x2f8;

/// A polled serial port.
pub struct SerialPort {
    uart: Uart16550<PioBackend>,
}

/// Why a port could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialError {
    /// No UART answers at that base.
    NotPresent,
    /// The UART refused the configuration.
    InitFailed,
}

impl SerialPort {
    /// Initialises the UART at `base` for 115200 8N1 with FIFOs, no interrupts.
    ///
    /// # Safety
    /// `base` must be the I/O base of a 16550-compatible UART (or of nothing), and no
    /// other code may use its eight ports while the value lives.
    pub unsafe fn new(base: u16) -> Result<Self, SerialError> {
        // SAFETY: forwarded from the caller.
        let mut uart = unsafe { Uart16550::new_port(base) }.map_err(|_| SerialError::NotPresent)?;
        let config = Config {
            baud_rate: BaudRate::Baud115200,
            ..Config::default()
        };
        uart.init(config).map_err(|_| SerialError::InitFailed)?;
        Ok(SerialPort { uart })
    }

    /// Sends all of `bytes`, waiting for room in the FIFO.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.uart.send_bytes_exact(bytes);
    }

    /// Returns a received byte if one is waiting.
    pub fn try_read(&mut self) -> Option<u8> {
        self.uart.try_receive_byte().ok()
    }
}

impl core::fmt::Write for SerialPort {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}
