//! The MAC table as plain data for the replicated log (SPEC.md "Table snapshot").
//!
//! Ages rather than timestamps: the peer's clock has another origin, so an entry travels
//! as "seen this long ago" and is re-anchored to the receiver's `now` on restore.

use alloc::vec::Vec;
use core::time::Duration;

use duplex_hal::MacAddress;

use super::PortId;
use crate::{Error, Result};

/// Field offsets (SPEC.md "Table snapshot"). All integers little-endian.
mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const RESERVED: usize = 1;
    pub const ENTRY_LEN: Range<usize> = 2..4;
    pub const COUNT: Range<usize> = 4..8;
    pub const HEADER_LEN: usize = 8;

    /// Within one entry.
    pub const MAC: Range<usize> = 0..6;
    pub const VLAN: Range<usize> = 6..8;
    pub const PORT: Range<usize> = 8..10;
    pub const FLAGS: usize = 10;
    pub const ENTRY_RESERVED: usize = 11;
    pub const AGE_MILLIS: Range<usize> = 12..16;
    pub const ENTRY_LEN_VALUE: usize = 16;
}

/// Entry flag: configured by the operator, never aged.
const FLAG_STATIC: u8 = 1;

/// One entry of a [`TableSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The station's address (unicast).
    pub mac: MacAddress,
    /// VLAN (0..=4095; 0 for untagged, and for all entries without per-VLAN learning).
    pub vlan: u16,
    /// The port the station is behind.
    pub port: PortId,
    /// Configured by the operator, never aged.
    pub is_static: bool,
    /// Time since the station was last seen when the snapshot was taken (millisecond
    /// resolution on the wire; zero for static entries).
    pub age: Duration,
}

/// The bridge's MAC table as plain data: what [`super::Bridge::snapshot`] returns and
/// [`super::Bridge::restore`] takes, with a fixed byte layout for the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSnapshot {
    /// The entries, in no particular order.
    pub entries: Vec<SnapshotEntry>,
}

impl TableSnapshot {
    /// The layout version this crate writes and reads.
    pub const VERSION: u8 = 1;
    /// Length of the header.
    pub const HEADER_LEN: usize = field::HEADER_LEN;
    /// Length of one entry.
    pub const ENTRY_LEN: usize = field::ENTRY_LEN_VALUE;

    /// Bytes [`TableSnapshot::encode_into`] writes (saturating; a table never gets near).
    pub fn encoded_len(&self) -> usize {
        self.entries
            .len()
            .saturating_mul(Self::ENTRY_LEN)
            .saturating_add(Self::HEADER_LEN)
    }

    /// Writes the snapshot into `out`; returns the length. `BufferTooSmall` if `out` is
    /// shorter than [`TableSnapshot::encoded_len`], `Malformed` with more than `u32::MAX`
    /// entries.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize> {
        let len = self.encoded_len();
        let count = u32::try_from(self.entries.len()).map_err(|_| Error::Malformed)?;
        let out = out.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        let (header, body) = out.split_at_mut(Self::HEADER_LEN);
        header[field::VERSION] = Self::VERSION;
        header[field::RESERVED] = 0;
        header[field::ENTRY_LEN].copy_from_slice(&(Self::ENTRY_LEN as u16).to_le_bytes());
        header[field::COUNT].copy_from_slice(&count.to_le_bytes());
        for (bytes, entry) in body.chunks_exact_mut(Self::ENTRY_LEN).zip(&self.entries) {
            bytes[field::MAC].copy_from_slice(&entry.mac.0);
            bytes[field::VLAN].copy_from_slice(&entry.vlan.to_le_bytes());
            bytes[field::PORT].copy_from_slice(&entry.port.0.to_le_bytes());
            bytes[field::FLAGS] = if entry.is_static { FLAG_STATIC } else { 0 };
            bytes[field::ENTRY_RESERVED] = 0;
            let millis = u32::try_from(entry.age.as_millis()).unwrap_or(u32::MAX);
            bytes[field::AGE_MILLIS].copy_from_slice(&millis.to_le_bytes());
        }
        Ok(len)
    }

    /// The snapshot as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = alloc::vec![0u8; self.encoded_len()];
        // The buffer has exactly the length needed; only a count beyond u32 can fail,
        // and then the header-only prefix is all there is to say.
        match self.encode_into(&mut out) {
            Ok(len) => out.truncate(len),
            Err(_) => out.clear(),
        }
        out
    }

    /// Reads a snapshot: `Truncated` if shorter than the header or than the count says,
    /// `Unsupported` for another version, `Malformed` for a wrong entry length, trailing
    /// bytes, set reserved bits, a VID above 4095 or a group address. Ports are checked
    /// against the bridge by [`super::Bridge::restore`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        if bytes[field::VERSION] != Self::VERSION {
            return Err(Error::Unsupported);
        }
        let entry_len = u16::from_le_bytes([
            bytes[field::ENTRY_LEN.start],
            bytes[field::ENTRY_LEN.start + 1],
        ]);
        if bytes[field::RESERVED] != 0 || usize::from(entry_len) != Self::ENTRY_LEN {
            return Err(Error::Malformed);
        }
        let mut count = [0u8; 4];
        count.copy_from_slice(&bytes[field::COUNT]);
        let count = usize::try_from(u32::from_le_bytes(count)).map_err(|_| Error::Malformed)?;
        let body = &bytes[Self::HEADER_LEN..];
        let body_len = count.checked_mul(Self::ENTRY_LEN).ok_or(Error::Malformed)?;
        if body.len() < body_len {
            return Err(Error::Truncated);
        }
        if body.len() > body_len {
            return Err(Error::Malformed);
        }
        let mut entries = Vec::with_capacity(count);
        for chunk in body.chunks_exact(Self::ENTRY_LEN) {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&chunk[field::MAC]);
            let mac = MacAddress(mac);
            let vlan = u16::from_le_bytes([chunk[field::VLAN.start], chunk[field::VLAN.start + 1]]);
            let port = u16::from_le_bytes([chunk[field::PORT.start], chunk[field::PORT.start + 1]]);
            let flags = chunk[field::FLAGS];
            let mut age = [0u8; 4];
            age.copy_from_slice(&chunk[field::AGE_MILLIS]);
            if flags & !FLAG_STATIC != 0
                || chunk[field::ENTRY_RESERVED] != 0
                || vlan > 0x0fff
                || mac.is_multicast()
            {
                return Err(Error::Malformed);
            }
            entries.push(SnapshotEntry {
                mac,
                vlan,
                port: PortId(port),
                is_static: flags & FLAG_STATIC != 0,
                age: Duration::from_millis(u64::from(u32::from_le_bytes(age))),
            });
        }
        Ok(TableSnapshot { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TableSnapshot {
        TableSnapshot {
            entries: alloc::vec![
                SnapshotEntry {
                    mac: MacAddress([0x02, 0, 0, 0, 0, 1]),
                    vlan: 0,
                    port: PortId(0),
                    is_static: false,
                    age: Duration::from_millis(1_500),
                },
                SnapshotEntry {
                    mac: MacAddress([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
                    vlan: 42,
                    port: PortId(1),
                    is_static: true,
                    age: Duration::ZERO,
                },
            ],
        }
    }

    #[test]
    fn layout_is_pinned() {
        let bytes = sample().encode();
        assert_eq!(
            bytes,
            [
                1, 0, 16, 0, 2, 0, 0, 0, // header: version 1, entry length 16, count 2
                0x02, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xdc, 0x05, 0, 0, // age 1500 ms
                0x52, 0x54, 0, 0xab, 0xcd, 0xef, 42, 0, 1, 0, 1, 0, 0, 0, 0, 0,
            ]
        );
        assert_eq!(TableSnapshot::decode(&bytes), Ok(sample()));
    }

    #[test]
    fn empty_round_trip() {
        let empty = TableSnapshot::default();
        let bytes = empty.encode();
        assert_eq!(bytes.len(), 8);
        assert_eq!(TableSnapshot::decode(&bytes), Ok(empty));
    }

    #[test]
    fn rejects_bad_bytes() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert_eq!(
                TableSnapshot::decode(&bytes[..cut]),
                Err(Error::Truncated),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(TableSnapshot::decode(&longer), Err(Error::Malformed));
        let mutate = |at: usize, value: u8| {
            let mut b = bytes.clone();
            b[at] = value;
            TableSnapshot::decode(&b)
        };
        assert_eq!(mutate(0, 2), Err(Error::Unsupported));
        assert_eq!(mutate(1, 1), Err(Error::Malformed));
        assert_eq!(mutate(2, 12), Err(Error::Malformed));
        assert_eq!(mutate(4, 0xff), Err(Error::Truncated));
        assert_eq!(mutate(8, 0x01), Err(Error::Malformed)); // group address
        assert_eq!(mutate(8 + 7, 0x10), Err(Error::Malformed)); // VID 4096
        assert_eq!(mutate(8 + 10, 2), Err(Error::Malformed)); // unknown flag
        assert_eq!(mutate(8 + 11, 1), Err(Error::Malformed)); // reserved
    }

    #[test]
    fn buffer_too_small_and_age_saturates() {
        let snapshot = sample();
        let mut out = [0u8; 39];
        assert_eq!(snapshot.encode_into(&mut out), Err(Error::BufferTooSmall));
        let old = TableSnapshot {
            entries: alloc::vec![SnapshotEntry {
                age: Duration::from_secs(100 * 86_400),
                ..snapshot.entries[0]
            }],
        };
        let decoded = TableSnapshot::decode(&old.encode()).unwrap();
        assert_eq!(
            decoded.entries[0].age,
            Duration::from_millis(u64::from(u32::MAX))
        );
    }
}
