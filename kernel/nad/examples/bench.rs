//! Host micro-benchmark of `Bridge::decide`:
//! `cargo run --release -p duplex-nad --example bench`.
//!
//! Prints nanoseconds per decision (median of several runs) for a learned unicast flow,
//! for flooding (unknown unicast and broadcast), and for traffic spread over 4000
//! learned stations (the table near its default limit, so lookups miss the CPU caches
//! more often). Compare with the per-frame budget of the forwarding loop: 1 Gbit/s of
//! 64-byte frames is 1.49 Mframes/s, 672 ns per frame.

use std::hint::black_box;
use std::time::Instant as WallClock;

use duplex_nad::build;
use duplex_nad::wire::EtherType;
use duplex_nad::{Bridge, BridgeConfig, Decision, Instant, MacAddress, PortId};

const RUNS: usize = 7;
const DECISIONS_PER_RUN: u64 = 2_000_000;

fn station(n: u32) -> MacAddress {
    let b = n.to_be_bytes();
    MacAddress([0x02, 0x00, b[0], b[1], b[2], b[3]])
}

fn frame(destination: MacAddress, source: MacAddress) -> Vec<u8> {
    let mut buffer = [0u8; 64];
    let len = build::ethernet_frame(
        &mut buffer,
        destination,
        source,
        EtherType::IPV4,
        &[0x45; 46],
    )
    .unwrap();
    buffer[..len].to_vec()
}

/// Runs `decide` over `frames` (ingress, bytes) round-robin and returns the median and
/// the fastest nanoseconds per call over [`RUNS`] runs.
fn measure(
    bridge: &mut Bridge,
    frames: &[(PortId, Vec<u8>)],
    expect: impl Fn(Decision) -> bool,
) -> (f64, f64) {
    let mut per_decision = Vec::with_capacity(RUNS);
    let mut nanos: u64 = 1_000_000_000;
    for _ in 0..RUNS {
        let start = WallClock::now();
        for i in 0..DECISIONS_PER_RUN {
            let (ingress, bytes) = &frames[(i as usize) % frames.len()];
            nanos += 100; // virtual time advances 100 ns per frame
            let decision = bridge.decide(*ingress, black_box(bytes), Instant::from_nanos(nanos));
            black_box(decision);
        }
        let elapsed = start.elapsed();
        per_decision.push(elapsed.as_nanos() as f64 / DECISIONS_PER_RUN as f64);
    }
    // Check the scenario really is what it says (outside the timed loop).
    for (ingress, bytes) in frames.iter().take(64) {
        let decision = bridge.decide(*ingress, bytes, Instant::from_nanos(nanos));
        assert!(expect(decision), "unexpected decision {decision:?}");
    }
    per_decision.sort_by(f64::total_cmp);
    (per_decision[RUNS / 2], per_decision[0])
}

fn report(name: &str, (median, fastest): (f64, f64)) {
    println!(
        "{name:<36} {median:>6.1} ns/decide median, {fastest:>6.1} fastest  ({:>5.1} Mframes/s at the median)",
        1_000.0 / median
    );
}

fn main() {
    println!("median and fastest of {RUNS} runs of {DECISIONS_PER_RUN} decisions each");
    let (a, b) = (station(1), station(2));

    // Learned unicast flow, both directions.
    let mut bridge = Bridge::new(BridgeConfig::default()).unwrap();
    bridge.decide(PortId::LAN, &frame(b, a), Instant::ZERO);
    bridge.decide(PortId::WAN, &frame(a, b), Instant::ZERO);
    let flow = [(PortId::LAN, frame(b, a)), (PortId::WAN, frame(a, b))];
    let ns = measure(&mut bridge, &flow, |d| matches!(d, Decision::Forward(_)));
    report("learned unicast flow (2 stations)", ns);

    // Unknown unicast: a source hit and a destination miss.
    let mut bridge = Bridge::new(BridgeConfig::default()).unwrap();
    let unknown = [(PortId::LAN, frame(station(999), a))];
    let ns = measure(&mut bridge, &unknown, |d| d == Decision::Flood);
    report("flood: unknown unicast", ns);

    // Broadcast with a management address registered: FloodAndLocal.
    let mut bridge = Bridge::new(BridgeConfig::default()).unwrap();
    bridge.add_local_address(station(0xaaaa)).unwrap();
    let broadcast = [(PortId::LAN, frame(MacAddress::BROADCAST, a))];
    let ns = measure(&mut bridge, &broadcast, |d| d == Decision::FloodAndLocal);
    report("flood: broadcast (+local)", ns);

    // 4000 stations, 2000 on each side, every frame a different pair.
    let mut bridge = Bridge::new(BridgeConfig::default()).unwrap();
    let count = 4_000u32;
    let side = |n: u32| if n & 1 == 0 { PortId::LAN } else { PortId::WAN };
    for n in 0..count {
        bridge.decide(
            side(n),
            &frame(MacAddress::BROADCAST, station(n)),
            Instant::ZERO,
        );
    }
    let mut frames = Vec::with_capacity(count as usize);
    let mut state = 0x2545_f491u32;
    for n in 0..count {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let mut peer = (state >> 8) % count;
        if side(peer) == side(n) {
            peer = (peer + 1) % count;
        }
        frames.push((side(n), frame(station(peer), station(n))));
    }
    let ns = measure(&mut bridge, &frames, |d| matches!(d, Decision::Forward(_)));
    report("learned unicast, 4000 stations", ns);
    println!(
        "table: {} entries, counters {:?}",
        bridge.len(),
        bridge.counters()
    );
}
