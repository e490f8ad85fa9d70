//! One Duplex node: heartbeat sender and receiver, peer tracking with the two-level timeout,
//! the parallel and serial state machines, and the service liveness monitor.
//!
//! The node does no I/O and reads no clock. The image calls, in every main-loop turn:
//! [`Node::on_heartbeat`] for each received heartbeat frame, [`Node::on_interface_traffic`]
//! when data arrived on a path, [`Node::iam_alive`] for its services, then [`Node::poll`]
//! and carries out the returned [`Action`]s; it sleeps until [`Node::poll_at`].

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use duplex_hal::Instant;

use crate::config::{Config, MAX_PEERS, MAX_SERVICES, NodeId, PathId, Timing};
use crate::spi::{MissAction, Service, ServiceId};
use crate::state::{Cause, ForwardingRole, Mode, State, Transition};
use crate::status::{PathStatus, PeerPathStatus, PeerStatus, ServiceStatus, Status};
use crate::wire::{Flags, FrameBytes, HeartbeatRepr, Packet};
use crate::{Error, Result};

/// A failure the image (or the node itself) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// A registered service missed its deadline (raised by the node itself).
    Service(ServiceId),
    /// A network interface does not work (link down, missing traffic). Not silent.
    Interface(PathId),
    /// Any other local failure, with an image-defined code. Silent.
    Hardware(u16),
}

/// What [`Node::on_heartbeat`] did with an authentic frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A new heartbeat: processed.
    Accepted,
    /// A copy of a heartbeat already received on another path: counted for path health.
    Duplicate,
}

/// Operator commands (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorCommand {
    /// Master: hand mastership to the best standby.
    Failover,
    /// Standby: claim mastership now.
    TakeOver,
    /// Take the node out (Suspend, or serial SubMaster) until `Resume`.
    Suspend,
    /// Undo `Suspend` (and failures of services whose miss action is `Suspend`).
    Resume,
    /// Change the priority sent from now on.
    SetPriority(u8),
}

/// Something the image must do, returned by [`Node::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transmit this whole Ethernet frame on that path.
    SendHeartbeat {
        /// Path (NIC) to send on.
        path: PathId,
        /// The frame, destination MAC first, no FCS.
        frame: FrameBytes,
    },
    /// The device state changed.
    StateChanged(Transition),
    /// Handle data traffic this way from now on.
    SetRole(ForwardingRole),
    /// This node took over: send gratuitous ARPs for the service addresses.
    AnnounceTakeover {
        /// The claim's epoch.
        epoch: u32,
    },
    /// Restart this service (its miss action is `Restart`).
    RestartService(ServiceId),
    /// Reset the machine (a service with miss action `Reset` missed its deadline).
    Reset,
}

/// The exported device state (the paper's *devicestate*), with a change counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceState {
    /// Current state.
    pub state: State,
    /// Current forwarding role.
    pub role: ForwardingRole,
    /// Highest epoch known.
    pub epoch: u32,
    /// The Master this node follows or is.
    pub master: Option<NodeId>,
    /// Grows by one at every change of state or followed Master.
    pub generation: u64,
}

#[derive(Debug, Clone)]
struct PathState {
    sent: u64,
    received: u64,
    duplicates: u64,
    rejected: u64,
    last_error: Option<Error>,
    last_sent: Option<Instant>,
    last_traffic: Option<Instant>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PeerPath {
    last_sequence: u64,
    last_heard: Option<Instant>,
    received: u64,
}

#[derive(Debug, Clone)]
struct Peer {
    id: NodeId,
    state: State,
    priority: u8,
    flags: Flags,
    epoch: u32,
    master: Option<NodeId>,
    master_epoch: u32,
    interval: Duration,
    load_bits_per_second: u64,
    log_position: u64,
    traffic: u8,
    incarnation: u32,
    last_sequence: u64,
    last_heard: Instant,
    accepted: u64,
    average_gap_nanos: u64,
    deviation_nanos: u64,
    paths: Vec<PeerPath>,
}

impl Peer {
    fn claim_key(&self) -> (u32, u8, u16) {
        (self.master_epoch, self.priority, self.id.0)
    }

    fn candidate_rank(&self) -> (u64, u8, u8, u16) {
        (
            self.log_position,
            self.state.warmth(),
            self.priority,
            self.id.0,
        )
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A Duplex node. See the module documentation for how the image drives it.
#[derive(Debug, Clone)]
pub struct Node {
    config: Config,
    priority: u8,
    state: State,
    role: ForwardingRole,
    state_since: Instant,
    last_transition: Option<Transition>,
    transitions: u64,
    generation: u64,
    known_epoch: u32,
    master: Option<NodeId>,
    master_epoch: u32,
    incarnation: u32,
    counter: u32,
    last_now: Instant,
    last_poll: Instant,
    resumed_at: Instant,
    freezes: u64,
    last_round: Option<Instant>,
    urgent_round: bool,
    contention_reply: bool,
    reply_paths: u8,
    paths: Vec<PathState>,
    peers: Vec<Peer>,
    services: Vec<Service>,
    hardware_failures: Vec<u16>,
    interface_failures: u8,
    operator_suspended: bool,
    recovery_cause: Cause,
    load_bits_per_second: u64,
    log_position: u64,
    yield_until: Option<Instant>,
    /// End of the post-freeze hold of a claimer (SPEC §4.5).
    hold_until: Option<Instant>,
    probe_deadline: Instant,
    confirm_deadline: Instant,
    orphan_since: Option<Instant>,
    interface_retry_at: Option<Instant>,
    actions: Vec<Action>,
}

impl Node {
    /// A node in Probe at `now`. Its first heartbeat round goes out at the first `poll`.
    pub fn new(config: Config, now: Instant) -> Result<Node> {
        config.validate()?;
        let path_count = config.paths.len();
        let role = ForwardingRole::of(config.mode, State::Probe);
        let probe_deadline = now + config.timing.probe_duration;
        Ok(Node {
            priority: config.priority,
            incarnation: config.incarnation,
            state: State::Probe,
            role,
            state_since: now,
            last_transition: None,
            transitions: 0,
            generation: 0,
            known_epoch: 0,
            master: None,
            master_epoch: 0,
            counter: 0,
            last_now: now,
            last_poll: now,
            resumed_at: now,
            freezes: 0,
            last_round: None,
            urgent_round: true,
            contention_reply: false,
            reply_paths: 0,
            paths: vec![
                PathState {
                    sent: 0,
                    received: 0,
                    duplicates: 0,
                    rejected: 0,
                    last_error: None,
                    last_sent: None,
                    last_traffic: None,
                };
                path_count
            ],
            peers: Vec::new(),
            services: Vec::new(),
            hardware_failures: Vec::new(),
            interface_failures: 0,
            operator_suspended: false,
            recovery_cause: Cause::Recovery,
            load_bits_per_second: 0,
            log_position: 0,
            yield_until: None,
            hold_until: None,
            probe_deadline,
            confirm_deadline: now,
            orphan_since: None,
            interface_retry_at: None,
            actions: vec![Action::SetRole(role)],
            config,
        })
    }

    // ----- accessors -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// The configuration the node was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Current forwarding role.
    pub fn role(&self) -> ForwardingRole {
        self.role
    }

    /// Highest epoch known.
    pub fn epoch(&self) -> u32 {
        self.known_epoch
    }

    /// The Master this node follows or is.
    pub fn master(&self) -> Option<NodeId> {
        self.master
    }

    /// The exported device state.
    pub fn device_state(&self) -> DeviceState {
        DeviceState {
            state: self.state,
            role: self.role,
            epoch: self.known_epoch,
            master: self.master,
            generation: self.generation,
        }
    }

    /// The last transition, if any.
    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// False while a local failure is active, a service is past its deadline, or `poll` has
    /// not run for `freeze_threshold`: the timer ISR kicks the watchdog only while true.
    pub fn healthy(&self, now: Instant) -> bool {
        !self.local_failure_active()
            && now.saturating_since(self.last_poll) <= self.config.timing.freeze_threshold()
            && self
                .services
                .iter()
                .all(|s| s.deadline_at().is_none_or(|d| now < d))
    }

    /// The hard timeout this node applies to `peer` now, if it knows the peer.
    pub fn peer_hard_timeout(&self, peer: NodeId) -> Option<Duration> {
        self.peers
            .iter()
            .find(|p| p.id == peer)
            .map(|p| self.hard_timeout(p))
    }

    // ----- inputs -----

    /// Reports the current forwarded load in bit/s (the paper's `current_load`).
    pub fn set_load(&mut self, bits_per_second: u64) {
        self.load_bits_per_second = bits_per_second;
    }

    /// Reports the replicated-log position to announce.
    pub fn set_log_position(&mut self, position: u64) {
        self.log_position = position;
    }

    /// Handles one received frame (the **full Ethernet frame**) that arrived on `path`.
    ///
    /// Returns an error value for anything that is not an authentic, fresh heartbeat of this
    /// group; it never panics. Errors are counted per path for [`Node::status`].
    pub fn on_heartbeat(&mut self, path: PathId, frame: &[u8], now: Instant) -> Result<Received> {
        let now = self.advance(now);
        if path.index() >= self.paths.len() {
            return Err(Error::UnknownPath);
        }
        let result = self.receive(path, frame, now);
        let path_state = &mut self.paths[path.index()];
        match result {
            Ok(Received::Accepted) => {
                path_state.received += 1;
                // React at once (a newer claim makes a claimer step down before the image
                // forwards the next frame of its batch); the actions wait for `poll`.
                self.evaluate(now);
            }
            Ok(Received::Duplicate) => path_state.duplicates += 1,
            Err(error) => {
                path_state.rejected += 1;
                path_state.last_error = Some(error);
            }
        }
        result
    }

    /// Data (not heartbeat) traffic arrived on `path`: feeds missing-traffic detection.
    pub fn on_interface_traffic(&mut self, path: PathId, now: Instant) {
        let now = self.advance(now);
        let Some(path_state) = self.paths.get_mut(path.index()) else {
            return;
        };
        path_state.last_traffic = Some(now);
        let bit = 1u8 << path.0;
        if self.interface_failures & bit != 0 {
            self.interface_failures &= !bit;
            self.evaluate(now);
        }
    }

    /// Reports a local failure.
    pub fn on_local_failure(&mut self, failure: Failure, now: Instant) {
        let now = self.advance(now);
        match failure {
            Failure::Service(id) => {
                if let Some(s) = self.services.get_mut(usize::from(id.0))
                    && s.registered
                {
                    s.failed = true;
                }
            }
            Failure::Interface(path) => {
                if path.index() < self.paths.len() {
                    self.interface_failures |= 1 << path.0;
                }
            }
            Failure::Hardware(code) => {
                if !self.hardware_failures.contains(&code) {
                    self.hardware_failures.push(code);
                }
            }
        }
        self.evaluate(now);
    }

    /// Reports that a failure is over. Service failures whose miss action is `Suspend` need
    /// the operator's `Resume` instead.
    pub fn on_recovery(&mut self, failure: Failure, now: Instant) {
        let now = self.advance(now);
        match failure {
            Failure::Service(id) => {
                if let Some(s) = self.services.get_mut(usize::from(id.0))
                    && !s.sticky
                {
                    s.failed = false;
                    s.last_alive = now;
                }
            }
            Failure::Interface(path) => {
                if let Some(p) = self.paths.get_mut(path.index()) {
                    self.interface_failures &= !(1 << path.0);
                    p.last_traffic = Some(now);
                }
            }
            Failure::Hardware(code) => self.hardware_failures.retain(|&c| c != code),
        }
        self.evaluate(now);
    }

    /// Registers a service that must call [`Node::iam_alive`] at least once per `deadline`.
    pub fn register_service(
        &mut self,
        name: &str,
        deadline: Duration,
        on_miss: MissAction,
        now: Instant,
    ) -> Result<ServiceId> {
        let now = self.advance(now);
        if deadline.is_zero() {
            return Err(Error::InvalidConfig("a service deadline must be > 0"));
        }
        let service = Service::new(name, deadline, on_miss, now);
        if let Some(i) = self.services.iter().position(|s| !s.registered) {
            self.services[i] = service;
            return Ok(ServiceId(i as u8));
        }
        if self.services.len() >= MAX_SERVICES {
            return Err(Error::TooManyServices);
        }
        self.services.push(service);
        Ok(ServiceId((self.services.len() - 1) as u8))
    }

    /// Removes a service (its failure, if any, clears).
    pub fn unregister_service(&mut self, id: ServiceId, now: Instant) -> Result {
        let now = self.advance(now);
        let s = self.service_mut(id)?;
        s.registered = false;
        s.failed = false;
        self.evaluate(now);
        Ok(())
    }

    /// The service proves it runs. A service failed by `Failover`/`Bypass`/`Reset` (or an
    /// escalated `Restart`) recovers with it.
    pub fn iam_alive(&mut self, id: ServiceId, now: Instant) -> Result {
        let now = self.advance(now);
        let s = self.service_mut(id)?;
        s.last_alive = now;
        s.restarts_in_row = 0;
        if s.failed && !s.sticky {
            s.failed = false;
            self.evaluate(now);
        }
        Ok(())
    }

    /// Carries out an operator command (SPEC §9).
    pub fn command(&mut self, command: OperatorCommand, now: Instant) -> Result {
        let now = self.advance(now);
        match command {
            OperatorCommand::SetPriority(p) => {
                self.priority = p;
                self.urgent_round = true;
            }
            OperatorCommand::Failover => {
                if !self.state.is_claimer() {
                    return Err(Error::InvalidState);
                }
                if !self
                    .peers
                    .iter()
                    .any(|p| self.is_live(p, now) && p.state.is_candidate(self.config.mode))
                {
                    return Err(Error::NoStandby);
                }
                self.yield_until = Some(now + self.config.timing.probe_duration);
                self.urgent_round = true;
            }
            OperatorCommand::TakeOver => {
                if self.state.is_claimer() {
                    return Ok(());
                }
                if self.state.is_failure_state(self.config.mode) {
                    return Err(Error::InvalidState);
                }
                self.claim(Cause::Operator, now);
                self.evaluate(now);
            }
            OperatorCommand::Suspend => {
                self.operator_suspended = true;
                self.evaluate(now);
            }
            OperatorCommand::Resume => {
                let sticky = self
                    .services
                    .iter()
                    .any(|s| s.registered && s.sticky && s.failed);
                if !self.operator_suspended && !sticky {
                    return Err(Error::InvalidState);
                }
                self.operator_suspended = false;
                for s in self.services.iter_mut().filter(|s| s.sticky) {
                    s.failed = false;
                    s.sticky = false;
                    s.last_alive = now;
                    s.restarts_in_row = 0;
                }
                self.recovery_cause = Cause::Operator;
                self.evaluate(now);
                self.recovery_cause = Cause::Recovery;
            }
        }
        Ok(())
    }

    /// Runs the timers and returns the actions queued since the last call (by this call and
    /// by the `on_*` calls before it). Call it at the top of every main-loop turn.
    pub fn poll(&mut self, now: Instant) -> alloc::vec::Drain<'_, Action> {
        let now = self.advance(now);
        self.last_poll = now;
        self.check_services(now);
        self.check_traffic(now);
        self.check_interface_retry(now);
        if self.yield_until.is_some_and(|t| now >= t) {
            self.yield_until = None;
        }
        self.evaluate(now);
        if self.hold_until.is_some_and(|t| now >= t) {
            self.hold_until = None;
            self.update_role();
        }
        self.send(now);
        self.actions.drain(..)
    }

    /// The latest instant by which `poll` must run again.
    ///
    /// Deadlines that a `poll` has already seen (at or before the last `poll`) are not
    /// reported again: whatever they still wait for is re-checked by the periodic poll, at
    /// most one `interval` apart, so a condition that stays pending never makes the caller spin.
    pub fn poll_at(&self) -> Instant {
        let timing = &self.config.timing;
        let now = self.last_now;
        let seen = self.last_poll;
        let mut at = self.last_poll + timing.interval;
        let mut consider = |t: Instant| {
            if t > seen && t < at {
                at = t;
            }
        };
        if !self.local_failure_active() {
            if self.urgent_round || self.reply_paths != 0 {
                return now;
            }
            match self.last_round {
                None => return now,
                Some(last) => {
                    consider(last + self.send_interval(now));
                    if self.contention_reply {
                        consider(last + timing.probe_interval);
                    }
                }
            }
        }
        for peer in &self.peers {
            let base = peer.last_heard.max(self.resumed_at);
            let soft = base + self.soft_timeout(peer);
            if soft > seen {
                consider(soft);
            } else {
                consider(base + self.hard_timeout(peer));
            }
        }
        match self.state {
            State::Probe => consider(self.probe_deadline),
            State::QuasiMaster => consider(self.confirm_deadline),
            _ => {}
        }
        if let Some(since) = self.orphan_since {
            consider(since + timing.probe_duration);
        }
        if let Some(t) = self.yield_until {
            consider(t);
        }
        if let Some(t) = self.hold_until {
            consider(t);
        }
        if let Some(t) = self.interface_retry_at {
            consider(t);
        }
        for s in &self.services {
            if let Some(d) = s.deadline_at() {
                consider(d);
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            if let Some(timeout) = self.config.paths[i].traffic_timeout
                && self.interface_failures & (1 << i) == 0
            {
                consider(self.traffic_base(p) + timeout);
            }
        }
        at.max(now)
    }

    /// A snapshot for the console (`show duplex`, `Display`) and `--json` (`to_json`).
    pub fn status(&self) -> Status {
        let now = self.last_now;
        let timing = self.config.timing;
        let peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|p| {
                let hard = self.hard_timeout(p);
                PeerStatus {
                    node_id: p.id,
                    state: p.state,
                    priority: p.priority,
                    epoch: p.epoch,
                    master: p.master,
                    master_epoch: p.master_epoch,
                    alive: self.is_live(p, now),
                    suspect: self.is_suspect(p, now),
                    last_heard: p.last_heard,
                    silence: self.silence(p, now),
                    soft_timeout: self.soft_timeout(p),
                    hard_timeout: hard,
                    interval: p.interval,
                    load_bits_per_second: p.load_bits_per_second,
                    log_position: p.log_position,
                    accepted: p.accepted,
                    paths: p
                        .paths
                        .iter()
                        .enumerate()
                        .map(|(i, pp)| PeerPathStatus {
                            path: PathId(i as u8),
                            up: pp
                                .last_heard
                                .is_some_and(|t| now.saturating_since(t) < hard),
                            last_heard: pp.last_heard,
                            received: pp.received,
                        })
                        .collect(),
                }
            })
            .collect();
        let paths = self
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| PathStatus {
                path: PathId(i as u8),
                name: self.config.paths[i].name.clone(),
                mac: self.config.paths[i].mac,
                up: peers.iter().any(|peer| peer.paths[i].up),
                sent: p.sent,
                received: p.received,
                duplicates: p.duplicates,
                rejected: p.rejected,
                last_error: p.last_error,
                interface_failed: self.interface_failures & (1 << i) != 0,
                heartbeats: self.config.paths[i].heartbeats,
            })
            .collect();
        let services = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.registered)
            .map(|(i, s)| ServiceStatus {
                id: ServiceId(i as u8),
                name: s.name.clone(),
                deadline: s.deadline,
                on_miss: s.on_miss,
                last_alive: s.last_alive,
                failed: s.failed,
                misses: s.misses,
                restarts: s.restarts,
            })
            .collect();
        let mut failures: Vec<Failure> = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.registered && s.failed)
            .map(|(i, _)| Failure::Service(ServiceId(i as u8)))
            .collect();
        failures.extend(
            (0..self.paths.len())
                .filter(|i| self.interface_failures & (1 << i) != 0)
                .map(|i| Failure::Interface(PathId(i as u8))),
        );
        failures.extend(self.hardware_failures.iter().map(|&c| Failure::Hardware(c)));
        Status {
            now,
            node_id: self.config.node_id,
            group: self.config.group,
            mode: self.config.mode,
            state: self.state,
            role: self.role,
            priority: self.priority,
            epoch: self.known_epoch,
            master: self.master,
            master_epoch: self.master_epoch,
            since: self.state_since,
            last_transition: self.last_transition,
            transitions: self.transitions,
            generation: self.generation,
            send_interval: self.send_interval(now),
            probing: self.probing(now),
            silent: self.local_failure_active(),
            healthy: self.healthy(now),
            yielding: self.yield_until.is_some(),
            operator_suspended: self.operator_suspended,
            load_bits_per_second: self.load_bits_per_second,
            log_position: self.log_position,
            freezes: self.freezes,
            incarnation: self.incarnation,
            timing,
            next_deadline: self.poll_at(),
            failures,
            paths,
            peers,
            services,
        }
    }

    // ----- internals: time -----

    /// Clamps `now` to be monotonic and detects a freeze of this node (SPEC §4.5).
    fn advance(&mut self, now: Instant) -> Instant {
        let now = now.max(self.last_now);
        let gap = now.saturating_since(self.last_now);
        if gap > self.config.timing.freeze_threshold() {
            self.on_freeze(now, gap);
        }
        self.last_now = now;
        now
    }

    fn on_freeze(&mut self, now: Instant, gap: Duration) {
        self.freezes += 1;
        self.resumed_at = now;
        for s in &mut self.services {
            if !s.failed {
                s.last_alive = s.last_alive.max(now);
            }
        }
        if self.state.is_claimer() {
            if gap > self.config.timing.long_freeze() {
                // Every live peer has declared this node dead: step down at once.
                self.master = None;
                self.transition(State::Probe, Cause::Frozen, now);
            } else {
                // A peer may or may not have taken over: hold the traffic (forward
                // nothing) while the backlog of heartbeats comes in. A newer claim makes
                // this node step down (LostContention) and drop what it held; none makes
                // it forward what it held when the hold ends.
                self.hold_until = Some(now + self.config.timing.hold_time());
                self.update_role();
            }
        }
    }

    /// The forwarding role of the current state, `Hold` while a post-freeze hold runs.
    fn current_role(&self) -> ForwardingRole {
        let role = ForwardingRole::of(self.config.mode, self.state);
        if role == ForwardingRole::Forward && self.hold_until.is_some() {
            ForwardingRole::Hold
        } else {
            role
        }
    }

    /// Emits `SetRole` when the role changed.
    fn update_role(&mut self) {
        let role = self.current_role();
        if role != self.role {
            self.role = role;
            self.actions.push(Action::SetRole(role));
        }
    }

    fn silence(&self, peer: &Peer, now: Instant) -> Duration {
        now.saturating_since(peer.last_heard.max(self.resumed_at))
    }

    fn soft_timeout(&self, peer: &Peer) -> Duration {
        let t = &self.config.timing;
        let estimate = peer
            .average_gap_nanos
            .saturating_add(peer.deviation_nanos.saturating_mul(4))
            .saturating_add(nanos(t.interval));
        Duration::from_nanos(estimate).clamp(t.soft_timeout_min, t.soft_timeout_max)
    }

    fn hard_timeout(&self, peer: &Peer) -> Duration {
        let load = self.load_bits_per_second.max(peer.load_bits_per_second);
        self.config
            .timing
            .hard_timeout(self.soft_timeout(peer), load)
    }

    fn is_live(&self, peer: &Peer, now: Instant) -> bool {
        peer.accepted > 0 && self.silence(peer, now) < self.hard_timeout(peer)
    }

    fn is_suspect(&self, peer: &Peer, now: Instant) -> bool {
        self.silence(peer, now) >= self.soft_timeout(peer)
    }

    fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    fn traffic_base(&self, path: &PathState) -> Instant {
        path.last_traffic
            .unwrap_or(Instant::ZERO)
            .max(self.resumed_at)
    }

    /// True while some live peer is past its soft timeout.
    fn probing(&self, now: Instant) -> bool {
        self.peers
            .iter()
            .any(|p| self.is_live(p, now) && self.is_suspect(p, now))
    }

    fn send_interval(&self, now: Instant) -> Duration {
        let t = &self.config.timing;
        if matches!(self.state, State::Probe | State::QuasiMaster) || self.probing(now) {
            t.probe_interval
        } else {
            t.interval
        }
    }

    fn local_failure_active(&self) -> bool {
        !self.hardware_failures.is_empty() || self.services.iter().any(|s| s.registered && s.failed)
    }

    fn service_mut(&mut self, id: ServiceId) -> Result<&mut Service> {
        match self.services.get_mut(usize::from(id.0)) {
            Some(s) if s.registered => Ok(s),
            _ => Err(Error::UnknownService),
        }
    }

    // ----- internals: receiving -----

    fn receive(&mut self, path: PathId, frame: &[u8], now: Instant) -> Result<Received> {
        let packet = Packet::new_checked(frame)?;
        let repr = HeartbeatRepr::parse(&packet, &self.config.key)?;
        if repr.mode != self.config.mode {
            return Err(Error::ModeMismatch);
        }
        if repr.group != self.config.group {
            return Err(Error::WrongGroup);
        }
        if repr.node == self.config.node_id {
            return Err(Error::OwnFrame);
        }
        if usize::from(repr.path) != path.index() || !self.config.paths[path.index()].heartbeats {
            return Err(Error::WrongPath);
        }
        let index = match self.peers.iter().position(|p| p.id == repr.node) {
            Some(i) => i,
            None => {
                if self.peers.len() >= MAX_PEERS {
                    return Err(Error::TooManyPeers);
                }
                self.peers.push(Peer {
                    id: repr.node,
                    state: repr.state,
                    priority: repr.priority,
                    flags: Flags::default(),
                    epoch: 0,
                    master: None,
                    master_epoch: 0,
                    interval: Duration::from_micros(u64::from(repr.interval_us)),
                    load_bits_per_second: 0,
                    log_position: 0,
                    traffic: 0,
                    incarnation: 0,
                    last_sequence: 0,
                    last_heard: now,
                    accepted: 0,
                    average_gap_nanos: 0,
                    deviation_nanos: 0,
                    paths: vec![PeerPath::default(); self.paths.len()],
                });
                self.peers.len() - 1
            }
        };
        let incarnation = (repr.sequence >> 32) as u32;
        {
            let peer = &self.peers[index];
            if repr.sequence <= peer.paths[path.index()].last_sequence {
                return Err(Error::Replayed);
            }
            if peer.accepted > 0 && incarnation == peer.incarnation && repr.epoch < peer.epoch {
                return Err(Error::Stale);
            }
        }
        let was_live = self.is_live(&self.peers[index], now);
        let silence = self.silence(&self.peers[index], now);
        let soft_max = nanos(self.config.timing.soft_timeout_max);
        let peer = &mut self.peers[index];
        let peer_path = &mut peer.paths[path.index()];
        peer_path.last_sequence = repr.sequence;
        peer_path.last_heard = Some(now);
        peer_path.received += 1;
        if repr.sequence <= peer.last_sequence {
            return Ok(Received::Duplicate);
        }
        // A new heartbeat: update the gap estimator (SPEC §4.2).
        let rebooted = peer.accepted > 0 && incarnation != peer.incarnation;
        if was_live && !rebooted {
            let gap = nanos(silence).min(soft_max);
            let average = peer.average_gap_nanos;
            let error = gap.abs_diff(average);
            peer.average_gap_nanos = if gap >= average {
                average + (gap - average) / 8
            } else {
                average - (average - gap) / 8
            };
            let deviation = peer.deviation_nanos;
            peer.deviation_nanos = if error >= deviation {
                deviation + (error - deviation) / 4
            } else {
                deviation - (deviation - error) / 4
            };
        } else {
            peer.average_gap_nanos = u64::from(repr.interval_us).saturating_mul(1000);
            peer.deviation_nanos = 0;
        }
        peer.state = repr.state;
        peer.priority = repr.priority;
        peer.flags = repr.flags;
        peer.epoch = repr.epoch;
        peer.master = repr.master;
        peer.master_epoch = repr.master_epoch;
        peer.interval = Duration::from_micros(u64::from(repr.interval_us));
        peer.load_bits_per_second = u64::from(repr.load_kbps).saturating_mul(1000);
        peer.log_position = repr.log_position;
        peer.traffic = repr.traffic;
        peer.incarnation = incarnation;
        peer.last_sequence = repr.sequence;
        peer.last_heard = now;
        peer.accepted += 1;
        self.known_epoch = self.known_epoch.max(repr.epoch).max(repr.master_epoch);
        if repr.flags.contains(Flags::PROBE_REQUEST) {
            self.reply_paths |= 1 << path.0;
        }
        if self.state.is_claimer()
            && repr.state.is_claimer()
            && (self.master_epoch, self.priority, self.config.node_id.0)
                > (repr.master_epoch, repr.priority, repr.node.0)
        {
            self.contention_reply = true;
        }
        self.evaluate(now);
        Ok(Received::Accepted)
    }

    // ----- internals: the state machine (SPEC §7) -----

    fn failure_cause(&self) -> Option<Cause> {
        if self.local_failure_active() {
            Some(Cause::LocalFailure)
        } else if self.interface_failures != 0 {
            Some(Cause::InterfaceFailure)
        } else if self.operator_suspended {
            Some(Cause::Operator)
        } else {
            None
        }
    }

    fn evaluate(&mut self, now: Instant) {
        // Chains are short (Slave -> SubMaster -> QuasiMaster -> Master); the bound only
        // guards against a rule bug looping.
        for _ in 0..8 {
            if !self.evaluate_once(now) {
                return;
            }
        }
    }

    fn evaluate_once(&mut self, now: Instant) -> bool {
        let mode = self.config.mode;
        if let Some(cause) = self.failure_cause() {
            let target = match mode {
                Mode::Parallel => State::Suspend,
                Mode::Serial => State::SubMaster,
            };
            if self.state == target {
                return false;
            }
            if self.state.is_claimer() {
                self.master = None;
            }
            self.transition(target, cause, now);
            return true;
        }
        if self.state.is_failure_state(mode) {
            self.transition(State::Probe, self.recovery_cause, now);
            return true;
        }
        match self.state {
            State::Probe => self.evaluate_probe(now),
            State::Master | State::QuasiMaster => self.evaluate_claimer(now),
            State::Slave | State::SubMaster => self.evaluate_standby(now),
            State::Suspend => false,
        }
    }

    fn orphan_state(&self) -> State {
        match self.config.mode {
            Mode::Parallel => State::SubMaster,
            Mode::Serial => State::Slave,
        }
    }

    fn evaluate_probe(&mut self, now: Instant) -> bool {
        if let Some((id, epoch)) = self.best_live_claim(now) {
            self.follow(id, epoch);
            self.transition(State::Slave, Cause::HeardMaster, now);
            return true;
        }
        if now >= self.probe_deadline {
            // At the end of its probe period the node has listened as long as any standby:
            // it ranks itself warm (SPEC §2).
            if self.newer_hearsay(now).is_none() && self.is_best_candidate(now, 1) {
                self.claim(Cause::ProbeExpired, now);
            } else {
                self.master = None;
                self.orphan_since = Some(now);
                self.transition(self.orphan_state(), Cause::ProbeExpired, now);
            }
            return true;
        }
        false
    }

    fn evaluate_claimer(&mut self, now: Instant) -> bool {
        let own = (self.master_epoch, self.priority, self.config.node_id.0);
        if let Some((id, epoch)) = self.best_live_claim(now) {
            let better = self.peer(id).is_some_and(|p| p.claim_key() > own);
            if better {
                self.follow(id, epoch);
                self.transition(State::Slave, Cause::LostContention, now);
                return true;
            }
        }
        if self.newer_hearsay(now).is_some() {
            self.master = None;
            self.orphan_since = Some(now);
            self.transition(self.orphan_state(), Cause::LostContention, now);
            return true;
        }
        if self.state == State::QuasiMaster
            && (now >= self.confirm_deadline || self.all_live_peers_follow(now))
        {
            self.transition(State::Master, Cause::Confirmed, now);
            return true;
        }
        false
    }

    fn evaluate_standby(&mut self, now: Instant) -> bool {
        let parallel = self.config.mode == Mode::Parallel;
        if let Some((id, epoch)) = self.best_live_claim(now) {
            if self.master != Some(id) || self.master_epoch != epoch {
                self.generation += 1;
            }
            self.follow(id, epoch);
            let suspect = self.peer(id).is_some_and(|p| self.is_suspect(p, now));
            if parallel && self.state == State::Slave && suspect {
                self.transition(State::SubMaster, Cause::SoftTimeout, now);
                return true;
            }
            if parallel && self.state == State::SubMaster && !suspect {
                self.transition(State::Slave, Cause::HeardMaster, now);
                return true;
            }
            let yielding = self
                .peer(id)
                .is_some_and(|p| p.flags.contains(Flags::YIELD));
            if yielding
                && !suspect
                && self.newer_hearsay(now).is_none()
                && self.is_best_candidate(now, self.state.warmth())
            {
                self.claim(Cause::YieldRequested, now);
                return true;
            }
            return false;
        }
        // No live claimer: the Master is lost (or was never known).
        let cause = match self.master.and_then(|m| self.peer(m)) {
            Some(m) if self.is_live(m, now) => Cause::MasterResigned,
            Some(_) => Cause::HardTimeout,
            None if self.master.is_some() => Cause::HardTimeout,
            None => Cause::Elected,
        };
        if parallel && self.state == State::Slave && cause == Cause::HardTimeout {
            // Past the hard timeout is past the soft timeout: SubMaster first.
            self.transition(State::SubMaster, Cause::SoftTimeout, now);
            return true;
        }
        let cause = if parallel && self.state == State::Slave {
            Cause::MasterResigned
        } else {
            cause
        };
        if self.master.take().is_some() {
            self.generation += 1;
        }
        let orphan_since = *self.orphan_since.get_or_insert(now);
        if self.newer_hearsay(now).is_some() {
            self.orphan_since = Some(now);
        } else {
            let best = self.is_best_candidate(now, self.state.warmth());
            let waited = now >= orphan_since + self.config.timing.probe_duration;
            if best || waited {
                self.claim(if best { cause } else { Cause::Elected }, now);
                return true;
            }
        }
        if parallel && self.state == State::Slave {
            self.transition(State::SubMaster, Cause::MasterResigned, now);
            return true;
        }
        false
    }

    /// The best claim among live claimers heard directly: (node, claim epoch).
    fn best_live_claim(&self, now: Instant) -> Option<(NodeId, u32)> {
        self.peers
            .iter()
            .filter(|p| p.state.is_claimer() && self.is_live(p, now))
            .max_by_key(|p| p.claim_key())
            .map(|p| (p.id, p.master_epoch))
    }

    /// A live standby peer that follows another Master with a newer claim than ours.
    fn newer_hearsay(&self, now: Instant) -> Option<(NodeId, u32)> {
        let me = self.config.node_id;
        self.peers
            .iter()
            .filter(|p| matches!(p.state, State::Slave | State::SubMaster) && self.is_live(p, now))
            .filter_map(|p| p.master.map(|m| (m, p.master_epoch)))
            .filter(|&(m, epoch)| m != me && epoch > self.master_epoch)
            .max_by_key(|&(_, epoch)| epoch)
    }

    /// True if no live candidate peer outranks this node ranked with `warmth` (SPEC §2).
    fn is_best_candidate(&self, now: Instant, warmth: u8) -> bool {
        let mode = self.config.mode;
        let me = (
            self.log_position,
            warmth,
            self.priority,
            self.config.node_id.0,
        );
        !self
            .peers
            .iter()
            .any(|p| p.state.is_candidate(mode) && self.is_live(p, now) && p.candidate_rank() > me)
    }

    fn all_live_peers_follow(&self, now: Instant) -> bool {
        let mode = self.config.mode;
        let me = self.config.node_id;
        self.peers
            .iter()
            .filter(|p| self.is_live(p, now) && !p.state.is_failure_state(mode))
            .all(|p| p.master == Some(me) && p.master_epoch == self.master_epoch)
    }

    fn follow(&mut self, id: NodeId, epoch: u32) {
        self.master = Some(id);
        self.master_epoch = epoch;
        self.orphan_since = None;
    }

    fn claim(&mut self, cause: Cause, now: Instant) {
        let epoch = self.known_epoch.saturating_add(1);
        self.known_epoch = epoch;
        self.master = Some(self.config.node_id);
        self.master_epoch = epoch;
        self.orphan_since = None;
        let to = match self.config.mode {
            Mode::Parallel => State::QuasiMaster,
            Mode::Serial => State::Master,
        };
        self.transition(to, cause, now);
        self.actions.push(Action::AnnounceTakeover { epoch });
    }

    fn transition(&mut self, to: State, cause: Cause, now: Instant) {
        let from = self.state;
        let mode = self.config.mode;
        debug_assert!(
            crate::state::lookup(mode, from, cause, to).is_some(),
            "transition not in the table: {mode} {from} --{cause}--> {to}"
        );
        self.state = to;
        self.state_since = now;
        self.generation += 1;
        self.transitions += 1;
        let transition = Transition {
            from,
            to,
            cause,
            at: now,
            epoch: self.known_epoch,
        };
        self.last_transition = Some(transition);
        self.actions.push(Action::StateChanged(transition));
        if !to.is_claimer() {
            self.hold_until = None;
        }
        self.update_role();
        self.urgent_round = true;
        match to {
            State::Probe => {
                self.master = None;
                self.probe_deadline = now + self.config.timing.probe_duration;
            }
            State::QuasiMaster => self.confirm_deadline = now + self.config.timing.confirm_time,
            _ => {}
        }
        if !to.is_claimer() {
            self.yield_until = None;
            self.contention_reply = false;
        }
        if to.is_failure_state(mode) || to.is_claimer() || to == State::Probe {
            self.orphan_since = None;
        }
        if to.is_failure_state(mode) {
            self.master = None;
        }
    }

    // ----- internals: timers -----

    fn check_services(&mut self, now: Instant) {
        let max_restarts = self.config.timing.max_restarts;
        for (i, s) in self.services.iter_mut().enumerate() {
            let Some(deadline) = s.deadline_at() else {
                continue;
            };
            if now < deadline {
                continue;
            }
            s.misses += 1;
            let id = ServiceId(i as u8);
            match s.on_miss {
                MissAction::Restart if s.restarts_in_row < max_restarts => {
                    s.restarts_in_row += 1;
                    s.restarts += 1;
                    s.last_alive = now;
                    self.actions.push(Action::RestartService(id));
                }
                MissAction::Restart | MissAction::Failover | MissAction::Bypass => s.failed = true,
                MissAction::Suspend => {
                    s.failed = true;
                    s.sticky = true;
                }
                MissAction::Reset => {
                    s.failed = true;
                    self.actions.push(Action::Reset);
                }
            }
        }
    }

    fn check_traffic(&mut self, now: Instant) {
        let serial = self.config.mode == Mode::Serial;
        for i in 0..self.paths.len() {
            let bit = 1u8 << i;
            let Some(timeout) = self.config.paths[i].traffic_timeout else {
                continue;
            };
            if self.interface_failures & bit != 0 {
                continue;
            }
            if now < self.traffic_base(&self.paths[i]) + timeout {
                continue;
            }
            let peers_see_traffic = self
                .peers
                .iter()
                .any(|p| self.is_live(p, now) && p.traffic & bit != 0);
            if serial || peers_see_traffic {
                self.interface_failures |= bit;
            }
        }
    }

    fn check_interface_retry(&mut self, now: Instant) {
        let retrying = self.config.mode == Mode::Serial
            && self.state == State::SubMaster
            && self.interface_failures != 0;
        if !retrying {
            self.interface_retry_at = None;
            return;
        }
        match self.interface_retry_at {
            None => self.interface_retry_at = Some(now + self.config.timing.interface_retry),
            Some(t) if now >= t => {
                for i in 0..self.paths.len() {
                    if self.interface_failures & (1 << i) != 0 {
                        self.paths[i].last_traffic = Some(now);
                    }
                }
                self.interface_failures = 0;
                self.interface_retry_at = None;
            }
            Some(_) => {}
        }
    }

    fn traffic_bits(&self, now: Instant) -> u8 {
        let mut bits = 0u8;
        for (i, p) in self.paths.iter().enumerate() {
            let window = self.config.paths[i]
                .traffic_timeout
                .unwrap_or(Duration::from_secs(1));
            if p.last_traffic
                .is_some_and(|t| now.saturating_since(t) < window)
            {
                bits |= 1 << i;
            }
        }
        bits
    }

    // ----- internals: sending -----

    fn send(&mut self, now: Instant) {
        if self.local_failure_active() {
            self.urgent_round = false;
            self.contention_reply = false;
            self.reply_paths = 0;
            return;
        }
        let timing = self.config.timing;
        let all = self.heartbeat_paths();
        let due = self
            .last_round
            .is_none_or(|t| now >= t + self.send_interval(now));
        let contention = self.contention_reply
            && self
                .last_round
                .is_none_or(|t| now >= t + timing.probe_interval);
        if self.urgent_round || due || contention {
            let reply = self.reply_paths != 0;
            self.send_round(now, all, reply);
            self.last_round = Some(now);
            self.urgent_round = false;
            self.contention_reply = false;
            self.reply_paths = 0;
            return;
        }
        if self.reply_paths != 0 {
            let half = timing.probe_interval / 2;
            let mut mask = 0u8;
            for (i, p) in self.paths.iter().enumerate() {
                if self.reply_paths & (1 << i) != 0 && p.last_sent.is_none_or(|t| now >= t + half) {
                    mask |= 1 << i;
                }
            }
            if mask != 0 {
                self.send_round(now, mask, true);
            }
            self.reply_paths = 0;
        }
    }

    /// One bit per path that carries heartbeats.
    fn heartbeat_paths(&self) -> u8 {
        self.config
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.heartbeats)
            .fold(0u8, |mask, (i, _)| mask | (1 << i))
    }

    fn send_round(&mut self, now: Instant, mask: u8, reply: bool) {
        let mask = mask & self.heartbeat_paths();
        self.counter = self.counter.wrapping_add(1);
        if self.counter == 0 {
            self.incarnation = self.incarnation.wrapping_add(1).max(1);
            self.counter = 1;
        }
        let sequence = (u64::from(self.incarnation) << 32) | u64::from(self.counter);
        let mut flags = Flags::default();
        if self.probing(now) {
            flags = flags.with(Flags::PROBE_REQUEST);
        }
        if reply {
            flags = flags.with(Flags::PROBE_REPLY);
        }
        if self.yield_until.is_some() && self.state.is_claimer() {
            flags = flags.with(Flags::YIELD);
        }
        let interval_us = u32::try_from(self.send_interval(now).as_micros()).unwrap_or(u32::MAX);
        let load_kbps = u32::try_from(self.load_bits_per_second / 1000).unwrap_or(u32::MAX);
        let traffic = self.traffic_bits(now);
        for i in 0..self.paths.len() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let repr = HeartbeatRepr {
                source: self.config.paths[i].mac,
                mode: self.config.mode,
                group: self.config.group,
                node: self.config.node_id,
                priority: self.priority,
                state: self.state,
                flags,
                path: i as u8,
                traffic,
                epoch: self.known_epoch,
                sequence,
                master: self.master,
                master_epoch: if self.master.is_some() {
                    self.master_epoch
                } else {
                    0
                },
                interval_us,
                load_kbps,
                log_position: self.log_position,
            };
            let frame = repr.to_frame(&self.config.key);
            self.actions.push(Action::SendHeartbeat {
                path: PathId(i as u8),
                frame,
            });
            self.paths[i].sent += 1;
            self.paths[i].last_sent = Some(now);
        }
    }
}

/// Helper for tests and the simulator: the timing of a node.
impl Node {
    /// The timing parameters in force.
    pub fn timing(&self) -> &Timing {
        &self.config.timing
    }
}
