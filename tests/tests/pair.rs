//! The parallel pair end to end in QEMU: kill, freeze then resume, link cut, a heartbeat
//! partition on one path, restart and rejoin.
//!
//! Each test boots its own pair (two VMs and the fabric) and runs alone (`exclusive`):
//! fail-over timing depends on the host giving the VMs CPU time.

use std::time::Duration;

use duplex_lab::pair::{NAMES, Pair, PairConfig, measure};
use duplex_tests::exclusive;

/// Tests run the pair with 5 ms heartbeats (hard timeout about 25 ms): under emulation on
/// a shared 2-core machine the VMs stall for a few milliseconds now and then, and these
/// tests check behaviour, not speed (`cargo lab bench failover` measures speed).
fn pair() -> Pair {
    Pair::start(PairConfig {
        heartbeat_us: 5000,
        ..PairConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn master_and_standby(pair: &mut Pair) -> (usize, usize) {
    // A loaded host may leave the pair between states for a moment: wait for one Master.
    let master = pair.wait_master().unwrap_or_else(|e| panic!("{e}"));
    (master, 1 - master)
}

fn console_of(pair: &mut Pair, index: usize) -> String {
    pair.vm(index)
        .map(|vm| vm.console_text())
        .unwrap_or_default()
}

#[test]
fn killing_the_master_fails_over_to_the_standby() {
    let _machine = exclusive();
    let mut pair = pair();
    let source = pair
        .start_traffic(2.0, 512, Duration::from_secs(3))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // Who is Master right now (not at boot: a stalled host may have moved it since).
    let (master, standby) = master_and_standby(&mut pair);
    let fault = pair.kill(master).unwrap();
    pair.wait_state(standby, "Master")
        .unwrap_or_else(|e| panic!("{e}\n{}", console_of(&mut pair, standby)));
    let sent = source.wait().unwrap();
    pair.sink
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(5));
    let report = pair.sink.report();
    let m = measure(
        &report,
        &sent,
        fault,
        pair.wan_port(master),
        pair.wan_port(standby),
    )
    .unwrap();
    eprintln!(
        "kill: fail-over {:.2} ms, lost {} of {}, duplicated {}",
        m.failover_ms, m.lost, m.sent, m.duplicated
    );
    // Generous bounds (a loaded machine must not fail this): the standby took over and
    // traffic flows through it.
    assert!(m.failover_ms < 2000.0, "{m:?}");
    assert!(m.lost < m.sent / 2, "{m:?}");
    assert!(
        report
            .origins
            .get(&pair.wan_port(standby))
            .is_some_and(|o| o.frames > 0)
    );
}

#[test]
fn a_frozen_master_never_forwards_beside_the_new_one() {
    let _machine = exclusive();
    let mut pair = pair();
    let (master, standby) = master_and_standby(&mut pair);
    let source = pair
        .start_traffic(2.0, 512, Duration::from_secs(4))
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    pair.freeze(master).unwrap();
    pair.wait_state(standby, "Master")
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(500));
    pair.thaw(master).unwrap();
    // The resumed box must step down; it never forwards beside the new Master.
    pair.wait_state(master, "Slave")
        .unwrap_or_else(|e| panic!("{e}\n{}", console_of(&mut pair, master)));
    assert_eq!(pair.state(standby).unwrap(), "Master");
    let sent = source.wait().unwrap();
    pair.sink
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(5));
    let report = pair.sink.report();
    let loss = report.loss_against(&sent);
    eprintln!("freeze/thaw: {loss:?}");
    assert_eq!(
        loss.duplicated, 0,
        "the sink saw duplicated frames: {loss:?}"
    );
    // The resumed box reads its dedicated link first, learns of the newer claim and drops
    // its data backlog (the new Master skipped it too: those frames are lost, not late and
    // not doubled); it never sends a copy of what the new Master forwarded (checked above).
}

#[test]
fn a_cut_lan_link_moves_mastership_and_mending_it_does_not_take_it_back() {
    let _machine = exclusive();
    let mut pair = pair();
    let (master, standby) = master_and_standby(&mut pair);
    pair.set_port(&format!("{}.lan", NAMES[master]), false)
        .unwrap();
    pair.wait_state(standby, "Master")
        .unwrap_or_else(|e| panic!("{e}"));
    pair.wait_state(master, "Suspend")
        .unwrap_or_else(|e| panic!("{e}\n{}", console_of(&mut pair, master)));
    pair.set_port(&format!("{}.lan", NAMES[master]), true)
        .unwrap();
    pair.wait_state(master, "Slave")
        .unwrap_or_else(|e| panic!("{e}\n{}", console_of(&mut pair, master)));
    assert_eq!(
        pair.state(standby).unwrap(),
        "Master",
        "no preemption after the mend"
    );
}

#[test]
fn a_heartbeat_partition_on_one_path_does_not_fail_over() {
    let _machine = exclusive();
    let mut pair = pair();
    let (master, standby) = master_and_standby(&mut pair);
    let claims =
        |text: &str| text.matches("-> QuasiMaster").count() + text.matches("-> Master").count();
    let before = claims(&console_of(&mut pair, standby));
    pair.partition(Some("lan"), true).unwrap();
    // Two seconds: a thousand heartbeat intervals on the other paths.
    std::thread::sleep(Duration::from_secs(2));
    let states = (pair.state(master).unwrap(), pair.state(standby).unwrap());
    assert_eq!(
        states,
        ("Master".to_string(), "Slave".to_string()),
        "master:\n{}\nstandby:\n{}",
        console_of(&mut pair, master),
        console_of(&mut pair, standby)
    );
    let after = claims(&console_of(&mut pair, standby));
    assert_eq!(
        before,
        after,
        "the standby claimed: {}",
        console_of(&mut pair, standby)
    );
    let duplex = pair
        .vm(standby)
        .unwrap()
        .command("show duplex", Duration::from_secs(10))
        .unwrap();
    assert!(duplex.contains("lan"), "{duplex}");
    pair.partition(Some("lan"), false).unwrap();
}

#[test]
fn a_restarted_box_rejoins_as_slave() {
    let _machine = exclusive();
    let mut pair = pair();
    let (master, standby) = master_and_standby(&mut pair);
    pair.kill(master).unwrap();
    pair.wait_state(standby, "Master")
        .unwrap_or_else(|e| panic!("{e}"));
    pair.restart(master).unwrap();
    pair.wait_state(master, "Slave")
        .unwrap_or_else(|e| panic!("{e}\n{}", console_of(&mut pair, master)));
    assert_eq!(pair.state(standby).unwrap(), "Master");
}
