//! The liveness monitor in the timer interrupt (the paper's failure detection "in the
//! timer ISR").
//!
//! Services register with a deadline and an action. They prove they run with
//! [`iam_alive`]; the timer interrupt checks every registered service on every tick
//! (1 kHz) and, on a miss, acts at interrupt level, so it acts even when the main loop is
//! hung:
//! - `Reset`: the interrupt stops kicking the hardware watchdog, which then resets the box;
//! - `Failover`, `Suspend`, `Bypass`: the node must stop (no heartbeats, no forwarding):
//!   the main loop, if it still runs, turns the miss into a local failure of the Duplex
//!   node; if it does not, its heartbeats have stopped anyway;
//! - `Bypass` also stops kicking the bypass card, whose own watchdog closes the relay;
//! - `Restart`: reported; the main loop restarts the service's state.
//!
//! The hardware watchdog is kicked only while no service whose action is `Reset` has
//! missed its deadline. When the interrupt itself has not run for a while (the whole
//! machine stood still: a stalled or paused virtual CPU), every deadline restarts from
//! the moment it runs again, so a stall of the machine is not taken for a hung service. Everything here is atomics: the interrupt never waits for a lock
//! the main loop may hold.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use duplex_core::MissAction;
use duplex_hal::Instant;

/// Most services.
pub const MAX_SERVICES: usize = 8;

struct Slot {
    deadline_ns: AtomicU64,
    last_alive_ns: AtomicU64,
    stalled_until_ns: AtomicU64,
    action: AtomicU8,
    missed: AtomicBool,
    misses: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            deadline_ns: AtomicU64::new(0),
            last_alive_ns: AtomicU64::new(0),
            stalled_until_ns: AtomicU64::new(0),
            action: AtomicU8::new(0),
            missed: AtomicBool::new(false),
            misses: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; MAX_SERVICES] = [const { Slot::new() }; MAX_SERVICES];
static NAMES: spin::Mutex<[&str; MAX_SERVICES]> = spin::Mutex::new([""; MAX_SERVICES]);
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// False once a `Reset` service missed: the interrupt stops kicking the watchdog.
static HEALTHY: AtomicBool = AtomicBool::new(true);
/// False once a `Bypass` service missed: the interrupt stops kicking the bypass card.
static CARD_HEALTHY: AtomicBool = AtomicBool::new(true);

/// A registered service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service(pub usize);

fn action_code(action: MissAction) -> u8 {
    match action {
        MissAction::Restart => 1,
        MissAction::Failover => 2,
        MissAction::Suspend => 3,
        MissAction::Bypass => 4,
        MissAction::Reset => 5,
    }
}

fn action_of(code: u8) -> MissAction {
    match code {
        1 => MissAction::Restart,
        2 => MissAction::Failover,
        3 => MissAction::Suspend,
        4 => MissAction::Bypass,
        _ => MissAction::Reset,
    }
}

/// Registers a service (at boot, before interrupts use it). `None` when full.
pub fn register(
    name: &'static str,
    deadline: Duration,
    action: MissAction,
    now: Instant,
) -> Option<Service> {
    let index = COUNT.load(Ordering::Acquire);
    if index >= MAX_SERVICES {
        return None;
    }
    let slot = &SLOTS[index];
    slot.deadline_ns
        .store(deadline.as_nanos() as u64, Ordering::Relaxed);
    slot.last_alive_ns.store(now.as_nanos(), Ordering::Relaxed);
    slot.action.store(action_code(action), Ordering::Relaxed);
    x86_64::instructions::interrupts::without_interrupts(|| NAMES.lock()[index] = name);
    COUNT.store(index + 1, Ordering::Release);
    Some(Service(index))
}

/// The service proves it runs (ignored while a `debug stall` is in force).
pub fn iam_alive(service: Service, now: Instant) {
    let slot = &SLOTS[service.0];
    if now.as_nanos() >= slot.stalled_until_ns.load(Ordering::Relaxed) {
        slot.last_alive_ns.store(now.as_nanos(), Ordering::Relaxed);
    }
}

/// How long `service` has not proved it runs (as of `now`).
pub fn silent_for(service: Service, now: Instant) -> Duration {
    let last = SLOTS[service.0].last_alive_ns.load(Ordering::Relaxed);
    Duration::from_nanos(now.as_nanos().saturating_sub(last))
}

/// `debug stall SERVICE MS`: the named service stops proving it runs for `duration`.
pub fn stall(name: &str, duration: Duration, now: Instant) -> bool {
    match find(name) {
        Some(index) => {
            SLOTS[index]
                .stalled_until_ns
                .store((now + duration).as_nanos(), Ordering::Relaxed);
            true
        }
        None => false,
    }
}

fn find(name: &str) -> Option<usize> {
    let names = x86_64::instructions::interrupts::without_interrupts(|| *NAMES.lock());
    (0..COUNT.load(Ordering::Acquire)).find(|&i| names[i] == name)
}

/// The registered names (for error messages).
pub fn names() -> alloc::vec::Vec<&'static str> {
    let names = x86_64::instructions::interrupts::without_interrupts(|| *NAMES.lock());
    names[..COUNT.load(Ordering::Acquire)].to_vec()
}

/// True while the hardware watchdog may be kicked.
pub fn healthy() -> bool {
    HEALTHY.load(Ordering::Relaxed)
}

/// True while the bypass card may be kicked.
pub fn card_healthy() -> bool {
    CARD_HEALTHY.load(Ordering::Relaxed)
}

/// The interrupt's own last check: a longer gap than [`STALL_GRACE`] means the whole
/// machine stood still (a stalled virtual CPU, a paused VM), not one service.
static LAST_CHECK_NS: AtomicU64 = AtomicU64::new(0);
/// A gap between two checks longer than this restarts every service's deadline.
pub const STALL_GRACE: Duration = Duration::from_millis(20);

/// The timer interrupt's check, once per tick.
pub fn check_from_interrupt(now: Instant) {
    let now_ns = now.as_nanos();
    let last = LAST_CHECK_NS.swap(now_ns, Ordering::Relaxed);
    if last != 0 && now_ns.saturating_sub(last) > STALL_GRACE.as_nanos() as u64 {
        // The interrupt itself did not run: nobody ran. Give every service a fresh
        // deadline from now, as the Duplex node does for its peers after a freeze.
        for slot in SLOTS.iter().take(COUNT.load(Ordering::Acquire)) {
            slot.last_alive_ns.fetch_max(now_ns, Ordering::Relaxed);
        }
        return;
    }
    for index in 0..COUNT.load(Ordering::Acquire) {
        let slot = &SLOTS[index];
        let silent = now_ns.saturating_sub(slot.last_alive_ns.load(Ordering::Relaxed));
        let late = silent > slot.deadline_ns.load(Ordering::Relaxed);
        if late && !slot.missed.swap(true, Ordering::Relaxed) {
            slot.misses.fetch_add(1, Ordering::Relaxed);
            let action = action_of(slot.action.load(Ordering::Relaxed));
            match action {
                MissAction::Reset => HEALTHY.store(false, Ordering::Relaxed),
                MissAction::Bypass => CARD_HEALTHY.store(false, Ordering::Relaxed),
                _ => {}
            }
            // The report path never waits for the console lock.
            let name = NAMES.try_lock().map_or("?", |n| n[index]);
            let mut out = duplex_arch::hooks::ReportWriter;
            let _ = core::fmt::Write::write_fmt(
                &mut out,
                format_args!(
                    "\r\nliveness: service {name} missed its deadline ({} ms): action {action}\r\n",
                    slot.deadline_ns.load(Ordering::Relaxed) / 1_000_000
                ),
            );
        } else if !late && slot.missed.load(Ordering::Relaxed) {
            let action = action_of(slot.action.load(Ordering::Relaxed));
            // A reset decision stands: the box is going down. Others recover.
            if action != MissAction::Reset {
                slot.missed.store(false, Ordering::Relaxed);
                if action == MissAction::Bypass {
                    CARD_HEALTHY.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Services currently past their deadline whose action the Duplex node carries out
/// (`Failover`, `Suspend`, `Bypass`), as bits.
pub fn node_failures() -> u8 {
    let mut bits = 0;
    for (index, slot) in SLOTS.iter().enumerate().take(COUNT.load(Ordering::Acquire)) {
        let action = action_of(slot.action.load(Ordering::Relaxed));
        if slot.missed.load(Ordering::Relaxed)
            && matches!(
                action,
                MissAction::Failover | MissAction::Suspend | MissAction::Bypass
            )
        {
            bits |= 1 << index;
        }
    }
    bits
}

/// `show liveness`.
pub fn describe(now: Instant, out: &mut alloc::string::String) {
    use core::fmt::Write;
    let names = x86_64::instructions::interrupts::without_interrupts(|| *NAMES.lock());
    let _ = write!(
        out,
        "{:<12} {:>9} {:>10} {:<9} {:>6} state\r\n",
        "service", "deadline", "silent", "action", "misses"
    );
    for index in 0..COUNT.load(Ordering::Acquire) {
        let slot = &SLOTS[index];
        let silent = now
            .as_nanos()
            .saturating_sub(slot.last_alive_ns.load(Ordering::Relaxed));
        let _ = write!(
            out,
            "{:<12} {:>6} ms {:>7} ms {:<9} {:>6} {}\r\n",
            names[index],
            slot.deadline_ns.load(Ordering::Relaxed) / 1_000_000,
            silent / 1_000_000,
            action_of(slot.action.load(Ordering::Relaxed)).name(),
            slot.misses.load(Ordering::Relaxed),
            if slot.missed.load(Ordering::Relaxed) {
                "MISSED"
            } else {
                "ok"
            }
        );
    }
    let _ = write!(
        out,
        "hardware watchdog kicks: {}; bypass card kicks: {}\r\n",
        if healthy() {
            "on"
        } else {
            "STOPPED (a reset service missed)"
        },
        if card_healthy() {
            "on"
        } else {
            "STOPPED (a bypass service missed)"
        }
    );
}
