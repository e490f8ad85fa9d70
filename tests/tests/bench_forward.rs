//! The forwarding benchmark in its shortest form: one round, one trial per path at a rate
//! far below what either path carries (1,000 frames/s), so the outcome does not depend
//! on the machine's speed or load. Checks that nothing is lost through the appliance,
//! that the ceiling path carries the same trial, and that the JSON summary parses with
//! the agreed keys.

use std::time::Duration;

use duplex_lab::appliance::NicModel;
use duplex_lab::bench_forward::{self, ForwardOptions, ForwardReport, PathResult};
use duplex_tests::shared;

/// Far below capacity: frames 1 ms apart (the appliance forwards tens of thousands per
/// second under TCG).
const RATE: f64 = 1_000.0;

fn short_run(nic: NicModel, frame_size: usize) -> ForwardReport {
    let mut options = ForwardOptions::new(nic, frame_size);
    options.rounds = 1;
    options.fixed_rate = Some(RATE);
    options.trial_duration = Duration::from_secs(1);
    // Only loss decides here: latency bounds and the source's pace depend on the load.
    options.max_median_latency = None;
    options.max_p99_latency = None;
    options.retries = 0;
    // Wait out host stalls before counting what did not arrive as lost.
    options.drain_quiet = Duration::from_secs(2);
    bench_forward::run(options).unwrap_or_else(|e| panic!("{e}"))
}

/// The path's single trial: everything sent arrived, exactly once.
fn assert_lossless(what: &str, path: &PathResult) {
    assert_eq!(path.trials.len(), 1, "{what}: one trial");
    let loss = path.trials[0].result.loss;
    assert!(
        loss.sent >= 100,
        "{what}: the source sent only {}",
        loss.sent
    );
    assert_eq!(loss.lost, 0, "{what}: {loss:?}");
    assert_eq!(loss.received, loss.sent, "{what}: {loss:?}");
    assert_eq!(loss.duplicated, 0, "{what}: {loss:?}");
}

fn check(nic: NicModel, frame_size: usize) {
    let _machine = shared();
    let report = short_run(nic, frame_size);
    assert_eq!(report.rounds.len(), 1);
    let round = &report.rounds[0];
    assert_lossless("appliance", &round.appliance);
    assert_lossless("ceiling", &round.ceiling);
    assert!(
        round.appliance.trials[0].result.latency.is_some(),
        "latency measured"
    );

    let line = report.json_line();
    assert!(!line.contains('\n'), "{line}");
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "nic",
        "size",
        "fps",
        "mbps",
        "ceiling_fps",
        "ratio",
        "lat_us_p50",
        "lat_us_p99",
    ];
    // In this order on the line.
    let positions: Vec<usize> = expected
        .iter()
        .map(|key| {
            line.find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "{line}");
    assert!(
        line.starts_with(&format!(
            "{{\"nic\":\"{}\",\"size\":{frame_size},",
            nic.name()
        )),
        "{line}"
    );
    for key in [
        "fps",
        "mbps",
        "ceiling_fps",
        "ratio",
        "lat_us_p50",
        "lat_us_p99",
    ] {
        assert!(value[key].is_number(), "{key} in {line}");
    }
    // Both paths carried the same lossless trial: both forwarded about the rate. (The
    // pass criterion also wants the source to have kept its pace, which a loaded machine
    // may miss; so compare only when both passed.)
    if let (Some(_), Some(_)) = (&round.appliance.best, &round.ceiling.best) {
        let fps = value["fps"].as_f64().unwrap_or(0.0);
        assert!(fps > RATE * 0.5 && fps < RATE * 1.5, "{line}");
    }
}

#[test]
fn a_short_forward_benchmark_loses_nothing_at_a_low_rate_on_virtio() {
    check(NicModel::Virtio, 512);
}

#[test]
fn a_short_forward_benchmark_loses_nothing_at_a_low_rate_on_e1000() {
    check(NicModel::E1000, 1518);
}
