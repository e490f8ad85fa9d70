//! Hardware watchdogs: the ICH9 TCO timer (iTCO) and the Intel 6300ESB.
//!
//! Both implement [`duplex_hal::Watchdog`]. Boot puts each into a known state (stopped,
//! status cleared) after reading whether the last reset came from it.
//!
//! Facts these drivers rely on (ICH9 datasheet, QEMU's models):
//! - iTCO: the TCO registers sit at PMBASE + 0x60 in I/O space (PMBASE in LPC config
//!   0x40, decoding enabled by 0x44 bit 7). TCO_TMR counts 0.6 s ticks and the box
//!   resets on the *second* expiry, so a timeout is 2 x TCO_TMR x 0.6 s; values 0 and 1
//!   never start the timer. The chipset's NO_REBOOT bit (GCS, RCBA + 0x3410, bit 5) must
//!   be clear or the second expiry does nothing. TCO2_STS bit 1 (SECOND_TO_STS) says the
//!   last reset came from the watchdog; TCO state survives resets.
//! - i6300ESB: PCI 8086:25ab, a 16-byte memory BAR. Config 0x60 (16-bit) selects reboot
//!   on timeout and the 1 kHz clock; 0x68 (8-bit) enables and locks. Each register
//!   write to the BAR must be preceded by the unlock sequence 0x80, 0x86 to +0x0C.
//!   Two stages of `preload` ticks of 2^15 / 33 MHz (0.993 ms) each run before the
//!   reset. Reload register bit 9 reads back "the last reset came from the watchdog".

use core::time::Duration;

use duplex_hal::{Error, Result, Watchdog};
use x86_64::instructions::port::Port;

use crate::pci::{Bar, ConfigSpace, PciAddress, PciFunction, command};

/// LPC bridges whose TCO this driver knows (ICH9 family; QEMU q35 is 8086:2918).
pub const ITCO_LPC_IDS: &[(u16, u16)] = &[
    (0x8086, 0x2916),
    (0x8086, 0x2917),
    (0x8086, 0x2918),
    (0x8086, 0x2919),
    (0x8086, 0x291a),
];
/// The i6300ESB watchdog function.
pub const I6300ESB_ID: (u16, u16) = (0x8086, 0x25ab);

const TCO_RLD: u16 = 0x00;
const TCO1_STS: u16 = 0x04;
const TCO2_STS: u16 = 0x06;
const TCO1_CNT: u16 = 0x08;
const TCO_TMR: u16 = 0x12;
const TCO1_STS_TIMEOUT: u16 = 1 << 3;
const TCO2_STS_SECOND_TO: u16 = 1 << 1;
const TCO2_STS_BOOT: u16 = 1 << 2;
const TCO1_CNT_TMR_HLT: u16 = 1 << 11;
const TCO1_CNT_LOCK: u16 = 1 << 12;
const GCS_OFFSET: usize = 0x3410;
const GCS_NO_REBOOT: u32 = 1 << 5;
/// One TCO_TMR tick counts twice (two expiries) of 0.6 s.
const TCO_TICK: Duration = Duration::from_millis(1200);
const DEFAULT_PMBASE: u32 = 0x600;
const DEFAULT_RCBA: u32 = 0xfed1_c000;

/// The ICH9 TCO watchdog.
pub struct Itco {
    tco_base: u16,
    gcs: usize,
    fired_before: bool,
    /// Firmware setup this driver had to do itself (PMBASE, RCBA), for the console.
    pub setup_notes: &'static str,
}

impl Itco {
    /// Finds the TCO through the LPC bridge `lpc`, sets PMBASE and RCBA when the
    /// firmware left them unset, reads whether the last reset came from the watchdog and
    /// stops the timer with its status cleared.
    ///
    /// # Safety
    /// `lpc` must be an ICH9-family LPC bridge (see [`ITCO_LPC_IDS`]); the I/O range
    /// PMBASE..PMBASE+0x80 and the 16 KiB at RCBA must be free for the chipset (PMBASE
    /// 0x600 and RCBA 0xfed1c000 are used when unset, as PC firmware does); RCBA must be
    /// identity-mapped; only one `Itco` may exist.
    pub unsafe fn new(config: &dyn ConfigSpace, lpc: &PciFunction) -> Result<Itco> {
        if !ITCO_LPC_IDS.contains(&(lpc.vendor, lpc.device)) {
            return Err(Error::Unsupported);
        }
        let a = lpc.address;
        let mut notes = "";
        let mut pmbase = config.read32(a, 0x40) & 0xff80;
        if pmbase == 0 {
            config.write32(a, 0x40, DEFAULT_PMBASE | 1);
            pmbase = DEFAULT_PMBASE;
            notes = "set PMBASE and RCBA (firmware left them unset)";
        }
        let acpi_control = config.read8(a, 0x44);
        if acpi_control & 0x80 == 0 {
            config.write8(a, 0x44, acpi_control | 0x80);
        }
        let mut rcba = config.read32(a, 0xf0);
        if rcba & 1 == 0 {
            config.write32(a, 0xf0, DEFAULT_RCBA | 1);
            rcba = DEFAULT_RCBA | 1;
        }
        let mut itco = Itco {
            tco_base: (pmbase + 0x60) as u16,
            gcs: (rcba & !0x3fff) as usize + GCS_OFFSET,
            fired_before: false,
            setup_notes: notes,
        };
        itco.fired_before = itco.read(TCO2_STS) & TCO2_STS_SECOND_TO != 0;
        itco.stop_and_clear();
        Ok(itco)
    }

    fn read(&self, register: u16) -> u16 {
        // SAFETY: `new`'s caller promised the TCO decodes at tco_base; reads of TCO
        // registers have no side effect.
        unsafe { Port::<u16>::new(self.tco_base + register).read() }
    }

    fn write(&mut self, register: u16, value: u16) {
        // SAFETY: as in `read`; the registers written are the documented ones.
        unsafe { Port::<u16>::new(self.tco_base + register).write(value) }
    }

    fn set_no_reboot(&mut self, on: bool) {
        let gcs = self.gcs as *mut u32;
        // SAFETY: `new`'s caller promised RCBA is the chipset's identity-mapped register
        // block; GCS is a 32-bit register at RCBA + 0x3410.
        unsafe {
            let value = core::ptr::read_volatile(gcs);
            let value = if on {
                value | GCS_NO_REBOOT
            } else {
                value & !GCS_NO_REBOOT
            };
            core::ptr::write_volatile(gcs, value);
        }
    }

    /// Clears the status bits. Real chipsets clear them on writing 1; QEMU's model
    /// stores the written value. Writing the bits, then zero, clears them on both.
    fn clear_status(&mut self) {
        self.write(TCO1_STS, TCO1_STS_TIMEOUT);
        self.write(TCO1_STS, 0);
        self.write(TCO2_STS, TCO2_STS_SECOND_TO | TCO2_STS_BOOT);
        self.write(TCO2_STS, 0);
    }

    fn stop_and_clear(&mut self) {
        let control = self.read(TCO1_CNT);
        self.write(TCO1_CNT, control | TCO1_CNT_TMR_HLT);
        self.clear_status();
    }

    /// The TCO's I/O base.
    pub fn io_base(&self) -> u16 {
        self.tco_base
    }

    /// True while the TCO timer counts.
    pub fn is_running(&self) -> bool {
        self.read(TCO1_CNT) & TCO1_CNT_TMR_HLT == 0
    }
}

impl Watchdog for Itco {
    fn name(&self) -> &'static str {
        "iTCO"
    }

    fn arm(&mut self, timeout: Duration) -> Result<Duration> {
        let (min, max) = self.timeout_range();
        if timeout < min || timeout > max {
            return Err(Error::OutOfRange);
        }
        let control = self.read(TCO1_CNT);
        if control & TCO1_CNT_LOCK != 0 && control & TCO1_CNT_TMR_HLT != 0 {
            return Err(Error::InvalidState);
        }
        let ticks = timeout
            .as_millis()
            .div_ceil(TCO_TICK.as_millis())
            .clamp(2, 1023) as u16;
        self.set_no_reboot(false);
        self.clear_status();
        let old = self.read(TCO_TMR);
        self.write(TCO_TMR, (old & !0x3ff) | ticks);
        self.write(TCO_RLD, 1);
        self.write(TCO1_CNT, control & !TCO1_CNT_TMR_HLT);
        Ok(TCO_TICK * u32::from(ticks))
    }

    fn kick(&mut self) {
        self.write(TCO_RLD, 1);
    }

    fn disarm(&mut self) {
        let control = self.read(TCO1_CNT);
        self.write(TCO1_CNT, control | TCO1_CNT_TMR_HLT);
        self.set_no_reboot(true);
    }

    fn last_reset_was_watchdog(&self) -> bool {
        self.fired_before
    }

    fn timeout_range(&self) -> (Duration, Duration) {
        (TCO_TICK * 2, TCO_TICK * 1023)
    }
}

const ESB_CONFIG: u8 = 0x60;
const ESB_LOCK: u8 = 0x68;
const ESB_TIMER1: usize = 0x00;
const ESB_TIMER2: usize = 0x04;
const ESB_RELOAD: usize = 0x0c;
const ESB_LOCK_ENABLE: u8 = 1 << 1;
const ESB_RELOAD_PING: u16 = 1 << 8;
const ESB_RELOAD_FIRED: u16 = 1 << 9;
/// Config: reboot on timeout (bit 5 clear), 1 kHz clock (bit 2 clear), no interrupt.
const ESB_CONFIG_VALUE: u16 = 0x0003;
/// One preload tick in nanoseconds at the 1 kHz setting: 2^15 / 33 MHz.
const ESB_TICK_NANOS: u64 = 992_970;
const ESB_MAX_PRELOAD: u64 = 0xf_ffff;

/// The Intel 6300ESB watchdog.
pub struct I6300Esb {
    config: &'static (dyn ConfigSpace + Sync),
    address: PciAddress,
    base: usize,
    fired_before: bool,
}

impl I6300Esb {
    /// Takes over the watchdog function `function`: enables its BAR, selects reboot on
    /// timeout with the 1 kHz clock, reads and clears the "last reset was the watchdog"
    /// flag, and stops it.
    ///
    /// # Safety
    /// `function` must be an i6300ESB watchdog with its BAR0 assigned and identity-mapped;
    /// only one `I6300Esb` may exist for it.
    pub unsafe fn new(
        config: &'static (dyn ConfigSpace + Sync),
        function: &PciFunction,
    ) -> Result<I6300Esb> {
        if (function.vendor, function.device) != I6300ESB_ID {
            return Err(Error::Unsupported);
        }
        let Bar::Memory { address, .. } = function.bars[0] else {
            return Err(Error::InvalidState);
        };
        if address == 0 {
            return Err(Error::InvalidState);
        }
        function.enable(config, command::MEMORY_SPACE);
        let mut esb = I6300Esb {
            config,
            address: function.address,
            base: address as usize,
            fired_before: false,
        };
        if config.read8(esb.address, ESB_LOCK) & 1 == 0 {
            config.write8(esb.address, ESB_LOCK, 0);
        }
        config.write16(esb.address, ESB_CONFIG, ESB_CONFIG_VALUE);
        esb.fired_before = esb.read16(ESB_RELOAD) & ESB_RELOAD_FIRED != 0;
        esb.unlock();
        esb.write16(ESB_RELOAD, ESB_RELOAD_FIRED);
        Ok(esb)
    }

    fn read16(&self, offset: usize) -> u16 {
        // SAFETY: `new`'s caller promised BAR0 is this device's identity-mapped register
        // block of 16 bytes; offset is one of its registers.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u16) }
    }

    fn write16(&mut self, offset: usize, value: u16) {
        // SAFETY: as in `read16`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u16, value) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `read16`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// The register-unlock sequence; it allows exactly one following write.
    fn unlock(&mut self) {
        self.write16(ESB_RELOAD, 0x80);
        self.write16(ESB_RELOAD, 0x86);
    }

    /// True while the watchdog counts.
    pub fn is_running(&self) -> bool {
        self.config.read8(self.address, ESB_LOCK) & ESB_LOCK_ENABLE != 0
    }
}

impl Watchdog for I6300Esb {
    fn name(&self) -> &'static str {
        "i6300ESB"
    }

    fn arm(&mut self, timeout: Duration) -> Result<Duration> {
        let (min, max) = self.timeout_range();
        if timeout < min || timeout > max {
            return Err(Error::OutOfRange);
        }
        if self.config.read8(self.address, ESB_LOCK) & 1 != 0 {
            return Err(Error::InvalidState);
        }
        // Two equal stages add up to the timeout.
        let stage_nanos = timeout.as_nanos() as u64 / 2;
        let preload = (stage_nanos / ESB_TICK_NANOS).clamp(1, ESB_MAX_PRELOAD);
        self.unlock();
        self.write32(ESB_TIMER1, preload as u32);
        self.unlock();
        self.write32(ESB_TIMER2, preload as u32);
        self.config.write8(self.address, ESB_LOCK, ESB_LOCK_ENABLE);
        self.kick();
        Ok(Duration::from_nanos(2 * preload * ESB_TICK_NANOS))
    }

    fn kick(&mut self) {
        self.unlock();
        self.write16(ESB_RELOAD, ESB_RELOAD_PING);
    }

    fn disarm(&mut self) {
        self.config.write8(self.address, ESB_LOCK, 0);
    }

    fn last_reset_was_watchdog(&self) -> bool {
        self.fired_before
    }

    fn timeout_range(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(2 * ESB_TICK_NANOS),
            Duration::from_nanos(2 * ESB_MAX_PRELOAD * ESB_TICK_NANOS),
        )
    }
}
