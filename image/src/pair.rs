//! The Duplex node on the appliance's real NICs: configuration from the boot options,
//! the actions it asks for, and the console's view of it.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use duplex_core::{Config, Key, Mode, Node, NodeId, PathConfig, PathId, Timing, Transition};
use duplex_hal::Instant;
use duplex_mgmt::options::{BootOptions, DuplexMode, PeerPort};

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
    /// The node's path for each port (by port index); `None`: the port is not the node's.
    pub port_paths: Vec<Option<PathId>>,
    /// The port of each path (by path index).
    pub path_ports: Vec<usize>,
}

/// The node's paths over the ports, and the port of each path.
///
/// Parallel mode: one heartbeat path per port, in port order (every box lists lan, wan,
/// link: the same segments in the same order). Serial mode: the boxes are in series, so
/// the segment they share is A's wan and B's lan; it must have the same path index on
/// both (SPEC §0), so path 0 is the port facing the peer (`peer=`), then the dedicated
/// links, then the outer port, which carries no heartbeats and is only watched for
/// traffic when `traffic_ms=` is set.
fn plan_paths(
    options: &BootOptions,
    ports: &[Port],
) -> Result<(Vec<PathConfig>, Vec<Option<PathId>>), &'static str> {
    let traffic =
        (options.traffic_ms > 0).then(|| Duration::from_millis(u64::from(options.traffic_ms)));
    let watched = |mut path: PathConfig, bridged: bool| {
        if bridged {
            path.traffic_timeout = traffic;
        }
        path
    };
    let mut paths = Vec::new();
    let mut port_paths = alloc::vec![None; ports.len()];
    if options.mode != DuplexMode::Serial {
        for (index, port) in ports.iter().enumerate() {
            port_paths[index] = Some(PathId(index as u8));
            paths.push(watched(
                PathConfig::new(port.name, port.nic.mac_address()),
                index < 2,
            ));
        }
        return Ok((paths, port_paths));
    }
    let peer = match options.peer {
        Some(PeerPort::Lan) => 0,
        Some(PeerPort::Wan) => 1,
        None => {
            return Err(
                "serial mode needs peer=lan or peer=wan (the port that faces the other box)",
            );
        }
    };
    if ports.len() < 2 {
        return Err("serial mode needs two bridged ports (lan and wan)");
    }
    let outer = 1 - peer;
    let mut order = alloc::vec![peer];
    order.extend(2..ports.len());
    for index in order {
        let port = &ports[index];
        port_paths[index] = Some(PathId(paths.len() as u8));
        paths.push(watched(
            PathConfig::new(port.name, port.nic.mac_address()),
            index == peer,
        ));
    }
    if let Some(timeout) = traffic {
        let port = &ports[outer];
        port_paths[outer] = Some(PathId(paths.len() as u8));
        paths.push(PathConfig::monitor_only(
            port.name,
            port.nic.mac_address(),
            timeout,
        ));
    }
    Ok((paths, port_paths))
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
    let (paths, port_paths) = match plan_paths(options, ports) {
        Ok(plan) => plan,
        Err(message) => {
            println!(
                "{}duplex: {message}; running standalone",
                duplex_mgmt::markers::ERROR
            );
            return None;
        }
    };
    let mut path_ports = alloc::vec![0; paths.len()];
    for (port, path) in port_paths.iter().enumerate() {
        if let Some(path) = path {
            path_ports[usize::from(path.0)] = port;
        }
    }
    let path_names: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
    let path_list = path_names.join(",");
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
                "duplex: {mode} mode, group {}, node {}, priority {}, heartbeat {} us, paths {path_list}, incarnation {incarnation}",
                options.group, options.node, options.priority, options.heartbeat_us,
            );
            Some(Duplex {
                node,
                history: VecDeque::new(),
                load_bytes: 0,
                load_since: now,
                load_bps: 0,
                port_paths,
                path_ports,
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
    /// The node's path on port `port`, if the port is one of its paths.
    pub fn path_of(&self, port: usize) -> Option<PathId> {
        self.port_paths.get(port).copied().flatten()
    }

    /// The port of path `path`.
    pub fn port_of(&self, path: PathId) -> Option<usize> {
        self.path_ports.get(usize::from(path.0)).copied()
    }

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
