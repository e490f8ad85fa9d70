//! The liveness monitor in the timer interrupt and the hardware watchdogs.

use std::time::{Duration, Instant};

use duplex_lab::vm::Vm;
use duplex_tests::{BOOT_TIMEOUT, COMMAND_TIMEOUT, config, shared};

/// QEMU arguments for a watchdog device.
fn watchdog_args(device: &str) -> Vec<String> {
    match device {
        // The ICH9 TCO resets only when the LPC bridge's "no reboot" strap is off.
        "itco" => vec!["-global".into(), "ICH9-LPC.noreboot=false".into()],
        "i6300esb" => vec!["-device".into(), "i6300esb".into()],
        other => panic!("unknown watchdog {other}"),
    }
}

fn boot_with_watchdog(name: &str, device: &str, cmdline: &str, no_reboot: bool) -> Vm {
    let mut c = config(
        name,
        &format!("watchdog={device} mode=standalone {cmdline}"),
    );
    c.extra_args.extend(watchdog_args(device));
    c.extra_args
        .extend(["-watchdog-action".into(), "reset".into()]);
    c.no_reboot = no_reboot;
    let vm = Vm::launch(&c).unwrap_or_else(|e| panic!("{e}"));
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm
}

#[test]
fn a_hung_main_loop_is_caught_by_the_timer_interrupt() {
    let _machine = shared();
    let mut vm = boot_with_watchdog("hang-loop", "i6300esb", "", true);
    let status = vm.command("show liveness", COMMAND_TIMEOUT).unwrap();
    assert!(
        status.contains("main-loop") && status.contains("reset"),
        "{status}"
    );
    vm.send("debug hang-loop\r").unwrap();
    // The interrupt reports the miss within the 500 ms deadline (plus emulation slack)...
    vm.wait_for(
        "liveness: service main-loop missed its deadline (500 ms): action reset",
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // ...stops kicking, and the watchdog resets the box (QEMU runs with -no-reboot).
    let code = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(0), "{}", vm.console_text());
    assert!(
        vm.qmp().events().iter().any(|e| e.name == "WATCHDOG"),
        "no WATCHDOG event"
    );
}

#[test]
fn a_stalled_service_triggers_its_action_and_recovers() {
    let _machine = shared();
    let mut vm = boot_with_watchdog("stall", "i6300esb", "", true);
    let out = vm
        .command("debug stall forwarding 300", COMMAND_TIMEOUT)
        .unwrap();
    assert!(
        out.contains("forwarding stops reporting for 300 ms"),
        "{out}"
    );
    vm.wait_for(
        "liveness: service forwarding missed its deadline (100 ms): action failover",
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bad = vm
        .command("debug stall nosuch 10", COMMAND_TIMEOUT)
        .unwrap();
    assert!(
        bad.starts_with("error: debug stall: no service 'nosuch'"),
        "{bad}"
    );
    // After the stall the service reports again and the box keeps running (no reset).
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let status = vm.command("show liveness", COMMAND_TIMEOUT).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("forwarding"))
            .unwrap_or_default()
            .to_string();
        if line.ends_with("ok") {
            assert!(line.contains(" 1 "), "one miss counted: {line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forwarding never recovered: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(vm.is_running());
}

fn hung_isr_is_reset_by(device: &str) {
    let _machine = shared();
    let mut vm = boot_with_watchdog(device, device, "watchdog_ms=2400", false);
    let show = vm.command("show watchdog", COMMAND_TIMEOUT).unwrap();
    assert!(show.contains("armed"), "{show}");
    assert!(
        show.contains("last reset caused by the watchdog: no"),
        "{show}"
    );
    vm.mark();
    let hung = Instant::now();
    vm.send("debug hang-isr\r").unwrap();
    // Without -no-reboot the box boots again; the watchdog says it caused the reset.
    vm.wait_for("last reset was caused by the", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let reset_after = hung.elapsed();
    eprintln!("{device}: hang to reboot {reset_after:?}");
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let show = vm.command("show watchdog", COMMAND_TIMEOUT).unwrap();
    assert!(
        show.contains("last reset caused by the watchdog: yes"),
        "{show}"
    );
    assert!(
        vm.qmp().events().iter().any(|e| e.name == "WATCHDOG"),
        "no WATCHDOG event"
    );
}

#[test]
fn a_hung_timer_interrupt_is_reset_by_the_itco_watchdog() {
    hung_isr_is_reset_by("itco");
}

#[test]
fn a_hung_timer_interrupt_is_reset_by_the_i6300esb_watchdog() {
    hung_isr_is_reset_by("i6300esb");
}
