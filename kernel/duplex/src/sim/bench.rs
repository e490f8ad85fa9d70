//! The benchmark behind `cargo lab sim`: detection time, false fail-overs and dual-Master
//! time against heartbeat interval and loss rate.
//!
//! For every (interval, loss) pair and every seed, one simulated group (parallel, default
//! ratios of [`Timing::scaled`]) cold-starts, runs fault-free for `steady` (false fail-overs
//! are claims during that time), has its Master cut off from every path long enough for a
//! takeover and then healed (dual-Master time after the heal), and finally loses its Master
//! to a crash (detection time: crash to the instant exactly one node forwards for good).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;

use duplex_hal::Instant;

use super::{Fault, LinkProfile, Rng, Sim, SimConfig};
use crate::config::Timing;
use crate::state::{Cause, Mode};

/// What to measure. The default is the worst case for heartbeats: a pair with one single
/// heartbeat path (a real pair has two or three), loss from 0 to 40 %, 200 µs of jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Seeds per (interval, loss) pair.
    pub seeds: u32,
    /// Nodes in the group.
    pub nodes: usize,
    /// Heartbeat paths.
    pub paths: usize,
    /// Heartbeat intervals to try.
    pub intervals: Vec<Duration>,
    /// Loss rates per path to try, in percent.
    pub loss_pct: Vec<f64>,
    /// One-way delay.
    pub delay: Duration,
    /// Jitter (uniform extra delay up to this).
    pub jitter: Duration,
    /// Fault-free time simulated per seed (for false fail-overs).
    pub steady: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            seeds: 200,
            nodes: 2,
            paths: 1,
            intervals: vec![
                Duration::from_millis(1),
                Duration::from_millis(2),
                Duration::from_millis(5),
            ],
            loss_pct: vec![0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0],
            delay: Duration::from_micros(50),
            jitter: Duration::from_micros(200),
            steady: Duration::from_secs(1),
        }
    }
}

/// One line of the result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchRow {
    /// Heartbeat interval, ms.
    pub interval_ms: f64,
    /// Loss per path, percent.
    pub loss_pct: f64,
    /// Median detection (crash to new Master forwarding), ms.
    pub detect_ms_p50: f64,
    /// 99th percentile of the same, ms.
    pub detect_ms_p99: f64,
    /// Claims during fault-free time, per hour of simulated time.
    pub false_failovers_per_hour: f64,
    /// Longest time with two Masters (after a partition heals, or anywhere), ms.
    pub dual_master_ms_max: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: u32) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

struct SeedResult {
    detect: Option<Duration>,
    false_failovers: u64,
    dual: Duration,
}

fn run_seed(config: &BenchConfig, interval: Duration, loss_pct: f64, seed: u64) -> SeedResult {
    let timing = Timing::scaled(interval);
    let loss_ppm = (loss_pct * 10_000.0) as u32;
    let sim_config = SimConfig {
        mode: Mode::Parallel,
        nodes: config.nodes,
        paths: config.paths,
        timing,
        link: LinkProfile {
            loss_ppm,
            delay: config.delay,
            jitter: config.jitter,
            duplicate_ppm: 0,
            reorder_ppm: 0,
            reorder_delay: Duration::ZERO,
        },
        seed,
        priorities: Vec::new(),
        boot_spread: interval * 2,
        service_deadline: interval * 2,
    };
    let mut sim = Sim::new(sim_config);
    let mut rng = Rng::new(seed ^ 0xBE7C);
    // Cold start.
    let warm = Instant::ZERO + interval * 40;
    sim.run_until(warm);
    // Fault-free time: any claim is a false fail-over.
    let first = sim.trace().len();
    sim.run_until(warm + config.steady);
    let false_failovers = sim.trace()[first..]
        .iter()
        .filter(|e| e.transition.to.is_claimer() && e.transition.cause != Cause::Confirmed)
        .count() as u64;
    let mut dual = sim.longest_dual_since(warm);
    // Partition the Master away long enough for a takeover, then heal.
    let mut result = SeedResult {
        detect: None,
        false_failovers,
        dual,
    };
    let Some(&master) = sim.forwarding_nodes().first() else {
        return result;
    };
    let cut = (timing.soft_timeout_max + timing.hard_extension_max) * 2 + interval * 5;
    let at = sim.now();
    sim.schedule(
        at,
        Fault::Isolate {
            node: master,
            duration: cut,
        },
    );
    let heal = at + cut;
    sim.run_until(heal + interval * 20);
    dual = dual.max(sim.longest_dual_since(heal));
    result.dual = dual;
    // Crash the Master.
    let Some(&master) = sim.forwarding_nodes().first() else {
        return result;
    };
    let crash = sim.now() + rng.duration_up_to(interval);
    sim.schedule(crash, Fault::Crash(master));
    sim.run_until(crash + interval * 60);
    result.detect = sim
        .settled_single_since(crash)
        .map(|t| t.saturating_since(crash));
    result
}

/// Runs the benchmark: one row per (interval, loss) pair, in order.
pub fn benchmark(config: &BenchConfig) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    for &interval in &config.intervals {
        for &loss in &config.loss_pct {
            let mut detects = Vec::new();
            let mut false_failovers = 0u64;
            let mut dual = Duration::ZERO;
            for seed in 0..u64::from(config.seeds) {
                let r = run_seed(config, interval, loss, seed);
                if let Some(d) = r.detect {
                    detects.push(d);
                }
                false_failovers += r.false_failovers;
                dual = dual.max(r.dual);
            }
            detects.sort();
            let hours = config.steady.as_secs_f64() * f64::from(config.seeds) / 3600.0;
            rows.push(BenchRow {
                interval_ms: ms(interval),
                loss_pct: loss,
                detect_ms_p50: ms(percentile(&detects, 50)),
                detect_ms_p99: ms(percentile(&detects, 99)),
                false_failovers_per_hour: if hours > 0.0 {
                    false_failovers as f64 / hours
                } else {
                    0.0
                },
                dual_master_ms_max: ms(dual),
            });
        }
    }
    rows
}

/// The rows as a human-readable table.
pub fn render_table(rows: &[BenchRow]) -> String {
    let mut s = String::new();
    s.push_str(
        "interval  loss/path  detect p50  detect p99  false fail-overs/h  dual-Master max\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>6.2} ms  {:>7.1} %  {:>7.2} ms  {:>7.2} ms  {:>18.2}  {:>12.2} ms",
            r.interval_ms,
            r.loss_pct,
            r.detect_ms_p50,
            r.detect_ms_p99,
            r.false_failovers_per_hour,
            r.dual_master_ms_max
        );
    }
    s
}

/// The rows as one line of JSON: `{"rows":[{"interval_ms":..,...}]}`.
pub fn render_json(rows: &[BenchRow]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"interval_ms\":{:.3},\"loss_pct\":{:.3},\"detect_ms_p50\":{:.3},\"detect_ms_p99\":{:.3},\"false_failovers_per_hour\":{:.3},\"dual_master_ms_max\":{:.3}}}",
                r.interval_ms,
                r.loss_pct,
                r.detect_ms_p50,
                r.detect_ms_p99,
                r.false_failovers_per_hour,
                r.dual_master_ms_max
            )
        })
        .collect();
    format!("{{\"rows\":[{}]}}", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn small_benchmark_renders() {
        let config = BenchConfig {
            seeds: 3,
            intervals: vec![Duration::from_millis(1)],
            loss_pct: vec![0.0, 10.0],
            steady: Duration::from_millis(100),
            ..BenchConfig::default()
        };
        let rows = benchmark(&config);
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert!(r.detect_ms_p50 > 0.0 && r.detect_ms_p50 < 20.0, "{r:?}");
            assert!(r.detect_ms_p99 >= r.detect_ms_p50);
        }
        let table = render_table(&rows);
        assert_eq!(table.lines().count(), 3);
        let json = render_json(&rows);
        assert!(json.starts_with("{\"rows\":[{\"interval_ms\":1.000,\"loss_pct\":0.000,"));
        assert!(json.ends_with("}]}"));
        assert!(!json.contains('\n'));
    }
}
