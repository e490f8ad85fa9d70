//! Rate search and the fabric's own ceiling.
//!
//! A benchmark trial sends test traffic at one rate for a while and counts loss
//! ([`TrialRunner`]); [`find_max_rate`] searches the highest rate whose loss stays under a
//! threshold (0.1 %). [`measure_ceiling`] runs the same search on a path where a
//! [`LoopbackAppliance`] stands in for the appliance VM:
//!
//! ```text
//! appliance: Source ─▶ port ─UDP─▶ QEMU ─▶ guest ─▶ QEMU ─UDP─▶ port ─▶ Sink
//! ceiling:   Source ─▶ port ─UDP─▶ loopback thread ──────────UDP─▶ port ─▶ Sink
//! ```
//!
//! Both paths pay the same fabric-side costs (source thread, two UDP hops, a receive
//! thread, the sink), so `appliance rate / ceiling rate` says how much of what the lab can
//! measure the appliance reaches, on the same machine and in the same run.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::fabric::{Discard, Fabric, FabricConfig, PortId, VmPort};
use crate::histogram::LatencySummary;
use crate::sink::{LossStats, Sink};
use crate::source::{Rate, Source, SourceConfig, TrafficSpec};
use crate::udp_nic::LoopbackAppliance;
use crate::{Error, MacAddress, Result, clock};

/// Something a trial measured: whether it passes the loss criterion.
pub trait Measured {
    /// The loss of the trial.
    fn loss(&self) -> LossStats;

    /// False when the trial is not valid whatever its loss: its source could not send the
    /// rate asked for, or frames queued up beyond a latency bound.
    fn acceptable(&self) -> bool {
        true
    }
}

impl Measured for LossStats {
    fn loss(&self) -> LossStats {
        *self
    }
}

/// Bounds and criterion of a rate search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateSearch {
    /// Lowest rate tried, frames per second.
    pub min_fps: f64,
    /// Highest rate tried, frames per second.
    pub max_fps: f64,
    /// A trial passes when `lost / sent` is below this (0.001 = 0.1 %).
    pub loss_threshold: f64,
    /// Stop when the passing and failing rates are within this fraction of each other.
    pub resolution: f64,
    /// Stop after this many trials.
    pub max_trials: u32,
}

impl Default for RateSearch {
    /// 1,000 to 200,000 frames/s, under 0.1 % loss, to 3 %, at most 14 trials.
    fn default() -> Self {
        RateSearch {
            min_fps: 1_000.0,
            max_fps: 200_000.0,
            loss_threshold: 0.001,
            resolution: 0.03,
            max_trials: 14,
        }
    }
}

/// Result of a rate search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOutcome<T> {
    /// The highest passing rate and its trial; `None` when even `min_fps` failed.
    pub best: Option<(f64, T)>,
    /// Every trial: rate and whether it passed, in order.
    pub trials: Vec<(f64, bool)>,
}

/// Finds the highest rate in `[min_fps, max_fps]` whose trial passes: tries `max_fps`,
/// then `min_fps`, then bisects (geometric mean) between the best pass and the lowest fail.
pub fn find_max_rate<T: Measured>(
    search: &RateSearch,
    mut run: impl FnMut(f64) -> Result<T>,
) -> Result<SearchOutcome<T>> {
    let valid = search.min_fps > 0.0
        && search.min_fps <= search.max_fps
        && search.max_fps.is_finite()
        && search.max_trials >= 1;
    if !valid {
        return Err(Error::InvalidArgument("rate search bounds"));
    }
    let mut outcome = SearchOutcome {
        best: None,
        trials: Vec::new(),
    };
    let mut trial = |rate: f64, outcome: &mut SearchOutcome<T>| -> Result<bool> {
        let result = run(rate)?;
        let passed = result.acceptable() && result.loss().loss_ratio() < search.loss_threshold;
        outcome.trials.push((rate, passed));
        if passed && outcome.best.as_ref().is_none_or(|(best, _)| rate > *best) {
            outcome.best = Some((rate, result));
        }
        Ok(passed)
    };
    if trial(search.max_fps, &mut outcome)? {
        return Ok(outcome);
    }
    if search.max_trials < 2 || !trial(search.min_fps, &mut outcome)? {
        return Ok(outcome);
    }
    let (mut passing, mut failing) = (search.min_fps, search.max_fps);
    while (outcome.trials.len() as u32) < search.max_trials
        && failing - passing > search.resolution * failing
    {
        let rate = (passing * failing).sqrt();
        if trial(rate, &mut outcome)? {
            passing = rate;
        } else {
            failing = rate;
        }
    }
    Ok(outcome)
}

/// Settings of the trials of a [`TrialRunner`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrialConfig {
    /// Addresses and flow count; flow ids are chosen per trial.
    pub traffic: TrafficSpec,
    /// Frame size with FCS.
    pub frame_size: usize,
    /// How long each trial sends.
    pub duration: Duration,
    /// After sending, the path counts as drained when no frame came for this long.
    pub drain_quiet: Duration,
    /// Longest wait for the drain.
    pub drain_timeout: Duration,
    /// A trial whose source sent less than this fraction of the asked rate does not pass.
    pub min_offered_ratio: f64,
    /// A trial whose 99th-percentile latency is above this does not pass. Large socket
    /// buffers hide an overload in a short trial: a path slightly too slow queues frames
    /// (milliseconds of latency) instead of dropping them, and delivers them during the
    /// drain. `None`: loss alone decides (RFC 2544).
    pub max_p99_latency: Option<Duration>,
    /// The source's [`SourceConfig::max_burst`].
    pub max_burst: u32,
    /// The source's [`SourceConfig::spin_below`].
    pub spin_below: Duration,
}

impl TrialConfig {
    /// One-second trials, drained after 100 ms of quiet (at most 2 s), 97 % of the rate
    /// offered, the source's default pacing.
    pub fn new(traffic: TrafficSpec, frame_size: usize) -> TrialConfig {
        let source = SourceConfig::new(traffic, Rate::Unlimited, frame_size);
        TrialConfig {
            max_burst: source.max_burst,
            spin_below: source.spin_below,
            traffic,
            frame_size,
            duration: Duration::from_secs(1),
            drain_quiet: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(2),
            min_offered_ratio: 0.97,
            max_p99_latency: None,
        }
    }
}

/// One trial's measurements.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialResult {
    /// Frame size with FCS.
    pub frame_size: usize,
    /// Rate asked for, frames per second.
    pub offered_fps: f64,
    /// Rate the source really sent, frames per second.
    pub achieved_fps: f64,
    /// Loss, duplicates, reordering.
    pub loss: LossStats,
    /// One-way latency through the path; `None` when nothing arrived.
    pub latency: Option<LatencySummary>,
    /// Whether the source kept up (see [`TrialConfig::min_offered_ratio`]).
    pub source_kept_up: bool,
    /// Whether the latency stayed within [`TrialConfig::max_p99_latency`].
    pub latency_kept: bool,
}

impl TrialResult {
    /// Delivered Mbit/s, counting each frame's full size with FCS
    /// (received frames per second x size x 8).
    pub fn delivered_mbit_per_second(&self) -> f64 {
        let fraction = 1.0 - self.loss.loss_ratio();
        self.achieved_fps * fraction * self.frame_size as f64 * 8.0 / 1e6
    }
}

impl Measured for TrialResult {
    fn loss(&self) -> LossStats {
        self.loss
    }

    fn acceptable(&self) -> bool {
        self.source_kept_up && self.latency_kept
    }
}

/// Runs trials from one source port to one sink; each trial uses fresh flow ids, so late
/// frames of an earlier trial never count in a later one.
pub struct TrialRunner<'a> {
    fabric: &'a Fabric,
    source_port: PortId,
    sink: &'a Sink,
    config: TrialConfig,
    next_flow: u16,
}

impl<'a> TrialRunner<'a> {
    /// A runner sending into `source_port` and counting at `sink`.
    pub fn new(
        fabric: &'a Fabric,
        source_port: PortId,
        sink: &'a Sink,
        config: TrialConfig,
    ) -> TrialRunner<'a> {
        TrialRunner {
            fabric,
            source_port,
            sink,
            config,
            next_flow: 0,
        }
    }

    /// Sends at `rate_fps` for the configured duration, waits for the path to drain, and
    /// measures.
    pub fn run(&mut self, rate_fps: f64) -> Result<TrialResult> {
        let mut traffic = self.config.traffic;
        traffic.first_flow = self.next_flow;
        self.next_flow = self.next_flow.wrapping_add(traffic.flows.max(1));
        self.sink.reset();
        let mut source_config = SourceConfig::new(
            traffic,
            Rate::FramesPerSecond(rate_fps),
            self.config.frame_size,
        );
        source_config.duration = Some(self.config.duration);
        source_config.max_burst = self.config.max_burst;
        source_config.spin_below = self.config.spin_below;
        let source = Source::start(self.fabric, self.source_port, source_config)?.wait()?;
        self.sink
            .wait_quiet(self.config.drain_quiet, self.config.drain_timeout);
        let report = self.sink.report();
        let achieved_fps = source.achieved_fps();
        let latency = report.latency_of(traffic.flow_ids()).summary();
        let latency_kept = match (self.config.max_p99_latency, latency) {
            (Some(bound), Some(latency)) => latency.p99_ns <= clock::duration_ns(bound),
            _ => true,
        };
        Ok(TrialResult {
            frame_size: self.config.frame_size,
            offered_fps: rate_fps,
            achieved_fps,
            loss: report.loss_against(&source),
            latency,
            source_kept_up: achieved_fps >= rate_fps * self.config.min_offered_ratio,
            latency_kept,
        })
    }
}

/// A ready path for the ceiling: source port, LAN port, loopback appliance, WAN port, sink.
pub struct CeilingPath {
    /// The fabric carrying it.
    pub fabric: Fabric,
    /// Internal port the source sends into (wired to `lan`).
    pub source_port: PortId,
    /// The stand-in box's first NIC.
    pub lan: VmPort,
    /// The stand-in box's second NIC.
    pub wan: VmPort,
    /// Internal port the sink sits on (wired to `wan`).
    pub sink_port: PortId,
    /// The sink.
    pub sink: Sink,
    /// Must outlive the trials (dropped after the fabric's threads stop using it).
    pub appliance: LoopbackAppliance,
}

impl CeilingPath {
    /// Builds the path on a new fabric.
    pub fn new(config: FabricConfig) -> Result<CeilingPath> {
        let fabric = Fabric::with_config(config)?;
        let sink = Sink::new();
        let source_port = fabric.add_internal_port("source", Discard)?;
        let lan = fabric.add_vm_port("loopback-lan", MacAddress([2, 0, 0, 0, 0xfe, 1]))?;
        let wan = fabric.add_vm_port("loopback-wan", MacAddress([2, 0, 0, 0, 0xfe, 2]))?;
        let sink_port = fabric.add_internal_port("sink", sink.clone())?;
        fabric.wire(source_port, lan.id)?;
        fabric.wire(wan.id, sink_port)?;
        let appliance = LoopbackAppliance::start(&lan, &wan)?;
        Ok(CeilingPath {
            fabric,
            source_port,
            lan,
            wan,
            sink_port,
            sink,
            appliance,
        })
    }

    /// Traffic for this path: one flow, 10.0.0.1 to 10.0.1.1.
    pub fn traffic() -> TrafficSpec {
        TrafficSpec::new(
            MacAddress([2, 0, 0, 0, 0, 1]),
            MacAddress([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 1, 1),
        )
    }

    /// A trial runner on this path.
    pub fn runner(&self, config: TrialConfig) -> TrialRunner<'_> {
        TrialRunner::new(&self.fabric, self.source_port, &self.sink, config)
    }
}

/// Searches the fabric's own highest rate under the search's loss threshold for one frame
/// size, on a fresh [`CeilingPath`].
pub fn measure_ceiling(
    frame_size: usize,
    search: &RateSearch,
    trial_duration: Duration,
) -> Result<SearchOutcome<TrialResult>> {
    let path = CeilingPath::new(FabricConfig::default())?;
    let mut config = TrialConfig::new(CeilingPath::traffic(), frame_size);
    config.duration = trial_duration;
    let mut runner = path.runner(config);
    find_max_rate(search, |rate| runner.run(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss_above(threshold_fps: f64) -> impl FnMut(f64) -> Result<LossStats> {
        move |rate| {
            let lost = if rate > threshold_fps { 10 } else { 0 };
            Ok(LossStats {
                sent: 1000,
                received: 1000 - lost,
                lost,
                duplicated: 0,
                reordered: 0,
            })
        }
    }

    #[test]
    fn search_converges_on_the_threshold() {
        let search = RateSearch::default();
        let outcome = find_max_rate(&search, loss_above(37_000.0)).unwrap();
        let (best, _) = outcome.best.unwrap();
        assert!(
            best <= 37_000.0 && best >= 37_000.0 * (1.0 - search.resolution),
            "{best}"
        );
        assert!(outcome.trials.len() <= search.max_trials as usize);
        assert_eq!(outcome.trials[0], (search.max_fps, false));
        assert_eq!(outcome.trials[1], (search.min_fps, true));
    }

    #[test]
    fn search_handles_all_pass_and_all_fail() {
        let search = RateSearch::default();
        let all = find_max_rate(&search, loss_above(f64::INFINITY)).unwrap();
        assert_eq!(all.best.map(|(rate, _)| rate), Some(search.max_fps));
        assert_eq!(all.trials.len(), 1);
        let none = find_max_rate(&search, loss_above(0.0)).unwrap();
        assert!(none.best.is_none());
        assert_eq!(none.trials.len(), 2);
        let bad = RateSearch {
            min_fps: 0.0,
            ..search
        };
        assert!(find_max_rate(&bad, loss_above(1.0)).is_err());
    }
}
