//! Typed records for the first state the appliance logs: the bridge's configuration and
//! its MAC table (SPEC.md "Bridge records").
//!
//! Hand-written fixed little-endian layouts, not postcard: they are tiny, their bytes are
//! pinned in the spec, and the crate needs no serde. Kinds 0x0100..=0x01FF are the
//! bridge's.
//!
//! The service logs a [`BridgeRecord`] on every change ([`log_record`]), writes a
//! [`BridgeState`] snapshot as a checkpoint when [`crate::Log::checkpoint_wanted`], and
//! rebuilds its state on recovery and on the standby with [`BridgeState::apply`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use duplex_hal::MacAddress;

use crate::format::{get_u16, get_u32, put_u16, put_u32};
use crate::{Error, Log, Record, Result, Sequence};

/// Kind of a [`BridgeRecord::Config`] record.
pub const KIND_CONFIG: u16 = 0x0100;
/// Kind of a [`BridgeRecord::Learned`] record.
pub const KIND_LEARNED: u16 = 0x0101;
/// Kind of a [`BridgeRecord::Forgotten`] record.
pub const KIND_FORGOTTEN: u16 = 0x0102;
/// Kind of a checkpoint holding a whole [`BridgeState`].
pub const KIND_SNAPSHOT: u16 = 0x0103;

const CONFIG_LEN: usize = 12;
const ENTRY_LEN: usize = 12;
const FORGOTTEN_LEN: usize = 8;
const SNAPSHOT_HEADER_LEN: usize = 8;
const LAYOUT_VERSION: u8 = 1;

/// The bridge's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeConfig {
    /// Number of bridge ports.
    pub port_count: u8,
    /// Learn source addresses.
    pub learning: bool,
    /// Seconds after which a learned entry is forgotten.
    pub aging_seconds: u32,
    /// MAC table size limit.
    pub max_entries: u32,
}

/// One MAC table entry: where frames to `mac` on `vlan` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacEntry {
    /// The station's address.
    pub mac: MacAddress,
    /// VLAN (0 when untagged).
    pub vlan: u16,
    /// Bridge port the station is behind.
    pub port: u16,
    /// Configured by the operator, never aged out.
    pub is_static: bool,
}

/// A change to the bridge's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeRecord {
    /// The configuration was set.
    Config(BridgeConfig),
    /// An entry was learned or moved.
    Learned(MacEntry),
    /// An entry was removed (aged out, flushed, port down).
    Forgotten {
        /// The station's address.
        mac: MacAddress,
        /// Its VLAN.
        vlan: u16,
    },
}

/// Largest encoded [`BridgeRecord`].
pub const MAX_RECORD_LEN: usize = 12;

fn encode_config(config: &BridgeConfig, out: &mut [u8]) {
    out[..CONFIG_LEN].fill(0);
    out[0] = LAYOUT_VERSION;
    out[1] = config.port_count;
    out[2] = u8::from(config.learning);
    put_u32(out, 4, config.aging_seconds);
    put_u32(out, 8, config.max_entries);
}

fn decode_config(bytes: &[u8]) -> Result<BridgeConfig> {
    if bytes.len() != CONFIG_LEN || bytes[0] != LAYOUT_VERSION || bytes[2] > 1 || bytes[3] != 0 {
        return Err(Error::Malformed);
    }
    Ok(BridgeConfig {
        port_count: bytes[1],
        learning: bytes[2] == 1,
        aging_seconds: get_u32(bytes, 4),
        max_entries: get_u32(bytes, 8),
    })
}

fn encode_entry(entry: &MacEntry, out: &mut [u8]) {
    out[..6].copy_from_slice(&entry.mac.0);
    put_u16(out, 6, entry.vlan);
    put_u16(out, 8, entry.port);
    out[10] = u8::from(entry.is_static);
    out[11] = 0;
}

fn decode_entry(bytes: &[u8]) -> Result<MacEntry> {
    if bytes.len() != ENTRY_LEN || bytes[10] > 1 || bytes[11] != 0 {
        return Err(Error::Malformed);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[..6]);
    Ok(MacEntry {
        mac: MacAddress(mac),
        vlan: get_u16(bytes, 6),
        port: get_u16(bytes, 8),
        is_static: bytes[10] == 1,
    })
}

impl BridgeRecord {
    /// The record kind to log it under.
    pub fn kind(&self) -> u16 {
        match self {
            BridgeRecord::Config(_) => KIND_CONFIG,
            BridgeRecord::Learned(_) => KIND_LEARNED,
            BridgeRecord::Forgotten { .. } => KIND_FORGOTTEN,
        }
    }

    /// Encodes into `out` and returns the length (at most [`MAX_RECORD_LEN`]).
    pub fn encode(&self, out: &mut [u8; MAX_RECORD_LEN]) -> usize {
        match self {
            BridgeRecord::Config(config) => {
                encode_config(config, out);
                CONFIG_LEN
            }
            BridgeRecord::Learned(entry) => {
                encode_entry(entry, out);
                ENTRY_LEN
            }
            BridgeRecord::Forgotten { mac, vlan } => {
                out[..6].copy_from_slice(&mac.0);
                put_u16(out, 6, *vlan);
                FORGOTTEN_LEN
            }
        }
    }

    /// Decodes a record of `kind`; [`Error::Malformed`] for other kinds or bad bytes.
    pub fn decode(kind: u16, payload: &[u8]) -> Result<BridgeRecord> {
        match kind {
            KIND_CONFIG => decode_config(payload).map(BridgeRecord::Config),
            KIND_LEARNED => decode_entry(payload).map(BridgeRecord::Learned),
            KIND_FORGOTTEN if payload.len() == FORGOTTEN_LEN => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&payload[..6]);
                Ok(BridgeRecord::Forgotten {
                    mac: MacAddress(mac),
                    vlan: get_u16(payload, 6),
                })
            }
            _ => Err(Error::Malformed),
        }
    }
}

/// Logs `record` with `log_async` (no allocation).
pub fn log_record(log: &mut Log, record: &BridgeRecord) -> Result<Sequence> {
    let mut bytes = [0u8; MAX_RECORD_LEN];
    let len = record.encode(&mut bytes);
    log.log_async(record.kind(), &bytes[..len])
}

/// The bridge's logged state: configuration and MAC table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeState {
    /// The configuration.
    pub config: BridgeConfig,
    /// The MAC table, by (VLAN, address).
    pub table: BTreeMap<(u16, MacAddress), MacEntry>,
}

impl BridgeState {
    /// Applies one change.
    pub fn apply_record(&mut self, record: &BridgeRecord) {
        match record {
            BridgeRecord::Config(config) => self.config = *config,
            BridgeRecord::Learned(entry) => {
                self.table.insert((entry.vlan, entry.mac), *entry);
            }
            BridgeRecord::Forgotten { mac, vlan } => {
                self.table.remove(&(*vlan, *mac));
            }
        }
    }

    /// Applies a replayed or replicated record: a [`KIND_SNAPSHOT`] checkpoint replaces
    /// the state, a bridge record changes it, other kinds are ignored (`Ok(false)`).
    pub fn apply(&mut self, record: &Record<'_>) -> Result<bool> {
        if record.checkpoint {
            if record.kind != KIND_SNAPSHOT {
                return Ok(false);
            }
            *self = BridgeState::from_snapshot(record.payload)?;
            return Ok(true);
        }
        if !(KIND_CONFIG..=KIND_FORGOTTEN).contains(&record.kind) {
            return Ok(false);
        }
        self.apply_record(&BridgeRecord::decode(record.kind, record.payload)?);
        Ok(true)
    }

    /// Encodes the whole state as a checkpoint payload (kind [`KIND_SNAPSHOT`]).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out =
            alloc::vec![0u8; SNAPSHOT_HEADER_LEN + CONFIG_LEN + self.table.len() * ENTRY_LEN];
        out[0] = LAYOUT_VERSION;
        put_u32(&mut out, 4, self.table.len() as u32);
        encode_config(&self.config, &mut out[SNAPSHOT_HEADER_LEN..]);
        let entries = &mut out[SNAPSHOT_HEADER_LEN + CONFIG_LEN..];
        for (chunk, entry) in entries.chunks_exact_mut(ENTRY_LEN).zip(self.table.values()) {
            encode_entry(entry, chunk);
        }
        out
    }

    /// Decodes a snapshot.
    pub fn from_snapshot(bytes: &[u8]) -> Result<BridgeState> {
        if bytes.len() < SNAPSHOT_HEADER_LEN + CONFIG_LEN || bytes[0] != LAYOUT_VERSION {
            return Err(Error::Malformed);
        }
        let count = get_u32(bytes, 4) as usize;
        let entries = &bytes[SNAPSHOT_HEADER_LEN + CONFIG_LEN..];
        if bytes[1..4] != [0, 0, 0] || count.checked_mul(ENTRY_LEN) != Some(entries.len()) {
            return Err(Error::Malformed);
        }
        let config = decode_config(&bytes[SNAPSHOT_HEADER_LEN..SNAPSHOT_HEADER_LEN + CONFIG_LEN])?;
        let mut table = BTreeMap::new();
        for chunk in entries.chunks_exact(ENTRY_LEN) {
            let entry = decode_entry(chunk)?;
            table.insert((entry.vlan, entry.mac), entry);
        }
        Ok(BridgeState { config, table })
    }

    /// Logs the snapshot as a checkpoint.
    pub fn checkpoint(&self, log: &mut Log) -> Result<Sequence> {
        log.checkpoint(KIND_SNAPSHOT, self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(last: u8, port: u16) -> MacEntry {
        MacEntry {
            mac: MacAddress([2, 0, 0, 0, 0, last]),
            vlan: 10,
            port,
            is_static: last.is_multiple_of(2),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let records = [
            BridgeRecord::Config(BridgeConfig {
                port_count: 2,
                learning: true,
                aging_seconds: 300,
                max_entries: 4096,
            }),
            BridgeRecord::Learned(entry(1, 1)),
            BridgeRecord::Forgotten {
                mac: MacAddress([1, 2, 3, 4, 5, 6]),
                vlan: 7,
            },
        ];
        for record in records {
            let mut bytes = [0u8; MAX_RECORD_LEN];
            let len = record.encode(&mut bytes);
            assert_eq!(
                BridgeRecord::decode(record.kind(), &bytes[..len]),
                Ok(record)
            );
            assert!(BridgeRecord::decode(record.kind(), &bytes[..len - 1]).is_err());
            assert!(BridgeRecord::decode(0x0999, &bytes[..len]).is_err());
        }
        assert_eq!(
            BridgeRecord::decode(KIND_CONFIG, &[9; CONFIG_LEN]),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let mut state = BridgeState::default();
        state.apply_record(&BridgeRecord::Config(BridgeConfig {
            port_count: 4,
            learning: false,
            aging_seconds: 60,
            max_entries: 10,
        }));
        for i in 0..5 {
            state.apply_record(&BridgeRecord::Learned(entry(i, u16::from(i))));
        }
        state.apply_record(&BridgeRecord::Forgotten {
            mac: entry(3, 0).mac,
            vlan: 10,
        });
        assert_eq!(state.table.len(), 4);
        let snapshot = state.snapshot();
        assert_eq!(BridgeState::from_snapshot(&snapshot), Ok(state.clone()));
        for cut in 0..snapshot.len() {
            assert!(BridgeState::from_snapshot(&snapshot[..cut]).is_err() || cut == snapshot.len());
        }
        let record = Record {
            sequence: 1,
            epoch: 1,
            kind: KIND_SNAPSHOT,
            checkpoint: true,
            payload: &snapshot,
        };
        let mut other = BridgeState::default();
        assert_eq!(other.apply(&record), Ok(true));
        assert_eq!(other, state);
    }
}
