//! A snapshot of a node for the console: `Display` gives the `show duplex` text,
//! [`Status::to_json`] the `--json` form (one object, hand-written JSON).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::time::Duration;

use duplex_hal::{Instant, MacAddress};
use duplex_mgmt::json::write_string;

use crate::Error;
use crate::config::{NodeId, PathId, Timing};
use crate::node::Failure;
use crate::spi::{MissAction, ServiceId};
use crate::state::{ForwardingRole, Mode, State, Transition};

/// Everything `show duplex` prints.
#[derive(Debug, Clone)]
pub struct Status {
    /// The node's notion of now (the latest instant it was given).
    pub now: Instant,
    /// This node.
    pub node_id: NodeId,
    /// Group id.
    pub group: u16,
    /// Mode.
    pub mode: Mode,
    /// Current state.
    pub state: State,
    /// Current forwarding role.
    pub role: ForwardingRole,
    /// Priority sent.
    pub priority: u8,
    /// Highest epoch known.
    pub epoch: u32,
    /// Master followed or held.
    pub master: Option<NodeId>,
    /// Epoch of that Master's claim.
    pub master_epoch: u32,
    /// When the current state was entered.
    pub since: Instant,
    /// Last transition.
    pub last_transition: Option<Transition>,
    /// Number of transitions since start.
    pub transitions: u64,
    /// Device-state generation.
    pub generation: u64,
    /// Current send interval.
    pub send_interval: Duration,
    /// Some live peer is past its soft timeout.
    pub probing: bool,
    /// No heartbeats go out (local failure).
    pub silent: bool,
    /// What `Node::healthy` says now.
    pub healthy: bool,
    /// An operator fail-over is pending.
    pub yielding: bool,
    /// Suspended by the operator.
    pub operator_suspended: bool,
    /// Own load, bit/s.
    pub load_bits_per_second: u64,
    /// Own log position.
    pub log_position: u64,
    /// Freezes detected.
    pub freezes: u64,
    /// Incarnation in the sequence numbers.
    pub incarnation: u32,
    /// Configured timing.
    pub timing: Timing,
    /// `Node::poll_at`.
    pub next_deadline: Instant,
    /// Active failures.
    pub failures: Vec<Failure>,
    /// Per-path health.
    pub paths: Vec<PathStatus>,
    /// Per-peer health.
    pub peers: Vec<PeerStatus>,
    /// Registered services.
    pub services: Vec<ServiceStatus>,
}

/// One heartbeat path of this node.
#[derive(Debug, Clone)]
pub struct PathStatus {
    /// Index.
    pub path: PathId,
    /// Name from the configuration.
    pub name: String,
    /// Own MAC on it.
    pub mac: MacAddress,
    /// Some live peer is heard on it.
    pub up: bool,
    /// Frames sent.
    pub sent: u64,
    /// New heartbeats received.
    pub received: u64,
    /// Copies of heartbeats already received on another path.
    pub duplicates: u64,
    /// Frames rejected.
    pub rejected: u64,
    /// Why the last frame was rejected.
    pub last_error: Option<Error>,
    /// An interface failure is active on it.
    pub interface_failed: bool,
    /// Heartbeats go out on it (false: watched for traffic only).
    pub heartbeats: bool,
}

/// One peer as this node sees it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Peer id.
    pub node_id: NodeId,
    /// Its last announced state.
    pub state: State,
    /// Its priority.
    pub priority: u8,
    /// Its epoch.
    pub epoch: u32,
    /// The Master it follows.
    pub master: Option<NodeId>,
    /// That Master's claim epoch.
    pub master_epoch: u32,
    /// Heard within its hard timeout.
    pub alive: bool,
    /// Past its soft timeout.
    pub suspect: bool,
    /// Last accepted heartbeat.
    pub last_heard: Instant,
    /// Silence counted toward the timeouts.
    pub silence: Duration,
    /// Adaptive soft timeout.
    pub soft_timeout: Duration,
    /// Hard timeout (the paper's formula).
    pub hard_timeout: Duration,
    /// Its announced send interval.
    pub interval: Duration,
    /// Its announced load, bit/s.
    pub load_bits_per_second: u64,
    /// Its log position.
    pub log_position: u64,
    /// Heartbeats accepted from it.
    pub accepted: u64,
    /// Health of each path toward it.
    pub paths: Vec<PeerPathStatus>,
}

/// One path toward one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerPathStatus {
    /// Path index.
    pub path: PathId,
    /// Heard on this path within the peer's hard timeout.
    pub up: bool,
    /// Last heartbeat on this path.
    pub last_heard: Option<Instant>,
    /// Frames from this peer on this path (new and copies).
    pub received: u64,
}

/// One registered service.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// Id.
    pub id: ServiceId,
    /// Name.
    pub name: String,
    /// Deadline.
    pub deadline: Duration,
    /// Action on a miss.
    pub on_miss: MissAction,
    /// Last `iam_alive`.
    pub last_alive: Instant,
    /// Failed now.
    pub failed: bool,
    /// Misses since registration.
    pub misses: u64,
    /// Restarts asked.
    pub restarts: u64,
}

struct Micros(Duration);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:03} ms", us / 1000, us % 1000)
    }
}

fn failure_name(f: &Failure) -> String {
    let mut s = String::new();
    let _ = match f {
        Failure::Service(id) => write!(s, "service {id}"),
        Failure::Interface(p) => write!(s, "interface {p}"),
        Failure::Hardware(code) => write!(s, "hardware {code}"),
    };
    s
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "duplex: node {} group {} {} mode, {} ({}), priority {}, epoch {}",
            self.node_id, self.group, self.mode, self.state, self.role, self.priority, self.epoch
        )?;
        match self.master {
            Some(m) => writeln!(
                f,
                "  master: node {} (claim epoch {})",
                m, self.master_epoch
            )?,
            None => writeln!(f, "  master: none")?,
        }
        write!(f, "  in state since {}", self.since)?;
        if let Some(t) = self.last_transition {
            write!(
                f,
                "; last: {} -> {} ({}) at {}",
                t.from, t.to, t.cause, t.at
            )?;
        }
        writeln!(f, "; {} transitions", self.transitions)?;
        writeln!(
            f,
            "  heartbeat every {}{}{}; load {} kbit/s; log {}; freezes {}",
            Micros(self.send_interval),
            if self.probing { " (probing)" } else { "" },
            if self.silent {
                " SILENT (local failure)"
            } else {
                ""
            },
            self.load_bits_per_second / 1000,
            self.log_position,
            self.freezes
        )?;
        if !self.failures.is_empty() || self.operator_suspended {
            write!(f, "  failures:")?;
            for x in &self.failures {
                write!(f, " [{}]", failure_name(x))?;
            }
            if self.operator_suspended {
                write!(f, " [operator suspend]")?;
            }
            writeln!(f)?;
        }
        for p in &self.paths {
            write!(
                f,
                "  path {} {:<6} {} {} sent {} recv {} dup {} rejected {}",
                p.path,
                p.name,
                p.mac,
                if p.up { "up  " } else { "down" },
                p.sent,
                p.received,
                p.duplicates,
                p.rejected
            )?;
            if let Some(e) = p.last_error {
                write!(f, " (last: {e})")?;
            }
            if !p.heartbeats {
                write!(f, " (no heartbeats)")?;
            }
            if p.interface_failed {
                write!(f, " INTERFACE FAILED")?;
            }
            writeln!(f)?;
        }
        for peer in &self.peers {
            writeln!(
                f,
                "  peer {} {} prio {} epoch {} {}{} silent {} soft {} hard {} load {} kbit/s",
                peer.node_id,
                peer.state,
                peer.priority,
                peer.epoch,
                if peer.alive { "alive" } else { "DEAD" },
                if peer.suspect && peer.alive {
                    " suspect"
                } else {
                    ""
                },
                Micros(peer.silence),
                Micros(peer.soft_timeout),
                Micros(peer.hard_timeout),
                peer.load_bits_per_second / 1000
            )?;
            write!(f, "    paths:")?;
            for pp in &peer.paths {
                write!(f, " {}={}", pp.path, if pp.up { "up" } else { "down" })?;
            }
            writeln!(f)?;
        }
        for s in &self.services {
            writeln!(
                f,
                "  service {} {:<10} deadline {} on miss {} {} misses {} restarts {}",
                s.id,
                s.name,
                Micros(s.deadline),
                s.on_miss,
                if s.failed { "FAILED" } else { "ok" },
                s.misses,
                s.restarts
            )?;
        }
        Ok(())
    }
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

impl Status {
    /// The status as one JSON object on one line. Times are microseconds; instants are
    /// microseconds since boot.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(1024);
        let _ = write!(
            o,
            "{{\"node\":{},\"group\":{},\"mode\":\"{}\",\"state\":\"{}\",\"role\":\"{}\",\"priority\":{},\"epoch\":{},",
            self.node_id, self.group, self.mode, self.state, self.role, self.priority, self.epoch
        );
        match self.master {
            Some(m) => {
                let _ = write!(
                    o,
                    "\"master\":{},\"master_epoch\":{},",
                    m, self.master_epoch
                );
            }
            None => o.push_str("\"master\":null,\"master_epoch\":null,"),
        }
        let _ = write!(
            o,
            "\"now_us\":{},\"since_us\":{},",
            self.now.as_micros(),
            self.since.as_micros()
        );
        match self.last_transition {
            Some(t) => {
                let _ = write!(
                    o,
                    "\"last_transition\":{{\"from\":\"{}\",\"to\":\"{}\",\"cause\":\"{}\",\"at_us\":{},\"epoch\":{}}},",
                    t.from,
                    t.to,
                    t.cause,
                    t.at.as_micros(),
                    t.epoch
                );
            }
            None => o.push_str("\"last_transition\":null,"),
        }
        let _ = write!(
            o,
            "\"transitions\":{},\"generation\":{},\"send_interval_us\":{},\"probing\":{},\"silent\":{},\"healthy\":{},\"yielding\":{},\"operator_suspended\":{},\"load_bps\":{},\"log_position\":{},\"freezes\":{},\"incarnation\":{},\"next_deadline_us\":{},",
            self.transitions,
            self.generation,
            us(self.send_interval),
            self.probing,
            self.silent,
            self.healthy,
            self.yielding,
            self.operator_suspended,
            self.load_bits_per_second,
            self.log_position,
            self.freezes,
            self.incarnation,
            self.next_deadline.as_micros()
        );
        let t = &self.timing;
        let _ = write!(
            o,
            "\"timing\":{{\"interval_us\":{},\"probe_interval_us\":{},\"soft_timeout_min_us\":{},\"soft_timeout_max_us\":{},\"hard_extension_min_us\":{},\"hard_extension_max_us\":{},\"load_factor\":{},\"probe_duration_us\":{}}},",
            us(t.interval),
            us(t.probe_interval),
            us(t.soft_timeout_min),
            us(t.soft_timeout_max),
            us(t.hard_extension_min),
            us(t.hard_extension_max),
            t.load_factor,
            us(t.probe_duration)
        );
        o.push_str("\"failures\":[");
        for (i, f) in self.failures.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            write_string(&mut o, &failure_name(f));
        }
        o.push_str("],\"paths\":[");
        for (i, p) in self.paths.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{{\"path\":{},\"name\":", p.path);
            write_string(&mut o, &p.name);
            let _ = write!(
                o,
                ",\"mac\":\"{}\",\"up\":{},\"sent\":{},\"received\":{},\"duplicates\":{},\"rejected\":{},\"interface_failed\":{},\"heartbeats\":{},\"last_error\":",
                p.mac,
                p.up,
                p.sent,
                p.received,
                p.duplicates,
                p.rejected,
                p.interface_failed,
                p.heartbeats
            );
            match p.last_error {
                Some(e) => {
                    let mut s = String::new();
                    let _ = write!(s, "{e}");
                    write_string(&mut o, &s);
                }
                None => o.push_str("null"),
            }
            o.push('}');
        }
        o.push_str("],\"peers\":[");
        for (i, p) in self.peers.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(
                o,
                "{{\"node\":{},\"state\":\"{}\",\"priority\":{},\"epoch\":{},\"master\":{},\"alive\":{},\"suspect\":{},\"last_heard_us\":{},\"silence_us\":{},\"soft_timeout_us\":{},\"hard_timeout_us\":{},\"interval_us\":{},\"load_bps\":{},\"log_position\":{},\"accepted\":{},\"paths\":[",
                p.node_id,
                p.state,
                p.priority,
                p.epoch,
                p.master.map_or(0, |m| m.0),
                p.alive,
                p.suspect,
                p.last_heard.as_micros(),
                us(p.silence),
                us(p.soft_timeout),
                us(p.hard_timeout),
                us(p.interval),
                p.load_bits_per_second,
                p.log_position,
                p.accepted
            );
            for (j, pp) in p.paths.iter().enumerate() {
                if j > 0 {
                    o.push(',');
                }
                let _ = write!(
                    o,
                    "{{\"path\":{},\"up\":{},\"received\":{},\"last_heard_us\":",
                    pp.path, pp.up, pp.received
                );
                match pp.last_heard {
                    Some(t) => {
                        let _ = write!(o, "{}}}", t.as_micros());
                    }
                    None => o.push_str("null}"),
                }
            }
            o.push_str("]}");
        }
        o.push_str("],\"services\":[");
        for (i, s) in self.services.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{{\"id\":{},\"name\":", s.id);
            write_string(&mut o, &s.name);
            let _ = write!(
                o,
                ",\"deadline_us\":{},\"on_miss\":\"{}\",\"last_alive_us\":{},\"failed\":{},\"misses\":{},\"restarts\":{}}}",
                us(s.deadline),
                s.on_miss,
                s.last_alive.as_micros(),
                s.failed,
                s.misses,
                s.restarts
            );
        }
        o.push_str("]}");
        o
    }
}
