//! The forwarding loop: a transparent L2 bridge between the LAN and WAN ports, with the
//! management stack attached to it.
//!
//! Each pass takes up to [`BATCH`] frames from every port straight out of the receive
//! ring, asks the bridge (`duplex_nad::Bridge`) what to do with each, copies it into the
//! egress port's transmit ring, then rings each doorbell once. It never blocks: a full
//! transmit ring drops the frame and counts it.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use duplex_core::{Action, ForwardingRole, wire as heartbeat};
use duplex_hal::Instant;
use duplex_nad::build::gratuitous_arp;
use duplex_nad::wire::ArpOperation;
use duplex_nad::{Bridge, BridgeConfig, Decision, PortId};

use crate::net::{Management, Port};
use crate::pair::Duplex;

/// Frames taken from one port per pass.
pub const BATCH: usize = 64;
/// Frames taken from a port per pass even when the egress has no room (they are
/// dropped if it still has none): heartbeats queue behind data in the same ring and must
/// not wait for a congested egress.
pub const MIN_BATCH: usize = 4;
/// Most frames kept while a resumed Master holds its traffic (`ForwardingRole::Hold`).
pub const HOLD_MAX: usize = 4096;
/// After a takeover (parallel mode) on a box without a dedicated heartbeat link, frames
/// received this long after the claim are not forwarded either: they may have reached the
/// wire before the claim heartbeat did (and so precede it in a frozen old Master's rings,
/// which forwards them when it resumes), but were still on their way from the wire into
/// this box's ring when it drained the ring. Measured under QEMU TCG: up to about 3 ms.
/// With a dedicated link the old Master reads the claim there before any of its data
/// backlog and drops that backlog, so no guard is needed (it would only lengthen every
/// fail-over).
pub const TAKEOVER_GUARD: core::time::Duration = core::time::Duration::from_millis(4);
/// The longest a takeover's backlog skip lasts, drained or not (a ring that never drains
/// under overload must not keep the new Master from forwarding).
pub const BACKLOG_SKIP_MAX: core::time::Duration = core::time::Duration::from_millis(10);

/// Per-port counters the loop keeps on top of the driver's and the bridge's.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopCounters {
    /// Frames dropped because the egress transmit ring was full.
    pub tx_ring_full: u64,
    /// Passes that read fewer frames from this port than [`BATCH`] because the egress
    /// ring had no room for more (backpressure: they wait in this port's ring).
    pub rx_throttled: u64,
}

/// The bridge, its ports and the management stack.
pub struct Dataplane {
    /// All ports; the first two are bridged (LAN, WAN), a third is a dedicated link.
    pub ports: Vec<Port>,
    /// The learning bridge over the bridged ports.
    pub bridge: Bridge,
    /// The management stack, when the appliance has an address.
    pub management: Option<Management>,
    /// Counters per port.
    pub counters: Vec<LoopCounters>,
    /// Forwarding on (the Master) or off (a standby: frames are not forwarded).
    pub forwarding: bool,
    /// The role the Duplex node asked for last.
    pub role: Option<ForwardingRole>,
    /// Heartbeats received and accepted / refused.
    pub heartbeats_in: u64,
    /// Heartbeats refused (bad MAC, stale, replayed, wrong group).
    pub heartbeats_refused: u64,
    /// Heartbeats sent, and those a full ring refused.
    pub heartbeats_out: u64,
    /// Heartbeats a full transmit ring refused.
    pub heartbeats_dropped: u64,
    /// Frames kept during a hold: (ingress port, egress port or `None` to flood, frame).
    pub held: alloc::collections::VecDeque<(usize, Option<usize>, Vec<u8>)>,
    /// Frames a full hold queue dropped, held frames forwarded, and held frames discarded.
    pub hold_counters: [u64; 3],
    /// Frames dropped by the loop guard (a station seen on the other side).
    pub loop_drops: u64,
    /// Set by a takeover, a bit per bridged port: the frames already in the receive rings
    /// arrived before this box claimed, while the old Master may still have forwarded them
    /// (they also precede the claim in its rings), so they are not forwarded. A port's bit
    /// clears when a pass finds its ring drained (fewer frames than the pass could take).
    pub skip_backlog: u8,
    /// Until then, frames are not forwarded (the takeover guard, [`TAKEOVER_GUARD`]).
    pub skip_until: Instant,
    /// The backlog skip ends at this time at the latest ([`BACKLOG_SKIP_MAX`]).
    pub skip_backlog_until: Instant,
    /// Frames not forwarded for that reason.
    pub backlog_skipped: u64,
    /// Gratuitous ARPs sent after takeovers.
    pub announcements: u64,
    /// Replication frames (EtherType 0x88B6) for the state log: (ingress port, frame),
    /// drained by `statelog` every pass.
    pub replication_in: alloc::collections::VecDeque<(usize, Vec<u8>)>,
    /// Replication frames dropped because that queue was full.
    pub replication_dropped: u64,
}

/// Sends `frame` on `port`. A full ring is kicked once (doorbell and reclaim) and the
/// frame tried again; if it is still full the frame is dropped and counted.
fn send(port: &mut Port, counters: &mut LoopCounters, frame: &[u8]) {
    match port.nic.transmit(frame) {
        Ok(()) => {}
        Err(duplex_hal::Error::Busy) => {
            port.nic.flush();
            if port.nic.transmit(frame).is_err() {
                counters.tx_ring_full += 1;
            }
        }
        Err(_) => counters.tx_ring_full += 1,
    }
}

impl Dataplane {
    /// A dataplane over `ports` (at most the first two are bridged).
    pub fn new(ports: Vec<Port>, management: Option<Management>, seed: u64) -> Dataplane {
        let bridged = ports.len().clamp(1, 2) as u16;
        let config = BridgeConfig {
            port_count: bridged,
            hash_seed: seed,
            ..BridgeConfig::default()
        };
        let mut bridge = Bridge::new(config).unwrap_or_else(|e| panic!("bridge config: {e:?}"));
        if let Some(m) = &management {
            let _ = bridge.add_local_address(m.mac);
        }
        let counters = alloc::vec![LoopCounters::default(); ports.len()];
        Dataplane {
            ports,
            bridge,
            management,
            counters,
            forwarding: true,
            role: None,
            heartbeats_in: 0,
            heartbeats_refused: 0,
            heartbeats_out: 0,
            heartbeats_dropped: 0,
            announcements: 0,
            loop_drops: 0,
            skip_backlog: 0,
            skip_until: Instant::ZERO,
            skip_backlog_until: Instant::ZERO,
            backlog_skipped: 0,
            held: alloc::collections::VecDeque::new(),
            hold_counters: [0; 3],
            replication_in: alloc::collections::VecDeque::new(),
            replication_dropped: 0,
        }
    }

    /// Number of bridged ports.
    pub fn bridged_ports(&self) -> usize {
        self.ports.len().min(2)
    }

    /// One pass: the Duplex node first (its heartbeats leave before any data), then every
    /// port's receive ring (heartbeats to the node, data through the bridge), then the
    /// management stack, then the node again (so a takeover acts at once). Returns how
    /// many frames it handled.
    pub fn poll(&mut self, now: Instant, duplex: &mut Option<Duplex>) -> usize {
        if let Some(d) = duplex.as_mut() {
            self.run_actions(d, now);
        }
        let mut handled = 0;
        let mut bridged_bytes = 0u64;
        let bridged = self.bridged_ports();
        if now >= self.skip_backlog_until {
            self.skip_backlog = 0;
        }
        // Dedicated heartbeat links first, then the bridged ports: a box that resumes after
        // a freeze learns of a newer claim from its link's backlog before it forwards any of
        // its data backlog (which the new Master may have forwarded already).
        let order = (bridged..self.ports.len()).chain(0..bridged);
        for ingress in order {
            let (before, rest) = self.ports.split_at_mut(ingress);
            let Some((port, after)) = rest.split_first_mut() else {
                continue;
            };
            let bridge = &mut self.bridge;
            let counters = &mut self.counters;
            let management = &mut self.management;
            let skip = self.skip_backlog & (1 << ingress) != 0 || now < self.skip_until;
            // The role the node holds now (a heartbeat on an earlier port of this pass may
            // have changed it), not only the one the last actions set.
            let role_forwards = duplex.as_ref().is_none_or(|d| d.node.role().forwards());
            let mut forwarding = self.forwarding && !skip && role_forwards;
            let skipping = self.forwarding && skip;
            let backlog_skipped = &mut self.backlog_skipped;
            let holding = self.role == Some(ForwardingRole::Hold);
            let held = &mut self.held;
            let hold_counters = &mut self.hold_counters;
            // The node's path on this port (serial mode numbers paths its own way).
            let path = duplex.as_ref().and_then(|d| d.path_of(ingress));
            let mut node = duplex.as_mut().map(|d| &mut d.node);
            let heartbeats_in = &mut self.heartbeats_in;
            let heartbeats_refused = &mut self.heartbeats_refused;
            let loop_drops = &mut self.loop_drops;
            let replication_in = &mut self.replication_in;
            let replication_dropped = &mut self.replication_dropped;
            let is_bridged = ingress < bridged;
            // The other bridged ports, with their indices.
            let mut others: Vec<(usize, &mut Port)> = before
                .iter_mut()
                .enumerate()
                .chain(
                    after
                        .iter_mut()
                        .enumerate()
                        .map(|(i, p)| (i + ingress + 1, p)),
                )
                .filter(|(i, _)| *i < bridged)
                .collect();
            // Read no more than the egress can take: the rest waits in this ring (and
            // the sender's buffers) rather than being dropped at a full transmit ring.
            let budget = if forwarding && is_bridged {
                let room = others
                    .iter_mut()
                    .map(|(_, p)| p.nic.transmit_room())
                    .min()
                    .unwrap_or(usize::MAX);
                if room < BATCH {
                    counters[ingress].rx_throttled += 1;
                }
                BATCH.min(room.max(MIN_BATCH))
            } else {
                BATCH
            };
            let taken = port.nic.receive(budget, &mut |frame| {
                if heartbeat::is_heartbeat(frame) {
                    // Heartbeats are the node's, never data.
                    if let Some(node) = node.as_mut() {
                        let accepted = path.map(|path| node.on_heartbeat(path, frame, now));
                        match accepted {
                            Some(Ok(_)) => *heartbeats_in += 1,
                            // Refused, or on a port that carries no heartbeats.
                            _ => *heartbeats_refused += 1,
                        }
                        // A heartbeat that made this node stop forwarding (a newer claim)
                        // takes effect for the very next frame of the batch.
                        if !node.role().forwards() {
                            forwarding = false;
                        }
                    }
                    return;
                }
                if crate::statelog::is_replication(frame) {
                    // State-log replication, never data: queued for the log service.
                    if replication_in.len() < crate::statelog::QUEUE_LIMIT {
                        replication_in.push_back((ingress, frame.to_vec()));
                    } else {
                        *replication_dropped += 1;
                    }
                    return;
                }
                if let (Some(node), Some(path)) = (node.as_mut(), path) {
                    node.on_interface_traffic(path, now);
                }
                if !is_bridged {
                    return;
                }
                bridged_bytes += frame.len() as u64;
                let moves_before = bridge.counters().moves;
                let decision = bridge.decide(PortId(ingress as u16), frame, now);
                // Loop guard: a frame whose source was last seen on the other side of the
                // bridge is a station move. With one forwarder that is rare (a station really
                // moved: its first frame is dropped); with two (a dual-Master moment in
                // parallel mode, where both boxes sit on the same hubs) it is every frame the
                // other box forwarded, and forwarding it back would loop it.
                let decision = if bridge.counters().moves != moves_before {
                    *loop_drops += 1;
                    Decision::Drop(duplex_nad::DropReason::Filtered)
                } else {
                    decision
                };
                let (flood, target, local) = match decision {
                    Decision::Forward(p) => (false, Some(p.0 as usize), false),
                    Decision::Flood => (true, None, false),
                    Decision::FloodAndLocal => (true, None, true),
                    Decision::Local => (false, None, true),
                    Decision::Drop(_) => (false, None, false),
                };
                if local && let Some(m) = management.as_mut() {
                    m.device.deliver(frame);
                }
                if holding && (flood || target.is_some()) {
                    if held.len() < HOLD_MAX {
                        held.push_back((
                            ingress,
                            if flood { None } else { target },
                            frame.to_vec(),
                        ));
                    } else {
                        hold_counters[0] += 1;
                    }
                    return;
                }
                if !forwarding {
                    if skipping && (flood || target.is_some()) {
                        *backlog_skipped += 1;
                    }
                    return;
                }
                for (index, egress) in others.iter_mut() {
                    if flood || target == Some(*index) {
                        send(egress, &mut counters[*index], frame);
                    }
                }
            });
            handled += taken;
            if taken < budget {
                // The ring is drained: what comes from now on arrived after the claim.
                self.skip_backlog &= !(1 << ingress);
            }
        }
        handled += self.poll_management(now);
        if let Some(d) = duplex.as_mut() {
            d.account(bridged_bytes, now);
            self.run_actions(d, now);
        }
        for port in self.ports.iter_mut() {
            port.nic.flush();
        }
        handled
    }

    /// Polls the node and carries out what it asks for.
    fn run_actions(&mut self, duplex: &mut Duplex, now: Instant) {
        let actions: Vec<Action> = duplex.node.poll(now).collect();
        for action in actions {
            match action {
                Action::SendHeartbeat { path, frame } => {
                    let Some(port) = duplex.port_of(path).and_then(|i| self.ports.get_mut(i))
                    else {
                        continue;
                    };
                    // Heartbeats go before data: reclaim finished transmit buffers first.
                    port.nic.flush();
                    if port.nic.transmit(frame.as_bytes()).is_ok() {
                        self.heartbeats_out += 1;
                    } else {
                        self.heartbeats_dropped += 1;
                    }
                    port.nic.flush();
                }
                Action::StateChanged(transition) => duplex.record(transition),
                Action::SetRole(role) => {
                    let was_holding = self.role == Some(ForwardingRole::Hold);
                    self.role = Some(role);
                    self.forwarding = role.forwards();
                    if was_holding {
                        self.release_held(role == ForwardingRole::Forward);
                    }
                }
                Action::AnnounceTakeover { epoch } => {
                    if duplex.node.config().mode == duplex_core::Mode::Serial {
                        // In series the new Master was in the path all along, passing
                        // the traffic through: its table is right and no other box
                        // forwarded its backlog. Only the announcement.
                        self.announce();
                        crate::println!("duplex: took over (epoch {epoch})");
                    } else {
                        let forgotten = self.take_over();
                        self.skip_backlog = (1u8 << self.bridged_ports()) - 1;
                        self.skip_backlog_until = now + BACKLOG_SKIP_MAX;
                        if self.ports.len() == self.bridged_ports() {
                            self.skip_until = now + TAKEOVER_GUARD;
                        }
                        crate::println!(
                            "duplex: took over (epoch {epoch}); bridge table reset ({forgotten} stations)"
                        );
                    }
                }
                Action::RestartService(service) => {
                    crate::println!("duplex: restart of service {service} requested");
                }
                Action::Reset => {
                    crate::println!("duplex: reset requested by the liveness policy");
                    duplex_arch::machine::reset();
                }
            }
        }
    }

    /// Ends a hold: forwards the kept frames (still the Master) or discards them.
    fn release_held(&mut self, forward: bool) {
        let bridged = self.bridged_ports();
        let held = core::mem::take(&mut self.held);
        let count = held.len() as u64;
        if forward {
            for (ingress, target, frame) in held {
                for index in (0..bridged).filter(|&i| i != ingress && target.is_none_or(|t| t == i))
                {
                    send(&mut self.ports[index], &mut self.counters[index], &frame);
                }
            }
            for port in self.ports.iter_mut() {
                port.nic.flush();
            }
            self.hold_counters[1] += count;
        } else {
            self.hold_counters[2] += count;
        }
    }

    /// After a takeover. While standing by, the bridge learned from what it saw on both
    /// sides, including the frames the old Master forwarded (on hubs and mirrored ports a
    /// standby sees them twice), so its table may place stations on the wrong side: it
    /// starts afresh (unknown stations are flooded until traffic teaches it again). Then
    /// a gratuitous ARP (request and reply) for the management address makes neighbours
    /// and switches point it at this box.
    fn take_over(&mut self) -> usize {
        let forgotten = self.bridge.flush();
        self.announce();
        forgotten
    }

    /// A gratuitous ARP (request and reply) for the management address on the bridged
    /// ports.
    fn announce(&mut self) {
        let bridged = self.bridged_ports();
        let mut frame = [0u8; 64];
        if let Some(m) = &self.management {
            for operation in [ArpOperation::Request, ArpOperation::Reply] {
                if let Ok(len) =
                    gratuitous_arp(&mut frame, operation, m.mac, m.cidr.address.into(), None)
                {
                    for index in 0..bridged {
                        send(
                            &mut self.ports[index],
                            &mut self.counters[index],
                            &frame[..len],
                        );
                    }
                    self.announcements += 1;
                }
            }
        }
        for port in self.ports.iter_mut() {
            port.nic.flush();
        }
    }

    /// Runs the management stack and sends what it produced.
    fn poll_management(&mut self, now: Instant) -> usize {
        let Some(m) = self.management.as_mut() else {
            return 0;
        };
        m.poll(now);
        let mut sent = 0;
        while let Some(frame) = m.device.tx.pop_front() {
            sent += 1;
            match self.bridge.decide_outbound(&frame, now) {
                Decision::Forward(p) => {
                    let i = p.0 as usize;
                    if let Some(port) = self.ports.get_mut(i) {
                        send(port, &mut self.counters[i], &frame);
                    }
                }
                Decision::Flood | Decision::FloodAndLocal => {
                    for i in 0..self.ports.len().min(2) {
                        send(&mut self.ports[i], &mut self.counters[i], &frame);
                    }
                }
                Decision::Local | Decision::Drop(_) => {}
            }
        }
        sent
    }

    /// `show interfaces`.
    pub fn describe(&mut self, out: &mut String) {
        for i in 0..self.ports.len() {
            let mut diagnostics = String::new();
            let _ = self.ports[i].nic.diagnostics(&mut diagnostics);
            let port = &self.ports[i];
            let c = port.nic.counters();
            let _ = write!(
                out,
                "{} ({} {} at {}): link {}\r\n  rx {} frames {} bytes, dropped {}, errors {}, throttled passes {}\r\n  tx {} frames {} bytes, dropped {} (ring full {})\r\n",
                port.name,
                port.nic.model(),
                port.nic.mac_address(),
                port.address,
                if port.link_up { "up" } else { "down" },
                c.rx_frames,
                c.rx_bytes,
                c.rx_dropped,
                c.rx_errors,
                self.counters[i].rx_throttled,
                c.tx_frames,
                c.tx_bytes,
                c.tx_dropped,
                self.counters[i].tx_ring_full,
            );
            if !diagnostics.is_empty() {
                let _ = write!(out, "  device: {diagnostics}\r\n");
            }
            if let Some(b) = self.bridge.port_counters(PortId(i as u16)) {
                let _ = write!(
                    out,
                    "  bridge: forwarded {}, flooded {}, to me {}, dropped {} (runt {}, oversized {}, bad source {}, filtered {}, reserved {})\r\n",
                    b.forwarded,
                    b.flooded,
                    b.local,
                    b.dropped.total(),
                    b.dropped.runt,
                    b.dropped.oversized,
                    b.dropped.invalid_source,
                    b.dropped.filtered,
                    b.dropped.reserved,
                );
            }
        }
        let _ = write!(
            out,
            "loop guard: {} frames dropped (station seen on the other side); takeover backlog skipped: {}\r\n",
            self.loop_drops, self.backlog_skipped
        );
        let c = self.bridge.counters();
        let _ = write!(
            out,
            "bridge: {} stations, learned {}, moves {}, aged {}, table full {}\r\n",
            self.bridge.len(),
            c.learned,
            c.moves,
            c.aged,
            c.table_full
        );
        if let Some(m) = &self.management {
            let [a, b, c2, d] = m.cidr.address;
            let _ = write!(
                out,
                "management: {a}.{b}.{c2}.{d}/{} mac {}, queue drops {}\r\n",
                m.cidr.prefix, m.mac, m.device.dropped
            );
        }
    }
}
