//! `cargo lab bench forward`: how fast one appliance forwards, against what the lab
//! itself can carry, measured in the same run.
//!
//! ```text
//! appliance: Source ─▶ port ─UDP─▶ QEMU ─▶ guest bridge (lan → wan) ─▶ QEMU ─UDP─▶ port ─▶ Sink
//! ceiling:   Source ─▶ port ─UDP─▶ loopback thread (no VM) ───────────────────UDP─▶ port ─▶ Sink
//! ```
//!
//! The appliance's NICs are fabric ports whose QEMU-side sockets the fabric opens and
//! QEMU inherits ([`Appliance::launch_with_sockets`]: 4 MiB buffers, no port race). The
//! ceiling path is the fabric's [`CeilingPath`]: the same source, sink, fabric threads and
//! both UDP hops, with a host thread where the VM would be. `ratio = appliance / ceiling`
//! is the share of what the lab can measure that the appliance reaches on this machine.
//!
//! # Method
//!
//! - A trial ([`TrialRunner::run`]) sends one flow of UDP test frames at a fixed rate for
//!   [`ForwardOptions::trial_duration`] (1 s), waits until no frame came for
//!   [`ForwardOptions::drain_quiet`] (250 ms), and counts. It passes when under 0.1 % of
//!   the frames are lost, the source really sent 97 % of the rate, and the median
//!   latency stays under [`ForwardOptions::max_median_latency`] (5 ms). The latency bound
//!   is there because the 4 MiB socket buffers (thousands of frames) let a path slightly
//!   too slow queue a whole trial's excess instead of dropping it and deliver it while
//!   draining, a "pass" it could not sustain; such a queue grows through the trial and
//!   lifts the median to half its final delay. The median rather than the p99: host
//!   scheduling stalls on a shared 2-core machine (tens of ms, a few % of the frames)
//!   move the tail, not the median.
//! - A doubtful failure is run again, up to twice ([`ForwardOptions::retries`]): a near
//!   miss (under [`CLEAR_OVERLOAD`], 2 %, lost) or a failure at a rate the path has
//!   already passed. Stalls make a path fail, never pass, and one false failure low in a
//!   bisection would cap its result.
//! - The search is [`find_max_rate`]'s (tries the top of the range, the bottom, then
//!   bisects with the geometric mean to 3 %), driven step by step (a small state machine) so
//!   that the two paths run in **lockstep**: one ceiling trial, one appliance trial, and
//!   so on. Both see the machine's load of the same few seconds, and each round's
//!   `appliance / ceiling` is a paired figure. The appliance is paused (QMP `stop`)
//!   during ceiling trials, so that its idle loop takes no CPU.
//! - Round 1 searches 1,000 to 200,000 frames/s; later rounds search `[0.6, 1.3] x` the
//!   earlier rounds' median first and go on beyond when the answer lies at an edge.
//!   Reported: the medians over rounds of each path's rate, and the median of the
//!   rounds' ratios (`ratio`; close to, not always equal to, `fps / ceiling_fps`).
//! - Latency is measured in a separate trial at half the rate found (at the rate found
//!   it mostly measures queueing in the buffers), median over the rounds.
//! - The source sleeps between frames and catches up in bursts
//!   ([`ForwardOptions::source_spin`]): a spinning source takes a core from QEMU.
//! - Before any measurement the appliance forwards a trickle until a frame gets through
//!   and at least a second has passed since it came up: QEMU 7.2's e1000 was once seen to
//!   wedge its receive path for good when a burst arrived within a second of the receiver
//!   being enabled (not reproduced since; the warm-up costs a second and stays). A frame sent from the sink's side teaches the bridge where the destination
//!   lives, so test frames are forwarded, not flooded. The appliance boots with
//!   [`DEFAULT_CMDLINE`] (a plain bridge, no heartbeats).
//!
//! After the rounds the printout gives each round (rates, Mbit/s, ratio, trials, the
//! CPU other work on the machine took: [`Round::others_cpu_percent`]), the medians, the
//! latency, and with `--json` the JSON line last ([`ForwardReport::json_line`]).
//!
//! # Command line
//!
//! `cargo lab bench forward [--nic virtio|e1000] [--size N] [--rounds N] [--trial-ms N]
//! [--max-p50-ms N] [--max-p99-ms N] [--rate FPS] [--cmdline STR] [--source-spin-us N]
//! [--json]`: defaults virtio, 64 bytes, 3 rounds, 1000 ms, 5 ms, none (0 turns a bound
//! off), search (a rate: one trial per path and round), `mode=standalone`, 0 µs.
//! `DUPLEX_IMAGE=PATH` boots a prebuilt image instead of building one.
//!
//! Sizes are RFC 2544 frame sizes with the 4-byte FCS that is never carried (a 64-byte
//! frame is a 60-byte datagram; `--size 1500` a 1500-byte frame); 1518 is the largest
//! (1500-byte IP packets). Mbit/s count the whole frame with FCS, without preamble and
//! inter-frame gap.
//!
//! [`find_max_rate`]: duplex_fabric::bench::find_max_rate

use std::path::PathBuf;
use std::time::{Duration, Instant};

use duplex_fabric::bench::{CeilingPath, RateSearch, TrialConfig, TrialResult, TrialRunner};
use duplex_fabric::{
    Discard, Fabric, FabricConfig, LatencySummary, Rate, Sink, Source, SourceConfig, TrafficSpec,
};

use crate::appliance::{Appliance, NicModel};
use crate::stats::median;
use crate::vm::VmConfig;
use crate::{Result, image, lab_error};

/// Smallest frame size accepted (RFC 2544 minimum, with FCS).
pub const MIN_FRAME_SIZE: usize = 64;
/// Largest frame size accepted (RFC 2544 maximum for a 1500-byte MTU, with FCS).
pub const MAX_FRAME_SIZE: usize = 1518;
/// The appliance's default boot command line: a single bridge, no heartbeats (the
/// forwarding path alone; a lone box in a pair mode would also send heartbeats and run
/// its election).
pub const DEFAULT_CMDLINE: &str = "mode=standalone";
/// A trial losing this share of its frames or more, at a rate the path never passed, is
/// an overload, not a hiccup: it is not run again.
pub const CLEAR_OVERLOAD: f64 = 0.02;
/// Other work taking more than this share of one CPU during a run (median of rounds)
/// makes the printout warn that the figures are depressed.
const BUSY_MACHINE_PERCENT: f64 = 25.0;
/// Rounds after the first search `[NARROW_BELOW, NARROW_ABOVE] x` the earlier rounds'
/// median first (and beyond, when the answer lies at an edge).
const NARROW_BELOW: f64 = 0.6;
/// See [`NARROW_BELOW`].
const NARROW_ABOVE: f64 = 1.3;
/// Flow id of the warm-up trickle (kept apart from the trials' flow ids, which count up
/// from 0).
const WARM_UP_FLOW: u16 = 60_000;
/// Longest wait for the appliance to boot and forward its first frame.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// QEMU's e1000 wedges when a burst comes within this long of the receiver's start.
const E1000_SETTLE: Duration = Duration::from_secs(1);
/// Deadline of one QMP or console command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// What to measure and how.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    /// The NIC model of both appliance NICs.
    pub nic: NicModel,
    /// Frame size with FCS, [`MIN_FRAME_SIZE`] to [`MAX_FRAME_SIZE`].
    pub frame_size: usize,
    /// Rounds (each: one ceiling search, one appliance search); figures are medians.
    pub rounds: usize,
    /// How long each trial sends.
    pub trial_duration: Duration,
    /// Range, loss threshold, resolution and trial budget of each search.
    pub search: RateSearch,
    /// A trial whose median latency exceeds this fails (`None`: no bound). A path that
    /// is too slow queues frames in the 4 MiB socket buffers instead of dropping them
    /// (thousands of frames: a whole trial's overload may fit) and delivers them while
    /// the trial drains; its latency grows through the trial, the median to about half
    /// the final queue. The median, unlike the tail, is not moved by the host's
    /// scheduling stalls (tens of ms on a shared 2-core machine).
    pub max_median_latency: Option<Duration>,
    /// A trial whose 99th-percentile latency exceeds this fails (`None`: no bound).
    pub max_p99_latency: Option<Duration>,
    /// How many times a failing trial is run again before its rate counts as failed. Only
    /// doubtful failures are: a near miss (under [`CLEAR_OVERLOAD`] lost), or any failure
    /// at a rate the path has already passed (in this round or an earlier one). A shared
    /// machine's stalls fail trials the path would pass; they never make a path faster
    /// than it is, and one false failure low in a bisection caps its result.
    pub retries: u32,
    /// Instead of searching, run one trial per path and round at this rate (frames/s);
    /// latency then comes from that trial. For smoke tests.
    pub fixed_rate: Option<f64>,
    /// The source's [`SourceConfig::spin_below`]: waits shorter than this are spent in a
    /// `yield` loop. Zero (the default): the source always sleeps and catches up in
    /// bursts (at most [`SourceConfig::max_burst`] frames). Spinning is more regular but
    /// takes a whole core whenever frames are due less than that apart; on a 2-core
    /// machine that core is taken from QEMU, not from the ceiling's host thread, and the
    /// ratio suffers for it.
    pub source_spin: Duration,
    /// After a trial has sent, the path counts as drained when no frame came for this
    /// long; frames later than that count as lost. A host stall longer than this just
    /// as a trial ends would turn a whole buffer of late frames into losses.
    pub drain_quiet: Duration,
    /// The image to boot; `None` builds it ([`image::build`]).
    pub kernel: Option<PathBuf>,
    /// The appliance's boot command line ([`DEFAULT_CMDLINE`]: a plain bridge).
    pub cmdline: String,
    /// Print a line per trial on stderr.
    pub progress: bool,
}

impl ForwardOptions {
    /// Three rounds of one-second trials, 1,000 to 200,000 frames/s, loss under 0.1 %,
    /// median latency under 5 ms, doubtful failures run up to twice more, progress lines
    /// on.
    pub fn new(nic: NicModel, frame_size: usize) -> ForwardOptions {
        ForwardOptions {
            nic,
            frame_size,
            rounds: 3,
            trial_duration: Duration::from_secs(1),
            search: RateSearch::default(),
            max_median_latency: Some(Duration::from_millis(5)),
            max_p99_latency: None,
            retries: 2,
            source_spin: Duration::ZERO,
            drain_quiet: Duration::from_millis(250),
            fixed_rate: None,
            kernel: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            progress: true,
        }
    }

    fn check(&self) -> Result {
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&self.frame_size) {
            return Err(lab_error!(
                "frame size {} is outside {MIN_FRAME_SIZE}..={MAX_FRAME_SIZE} (sizes count the FCS)",
                self.frame_size
            ));
        }
        if self.rounds == 0 {
            return Err(lab_error!("at least one round is needed"));
        }
        if self.trial_duration < Duration::from_millis(100) {
            return Err(lab_error!(
                "trials shorter than 100 ms measure nothing useful"
            ));
        }
        if let Some(rate) = self.fixed_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(lab_error!(
                "the fixed rate must be a positive number of frames/s"
            ));
        }
        Ok(())
    }
}

/// One trial of a search, in order.
#[derive(Clone, Debug)]
pub struct Trial {
    /// The rate asked for, frames per second.
    pub rate_fps: f64,
    /// What it measured.
    pub result: TrialResult,
    /// Whether it passed the criterion.
    pub passed: bool,
}

/// One path's result in one round.
#[derive(Clone, Debug, Default)]
pub struct PathResult {
    /// Every trial of the search (not the latency trial).
    pub trials: Vec<Trial>,
    /// The passing trial with the highest rate; `None` when none passed.
    pub best: Option<TrialResult>,
    /// Latency at half the best rate (fixed-rate mode: of the trial itself).
    pub latency: Option<LatencySummary>,
}

impl PathResult {
    /// Frames per second delivered in the best passing trial (0 when none passed).
    pub fn forwarded_fps(&self) -> f64 {
        self.best.as_ref().map_or(0.0, forwarded_fps)
    }
}

/// Frames per second a trial delivered: the rate really sent, less the loss.
fn forwarded_fps(trial: &TrialResult) -> f64 {
    trial.achieved_fps * (1.0 - trial.loss.loss_ratio())
}

/// One round: the two paths, measured in lockstep (one trial each in turn).
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// The appliance path.
    pub appliance: PathResult,
    /// The fabric's own path (no VM).
    pub ceiling: PathResult,
    /// CPU that other work on the machine took during the round, in percent of one CPU
    /// (`None` without `/proc`). Competition depresses the appliance path more than the
    /// ceiling (it has more busy threads), so a busy machine lowers the ratio too.
    pub others_cpu_percent: Option<f64>,
}

impl Round {
    /// Appliance rate / ceiling rate (0 when the ceiling is 0).
    pub fn ratio(&self) -> f64 {
        let ceiling = self.ceiling.forwarded_fps();
        if ceiling > 0.0 {
            self.appliance.forwarded_fps() / ceiling
        } else {
            0.0
        }
    }
}

/// The benchmark's outcome.
#[derive(Clone, Debug)]
pub struct ForwardReport {
    /// NIC model.
    pub nic: NicModel,
    /// Frame size with FCS.
    pub frame_size: usize,
    /// Trial length used.
    pub trial_duration: Duration,
    /// What was measured, in words: the search's pass criterion or the fixed rate.
    pub criterion: String,
    /// Fixed-rate mode's rate, if used.
    pub fixed_rate: Option<f64>,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Median over rounds of the appliance's forwarded frames/s.
    pub fps: f64,
    /// The same in Mbit/s (frame with FCS).
    pub mbps: f64,
    /// Median over rounds of the ceiling's frames/s.
    pub ceiling_fps: f64,
    /// Median over rounds of each round's appliance / ceiling rate (0 when the ceiling
    /// is 0). Close to, not always equal to, `fps / ceiling_fps`.
    pub ratio: f64,
    /// Median over rounds of the appliance's median latency at half its rate, µs.
    pub latency_p50_us: f64,
    /// Median over rounds of the appliance's p99 latency at half its rate, µs.
    pub latency_p99_us: f64,
    /// The same two for the ceiling path, µs.
    pub ceiling_latency_us: (f64, f64),
    /// Median over rounds of [`Round::others_cpu_percent`].
    pub others_cpu_percent: Option<f64>,
    /// The appliance's `show interfaces` after the last round (its drop counters).
    pub interfaces: String,
}

impl ForwardReport {
    fn from_rounds(options: &ForwardOptions, rounds: Vec<Round>, interfaces: String) -> Self {
        let fps = median_of(rounds.iter().map(|r| r.appliance.forwarded_fps()));
        let ceiling_fps = median_of(rounds.iter().map(|r| r.ceiling.forwarded_fps()));
        // Each round's two paths were measured in lockstep, under the same load: the
        // median of the per-round ratios cancels load that the medians of each path keep.
        let ratio = median_of(rounds.iter().map(Round::ratio));
        let latency = |path: fn(&Round) -> &PathResult, pick: fn(&LatencySummary) -> u64| {
            median_of(
                rounds
                    .iter()
                    .filter_map(|r| path(r).latency.as_ref())
                    .map(|l| pick(l) as f64 / 1e3),
            )
        };
        fn appliance(round: &Round) -> &PathResult {
            &round.appliance
        }
        fn ceiling(round: &Round) -> &PathResult {
            &round.ceiling
        }
        ForwardReport {
            nic: options.nic,
            frame_size: options.frame_size,
            trial_duration: options.trial_duration,
            criterion: match options.fixed_rate {
                Some(rate) => format!("one trial at {rate:.0} frames/s per path and round"),
                None => criterion(options),
            },
            fixed_rate: options.fixed_rate,
            fps,
            mbps: megabits(fps, options.frame_size),
            ceiling_fps,
            ratio,
            latency_p50_us: latency(appliance, |l| l.median_ns),
            latency_p99_us: latency(appliance, |l| l.p99_ns),
            ceiling_latency_us: (
                latency(ceiling, |l| l.median_ns),
                latency(ceiling, |l| l.p99_ns),
            ),
            others_cpu_percent: median(
                &rounds
                    .iter()
                    .filter_map(|r| r.others_cpu_percent)
                    .collect::<Vec<_>>(),
            ),
            rounds,
            interfaces,
        }
    }

    /// The one-line JSON summary, keys in this order:
    /// `{"nic":..,"size":..,"fps":..,"mbps":..,"ceiling_fps":..,"ratio":..,"lat_us_p50":..,"lat_us_p99":..}`.
    pub fn json_line(&self) -> String {
        format!(
            "{{\"nic\":\"{}\",\"size\":{},\"fps\":{},\"mbps\":{},\"ceiling_fps\":{},\"ratio\":{},\"lat_us_p50\":{},\"lat_us_p99\":{}}}",
            self.nic.name(),
            self.frame_size,
            json_number(self.fps, 0),
            json_number(self.mbps, 1),
            json_number(self.ceiling_fps, 0),
            json_number(self.ratio, 3),
            json_number(self.latency_p50_us, 1),
            json_number(self.latency_p99_us, 1),
        )
    }
}

/// A finite JSON number with `decimals` digits after the point (non-finite values: 0).
fn json_number(value: f64, decimals: usize) -> String {
    let value = if value.is_finite() { value } else { 0.0 };
    format!("{value:.decimals$}")
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    median(&values).unwrap_or(0.0)
}

/// Mbit/s of `fps` frames of `frame_size` bytes (with FCS).
fn megabits(fps: f64, frame_size: usize) -> f64 {
    fps * frame_size as f64 * 8.0 / 1e6
}

/// Runs the benchmark: boots one appliance between a source and a sink, and measures it
/// and the fabric's ceiling, round after round.
pub fn run(options: ForwardOptions) -> Result<ForwardReport> {
    options.check()?;
    let kernel = match &options.kernel {
        Some(path) => path.clone(),
        None => image::build()?,
    };
    let log = |line: String| {
        if options.progress {
            eprintln!("[forward] {line}");
        }
    };

    // The appliance path. Locals drop in reverse order: QEMU dies before the fabric.
    let fabric = Fabric::with_config(FabricConfig::default())?;
    let sink = Sink::new();
    let source_port = fabric.add_internal_port("source", Discard)?;
    let sink_port = fabric.add_internal_port("sink", sink.clone())?;
    let mut config =
        VmConfig::new(&format!("fwd-{}", options.nic.name()), &kernel).cmdline(&options.cmdline);
    let expected = (options.rounds as u64).saturating_mul(600);
    config.lifetime = Duration::from_secs(600u64.saturating_add(expected));
    // Thread names ("CPU 0/TCG", the main loop) for profiling with top -H or /proc.
    config.extra_args.extend([
        "-name".to_string(),
        "duplex-fwd,debug-threads=on".to_string(),
    ]);
    let nic = options.nic;
    log(format!(
        "booting the appliance ({} NICs, fabric sockets passed by descriptor)",
        nic.name()
    ));
    let mut appliance =
        Appliance::launch_with_sockets(&fabric, config, 1, &[("A.lan", nic), ("A.wan", nic)])?;
    fabric.wire(source_port, appliance.ports[0].id)?;
    fabric.wire(appliance.ports[1].id, sink_port)?;
    appliance.wait_ready(BOOT_TIMEOUT)?;
    let ready = Instant::now();
    let traffic = CeilingPath::traffic();
    warm_up(
        &fabric,
        source_port,
        &sink,
        traffic,
        options.frame_size,
        ready,
    )?;
    log(format!(
        "the appliance forwards; {}",
        if let Some(rate) = options.fixed_rate {
            format!("one {rate:.0} frames/s trial per path and round")
        } else {
            format!("searching the {}", criterion(&options))
        }
    ));

    let ceiling_path = CeilingPath::new(FabricConfig::default())?;
    let trial_config = |traffic: TrafficSpec| {
        let mut config = TrialConfig::new(traffic, options.frame_size);
        config.duration = options.trial_duration;
        config.max_p99_latency = options.max_p99_latency;
        config.spin_below = options.source_spin;
        config.drain_quiet = options.drain_quiet;
        config.drain_timeout = options.drain_quiet + Duration::from_secs(2);
        config
    };
    let mut appliance_runner = TrialRunner::new(&fabric, source_port, &sink, trial_config(traffic));
    let mut ceiling_runner = ceiling_path.runner(trial_config(CeilingPath::traffic()));

    let mut rounds: Vec<Round> = Vec::new();
    for round in 1..=options.rounds {
        let previous = |pick: fn(&Round) -> &PathResult| {
            let found: Vec<f64> = rounds
                .iter()
                .filter_map(|r| pick(r).best.as_ref())
                .map(|best| best.offered_fps)
                .collect();
            median(&found)
        };
        let known_good = |pick: fn(&Round) -> &PathResult| {
            rounds
                .iter()
                .filter_map(|r| pick(r).best.as_ref())
                .map(|best| best.offered_fps)
                .reduce(f64::max)
        };
        let mut ceiling = PathSearch::new(&options, previous(ceiling_of), known_good(ceiling_of));
        let mut forward =
            PathSearch::new(&options, previous(appliance_of), known_good(appliance_of));
        let ceiling_label = format!("round {round}/{} ceiling  ", options.rounds);
        let appliance_label = format!("round {round}/{} appliance", options.rounds);
        teach_destination(&fabric, sink_port, traffic)?;
        let cpu_before = CpuSnapshot::take();
        // Lockstep: one ceiling step, one appliance step, so that both paths see the
        // machine's load of the same few seconds.
        loop {
            let ceiling_step = ceiling.next_step(&log, &ceiling_label);
            if ceiling_step != Step::Done {
                // The appliance is paused meanwhile, so that its idle loop takes no CPU.
                appliance.vm.qmp().execute("stop", None, COMMAND_TIMEOUT)?;
                let outcome = ceiling.run_step(
                    ceiling_step,
                    &mut ceiling_runner,
                    &options,
                    &log,
                    &ceiling_label,
                );
                appliance.vm.qmp().execute("cont", None, COMMAND_TIMEOUT)?;
                outcome?;
            }
            let appliance_step = forward.next_step(&log, &appliance_label);
            if appliance_step != Step::Done {
                forward.run_step(
                    appliance_step,
                    &mut appliance_runner,
                    &options,
                    &log,
                    &appliance_label,
                )?;
            }
            if ceiling_step == Step::Done && appliance_step == Step::Done {
                break;
            }
        }
        let others = cpu_before.others_percent(&CpuSnapshot::take());
        let round_result = Round {
            appliance: forward.result,
            ceiling: ceiling.result,
            others_cpu_percent: others,
        };
        log(format!(
            "round {round}/{}: appliance {:.0} frames/s, ceiling {:.0} frames/s, ratio {:.3}{}",
            options.rounds,
            round_result.appliance.forwarded_fps(),
            round_result.ceiling.forwarded_fps(),
            round_result.ratio(),
            others
                .map(|o| format!("; other work took {o:.0} % of a CPU"))
                .unwrap_or_default()
        ));
        rounds.push(round_result);
    }
    let interfaces = appliance
        .vm
        .command("show interfaces", COMMAND_TIMEOUT)
        .unwrap_or_else(|e| format!("(show interfaces failed: {e})"));
    Ok(ForwardReport::from_rounds(&options, rounds, interfaces))
}

fn appliance_of(round: &Round) -> &PathResult {
    &round.appliance
}

fn ceiling_of(round: &Round) -> &PathResult {
    &round.ceiling
}

/// Sends a trickle until frames get through and the e1000 settle time has passed.
fn warm_up(
    fabric: &Fabric,
    source_port: duplex_fabric::PortId,
    sink: &Sink,
    traffic: TrafficSpec,
    frame_size: usize,
    ready: Instant,
) -> Result {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut traffic = traffic;
    traffic.first_flow = WARM_UP_FLOW;
    loop {
        sink.reset();
        let mut config = SourceConfig::new(traffic, Rate::FramesPerSecond(100.0), frame_size);
        config.count = Some(10);
        Source::start(fabric, source_port, config)?.wait()?;
        let through = sink.wait_for(1, Duration::from_millis(500));
        if through && ready.elapsed() >= E1000_SETTLE {
            break;
        }
        if Instant::now() >= deadline {
            return Err(lab_error!(
                "the appliance forwarded no frame within {BOOT_TIMEOUT:?} of coming up"
            ));
        }
    }
    sink.wait_quiet(Duration::from_millis(100), Duration::from_secs(2));
    Ok(())
}

/// Sends one frame from the sink's side whose source address is the test traffic's
/// destination: the bridge learns that it lives on the WAN port.
fn teach_destination(
    fabric: &Fabric,
    sink_port: duplex_fabric::PortId,
    traffic: TrafficSpec,
) -> Result {
    let mut frame = vec![0u8; 60];
    frame[0..6].copy_from_slice(&traffic.source_mac.0);
    frame[6..12].copy_from_slice(&traffic.destination_mac.0);
    // 0x88b7 (OUI extended EtherType): no protocol of the appliance's, bridged as is.
    frame[12..14].copy_from_slice(&0x88b7u16.to_be_bytes());
    fabric.inject(sink_port, &frame)?;
    Ok(())
}

/// Whether a failed trial deserves another run: a near miss, or a rate the path has
/// already passed (`known_good` and below).
fn doubtful(result: &TrialResult, rate: f64, known_good: Option<f64>) -> bool {
    result.loss.loss_ratio() < CLEAR_OVERLOAD || known_good.is_some_and(|good| rate <= good)
}

/// The pass criterion in words.
fn criterion(options: &ForwardOptions) -> String {
    let mut text = format!(
        "highest rate with loss < {} %",
        options.search.loss_threshold * 100.0
    );
    if let Some(bound) = options.max_median_latency {
        text += &format!(", median latency < {} ms", bound.as_secs_f64() * 1e3);
    }
    if let Some(bound) = options.max_p99_latency {
        text += &format!(", p99 latency < {} ms", bound.as_secs_f64() * 1e3);
    }
    text
}

/// Whether the median latency stayed within the bound (no samples: nothing to judge).
fn median_kept(result: &TrialResult, options: &ForwardOptions) -> bool {
    match (options.max_median_latency, result.latency) {
        (Some(bound), Some(latency)) => u128::from(latency.median_ns) <= bound.as_nanos(),
        _ => true,
    }
}

/// Whether a trial passes: loss under the threshold, the source kept up, latency bounds
/// kept.
fn passes(result: &TrialResult, options: &ForwardOptions) -> bool {
    result.source_kept_up
        && result.latency_kept
        && median_kept(result, options)
        && result.loss.loss_ratio() < options.search.loss_threshold
}

/// One line describing a trial.
fn describe(label: &str, rate: f64, result: &TrialResult, options: &ForwardOptions) -> String {
    let latency = result
        .latency
        .map(|l| {
            format!(
                ", latency p50 {} p99 {}",
                micros(l.median_ns),
                micros(l.p99_ns)
            )
        })
        .unwrap_or_default();
    let verdict = if passes(result, options) {
        "pass".to_string()
    } else {
        let mut reasons = Vec::new();
        if result.loss.loss_ratio() >= options.search.loss_threshold {
            reasons.push("loss");
        }
        if !result.source_kept_up {
            reasons.push("source behind");
        }
        if !median_kept(result, options) {
            reasons.push("median latency over bound");
        }
        if !result.latency_kept {
            reasons.push("p99 latency over bound");
        }
        format!("FAIL ({})", reasons.join(", "))
    };
    format!(
        "{label} {rate:>9.0} fps: sent {} at {:.0} fps, lost {} ({:.3} %){latency}: {verdict}",
        result.loss.sent,
        result.achieved_fps,
        result.loss.lost,
        result.loss.loss_ratio() * 100.0,
    )
}

/// Nanoseconds as "123 us" or "4.5 ms".
fn micros(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{} us", ns / 1_000)
    }
}

/// CPU time of the whole machine and of this process with its children (QEMU), read
/// from `/proc`: how much of the machine other work took while a round ran. On a shared
/// machine the appliance path (four busy threads: source, QEMU's main loop, its vCPU,
/// the fabric's receiver) suffers more from competition than the ceiling path, so the
/// ratio itself drops when others are busy.
#[derive(Clone, Copy, Debug, Default)]
struct CpuSnapshot {
    /// Clock ticks the machine spent busy (all CPUs; steal included, softirq not).
    machine_busy: u64,
    /// Clock ticks since boot, summed over CPUs (busy and idle).
    machine_total: u64,
    /// Clock ticks of this process and its direct children.
    ours: u64,
    /// CPUs the machine has (the `cpuN` lines).
    cpus: u64,
}

impl CpuSnapshot {
    /// Reads `/proc`; zeros where it cannot (not Linux).
    fn take() -> CpuSnapshot {
        let mut snapshot = CpuSnapshot::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(line) = stat.lines().next()
        {
            let fields: Vec<u64> = line
                .split_ascii_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            if fields.len() >= 8 {
                snapshot.machine_total = fields[..8].iter().sum();
                // Softirq time is left out: most of it is the loopback delivery of
                // our own traffic, which the kernel does not charge to our threads.
                snapshot.machine_busy = snapshot.machine_total - fields[3] - fields[4] - fields[6];
            }
            snapshot.cpus = stat
                .lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count() as u64;
        }
        let me = std::process::id();
        snapshot.ours = process_ticks(&format!("/proc/{me}/stat")).map_or(0, |(ticks, _)| ticks);
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((ticks, parent)) = process_ticks(&format!("/proc/{pid}/stat"))
                    && parent == me
                {
                    snapshot.ours += ticks;
                }
            }
        }
        snapshot
    }

    /// Share of one CPU that other work used between `self` and `later`, in percent
    /// (`None` when `/proc` gave nothing).
    fn others_percent(&self, later: &CpuSnapshot) -> Option<f64> {
        let cpus = later.cpus;
        let total = later.machine_total.checked_sub(self.machine_total)?;
        if total == 0 || cpus == 0 {
            return None;
        }
        let busy = later.machine_busy.saturating_sub(self.machine_busy);
        let ours = later.ours.saturating_sub(self.ours);
        // `total` counts every CPU: per-CPU ticks elapsed are total / cpus.
        Some(busy.saturating_sub(ours) as f64 * 100.0 * cpus as f64 / total as f64)
    }
}

/// utime + stime and the parent pid from a `/proc/PID/stat` line.
fn process_ticks(path: &str) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // State is field 3 of the line (index 0 here): ppid 4, utime 14, stime 15.
    let parent = fields.get(1)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system, parent))
}

/// The rate search of [`find_max_rate`] as a state machine, so that two searches can take
/// turns: tries `max_fps`, then `min_fps`, then bisects (geometric mean) between the best
/// pass and the lowest fail until they are within the resolution or the trial budget is
/// spent. The test `bisection_tries_what_find_max_rate_tries` keeps the two in step.
///
/// [`find_max_rate`]: duplex_fabric::bench::find_max_rate
#[derive(Clone, Debug)]
struct Bisection {
    search: RateSearch,
    state: BisectionState,
    trials: u32,
    best: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BisectionState {
    TryMax,
    TryMin,
    Between { passing: f64, failing: f64 },
    Done,
}

impl Bisection {
    fn new(search: RateSearch) -> Bisection {
        let valid = search.min_fps > 0.0
            && search.min_fps <= search.max_fps
            && search.max_fps.is_finite()
            && search.max_trials >= 1;
        Bisection {
            search,
            state: if valid {
                BisectionState::TryMax
            } else {
                BisectionState::Done
            },
            trials: 0,
            best: None,
        }
    }

    /// The next rate to try; `None` when the search is over.
    fn next_rate(&self) -> Option<f64> {
        match self.state {
            BisectionState::TryMax => Some(self.search.max_fps),
            BisectionState::TryMin => Some(self.search.min_fps),
            BisectionState::Between { passing, failing }
                if self.trials < self.search.max_trials
                    && failing - passing > self.search.resolution * failing =>
            {
                Some((passing * failing).sqrt())
            }
            BisectionState::Between { .. } | BisectionState::Done => None,
        }
    }

    /// Takes the verdict of a trial at the rate [`Bisection::next_rate`] gave.
    fn record(&mut self, rate: f64, passed: bool) {
        self.trials += 1;
        if passed && self.best.is_none_or(|best| rate > best) {
            self.best = Some(rate);
        }
        self.state = match (self.state, passed) {
            (BisectionState::TryMax, true) => BisectionState::Done,
            (BisectionState::TryMax, false) if self.search.max_trials < 2 => BisectionState::Done,
            (BisectionState::TryMax, false) => BisectionState::TryMin,
            (BisectionState::TryMin, true) => BisectionState::Between {
                passing: self.search.min_fps,
                failing: self.search.max_fps,
            },
            (BisectionState::TryMin, false) => BisectionState::Done,
            (BisectionState::Between { failing, .. }, true) => BisectionState::Between {
                passing: rate,
                failing,
            },
            (BisectionState::Between { passing, .. }, false) => BisectionState::Between {
                passing,
                failing: rate,
            },
            (BisectionState::Done, _) => BisectionState::Done,
        };
    }
}

/// What a path's measurement wants next.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// A search trial at this rate.
    Trial(f64),
    /// The latency trial at this rate (half the best).
    Latency(f64),
    /// Nothing: the path is measured.
    Done,
}

/// One path's measurement in one round: the search (or the fixed-rate trial), then the
/// latency trial at half the rate found. With a `prior` (the earlier rounds' result) the
/// search starts in `[0.6, 1.3] x prior` and goes on beyond that range, once, when the
/// answer lies at its edge.
struct PathSearch {
    /// The highest rate this path has passed so far (earlier rounds and this one): a
    /// failure at or below it is the machine's, and worth another look.
    known_good: Option<f64>,
    bounds: RateSearch,
    range: RateSearch,
    bisection: Bisection,
    may_widen: bool,
    fixed_rate: Option<f64>,
    latency_pending: bool,
    result: PathResult,
}

impl PathSearch {
    fn new(options: &ForwardOptions, prior: Option<f64>, known_good: Option<f64>) -> PathSearch {
        let bounds = options.search;
        let narrowed = prior
            .map(|prior| RateSearch {
                min_fps: (prior * NARROW_BELOW).max(bounds.min_fps),
                max_fps: (prior * NARROW_ABOVE).min(bounds.max_fps),
                ..bounds
            })
            .filter(|range| range.min_fps < range.max_fps);
        let range = narrowed.unwrap_or(bounds);
        PathSearch {
            known_good,
            bounds,
            range,
            bisection: Bisection::new(range),
            may_widen: narrowed.is_some(),
            fixed_rate: options.fixed_rate,
            latency_pending: options.fixed_rate.is_none(),
            result: PathResult::default(),
        }
    }

    fn next_step(&mut self, log: &dyn Fn(String), label: &str) -> Step {
        if let Some(rate) = self.fixed_rate {
            return if self.result.trials.is_empty() {
                Step::Trial(rate)
            } else {
                Step::Done
            };
        }
        if let Some(rate) = self.bisection.next_rate() {
            return Step::Trial(rate);
        }
        if self.may_widen {
            self.may_widen = false;
            let (range, bounds) = (self.range, self.bounds);
            let wider = match self.bisection.best {
                None if range.min_fps > bounds.min_fps => Some(RateSearch {
                    max_fps: range.min_fps,
                    ..bounds
                }),
                Some(best) if best >= range.max_fps && range.max_fps < bounds.max_fps => {
                    Some(RateSearch {
                        min_fps: range.max_fps,
                        ..bounds
                    })
                }
                _ => None,
            };
            if let Some(wider) = wider {
                log(format!(
                    "{label} the answer lies outside {:.0}..{:.0} fps: searching {:.0}..{:.0}",
                    range.min_fps, range.max_fps, wider.min_fps, wider.max_fps
                ));
                self.range = wider;
                self.bisection = Bisection::new(wider);
                return self.next_step(log, label);
            }
        }
        if self.latency_pending {
            self.latency_pending = false;
            if let Some(best) = &self.result.best {
                return Step::Latency(best.offered_fps / 2.0);
            }
        }
        Step::Done
    }

    /// Runs `step` on `runner` and records it. A failing search trial is run again
    /// ([`ForwardOptions::retries`]) unless it lost [`CLEAR_OVERLOAD`] or more.
    fn run_step(
        &mut self,
        step: Step,
        runner: &mut TrialRunner<'_>,
        options: &ForwardOptions,
        log: &dyn Fn(String),
        label: &str,
    ) -> Result {
        match step {
            Step::Done => {}
            Step::Latency(rate) => {
                let result = runner.run(rate)?;
                log(format!(
                    "{}  (latency trial at half the rate)",
                    describe(label, rate, &result, options)
                ));
                self.result.latency = result.latency;
            }
            Step::Trial(rate) => {
                let mut passed = false;
                for attempt in 0..=options.retries {
                    let result = runner.run(rate)?;
                    passed = passes(&result, options);
                    let again = if attempt > 0 { "  (again)" } else { "" };
                    log(format!(
                        "{}{again}",
                        describe(label, rate, &result, options)
                    ));
                    let doubtful = doubtful(&result, rate, self.known_good);
                    if self.fixed_rate.is_some() {
                        self.result.latency = result.latency;
                    }
                    self.result.trials.push(Trial {
                        rate_fps: rate,
                        result: result.clone(),
                        passed,
                    });
                    if passed {
                        if self
                            .result
                            .best
                            .as_ref()
                            .is_none_or(|best| rate > best.offered_fps)
                        {
                            self.result.best = Some(result);
                        }
                        self.known_good = Some(self.known_good.map_or(rate, |good| good.max(rate)));
                        break;
                    }
                    if !doubtful {
                        break;
                    }
                }
                self.bisection.record(rate, passed);
            }
        }
        Ok(())
    }
}

/// Prints the report: a table of rounds, the medians, latency, and with `json` the JSON
/// line last.
pub fn print(report: &ForwardReport, json: bool) {
    let size = report.frame_size;
    println!(
        "forwarding through one appliance: {} NICs, {size}-byte frames ({}-byte datagrams), TCG",
        report.nic.name(),
        size.saturating_sub(4)
    );
    println!(
        "  {}; {} round(s) of {:.1} s trials; ceiling = the same fabric path with a host thread instead of the VM",
        report.criterion,
        report.rounds.len(),
        report.trial_duration.as_secs_f64()
    );
    let percent = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.0} %"));
    println!("round   appliance fps   Mbit/s   ceiling fps    Mbit/s   ratio   trials    others");
    for (index, round) in report.rounds.iter().enumerate() {
        let fps = round.appliance.forwarded_fps();
        let ceiling = round.ceiling.forwarded_fps();
        println!(
            "{:>5}   {fps:>13.0} {:>8.1}   {ceiling:>11.0} {:>9.1}   {:>5.3}   {:>3} + {:<3} {:>6}",
            index + 1,
            megabits(fps, size),
            megabits(ceiling, size),
            round.ratio(),
            round.appliance.trials.len(),
            round.ceiling.trials.len(),
            percent(round.others_cpu_percent)
        );
    }
    println!(
        "median  {:>13.0} {:>8.1}   {:>11.0} {:>9.1}   {:>5.3}   {:>9} {:>6}",
        report.fps,
        report.mbps,
        report.ceiling_fps,
        megabits(report.ceiling_fps, size),
        report.ratio,
        "",
        percent(report.others_cpu_percent)
    );
    println!("  others: CPU other work on this machine took during the round, in % of one CPU");
    if report
        .others_cpu_percent
        .is_some_and(|o| o > BUSY_MACHINE_PERCENT)
    {
        println!(
            "  warning: the machine was busy with other work; the appliance path (four busy threads) suffers more than the ceiling: rates and ratio are depressed and noisy; rerun when it is quiet"
        );
    }
    let at = if report.fixed_rate.is_some() {
        "at the fixed rate"
    } else {
        "at half the rate found"
    };
    println!(
        "latency {at} (median of rounds): appliance p50 {:.1} us, p99 {:.1} us; fabric alone p50 {:.1} us, p99 {:.1} us",
        report.latency_p50_us,
        report.latency_p99_us,
        report.ceiling_latency_us.0,
        report.ceiling_latency_us.1
    );
    if json {
        println!("{}", report.json_line());
    }
}

/// `cargo lab bench forward [--nic virtio|e1000] [--size N] [--rounds N] [--trial-ms N]
/// [--max-p99-ms N] [--rate FPS] [--cmdline STR] [--json]`: parses the words after `bench forward`, runs
/// and prints.
pub fn command(words: Vec<String>) -> Result {
    let mut words = words;
    let mut take = |name: &str| -> Result<Option<String>> {
        let Some(at) = words.iter().position(|w| w == name) else {
            return Ok(None);
        };
        if at + 1 >= words.len() {
            return Err(lab_error!("{name} needs a value"));
        }
        let value = words.remove(at + 1);
        words.remove(at);
        Ok(Some(value))
    };
    let number = |name: &str, value: Option<String>| -> Result<Option<f64>> {
        value
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| lab_error!("{name}: '{v}' is not a valid number"))
            })
            .transpose()
    };
    let nic = match take("--nic")? {
        None => NicModel::Virtio,
        Some(v) => {
            NicModel::parse(&v).ok_or_else(|| lab_error!("--nic: '{v}' is not virtio or e1000"))?
        }
    };
    let size = number("--size", take("--size")?)?.unwrap_or(64.0);
    let mut options = ForwardOptions::new(nic, size as usize);
    if size.fract() != 0.0 {
        return Err(lab_error!("--size: {size} is not a whole number of bytes"));
    }
    if let Some(rounds) = number("--rounds", take("--rounds")?)? {
        options.rounds = rounds as usize;
    }
    if let Some(millis) = number("--trial-ms", take("--trial-ms")?)? {
        options.trial_duration = Duration::from_millis(millis as u64);
    }
    if let Some(millis) = number("--max-p50-ms", take("--max-p50-ms")?)? {
        options.max_median_latency = (millis > 0.0).then(|| Duration::from_secs_f64(millis / 1e3));
    }
    if let Some(millis) = number("--max-p99-ms", take("--max-p99-ms")?)? {
        options.max_p99_latency = (millis > 0.0).then(|| Duration::from_secs_f64(millis / 1e3));
    }
    options.fixed_rate = number("--rate", take("--rate")?)?;
    if let Some(micros) = number("--source-spin-us", take("--source-spin-us")?)? {
        options.source_spin = Duration::from_secs_f64(micros / 1e6);
    }
    if let Some(cmdline) = take("--cmdline")? {
        options.cmdline = cmdline;
    }
    let json = match words.iter().position(|w| w == "--json") {
        Some(at) => {
            words.remove(at);
            true
        }
        None => false,
    };
    if let Some(word) = words.first() {
        return Err(lab_error!(
            "unknown argument '{word}' (see `cargo lab help`)"
        ));
    }
    let report = run(options)?;
    if !report.interfaces.is_empty() {
        eprintln!("[forward] the appliance's counters after the run:");
        for line in report.interfaces.lines() {
            eprintln!("[forward]   {line}");
        }
    }
    print(&report, json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_fabric::LossStats;

    fn trial(offered: f64, achieved: f64, lost: u64) -> TrialResult {
        TrialResult {
            frame_size: 1500,
            offered_fps: offered,
            achieved_fps: achieved,
            loss: LossStats {
                sent: 1000,
                received: 1000 - lost,
                lost,
                duplicated: 0,
                reordered: 0,
            },
            latency: Some(LatencySummary {
                samples: 1000,
                median_ns: 120_000,
                p99_ns: 900_000,
                ..LatencySummary::default()
            }),
            source_kept_up: true,
            latency_kept: true,
        }
    }

    fn path(fps: Option<f64>) -> PathResult {
        let best = fps.map(|fps| trial(fps, fps, 0));
        PathResult {
            trials: Vec::new(),
            latency: best.as_ref().and_then(|b| b.latency),
            best,
        }
    }

    #[test]
    fn report_takes_medians_and_the_json_line_has_the_agreed_keys_in_order() {
        let options = ForwardOptions::new(NicModel::E1000, 1500);
        let rounds = vec![
            Round {
                appliance: path(Some(40_000.0)),
                ceiling: path(Some(90_000.0)),
                others_cpu_percent: None,
            },
            Round {
                appliance: path(Some(50_000.0)),
                ceiling: path(Some(80_000.0)),
                others_cpu_percent: None,
            },
            Round {
                appliance: path(Some(45_000.0)),
                ceiling: path(Some(100_000.0)),
                others_cpu_percent: None,
            },
        ];
        let report = ForwardReport::from_rounds(&options, rounds, String::new());
        assert_eq!(report.fps, 45_000.0);
        assert_eq!(report.ceiling_fps, 90_000.0);
        assert_eq!(report.mbps, 540.0);
        assert_eq!(
            report.json_line(),
            "{\"nic\":\"e1000\",\"size\":1500,\"fps\":45000,\"mbps\":540.0,\"ceiling_fps\":90000,\"ratio\":0.450,\"lat_us_p50\":120.0,\"lat_us_p99\":900.0}"
        );
        let value: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        // The median of the rounds' ratios (0.444, 0.625, 0.450), not 45,000 / 90,000.
        assert_eq!(value["ratio"], 0.45);
    }

    #[test]
    fn nothing_passing_gives_zeros_not_nan() {
        let options = ForwardOptions::new(NicModel::Virtio, 64);
        let rounds = vec![Round {
            appliance: path(None),
            ceiling: path(None),
            others_cpu_percent: None,
        }];
        let report = ForwardReport::from_rounds(&options, rounds, String::new());
        let value: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(value["fps"], 0);
        assert_eq!(value["ratio"], 0.0);
        assert_eq!(value["lat_us_p99"], 0.0);
    }

    #[test]
    fn forwarded_rate_discounts_loss_and_counts_what_was_really_sent() {
        let result = trial(10_000.0, 9_800.0, 1);
        assert!((forwarded_fps(&result) - 9_800.0 * 0.999).abs() < 1e-6);
        let mut options = ForwardOptions::new(NicModel::Virtio, 64);
        assert!(!passes(&trial(10_000.0, 10_000.0, 1), &options));
        assert!(passes(&trial(10_000.0, 10_000.0, 0), &options));
        // A queue building up through the trial: no loss, but the median latency shows it.
        let mut queued = trial(10_000.0, 10_000.0, 0);
        queued.latency = Some(LatencySummary {
            samples: 1000,
            median_ns: 40_000_000,
            p99_ns: 80_000_000,
            ..LatencySummary::default()
        });
        assert!(!passes(&queued, &options));
        options.max_median_latency = None;
        assert!(passes(&queued, &options));
    }

    #[test]
    fn process_stat_lines_are_read_even_with_spaces_in_the_name() {
        let path = std::env::temp_dir().join(format!("fwd-stat-{}", std::process::id()));
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        std::fs::write(
            &path,
            "4242 (CPU 0/TCG) R 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0\n",
        )
        .unwrap();
        assert_eq!(process_ticks(path.to_str().unwrap()), Some((300, 17)));
        std::fs::remove_file(&path).unwrap();
        let snapshot = CpuSnapshot::take();
        if snapshot.cpus > 0 {
            let later = CpuSnapshot {
                machine_busy: snapshot.machine_busy + 150,
                machine_total: snapshot.machine_total + 200 * snapshot.cpus,
                ours: snapshot.ours + 50,
                cpus: snapshot.cpus,
            };
            // 100 ticks of others in 200 ticks of wall time: half a CPU.
            assert_eq!(snapshot.others_percent(&later), Some(50.0));
        }
    }

    #[test]
    fn only_doubtful_failures_are_run_again() {
        let mut overload = trial(40_000.0, 40_000.0, 0);
        overload.loss.lost = 300;
        overload.loss.received = 700;
        let near_miss = trial(40_000.0, 40_000.0, 5);
        assert!(doubtful(&near_miss, 40_000.0, None));
        assert!(!doubtful(&overload, 40_000.0, None));
        assert!(!doubtful(&overload, 40_000.0, Some(30_000.0)));
        assert!(
            doubtful(&overload, 40_000.0, Some(45_000.0)),
            "passed before"
        );
    }

    #[test]
    fn options_are_checked() {
        assert!(ForwardOptions::new(NicModel::Virtio, 63).check().is_err());
        assert!(ForwardOptions::new(NicModel::Virtio, 1519).check().is_err());
        assert!(ForwardOptions::new(NicModel::Virtio, 1518).check().is_ok());
        let mut options = ForwardOptions::new(NicModel::Virtio, 512);
        options.fixed_rate = Some(f64::NAN);
        assert!(options.check().is_err());
        options.fixed_rate = Some(1000.0);
        options.rounds = 0;
        assert!(options.check().is_err());
    }

    /// The trials `Bisection` asks for when every rate up to `threshold` passes.
    fn bisection_trials(search: &RateSearch, threshold: f64) -> (Vec<(f64, bool)>, Option<f64>) {
        let mut bisection = Bisection::new(*search);
        let mut trials = Vec::new();
        while let Some(rate) = bisection.next_rate() {
            let passed = rate <= threshold;
            trials.push((rate, passed));
            bisection.record(rate, passed);
        }
        (trials, bisection.best)
    }

    #[test]
    fn bisection_tries_what_find_max_rate_tries() {
        let searches = [
            RateSearch::default(),
            RateSearch {
                min_fps: 20_000.0,
                max_fps: 60_000.0,
                ..RateSearch::default()
            },
            RateSearch {
                max_trials: 1,
                ..RateSearch::default()
            },
            RateSearch {
                max_trials: 4,
                ..RateSearch::default()
            },
        ];
        for search in &searches {
            for threshold in [0.0, 500.0, 1_000.0, 20_000.0, 37_123.0, 59_999.0, 1e9] {
                let expected = duplex_fabric::bench::find_max_rate(search, |rate| {
                    let lost = u64::from(rate > threshold);
                    Ok(LossStats {
                        sent: 10,
                        received: 10 - lost,
                        lost,
                        duplicated: 0,
                        reordered: 0,
                    })
                })
                .unwrap();
                let (trials, best) = bisection_trials(search, threshold);
                assert_eq!(trials, expected.trials, "{search:?} threshold {threshold}");
                assert_eq!(best, expected.best.map(|(rate, _)| rate));
            }
        }
    }

    #[test]
    fn a_narrowed_search_widens_when_the_answer_lies_outside() {
        let mut options = ForwardOptions::new(NicModel::Virtio, 64);
        options.retries = 0;
        let quiet = |_: String| {};
        // Prior 10,000: the search starts in 6,000..13,000; the path passes up to 40,000.
        let mut path = PathSearch::new(&options, Some(10_000.0), Some(10_000.0));
        let mut tried = Vec::new();
        loop {
            match path.next_step(&quiet, "test") {
                Step::Trial(rate) => {
                    let passed = rate <= 40_000.0;
                    tried.push(rate);
                    path.bisection.record(rate, passed);
                    if passed {
                        path.result.best = Some(trial(rate, rate, 0));
                    }
                }
                Step::Latency(rate) => {
                    assert!((rate - path.result.forwarded_fps() / 2.0).abs() < 1e-6);
                }
                Step::Done => break,
            }
        }
        assert_eq!(
            tried[0], 13_000.0,
            "starts at the top of the narrowed range"
        );
        assert!(
            tried.contains(&200_000.0),
            "then searches up to the bounds: {tried:?}"
        );
        let best = path.result.forwarded_fps();
        assert!((40_000.0 * 0.97..=40_000.0).contains(&best), "{best}");
    }
}
