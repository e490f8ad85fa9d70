//! A transparent learning bridge between N ports (SPEC.md "Bridge").
//!
//! [`Bridge::decide`] looks at one received frame and says where it goes; it never copies
//! the frame, never allocates, and never panics. The MAC table learns source addresses
//! per (VLAN, MAC), ages entries out after [`BridgeConfig::ageing_time`], and never holds
//! more than [`BridgeConfig::max_entries`]: when full it refuses new stations (and counts
//! them) rather than evicting anyone silently; their frames are still flooded.

mod snapshot;
mod table;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use duplex_hal::{Instant, MacAddress};

use crate::wire::{ETHERNET_TAGGED_HEADER_LEN, EthernetFrame};
use crate::{Error, Result};

pub use snapshot::{SnapshotEntry, TableSnapshot};
use table::{MacTable, Probe, Slot};

/// A bridge port, numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortId(pub u16);

impl PortId {
    /// The appliance's LAN port.
    pub const LAN: PortId = PortId(0);
    /// The appliance's WAN port.
    pub const WAN: PortId = PortId(1);
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header (14 bytes, 18 when tagged).
    Runt,
    /// Longer than [`BridgeConfig::max_frame_len`].
    Oversized,
    /// The source address is a group address or all zeros.
    InvalidSource,
    /// The destination was learned on the ingress port: the frame stays on its segment.
    Filtered,
    /// An IEEE 802.1D reserved group address (01:80:C2:00:00:00..0F: STP, LACP, 802.1X),
    /// which a bridge must not forward.
    Reserved,
    /// The ingress port does not exist (counted in [`BridgeCounters::unknown_port`]).
    UnknownPort,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Runt => "runt",
            DropReason::Oversized => "oversized",
            DropReason::InvalidSource => "invalid source",
            DropReason::Filtered => "filtered",
            DropReason::Reserved => "reserved group",
            DropReason::UnknownPort => "unknown port",
        })
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Send it out of this port (never the ingress port).
    Forward(PortId),
    /// Send it out of every port but the ingress port ([`Bridge::flood_ports`]); from
    /// [`Bridge::decide_outbound`], out of every port ([`Bridge::ports`]).
    Flood,
    /// Hand it to the appliance's own stack only (its unicast address, or a group address
    /// it registered).
    Local,
    /// Flood it and hand it to the appliance's own stack (broadcasts such as ARP requests,
    /// when a local unicast address is registered).
    FloodAndLocal,
    /// Drop it (already counted).
    Drop(DropReason),
}

/// Bridge configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Number of ports (1..=256); the appliance has 2 ([`PortId::LAN`], [`PortId::WAN`]).
    pub port_count: u16,
    /// A learned entry not refreshed for this long is forgotten (1 s..=1,000,000 s;
    /// default 300 s, as IEEE 802.1D).
    pub ageing_time: Duration,
    /// Most entries the table holds (1..=1,048,576; default 4096). The table's memory is
    /// allocated once: 24 bytes × the next power of two ≥ 2 × this (196,608 bytes for 4096).
    pub max_entries: usize,
    /// Learn source addresses (default true). When false only static entries direct
    /// unicast frames; the rest is flooded.
    pub learning: bool,
    /// Independent VLAN learning: one table entry per (VID, MAC) (default true). When
    /// false every frame is learned and looked up in VLAN 0.
    pub vlan_learning: bool,
    /// Longest frame accepted, without FCS (default 1518: 1514 plus one 802.1Q tag).
    pub max_frame_len: usize,
    /// Forward frames to the 802.1D reserved group addresses (default false).
    pub forward_reserved: bool,
    /// Seed of the table's hash function; pass something unpredictable (a TSC read at
    /// boot) so that stations cannot pick colliding addresses.
    pub hash_seed: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            port_count: 2,
            ageing_time: Duration::from_secs(300),
            max_entries: 4096,
            learning: true,
            vlan_learning: true,
            max_frame_len: 1518,
            forward_reserved: false,
            hash_seed: 0x6475_706c_6578_6e61,
        }
    }
}

impl BridgeConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result {
        if !(1..=256).contains(&self.port_count) {
            return Err(Error::InvalidConfig("port_count must be 1..=256"));
        }
        if self.ageing_time < Duration::from_secs(1)
            || self.ageing_time > Duration::from_secs(1_000_000)
        {
            return Err(Error::InvalidConfig(
                "ageing_time must be 1 s..=1,000,000 s",
            ));
        }
        if !(1..=1 << 20).contains(&self.max_entries) {
            return Err(Error::InvalidConfig("max_entries must be 1..=1048576"));
        }
        if !(ETHERNET_TAGGED_HEADER_LEN..=65_535).contains(&self.max_frame_len) {
            return Err(Error::InvalidConfig("max_frame_len must be 18..=65535"));
        }
        Ok(())
    }
}

/// Frames a port dropped, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    /// [`DropReason::Runt`].
    pub runt: u64,
    /// [`DropReason::Oversized`].
    pub oversized: u64,
    /// [`DropReason::InvalidSource`].
    pub invalid_source: u64,
    /// [`DropReason::Filtered`].
    pub filtered: u64,
    /// [`DropReason::Reserved`].
    pub reserved: u64,
}

impl DropCounters {
    /// The counter of `reason` (0 for [`DropReason::UnknownPort`], which no port counts).
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Runt => self.runt,
            DropReason::Oversized => self.oversized,
            DropReason::InvalidSource => self.invalid_source,
            DropReason::Filtered => self.filtered,
            DropReason::Reserved => self.reserved,
            DropReason::UnknownPort => 0,
        }
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.runt
            .saturating_add(self.oversized)
            .saturating_add(self.invalid_source)
            .saturating_add(self.filtered)
            .saturating_add(self.reserved)
    }

    fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Runt => &mut self.runt,
            DropReason::Oversized => &mut self.oversized,
            DropReason::InvalidSource => &mut self.invalid_source,
            DropReason::Filtered => &mut self.filtered,
            DropReason::Reserved => &mut self.reserved,
            DropReason::UnknownPort => return,
        };
        *counter = counter.wrapping_add(1);
    }
}

/// One port's counters since the bridge was made, for `show interfaces`.
///
/// Ingress: every frame given to [`Bridge::decide`] on the port counts in `rx_frames` and
/// in exactly one of `forwarded`, `flooded`, `local`, `dropped` — except
/// [`Decision::FloodAndLocal`], which counts in both `flooded` and `local`. Egress:
/// `tx_frames` counts the frames the bridge sent out of the port (forwarded here or
/// flooded here, from [`Bridge::decide`] and [`Bridge::decide_outbound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes in those frames.
    pub rx_bytes: u64,
    /// Received frames forwarded to one port.
    pub forwarded: u64,
    /// Received frames flooded.
    pub flooded: u64,
    /// Received frames handed to the appliance.
    pub local: u64,
    /// Received frames dropped, by reason.
    pub dropped: DropCounters,
    /// Frames the bridge sent out of this port.
    pub tx_frames: u64,
}

/// Bridge-wide counters since the bridge was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeCounters {
    /// Stations entered into the table (restores not counted).
    pub learned: u64,
    /// Stations seen on another port than their entry said (the entry was moved).
    pub moves: u64,
    /// Entries forgotten because they aged out.
    pub aged: u64,
    /// New stations not entered because the table was full.
    pub table_full: u64,
    /// Frames given with an ingress port that does not exist.
    pub unknown_port: u64,
}

/// One MAC table entry, as [`Bridge::table`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// The station's address.
    pub mac: MacAddress,
    /// Its VLAN (0 for untagged, and for all entries without per-VLAN learning).
    pub vlan: u16,
    /// The port it is behind.
    pub port: PortId,
    /// Configured by the operator, never aged.
    pub is_static: bool,
    /// When it was last seen (when it was configured, for static entries).
    pub last_seen: Instant,
}

impl TableEntry {
    /// Time since it was last seen.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_since(self.last_seen)
    }

    fn from_slot(slot: &Slot) -> Self {
        TableEntry {
            mac: slot.mac(),
            vlan: slot.vlan(),
            port: PortId(slot.port),
            is_static: slot.is_static,
            last_seen: slot.last_seen,
        }
    }
}

/// What [`Bridge::restore`] did with a snapshot's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreSummary {
    /// Entries now in the table.
    pub restored: usize,
    /// Entries older than the ageing time, skipped.
    pub expired: usize,
    /// Entries naming a port this bridge does not have, skipped.
    pub invalid: usize,
    /// Entries skipped because the table was full.
    pub refused: usize,
}

/// Most addresses [`Bridge::add_local_address`] registers.
pub const MAX_LOCAL_ADDRESSES: usize = 16;

/// The 802.1D reserved group addresses 01:80:C2:00:00:00..=0F.
fn is_reserved(mac: MacAddress) -> bool {
    let m = mac.0;
    m[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && m[5] <= 0x0f
}

/// A valid station address: not a group address, not all zeros.
fn is_station(mac: MacAddress) -> bool {
    !mac.is_multicast() && mac.0 != [0; 6]
}

/// A transparent learning bridge. See the module documentation.
pub struct Bridge {
    config: BridgeConfig,
    table: MacTable,
    ports: Vec<PortCounters>,
    counters: BridgeCounters,
    local_addresses: Vec<MacAddress>,
    has_local_unicast: bool,
    /// `config.ageing_time` in nanoseconds (at most 10^15), for the hot path.
    ageing_nanos: u64,
    /// No dynamic entry expires before this (a lower bound: refreshes only push expiry
    /// later). [`Instant::MAX`] when there is no dynamic entry.
    next_expiry: Instant,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.config)
            .field("entries", &self.table.len())
            .field("counters", &self.counters)
            .field("local_addresses", &self.local_addresses)
            .field("next_expiry", &self.next_expiry)
            .finish()
    }
}

impl Bridge {
    /// A bridge with an empty table; `InvalidConfig` if a field is out of range.
    pub fn new(config: BridgeConfig) -> Result<Self> {
        config.validate()?;
        Ok(Bridge {
            table: MacTable::new(config.max_entries, config.hash_seed),
            ports: alloc::vec![PortCounters::default(); usize::from(config.port_count)],
            counters: BridgeCounters::default(),
            local_addresses: Vec::with_capacity(MAX_LOCAL_ADDRESSES),
            has_local_unicast: false,
            ageing_nanos: u64::try_from(config.ageing_time.as_nanos()).unwrap_or(u64::MAX),
            next_expiry: Instant::MAX,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Number of ports.
    pub fn port_count(&self) -> u16 {
        self.config.port_count
    }

    /// Every port, in order.
    pub fn ports(&self) -> impl Iterator<Item = PortId> + use<> {
        (0..self.config.port_count).map(PortId)
    }

    /// The ports a frame from `ingress` is flooded to: all others.
    pub fn flood_ports(&self, ingress: PortId) -> impl Iterator<Item = PortId> + use<> {
        self.ports().filter(move |&port| port != ingress)
    }

    /// Registers one of the appliance's own addresses. Frames to a unicast one are
    /// [`Decision::Local`]; frames to a registered group address are `Local` and not
    /// forwarded (protocols the appliance terminates); once a unicast address is
    /// registered, broadcasts are [`Decision::FloodAndLocal`]. Frames *from* a local
    /// address are not learned. `InvalidAddress` for broadcast and all-zero, `Full` past
    /// [`MAX_LOCAL_ADDRESSES`]. Registering twice is harmless.
    pub fn add_local_address(&mut self, mac: MacAddress) -> Result {
        if mac == MacAddress::BROADCAST || mac.0 == [0; 6] {
            return Err(Error::InvalidAddress);
        }
        if self.local_addresses.contains(&mac) {
            return Ok(());
        }
        if self.local_addresses.len() >= MAX_LOCAL_ADDRESSES {
            return Err(Error::Full);
        }
        self.local_addresses.push(mac);
        self.has_local_unicast |= !mac.is_multicast();
        Ok(())
    }

    /// Unregisters an address; false if it was not registered.
    pub fn remove_local_address(&mut self, mac: MacAddress) -> bool {
        let before = self.local_addresses.len();
        self.local_addresses.retain(|&local| local != mac);
        self.has_local_unicast = self.local_addresses.iter().any(|m| !m.is_multicast());
        self.local_addresses.len() != before
    }

    /// The registered local addresses.
    pub fn local_addresses(&self) -> &[MacAddress] {
        &self.local_addresses
    }

    fn is_local(&self, mac: MacAddress) -> bool {
        self.local_addresses.contains(&mac)
    }

    fn vlan_key(&self, frame: &EthernetFrame<&[u8]>) -> u16 {
        if self.config.vlan_learning {
            frame.vlan_id()
        } else {
            0
        }
    }

    /// True when `slot` is dynamic and has aged out at `now`.
    fn is_expired(&self, slot: &Slot, now: Instant) -> bool {
        !slot.is_static
            && now.as_nanos().saturating_sub(slot.last_seen.as_nanos()) >= self.ageing_nanos
    }

    /// Decides what to do with `frame` (Ethernet header on, FCS off) received on
    /// `ingress` at `now`, learns its source, and counts it. See SPEC.md "Bridge" for the
    /// order of the checks.
    pub fn decide(&mut self, ingress: PortId, frame: &[u8], now: Instant) -> Decision {
        let Some(counters) = self.ports.get_mut(usize::from(ingress.0)) else {
            self.counters.unknown_port = self.counters.unknown_port.wrapping_add(1);
            return Decision::Drop(DropReason::UnknownPort);
        };
        counters.rx_frames = counters.rx_frames.wrapping_add(1);
        counters.rx_bytes = counters.rx_bytes.wrapping_add(frame.len() as u64);
        let decision = self.classify(ingress, frame, now);
        self.count(Some(ingress), decision);
        decision
    }

    /// Where a frame the appliance itself sends goes: [`Decision::Forward`] to the port
    /// its destination was learned on, else [`Decision::Flood`] meaning *every* port.
    /// Group destinations are flooded. Nothing is learned. Drops (runt, oversized) are not
    /// counted on any port.
    pub fn decide_outbound(&mut self, frame: &[u8], now: Instant) -> Decision {
        let decision = if frame.len() > self.config.max_frame_len {
            Decision::Drop(DropReason::Oversized)
        } else {
            match EthernetFrame::new_checked(frame) {
                Err(_) => Decision::Drop(DropReason::Runt),
                Ok(view) => {
                    let destination = view.destination();
                    if destination.is_multicast() {
                        Decision::Flood
                    } else {
                        match self.lookup_port(destination, self.vlan_key(&view), now) {
                            Some(port) => Decision::Forward(port),
                            None => Decision::Flood,
                        }
                    }
                }
            }
        };
        self.count(None, decision);
        decision
    }

    fn classify(&mut self, ingress: PortId, frame: &[u8], now: Instant) -> Decision {
        if frame.len() > self.config.max_frame_len {
            return Decision::Drop(DropReason::Oversized);
        }
        let Ok(view) = EthernetFrame::new_checked(frame) else {
            return Decision::Drop(DropReason::Runt);
        };
        let source = view.source();
        if !is_station(source) {
            return Decision::Drop(DropReason::InvalidSource);
        }
        let vlan = self.vlan_key(&view);
        if self.config.learning && !self.is_local(source) {
            self.learn(source, vlan, ingress, now);
        }
        let destination = view.destination();
        if destination.is_multicast() {
            if destination == MacAddress::BROADCAST {
                return if self.has_local_unicast {
                    Decision::FloodAndLocal
                } else {
                    Decision::Flood
                };
            }
            if self.is_local(destination) {
                return Decision::Local;
            }
            if is_reserved(destination) && !self.config.forward_reserved {
                return Decision::Drop(DropReason::Reserved);
            }
            return Decision::Flood;
        }
        if self.is_local(destination) {
            return Decision::Local;
        }
        match self.lookup_port(destination, vlan, now) {
            Some(port) if port == ingress => Decision::Drop(DropReason::Filtered),
            Some(port) => Decision::Forward(port),
            None => Decision::Flood,
        }
    }

    fn count(&mut self, ingress: Option<PortId>, decision: Decision) {
        let ingress_index = ingress.map(|port| usize::from(port.0));
        if let Some(counters) = ingress_index.and_then(|index| self.ports.get_mut(index)) {
            match decision {
                Decision::Forward(_) => counters.forwarded = counters.forwarded.wrapping_add(1),
                Decision::Flood => counters.flooded = counters.flooded.wrapping_add(1),
                Decision::Local => counters.local = counters.local.wrapping_add(1),
                Decision::FloodAndLocal => {
                    counters.flooded = counters.flooded.wrapping_add(1);
                    counters.local = counters.local.wrapping_add(1);
                }
                Decision::Drop(reason) => counters.dropped.count(reason),
            }
        }
        match decision {
            Decision::Forward(port) => {
                if let Some(counters) = self.ports.get_mut(usize::from(port.0)) {
                    counters.tx_frames = counters.tx_frames.wrapping_add(1);
                }
            }
            Decision::Flood | Decision::FloodAndLocal => {
                for (index, counters) in self.ports.iter_mut().enumerate() {
                    if Some(index) != ingress_index {
                        counters.tx_frames = counters.tx_frames.wrapping_add(1);
                    }
                }
            }
            Decision::Local | Decision::Drop(_) => {}
        }
    }

    /// Enters or refreshes `mac` on `vlan` behind `port`.
    fn learn(&mut self, mac: MacAddress, vlan: u16, port: PortId, now: Instant) {
        let key = table::key(mac, vlan);
        match self.table.probe(key) {
            Probe::Found(index) => {
                let ageing_nanos = self.ageing_nanos;
                let slot = self.table.slot_mut(index);
                if slot.is_static {
                    return;
                }
                if now.as_nanos().saturating_sub(slot.last_seen.as_nanos()) >= ageing_nanos {
                    // Aged out but not yet reclaimed by `poll`: a new entry.
                    self.counters.aged = self.counters.aged.wrapping_add(1);
                    self.counters.learned = self.counters.learned.wrapping_add(1);
                } else if slot.port != port.0 {
                    self.counters.moves = self.counters.moves.wrapping_add(1);
                }
                slot.port = port.0;
                slot.last_seen = now;
            }
            Probe::Vacant(index) => {
                let slot = Slot {
                    key,
                    last_seen: now,
                    port: port.0,
                    is_static: false,
                };
                let mut inserted = self.table.insert_at(index, slot);
                if !inserted && now >= self.next_expiry {
                    // Full, but some entries may have aged out since the last poll.
                    self.expire(now);
                    inserted = self.table.upsert(slot);
                }
                if inserted {
                    self.counters.learned = self.counters.learned.wrapping_add(1);
                    self.next_expiry = self.next_expiry.min(now + self.config.ageing_time);
                } else {
                    self.counters.table_full = self.counters.table_full.wrapping_add(1);
                }
            }
        }
    }

    fn lookup_port(&self, mac: MacAddress, vlan: u16, now: Instant) -> Option<PortId> {
        let slot = self.table.get(table::key(mac, vlan))?;
        (!self.is_expired(slot, now)).then_some(PortId(slot.port))
    }

    /// The live entry for `mac` on `vlan` (VLAN 0 when per-VLAN learning is off).
    pub fn lookup(&self, mac: MacAddress, vlan: u16, now: Instant) -> Option<TableEntry> {
        let vlan = if self.config.vlan_learning { vlan } else { 0 };
        let slot = self.table.get(table::key(mac, vlan))?;
        (!self.is_expired(slot, now)).then(|| TableEntry::from_slot(slot))
    }

    /// Removes entries that aged out by `now`; returns how many. Cheap when nothing is
    /// due ([`Bridge::poll_at`] is later than `now`); otherwise one pass over the table.
    pub fn poll(&mut self, now: Instant) -> usize {
        if now < self.next_expiry {
            return 0;
        }
        self.expire(now)
    }

    /// When [`Bridge::poll`] next has work: no dynamic entry expires before this.
    /// [`Instant::MAX`] when the table holds no dynamic entry. May be early (an entry was
    /// refreshed since), never late.
    pub fn poll_at(&self) -> Instant {
        self.next_expiry
    }

    fn expire(&mut self, now: Instant) -> usize {
        let ageing_time = self.config.ageing_time;
        let mut next_expiry = Instant::MAX;
        let removed = self.table.retain(|slot| {
            if slot.is_static {
                return true;
            }
            let expiry = slot.last_seen + ageing_time;
            if now >= expiry {
                return false;
            }
            next_expiry = next_expiry.min(expiry);
            true
        });
        self.next_expiry = next_expiry;
        self.counters.aged = self.counters.aged.wrapping_add(removed as u64);
        removed
    }

    /// The counters of `port`, or `None` if there is no such port.
    pub fn port_counters(&self, port: PortId) -> Option<&PortCounters> {
        self.ports.get(usize::from(port.0))
    }

    /// Bridge-wide counters.
    pub fn counters(&self) -> &BridgeCounters {
        &self.counters
    }

    /// Entries in the table (aged-out ones included until the next [`Bridge::poll`]).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Every entry, for `show bridge`, in no particular order (sort by `(vlan, mac)` to
    /// print). Call [`Bridge::poll`] first to leave out aged-out entries.
    pub fn table(&self) -> impl Iterator<Item = TableEntry> + '_ {
        self.table.iter().map(TableEntry::from_slot)
    }

    /// Adds or replaces a static entry: `mac` on `vlan` (VLAN 0 when per-VLAN learning
    /// is off) is behind `port` and is never aged or moved; `now` is its `last_seen`.
    /// `InvalidPort`, `InvalidAddress` (group or zero address, VID above 4095), `Full`.
    pub fn add_static(&mut self, mac: MacAddress, vlan: u16, port: PortId, now: Instant) -> Result {
        if usize::from(port.0) >= self.ports.len() {
            return Err(Error::InvalidPort);
        }
        if !is_station(mac) || vlan > 0x0fff {
            return Err(Error::InvalidAddress);
        }
        let vlan = if self.config.vlan_learning { vlan } else { 0 };
        let slot = Slot {
            key: table::key(mac, vlan),
            last_seen: now,
            port: port.0,
            is_static: true,
        };
        if self.table.upsert(slot) {
            Ok(())
        } else {
            Err(Error::Full)
        }
    }

    /// Removes the entry for `mac` on `vlan` (VLAN 0 when per-VLAN learning is off),
    /// static or not; false if there was none.
    pub fn remove(&mut self, mac: MacAddress, vlan: u16) -> bool {
        let vlan = if self.config.vlan_learning { vlan } else { 0 };
        self.table.remove(table::key(mac, vlan)).is_some()
    }

    /// Forgets every learned (non-static) entry, e.g. after a fail-over or a topology
    /// change; returns how many.
    pub fn flush(&mut self) -> usize {
        let removed = self.table.retain(|slot| slot.is_static);
        self.next_expiry = Instant::MAX;
        removed
    }

    /// Forgets every learned entry on `port` (its link went down); returns how many.
    pub fn flush_port(&mut self, port: PortId) -> usize {
        self.table
            .retain(|slot| slot.is_static || slot.port != port.0)
    }

    /// The live table as plain data: dynamic entries with their age at `now`, static
    /// entries with age zero.
    pub fn snapshot(&self, now: Instant) -> TableSnapshot {
        let entries = self
            .table
            .iter()
            .filter(|slot| !self.is_expired(slot, now))
            .map(|slot| SnapshotEntry {
                mac: slot.mac(),
                vlan: slot.vlan(),
                port: PortId(slot.port),
                is_static: slot.is_static,
                age: if slot.is_static {
                    Duration::ZERO
                } else {
                    now.saturating_since(slot.last_seen)
                },
            })
            .collect();
        TableSnapshot { entries }
    }

    /// Replaces the table with `snapshot`'s entries, each last seen `age` before `now`
    /// (at the origin if `now` is earlier than that). Skips entries already aged out,
    /// entries with a port, address or VID this bridge cannot hold, and entries past
    /// the table's limit; counters are left alone.
    pub fn restore(&mut self, snapshot: &TableSnapshot, now: Instant) -> RestoreSummary {
        let mut summary = RestoreSummary::default();
        self.table.clear();
        for entry in &snapshot.entries {
            if usize::from(entry.port.0) >= self.ports.len()
                || !is_station(entry.mac)
                || entry.vlan > 0x0fff
            {
                summary.invalid += 1;
                continue;
            }
            if !entry.is_static && entry.age >= self.config.ageing_time {
                summary.expired += 1;
                continue;
            }
            let age = u64::try_from(entry.age.as_nanos()).unwrap_or(u64::MAX);
            let vlan = if self.config.vlan_learning {
                entry.vlan
            } else {
                0
            };
            let slot = Slot {
                key: table::key(entry.mac, vlan),
                last_seen: Instant::from_nanos(now.as_nanos().saturating_sub(age)),
                port: entry.port.0,
                is_static: entry.is_static,
            };
            if !self.table.upsert(slot) {
                summary.refused += 1;
            }
        }
        summary.restored = self.table.len();
        // Recompute the earliest expiry; nothing has aged out (ages were checked).
        self.next_expiry = Instant::ZERO;
        self.expire(now);
        summary
    }
}
