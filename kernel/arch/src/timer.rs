//! The 1 kHz tick and the monotonic clock.
//!
//! - The TSC is the clock: calibrated once against the i8254 PIT (channel 2, 10 ms),
//!   then read with `rdtsc` and scaled to nanoseconds. It never depends on interrupts
//!   arriving, so a late or lost tick does not bend time.
//! - The tick comes from the local APIC timer where the CPU has one (calibrated in the
//!   same 10 ms window), else from PIT channel 0 through the 8259 PIC. Either way it is
//!   vector [`TIMER_VECTOR`](crate::cpu::TIMER_VECTOR) at 1 kHz. The PIT also runs at
//!   4 kHz on [`WAKE_VECTOR`](crate::cpu::WAKE_VECTOR) to wake the main loop (without a
//!   local APIC the PIT runs at 1 kHz and is the tick).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use duplex_hal::{Clock, Instant};
use x86_64::instructions::port::Port;

/// Tick rate in Hz: the rate of [`ticks`] and of the tick hook.
pub const TICK_HZ: u64 = 1000;
/// PIT interrupts per tick when the local APIC timer makes the tick. The PIT then runs at
/// `TICK_HZ * WAKES_PER_TICK` (4 kHz) so that the main loop, which sleeps in `hlt` when it
/// has nothing to do, wakes every 250 us to poll its NICs (they run without interrupts).
/// Without a local APIC the PIT runs at 1 kHz and is the tick itself.
pub const WAKES_PER_TICK: u64 = 4;
const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;
const LAPIC_BASE: usize = 0xfee0_0000;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_LVT_LINT0: usize = 0x350;
const LAPIC_INITIAL_COUNT: usize = 0x380;
const LAPIC_CURRENT_COUNT: usize = 0x390;
const LAPIC_DIVIDE: usize = 0x3e0;

static TICKS: AtomicU64 = AtomicU64::new(0);
static WAKES: AtomicU64 = AtomicU64::new(0);
static TSC_BASE: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// ns = (tsc_delta * MULT) >> 32
static TSC_MULT: AtomicU64 = AtomicU64::new(0);
static USE_LAPIC: AtomicBool = AtomicBool::new(false);
/// The tick comes from every eighth PIT interrupt (no local APIC timer).
static PIT_TICKS: AtomicBool = AtomicBool::new(false);
static LAPIC_COUNT_PER_TICK: AtomicU64 = AtomicU64::new(0);

/// Which device drives the tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickSource {
    /// i8254 PIT channel 0 through the 8259 PIC.
    Pit,
    /// Local APIC timer, periodic mode.
    LocalApic,
}

/// What the caller wants for the tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickPreference {
    /// Local APIC when present, else PIT.
    Auto,
    /// Always the PIT.
    Pit,
}

/// Calibration results.
#[derive(Debug, Clone, Copy)]
pub struct TimerInfo {
    /// The tick source in use.
    pub source: TickSource,
    /// Measured TSC frequency.
    pub tsc_hz: u64,
    /// Local APIC timer counts per tick (divide by 16), 0 with the PIT.
    pub lapic_count_per_tick: u64,
}

fn rdtsc() -> u64 {
    let low: u32;
    let high: u32;
    // SAFETY: rdtsc reads the time-stamp counter; it has no other effect.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack));
    }
    (u64::from(high) << 32) | u64::from(low)
}

fn lapic_read(offset: usize) -> u32 {
    // SAFETY: the local APIC's registers are memory-mapped at LAPIC_BASE, which the boot
    // page tables identity-map; a 32-bit aligned read of a defined register is allowed.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + offset) as *const u32) }
}

fn lapic_write(offset: usize, value: u32) {
    // SAFETY: as in `lapic_read`; the offsets used are the documented writable registers.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + offset) as *mut u32, value) }
}

fn has_lapic() -> bool {
    // CPUID leaf 1 exists on every x86_64 CPU.
    let leaf = core::arch::x86_64::__cpuid(1);
    leaf.edx & (1 << 9) != 0
}

/// # Safety
/// `port` must be a port whose write does what the caller means (PIC/PIT registers).
unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// # Safety
/// Reading `port` must have no harmful side effect.
unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u8>::new(port).read() }
}

fn pic_init(unmask_timer: bool) {
    // SAFETY: the ICW sequence below is the documented 8259 initialisation: vectors
    // 40..55, cascade on IRQ 2, 8086 mode. Then everything is masked but (maybe) IRQ 0.
    unsafe {
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, crate::cpu::IRQ_BASE);
        outb(0xa1, crate::cpu::IRQ_BASE + 8);
        outb(0x21, 4);
        outb(0xa1, 2);
        outb(0x21, 0x01);
        outb(0xa1, 0x01);
        outb(0x21, if unmask_timer { 0xfe } else { 0xff });
        outb(0xa1, 0xff);
    }
}

/// One paired reading: the PIT channel-2 count, the local APIC current count and the
/// TSC in the middle of the reads, and how long the reads took in TSC counts.
struct Sample {
    pit: u16,
    apic: u32,
    tsc: u64,
    spread: u64,
}

fn sample(lapic: bool) -> Sample {
    let before = rdtsc();
    // SAFETY: 0x80 to 0x43 latches channel 2's count; two reads of 0x42 return it, low
    // byte first.
    let pit = unsafe {
        outb(0x43, 0x80);
        let low = inb(0x42);
        let high = inb(0x42);
        u16::from_le_bytes([low, high])
    };
    let apic = if lapic {
        lapic_read(LAPIC_CURRENT_COUNT)
    } else {
        0
    };
    let after = rdtsc();
    Sample {
        pit,
        apic,
        tsc: before + (after - before) / 2,
        spread: after - before,
    }
}

/// The sample with the shortest read time of a few, so a read delayed by the host
/// (TCG takes a lock for port I/O) does not skew the calibration.
fn best_sample(lapic: bool) -> Sample {
    let mut best = sample(lapic);
    for _ in 0..4 {
        let s = sample(lapic);
        if s.spread < best.spread {
            best = s;
        }
    }
    best
}

/// Measures the TSC (and the local APIC timer, when `lapic`) against PIT channel 2
/// counting down from 0xffff in mode 0 for about [`CALIBRATION_MS`]. Returns the PIT
/// counts, TSC counts and APIC counts between two paired readings.
fn calibrate(lapic: bool) -> (u64, u64, u64) {
    let window = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    if lapic {
        lapic_write(LAPIC_DIVIDE, 0x3);
        lapic_write(LAPIC_LVT_TIMER, 1 << 16); // masked, one-shot
        lapic_write(LAPIC_INITIAL_COUNT, u32::MAX);
    }
    // SAFETY: port 0x61 bit 0 gates PIT channel 2 and bit 1 drives the speaker (kept off);
    // 0xb0 to 0x43 selects channel 2, lobyte/hibyte, mode 0; then the count 0xffff.
    unsafe {
        let gate = (inb(0x61) & !0x02) | 0x01;
        outb(0x61, gate & !0x01);
        outb(0x43, 0xb0);
        outb(0x42, 0xff);
        outb(0x42, 0xff);
        outb(0x61, gate);
    }
    let first = best_sample(lapic);
    loop {
        let s = sample(lapic);
        if first.pit.wrapping_sub(s.pit) >= window {
            break;
        }
        core::hint::spin_loop();
    }
    let last = best_sample(lapic);
    if lapic {
        lapic_write(LAPIC_INITIAL_COUNT, 0);
    }
    (
        u64::from(first.pit.wrapping_sub(last.pit)),
        last.tsc.wrapping_sub(first.tsc),
        u64::from(first.apic.wrapping_sub(last.apic)),
    )
}

/// Calibrates the clock and starts the 1 kHz tick. Interrupts must still be disabled;
/// the caller enables them afterwards.
pub fn init(preference: TickPreference) -> TimerInfo {
    let lapic = preference == TickPreference::Auto && has_lapic();
    pic_init(false);
    let (pit, tsc, apic) = calibrate(lapic);
    let pit = pit.max(1);
    let tsc_hz = (u128::from(tsc) * u128::from(PIT_HZ) / u128::from(pit)).max(1) as u64;
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    TSC_MULT.store(
        ((1_000_000_000u128 << 32) / u128::from(tsc_hz)) as u64,
        Ordering::Relaxed,
    );
    TSC_BASE.store(rdtsc(), Ordering::Relaxed);

    let per_tick =
        (u128::from(apic) * u128::from(PIT_HZ) / (u128::from(pit) * u128::from(TICK_HZ))) as u64;
    // The PIT wakes the main loop (4 kHz with a local APIC timer, else 1 kHz as the tick),
    // through the PIC; the local APIC's LINT0 in virtual-wire mode passes it on.
    // Without a local APIC timer the PIT is the tick itself, at 1 kHz.
    let use_lapic = lapic && per_tick > 0;
    let rate = if use_lapic {
        TICK_HZ * WAKES_PER_TICK
    } else {
        TICK_HZ
    };
    let divisor = ((PIT_HZ + rate / 2) / rate) as u16;
    // SAFETY: 0x34 selects channel 0, lobyte/hibyte, mode 2 (rate generator).
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, divisor as u8);
        outb(0x40, (divisor >> 8) as u8);
    }
    pic_init(true);
    if has_lapic() {
        // Firmware usually leaves the local APIC in virtual-wire mode (LINT0 = ExtINT) so
        // the PIC's interrupts reach the CPU; minimal firmware does not.
        lapic_write(LAPIC_SVR, 0x100 | u32::from(crate::cpu::SPURIOUS_VECTOR));
        lapic_write(LAPIC_LVT_LINT0, 0x700);
    }
    if lapic && per_tick > 0 {
        USE_LAPIC.store(true, Ordering::Relaxed);
        LAPIC_COUNT_PER_TICK.store(per_tick, Ordering::Relaxed);
        // Software-enable the APIC with the spurious vector, then a periodic timer.
        lapic_write(LAPIC_SVR, 0x100 | u32::from(crate::cpu::SPURIOUS_VECTOR));
        lapic_write(LAPIC_DIVIDE, 0x3);
        lapic_write(
            LAPIC_LVT_TIMER,
            u32::from(crate::cpu::TIMER_VECTOR) | (1 << 17),
        );
        lapic_write(LAPIC_INITIAL_COUNT, per_tick as u32);
        TimerInfo {
            source: TickSource::LocalApic,
            tsc_hz,
            lapic_count_per_tick: per_tick,
        }
    } else {
        PIT_TICKS.store(true, Ordering::Relaxed);
        TimerInfo {
            source: TickSource::Pit,
            tsc_hz,
            lapic_count_per_tick: 0,
        }
    }
}

/// Called by the dispatcher on every tick interrupt (the local APIC timer, 1 kHz).
pub(crate) fn on_tick() {
    let ticks = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
    crate::hooks::tick(ticks);
}

/// Called by the dispatcher on every PIT interrupt: wakes the main loop; without a local
/// APIC timer it is also the tick.
pub(crate) fn on_wake() {
    WAKES.fetch_add(1, Ordering::Relaxed);
    if PIT_TICKS.load(Ordering::Relaxed) {
        on_tick();
    }
}

/// Timer interrupts taken since boot (`WAKES_PER_TICK` per tick).
pub fn wakes() -> u64 {
    WAKES.load(Ordering::Relaxed)
}

/// Acknowledges an interrupt at the controller that raised it.
pub(crate) fn end_of_interrupt(vector: u8) {
    if USE_LAPIC.load(Ordering::Relaxed) && vector == crate::cpu::TIMER_VECTOR {
        lapic_write(LAPIC_EOI, 0);
        return;
    }
    if vector < crate::cpu::IRQ_BASE {
        return;
    }
    // SAFETY: 0x20 to a PIC's command port is the non-specific end-of-interrupt.
    unsafe {
        if vector >= crate::cpu::IRQ_BASE + 8 {
            outb(0xa0, 0x20);
        }
        outb(0x20, 0x20);
    }
}

/// Timer interrupts taken since boot.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// The calibrated TSC frequency in Hz (0 before [`init`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Monotonic time since the clock was calibrated.
pub fn now() -> Instant {
    let delta = rdtsc().wrapping_sub(TSC_BASE.load(Ordering::Relaxed));
    let mult = TSC_MULT.load(Ordering::Relaxed);
    Instant::from_nanos(((u128::from(delta) * u128::from(mult)) >> 32) as u64)
}

/// Busy-waits for `d` (used only at boot, before the main loop runs).
pub fn spin_for(d: core::time::Duration) {
    let end = now() + d;
    while now() < end {
        core::hint::spin_loop();
    }
}

/// The TSC clock as a [`Clock`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TscClock;

impl Clock for TscClock {
    fn now(&self) -> Instant {
        now()
    }
}
