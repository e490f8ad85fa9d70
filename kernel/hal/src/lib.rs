//! Hardware abstraction for the Duplex appliance.
//!
//! Every piece of hardware the portable core talks to sits behind one small trait here,
//! in the style of Tock's HIL:
//!
//! | trait | implemented by (in `drivers/`) | no-op |
//! | --- | --- | --- |
//! | [`Nic`] | virtio-net, e1000 | - |
//! | [`Watchdog`] | iTCO (ICH9), i6300ESB | `()` |
//! | [`Bypass`] | lab bypass card (COM2), bypass NICs | `()` |
//! | [`BlockDevice`] | virtio-blk | - |
//! | [`Clock`] | TSC clock in `kernel/arch` | - |
//!
//! Time is an [`Instant`] (nanoseconds since boot) and a [`core::time::Duration`].
//! Logic crates never read a clock: the caller passes `now` in.
//!
//! [`fake`] holds in-memory implementations for host tests and the pair simulator.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod fake;
mod time;

pub use time::{Clock, Instant};

use core::fmt;
use core::time::Duration;

/// Errors any hardware trait may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The device did not answer in time.
    Timeout,
    /// The device reported an I/O error.
    Io,
    /// An argument was out of the device's range (block number, timeout, frame length).
    OutOfRange,
    /// The device has no room right now (transmit ring full); try again later.
    Busy,
    /// The device cannot do this at all.
    Unsupported,
    /// The device is present but in a state that forbids this (locked, not armed).
    InvalidState,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Timeout => "device timed out",
            Error::Io => "device I/O error",
            Error::OutOfRange => "argument out of the device's range",
            Error::Busy => "device busy",
            Error::Unsupported => "not supported by this device",
            Error::InvalidState => "device in the wrong state",
        })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T = ()> = core::result::Result<T, Error>;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddress = MacAddress([0xff; 6]);

    /// True for group (multicast and broadcast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Per-NIC counters, monotonically increasing since the driver started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames handed to the caller.
    pub rx_frames: u64,
    /// Bytes in those frames.
    pub rx_bytes: u64,
    /// Frames the device or driver dropped on receive (ring full, bad length).
    pub rx_dropped: u64,
    /// Receive errors the device reported (CRC, alignment).
    pub rx_errors: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes in those frames.
    pub tx_bytes: u64,
    /// Frames refused because the ring was full or the frame bad.
    pub tx_dropped: u64,
    /// Link changes seen.
    pub link_changes: u64,
}

/// A network interface card.
///
/// Receive and transmit are batched: `receive` hands out up to `budget` frames straight
/// from the receive ring, `transmit` copies frames into the transmit ring, and
/// `flush` tells the device about all frames queued since the last flush (one doorbell
/// per batch).
pub trait Nic {
    /// The card's own MAC address.
    fn mac_address(&self) -> MacAddress;

    /// Reads the link state from the device; true when the link is up.
    fn link_up(&mut self) -> bool;

    /// Hands up to `budget` received frames (Ethernet header on, FCS off) to `sink`
    /// and returns how many it handed out. Never blocks.
    fn receive(&mut self, budget: usize, sink: &mut dyn FnMut(&[u8])) -> usize;

    /// Queues one frame (Ethernet header on, FCS off) for transmission.
    /// Returns [`Error::Busy`] when the ring is full and [`Error::OutOfRange`] when the
    /// frame is shorter than 14 or longer than [`Nic::max_frame_len`] bytes.
    fn transmit(&mut self, frame: &[u8]) -> Result;

    /// Starts transmission of every frame queued since the last flush and reclaims
    /// finished transmit buffers.
    fn flush(&mut self);

    /// How many frames [`Nic::transmit`] would take now, without a flush, before it
    /// refuses one with [`Error::Busy`]. The forwarding loop reads no more frames than
    /// the egress can take, so a slow egress leaves them in the ingress ring (and the
    /// sender's buffers) instead of dropping them. `usize::MAX` when the driver cannot
    /// tell.
    fn transmit_room(&mut self) -> usize {
        usize::MAX
    }

    /// The largest frame `transmit` accepts (without FCS); 1514 unless the device says more.
    fn max_frame_len(&self) -> usize {
        1514
    }

    /// Counters since the driver started.
    fn counters(&self) -> NicCounters;

    /// A short name of the device model, for the console ("virtio-net", "e1000").
    fn model(&self) -> &'static str;

    /// Writes device-specific state (ring indices, registers) for `show interfaces`.
    fn diagnostics(&mut self, _out: &mut dyn fmt::Write) -> fmt::Result {
        Ok(())
    }
}

/// A hardware watchdog timer: once armed, it resets the machine unless kicked in time.
///
/// `impl Watchdog for ()` is the no-op watchdog of a machine that has none.
pub trait Watchdog {
    /// A short name of the device ("iTCO", "i6300ESB", "none").
    fn name(&self) -> &'static str;

    /// Arms the watchdog so that it resets the machine after `timeout` without a kick.
    /// Returns the timeout the hardware really uses (its resolution is coarse).
    fn arm(&mut self, timeout: Duration) -> Result<Duration>;

    /// Restarts the countdown.
    fn kick(&mut self);

    /// Stops the countdown.
    fn disarm(&mut self);

    /// True when the hardware says the last reset came from this watchdog.
    fn last_reset_was_watchdog(&self) -> bool;

    /// The range of timeouts the hardware supports.
    fn timeout_range(&self) -> (Duration, Duration);
}

impl Watchdog for () {
    fn name(&self) -> &'static str {
        "none"
    }
    fn arm(&mut self, _timeout: Duration) -> Result<Duration> {
        Err(Error::Unsupported)
    }
    fn kick(&mut self) {}
    fn disarm(&mut self) {}
    fn last_reset_was_watchdog(&self) -> bool {
        false
    }
    fn timeout_range(&self) -> (Duration, Duration) {
        (Duration::ZERO, Duration::ZERO)
    }
}

/// What a bypass card reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BypassStatus {
    /// The relay shorts the two ports (the box is a cable).
    pub bypassing: bool,
    /// The card's own watchdog is armed.
    pub watchdog_armed: bool,
    /// The card's watchdog timeout when armed.
    pub watchdog_timeout: Duration,
    /// The card's watchdog has fired since it was last armed (it closed the relay).
    pub watchdog_fired: bool,
}

/// A bypass card: a relay across the box's two ports, with a watchdog of its own that
/// closes the relay when the host stops kicking it.
///
/// `impl Bypass for ()` is the no-op card of a machine that has none.
pub trait Bypass {
    /// A short name of the device ("lab-com2", "none").
    fn name(&self) -> &'static str;
    /// Closes (`true`: traffic flows around the box) or opens the relay.
    fn set_bypass(&mut self, on: bool) -> Result;
    /// Reads the card's status.
    fn status(&mut self) -> Result<BypassStatus>;
    /// Arms the card's own watchdog.
    fn arm_watchdog(&mut self, timeout: Duration) -> Result;
    /// Disarms the card's own watchdog.
    fn disarm_watchdog(&mut self) -> Result;
    /// Restarts the card's watchdog countdown.
    fn kick(&mut self) -> Result;
}

impl Bypass for () {
    fn name(&self) -> &'static str {
        "none"
    }
    fn set_bypass(&mut self, _on: bool) -> Result {
        Err(Error::Unsupported)
    }
    fn status(&mut self) -> Result<BypassStatus> {
        Err(Error::Unsupported)
    }
    fn arm_watchdog(&mut self, _timeout: Duration) -> Result {
        Err(Error::Unsupported)
    }
    fn disarm_watchdog(&mut self) -> Result {
        Err(Error::Unsupported)
    }
    fn kick(&mut self) -> Result {
        Err(Error::Unsupported)
    }
}

/// A block device with fixed-size blocks.
pub trait BlockDevice {
    /// Bytes in one block (512 for virtio-blk).
    fn block_size(&self) -> usize;
    /// Number of blocks on the device.
    fn block_count(&self) -> u64;
    /// Reads whole blocks starting at `block` into `buf` (a multiple of the block size).
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result;
    /// Writes whole blocks starting at `block` from `buf` (a multiple of the block size).
    /// The data may sit in a volatile cache until [`BlockDevice::flush`].
    fn write(&mut self, block: u64, buf: &[u8]) -> Result;
    /// Returns when everything written before is on stable storage.
    fn flush(&mut self) -> Result;
}
