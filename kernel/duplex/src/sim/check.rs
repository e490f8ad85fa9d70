//! The property scenarios of SPEC §11. Each takes a seed, builds a random group (2 to 4
//! nodes, 1 to 3 paths, random priorities and links), runs one scenario and returns
//! `Err(report)` when a property fails. The tests run them over thousands of seeds.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use duplex_hal::Instant;

use super::{Fault, LinkProfile, Rng, Sim, SimConfig};
use crate::config::Timing;
use crate::state::{Cause, Mode, State};

/// When the cold-started group is expected to have exactly one Master.
pub const WARM_UP: Duration = Duration::from_millis(40);
/// The loss per path up to which no false fail-over may happen (SPEC §11, property 4).
pub const MAX_LOSS_PPM: u32 = 100_000;
/// The jitter up to which the properties are checked.
pub const MAX_JITTER: Duration = Duration::from_millis(1);

/// A random link: loss up to `max_loss_ppm`, 10-200 µs delay, jitter up to `max_jitter`,
/// up to 2 % duplication and 2 % reordering by up to 300 µs.
pub fn random_link(rng: &mut Rng, max_loss_ppm: u32, max_jitter: Duration) -> LinkProfile {
    LinkProfile {
        loss_ppm: rng.below(u64::from(max_loss_ppm) + 1) as u32,
        delay: rng.duration_between(Duration::from_micros(10), Duration::from_micros(200)),
        jitter: rng.duration_up_to(max_jitter),
        duplicate_ppm: rng.below(20_001) as u32,
        reorder_ppm: rng.below(20_001) as u32,
        reorder_delay: rng.duration_up_to(Duration::from_micros(300)),
    }
}

/// The random group of a seed: 2, 3 or 4 nodes by `seed % 3`; serial for every other pair
/// seed; 1 to 3 paths; priorities 50 to 150 (ties broken by node id).
pub fn random_config(seed: u64, link: impl FnOnce(&mut Rng) -> LinkProfile) -> SimConfig {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let nodes = 2 + (seed % 3) as usize;
    let mode = if nodes == 2 && (seed / 3).is_multiple_of(2) {
        Mode::Serial
    } else {
        Mode::Parallel
    };
    let paths = 1 + rng.below(3) as usize;
    let priorities = (0..nodes).map(|_| 50 + rng.below(101) as u8).collect();
    SimConfig {
        mode,
        nodes,
        paths,
        timing: Timing::default(),
        link: link(&mut rng),
        seed,
        priorities,
        boot_spread: Duration::from_millis(3),
        service_deadline: Duration::from_millis(2),
    }
}

fn describe(sim: &Sim) -> String {
    let c = sim.config();
    format!(
        "seed {} {} {} nodes {} paths link {:?}",
        c.seed, c.mode, c.nodes, c.paths, c.link
    )
}

fn fail(sim: &Sim, what: &str) -> String {
    format!("{}: {}\n{}", describe(sim), what, sim.dump())
}

/// Runs the cold start and returns the Master's index.
pub fn warm_up(sim: &mut Sim) -> Result<usize, String> {
    sim.run_until(Instant::ZERO + WARM_UP);
    let forwarding = sim.forwarding_nodes();
    if forwarding.len() != 1 {
        return Err(fail(
            sim,
            &format!("after cold start {} Masters", forwarding.len()),
        ));
    }
    Ok(forwarding[0])
}

/// The largest hard timeout the running nodes other than `master` apply to it.
pub fn survivors_hard_timeout(sim: &Sim, master: usize) -> Duration {
    let timing = sim.config().timing;
    let fallback = timing.soft_timeout_max + timing.hard_extension_max;
    (0..sim.config().nodes)
        .filter(|&i| i != master)
        .filter_map(|i| sim.node(i)?.peer_hard_timeout(Sim::node_id(master)))
        .max()
        .unwrap_or(fallback)
}

/// The kinds of single fault of property 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleFault {
    /// The Master crashes.
    CrashMaster,
    /// The Master freezes, then resumes.
    FreezeMaster,
    /// The Master's main-loop service hangs.
    HangMaster,
    /// The Master reboots.
    RebootMaster,
    /// A standby crashes.
    CrashStandby,
    /// A standby freezes, then resumes.
    FreezeStandby,
    /// A standby's main-loop service hangs.
    HangStandby,
    /// A standby reboots.
    RebootStandby,
    /// One path is cut (groups with two or more paths).
    CutOnePath,
    /// The Master, loaded at up to 1 Gbit/s, crashes.
    CrashLoadedMaster,
}

/// What a single-fault run measured.
#[derive(Debug, Clone, Copy)]
pub struct FaultOutcome {
    /// The fault.
    pub fault: SingleFault,
    /// From the fault to the instant exactly one node forwards for good.
    pub settled_after: Duration,
    /// The bound that was checked.
    pub bound: Duration,
    /// The longest stretch of two Masters after the fault.
    pub dual: Duration,
}

/// Property 1: after any single fault, exactly one Master from `fault + bound` on.
pub fn single_fault(seed: u64) -> Result<FaultOutcome, String> {
    let config = random_config(seed, |rng| random_link(rng, MAX_LOSS_PPM, MAX_JITTER));
    let timing = config.timing;
    let service_deadline = config.service_deadline;
    let paths = config.paths;
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = Rng::new(seed ^ 0xFA17);
    let kinds = [
        SingleFault::CrashMaster,
        SingleFault::FreezeMaster,
        SingleFault::HangMaster,
        SingleFault::RebootMaster,
        SingleFault::CrashStandby,
        SingleFault::FreezeStandby,
        SingleFault::HangStandby,
        SingleFault::RebootStandby,
        SingleFault::CutOnePath,
        SingleFault::CrashLoadedMaster,
    ];
    let mut fault = kinds[rng.below(kinds.len() as u64) as usize];
    if fault == SingleFault::CutOnePath && paths < 2 {
        fault = SingleFault::CrashMaster;
    }
    // The load must be announced before the fault for the survivors to apply it.
    let load_at = Instant::ZERO + (WARM_UP - Duration::from_millis(10));
    if fault == SingleFault::CrashLoadedMaster {
        let load = rng.below(1_000_000_001);
        for node in 0..nodes {
            sim.schedule(
                load_at,
                Fault::SetLoad {
                    node,
                    bits_per_second: load,
                },
            );
        }
    }
    let master = warm_up(&mut sim)?;
    let at = sim.now() + rng.duration_up_to(timing.interval);
    sim.run_until(at);
    let standby = (master + 1 + rng.below(nodes as u64 - 1) as usize) % nodes;
    let mut silent_after = Duration::ZERO;
    match fault {
        SingleFault::CrashMaster | SingleFault::CrashLoadedMaster => {
            sim.schedule(at, Fault::Crash(master))
        }
        SingleFault::FreezeMaster => {
            let duration =
                rng.duration_between(Duration::from_millis(1), Duration::from_millis(40));
            sim.schedule(
                at,
                Fault::Freeze {
                    node: master,
                    duration,
                },
            );
        }
        SingleFault::HangMaster => {
            sim.schedule(at, Fault::HangService(master));
            silent_after = service_deadline;
        }
        SingleFault::RebootMaster => {
            let downtime =
                rng.duration_between(Duration::from_millis(1), Duration::from_millis(30));
            sim.schedule(
                at,
                Fault::Reboot {
                    node: master,
                    downtime,
                },
            );
        }
        SingleFault::CrashStandby => sim.schedule(at, Fault::Crash(standby)),
        SingleFault::FreezeStandby => {
            let duration =
                rng.duration_between(Duration::from_millis(1), Duration::from_millis(40));
            sim.schedule(
                at,
                Fault::Freeze {
                    node: standby,
                    duration,
                },
            );
        }
        SingleFault::HangStandby => sim.schedule(at, Fault::HangService(standby)),
        SingleFault::RebootStandby => {
            let downtime =
                rng.duration_between(Duration::from_millis(1), Duration::from_millis(30));
            sim.schedule(
                at,
                Fault::Reboot {
                    node: standby,
                    downtime,
                },
            );
        }
        SingleFault::CutOnePath => {
            let path = rng.below(paths as u64) as usize;
            sim.schedule(
                at,
                Fault::CutPath {
                    path,
                    duration: Duration::from_secs(10),
                },
            );
        }
    }
    // The survivors' hard timeout for the Master at the moment it goes silent.
    sim.run_until(at + silent_after);
    let hard = survivors_hard_timeout(&sim, master);
    let link = sim.link();
    let bound = silent_after + hard + link.max_one_way() + timing.interval * 2;
    let end = at + bound + Duration::from_millis(30);
    sim.run_until(end);
    if !sim.single_forwarder_since(at + bound) {
        return Err(fail(
            &sim,
            &format!(
                "{fault:?} at {at:?} on node {master}: not exactly one Master from {:?} (bound {bound:?})",
                at + bound
            ),
        ));
    }
    let settled = sim.settled_single_since(at).unwrap_or(end);
    Ok(FaultOutcome {
        fault,
        settled_after: settled.saturating_since(at),
        bound,
        dual: sim.longest_dual_since(at),
    })
}

/// Property 2: after a partition of all paths heals, two Masters coexist at most
/// `interval + max one-way delay`, then exactly one remains. Returns the dual-Master time
/// after the heal.
pub fn partition_heal(seed: u64) -> Result<Duration, String> {
    let config = random_config(seed, |rng| random_link(rng, 0, MAX_JITTER));
    let timing = config.timing;
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = Rng::new(seed ^ 0x9A27);
    let master = warm_up(&mut sim)?;
    let at = sim.now() + rng.duration_up_to(timing.interval);
    let duration = rng.duration_between(Duration::from_millis(20), Duration::from_millis(50));
    let fault = match rng.below(3) {
        0 => Fault::Isolate {
            node: master,
            duration,
        },
        1 => Fault::Isolate {
            node: (master + 1) % nodes,
            duration,
        },
        _ => {
            // A random proper, non-empty subset of the nodes.
            let all = (1u32 << nodes) - 1;
            let side = 1 + rng.below(u64::from(all) - 1) as u32;
            Fault::Split { side, duration }
        }
    };
    sim.schedule(at, fault.clone());
    let heal = at + duration;
    sim.run_until(heal);
    let before = sim.forwarding_nodes().len();
    let allowed = timing.interval + sim.link().max_one_way();
    sim.run_until(heal + allowed + Duration::from_millis(30));
    let dual = sim.longest_dual_since(heal);
    if dual > allowed {
        return Err(fail(
            &sim,
            &format!(
                "{fault:?}: two Masters for {dual:?} after the heal at {heal:?} (allowed {allowed:?}; {before} before)"
            ),
        ));
    }
    if !sim.single_forwarder_since(heal + allowed) {
        return Err(fail(
            &sim,
            &format!("{fault:?}: not exactly one Master after the heal at {heal:?}"),
        ));
    }
    Ok(dual)
}

/// Property 3: a Master frozen longer than `freeze_threshold` stops forwarding at the instant
/// it resumes (it steps down, or holds its traffic after a short freeze), never forwards
/// beside another Master after resuming, and exactly one Master remains.
pub fn freeze_resume(seed: u64) -> Result<(), String> {
    let config = random_config(seed, |rng| random_link(rng, MAX_LOSS_PPM, MAX_JITTER));
    let timing = config.timing;
    let mut sim = Sim::new(config);
    let mut rng = Rng::new(seed ^ 0xF4EE);
    let master = warm_up(&mut sim)?;
    let at = sim.now() + rng.duration_up_to(timing.interval);
    let low = timing.freeze_threshold() + Duration::from_millis(1);
    let duration = rng.duration_between(low, Duration::from_millis(40));
    sim.run_until(at);
    let hard = survivors_hard_timeout(&sim, master);
    sim.schedule(
        at,
        Fault::Freeze {
            node: master,
            duration,
        },
    );
    let resume = at + duration;
    let link = sim.link();
    let slack = link.max_one_way() + timing.interval * 2;
    let end = resume + Duration::from_millis(30);
    sim.run_until(end);
    // The node's role as of the resume instant (the last change at or before it).
    let stopped = sim
        .roles()
        .iter()
        .rfind(|r| r.node == master && r.at <= resume)
        .is_some_and(|r| !r.forwarding);
    if !stopped {
        return Err(fail(
            &sim,
            &format!("node {master} did not stop forwarding when it resumed at {resume:?}"),
        ));
    }
    if sim.max_forwarders_since(resume) > 1 {
        return Err(fail(
            &sim,
            &format!("two nodes forwarded at once after node {master} resumed at {resume:?}"),
        ));
    }
    let from = (at + hard + slack).max(resume + slack);
    if !sim.single_forwarder_since(from) {
        return Err(fail(
            &sim,
            &format!("not exactly one Master from {from:?} (resume {resume:?})"),
        ));
    }
    Ok(())
}

/// What a fault-free run saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietOutcome {
    /// Soft timeouts (Slave -> SubMaster) after the warm-up: allowed, counted.
    pub soft_timeouts: u64,
    /// Simulated fault-free time.
    pub observed: Duration,
}

/// Property 4: no false fail-over without faults while loss stays within `MAX_LOSS_PPM`.
pub fn no_false_failover(seed: u64, observe: Duration) -> Result<QuietOutcome, String> {
    let config = random_config(seed, |rng| random_link(rng, MAX_LOSS_PPM, MAX_JITTER));
    let mut sim = Sim::new(config);
    warm_up(&mut sim)?;
    let start = sim.now();
    let first = sim.trace().len();
    sim.run_until(start + observe);
    let mut soft_timeouts = 0;
    for e in &sim.trace()[first..] {
        let t = e.transition;
        if t.cause == Cause::SoftTimeout || (t.from == State::SubMaster && t.to == State::Slave) {
            soft_timeouts += 1;
            continue;
        }
        if t.cause == Cause::Confirmed {
            continue;
        }
        return Err(fail(
            &sim,
            &format!(
                "false fail-over: node {} {} -> {} ({})",
                e.node, t.from, t.to, t.cause
            ),
        ));
    }
    if !sim.single_forwarder_since(start) {
        return Err(fail(&sim, "not exactly one Master without any fault"));
    }
    Ok(QuietOutcome {
        soft_timeouts,
        observed: observe,
    })
}

/// The transition-table rows a trace exercised.
pub fn rows_hit(sim: &Sim) -> BTreeSet<&'static str> {
    let mode = sim.config().mode;
    sim.trace()
        .iter()
        .filter_map(|e| {
            let t = e.transition;
            crate::state::lookup(mode, t.from, t.cause, t.to).map(|r| r.id)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}
