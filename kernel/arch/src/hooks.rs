//! Hooks through which the machine layer calls up into the appliance.
//!
//! The machine layer prints reports (exceptions) before anything else may still work,
//! and calls the appliance on every timer tick. The appliance installs plain function
//! pointers here at boot; until then reports go to COM1 directly.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

static REPORT: AtomicUsize = AtomicUsize::new(0);
static TICK: AtomicUsize = AtomicUsize::new(0);
static IRQ: AtomicUsize = AtomicUsize::new(0);

/// Where reports go: a function that writes a string, unbuffered, without locks that
/// the interrupted code may hold.
pub type ReportFn = fn(&str);
/// Called from the timer interrupt with the tick count, interrupts disabled.
pub type TickFn = fn(u64);
/// Called for device interrupts with the vector; returns true if handled.
pub type IrqFn = fn(u8) -> bool;

/// Installs the report sink.
pub fn set_report(f: ReportFn) {
    REPORT.store(f as usize, Ordering::SeqCst);
}

/// Installs the timer-tick hook.
pub fn set_tick(f: TickFn) {
    TICK.store(f as usize, Ordering::SeqCst);
}

/// Installs the device-interrupt hook.
pub fn set_irq(f: IrqFn) {
    IRQ.store(f as usize, Ordering::SeqCst);
}

pub(crate) fn tick(ticks: u64) {
    let f = TICK.load(Ordering::Relaxed);
    if f != 0 {
        // SAFETY: only `set_tick` stores here, and it stores a `TickFn`.
        let f: TickFn = unsafe { core::mem::transmute::<usize, TickFn>(f) };
        f(ticks);
    }
}

pub(crate) fn irq(vector: u8) -> bool {
    let f = IRQ.load(Ordering::Relaxed);
    if f == 0 {
        return false;
    }
    // SAFETY: only `set_irq` stores here, and it stores an `IrqFn`.
    let f: IrqFn = unsafe { core::mem::transmute::<usize, IrqFn>(f) };
    f(vector)
}

/// A `fmt::Write` that goes to the report sink (or straight to COM1 before one exists).
pub struct ReportWriter;

impl fmt::Write for ReportWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let f = REPORT.load(Ordering::Relaxed);
        if f != 0 {
            // SAFETY: only `set_report` stores here, and it stores a `ReportFn`.
            let f: ReportFn = unsafe { core::mem::transmute::<usize, ReportFn>(f) };
            f(s);
        } else {
            crate::machine::early_com1_write(s);
        }
        Ok(())
    }
}
