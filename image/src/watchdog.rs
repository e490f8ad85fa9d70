//! The hardware watchdog: probed at boot, kicked from the timer interrupt while the
//! liveness monitor says the appliance is healthy.

use alloc::boxed::Box;
use core::time::Duration;

use duplex_drivers::pci::{PciFunction, PortConfigSpace};
use duplex_drivers::watchdog::{I6300ESB_ID, I6300Esb, ITCO_LPC_IDS, Itco};
use duplex_hal::Watchdog;
use duplex_mgmt::options::WatchdogChoice;
use spin::Mutex;

use crate::println;

/// The armed watchdog, shared by the main loop (commands) and the timer interrupt
/// (kicks). The main loop locks it only with interrupts disabled, so the interrupt
/// never finds it locked.
pub static WATCHDOG: Mutex<Option<Box<dyn Watchdog + Send>>> = Mutex::new(None);

/// What boot found and did, for `show watchdog`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchdogInfo {
    /// The device in use ("none" without one).
    pub name: &'static str,
    /// The armed timeout.
    pub timeout: Option<Duration>,
    /// The device said the last reset came from it.
    pub last_reset_was_watchdog: bool,
}

/// Default timeouts: the i6300ESB can be tight; the iTCO's shortest is 2.4 s.
fn default_timeout(name: &str) -> Duration {
    match name {
        "i6300ESB" => Duration::from_millis(1000),
        _ => Duration::from_millis(2400),
    }
}

/// Finds the watchdog `choice` asks for, arms it and installs it for the interrupt.
pub fn init(
    config: &'static PortConfigSpace,
    pci: &[PciFunction],
    choice: WatchdogChoice,
    timeout_ms: Option<u32>,
) -> WatchdogInfo {
    let esb = || {
        let f = pci.iter().find(|f| (f.vendor, f.device) == I6300ESB_ID)?;
        // SAFETY: an i6300ESB found by enumeration with BAR0 assigned below 4 GiB
        // (identity-mapped); this is the only instance.
        match unsafe { I6300Esb::new(config, f) } {
            Ok(w) => Some(Box::new(w) as Box<dyn Watchdog + Send>),
            Err(e) => {
                println!(
                    "{}watchdog: i6300ESB at {}: {e}",
                    duplex_mgmt::markers::ERROR,
                    f.address
                );
                None
            }
        }
    };
    let itco = || {
        let f = pci
            .iter()
            .find(|f| ITCO_LPC_IDS.contains(&(f.vendor, f.device)))?;
        // SAFETY: the ICH9 LPC bridge; PMBASE/RCBA are the chipset's (set to the PC
        // defaults when unset); this is the only instance.
        match unsafe { Itco::new(config, f) } {
            Ok(w) => {
                if !w.setup_notes.is_empty() {
                    println!("watchdog: iTCO: {}", w.setup_notes);
                }
                Some(Box::new(w) as Box<dyn Watchdog + Send>)
            }
            Err(e) => {
                println!(
                    "{}watchdog: iTCO at {}: {e}",
                    duplex_mgmt::markers::ERROR,
                    f.address
                );
                None
            }
        }
    };
    let found = match choice {
        WatchdogChoice::Auto => esb().or_else(itco),
        WatchdogChoice::I6300Esb => esb(),
        WatchdogChoice::Itco => itco(),
        WatchdogChoice::None => None,
    };
    let Some(mut watchdog) = found else {
        if choice != WatchdogChoice::None {
            println!("watchdog: none found ({choice:?}); the liveness monitor runs without one");
        }
        return WatchdogInfo {
            name: "none",
            ..WatchdogInfo::default()
        };
    };
    let last = watchdog.last_reset_was_watchdog();
    if last {
        println!(
            "watchdog: the last reset was caused by the {} watchdog",
            watchdog.name()
        );
    }
    let wanted = timeout_ms.map_or_else(
        || default_timeout(watchdog.name()),
        |ms| Duration::from_millis(u64::from(ms)),
    );
    let timeout = match watchdog.arm(wanted) {
        Ok(actual) => {
            println!(
                "watchdog: {} armed, timeout {} ms",
                watchdog.name(),
                actual.as_millis()
            );
            Some(actual)
        }
        Err(e) => {
            let (min, max) = watchdog.timeout_range();
            println!(
                "{}watchdog: {} cannot use {} ms ({e}; range {}-{} ms); left disarmed",
                duplex_mgmt::markers::ERROR,
                watchdog.name(),
                wanted.as_millis(),
                min.as_millis(),
                max.as_millis()
            );
            None
        }
    };
    let info = WatchdogInfo {
        name: watchdog.name(),
        timeout,
        last_reset_was_watchdog: last,
    };
    x86_64::instructions::interrupts::without_interrupts(|| *WATCHDOG.lock() = Some(watchdog));
    info
}

/// Kicks the watchdog; called from the timer interrupt.
pub fn kick_from_interrupt() {
    if let Some(mut guard) = WATCHDOG.try_lock()
        && let Some(watchdog) = guard.as_mut()
    {
        watchdog.kick();
    }
}
