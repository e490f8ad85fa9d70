//! The line to the lab's card: a 16550 UART (COM2), polled.
//!
//! The UART is set up by [`crate::uart::SerialPort`] (115200 8N1, FIFOs on, no
//! interrupts). Sending and the receive check then go straight to the registers, because
//! a line must be written all at once or not at all: when the line status register says
//! the transmit FIFO is empty (THRE), up to 16 bytes fit.

use duplex_hal::{Error, Result};
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::instructions::port::Port;

use super::{ByteStream, LineTransmitter};
use crate::uart::{SerialError, SerialPort};

/// Transmit holding register (write) / receive buffer (read).
const DATA: u16 = 0;
/// Interrupt identification register (read); bits 7:6 are 11 when the FIFOs are on.
const IIR: u16 = 2;
/// Line status register.
const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
const IIR_FIFOS_ENABLED: u8 = 0b1100_0000;
/// The 16550's transmit FIFO.
const FIFO_SIZE: usize = 16;

/// The UART at `base`, both ways. Made by [`UartStream::new`].
pub struct UartStream {
    serial: SerialPort,
    base: u16,
}

/// The sending half of a [`UartStream`], for the timer interrupt's kicks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UartTransmitter {
    base: u16,
}

impl UartStream {
    /// Sets up the UART at `base` (115200 8N1, FIFOs on, no interrupts).
    /// [`Error::Unsupported`] when no UART answers there or its FIFOs do not turn on,
    /// [`Error::Io`] when it refuses the configuration.
    ///
    /// # Safety
    /// `base` must be the I/O base of a 16550-compatible UART (or of nothing), and
    /// nothing but this stream and its [`UartTransmitter`]s may use its eight ports.
    pub unsafe fn new(base: u16) -> Result<UartStream> {
        // SAFETY: forwarded from the caller.
        let serial = unsafe { SerialPort::new(base) }.map_err(|error| match error {
            SerialError::NotPresent => Error::Unsupported,
            SerialError::InitFailed => Error::Io,
        })?;
        let mut stream = UartStream { serial, base };
        if stream.read_register(IIR) & IIR_FIFOS_ENABLED != IIR_FIFOS_ENABLED {
            return Err(Error::Unsupported);
        }
        Ok(stream)
    }

    /// A transmitter on the same UART, for the timer interrupt. Its lines and this
    /// stream's never interleave: this stream writes each line with interrupts off.
    pub fn transmitter(&self) -> UartTransmitter {
        UartTransmitter { base: self.base }
    }

    fn read_register(&mut self, register: u16) -> u8 {
        // SAFETY: `new`'s caller promised that `base` is a 16550 this stream owns; IIR
        // and LSR reads only clear status the driver does not use (no interrupts).
        unsafe { Port::<u8>::new(self.base + register).read() }
    }
}

/// Writes `line` to the UART at `base` if the transmit FIFO is empty; all or nothing.
fn send_line(base: u16, line: &[u8]) -> bool {
    if line.is_empty() {
        return true;
    }
    if line.len() > FIFO_SIZE {
        return false;
    }
    without_interrupts(|| {
        // SAFETY: the UART at `base` belongs to the stream this transmitter came from
        // (its `new` caller promised so); LSR reads have no side effect we rely on.
        let status = unsafe { Port::<u8>::new(base + LSR).read() };
        if status & LSR_THR_EMPTY == 0 {
            return false;
        }
        let mut data = Port::<u8>::new(base + DATA);
        for &byte in line {
            // SAFETY: as above; with the FIFO empty, 16 bytes fit, and interrupts are
            // off so no other writer adds bytes in between.
            unsafe { data.write(byte) };
        }
        true
    })
}

impl LineTransmitter for UartStream {
    fn try_send(&mut self, line: &[u8]) -> bool {
        send_line(self.base, line)
    }
}

impl ByteStream for UartStream {
    fn try_receive(&mut self) -> Option<u8> {
        if self.read_register(LSR) & LSR_DATA_READY == 0 {
            return None;
        }
        self.serial.try_read()
    }
}

impl LineTransmitter for UartTransmitter {
    fn try_send(&mut self, line: &[u8]) -> bool {
        send_line(self.base, line)
    }
}
