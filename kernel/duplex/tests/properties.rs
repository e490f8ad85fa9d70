//! The simulator properties of SPEC §11, each over 2 000 seeds (2, 3 and 4 nodes; parallel
//! and serial pairs). `DUPLEX_SEEDS=n` changes the count (for a quick look or a long soak);
//! `DUPLEX_SEED_OFFSET=k` starts at another seed.

use std::time::Duration;

use duplex_core::sim::check;

fn seeds() -> std::ops::Range<u64> {
    let count = std::env::var("DUPLEX_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let offset = std::env::var("DUPLEX_SEED_OFFSET")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    offset..offset + count
}

fn run<T>(name: &str, f: impl Fn(u64) -> Result<T, String>) -> Vec<T> {
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for seed in seeds() {
        match f(seed) {
            Ok(o) => outcomes.push(o),
            Err(report) => failures.push(report),
        }
    }
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(3).collect();
        panic!(
            "{name}: {} of {} seeds failed; first ones:\n{}",
            failures.len(),
            seeds().count(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    outcomes
}

#[test]
fn single_fault_leaves_exactly_one_master_within_the_hard_timeout() {
    let outcomes = run("single fault", check::single_fault);
    let worst = outcomes
        .iter()
        .map(|o| o.settled_after)
        .max()
        .unwrap_or_default();
    let dual = outcomes.iter().map(|o| o.dual).max().unwrap_or_default();
    println!(
        "single fault: {} seeds, slowest settle {worst:?}, longest dual {dual:?}",
        outcomes.len()
    );
    assert!(
        worst < Duration::from_millis(20),
        "fail-over slower than 20 ms: {worst:?}"
    );
}

#[test]
fn partition_heal_leaves_two_masters_at_most_one_interval_plus_delay() {
    let duals = run("partition heal", check::partition_heal);
    let worst = duals.iter().max().copied().unwrap_or_default();
    println!(
        "partition heal: {} seeds, longest dual after heal {worst:?}",
        duals.len()
    );
}

#[test]
fn frozen_then_resumed_master_steps_down() {
    run("freeze resume", check::freeze_resume);
}

#[test]
fn no_false_failover_under_stated_loss() {
    let outcomes = run("no false fail-over", |seed| {
        check::no_false_failover(seed, Duration::from_millis(150))
    });
    let soft: u64 = outcomes.iter().map(|o| o.soft_timeouts).sum();
    let observed: Duration = outcomes.iter().map(|o| o.observed).sum();
    println!("no false fail-over: {observed:?} simulated, {soft} soft timeouts, 0 fail-overs");
}
