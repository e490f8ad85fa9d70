//! Console commands: parse with `duplex_mgmt::command`, answer from the [`System`].

use alloc::string::String;
use core::fmt::Write;

use duplex_arch::timer;
use duplex_mgmt::command::{self, Command, HELP};
use duplex_mgmt::json::JsonObject;
use duplex_mgmt::markers;

use crate::System;

/// Appends one CR LF-terminated line.
macro_rules! line {
    ($out:expr) => { $out.push_str("\r\n") };
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
        $out.push_str("\r\n");
    }};
}

/// The appliance's state as the status commands report it.
fn state_name(system: &System) -> alloc::string::String {
    match &system.duplex {
        Some(d) => alloc::format!("{}", d.node.state()),
        None => alloc::string::String::from("Standalone"),
    }
}

/// Runs an operator command on the node, reporting the outcome.
fn operator(system: &mut System, command: duplex_core::OperatorCommand, out: &mut String) {
    let Some(d) = system.duplex.as_mut() else {
        line!(
            out,
            "{}this appliance runs standalone (mode=standalone or no ports)",
            markers::ERROR
        );
        return;
    };
    match d.node.command(command, timer::now()) {
        Ok(()) => line!(out, "ok: {command:?} (state now {})", d.node.state()),
        Err(e) => line!(out, "{}{command:?} refused: {e:?}", markers::ERROR),
    }
}

fn uptime_ms() -> u64 {
    timer::now().as_millis()
}

/// Runs one console line, writing its answer into `out`.
pub fn execute(system: &mut System, line: &str, out: &mut String) {
    let command = match command::parse(line) {
        Ok(Some(command)) => command,
        Ok(None) => return,
        Err(error) => {
            line!(out, "{}{}", markers::ERROR, error);
            return;
        }
    };
    match command {
        Command::Help => {
            for (usage, text) in HELP {
                line!(out, "  {usage:<24} {text}");
            }
        }
        Command::Version => {
            line!(
                out,
                "{} {} (commit {})",
                markers::BANNER,
                crate::VERSION,
                crate::COMMIT
            );
        }
        Command::Uptime => {
            let ms = uptime_ms();
            line!(out, "up {}.{:03} s", ms / 1000, ms % 1000);
        }
        Command::Pci => {
            for function in &system.pci {
                line!(out, "{function}");
                for (index, bar) in function.bars.iter().enumerate() {
                    if *bar != duplex_drivers::pci::Bar::None {
                        line!(out, "    BAR{index}: {bar}");
                    }
                }
            }
        }
        Command::Stats => {
            let (heap_size, heap_used) = duplex_arch::memory::heap_stats();
            line!(out, "ticks: {}", timer::ticks());
            line!(out, "clock_ms: {}", uptime_ms());
            line!(out, "tick_source: {:?}", system.timer.source);
            line!(out, "tsc_hz: {}", system.timer.tsc_hz);
            line!(out, "heap_used: {heap_used} of {heap_size}");
            line!(
                out,
                "spurious_interrupts: {}",
                duplex_arch::cpu::spurious_interrupts()
            );
            let g = &system.loop_gaps;
            line!(
                out,
                "loop_gaps: max {} us; over 1/2/4/8/16/32 ms: {:?}",
                g.max.as_micros(),
                g.over_ms
            );
        }
        Command::ShowStatus { json } => {
            if json {
                // `relay`: the bypass card's relay in serial mode ("open": traffic goes
                // through the box, "closed": around it), "none" without a card.
                let relay = match &system.bypass {
                    Some(card) if card.relay_closed() => "closed",
                    Some(_) => "open",
                    None => "none",
                };
                let status = JsonObject::new()
                    .uint("node", u64::from(system.options.node))
                    .uint("uptime_ms", uptime_ms())
                    .string("state", &state_name(system))
                    .string("version", crate::VERSION)
                    .uint("ticks", timer::ticks())
                    .uint("boot_option_errors", system.option_errors.len() as u64)
                    .string("relay", relay)
                    .finish();
                line!(out, "{status}");
            } else {
                line!(out, "node:    {}", system.options.node);
                line!(out, "state:   {}", state_name(system));
                line!(out, "uptime:  {} ms", uptime_ms());
                if let Some(card) = &system.bypass {
                    line!(
                        out,
                        "relay:   {}",
                        crate::bypass::relay_text(card.relay_closed())
                    );
                }
                line!(
                    out,
                    "boot:    {:?}, cmdline '{}'",
                    system.boot.protocol,
                    system.boot.cmdline()
                );
                for error in &system.option_errors {
                    line!(out, "warning: {error}");
                }
            }
        }
        Command::ShowInterfaces => {
            if system.dataplane.ports.is_empty() {
                line!(out, "no network ports (no supported NIC found)");
            }
            system.dataplane.describe(out);
        }
        Command::ShowBridge => {
            let now = timer::now();
            let bridge = &mut system.dataplane.bridge;
            bridge.poll(now);
            let mut entries: alloc::vec::Vec<_> = bridge.table().collect();
            entries.sort_by_key(|e| (e.port.0, e.mac));
            line!(
                out,
                "{:<18} {:>5} {:<5} {:>9}",
                "MAC",
                "VLAN",
                "PORT",
                "AGE (s)"
            );
            for e in entries {
                let port = system
                    .dataplane
                    .ports
                    .get(usize::from(e.port.0))
                    .map_or("?", |p| p.name);
                line!(
                    out,
                    "{:<18} {:>5} {:<5} {:>9}",
                    e.mac,
                    e.vlan,
                    port,
                    e.age(now).as_secs()
                );
            }
        }
        Command::ShowWatchdog => {
            let w = &system.watchdog;
            line!(out, "device:  {}", w.name);
            match w.timeout {
                Some(t) => line!(
                    out,
                    "timeout: {} ms (armed; kicked by the timer interrupt)",
                    t.as_millis()
                ),
                None => line!(out, "timeout: - (not armed)"),
            }
            line!(
                out,
                "last reset caused by the watchdog: {}",
                if w.last_reset_was_watchdog {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        Command::ShowDuplex { json } => match &system.duplex {
            None => line!(out, "duplex: standalone (no heartbeats, always forwarding)"),
            Some(d) if json => line!(out, "{}", d.node.status().to_json()),
            Some(d) => {
                d.describe(out);
                let p = &system.dataplane;
                line!(
                    out,
                    "heartbeat frames: in {} (refused {}), out {} (ring full {}); role {:?}",
                    p.heartbeats_in,
                    p.heartbeats_refused,
                    p.heartbeats_out,
                    p.heartbeats_dropped,
                    p.role
                );
            }
        },
        Command::ShowLiveness => liveness_show(out),
        Command::ShowBypass => match &system.bypass {
            Some(card) => card.describe(out),
            None => line!(
                out,
                "bypass: no card in use (serial mode opens one on COM2; this box is {:?})",
                system.options.mode
            ),
        },
        Command::DebugHangLoop => {
            line!(out, "debug: hanging the main loop now (interrupts stay on)");
            crate::console::write_bytes(out.as_bytes());
            crate::console::flush_all();
            loop {
                core::hint::spin_loop();
            }
        }
        Command::DebugHangIsr => {
            line!(
                out,
                "debug: interrupts off, hanging now (only a hardware watchdog can help)"
            );
            crate::console::write_bytes(out.as_bytes());
            crate::console::flush_all();
            x86_64::instructions::interrupts::disable();
            loop {
                core::hint::spin_loop();
            }
        }
        Command::DebugStall { service, ms } => {
            let now = timer::now();
            if crate::liveness::stall(
                &service,
                core::time::Duration::from_millis(u64::from(ms)),
                now,
            ) {
                line!(out, "debug: {service} stops reporting for {ms} ms");
            } else {
                line!(
                    out,
                    "{}debug stall: no service '{service}' (services: {})",
                    markers::ERROR,
                    crate::liveness::names().join(", ")
                );
            }
        }
        Command::Failover => operator(system, duplex_core::OperatorCommand::Failover, out),
        Command::TakeOver => operator(system, duplex_core::OperatorCommand::TakeOver, out),
        Command::Suspend => operator(system, duplex_core::OperatorCommand::Suspend, out),
        Command::Resume => operator(system, duplex_core::OperatorCommand::Resume, out),
        Command::ShowLog { json } => system.statelog.describe(system.duplex.as_ref(), json, out),
        Command::LogWrite { text } => system.statelog.write_note(&text, out),
        Command::LogSync { text } => system.statelog.sync_note(&text, out),
        Command::LogDump { last } => system.statelog.dump(last, out),
        Command::LogCheckpoint => system.statelog.checkpoint(out),
        Command::LogBench { count, size, rate } => {
            system.statelog.start_bench(count, size, rate, out)
        }
        Command::Reboot => {
            line!(out, "rebooting");
            crate::console::write_bytes(out.as_bytes());
            crate::console::flush_all();
            duplex_arch::machine::reset();
        }
    }
}

fn liveness_show(out: &mut String) {
    crate::liveness::describe(timer::now(), out);
}
