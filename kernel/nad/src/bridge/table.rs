//! The MAC table: a fixed-capacity open-addressing hash table with linear probing and
//! backward-shift deletion (no tombstones), keyed by (VLAN, MAC) packed into a `u64`.
//!
//! The slot array is allocated once (a power of two, at least twice the entry limit), so
//! the load factor stays at or below one half, a probe always ends at an empty slot, and
//! the forwarding path never allocates. The hash is a 64-bit mixer keyed by a seed from
//! the configuration, so that a station cannot choose addresses that collide without
//! knowing the seed (not a cryptographic guarantee; the bound on entries and the load
//! factor cap the damage either way).

use alloc::vec;
use alloc::vec::Vec;

use duplex_hal::{Instant, MacAddress};

/// Marks an occupied slot's key; an empty slot's key is 0.
const OCCUPIED: u64 = 1 << 63;
const EMPTY: u64 = 0;

/// The packed key of `mac` on `vlan` (VID masked to 12 bits).
pub(super) fn key(mac: MacAddress, vlan: u16) -> u64 {
    let m = mac.0;
    let mac48 = u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]);
    OCCUPIED | (u64::from(vlan & 0x0fff) << 48) | mac48
}

/// One slot: a table entry when `key != EMPTY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub key: u64,
    pub last_seen: Instant,
    pub port: u16,
    pub is_static: bool,
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: EMPTY,
        last_seen: Instant::ZERO,
        port: 0,
        is_static: false,
    };

    pub fn mac(&self) -> MacAddress {
        let b = self.key.to_be_bytes();
        MacAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn vlan(&self) -> u16 {
        ((self.key >> 48) & 0x0fff) as u16
    }
}

/// Where a key is, or where it would go.
pub(super) enum Probe {
    /// The key is in this slot.
    Found(usize),
    /// The key is absent; this is the empty slot that ends its probe sequence.
    Vacant(usize),
}

pub(super) struct MacTable {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
    max_entries: usize,
    seed: u64,
}

impl MacTable {
    /// A table for at most `max_entries` entries (the caller bounds it).
    pub fn new(max_entries: usize, seed: u64) -> Self {
        let slots = max_entries.saturating_mul(2).next_power_of_two().max(8);
        MacTable {
            slots: vec![Slot::EMPTY; slots],
            mask: slots - 1,
            len: 0,
            max_entries,
            seed,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.max_entries
    }

    /// Index of the first slot of `key`'s probe sequence.
    fn home(&self, key: u64) -> usize {
        // The splitmix64 finaliser: a bijection on u64 that spreads every input bit.
        let mut x = key ^ self.seed;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x as usize) & self.mask
    }

    /// Finds `key` or the empty slot where it would go. The load factor is at most one
    /// half, so there is always an empty slot; the walk is bounded by the capacity anyway.
    pub fn probe(&self, key: u64) -> Probe {
        let mut index = self.home(key);
        for _ in 0..self.slots.len() {
            let slot_key = self.slots[index].key;
            if slot_key == key {
                return Probe::Found(index);
            }
            if slot_key == EMPTY {
                return Probe::Vacant(index);
            }
            index = (index + 1) & self.mask;
        }
        // Unreachable with the load bound; report "vacant nowhere" as the home slot, which
        // `insert_at` refuses because it is occupied.
        Probe::Vacant(self.home(key))
    }

    pub fn get(&self, key: u64) -> Option<&Slot> {
        match self.probe(key) {
            Probe::Found(index) => Some(&self.slots[index]),
            Probe::Vacant(_) => None,
        }
    }

    pub fn slot_mut(&mut self, index: usize) -> &mut Slot {
        &mut self.slots[index]
    }

    /// Puts `slot` into the vacant slot `index` that [`MacTable::probe`] returned.
    /// False when the table is full.
    pub fn insert_at(&mut self, index: usize, slot: Slot) -> bool {
        if self.is_full() || self.slots[index].key != EMPTY {
            return false;
        }
        self.slots[index] = slot;
        self.len += 1;
        true
    }

    /// Inserts or overwrites. False when `slot.key` is new and the table is full.
    pub fn upsert(&mut self, slot: Slot) -> bool {
        match self.probe(slot.key) {
            Probe::Found(index) => {
                self.slots[index] = slot;
                true
            }
            Probe::Vacant(index) => self.insert_at(index, slot),
        }
    }

    /// Empties slot `index` and shifts later members of its cluster back so that every
    /// remaining key stays reachable from its home without tombstones.
    fn remove_at(&mut self, index: usize) {
        let mut hole = index;
        let mut next = index;
        loop {
            next = (next + 1) & self.mask;
            let key = self.slots[next].key;
            if key == EMPTY {
                break;
            }
            let home = self.home(key);
            // The entry at `next` may fill the hole if the hole lies on its probe path,
            // i.e. it is at least as far from its home as from the hole.
            if next.wrapping_sub(home) & self.mask >= next.wrapping_sub(hole) & self.mask {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
        }
        self.slots[hole] = Slot::EMPTY;
        self.len -= 1;
    }

    pub fn remove(&mut self, key: u64) -> Option<Slot> {
        match self.probe(key) {
            Probe::Found(index) => {
                let slot = self.slots[index];
                self.remove_at(index);
                Some(slot)
            }
            Probe::Vacant(_) => None,
        }
    }

    /// Removes every entry for which `keep` is false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&Slot) -> bool) -> usize {
        let mut removed = 0;
        let mut index = 0;
        while index < self.slots.len() {
            let slot = self.slots[index];
            if slot.key != EMPTY && !keep(&slot) {
                // The shift may pull an unexamined entry into `index`: look again.
                self.remove_at(index);
                removed += 1;
                continue;
            }
            index += 1;
        }
        removed
    }

    pub fn clear(&mut self) {
        self.slots.fill(Slot::EMPTY);
        self.len = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.slots.iter().filter(|slot| slot.key != EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: u32) -> Slot {
        let b = n.to_be_bytes();
        Slot {
            key: key(MacAddress([2, 0, b[0], b[1], b[2], b[3]]), (n % 7) as u16),
            last_seen: Instant::from_nanos(u64::from(n)),
            port: (n % 3) as u16,
            is_static: false,
        }
    }

    #[test]
    fn key_round_trip() {
        let mac = MacAddress([0xfe, 1, 2, 3, 4, 0xff]);
        let s = Slot {
            key: key(mac, 0xffff),
            ..Slot::EMPTY
        };
        assert_eq!(s.mac(), mac);
        assert_eq!(s.vlan(), 0x0fff);
        assert_ne!(key(MacAddress([0; 6]), 0), EMPTY);
    }

    /// Inserts and removes in a deterministic shuffle against a reference model; a tiny
    /// table (16 slots) makes clusters and wrap-around common.
    #[test]
    fn matches_a_model_under_churn() {
        for seed in 0..20u64 {
            let mut table = MacTable::new(8, seed);
            let mut model = std::collections::BTreeMap::new();
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for _ in 0..2_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let n = (state % 24) as u32;
                let s = slot(n);
                if state & 0x100 == 0 {
                    let inserted = table.upsert(s);
                    if model.contains_key(&s.key) || model.len() < 8 {
                        assert!(inserted);
                        model.insert(s.key, s);
                    } else {
                        assert!(!inserted);
                    }
                } else {
                    assert_eq!(table.remove(s.key), model.remove(&s.key));
                }
                assert_eq!(table.len(), model.len());
                for (k, v) in &model {
                    assert_eq!(table.get(*k), Some(v));
                }
            }
            let removed = table.retain(|s| s.port != 1);
            let before = model.len();
            model.retain(|_, s| s.port != 1);
            assert_eq!(removed, before - model.len());
            assert_eq!(table.len(), model.len());
            for (k, v) in &model {
                assert_eq!(table.get(*k), Some(v));
            }
        }
    }
}
