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

use duplex_hal::Instant;
use duplex_nad::{Bridge, BridgeConfig, Decision, PortId};

use crate::net::{Management, Port};

/// Frames taken from one port per pass.
pub const BATCH: usize = 64;

/// Per-port counters the loop keeps on top of the driver's and the bridge's.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopCounters {
    /// Frames dropped because the egress transmit ring was full.
    pub tx_ring_full: u64,
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
}

/// Sends `frame` on `port`, counting a full ring.
fn send(port: &mut Port, counters: &mut LoopCounters, frame: &[u8]) {
    if port.nic.transmit(frame).is_err() {
        counters.tx_ring_full += 1;
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
        }
    }

    /// Number of bridged ports.
    pub fn bridged_ports(&self) -> usize {
        self.ports.len().min(2)
    }

    /// One pass over every port. Returns how many frames it handled.
    pub fn poll(&mut self, now: Instant) -> usize {
        let mut handled = 0;
        let bridged = self.bridged_ports();
        for ingress in 0..bridged {
            let (before, rest) = self.ports.split_at_mut(ingress);
            let Some((port, after)) = rest.split_first_mut() else {
                continue;
            };
            let bridge = &mut self.bridge;
            let counters = &mut self.counters;
            let management = &mut self.management;
            let forwarding = self.forwarding;
            // With two bridged ports the only other port is the egress; the general case
            // walks the others.
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
            handled += port.nic.receive(BATCH, &mut |frame| {
                let decision = bridge.decide(PortId(ingress as u16), frame, now);
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
                if !forwarding {
                    return;
                }
                for (index, egress) in others.iter_mut() {
                    if flood || target == Some(*index) {
                        send(egress, &mut counters[*index], frame);
                    }
                }
            });
        }
        handled += self.poll_management(now);
        for port in self.ports.iter_mut() {
            port.nic.flush();
        }
        handled
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
                "{} ({} {} at {}): link {}\r\n  rx {} frames {} bytes, dropped {}, errors {}\r\n  tx {} frames {} bytes, dropped {} (ring full {})\r\n",
                port.name,
                port.nic.model(),
                port.nic.mac_address(),
                port.address,
                if port.link_up { "up" } else { "down" },
                c.rx_frames,
                c.rx_bytes,
                c.rx_dropped,
                c.rx_errors,
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
