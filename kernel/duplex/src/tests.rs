//! Scripted node tests in virtual time: one node under test, fake peers whose heartbeats are
//! crafted frame by frame. Each scenario drives one or more rows of the transition table
//! (SPEC §7.2); `every_row_is_exercised` checks that together they cover the whole table.

use std::collections::BTreeSet;
use std::string::String;
use std::vec;
use std::vec::Vec;

use core::time::Duration;

use duplex_hal::{Instant, MacAddress};

use crate::config::{Config, NodeId, PathConfig, PathId, Timing};
use crate::node::{Action, Failure, Node, OperatorCommand, Received};
use crate::spi::MissAction;
use crate::state::{Cause, ForwardingRole, Mode, State, Transition};
use crate::wire::{Flags, FrameBytes, HeartbeatRepr, Key, Packet};
use crate::{Error, state};

const GROUP: u16 = 7;

fn key() -> Key {
    Key::derive(b"scripted tests")
}

fn config(mode: Mode, id: u16, priority: u8, paths: usize) -> Config {
    Config {
        mode,
        group: GROUP,
        node_id: NodeId(id),
        priority,
        incarnation: 1,
        key: key(),
        paths: (0..paths)
            .map(|p| PathConfig::new("p", MacAddress([2, 0, 0, 0, id as u8, p as u8])))
            .collect(),
        timing: Timing::default(),
    }
}

/// A peer played by the test.
struct Fake {
    id: u16,
    priority: u8,
    incarnation: u32,
    sequence: u32,
    state: State,
    epoch: u32,
    master: Option<u16>,
    master_epoch: u32,
    flags: Flags,
    traffic: u8,
    load_kbps: u32,
    /// Sends a heartbeat every millisecond while true.
    talking: bool,
    /// Paths it sends on.
    paths: u8,
    /// When it last sent.
    last_sent: Instant,
    /// The replicated-log position it announces.
    log_position: u64,
}

impl Fake {
    fn new(id: u16, priority: u8) -> Fake {
        Fake {
            id,
            priority,
            incarnation: 1,
            sequence: 0,
            state: State::Slave,
            epoch: 0,
            master: None,
            master_epoch: 0,
            flags: Flags::default(),
            traffic: 0,
            load_kbps: 0,
            talking: true,
            paths: 1,
            last_sent: Instant::ZERO,
            log_position: 0,
        }
    }

    /// This fake announces a claim of `epoch`.
    fn claims(mut self, state: State, epoch: u32) -> Fake {
        self.state = state;
        self.epoch = epoch;
        self.master = Some(self.id);
        self.master_epoch = epoch;
        self
    }

    fn frame(&mut self, mode: Mode, path: u8) -> FrameBytes {
        self.sequence += 1;
        HeartbeatRepr {
            source: MacAddress([2, 0, 0, 0, self.id as u8, path]),
            mode,
            group: GROUP,
            node: NodeId(self.id),
            priority: self.priority,
            state: self.state,
            flags: self.flags,
            path,
            traffic: self.traffic,
            epoch: self.epoch.max(self.master_epoch),
            sequence: (u64::from(self.incarnation) << 32) | u64::from(self.sequence),
            master: self.master.map(NodeId),
            master_epoch: self.master_epoch,
            interval_us: 1000,
            load_kbps: self.load_kbps,
            log_position: self.log_position,
        }
        .to_frame(&key())
    }
}

/// The node under test and its fake peers.
struct Script {
    node: Node,
    mode: Mode,
    now: Instant,
    fakes: Vec<Fake>,
    next_tick: Instant,
    seen: Vec<Transition>,
    sent: Vec<(PathId, FrameBytes)>,
    actions: Vec<Action>,
}

impl Script {
    fn new(mode: Mode, id: u16, priority: u8) -> Script {
        Script::with_paths(mode, id, priority, 1)
    }

    fn with_paths(mode: Mode, id: u16, priority: u8, paths: usize) -> Script {
        let node = Node::new(config(mode, id, priority, paths), Instant::ZERO).unwrap();
        Script {
            node,
            mode,
            now: Instant::ZERO,
            fakes: Vec::new(),
            next_tick: Instant::ZERO,
            seen: Vec::new(),
            sent: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn add(&mut self, fake: Fake) -> usize {
        self.fakes.push(fake);
        self.fakes.len() - 1
    }

    fn poll(&mut self) {
        let actions: Vec<Action> = self.node.poll(self.now).collect();
        for a in actions {
            match a {
                Action::StateChanged(t) => self.seen.push(t),
                Action::SendHeartbeat { path, frame } => self.sent.push((path, frame)),
                _ => {}
            }
            self.actions.push(a);
        }
    }

    /// Delivers one heartbeat from fake `i` on every path it uses, then polls.
    fn hear(&mut self, i: usize) {
        let mode = self.mode;
        self.fakes[i].last_sent = self.now;
        for p in 0..8u8 {
            if self.fakes[i].paths & (1 << p) != 0 {
                let frame = self.fakes[i].frame(mode, p);
                let _ = self
                    .node
                    .on_heartbeat(PathId(p), frame.as_bytes(), self.now);
            }
        }
        self.poll();
    }

    /// Runs for `d`: talking fakes send every millisecond; the node is polled at `poll_at`.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.node.poll_at().min(self.next_tick).min(end);
            self.now = next.max(self.now);
            if self.now >= self.next_tick {
                for i in 0..self.fakes.len() {
                    if self.fakes[i].talking {
                        self.hear(i);
                    }
                }
                self.next_tick = self.now + Duration::from_millis(1);
            }
            if self.node.poll_at() <= self.now {
                self.poll();
            }
            if self.now >= end {
                break;
            }
        }
    }

    fn state(&self) -> State {
        self.node.state()
    }

    fn last(&self) -> Transition {
        *self.seen.last().expect("no transition")
    }

    /// Asserts the node is in `state`, having got there by `cause` last.
    fn expect(&self, state: State, cause: Cause) {
        assert_eq!(self.state(), state, "transitions: {:?}", self.seen);
        assert_eq!(self.last().cause, cause, "transitions: {:?}", self.seen);
    }

    /// Asserts the node made the transition `from -> to` by `cause` at some point.
    fn saw(&self, from: State, to: State, cause: Cause) {
        assert!(
            self.seen
                .iter()
                .any(|t| t.from == from && t.to == to && t.cause == cause),
            "no {from} -> {to} ({cause}) in {:?}",
            self.seen
        );
    }

    /// A Slave of fake `master`, which claims `epoch`.
    fn slave_of(mode: Mode, id: u16, master: Fake) -> Script {
        let mut s = Script::new(mode, id, 100);
        s.add(master);
        s.run(Duration::from_millis(3));
        assert_eq!(s.state(), State::Slave);
        s
    }

    /// The node alone past its probe period: it claims and (parallel) confirms.
    fn master_alone(mode: Mode) -> Script {
        let mut s = Script::new(mode, 5, 100);
        s.run(Duration::from_millis(12));
        assert_eq!(s.state(), State::Master, "{:?}", s.seen);
        s
    }

    fn rows(&self) -> BTreeSet<&'static str> {
        self.seen
            .iter()
            .map(|t| {
                state::lookup(self.mode, t.from, t.cause, t.to)
                    .unwrap_or_else(|| panic!("{t:?} not in the table"))
                    .id
            })
            .collect()
    }
}

type Scenario = fn() -> Script;

macro_rules! scenarios {
    ($($name:ident => $body:block)*) => {
        $(
            #[test]
            fn $name() {
                let _ = $body;
            }
        )*
        const SCENARIOS: &[Scenario] = &[$(|| $body),*];
    };
}

const PA: Mode = Mode::Parallel;
const SE: Mode = Mode::Serial;

scenarios! {
    p1_probe_hears_master => {
        let s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.expect(State::Slave, Cause::HeardMaster);
        assert_eq!(s.node.master(), Some(NodeId(2)));
        assert_eq!(s.node.role(), ForwardingRole::Buffer);
        s
    }
    p2_p15_alone_claims_and_confirms => {
        let s = Script::master_alone(PA);
        let causes: Vec<Cause> = s.seen.iter().map(|t| t.cause).collect();
        assert_eq!(causes, [Cause::ProbeExpired, Cause::Confirmed]);
        assert_eq!(s.seen[0].at, Instant::from_millis(10));
        assert!(s.actions.contains(&Action::AnnounceTakeover { epoch: 1 }));
        assert_eq!(s.node.role(), ForwardingRole::Forward);
        s
    }
    p3_probe_defers_to_a_better_standby => {
        let mut s = Script::new(PA, 1, 100);
        let mut standby = Fake::new(2, 200);
        standby.state = State::SubMaster;
        s.add(standby);
        s.run(Duration::from_millis(11));
        s.expect(State::SubMaster, Cause::ProbeExpired);
        s
    }
    s4_serial_take_over_from_probe => {
        let mut t = Script::new(SE, 1, 100);
        t.node.command(OperatorCommand::TakeOver, t.now).unwrap();
        t.poll();
        t.expect(State::Master, Cause::Operator);
        t
    }
    p4_parallel_take_over_from_probe => {
        let mut s = Script::new(PA, 1, 100);
        s.node.command(OperatorCommand::TakeOver, s.now).unwrap();
        s.poll();
        assert_eq!(s.seen[0].to, State::QuasiMaster);
        s
    }
    p5_p11_slave_soft_then_hard_timeout => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].talking = false;
        let last_heard = s.fakes[0].last_sent;
        s.run(Duration::from_millis(20));
        let t: Vec<(State, Cause)> = s.seen.iter().map(|t| (t.to, t.cause)).collect();
        assert_eq!(
            t[1..],
            [
                (State::SubMaster, Cause::SoftTimeout),
                (State::QuasiMaster, Cause::HardTimeout),
                (State::Master, Cause::Confirmed)
            ]
        );
        // Soft timeout 3 ms, hard 5 ms after the last heartbeat (SPEC §4.3, idle).
        let soft_at = s.seen[1].at.saturating_since(last_heard);
        let hard_at = s.seen[2].at.saturating_since(last_heard);
        assert_eq!(soft_at, Duration::from_millis(3));
        assert_eq!(hard_at, Duration::from_millis(5));
        assert_eq!(s.seen[2].epoch, 5, "claim epoch = known + 1");
        s
    }
    p6_slave_master_resigns => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].state = State::Suspend;
        s.hear(0);
        assert_eq!(s.seen[1].cause, Cause::MasterResigned);
        assert_eq!(s.seen[1].to, State::QuasiMaster);
        s
    }
    p7_p13_not_best_waits_then_elected => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        let mut better = Fake::new(3, 200);
        better.master = Some(2);
        better.master_epoch = 4;
        better.epoch = 4;
        s.add(better);
        s.run(Duration::from_millis(2));
        s.fakes[0].state = State::Suspend;
        s.fakes[0].master = None;
        s.fakes[1].master = None;
        s.hear(0);
        s.expect(State::SubMaster, Cause::MasterResigned);
        // The better candidate never claims and then dies: this node is elected.
        s.fakes[1].talking = false;
        s.run(Duration::from_millis(10));
        assert!(s.seen.iter().any(|t| t.cause == Cause::Elected && t.to == State::QuasiMaster));
        s
    }
    p8_p19_yield_and_old_master_steps_down => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].flags = Flags::YIELD;
        s.hear(0);
        s.expect(State::QuasiMaster, Cause::YieldRequested);
        // And the other side: a Master asked to fail over loses the contention.
        let mut m = Script::master_alone(PA);
        let mut slave = Fake::new(9, 100);
        slave.master = Some(5);
        slave.master_epoch = 1;
        slave.epoch = 1;
        m.add(slave);
        m.run(Duration::from_millis(2));
        m.node.command(OperatorCommand::Failover, m.now).unwrap();
        m.poll();
        let (_, frame) = *m.sent.last().unwrap();
        let repr = HeartbeatRepr::parse(&Packet::new_unchecked(frame.as_bytes()), &key()).unwrap();
        assert!(repr.flags.contains(Flags::YIELD));
        let fake = &mut m.fakes[0];
        *fake = Fake::new(9, 100).claims(State::QuasiMaster, 2);
        fake.sequence = 100;
        m.hear(0);
        m.expect(State::Slave, Cause::LostContention);
        assert_eq!(m.node.master(), Some(NodeId(9)));
        s.seen.extend(m.seen);
        s
    }
    p9_p14_take_over_from_standby => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.node.command(OperatorCommand::TakeOver, s.now).unwrap();
        s.poll();
        assert_eq!(s.seen[1].cause, Cause::Operator);
        let mut t = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        t.fakes[0].talking = false;
        t.run(Duration::from_millis(3));
        assert_eq!(t.state(), State::SubMaster);
        t.node.command(OperatorCommand::TakeOver, t.now).unwrap();
        t.poll();
        t.expect(State::QuasiMaster, Cause::Operator);
        s.seen.extend(t.seen);
        s
    }
    p10_submaster_hears_master_again => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].talking = false;
        s.run(Duration::from_millis(3) + Duration::from_micros(500));
        assert_eq!(s.state(), State::SubMaster);
        // It probes at the raised rate with PROBE_REQUEST.
        let (_, frame) = *s.sent.last().unwrap();
        let repr = HeartbeatRepr::parse(&Packet::new_unchecked(frame.as_bytes()), &key()).unwrap();
        assert!(repr.flags.contains(Flags::PROBE_REQUEST));
        assert_eq!(repr.interval_us, 250);
        s.hear(0);
        s.expect(State::Slave, Cause::HeardMaster);
        s
    }
    p12_submaster_master_resigns => {
        let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].talking = false;
        s.run(Duration::from_millis(3) + Duration::from_micros(500));
        assert_eq!(s.state(), State::SubMaster);
        s.fakes[0].state = State::Probe;
        s.fakes[0].master = None;
        s.hear(0);
        assert!(s.seen.iter().any(|t| t.from == State::SubMaster && t.cause == Cause::MasterResigned));
        s
    }
    p16_quasi_master_loses_contention => {
        let mut s = Script::new(PA, 1, 100);
        let mut slow = Fake::new(3, 100);
        slow.state = State::Probe;
        s.add(slow);
        s.run(Duration::from_millis(10));
        assert_eq!(s.state(), State::QuasiMaster, "{:?}", s.seen);
        let better = s.add(Fake::new(2, 100).claims(State::QuasiMaster, 1));
        s.hear(better);
        s.expect(State::Slave, Cause::LostContention);
        s
    }
    p17_p20_hearsay_of_a_newer_master => {
        // QuasiMaster (a Probe peer keeps it unconfirmed) hears of a newer claim.
        let mut s = Script::new(PA, 1, 100);
        let mut probe = Fake::new(3, 100);
        probe.state = State::Probe;
        let p = s.add(probe);
        s.run(Duration::from_millis(10));
        assert_eq!(s.state(), State::QuasiMaster);
        s.fakes[p].state = State::Slave;
        s.fakes[p].master = Some(4);
        s.fakes[p].master_epoch = 7;
        s.hear(p);
        s.expect(State::SubMaster, Cause::LostContention);
        // Master hears of a newer claim.
        let mut m = Script::master_alone(PA);
        let mut other = Fake::new(3, 100);
        other.master = Some(4);
        other.master_epoch = 9;
        m.add(other);
        m.run(Duration::from_millis(1));
        m.expect(State::SubMaster, Cause::LostContention);
        // It does not claim while the hearsay lasts.
        m.run(Duration::from_millis(30));
        assert_eq!(m.state(), State::SubMaster);
        s.seen.extend(m.seen);
        s
    }
    p18_p21_frozen_claimers_step_down => {
        let mut s = Script::new(PA, 1, 100);
        let mut probe = Fake::new(3, 100);
        probe.state = State::Probe;
        probe.talking = false;
        let p = s.add(probe);
        s.hear(p);
        s.now += Duration::from_millis(9);
        s.hear(p);
        s.now += Duration::from_millis(1);
        s.poll();
        assert_eq!(s.state(), State::QuasiMaster);
        // Longer than every peer's hard timeout: step down at once.
        s.now += Duration::from_millis(16) + Duration::from_nanos(1);
        s.poll();
        s.expect(State::Probe, Cause::Frozen);
        let mut m = Script::master_alone(PA);
        m.now += Duration::from_millis(4);
        m.poll();
        assert_eq!(m.state(), State::Master, "a gap of exactly the threshold is not a freeze");
        m.now += Duration::from_millis(17);
        m.poll();
        m.expect(State::Probe, Cause::Frozen);
        assert_eq!(m.node.role(), ForwardingRole::Buffer);
        s.seen.extend(m.seen);
        s
    }
    p22_p25_local_failure_from_every_state_and_recovery => {
        let mut all = Script::new(PA, 1, 100);
        for build in [
            (|| Script::new(PA, 1, 100)) as fn() -> Script,
            || Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4)),
            || {
                let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
                s.fakes[0].talking = false;
                s.run(Duration::from_millis(4));
                s
            },
            || {
                let mut s = Script::new(PA, 1, 100);
                let mut probe = Fake::new(3, 100);
                probe.state = State::Probe;
                s.add(probe);
                s.run(Duration::from_millis(10));
                s
            },
            || Script::master_alone(PA),
        ] {
            let mut s = build();
            let from = s.state();
            s.node.on_local_failure(Failure::Hardware(3), s.now);
            s.poll();
            s.expect(State::Suspend, Cause::LocalFailure);
            assert_eq!(s.last().from, from);
            assert!(s.node.status().silent);
            // Silent: no heartbeat while the failure lasts.
            let sent = s.sent.len();
            s.run(Duration::from_millis(5));
            assert_eq!(s.sent.len(), sent);
            assert!(!s.node.healthy(s.now));
            s.node.on_recovery(Failure::Hardware(3), s.now);
            s.poll();
            s.saw(State::Suspend, State::Probe, Cause::Recovery);
            all.seen.extend(s.seen);
        }
        all
    }
    p23_interface_failure_from_every_state => {
        let mut all = Script::new(PA, 1, 100);
        for build in [
            (|| Script::new(PA, 1, 100)) as fn() -> Script,
            || Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4)),
            || {
                let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
                s.fakes[0].talking = false;
                s.run(Duration::from_millis(4));
                s
            },
            || {
                let mut s = Script::new(PA, 1, 100);
                let mut probe = Fake::new(3, 100);
                probe.state = State::Probe;
                s.add(probe);
                s.run(Duration::from_millis(10));
                s
            },
            || Script::master_alone(PA),
        ] {
            let mut s = build();
            s.node.on_local_failure(Failure::Interface(PathId(0)), s.now);
            s.poll();
            s.expect(State::Suspend, Cause::InterfaceFailure);
            // Not silent: the Suspend state is announced.
            let (_, frame) = *s.sent.last().unwrap();
            let repr = HeartbeatRepr::parse(&Packet::new_unchecked(frame.as_bytes()), &key()).unwrap();
            assert_eq!(repr.state, State::Suspend);
            s.node.on_interface_traffic(PathId(0), s.now);
            s.poll();
            s.saw(State::Suspend, State::Probe, Cause::Recovery);
            all.seen.extend(s.seen);
        }
        all
    }
    p24_p26_operator_suspend_from_every_state_and_resume => {
        let mut all = Script::new(PA, 1, 100);
        for build in [
            (|| Script::new(PA, 1, 100)) as fn() -> Script,
            || Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4)),
            || {
                let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
                s.fakes[0].talking = false;
                s.run(Duration::from_millis(4));
                s
            },
            || {
                let mut s = Script::new(PA, 1, 100);
                let mut probe = Fake::new(3, 100);
                probe.state = State::Probe;
                s.add(probe);
                s.run(Duration::from_millis(10));
                s
            },
            || Script::master_alone(PA),
        ] {
            let mut s = build();
            s.node.command(OperatorCommand::Suspend, s.now).unwrap();
            s.poll();
            s.expect(State::Suspend, Cause::Operator);
            assert_eq!(s.node.role(), ForwardingRole::Drop);
            assert_eq!(s.node.command(OperatorCommand::TakeOver, s.now), Err(Error::InvalidState));
            s.node.command(OperatorCommand::Resume, s.now).unwrap();
            s.poll();
            s.saw(State::Suspend, State::Probe, Cause::Operator);
            assert_eq!(s.node.command(OperatorCommand::Resume, s.now), Err(Error::InvalidState));
            all.seen.extend(s.seen);
        }
        all
    }
    s1_s3_serial_probe => {
        let s = Script::slave_of(SE, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.expect(State::Slave, Cause::HeardMaster);
        assert_eq!(s.node.role(), ForwardingRole::PassThrough);
        let mut t = Script::new(SE, 1, 100);
        t.add(Fake::new(2, 200));
        t.run(Duration::from_millis(11));
        t.expect(State::Slave, Cause::ProbeExpired);
        let mut all = s;
        all.seen.extend(t.seen);
        all
    }
    s2_serial_alone_claims => {
        let s = Script::master_alone(SE);
        assert_eq!(s.seen.len(), 1, "no QuasiMaster in serial mode");
        s.expect(State::Master, Cause::ProbeExpired);
        s
    }
    s5_serial_slave_hard_timeout => {
        let mut s = Script::slave_of(SE, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].talking = false;
        s.run(Duration::from_millis(4));
        assert_eq!(s.state(), State::Slave, "serial: no SubMaster on a soft timeout");
        assert!(s.node.status().probing);
        s.run(Duration::from_millis(4));
        s.expect(State::Master, Cause::HardTimeout);
        s
    }
    s6_s7_s9_serial_resign_yield_take_over => {
        let mut s = Script::slave_of(SE, 1, Fake::new(2, 100).claims(State::Master, 4));
        s.fakes[0].state = State::SubMaster;
        s.fakes[0].master = None;
        s.hear(0);
        s.expect(State::Master, Cause::MasterResigned);
        let mut t = Script::slave_of(SE, 1, Fake::new(2, 100).claims(State::Master, 4));
        t.fakes[0].flags = Flags::YIELD;
        t.hear(0);
        t.expect(State::Master, Cause::YieldRequested);
        let mut u = Script::slave_of(SE, 1, Fake::new(2, 100).claims(State::Master, 4));
        u.node.command(OperatorCommand::TakeOver, u.now).unwrap();
        u.poll();
        u.expect(State::Master, Cause::Operator);
        s.seen.extend(t.seen);
        s.seen.extend(u.seen);
        s
    }
    s8_serial_orphan_elected => {
        let mut s = Script::new(SE, 1, 100);
        s.add(Fake::new(2, 200));
        s.run(Duration::from_millis(11));
        assert_eq!(s.state(), State::Slave);
        // The better candidate never claims: after the orphan wait this node claims.
        s.run(Duration::from_millis(10));
        s.expect(State::Master, Cause::Elected);
        s
    }
    s10_s11_serial_master_contention_and_freeze => {
        let mut s = Script::master_alone(SE);
        let newer = s.add(Fake::new(2, 100).claims(State::Master, 5));
        s.hear(newer);
        s.expect(State::Slave, Cause::LostContention);
        let mut t = Script::master_alone(SE);
        t.now += Duration::from_millis(17);
        t.poll();
        t.expect(State::Probe, Cause::Frozen);
        s.seen.extend(t.seen);
        s
    }
    s12_s16_serial_failures_bypass => {
        let mut all = Script::new(SE, 1, 100);
        for build in [
            (|| Script::new(SE, 1, 100)) as fn() -> Script,
            || Script::slave_of(SE, 1, Fake::new(2, 100).claims(State::Master, 4)),
            || Script::master_alone(SE),
        ] {
            let mut s = build();
            s.node.on_local_failure(Failure::Hardware(1), s.now);
            s.poll();
            s.expect(State::SubMaster, Cause::LocalFailure);
            assert_eq!(s.node.role(), ForwardingRole::Bypass);
            s.node.on_recovery(Failure::Hardware(1), s.now);
            s.poll();
            s.saw(State::SubMaster, State::Probe, Cause::Recovery);
            s.node.on_local_failure(Failure::Interface(PathId(0)), s.now);
            s.poll();
            s.expect(State::SubMaster, Cause::InterfaceFailure);
            s.node.on_recovery(Failure::Interface(PathId(0)), s.now);
            s.poll();
            let mut t = build();
            t.node.command(OperatorCommand::Suspend, t.now).unwrap();
            t.poll();
            t.expect(State::SubMaster, Cause::Operator);
            t.node.command(OperatorCommand::Resume, t.now).unwrap();
            t.poll();
            t.saw(State::SubMaster, State::Probe, Cause::Operator);
            all.seen.extend(s.seen);
            all.seen.extend(t.seen);
        }
        all
    }
}

#[test]
fn every_row_is_exercised() {
    let mut hit = BTreeSet::new();
    for scenario in SCENARIOS {
        hit.extend(scenario().rows());
    }
    let all: BTreeSet<&str> = state::TABLE.iter().map(|r| r.id).collect();
    let missing: Vec<_> = all.difference(&hit).collect();
    assert!(missing.is_empty(), "rows never exercised: {missing:?}");
}

// ----- heartbeat reception -----

#[test]
fn replays_duplicates_and_foreign_frames_are_rejected() {
    let mut s = Script::with_paths(PA, 1, 100, 2);
    let mut peer = Fake::new(2, 100);
    let f0 = peer.frame(PA, 0);
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f0.as_bytes(), s.now),
        Ok(Received::Accepted)
    );
    // Same frame again on the same path: replay.
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f0.as_bytes(), s.now),
        Err(Error::Replayed)
    );
    // A frame sent on path 0 arriving on path 1: crossed cables.
    assert_eq!(
        s.node.on_heartbeat(PathId(1), f0.as_bytes(), s.now),
        Err(Error::WrongPath)
    );
    // The same round's copy on path 1: counts for path health only.
    peer.sequence -= 1;
    let f1 = peer.frame(PA, 1);
    assert_eq!(
        s.node.on_heartbeat(PathId(1), f1.as_bytes(), s.now),
        Ok(Received::Duplicate)
    );
    // An older sequence on path 1 is a replay there.
    let mut old = Fake::new(2, 100);
    let stale = old.frame(PA, 1);
    assert_eq!(
        s.node.on_heartbeat(PathId(1), stale.as_bytes(), s.now),
        Err(Error::Replayed)
    );
    // Epoch going backwards within one incarnation: stale.
    let mut ahead = Fake::new(2, 100);
    ahead.sequence = 10;
    ahead.epoch = 5;
    let f = ahead.frame(PA, 0);
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f.as_bytes(), s.now),
        Ok(Received::Accepted)
    );
    ahead.epoch = 4;
    let f = ahead.frame(PA, 0);
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f.as_bytes(), s.now),
        Err(Error::Stale)
    );
    // A reboot (new incarnation) starts low again and is accepted.
    let mut rebooted = Fake::new(2, 100);
    rebooted.incarnation = 2;
    let f = rebooted.frame(PA, 0);
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f.as_bytes(), s.now),
        Ok(Received::Accepted)
    );
    // Other group, other mode, own id, unknown path, garbage.
    let mut other = Fake::new(3, 100);
    let f = other.frame(SE, 0);
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f.as_bytes(), s.now),
        Err(Error::ModeMismatch)
    );
    let mut me = Fake::new(1, 100);
    let f = me.frame(PA, 0);
    assert_eq!(
        s.node.on_heartbeat(PathId(0), f.as_bytes(), s.now),
        Err(Error::OwnFrame)
    );
    let mut b = other.frame(PA, 0).0;
    let mut p = Packet::new_unchecked(&mut b[..]);
    p.set_group(8);
    p.fill_tag(&key());
    assert_eq!(
        s.node.on_heartbeat(PathId(0), &b, s.now),
        Err(Error::WrongGroup)
    );
    assert_eq!(
        s.node.on_heartbeat(PathId(5), &b, s.now),
        Err(Error::UnknownPath)
    );
    assert_eq!(
        s.node.on_heartbeat(PathId(0), &b[..40], s.now),
        Err(Error::Truncated)
    );
    let status = s.node.status();
    assert_eq!(status.paths[0].received, 3);
    assert_eq!(status.paths[1].duplicates, 1);
    assert!(status.paths[0].rejected >= 5);
    assert_eq!(status.paths[0].last_error, Some(Error::Truncated));
}

#[test]
fn heartbeats_go_out_on_every_path_with_one_sequence() {
    let mut s = Script::with_paths(PA, 1, 100, 3);
    s.poll();
    let frames: Vec<HeartbeatRepr> = s
        .sent
        .iter()
        .map(|(_, f)| HeartbeatRepr::parse(&Packet::new_unchecked(f.as_bytes()), &key()).unwrap())
        .collect();
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.sequence == frames[0].sequence));
    assert_eq!(frames.iter().map(|f| f.path).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(s.sent[2].0, PathId(2));
    assert_eq!(
        &s.sent[0].1.as_bytes()[0..6],
        &crate::wire::group_address(GROUP).0
    );
    assert_eq!(frames[0].source, MacAddress([2, 0, 0, 0, 1, 0]));
}

#[test]
fn peer_stays_alive_while_any_path_delivers() {
    let mut s = Script::with_paths(PA, 1, 100, 3);
    let mut master = Fake::new(2, 100).claims(State::Master, 1);
    master.paths = 0b111;
    let m = s.add(master);
    s.run(Duration::from_millis(5));
    assert_eq!(s.state(), State::Slave);
    // LAN and WAN die; the dedicated link still delivers.
    s.fakes[m].paths = 0b100;
    s.run(Duration::from_millis(50));
    assert_eq!(s.state(), State::Slave, "{:?}", s.seen);
    let status = s.node.status();
    let peer = &status.peers[0];
    assert!(peer.alive);
    let up: Vec<bool> = peer.paths.iter().map(|p| p.up).collect();
    assert_eq!(up, [false, false, true]);
    assert_eq!(
        status.paths.iter().map(|p| p.up).collect::<Vec<_>>(),
        [false, false, true]
    );
    // The last path dies too: fail-over.
    s.fakes[m].talking = false;
    s.run(Duration::from_millis(10));
    assert_eq!(s.state(), State::Master);
}

#[test]
fn probe_requests_are_answered_at_once_on_their_path() {
    let mut s = Script::with_paths(PA, 1, 100, 2);
    let mut master = Fake::new(2, 100).claims(State::Master, 1);
    master.paths = 0b11;
    let m = s.add(master);
    s.run(Duration::from_millis(3));
    s.sent.clear();
    s.now += Duration::from_micros(200);
    s.fakes[m].flags = Flags::PROBE_REQUEST;
    s.fakes[m].paths = 0b10;
    s.hear(m);
    assert_eq!(
        s.sent.len(),
        1,
        "one reply, on the path the probe came from"
    );
    assert_eq!(s.sent[0].0, PathId(1));
    let repr =
        HeartbeatRepr::parse(&Packet::new_unchecked(s.sent[0].1.as_bytes()), &key()).unwrap();
    assert!(repr.flags.contains(Flags::PROBE_REPLY));
    // Rate limit: a second probe right away gets no second reply.
    s.hear(m);
    assert_eq!(s.sent.len(), 1);
}

#[test]
fn hard_timeout_grows_with_announced_load_within_bounds() {
    let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
    assert_eq!(
        s.node.peer_hard_timeout(NodeId(2)),
        Some(Duration::from_millis(5))
    );
    s.fakes[0].load_kbps = 100_000;
    s.hear(0);
    let hard = s.node.peer_hard_timeout(NodeId(2)).unwrap();
    assert_eq!(
        hard,
        Duration::from_millis(3) + Duration::from_micros(100_000_000 >> 15)
    );
    s.node.set_load(10_000_000_000);
    assert_eq!(
        s.node.peer_hard_timeout(NodeId(2)),
        Some(Duration::from_millis(9))
    );
}

#[test]
fn soft_timeout_adapts_to_jitter() {
    let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
    s.fakes[0].talking = false;
    // Gaps alternating 0.2 ms and 1.8 ms.
    for i in 0..60 {
        s.now += Duration::from_micros(if i % 2 == 0 { 200 } else { 1800 });
        s.hear(0);
    }
    let peer = &s.node.status().peers[0];
    assert!(
        peer.soft_timeout > Duration::from_millis(4),
        "{:?}",
        peer.soft_timeout
    );
    assert!(peer.soft_timeout <= Duration::from_millis(10));
    assert_eq!(s.state(), State::Slave);
}

#[test]
fn contention_is_settled_by_epoch_then_priority_then_id() {
    // Same epoch, higher priority wins.
    let mut s = Script::master_alone(PA);
    let high = s.add(Fake::new(2, 200).claims(State::Master, 1));
    s.hear(high);
    s.expect(State::Slave, Cause::LostContention);
    // Same epoch and priority, higher id wins: node 5 beats node 2.
    let mut s = Script::master_alone(PA);
    let low = s.add(Fake::new(2, 100).claims(State::Master, 1));
    s.sent.clear();
    s.now += Duration::from_micros(300);
    s.hear(low);
    assert_eq!(s.state(), State::Master);
    // The winner answers the loser at once.
    assert!(!s.sent.is_empty());
    // Older epoch loses whatever its priority.
    let mut s = Script::master_alone(PA);
    let old = s.add(Fake::new(9, 255).claims(State::Master, 0));
    s.hear(old);
    assert_eq!(s.state(), State::Master);
}

#[test]
fn at_a_cold_start_the_freshest_log_wins_before_priority() {
    for mode in [Mode::Parallel, Mode::Serial] {
        // Both booting: the peer has a newer log; this node, though of higher priority,
        // does not claim at the end of its probe period.
        let mut s = Script::new(mode, 1, 255);
        let mut fresh = Fake::new(2, 10);
        fresh.state = State::Probe;
        fresh.log_position = 500;
        s.add(fresh);
        s.node.set_log_position(100);
        // Just past the probe period (10 ms), before the orphan wait (another 10 ms)
        // would make it claim anyway if the fresher peer never did.
        s.run(Duration::from_millis(13));
        let standby = match mode {
            Mode::Parallel => State::SubMaster,
            Mode::Serial => State::Slave,
        };
        assert_eq!(s.state(), standby, "{mode}");
        // The same logs: priority decides, and this node claims.
        let mut s = Script::new(mode, 1, 255);
        let mut peer = Fake::new(2, 10);
        peer.state = State::Probe;
        peer.log_position = 100;
        s.add(peer);
        s.node.set_log_position(100);
        s.run(Duration::from_millis(30));
        assert!(s.state().is_claimer(), "{mode}: {}", s.state());
    }
}

#[test]
fn rebooted_node_with_low_epoch_becomes_slave() {
    let mut s = Script::new(PA, 1, 255);
    s.add(Fake::new(2, 10).claims(State::Master, 40));
    s.run(Duration::from_millis(3));
    assert_eq!(s.state(), State::Slave);
    assert_eq!(s.node.epoch(), 40);
}

#[test]
fn failover_command_needs_a_standby_and_a_master() {
    let mut s = Script::master_alone(PA);
    assert_eq!(
        s.node.command(OperatorCommand::Failover, s.now),
        Err(Error::NoStandby)
    );
    let mut t = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
    assert_eq!(
        t.node.command(OperatorCommand::Failover, t.now),
        Err(Error::InvalidState)
    );
    t.node
        .command(OperatorCommand::SetPriority(7), t.now)
        .unwrap();
    t.poll();
    let (_, frame) = *t.sent.last().unwrap();
    let repr = HeartbeatRepr::parse(&Packet::new_unchecked(frame.as_bytes()), &key()).unwrap();
    assert_eq!(repr.priority, 7);
    s.node.command(OperatorCommand::TakeOver, s.now).unwrap();
    assert_eq!(s.state(), State::Master);
}

// ----- the SPI -----

#[test]
fn service_miss_actions() {
    // Failover: silent Suspend, cleared by iam_alive.
    let mut s = Script::master_alone(PA);
    let id = s
        .node
        .register_service("fwd", Duration::from_millis(2), MissAction::Failover, s.now)
        .unwrap();
    s.run(Duration::from_millis(1));
    s.node.iam_alive(id, s.now).unwrap();
    s.run(Duration::from_millis(1));
    assert_eq!(s.state(), State::Master);
    assert!(s.node.healthy(s.now));
    s.run(Duration::from_millis(2));
    s.expect(State::Suspend, Cause::LocalFailure);
    assert!(!s.node.healthy(s.now));
    let sent = s.sent.len();
    s.run(Duration::from_millis(3));
    assert_eq!(
        s.sent.len(),
        sent,
        "no heartbeat while a local failure is active"
    );
    s.node.iam_alive(id, s.now).unwrap();
    s.poll();
    s.expect(State::Probe, Cause::Recovery);

    // Restart: asks for restarts, then escalates.
    let mut s = Script::master_alone(PA);
    let id = s
        .node
        .register_service("log", Duration::from_millis(1), MissAction::Restart, s.now)
        .unwrap();
    s.run(Duration::from_millis(3) + Duration::from_micros(500));
    let restarts = s
        .actions
        .iter()
        .filter(|a| **a == Action::RestartService(id))
        .count();
    assert_eq!(restarts, 3);
    assert_eq!(s.state(), State::Master);
    s.run(Duration::from_millis(1));
    s.expect(State::Suspend, Cause::LocalFailure);

    // Suspend: only the operator's Resume clears it.
    let mut s = Script::master_alone(PA);
    let id = s
        .node
        .register_service("mgmt", Duration::from_millis(1), MissAction::Suspend, s.now)
        .unwrap();
    s.run(Duration::from_millis(2));
    s.expect(State::Suspend, Cause::LocalFailure);
    s.node.iam_alive(id, s.now).unwrap();
    s.poll();
    assert_eq!(s.state(), State::Suspend);
    s.node.on_recovery(Failure::Service(id), s.now);
    s.poll();
    assert_eq!(s.state(), State::Suspend);
    s.node.command(OperatorCommand::Resume, s.now).unwrap();
    s.poll();
    s.expect(State::Probe, Cause::Operator);

    // Reset: asks for a reset.
    let mut s = Script::master_alone(SE);
    s.node
        .register_service("loop", Duration::from_millis(1), MissAction::Reset, s.now)
        .unwrap();
    s.run(Duration::from_millis(2));
    assert!(s.actions.contains(&Action::Reset));
    s.expect(State::SubMaster, Cause::LocalFailure);
    assert_eq!(s.node.role(), ForwardingRole::Bypass);

    // Bookkeeping errors.
    let mut s = Script::new(PA, 1, 100);
    assert_eq!(
        s.node.iam_alive(crate::ServiceId(3), s.now),
        Err(Error::UnknownService)
    );
    assert!(
        s.node
            .register_service("x", Duration::ZERO, MissAction::Restart, s.now)
            .is_err()
    );
    for i in 0..16 {
        s.node
            .register_service("s", Duration::from_secs(1), MissAction::Restart, s.now)
            .unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    assert_eq!(
        s.node
            .register_service("s", Duration::from_secs(1), MissAction::Restart, s.now),
        Err(Error::TooManyServices)
    );
    s.node
        .unregister_service(crate::ServiceId(4), s.now)
        .unwrap();
    assert_eq!(
        s.node
            .register_service("t", Duration::from_secs(1), MissAction::Restart, s.now),
        Ok(crate::ServiceId(4))
    );
}

#[test]
fn freeze_gives_services_and_peers_a_grace_period() {
    let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
    s.node
        .register_service("fwd", Duration::from_millis(2), MissAction::Failover, s.now)
        .unwrap();
    // The whole box (services included) stops for 20 ms, then the master's frames resume.
    s.now += Duration::from_millis(20);
    s.hear(0);
    assert_eq!(s.state(), State::Slave, "{:?}", s.seen);
    assert_eq!(s.node.status().freezes, 1);
}

#[test]
fn device_state_and_status() {
    let mut s = Script::slave_of(PA, 1, Fake::new(2, 100).claims(State::Master, 4));
    let d = s.node.device_state();
    assert_eq!(d.state, State::Slave);
    assert_eq!(d.master, Some(NodeId(2)));
    s.fakes[0].talking = false;
    s.run(Duration::from_millis(10));
    assert!(s.node.device_state().generation > d.generation);
    let status = s.node.status();
    let text = std::format!("{status}");
    assert!(
        text.contains("node 1 group 7 parallel mode, Master (forward)"),
        "{text}"
    );
    assert!(text.contains("peer 2 Master"), "{text}");
    assert!(text.contains("DEAD"), "{text}");
    let json = status.to_json();
    assert!(
        json.starts_with("{\"node\":1,\"group\":7,\"mode\":\"parallel\",\"state\":\"Master\""),
        "{json}"
    );
    assert!(
        json.contains("\"peers\":[{\"node\":2,\"state\":\"Master\""),
        "{json}"
    );
    assert!(json.ends_with("]}"));
    // Balanced braces and brackets, no newline: one JSON object on one line.
    let depth = json.chars().fold(0i32, |d, c| match c {
        '{' | '[' => d + 1,
        '}' | ']' => d - 1,
        _ => d,
    });
    assert_eq!(depth, 0);
    assert!(!json.contains('\n'));
}

#[test]
fn missing_traffic_parallel_needs_a_peer_that_sees_traffic() {
    let mut cfg = config(PA, 1, 100, 2);
    cfg.paths[0].traffic_timeout = Some(Duration::from_millis(20));
    let mut s = Script::new(PA, 1, 100);
    s.node = Node::new(cfg, Instant::ZERO).unwrap();
    let mut master = Fake::new(2, 100).claims(State::Master, 1);
    master.traffic = 0;
    let m = s.add(master);
    // Quiet network: nobody sees traffic, nothing happens.
    s.run(Duration::from_millis(60));
    assert_eq!(s.state(), State::Slave);
    // The peer sees LAN traffic, this node does not: interface failure.
    s.fakes[m].traffic = 0b01;
    s.run(Duration::from_millis(2));
    s.expect(State::Suspend, Cause::InterfaceFailure);
    // Traffic comes back.
    s.node.on_interface_traffic(PathId(0), s.now);
    s.poll();
    s.saw(State::Suspend, State::Probe, Cause::Recovery);
    assert_eq!(s.state(), State::Slave);
}

#[test]
fn missing_traffic_serial_bypasses_and_retries() {
    let mut cfg = config(SE, 1, 100, 1);
    cfg.paths[0].traffic_timeout = Some(Duration::from_millis(20));
    let mut s = Script::new(SE, 1, 100);
    s.node = Node::new(cfg, Instant::ZERO).unwrap();
    s.run(Duration::from_millis(15));
    assert_eq!(s.state(), State::Master);
    s.node.on_interface_traffic(PathId(0), s.now);
    s.run(Duration::from_millis(19));
    assert_eq!(s.state(), State::Master);
    s.run(Duration::from_millis(2));
    s.expect(State::SubMaster, Cause::InterfaceFailure);
    assert_eq!(s.node.role(), ForwardingRole::Bypass);
    // The relay hides the wire: it retries after `interface_retry`.
    s.run(Duration::from_millis(999));
    assert_eq!(s.state(), State::SubMaster);
    s.run(Duration::from_millis(2));
    assert!(
        s.seen
            .iter()
            .any(|t| t.from == State::SubMaster && t.cause == Cause::Recovery)
    );
}

#[test]
fn poll_at_is_never_later_than_the_next_heartbeat() {
    let mut s = Script::master_alone(PA);
    let before = s.now;
    let at = s.node.poll_at();
    assert!(at > before && at <= before + Duration::from_millis(1));
    // A silent node still asks to be polled every interval.
    s.node.on_local_failure(Failure::Hardware(1), s.now);
    s.poll();
    let at = s.node.poll_at();
    assert!(at <= s.now + Duration::from_millis(1));
}

#[test]
fn config_errors() {
    let mut c = config(PA, 0, 1, 1);
    assert!(matches!(
        Node::new(c.clone(), Instant::ZERO),
        Err(Error::InvalidConfig(_))
    ));
    c.node_id = NodeId(1);
    c.paths.clear();
    assert!(Node::new(c.clone(), Instant::ZERO).is_err());
    c.paths = vec![PathConfig::new("a", MacAddress([2; 6])); 9];
    assert!(Node::new(c.clone(), Instant::ZERO).is_err());
    c.paths.truncate(1);
    c.incarnation = 0;
    assert!(Node::new(c, Instant::ZERO).is_err());
    let _ = String::new();
}

#[test]
fn serial_outer_port_is_watched_but_carries_no_heartbeats() {
    // Serial box A: path 0 = the link to B (A.wan), path 1 = the outer port (A.lan).
    let mut cfg = config(SE, 1, 100, 1);
    cfg.paths.push(PathConfig::monitor_only(
        "lan",
        MacAddress([2, 0, 0, 0, 1, 9]),
        Duration::from_millis(20),
    ));
    let mut s = Script::new(SE, 1, 100);
    s.node = Node::new(cfg, Instant::ZERO).unwrap();
    s.run(Duration::from_millis(12));
    assert_eq!(s.state(), State::Master);
    assert!(
        s.sent.iter().all(|(path, _)| *path == PathId(0)),
        "no heartbeat on the outer port"
    );
    // A heartbeat arriving on the outer port is refused.
    let mut peer = Fake::new(2, 100);
    let f = peer.frame(SE, 1);
    assert_eq!(
        s.node.on_heartbeat(PathId(1), f.as_bytes(), s.now),
        Err(Error::WrongPath)
    );
    // Traffic on the outer port keeps it up; silence for 20 ms closes the relay.
    for _ in 0..5 {
        s.node.on_interface_traffic(PathId(1), s.now);
        s.run(Duration::from_millis(5));
        assert_eq!(s.state(), State::Master);
    }
    s.run(Duration::from_millis(21));
    s.expect(State::SubMaster, Cause::InterfaceFailure);
    assert_eq!(s.node.role(), ForwardingRole::Bypass);
    let status = s.node.status();
    assert!(status.paths[1].interface_failed && !status.paths[1].heartbeats);
    // A config without any heartbeat path is refused.
    let mut bad = config(SE, 1, 100, 0);
    bad.paths.push(PathConfig::monitor_only(
        "lan",
        MacAddress([2; 6]),
        Duration::from_secs(1),
    ));
    assert!(matches!(
        Node::new(bad, Instant::ZERO),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn a_short_freeze_holds_traffic_then_forwards_again() {
    // Between freeze_threshold (4 ms) and long_freeze (16 ms): the Master stays Master,
    // holds its traffic for hold_time, and forwards again when no newer claim came.
    let mut m = Script::master_alone(PA);
    m.now += Duration::from_millis(8);
    m.poll();
    assert_eq!(m.state(), State::Master);
    assert_eq!(m.node.role(), ForwardingRole::Hold);
    m.now += Duration::from_millis(2);
    m.poll();
    assert_eq!(
        m.node.role(),
        ForwardingRole::Hold,
        "still inside the 3 ms hold"
    );
    m.now += Duration::from_millis(1);
    m.poll();
    assert_eq!(m.state(), State::Master);
    assert_eq!(m.node.role(), ForwardingRole::Forward);
}

#[test]
fn a_short_freeze_with_a_newer_claim_steps_down_without_forwarding() {
    let mut m = Script::master_alone(PA);
    m.now += Duration::from_millis(8);
    m.poll();
    assert_eq!(m.node.role(), ForwardingRole::Hold);
    // The peer took over while this node was away: its claim comes from the backlog.
    let newer = m.add(Fake::new(2, 100).claims(State::Master, 5));
    m.hear(newer);
    m.expect(State::Slave, Cause::LostContention);
    assert_eq!(m.node.role(), ForwardingRole::Buffer);
}
