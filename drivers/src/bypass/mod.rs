//! Bypass card driver: the lab's card on COM2, behind [`duplex_hal::Bypass`].
//!
//! QEMU has no bypass card, so the lab plays one (`qemu/src/bypass_card.rs`): the guest
//! reaches it over its second UART with the line protocol of `SPEC.md` next to this
//! file (on, off, status, arm and disarm the card's own watchdog, kick).
//!
//! Layers, bottom up:
//! - [`LineTransmitter`] and [`ByteStream`]: the line, as traits, so the driver is
//!   host-testable. [`UartStream`] and [`UartTransmitter`] are the 16550 at COM2 (the
//!   only `unsafe` here: [`UartStream::new`]).
//! - [`protocol`]: request formatting and reply parsing (no I/O).
//! - [`LabBypass`]: request/response with a bounded wait, and [`duplex_hal::Bypass`].
//! - [`BypassKicker`]: the kick path for the timer interrupt, apart from the
//!   request path, so that a kick never waits for the main loop and never blocks.
//!
//! Drivers never read a clock: every wait is a number of polls ([`Limits`]).
//!
//! # Sharing the line between the timer interrupt and the main loop
//!
//! The main loop owns the [`LabBypass`] (requests and replies); the timer interrupt owns
//! a [`BypassKicker`] on a [`UartTransmitter`] of the same UART. Kicks have no reply, so
//! only the main loop reads. Both write: the main loop writes each request line (at most
//! 16 bytes, the FIFO) in one go with interrupts off, so a kick lands before or after a
//! request line, never inside it. A kick polls the transmitter a bounded number of times
//! and is skipped (counted, [`Error::Busy`]) when the FIFO stays busy.
//!
//! ```ignore
//! // SAFETY: COM2 is the bypass card's UART and nothing else uses it.
//! let (mut bypass, mut kicker) = unsafe { LabBypass::open_uart(COM2, Limits::default()) }?;
//! bypass.set_bypass(false)?;
//! bypass.arm_watchdog(Duration::from_millis(10))?;
//! // timer ISR, 1 kHz:   let _ = kicker.kick();
//! // main loop:          let status = bypass.status()?;
//! ```

pub mod protocol;
mod uart;

#[cfg(test)]
mod tests;

use core::hint::spin_loop;
use core::time::Duration;

use duplex_hal::{Bypass, BypassStatus, Error, Result};

use protocol::{
    Addressee, CardLine, Fields, KICK_LINE, LineAssembler, RequestLine, VERSION, error_for_reason,
    parse_card_line,
};
pub use uart::{UartStream, UartTransmitter};

/// The sending half of a line to the card.
pub trait LineTransmitter {
    /// Queues all of `line` for sending if the transmitter has room for all of it now
    /// and returns true; otherwise sends nothing and returns false. Never waits.
    fn try_send(&mut self, line: &[u8]) -> bool;
}

/// A line to the card, both ways.
pub trait ByteStream: LineTransmitter {
    /// A received byte, if one is waiting. Never waits.
    fn try_receive(&mut self) -> Option<u8>;
}

/// How long the driver waits, in polls of the line (it never reads a clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Polls of the transmitter before a kick is skipped. Keep it small: the kick runs
    /// in the timer interrupt.
    pub kick_polls: u32,
    /// Polls of the transmitter before a request gives up ([`Error::Timeout`]).
    pub send_polls: u32,
    /// Polls of the receiver before a request gives up waiting for its reply
    /// ([`Error::Timeout`]).
    pub reply_polls: u32,
}

impl Default for Limits {
    /// 64 polls per kick (a few µs); 100 000 for sending a request; 2 000 000 for a
    /// reply (a UART status read costs about 1 µs on real hardware and less under QEMU,
    /// so about a second at most; the lab card answers in well under a millisecond).
    fn default() -> Self {
        Limits {
            kick_polls: 64,
            send_polls: 100_000,
            reply_polls: 2_000_000,
        }
    }
}

/// What the card said about itself in answer to `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CardInfo {
    /// The protocol version both sides speak.
    pub version: u32,
    /// The shortest watchdog timeout the card accepts.
    pub min_timeout: Duration,
    /// The longest watchdog timeout the card accepts.
    pub max_timeout: Duration,
}

/// What the driver counted since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BypassCounters {
    /// Requests sent.
    pub requests: u64,
    /// Requests that got no reply in time, or could not be sent.
    pub timeouts: u64,
    /// Requests the card answered with `err`.
    pub errors: u64,
    /// Kicks sent through [`LabBypass::kick`].
    pub kicks: u64,
    /// Kicks skipped because the transmitter stayed busy.
    pub kicks_skipped: u64,
    /// Lines that answered no outstanding request (late replies, `- err` lines).
    pub stray_lines: u64,
    /// Lines that did not parse.
    pub bad_lines: u64,
    /// `* fired` notices seen (the card's watchdog closed the relay).
    pub fired_notices: u64,
}

/// Sends kicks, for the timer interrupt: never reads, never waits long.
pub struct BypassKicker<T: LineTransmitter> {
    transmitter: T,
    polls: u32,
    /// Kicks sent.
    pub sent: u64,
    /// Kicks skipped because the transmitter stayed busy.
    pub skipped: u64,
}

impl<T: LineTransmitter> BypassKicker<T> {
    /// A kicker on `transmitter` that polls it at most `limits.kick_polls` times.
    pub fn new(transmitter: T, limits: Limits) -> Self {
        BypassKicker {
            transmitter,
            polls: limits.kick_polls.max(1),
            sent: 0,
            skipped: 0,
        }
    }

    /// Sends one kick (`k` LF). [`Error::Busy`] when the transmitter stayed busy for
    /// all polls: the kick is skipped, not queued.
    pub fn kick(&mut self) -> Result {
        if send_bounded(&mut self.transmitter, KICK_LINE, self.polls) {
            self.sent = self.sent.wrapping_add(1);
            Ok(())
        } else {
            self.skipped = self.skipped.wrapping_add(1);
            Err(Error::Busy)
        }
    }
}

/// Tries to send `line` up to `polls` times.
fn send_bounded(transmitter: &mut impl LineTransmitter, line: &[u8], polls: u32) -> bool {
    for _ in 0..polls {
        if transmitter.try_send(line) {
            return true;
        }
        spin_loop();
    }
    false
}

/// The lab's bypass card over a [`ByteStream`] (COM2 in the appliance).
pub struct LabBypass<S: ByteStream> {
    stream: S,
    limits: Limits,
    next_sequence: u8,
    receiver: LineAssembler,
    card: Option<CardInfo>,
    counters: BypassCounters,
}

impl LabBypass<UartStream> {
    /// Opens the card on the UART at `base` (normally [`crate::uart::COM2`]): sets the
    /// UART up, says `hello`, and returns the driver and a kicker for the timer
    /// interrupt on the same UART.
    ///
    /// # Safety
    /// As [`UartStream::new`]: `base` is the I/O base of a 16550 (or of nothing) that
    /// nothing else uses while the driver and the kicker live.
    pub unsafe fn open_uart(
        base: u16,
        limits: Limits,
    ) -> Result<(LabBypass<UartStream>, BypassKicker<UartTransmitter>)> {
        // SAFETY: forwarded from the caller.
        let stream = unsafe { UartStream::new(base) }?;
        let kicker = BypassKicker::new(stream.transmitter(), limits);
        let mut bypass = LabBypass::new(stream, limits);
        bypass.hello()?;
        Ok((bypass, kicker))
    }
}

impl<S: ByteStream> LabBypass<S> {
    /// A driver on `stream`. Does no I/O; call [`LabBypass::hello`] next.
    pub fn new(stream: S, limits: Limits) -> Self {
        LabBypass {
            stream,
            limits,
            next_sequence: 0,
            receiver: LineAssembler::default(),
            card: None,
            counters: BypassCounters::default(),
        }
    }

    /// Ends any partial line the card holds, checks that it speaks version 1 and reads
    /// its watchdog range. [`Error::Unsupported`] when it does not speak version 1,
    /// [`Error::Timeout`] when nothing answers.
    pub fn hello(&mut self) -> Result<CardInfo> {
        // A lone line feed ends a partial line; the card ignores the empty line.
        if !send_bounded(&mut self.stream, b"\n", self.limits.send_polls) {
            self.counters.timeouts += 1;
            return Err(Error::Timeout);
        }
        let info = self.request("hello", Some(u64::from(VERSION)), |fields| {
            let version = fields.number("version").ok_or(Error::Io)?;
            if version != u64::from(VERSION) {
                return Err(Error::Unsupported);
            }
            Ok(CardInfo {
                version: VERSION,
                min_timeout: Duration::from_millis(fields.number("min").ok_or(Error::Io)?),
                max_timeout: Duration::from_millis(fields.number("max").ok_or(Error::Io)?),
            })
        })?;
        self.card = Some(info);
        Ok(info)
    }

    /// What `hello` learnt, once it succeeded.
    pub fn card(&self) -> Option<CardInfo> {
        self.card
    }

    /// The driver's counters.
    pub fn counters(&self) -> BypassCounters {
        self.counters
    }

    /// Reads what the card sent unasked (notices, late replies) without waiting, and
    /// returns how many `* fired` notices were among it: the card's watchdog closed the
    /// relay, and the host decides whether to open it again. Call it from the main loop.
    pub fn poll(&mut self) -> u64 {
        let before = self.counters.fired_notices;
        self.drain_stale_input();
        self.counters.fired_notices.wrapping_sub(before)
    }

    /// The line, for diagnostics and tests.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends one request and waits (a bounded number of polls) for its reply; hands
    /// the reply's fields to `on_ok`.
    fn request<T>(
        &mut self,
        command: &str,
        argument: Option<u64>,
        on_ok: impl FnOnce(Fields<'_>) -> Result<T>,
    ) -> Result<T> {
        let sequence = self.next_sequence;
        self.next_sequence = sequence.wrapping_add(1);
        let line = RequestLine::new(sequence, command, argument)?;
        self.drain_stale_input();
        self.counters.requests += 1;
        if !send_bounded(&mut self.stream, line.as_bytes(), self.limits.send_polls) {
            self.counters.timeouts += 1;
            return Err(Error::Timeout);
        }
        let mut on_ok = Some(on_ok);
        for _ in 0..self.limits.reply_polls {
            let Some(byte) = self.stream.try_receive() else {
                spin_loop();
                continue;
            };
            let Some(line) = self.receiver.push(byte) else {
                continue;
            };
            match parse_card_line(line) {
                Ok(CardLine::Ok {
                    to: Addressee::Request(s),
                    fields,
                }) if s == u16::from(sequence) => {
                    let on_ok = on_ok.take().ok_or(Error::InvalidState)?;
                    return on_ok(fields);
                }
                Ok(CardLine::Err {
                    to: Addressee::Request(s),
                    reason,
                    ..
                }) if s == u16::from(sequence) => {
                    self.counters.errors += 1;
                    return Err(error_for_reason(reason));
                }
                Ok(CardLine::Notice { event: "fired", .. }) => self.counters.fired_notices += 1,
                Ok(_) => self.counters.stray_lines += 1,
                Err(protocol::LineError::Empty) => {}
                Err(_) => self.counters.bad_lines += 1,
            }
        }
        self.counters.timeouts += 1;
        Err(Error::Timeout)
    }

    /// Reads what arrived while no request was outstanding (notices, late replies) so
    /// that the reply is not mixed up with it; bounded so a babbling line cannot hold
    /// the caller.
    fn drain_stale_input(&mut self) {
        for _ in 0..protocol::MAX_LINE_LENGTH * 4 {
            let Some(byte) = self.stream.try_receive() else {
                break;
            };
            if let Some(line) = self.receiver.push(byte) {
                match parse_card_line(line) {
                    Ok(CardLine::Notice { event: "fired", .. }) => self.counters.fired_notices += 1,
                    Ok(_) => self.counters.stray_lines += 1,
                    Err(protocol::LineError::Empty) => {}
                    Err(_) => self.counters.bad_lines += 1,
                }
            }
        }
    }
}

/// Converts a timeout to whole milliseconds, rounding a fraction up (the card never
/// fires earlier than asked).
fn timeout_millis(timeout: Duration) -> Result<u64> {
    let millis = timeout.as_millis();
    let millis = if !timeout.subsec_nanos().is_multiple_of(1_000_000) {
        millis.checked_add(1).ok_or(Error::OutOfRange)?
    } else {
        millis
    };
    u64::try_from(millis).map_err(|_| Error::OutOfRange)
}

impl<S: ByteStream> Bypass for LabBypass<S> {
    fn name(&self) -> &'static str {
        "lab-com2"
    }

    fn set_bypass(&mut self, on: bool) -> Result {
        let command = if on { "on" } else { "off" };
        self.request(command, None, |fields| match fields.flag("relay") {
            Some(relay) if relay == on => Ok(()),
            Some(_) => Err(Error::Io),
            // A later card may leave the field out; the `ok` is what counts.
            None => Ok(()),
        })
    }

    fn status(&mut self) -> Result<BypassStatus> {
        self.request("status", None, |fields| {
            Ok(BypassStatus {
                bypassing: fields.flag("relay").ok_or(Error::Io)?,
                watchdog_armed: fields.flag("armed").ok_or(Error::Io)?,
                watchdog_timeout: Duration::from_millis(fields.number("timeout").ok_or(Error::Io)?),
                watchdog_fired: fields.flag("fired").ok_or(Error::Io)?,
            })
        })
    }

    fn arm_watchdog(&mut self, timeout: Duration) -> Result {
        let millis = timeout_millis(timeout)?;
        if millis == 0 {
            return Err(Error::OutOfRange);
        }
        if let Some(card) = self.card
            && (Duration::from_millis(millis) < card.min_timeout
                || Duration::from_millis(millis) > card.max_timeout)
        {
            return Err(Error::OutOfRange);
        }
        self.request("arm", Some(millis), |fields| match fields.flag("armed") {
            Some(false) => Err(Error::Io),
            _ => Ok(()),
        })
    }

    fn disarm_watchdog(&mut self) -> Result {
        self.request("disarm", None, |_| Ok(()))
    }

    /// Sends one kick line and does not wait for anything: [`Error::Busy`] when the
    /// transmitter stayed busy for `kick_polls` polls (the kick is skipped).
    fn kick(&mut self) -> Result {
        if send_bounded(&mut self.stream, KICK_LINE, self.limits.kick_polls.max(1)) {
            self.counters.kicks += 1;
            Ok(())
        } else {
            self.counters.kicks_skipped += 1;
            Err(Error::Busy)
        }
    }
}
