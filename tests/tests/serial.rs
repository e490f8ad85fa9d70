//! The serial pair end to end in QEMU: `source - A | A - B | B - sink` with a bypass card
//! per box (the lab's card on each VM's COM2, its relay in the fabric).
//!
//! Each test boots its own pair and runs alone (`exclusive`). Bounds are generous: these
//! tests check behaviour; `cargo lab bench failover --mode serial` measures speed.

use std::time::{Duration, Instant};

use duplex_lab::bypass_card::{CardEvent, CardEventKind, RelayCause};
use duplex_lab::pair::{NAMES, Pair, PairConfig, PairMode};
use duplex_tests::exclusive;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A serial pair with 5 ms heartbeats and a 20 ms card watchdog: a VM the host stalls for
/// a few milliseconds keeps its place; a dead or hung one is bypassed.
fn serial_pair() -> Pair {
    Pair::start(PairConfig {
        mode: PairMode::Serial,
        heartbeat_us: 5000,
        bypass_ms: 20,
        ..PairConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn console_of(pair: &mut Pair, index: usize) -> String {
    pair.vm(index)
        .map(|vm| vm.console_text())
        .unwrap_or_default()
}

fn master(pair: &mut Pair) -> usize {
    // A loaded host may leave the pair between states for a moment: wait for one Master.
    pair.wait_master().unwrap_or_else(|e| panic!("{e}"))
}

/// The answer of box `index`'s console to `command`.
fn console(pair: &mut Pair, index: usize, command: &str) -> String {
    pair.vm(index)
        .and_then(|vm| vm.command(command, COMMAND_TIMEOUT))
        .unwrap_or_else(|e| panic!("{command} on {}: {e}", NAMES[index]))
}

/// Waits for box `index`'s card watchdog to fire.
fn wait_card_fired(pair: &Pair, index: usize) -> CardEvent {
    pair.card(index)
        .unwrap()
        .wait_for_event(Duration::from_secs(5), |e| {
            matches!(e.kind, CardEventKind::WatchdogFired { .. })
        })
        .unwrap_or_else(|| panic!("{}'s card watchdog did not fire", NAMES[index]))
}

/// Frames box `index` sent into the fabric on its wan port (it forwarded them).
fn wan_frames(pair: &Pair, index: usize) -> u64 {
    pair.fabric
        .counters(pair.wan_port(index))
        .unwrap()
        .rx_frames
}

/// Waits until box `index` forwards traffic again (its wan port sends frames).
fn wait_forwarding(pair: &Pair, index: usize) {
    let before = wan_frames(pair, index);
    let deadline = Instant::now() + Duration::from_secs(30);
    while wan_frames(pair, index) < before + 20 {
        assert!(
            Instant::now() < deadline,
            "box {} forwards nothing",
            NAMES[index]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a little traffic and waits until each of `boxes` forwards some of it.
fn carries_traffic(pair: &Pair, boxes: &[usize]) {
    let source = pair
        .start_traffic(2.0, 512, Duration::from_secs(2))
        .unwrap();
    for &index in boxes {
        wait_forwarding(pair, index);
    }
    source.wait().unwrap();
}

/// Waits until box `index` is in `state`; on failure shows its console.
fn expect_state(pair: &mut Pair, index: usize, state: &str) {
    if let Err(e) = pair.wait_state(index, state) {
        panic!("{e}\n{}", console_of(pair, index));
    }
}

/// Waits until box `index`'s relay is `closed`; on failure shows its console.
fn expect_relay(pair: &mut Pair, index: usize, closed: bool) {
    if let Err(e) = pair.wait_relay(index, closed) {
        panic!("{e}\n{}", console_of(pair, index));
    }
}

#[test]
fn a_killed_box_becomes_a_cable_and_rejoins_after_reboot() {
    let _machine = exclusive();
    let mut pair = serial_pair();
    assert!(!pair.relay_closed(0).unwrap() && !pair.relay_closed(1).unwrap());
    let source = pair
        .start_traffic(2.0, 512, Duration::from_secs(4))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let old = master(&mut pair);
    let new = 1 - old;
    let fault = pair.kill(old).unwrap();
    // The card lost power: fail to wire.
    let event = pair
        .card(old)
        .unwrap()
        .wait_for_event(Duration::from_secs(5), |e| {
            e.at_ns >= fault
                && matches!(
                    e.kind,
                    CardEventKind::RelaySwitched {
                        on: true,
                        cause: RelayCause::PowerLoss
                    }
                )
        })
        .unwrap_or_else(|| panic!("{}'s relay did not close", NAMES[old]));
    eprintln!(
        "relay closed {:.2} ms after the kill",
        (event.at_ns - fault) as f64 / 1e6
    );
    expect_state(&mut pair, new, "Master");
    let sent = source.wait().unwrap();
    pair.sink
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(5));
    let m = pair.measure(&sent, fault, old, new).unwrap();
    eprintln!(
        "serial kill: {:.2} ms of silence, lost {} of {}, duplicated {}",
        m.failover_ms, m.lost, m.sent, m.duplicated
    );
    assert!(m.failover_ms < 2000.0, "{m:?}");
    assert!(m.lost < m.sent / 2, "{m:?}");

    // The dead box boots again, opens its relay and passes the traffic through.
    pair.restart(old).unwrap();
    expect_state(&mut pair, old, "Slave");
    pair.wait_relay(old, false).unwrap();
    pair.wait_state(new, "Master").unwrap();
    carries_traffic(&pair, &[old, new]);
    let show = console(&mut pair, old, "show bypass");
    assert!(show.contains("relay:   open"), "{show}");
    let status = console(&mut pair, old, "show status --json");
    assert!(status.contains(r#""relay":"open""#), "{status}");
    assert!(show.contains("armed"), "{show}");
}

#[test]
fn a_hung_master_is_bypassed_by_its_card_and_rejoins_when_it_runs_again() {
    let _machine = exclusive();
    let mut pair = serial_pair();
    let source = pair
        .start_traffic(2.0, 512, Duration::from_secs(4))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let old = master(&mut pair);
    let new = 1 - old;
    let card = pair.card(old).unwrap();
    card.clear_events();
    let fault = pair.freeze(old).unwrap();
    // Nothing kicks the card now: its own watchdog closes the relay.
    let fired = wait_card_fired(&pair, old);
    eprintln!(
        "card fired {:.2} ms after the freeze",
        (fired.at_ns.saturating_sub(fault)) as f64 / 1e6
    );
    assert!(pair.relay_closed(old).unwrap());
    expect_state(&mut pair, new, "Master");
    let sent = source.wait().unwrap();
    pair.sink
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(5));
    let m = pair.measure(&sent, fault, old, new).unwrap();
    eprintln!(
        "serial freeze: {:.2} ms of silence, lost {} of {}",
        m.failover_ms, m.lost, m.sent
    );
    assert!(m.failover_ms < 2000.0, "{m:?}");

    // Running again, the box hears the new Master, follows it, re-arms its card and
    // takes its place in the path again.
    pair.thaw(old).unwrap();
    expect_state(&mut pair, old, "Slave");
    expect_relay(&mut pair, old, false);
    assert!(pair.card_status(old).unwrap().armed);
    let show = console(&mut pair, old, "show bypass");
    assert!(!show.contains("fired 0 time"), "{show}");
    carries_traffic(&pair, &[old]);
}

#[test]
fn a_hung_main_loop_closes_the_relay_within_the_card_watchdog() {
    let _machine = exclusive();
    let mut pair = serial_pair();
    let old = master(&mut pair);
    let new = 1 - old;
    pair.card(old).unwrap().clear_events();
    let vm = pair.vm(old).unwrap();
    vm.send("debug hang-loop\r").unwrap();
    vm.wait_for("hanging the main loop", COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let hung = duplex_fabric::clock::now_ns();
    // The timer interrupt still runs but withholds the kicks (the main loop is silent),
    // so the card fires; the standby takes over.
    let fired = wait_card_fired(&pair, old);
    eprintln!(
        "card fired {:.2} ms after the hang was reported",
        fired.at_ns.saturating_sub(hung) as f64 / 1e6
    );
    expect_state(&mut pair, new, "Master");
    carries_traffic(&pair, &[new]);
}

#[test]
fn missing_traffic_sends_both_boxes_to_bypass_and_traffic_brings_them_back() {
    let _machine = exclusive();
    // Missing traffic for 300 ms is an interface failure: in serial mode, bypass.
    let mut pair = Pair::new(PairConfig {
        mode: PairMode::Serial,
        heartbeat_us: 5000,
        bypass_ms: 20,
        extra_cmdline: "traffic_ms=300".to_string(),
        ..PairConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Traffic both ways first (the relays are closed until the boxes run: a port must
    // receive traffic to count as working), then the boxes.
    let both_ways = |pair: &Pair| {
        [
            pair.start_traffic(2.0, 512, Duration::from_secs(120)),
            pair.start_reverse_traffic(1.0, 512, Duration::from_secs(120)),
        ]
        .map(Result::unwrap)
    };
    let sources = both_ways(&pair);
    pair.boot_both().unwrap_or_else(|e| panic!("{e}"));
    wait_forwarding(&pair, 0);
    wait_forwarding(&pair, 1);
    // In the path and staying there: no interface failure while traffic flows.
    std::thread::sleep(Duration::from_secs(1));
    for index in 0..2 {
        assert!(!pair.relay_closed(index).unwrap());
        let duplex = console(&mut pair, index, "show duplex");
        assert!(!duplex.contains("InterfaceFailure"), "{duplex}");
    }
    for source in sources {
        source.stop().unwrap();
    }
    // Both boxes see no traffic and get out of the path.
    for index in 0..2 {
        expect_relay(&mut pair, index, true);
    }
    for index in 0..2 {
        let duplex = console(&mut pair, index, "show duplex");
        assert!(duplex.contains("InterfaceFailure"), "{duplex}");
    }
    // Traffic again: it flows around both boxes at once, and each box, retrying every
    // second, opens its relay, sees the traffic and stays in the path.
    let received = pair.sink.received();
    let sources = both_ways(&pair);
    assert!(
        pair.sink.wait_for(received + 20, Duration::from_secs(10)),
        "no traffic around the bypassed boxes"
    );
    for index in 0..2 {
        expect_relay(&mut pair, index, false);
    }
    pair.wait_master().unwrap();
    wait_forwarding(&pair, 0);
    wait_forwarding(&pair, 1);
    for source in sources {
        source.stop().unwrap();
    }
}
