//! A deterministic discrete-event simulator of a Duplex group (SPEC §11), in the spirit of
//! smoltcp's `tests/netsim.rs`.
//!
//! N [`Node`]s share P paths. Each path is a hub: a frame a node sends on path `p` reaches
//! every other node on `p` through its own draw of loss, delay, jitter, duplication and
//! reordering from a seeded [`Rng`]. Virtual time jumps to the next event: a frame delivery,
//! a node's `poll_at`, or a scheduled [`Fault`]. The same seed gives the same run.
//!
//! [`check`] holds the property scenarios the tests run over thousands of seeds, and
//! [`bench`](mod@bench) the benchmark behind `cargo lab sim`.

pub mod bench;
pub mod check;

use alloc::collections::BinaryHeap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::{Ordering, Reverse};
use core::time::Duration;

use duplex_hal::{Instant, MacAddress};

use crate::config::{Config, NodeId, PathConfig, PathId, Timing};
use crate::node::{Action, Node, OperatorCommand};
use crate::spi::{MissAction, ServiceId};
use crate::state::{ForwardingRole, Mode, Transition};
use crate::wire::{FrameBytes, Key};

pub use bench::{BenchConfig, BenchRow, benchmark, render_json, render_table};

/// SplitMix64: small, fast, good enough for simulation, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }

    /// True with probability `ppm` parts per million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }

    /// Uniform in `0..=max`.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        let n = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.below(n.saturating_add(1)))
    }

    /// Uniform in `low..=high`.
    pub fn duration_between(&mut self, low: Duration, high: Duration) -> Duration {
        low + self.duration_up_to(high.saturating_sub(low))
    }
}

/// How a link treats frames. Probabilities are parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkProfile {
    /// Independent loss per frame and receiver.
    pub loss_ppm: u32,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..=jitter` (frames overtake each other).
    pub jitter: Duration,
    /// Probability that a frame arrives twice.
    pub duplicate_ppm: u32,
    /// Probability that a frame is held back by `reorder_delay` more.
    pub reorder_ppm: u32,
    /// Extra delay of a reordered frame.
    pub reorder_delay: Duration,
}

impl LinkProfile {
    /// No loss, 20 µs delay, nothing else.
    pub const PERFECT: LinkProfile = LinkProfile {
        loss_ppm: 0,
        delay: Duration::from_micros(20),
        jitter: Duration::ZERO,
        duplicate_ppm: 0,
        reorder_ppm: 0,
        reorder_delay: Duration::ZERO,
    };

    /// The longest one-way delay a delivered frame can have.
    pub fn max_one_way(&self) -> Duration {
        self.delay + self.jitter * 2 + self.reorder_delay
    }
}

/// A scheduled fault or change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node stops for good.
    Crash(usize),
    /// The node stops running for `duration`; frames to it wait and arrive at resume.
    Freeze {
        /// Node index.
        node: usize,
        /// How long.
        duration: Duration,
    },
    /// The node's main-loop service stops calling `iam_alive`.
    HangService(usize),
    /// The node crashes and boots again after `downtime` with a new incarnation.
    Reboot {
        /// Node index.
        node: usize,
        /// Time before it boots.
        downtime: Duration,
    },
    /// Path `path` delivers nothing for `duration` (a hub fails).
    CutPath {
        /// Path index.
        path: usize,
        /// How long.
        duration: Duration,
    },
    /// The node's NICs on every path are cut for `duration`.
    Isolate {
        /// Node index.
        node: usize,
        /// How long.
        duration: Duration,
    },
    /// Nodes whose bit is set in `side` cannot reach the others on any path for `duration`.
    Split {
        /// Bit `i` set: node `i` is on the first side.
        side: u32,
        /// How long.
        duration: Duration,
    },
    /// New link behaviour from now on.
    SetLink(LinkProfile),
    /// The node reports this load.
    SetLoad {
        /// Node index.
        node: usize,
        /// bit/s.
        bits_per_second: u64,
    },
    /// An operator command on a node.
    Command {
        /// Node index.
        node: usize,
        /// The command.
        command: OperatorCommand,
    },
}

/// Configuration of a simulated group.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Parallel or serial.
    pub mode: Mode,
    /// Number of nodes (1 to 8).
    pub nodes: usize,
    /// Number of paths (1 to 8).
    pub paths: usize,
    /// Timing of every node.
    pub timing: Timing,
    /// Link behaviour at start.
    pub link: LinkProfile,
    /// Seed of every random draw.
    pub seed: u64,
    /// Priorities per node (missing entries: 100).
    pub priorities: Vec<u8>,
    /// Nodes boot at a random instant in `0..=boot_spread`.
    pub boot_spread: Duration,
    /// Deadline of each node's main-loop service (miss action `Failover`).
    pub service_deadline: Duration,
}

impl SimConfig {
    /// A parallel pair on two perfect paths with default timing.
    pub fn pair(seed: u64) -> Self {
        SimConfig {
            mode: Mode::Parallel,
            nodes: 2,
            paths: 2,
            timing: Timing::default(),
            link: LinkProfile::PERFECT,
            seed,
            priorities: Vec::new(),
            boot_spread: Duration::from_millis(2),
            service_deadline: Duration::from_millis(2),
        }
    }
}

/// Whether a simulated node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Not booted yet.
    Off,
    /// Running.
    Running,
    /// Frozen until resumed.
    Frozen,
    /// Crashed (for good, or until its reboot).
    Crashed,
}

/// One transition seen in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// Node index.
    pub node: usize,
    /// The transition.
    pub transition: Transition,
}

/// One change of a node's forwarding role (including stopping by crash or freeze).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleEntry {
    /// When.
    pub at: Instant,
    /// Node index.
    pub node: usize,
    /// True when the node forwards from then on.
    pub forwarding: bool,
}

struct SimNode {
    node: Option<Node>,
    life: Life,
    held: Vec<(PathId, FrameBytes)>,
    service: Option<ServiceId>,
    hung: bool,
    incarnation: u32,
    next_poll: Instant,
    forwarding: bool,
}

#[derive(Debug)]
enum EventKind {
    Deliver {
        to: usize,
        path: PathId,
        frame: FrameBytes,
    },
    Boot(usize),
    Resume(usize),
    Fault(Fault),
    UncutPath(usize),
    Unisolate(usize),
    Unsplit(u32),
}

#[derive(Debug)]
struct Event {
    at: Instant,
    order: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.order == other.order
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Frames handed to the links (per receiver).
    pub frames_sent: u64,
    /// Frames delivered to a running node.
    pub frames_delivered: u64,
    /// Frames lost to loss or cuts.
    pub frames_lost: u64,
    /// Frames the nodes rejected (replays of duplicates, reordered frames...).
    pub frames_rejected: u64,
    /// Events processed (deliveries, polls, faults).
    pub events: u64,
}

/// The simulated group.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: Rng,
    link: LinkProfile,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<Event>>,
    order: u64,
    path_cuts: Vec<u32>,
    node_cuts: Vec<u32>,
    splits: Vec<u32>,
    trace: Vec<TraceEntry>,
    roles: Vec<RoleEntry>,
    forwarders: Vec<(Instant, u8)>,
    counters: SimCounters,
    scratch: Vec<Action>,
}

/// The key every simulated node uses.
pub fn sim_key() -> Key {
    Key::derive(b"duplex simulator")
}

impl Sim {
    /// A group whose nodes boot within `boot_spread` of time zero.
    pub fn new(config: SimConfig) -> Sim {
        let mut rng = Rng::new(config.seed);
        let mut sim = Sim {
            now: Instant::ZERO,
            link: config.link,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            order: 0,
            path_cuts: vec![0; config.paths],
            node_cuts: vec![0; config.nodes],
            splits: Vec::new(),
            trace: Vec::new(),
            roles: Vec::new(),
            forwarders: vec![(Instant::ZERO, 0)],
            counters: SimCounters::default(),
            scratch: Vec::new(),
            rng: rng.clone(),
            config,
        };
        for i in 0..sim.config.nodes {
            sim.nodes.push(SimNode {
                node: None,
                life: Life::Off,
                held: Vec::new(),
                service: None,
                hung: false,
                incarnation: 1,
                next_poll: Instant::MAX,
                forwarding: false,
            });
            let at = Instant::ZERO + rng.duration_up_to(sim.config.boot_spread);
            sim.push(at, EventKind::Boot(i));
        }
        sim.rng = rng;
        sim
    }

    /// Schedules a fault at `at`.
    pub fn schedule(&mut self, at: Instant, fault: Fault) {
        self.push(at, EventKind::Fault(fault));
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The simulator's random generator (for scenarios that draw after setup).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The link behaviour in force.
    pub fn link(&self) -> LinkProfile {
        self.link
    }

    /// Node `i`, if booted.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(|n| n.node.as_ref())
    }

    /// Whether node `i` runs.
    pub fn life(&self, i: usize) -> Life {
        self.nodes[i].life
    }

    /// Node id of node index `i` (ids are `i + 1`).
    pub fn node_id(i: usize) -> NodeId {
        NodeId(i as u16 + 1)
    }

    /// Every transition so far, in order.
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    /// Every change of forwarding, in order.
    pub fn roles(&self) -> &[RoleEntry] {
        &self.roles
    }

    /// Counters.
    pub fn counters(&self) -> SimCounters {
        self.counters
    }

    /// Indexes of the running nodes that forward now.
    pub fn forwarding_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].forwarding)
            .collect()
    }

    /// Number of running nodes that forward, as a step function: `(since, count)`.
    pub fn forwarder_timeline(&self) -> &[(Instant, u8)] {
        &self.forwarders
    }

    /// The most nodes that forwarded at the same instant within `[from, self.now()]`.
    pub fn max_forwarders_since(&self, from: Instant) -> u8 {
        self.segments(from, self.now)
            .map(|(_, _, count)| count)
            .max()
            .unwrap_or(0)
    }

    /// True if exactly one running node forwarded at every instant of `[from, self.now()]`.
    pub fn single_forwarder_since(&self, from: Instant) -> bool {
        self.segments(from, self.now)
            .all(|(_, _, count)| count == 1)
    }

    /// The longest stretch within `[from, now]` during which two or more nodes forwarded
    /// (a stretch that began before `from` counts from `from`).
    pub fn longest_dual_since(&self, from: Instant) -> Duration {
        self.segments(from, self.now)
            .filter(|&(_, _, c)| c >= 2)
            .map(|(a, b, _)| b.saturating_since(a))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The first instant at or after `from` from which exactly one node forwards for good
    /// (up to now), if any.
    pub fn settled_single_since(&self, from: Instant) -> Option<Instant> {
        let segments: Vec<_> = self.segments(from, self.now).collect();
        let mut start = None;
        for (a, _, c) in segments {
            if c == 1 {
                start.get_or_insert(a);
            } else {
                start = None;
            }
        }
        start
    }

    /// `(start, end, count)` pieces of the forwarder timeline clipped to `[from, to]`;
    /// zero-length pieces are skipped.
    fn segments(
        &self,
        from: Instant,
        to: Instant,
    ) -> impl Iterator<Item = (Instant, Instant, u8)> + '_ {
        let n = self.forwarders.len();
        (0..n).filter_map(move |i| {
            let (start, count) = self.forwarders[i];
            let end = if i + 1 < n {
                self.forwarders[i + 1].0
            } else {
                to
            };
            let a = start.max(from);
            let b = end.min(to);
            (a < b || (a == b && i + 1 == n && a == to && from == to)).then_some((a, b, count))
        })
    }

    /// A human-readable dump of the trace (for failing property reports).
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for e in &self.trace {
            let t = e.transition;
            s.push_str(&format!(
                "  {:?} node {}: {} -> {} ({}) epoch {}\n",
                t.at, e.node, t.from, t.to, t.cause, t.epoch
            ));
        }
        s.push_str("  forwarders:");
        for (t, c) in &self.forwarders {
            s.push_str(&format!(" {t:?}={c}"));
        }
        s.push('\n');
        s
    }

    /// Runs every event up to and including `end`, then sets the clock to `end`.
    pub fn run_until(&mut self, end: Instant) {
        let mut same_instant = 0u32;
        loop {
            let next_event = self.queue.peek().map_or(Instant::MAX, |e| e.0.at);
            let mut next_poll = Instant::MAX;
            let mut poll_node = usize::MAX;
            for (i, n) in self.nodes.iter().enumerate() {
                if n.life == Life::Running && n.next_poll < next_poll {
                    next_poll = n.next_poll;
                    poll_node = i;
                }
            }
            let t = next_event.min(next_poll);
            if t > end {
                break;
            }
            if t <= self.now {
                same_instant += 1;
                assert!(same_instant < 100_000, "simulation stuck at {:?}", self.now);
            } else {
                same_instant = 0;
                self.now = t;
            }
            self.counters.events += 1;
            if next_event <= next_poll {
                if let Some(Reverse(event)) = self.queue.pop() {
                    self.handle(event.kind);
                }
            } else {
                self.poll_node(poll_node);
            }
        }
        self.now = self.now.max(end);
    }

    fn push(&mut self, at: Instant, kind: EventKind) {
        self.order += 1;
        self.queue.push(Reverse(Event {
            at,
            order: self.order,
            kind,
        }));
    }

    fn boot(&mut self, i: usize) {
        let paths = (0..self.config.paths)
            .map(|p| {
                let mac = MacAddress([0x02, 0, 0, 0, i as u8 + 1, p as u8]);
                let name = match p {
                    0 => "lan",
                    1 => "wan",
                    _ => "link",
                };
                PathConfig::new(name, mac)
            })
            .collect();
        let config = Config {
            mode: self.config.mode,
            group: 7,
            node_id: Sim::node_id(i),
            priority: self.config.priorities.get(i).copied().unwrap_or(100),
            incarnation: self.nodes[i].incarnation,
            key: sim_key(),
            paths,
            timing: self.config.timing,
        };
        let now = self.now;
        let Ok(mut node) = Node::new(config, now) else {
            panic!("simulator configuration refused by Node::new");
        };
        let service = node
            .register_service(
                "main-loop",
                self.config.service_deadline,
                MissAction::Failover,
                now,
            )
            .ok();
        let n = &mut self.nodes[i];
        n.node = Some(node);
        n.life = Life::Running;
        n.service = service;
        n.hung = false;
        n.next_poll = now;
        n.held.clear();
    }

    fn handle(&mut self, kind: EventKind) {
        match kind {
            EventKind::Deliver { to, path, frame } => self.deliver(to, path, frame),
            EventKind::Boot(i) => {
                self.boot(i);
                self.poll_node(i);
            }
            EventKind::Resume(i) => {
                if self.nodes[i].life != Life::Frozen {
                    return;
                }
                self.nodes[i].life = Life::Running;
                let held = core::mem::take(&mut self.nodes[i].held);
                for (path, frame) in held {
                    self.receive(i, path, &frame);
                }
                self.poll_node(i);
            }
            EventKind::Fault(fault) => self.apply(fault),
            EventKind::UncutPath(p) => self.path_cuts[p] = self.path_cuts[p].saturating_sub(1),
            EventKind::Unisolate(i) => self.node_cuts[i] = self.node_cuts[i].saturating_sub(1),
            EventKind::Unsplit(side) => {
                if let Some(pos) = self.splits.iter().position(|&s| s == side) {
                    self.splits.remove(pos);
                }
            }
        }
    }

    fn apply(&mut self, fault: Fault) {
        let now = self.now;
        match fault {
            Fault::Crash(i) => {
                self.nodes[i].life = Life::Crashed;
                self.nodes[i].held.clear();
                self.update_forwarding(i);
            }
            Fault::Freeze { node, duration } => {
                if self.nodes[node].life == Life::Running {
                    self.nodes[node].life = Life::Frozen;
                    self.update_forwarding(node);
                    self.push(now + duration, EventKind::Resume(node));
                }
            }
            Fault::HangService(i) => self.nodes[i].hung = true,
            Fault::Reboot { node, downtime } => {
                self.nodes[node].life = Life::Crashed;
                self.nodes[node].held.clear();
                self.nodes[node].incarnation += 1;
                self.update_forwarding(node);
                self.push(now + downtime, EventKind::Boot(node));
            }
            Fault::CutPath { path, duration } => {
                self.path_cuts[path] += 1;
                self.push(now + duration, EventKind::UncutPath(path));
            }
            Fault::Isolate { node, duration } => {
                self.node_cuts[node] += 1;
                self.push(now + duration, EventKind::Unisolate(node));
            }
            Fault::Split { side, duration } => {
                self.splits.push(side);
                self.push(now + duration, EventKind::Unsplit(side));
            }
            Fault::SetLink(link) => self.link = link,
            Fault::SetLoad {
                node,
                bits_per_second,
            } => {
                if let Some(n) = self.nodes[node].node.as_mut() {
                    n.set_load(bits_per_second);
                }
            }
            Fault::Command { node, command } => {
                if self.nodes[node].life == Life::Running {
                    if let Some(n) = self.nodes[node].node.as_mut() {
                        let _ = n.command(command, now);
                    }
                    self.poll_node(node);
                }
            }
        }
    }

    fn blocked(&self, from: usize, to: usize, path: usize) -> bool {
        self.path_cuts[path] > 0
            || self.node_cuts[from] > 0
            || self.node_cuts[to] > 0
            || self
                .splits
                .iter()
                .any(|&side| ((side >> from) & 1) != ((side >> to) & 1))
    }

    fn transmit(&mut self, from: usize, path: PathId, frame: FrameBytes) {
        let link = self.link;
        for to in 0..self.nodes.len() {
            if to == from {
                continue;
            }
            self.counters.frames_sent += 1;
            if self.blocked(from, to, path.index()) || self.rng.chance_ppm(link.loss_ppm) {
                self.counters.frames_lost += 1;
                continue;
            }
            let mut delay = link.delay + self.rng.duration_up_to(link.jitter);
            if self.rng.chance_ppm(link.reorder_ppm) {
                delay += link.reorder_delay;
            }
            let at = self.now + delay;
            self.push(at, EventKind::Deliver { to, path, frame });
            if self.rng.chance_ppm(link.duplicate_ppm) {
                let again = at + self.rng.duration_up_to(link.jitter);
                self.push(again, EventKind::Deliver { to, path, frame });
            }
        }
    }

    fn deliver(&mut self, to: usize, path: PathId, frame: FrameBytes) {
        match self.nodes[to].life {
            Life::Running => {
                self.receive(to, path, &frame);
                self.after_call(to);
            }
            Life::Frozen => self.nodes[to].held.push((path, frame)),
            Life::Off | Life::Crashed => self.counters.frames_lost += 1,
        }
    }

    fn receive(&mut self, to: usize, path: PathId, frame: &FrameBytes) {
        let now = self.now;
        if let Some(node) = self.nodes[to].node.as_mut() {
            match node.on_heartbeat(path, frame.as_bytes(), now) {
                Ok(_) => self.counters.frames_delivered += 1,
                Err(_) => self.counters.frames_rejected += 1,
            }
        }
    }

    fn poll_node(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if n.life != Life::Running {
            return;
        }
        let Some(node) = n.node.as_mut() else { return };
        if !n.hung
            && let Some(service) = n.service
        {
            let _ = node.iam_alive(service, now);
        }
        self.scratch.extend(node.poll(now));
        let mut actions = core::mem::take(&mut self.scratch);
        for action in actions.drain(..) {
            match action {
                Action::SendHeartbeat { path, frame } => self.transmit(i, path, frame),
                Action::StateChanged(transition) => {
                    self.trace.push(TraceEntry {
                        node: i,
                        transition,
                    });
                }
                Action::SetRole(_)
                | Action::AnnounceTakeover { .. }
                | Action::RestartService(_)
                | Action::Reset => {}
            }
        }
        self.scratch = actions;
        self.after_call(i);
    }

    /// Refreshes a node's deadline and the forwarder count after any call into it.
    fn after_call(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].node.as_ref() {
            self.nodes[i].next_poll = node.poll_at();
        }
        self.update_forwarding(i);
    }

    fn update_forwarding(&mut self, i: usize) {
        let n = &self.nodes[i];
        let forwarding = n.life == Life::Running
            && n.node
                .as_ref()
                .is_some_and(|node| node.role() == ForwardingRole::Forward);
        if forwarding != n.forwarding {
            self.nodes[i].forwarding = forwarding;
            self.roles.push(RoleEntry {
                at: self.now,
                node: i,
                forwarding,
            });
            let count = self.nodes.iter().filter(|n| n.forwarding).count() as u8;
            match self.forwarders.last_mut() {
                Some(last) if last.0 == self.now => last.1 = count,
                _ => self.forwarders.push((self.now, count)),
            }
            // Merge equal neighbours so the timeline stays a step function.
            let len = self.forwarders.len();
            if len >= 2 && self.forwarders[len - 2].1 == self.forwarders[len - 1].1 {
                self.forwarders.pop();
            }
        }
    }
}
