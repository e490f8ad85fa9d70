//! The Duplex node on the appliance's real NICs: configuration from the boot options,
//! the actions it asks for, and the console's view of it.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use duplex_core::{Config, Key, Mode, Node, NodeId, PathConfig, Timing, Transition};
use duplex_hal::Instant;
use duplex_mgmt::options::{BootOptions, DuplexMode};

use crate::net::Port;
use crate::println;

/// The lab's key when no `key=` is given (the console warns: anyone can forge heartbeats).
const DEFAULT_KEY: &[u8] = b"duplex-lab-default-key-not-secret";
/// Transitions kept for `show duplex`.
const HISTORY: usize = 16;

/// The node and what the image keeps around it.
pub struct Duplex {
    /// The state machines.
    pub node: Node,
    /// The last transitions, oldest first.
    pub history: VecDeque<Transition>,
    /// Bytes seen on the bridged ports since `load_since` (for the adaptive timeout).
    pub load_bytes: u64,
    /// Start of the current load window.
    pub load_since: Instant,
    /// Measured load, bits per second.
    pub load_bps: u64,
}

/// Builds the node from the boot options, one heartbeat path per port.
pub fn build(
    options: &BootOptions,
    ports: &[Port],
    incarnation: u32,
    now: Instant,
) -> Option<Duplex> {
    let mode = match options.mode {
        DuplexMode::Standalone => return None,
        DuplexMode::Parallel => Mode::Parallel,
        DuplexMode::Serial => Mode::Serial,
    };
    if ports.is_empty() {
        println!(
            "{}duplex: no network port for heartbeats; running standalone",
            duplex_mgmt::markers::ERROR
        );
        return None;
    }
    let key = match &options.key {
        Some(secret) => Key::derive(secret.as_bytes()),
        None => {
            println!(
                "warning: duplex: no key= given; using the built-in lab key (heartbeats can be forged)"
            );
            Key::derive(DEFAULT_KEY)
        }
    };
    let paths: Vec<PathConfig> = ports
        .iter()
        .map(|p| PathConfig::new(p.name, p.nic.mac_address()))
        .collect();
    let config = Config {
        mode,
        group: options.group,
        node_id: NodeId(u16::from(options.node)),
        priority: options.priority,
        incarnation,
        key,
        paths,
        timing: Timing::scaled(Duration::from_micros(u64::from(options.heartbeat_us))),
    };
    match Node::new(config, now) {
        Ok(node) => {
            println!(
                "duplex: {mode} mode, group {}, node {}, priority {}, heartbeat {} us on {} path(s), incarnation {incarnation}",
                options.group,
                options.node,
                options.priority,
                options.heartbeat_us,
                ports.len()
            );
            Some(Duplex {
                node,
                history: VecDeque::new(),
                load_bytes: 0,
                load_since: now,
                load_bps: 0,
            })
        }
        Err(e) => {
            println!(
                "{}duplex: bad configuration ({e:?}); running standalone",
                duplex_mgmt::markers::ERROR
            );
            None
        }
    }
}

impl Duplex {
    /// Records a transition for `show duplex` and prints it.
    pub fn record(&mut self, transition: Transition) {
        println!(
            "duplex: {} -> {} ({}) epoch {} at {} ms",
            transition.from,
            transition.to,
            transition.cause,
            transition.epoch,
            transition.at.as_millis()
        );
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(transition);
    }

    /// Adds bytes to the load window; every 10 ms updates the node's load.
    pub fn account(&mut self, bytes: u64, now: Instant) {
        self.load_bytes += bytes;
        let elapsed = now.saturating_since(self.load_since);
        if elapsed >= Duration::from_millis(10) {
            self.load_bps = self.load_bytes * 8 * 1_000_000 / (elapsed.as_micros().max(1) as u64);
            self.node.set_load(self.load_bps);
            self.load_bytes = 0;
            self.load_since = now;
        }
    }

    /// `show duplex`.
    pub fn describe(&self, out: &mut String) {
        let status = alloc::format!("{}", self.node.status());
        for line in status.lines() {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(&alloc::format!("load: {} bit/s\r\n", self.load_bps));
        if !self.history.is_empty() {
            out.push_str("recent transitions:\r\n");
            for t in &self.history {
                out.push_str(&alloc::format!(
                    "  {:>10} ms  {} -> {} ({}) epoch {}\r\n",
                    t.at.as_millis(),
                    t.from,
                    t.to,
                    t.cause,
                    t.epoch
                ));
            }
        }
    }
}
