//! Device states, forwarding roles, transition causes and the transition table (SPEC §7).

use core::fmt;

/// The two ways a group of Duplex nodes is cabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Both boxes see the same LAN and WAN (hubs); one forwards, the others stand by.
    Parallel,
    /// The boxes are in series, each with a bypass relay; one works, the others pass through.
    Serial,
}

impl Mode {
    /// The value on the wire.
    pub const fn to_wire(self) -> u8 {
        match self {
            Mode::Parallel => 0,
            Mode::Serial => 1,
        }
    }
    /// The mode for a wire value.
    pub const fn from_wire(value: u8) -> Option<Mode> {
        match value {
            0 => Some(Mode::Parallel),
            1 => Some(Mode::Serial),
            _ => None,
        }
    }
    /// Lower-case name, as in SPEC.md.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Parallel => "parallel",
            Mode::Serial => "serial",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A node's device state (the paper's states; SPEC §7 defines each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Initial state: listening for a Master for `probe_duration`.
    Probe,
    /// Active: forwards.
    Master,
    /// Hot standby with a live Master.
    Slave,
    /// Parallel only: has claimed and forwards, claim not yet confirmed.
    QuasiMaster,
    /// Parallel: standby without a healthy Master. Serial: failure state, relay closed.
    SubMaster,
    /// Parallel only: taken out after a failure or by the operator.
    Suspend,
}

impl State {
    /// Every state, in wire order.
    pub const ALL: [State; 6] = [
        State::Probe,
        State::Master,
        State::Slave,
        State::QuasiMaster,
        State::SubMaster,
        State::Suspend,
    ];

    /// The value on the wire.
    pub const fn to_wire(self) -> u8 {
        match self {
            State::Probe => 0,
            State::Master => 1,
            State::Slave => 2,
            State::QuasiMaster => 3,
            State::SubMaster => 4,
            State::Suspend => 5,
        }
    }

    /// The state for a wire value.
    pub const fn from_wire(value: u8) -> Option<State> {
        match value {
            0 => Some(State::Probe),
            1 => Some(State::Master),
            2 => Some(State::Slave),
            3 => Some(State::QuasiMaster),
            4 => Some(State::SubMaster),
            5 => Some(State::Suspend),
            _ => None,
        }
    }

    /// True if `mode` has this state (serial has no QuasiMaster and no Suspend).
    pub const fn exists_in(self, mode: Mode) -> bool {
        !matches!(
            (mode, self),
            (Mode::Serial, State::QuasiMaster | State::Suspend)
        )
    }

    /// True for Master and QuasiMaster: the node holds a claim.
    pub const fn is_claimer(self) -> bool {
        matches!(self, State::Master | State::QuasiMaster)
    }

    /// True for the failure states: parallel Suspend, serial SubMaster.
    pub const fn is_failure_state(self, mode: Mode) -> bool {
        matches!(
            (mode, self),
            (Mode::Parallel, State::Suspend) | (Mode::Serial, State::SubMaster)
        )
    }

    /// True for the states whose nodes are candidates for a claim (SPEC §2).
    pub const fn is_candidate(self, mode: Mode) -> bool {
        match self {
            State::Probe | State::Slave => true,
            State::SubMaster => matches!(mode, Mode::Parallel),
            _ => false,
        }
    }

    /// The `warm` part of a candidate's rank: standing by (1) beats just booted (0).
    pub const fn warmth(self) -> u8 {
        match self {
            State::Slave | State::SubMaster => 1,
            _ => 0,
        }
    }

    /// The state's name as in SPEC.md.
    pub const fn name(self) -> &'static str {
        match self {
            State::Probe => "Probe",
            State::Master => "Master",
            State::Slave => "Slave",
            State::QuasiMaster => "QuasiMaster",
            State::SubMaster => "SubMaster",
            State::Suspend => "Suspend",
        }
    }

    /// The state for its SPEC.md name.
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the image does with data traffic in a state (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardingRole {
    /// Do the NAD's work: filter, NAT, forward.
    Forward,
    /// Receive and keep recent traffic, transmit nothing (parallel hot standby).
    Buffer,
    /// Bridge the two ports unchanged in software (serial standby).
    PassThrough,
    /// Close the bypass relay: the box becomes a cable (serial failure state).
    Bypass,
    /// Neither forward nor keep.
    Drop,
    /// A claimer that has just resumed from a short freeze (SPEC §4.5): keep what arrives,
    /// transmit nothing, until the hold ends. If the node is still the Master then, the
    /// image forwards what it kept; if it stepped down, it discards it (the new Master
    /// forwarded its own copies).
    Hold,
}

impl ForwardingRole {
    /// The role of `state` in `mode`.
    pub const fn of(mode: Mode, state: State) -> ForwardingRole {
        match (mode, state) {
            (_, State::Master | State::QuasiMaster) => ForwardingRole::Forward,
            (Mode::Parallel, State::Probe | State::Slave | State::SubMaster) => {
                ForwardingRole::Buffer
            }
            (Mode::Parallel, State::Suspend) => ForwardingRole::Drop,
            (Mode::Serial, State::Probe | State::Slave) => ForwardingRole::PassThrough,
            (Mode::Serial, State::SubMaster | State::Suspend) => ForwardingRole::Bypass,
        }
    }

    /// True for the roles that send data on: `Forward` and `PassThrough`.
    pub const fn forwards(self) -> bool {
        matches!(self, ForwardingRole::Forward | ForwardingRole::PassThrough)
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            ForwardingRole::Forward => "forward",
            ForwardingRole::Buffer => "buffer",
            ForwardingRole::PassThrough => "pass-through",
            ForwardingRole::Bypass => "bypass",
            ForwardingRole::Drop => "drop",
            ForwardingRole::Hold => "hold",
        }
    }
}

impl fmt::Display for ForwardingRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a transition happened (SPEC §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The node started.
    Boot,
    /// Heard a live claimer whose claim the node follows.
    HeardMaster,
    /// `probe_duration` passed in Probe.
    ProbeExpired,
    /// The followed Master passed its soft timeout.
    SoftTimeout,
    /// The followed Master passed its hard timeout.
    HardTimeout,
    /// The followed Master announced a non-claiming state.
    MasterResigned,
    /// The followed Master asked to be replaced (operator fail-over).
    YieldRequested,
    /// No claimer known and this node became the best candidate, or waited long enough.
    Elected,
    /// The QuasiMaster's claim was confirmed.
    Confirmed,
    /// A claimer heard a better or newer claim.
    LostContention,
    /// A local failure (service miss, hardware).
    LocalFailure,
    /// Missing traffic or a reported interface failure.
    InterfaceFailure,
    /// The last failure cleared.
    Recovery,
    /// The node noticed it had not run for longer than its peers' detection time.
    Frozen,
    /// An operator command.
    Operator,
}

impl Cause {
    /// Every cause.
    pub const ALL: [Cause; 15] = [
        Cause::Boot,
        Cause::HeardMaster,
        Cause::ProbeExpired,
        Cause::SoftTimeout,
        Cause::HardTimeout,
        Cause::MasterResigned,
        Cause::YieldRequested,
        Cause::Elected,
        Cause::Confirmed,
        Cause::LostContention,
        Cause::LocalFailure,
        Cause::InterfaceFailure,
        Cause::Recovery,
        Cause::Frozen,
        Cause::Operator,
    ];

    /// The cause's name as in SPEC.md.
    pub const fn name(self) -> &'static str {
        match self {
            Cause::Boot => "Boot",
            Cause::HeardMaster => "HeardMaster",
            Cause::ProbeExpired => "ProbeExpired",
            Cause::SoftTimeout => "SoftTimeout",
            Cause::HardTimeout => "HardTimeout",
            Cause::MasterResigned => "MasterResigned",
            Cause::YieldRequested => "YieldRequested",
            Cause::Elected => "Elected",
            Cause::Confirmed => "Confirmed",
            Cause::LostContention => "LostContention",
            Cause::LocalFailure => "LocalFailure",
            Cause::InterfaceFailure => "InterfaceFailure",
            Cause::Recovery => "Recovery",
            Cause::Frozen => "Frozen",
            Cause::Operator => "Operator",
        }
    }

    /// The cause for its SPEC.md name.
    pub fn from_name(name: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    /// Row id in SPEC.md (`P1`, `S5`...).
    pub id: &'static str,
    /// Mode the row applies to.
    pub mode: Mode,
    /// State before.
    pub from: State,
    /// Trigger.
    pub cause: Cause,
    /// State after.
    pub to: State,
}

const fn row(id: &'static str, mode: Mode, from: State, cause: Cause, to: State) -> Row {
    Row {
        id,
        mode,
        from,
        cause,
        to,
    }
}

use Cause as C;
use Mode::{Parallel as PA, Serial as SE};
use State::{Master, Probe, QuasiMaster, Slave, SubMaster, Suspend};

/// The transition table of SPEC §7.2, one entry per (from, cause, to); rows of the spec that
/// list several `from` states appear once per state. A unit test compares it with SPEC.md.
pub const TABLE: &[Row] = &[
    row("P1", PA, Probe, C::HeardMaster, Slave),
    row("P2", PA, Probe, C::ProbeExpired, QuasiMaster),
    row("P3", PA, Probe, C::ProbeExpired, SubMaster),
    row("P4", PA, Probe, C::Operator, QuasiMaster),
    row("P5", PA, Slave, C::SoftTimeout, SubMaster),
    row("P6", PA, Slave, C::MasterResigned, QuasiMaster),
    row("P7", PA, Slave, C::MasterResigned, SubMaster),
    row("P8", PA, Slave, C::YieldRequested, QuasiMaster),
    row("P9", PA, Slave, C::Operator, QuasiMaster),
    row("P10", PA, SubMaster, C::HeardMaster, Slave),
    row("P11", PA, SubMaster, C::HardTimeout, QuasiMaster),
    row("P12", PA, SubMaster, C::MasterResigned, QuasiMaster),
    row("P13", PA, SubMaster, C::Elected, QuasiMaster),
    row("P14", PA, SubMaster, C::Operator, QuasiMaster),
    row("P15", PA, QuasiMaster, C::Confirmed, Master),
    row("P16", PA, QuasiMaster, C::LostContention, Slave),
    row("P17", PA, QuasiMaster, C::LostContention, SubMaster),
    row("P18", PA, QuasiMaster, C::Frozen, Probe),
    row("P19", PA, Master, C::LostContention, Slave),
    row("P20", PA, Master, C::LostContention, SubMaster),
    row("P21", PA, Master, C::Frozen, Probe),
    row("P22", PA, Probe, C::LocalFailure, Suspend),
    row("P22", PA, Slave, C::LocalFailure, Suspend),
    row("P22", PA, SubMaster, C::LocalFailure, Suspend),
    row("P22", PA, QuasiMaster, C::LocalFailure, Suspend),
    row("P22", PA, Master, C::LocalFailure, Suspend),
    row("P23", PA, Probe, C::InterfaceFailure, Suspend),
    row("P23", PA, Slave, C::InterfaceFailure, Suspend),
    row("P23", PA, SubMaster, C::InterfaceFailure, Suspend),
    row("P23", PA, QuasiMaster, C::InterfaceFailure, Suspend),
    row("P23", PA, Master, C::InterfaceFailure, Suspend),
    row("P24", PA, Probe, C::Operator, Suspend),
    row("P24", PA, Slave, C::Operator, Suspend),
    row("P24", PA, SubMaster, C::Operator, Suspend),
    row("P24", PA, QuasiMaster, C::Operator, Suspend),
    row("P24", PA, Master, C::Operator, Suspend),
    row("P25", PA, Suspend, C::Recovery, Probe),
    row("P26", PA, Suspend, C::Operator, Probe),
    row("S1", SE, Probe, C::HeardMaster, Slave),
    row("S2", SE, Probe, C::ProbeExpired, Master),
    row("S3", SE, Probe, C::ProbeExpired, Slave),
    row("S4", SE, Probe, C::Operator, Master),
    row("S5", SE, Slave, C::HardTimeout, Master),
    row("S6", SE, Slave, C::MasterResigned, Master),
    row("S7", SE, Slave, C::YieldRequested, Master),
    row("S8", SE, Slave, C::Elected, Master),
    row("S9", SE, Slave, C::Operator, Master),
    row("S10", SE, Master, C::LostContention, Slave),
    row("S11", SE, Master, C::Frozen, Probe),
    row("S12", SE, Probe, C::LocalFailure, SubMaster),
    row("S12", SE, Slave, C::LocalFailure, SubMaster),
    row("S12", SE, Master, C::LocalFailure, SubMaster),
    row("S13", SE, Probe, C::InterfaceFailure, SubMaster),
    row("S13", SE, Slave, C::InterfaceFailure, SubMaster),
    row("S13", SE, Master, C::InterfaceFailure, SubMaster),
    row("S14", SE, Probe, C::Operator, SubMaster),
    row("S14", SE, Slave, C::Operator, SubMaster),
    row("S14", SE, Master, C::Operator, SubMaster),
    row("S15", SE, SubMaster, C::Recovery, Probe),
    row("S16", SE, SubMaster, C::Operator, Probe),
];

/// The table row allowing this transition, if any.
pub fn lookup(mode: Mode, from: State, cause: Cause, to: State) -> Option<&'static Row> {
    TABLE
        .iter()
        .find(|r| r.mode == mode && r.from == from && r.cause == cause && r.to == to)
}

/// One transition a node made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Trigger.
    pub cause: Cause,
    /// When.
    pub at: duplex_hal::Instant,
    /// The node's epoch after the transition (its claim epoch when it claimed).
    pub epoch: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::string::String;
    use std::vec::Vec;

    /// Parses the transition table of SPEC.md into (id, mode, from, cause, to) tuples.
    fn spec_rows() -> Vec<(String, Mode, State, Cause, State)> {
        let spec = include_str!("../SPEC.md");
        let mut rows = Vec::new();
        for line in spec.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | id | mode | from | cause | to | condition |
            if cells.len() < 7 {
                continue;
            }
            let id = cells[1];
            let is_id = (id.starts_with('P') || id.starts_with('S'))
                && id.len() > 1
                && id[1..].chars().all(|c| c.is_ascii_digit());
            if !is_id {
                continue;
            }
            let mode = match cells[2] {
                "parallel" => Mode::Parallel,
                "serial" => Mode::Serial,
                other => panic!("row {id}: bad mode {other}"),
            };
            let cause = Cause::from_name(cells[4]).unwrap_or_else(|| panic!("row {id}: cause"));
            let to = State::from_name(cells[5]).unwrap_or_else(|| panic!("row {id}: to"));
            for from in cells[3].split(',') {
                let from =
                    State::from_name(from.trim()).unwrap_or_else(|| panic!("row {id}: from"));
                rows.push((String::from(id), mode, from, cause, to));
            }
        }
        rows
    }

    #[test]
    fn table_matches_spec() {
        let spec: BTreeSet<_> = spec_rows()
            .into_iter()
            .map(|(id, m, f, c, t)| (id, m.name(), f, c.name(), t))
            .collect();
        let code: BTreeSet<_> = TABLE
            .iter()
            .map(|r| {
                (
                    String::from(r.id),
                    r.mode.name(),
                    r.from,
                    r.cause.name(),
                    r.to,
                )
            })
            .collect();
        assert!(spec.len() > 50, "spec table not found");
        let only_spec: Vec<_> = spec.difference(&code).collect();
        let only_code: Vec<_> = code.difference(&spec).collect();
        assert!(
            only_spec.is_empty() && only_code.is_empty(),
            "{only_spec:?} / {only_code:?}"
        );
    }

    #[test]
    fn table_is_consistent() {
        for r in TABLE {
            assert!(r.from.exists_in(r.mode) && r.to.exists_in(r.mode), "{r:?}");
            assert_ne!(r.from, r.to, "{r:?}");
            assert_ne!(r.cause, Cause::Boot);
        }
        // No duplicates.
        let set: BTreeSet<_> = TABLE
            .iter()
            .map(|r| (r.mode.name(), r.from, r.cause.name(), r.to))
            .collect();
        assert_eq!(set.len(), TABLE.len());
    }

    #[test]
    fn wire_values_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_wire(s.to_wire()), Some(s));
            assert_eq!(State::from_name(s.name()), Some(s));
        }
        assert_eq!(State::from_wire(6), None);
        for c in Cause::ALL {
            assert_eq!(Cause::from_name(c.name()), Some(c));
        }
        assert_eq!(Mode::from_wire(2), None);
    }

    #[test]
    fn roles() {
        assert_eq!(
            ForwardingRole::of(Mode::Parallel, State::Slave),
            ForwardingRole::Buffer
        );
        assert_eq!(
            ForwardingRole::of(Mode::Serial, State::Slave),
            ForwardingRole::PassThrough
        );
        assert_eq!(
            ForwardingRole::of(Mode::Serial, State::SubMaster),
            ForwardingRole::Bypass
        );
        assert_eq!(
            ForwardingRole::of(Mode::Parallel, State::Suspend),
            ForwardingRole::Drop
        );
        assert_eq!(
            ForwardingRole::of(Mode::Parallel, State::QuasiMaster),
            ForwardingRole::Forward
        );
    }
}
