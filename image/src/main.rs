//! The Duplex appliance image.
//!
//! `kernel_main` wires the machine layer, the drivers and the portable core together
//! and runs the main loop. Policy lives in `kernel/*`, mechanism in `drivers/`; this
//! crate only wires.

#![no_std]
#![no_main]

extern crate alloc;

mod bypass;
mod console;
mod dataplane;
mod liveness;
mod net;
mod pair;
mod shell;
mod statelog;
mod watchdog;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::panic::PanicInfo;

use duplex_arch::BootInfo;
use duplex_arch::machine::{self, ExitCode};
use duplex_arch::timer::{self, TickPreference, TimerInfo};
use duplex_drivers::pci::{self, PciFunction, PortConfigSpace};
use duplex_hal::Instant;
use duplex_mgmt::editor::{Event, LineEditor};
use duplex_mgmt::markers;
use duplex_mgmt::options::{self, BootOptions, OptionError, SelfTest, TimerChoice};

/// The image's version string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit it was built from.
pub const COMMIT: &str = env!("DUPLEX_COMMIT");

/// PCI configuration space (legacy ports).
// SAFETY: the appliance runs on PC-compatible chipsets (q35, ICH) that decode
// 0xCF8/0xCFC as PCI configuration mechanism #1, and only this value uses them.
pub static PCI_CONFIG: PortConfigSpace = unsafe { PortConfigSpace::new() };

/// Everything the shell needs to answer.
pub struct System {
    /// The loader's information.
    pub boot: &'static BootInfo,
    /// Parsed boot options.
    pub options: BootOptions,
    /// Rejected boot options.
    pub option_errors: Vec<OptionError>,
    /// Timer calibration.
    pub timer: TimerInfo,
    /// PCI functions found at boot.
    pub pci: Vec<PciFunction>,
    /// The forwarding plane.
    pub dataplane: dataplane::Dataplane,
    /// The hardware watchdog.
    pub watchdog: watchdog::WatchdogInfo,
    /// The Duplex node (none when standalone).
    pub duplex: Option<pair::Duplex>,
    /// Gaps between main-loop passes (the loop's own liveness, as the host lets it run).
    pub loop_gaps: LoopGaps,
    /// The image's services in the liveness monitor.
    pub services: Option<Services>,
    /// The replicated state log.
    pub statelog: statelog::StateLog,
    /// The bypass card (serial mode).
    pub bypass: Option<bypass::Card>,
}

/// Counts of gaps between main-loop passes, by size.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopGaps {
    /// The longest gap.
    pub max: core::time::Duration,
    /// Gaps over 1, 2, 4, 8, 16 and 32 ms.
    pub over_ms: [u64; 6],
}

impl LoopGaps {
    /// Records one gap.
    pub fn record(&mut self, gap: core::time::Duration) {
        self.max = self.max.max(gap);
        let ms = gap.as_micros() / 1000;
        for (i, limit) in [1u128, 2, 4, 8, 16, 32].iter().enumerate() {
            if ms >= *limit {
                self.over_ms[i] += 1;
            }
        }
    }
}

#[unsafe(no_mangle)]
fn kernel_main(boot: &'static BootInfo) -> ! {
    console::init();
    duplex_arch::hooks::set_report(console::report);
    println!();
    println!(
        "{} {} ({}) booting via {:?}",
        markers::BANNER,
        VERSION,
        COMMIT,
        boot.protocol
    );
    println!(
        "cmdline: '{}'{}",
        boot.cmdline(),
        if boot.cmdline_truncated {
            " (truncated)"
        } else {
            ""
        }
    );

    let (options, option_errors) = options::parse(boot.cmdline());
    for error in &option_errors {
        println!("{}{}", markers::ERROR, error);
    }
    let (heap_size, _) = duplex_arch::memory::heap_stats();
    println!(
        "memory: {} MiB RAM in {} regions, heap {} MiB",
        boot.total_ram() >> 20,
        boot.regions().len(),
        heap_size >> 20
    );

    run_selftest(options.selftest);

    let preference = match options.timer {
        TimerChoice::Auto => TickPreference::Auto,
        TimerChoice::Pit => TickPreference::Pit,
    };
    let timer = timer::init(preference);
    x86_64::instructions::interrupts::enable();
    println!(
        "timer: {:?} at {} Hz, TSC {}.{:03} MHz",
        timer.source,
        timer::TICK_HZ,
        timer.tsc_hz / 1_000_000,
        (timer.tsc_hz / 1_000) % 1_000
    );

    let mut pci = pci::enumerate(&PCI_CONFIG);
    println!("pci: {} functions", pci.len());
    // Minimal firmware (qboot) leaves BARs unassigned; full firmware assigns them all.
    match pci::assign_unassigned(&PCI_CONFIG, &mut pci, &pci::ResourceWindows::QEMU_PC) {
        Ok(0) => {}
        Ok(n) => println!("pci: assigned {n} BARs the firmware left unassigned"),
        Err(e) => println!("{}pci: {e}", markers::ERROR),
    }
    for function in &pci {
        println!("  {function}");
    }

    let ports = net::probe(&PCI_CONFIG, &pci);
    let now = timer::now();
    let management = match (options.ip, ports.first()) {
        (Some(cidr), Some(lan)) => Some(net::Management::new(lan.nic.mac_address(), cidr, now)),
        (Some(_), None) => {
            println!("{}net: ip= given but no NIC to put it on", markers::ERROR);
            None
        }
        _ => None,
    };
    let dataplane = dataplane::Dataplane::new(ports, management, now.as_nanos() ^ timer.tsc_hz);
    // log_recover: before the node starts, so that a long replay delays no heartbeat.
    let mut dataplane = dataplane;
    let statelog =
        statelog::StateLog::init(&PCI_CONFIG, &pci, &options, &mut dataplane, timer::now());
    let watchdog = watchdog::init(&PCI_CONFIG, &pci, options.watchdog, options.watchdog_ms);
    let incarnation = options.incarnation.unwrap_or_else(|| {
        // Grows at every boot: seconds of the real-time clock, or the TSC if it is unreadable.
        duplex_arch::rtc::unix_seconds()
            .map_or((timer::now().as_nanos() >> 20) as u32 | 1, |s| s as u32)
    });
    let duplex = pair::build(&options, &dataplane.ports, incarnation, timer::now());
    let bypass = match duplex {
        Some(_) => bypass::init(&options, timer::now()),
        None => None,
    };
    let mut dataplane = dataplane;
    if duplex.is_some() {
        // Until the node says otherwise, a box of a pair does not forward.
        dataplane.forwarding = false;
    }
    duplex_arch::hooks::set_tick(on_tick);

    let mode = options.mode;
    let mut system = System {
        boot,
        options,
        option_errors,
        timer,
        pci,
        dataplane,
        watchdog,
        duplex,
        loop_gaps: LoopGaps::default(),
        services: register_services(mode),
        statelog,
        bypass,
    };
    if let Some(s) = &system.services {
        bypass::watch_main_loop(s.main_loop);
    }
    println!(
        "{} node={} uptime_ms={}",
        markers::READY,
        system.options.node,
        timer::now().as_millis()
    );
    main_loop(&mut system)
}

fn run_selftest(selftest: SelfTest) {
    match selftest {
        SelfTest::None => {}
        SelfTest::PageFault => {
            println!("selftest: reading an unmapped address");
            // SAFETY: deliberately not safe: the address is outside the identity map, so
            // the read faults and the exception handler ends the machine.
            let value = unsafe { core::ptr::read_volatile(0x0000_7f00_0000_0000 as *const u64) };
            println!("selftest: read {value} (unexpected)");
        }
        SelfTest::DivideError => {
            println!("selftest: dividing by zero");
            // SAFETY: deliberately raises #DE; the exception handler ends the machine.
            unsafe {
                core::arch::asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
            };
        }
        SelfTest::Panic => panic!("selftest panic requested on the command line"),
    }
}

/// The timer interrupt's work, 1000 times a second.
fn on_tick(_ticks: u64) {
    let now = timer::now();
    liveness::check_from_interrupt(now);
    if liveness::healthy() {
        watchdog::kick_from_interrupt();
    }
    bypass::kick_from_interrupt(now);
}

/// The services the timer interrupt watches (SPI registrations of the image itself).
pub struct Services {
    /// The main loop's every pass (the paper's "scheduler entry").
    pub main_loop: liveness::Service,
    /// The forwarding loop.
    pub forwarding: liveness::Service,
    /// The Duplex node's heartbeat work.
    pub heartbeat: liveness::Service,
    /// The serial console.
    pub console: liveness::Service,
    /// Services past their deadline that the node was told about (bits).
    pub reported: u8,
}

fn register_services(mode: options::DuplexMode) -> Option<Services> {
    use core::time::Duration;
    use duplex_core::MissAction;
    let now = timer::now();
    // A box in series whose forwarding or heartbeats stall must get out of the path
    // (the paper's rule for serial mode); a parallel box hands over to its peer.
    let stalled = match mode {
        options::DuplexMode::Serial => MissAction::Bypass,
        _ => MissAction::Failover,
    };
    Some(Services {
        main_loop: liveness::register(
            "main-loop",
            Duration::from_millis(500),
            MissAction::Reset,
            now,
        )?,
        forwarding: liveness::register("forwarding", Duration::from_millis(100), stalled, now)?,
        heartbeat: liveness::register("heartbeat", Duration::from_millis(100), stalled, now)?,
        console: liveness::register(
            "console",
            Duration::from_millis(2000),
            MissAction::Restart,
            now,
        )?,
        reported: 0,
    })
}

/// Turns services that missed (or came back) into local failures of the node.
fn report_service_failures(system: &mut System, now: Instant) {
    let bits = liveness::node_failures();
    let Some(services) = system.services.as_mut() else {
        return;
    };
    if bits == services.reported {
        return;
    }
    if let Some(d) = system.duplex.as_mut() {
        for index in 0..liveness::MAX_SERVICES {
            let failure = duplex_core::Failure::Hardware(0x100 + index as u16);
            let (was, is) = (
                services.reported & (1 << index) != 0,
                bits & (1 << index) != 0,
            );
            if is && !was {
                d.node.on_local_failure(failure, now);
            } else if was && !is {
                d.node.on_recovery(failure, now);
            }
        }
    }
    services.reported = bits;
}

/// How often link states are read.
const LINK_CHECK: core::time::Duration = core::time::Duration::from_millis(10);

fn main_loop(system: &mut System) -> ! {
    let mut editor = LineEditor::new();
    let mut out = String::new();
    let mut next_link_check = timer::now();
    let mut last_pass = next_link_check;
    console::start_buffering();
    console::write_bytes(markers::PROMPT.as_bytes());
    loop {
        let console_backlog = console::drain(console::DRAIN_PER_PASS);
        let now = timer::now();
        system.loop_gaps.record(now.saturating_since(last_pass));
        last_pass = now;
        if let Some(s) = &system.services {
            liveness::iam_alive(s.main_loop, now);
        }
        report_service_failures(system, now);
        let handled = system.dataplane.poll(now, &mut system.duplex);
        if let Some(card) = system.bypass.as_mut() {
            card.poll(system.dataplane.role, now);
        }
        system
            .statelog
            .poll(&mut system.dataplane, system.duplex.as_mut(), now);
        if let Some(answer) = system.statelog.take_answer() {
            // A `log sync` finished: its answer, then the prompt it held back.
            console::write_bytes(answer.as_bytes());
            console::write_bytes(markers::PROMPT.as_bytes());
        }
        if let Some(s) = &system.services {
            liveness::iam_alive(s.forwarding, now);
            // Standalone, there is no heartbeat work; the service is trivially alive.
            liveness::iam_alive(s.heartbeat, now);
            liveness::iam_alive(s.console, now);
        }
        if now >= next_link_check {
            net::watch_links(&mut system.dataplane.ports, system.duplex.as_mut(), now);
            system.dataplane.bridge.poll(now);
            next_link_check = now + LINK_CHECK;
        }
        while !system.statelog.console_busy()
            && let Some(byte) = console::read_byte()
        {
            match editor.feed(byte, &mut |echo| console::write_bytes(echo)) {
                Event::None => {}
                Event::Cancel => console::write_bytes(markers::PROMPT.as_bytes()),
                Event::Line(line) => {
                    out.clear();
                    shell::execute(system, &line, &mut out);
                    console::write_bytes(out.as_bytes());
                    if !system.statelog.console_busy() {
                        console::write_bytes(markers::PROMPT.as_bytes());
                    }
                }
            }
        }
        if handled > 0 || console_backlog > 0 {
            // Rings had frames or the console has output queued: go again at once.
            continue;
        }
        // Idle: sleep until the next interrupt (the timer wakes the loop every 250 us),
        // unless the node is already due.
        let deadline = system
            .duplex
            .as_ref()
            .map_or(Instant::MAX, |d| d.node.poll_at())
            .min(system.statelog.poll_at(timer::now()));
        if deadline > timer::now() {
            x86_64::instructions::interrupts::enable_and_hlt();
        }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    let mut out = duplex_arch::hooks::ReportWriter;
    let _ = write!(out, "\r\n{}: {}", markers::PANIC, info.message());
    if let Some(location) = info.location() {
        let _ = write!(
            out,
            " at {}:{}:{}",
            location.file(),
            location.line(),
            location.column()
        );
    }
    let _ = write!(out, " ***\r\n");
    machine::exit(ExitCode::Failure)
}
