//! The bypass card (serial mode): a relay across the box's two bridged ports with a
//! watchdog of its own, so that a dead or hung box becomes a cable.
//!
//! - Boot opens the card on COM2 (`drivers/src/bypass/SPEC.md`), arms its watchdog
//!   (`bypass_ms=`, 10 ms by default) and hands a kicker to the timer interrupt.
//! - The timer interrupt kicks it every tick while the liveness monitor says the box is
//!   healthy and the main loop ran within half the card's timeout. A hung main loop, a
//!   dead timer interrupt, a halted or powered-off box all stop the kicks, and the card
//!   closes the relay on its own.
//! - The main loop makes the relay follow the Duplex node's role: closed in `Bypass`
//!   (serial SubMaster: a local or interface failure, or `suspend`), open otherwise. When
//!   the card says its watchdog fired (the box stalled past the timeout and is running
//!   again), the loop re-arms it and opens the relay if the role wants it open.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use duplex_core::ForwardingRole;
use duplex_drivers::bypass::{BypassKicker, LabBypass, Limits, UartStream, UartTransmitter};
use duplex_drivers::uart::COM2;
use duplex_hal::{Bypass, Error, Instant};
use duplex_mgmt::markers;
use duplex_mgmt::options::{BootOptions, DuplexMode};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

use crate::liveness;
use crate::println;

/// The kick path, for the timer interrupt (the main loop locks it only with interrupts
/// off, so the interrupt never finds it locked).
static KICKER: Mutex<Option<BypassKicker<UartTransmitter>>> = Mutex::new(None);
/// The interrupt kicks only while this is set (a card whose watchdog we armed).
static KICKING: AtomicBool = AtomicBool::new(false);
/// The main loop's liveness service (its index), `usize::MAX` until registered.
static MAIN_LOOP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The interrupt kicks only if the main loop ran within this many nanoseconds.
static LOOP_BUDGET_NS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Ticks on which the interrupt held back its kick because the box was not healthy.
static KICKS_WITHHELD: AtomicU64 = AtomicU64::new(0);

/// How often the main loop reads the card's status (besides the notices it sends).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// After a failed request, the next attempt waits this long.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The card as the main loop drives it.
pub struct Card {
    driver: LabBypass<UartStream>,
    /// The watchdog timeout we arm.
    timeout: Duration,
    /// The relay as last set or read: closed (traffic goes around the box).
    relay_on: bool,
    /// The card's watchdog as last set or read.
    armed: bool,
    /// The card's watchdog fired since boot (notices, or status saying so).
    fired: u64,
    /// The card's watchdog had fired before this boot (the status at boot said so).
    fired_before_boot: bool,
    /// The driver's count of `* fired` notices at the last look.
    notices_seen: u64,
    /// Relay switches this box asked for: closed, opened.
    switches: [u64; 2],
    /// The last failed request's error (the driver counts the failures).
    last_error: Option<Error>,
    /// Next status read.
    next_status: Instant,
    /// No request before this (after a failure).
    quiet_until: Instant,
}

/// Opens the card in serial mode. Without a card the box still runs, with a warning: if
/// it dies, nothing closes the link through it.
pub fn init(options: &BootOptions, now: Instant) -> Option<Card> {
    if options.mode != DuplexMode::Serial {
        return None;
    }
    // SAFETY: COM2 belongs to the bypass card: the console is COM1 and nothing else in
    // the image touches I/O ports 0x2F8..0x2FF.
    let (driver, kicker) = match unsafe { LabBypass::open_uart(COM2, Limits::default()) } {
        Ok(opened) => opened,
        Err(e) => {
            println!(
                "{}bypass: no card answers on COM2 ({e:?}); if this box fails, the link through it stays cut",
                markers::ERROR
            );
            return None;
        }
    };
    let info = driver.card().unwrap_or_default();
    let wanted = Duration::from_millis(u64::from(options.bypass_ms));
    let timeout = wanted.clamp(info.min_timeout, info.max_timeout.max(info.min_timeout));
    if timeout != wanted {
        println!(
            "warning: bypass: the card's watchdog takes {}..={} ms; using {} ms",
            info.min_timeout.as_millis(),
            info.max_timeout.as_millis(),
            timeout.as_millis()
        );
    }
    let mut card = Card {
        driver,
        timeout,
        relay_on: false,
        armed: false,
        fired: 0,
        fired_before_boot: false,
        notices_seen: 0,
        switches: [0; 2],
        last_error: None,
        next_status: now + STATUS_EVERY,
        quiet_until: now,
    };
    match card.request(|card| card.status()) {
        Ok(status) => {
            card.relay_on = status.bypassing;
            card.fired_before_boot = status.watchdog_fired;
        }
        Err(e) => card.failed(e, now),
    }
    LOOP_BUDGET_NS.store(timeout.as_nanos() as u64 / 2, Ordering::Relaxed);
    without_interrupts(|| *KICKER.lock() = Some(kicker));
    card.arm(now);
    println!(
        "bypass: card on COM2 (protocol v{}), watchdog {} ms, relay {}{}",
        info.version,
        timeout.as_millis(),
        if card.relay_on { "closed" } else { "open" },
        if card.fired_before_boot {
            "; its watchdog had fired (the box hung or lost power)"
        } else {
            ""
        }
    );
    Some(card)
}

/// Tells the interrupt which liveness service is the main loop.
pub fn watch_main_loop(service: liveness::Service) {
    MAIN_LOOP.store(service.0, Ordering::Relaxed);
}

/// The timer interrupt's part: one kick, if the box is healthy.
pub fn kick_from_interrupt(now: Instant) {
    if !KICKING.load(Ordering::Relaxed) {
        return;
    }
    let main_loop = MAIN_LOOP.load(Ordering::Relaxed);
    let loop_ran = main_loop == usize::MAX
        || liveness::silent_for(liveness::Service(main_loop), now).as_nanos() as u64
            <= LOOP_BUDGET_NS.load(Ordering::Relaxed);
    if !(liveness::healthy() && liveness::card_healthy() && loop_ran) {
        KICKS_WITHHELD.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(mut kicker) = KICKER.try_lock()
        && let Some(kicker) = kicker.as_mut()
    {
        let _ = kicker.kick();
    }
}

/// The relay's state in words, for the console.
pub fn relay_text(closed: bool) -> &'static str {
    if closed {
        "closed (traffic goes around this box)"
    } else {
        "open (traffic goes through this box)"
    }
}

/// The main loop proves it runs (while it waits for the card's reply).
fn main_loop_progress() {
    let main_loop = MAIN_LOOP.load(Ordering::Relaxed);
    if main_loop != usize::MAX {
        liveness::iam_alive(liveness::Service(main_loop), duplex_arch::timer::now());
    }
}

impl Card {
    /// Takes in `* fired` notices the driver saw since the last look, whichever call read
    /// them (a notice can arrive while a request waits for its reply). After a fire the
    /// card is disarmed with its relay closed, whatever this side believed: a later
    /// `off` would leave the box in the path with nothing to bypass it if it hangs.
    fn note_fired(&mut self) {
        let total = self.driver.counters().fired_notices;
        let new = total.wrapping_sub(self.notices_seen);
        self.notices_seen = total;
        if new > 0 {
            self.fired += new;
            self.relay_on = true;
            self.armed = false;
            println!("bypass: the card's watchdog fired: relay closed (this box stalled)");
        }
    }

    /// One request to the card. The main loop waits inside it for the reply, and is not
    /// hung meanwhile (so it says so: a slow reply must not withhold the kicks); a
    /// `* fired` notice read meanwhile is taken in before the caller looks at the result,
    /// which then sets what the request did on top of it.
    fn request<T>(
        &mut self,
        call: impl FnOnce(&mut LabBypass<UartStream>) -> duplex_hal::Result<T>,
    ) -> duplex_hal::Result<T> {
        let result = call(&mut self.driver);
        main_loop_progress();
        self.note_fired();
        result
    }

    fn failed(&mut self, error: Error, now: Instant) {
        if self.last_error != Some(error) {
            println!("{}bypass: card request failed: {error:?}", markers::ERROR);
        }
        self.last_error = Some(error);
        self.quiet_until = now + RETRY_AFTER;
    }

    fn arm(&mut self, now: Instant) {
        let timeout = self.timeout;
        // A notice read while arming reports a fire before the arm, which the arm undid.
        match self.request(|card| card.arm_watchdog(timeout)) {
            Ok(()) => {
                self.armed = true;
                self.last_error = None;
                KICKING.store(true, Ordering::Relaxed);
            }
            Err(e) => self.failed(e, now),
        }
    }

    fn switch(&mut self, on: bool, role: ForwardingRole, now: Instant) {
        // A fire before the switch leaves the card disarmed (noted: the next pass arms it
        // again) and the relay as the switch set it.
        match self.request(|card| card.set_bypass(on)) {
            Ok(()) => {
                self.relay_on = on;
                self.switches[usize::from(!on)] += 1;
                self.last_error = None;
                println!("bypass: relay {} (role {role:?})", relay_text(on));
            }
            Err(e) => self.failed(e, now),
        }
    }

    /// The main loop's part, every pass: notices from the card, a status read now and
    /// then, and the relay made to follow `role`.
    pub fn poll(&mut self, role: Option<ForwardingRole>, now: Instant) {
        self.driver.poll();
        self.note_fired();
        if now < self.quiet_until {
            return;
        }
        if now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            match self.request(|card| card.status()) {
                Ok(status) => {
                    if status.watchdog_fired && self.armed && !status.watchdog_armed {
                        // The notice was lost; the status tells.
                        self.fired += 1;
                    }
                    self.relay_on = status.bypassing;
                    self.armed = status.watchdog_armed;
                }
                Err(e) => return self.failed(e, now),
            }
        }
        let Some(role) = role else {
            return;
        };
        // A box the liveness monitor gave up on stays bypassed (its kicks are withheld:
        // opening the relay would only let the card fire again).
        let want_on =
            role == ForwardingRole::Bypass || !liveness::healthy() || !liveness::card_healthy();
        if !self.armed {
            // Arm before opening: from the moment traffic goes through the box, a hang
            // must close the relay again.
            self.arm(now);
            if !self.armed {
                return;
            }
        }
        if want_on != self.relay_on {
            self.switch(want_on, role, now);
        }
    }

    /// The relay is closed (the box is bypassed), as last seen.
    pub fn relay_closed(&self) -> bool {
        self.relay_on
    }

    /// `show bypass`.
    pub fn describe(&self, out: &mut alloc::string::String) {
        let (sent, skipped) = without_interrupts(|| {
            KICKER
                .lock()
                .as_ref()
                .map_or((0, 0), |k| (k.sent, k.skipped))
        });
        let c = self.driver.counters();
        let _ = write!(
            out,
            "card:    {} on COM2\r\nrelay:   {}\r\nwatchdog: {} ms, {}; fired {} time(s) since boot{}\r\n",
            self.driver.name(),
            relay_text(self.relay_on),
            self.timeout.as_millis(),
            if self.armed { "armed" } else { "not armed" },
            self.fired,
            if self.fired_before_boot {
                " (and before this boot)"
            } else {
                ""
            }
        );
        let _ = write!(
            out,
            "kicks:   {sent} sent, {skipped} skipped (line busy), {} withheld (box not healthy)\r\nswitches: closed {}, opened {}\r\nrequests: {}, timeouts {}, errors {}, stray lines {}, bad lines {}{}\r\n",
            KICKS_WITHHELD.load(Ordering::Relaxed),
            self.switches[0],
            self.switches[1],
            c.requests,
            c.timeouts,
            c.errors,
            c.stray_lines,
            c.bad_lines,
            match self.last_error {
                Some(e) => alloc::format!("; last error {e:?}"),
                None => alloc::string::String::new(),
            }
        );
    }
}
