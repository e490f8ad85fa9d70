//! The on-disk format (SPEC.md "On-disk format"): superblock, commit header, record header.
//!
//! Every structure is little-endian, fixed-layout and protected by a CRC-32C. Decoders
//! take untrusted bytes and return `None` (or a reason) on anything unexpected; they never
//! panic.

use crate::crc::{Crc32c, crc32c};

/// Bytes in one page: the unit of every write (4 KiB host sectors under `cache=none`).
pub const PAGE_SIZE: usize = 4096;
/// Page of superblock slot 0; slot 1 is the next page.
pub const SUPERBLOCK_PAGES: u64 = 2;
/// Magic of a superblock slot.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"DXREPLOG";
/// Magic of a commit header.
pub const COMMIT_MAGIC: [u8; 4] = *b"DXLC";
/// Format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of a commit header at the start of a commit's first page.
pub const COMMIT_HEADER_LEN: usize = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 32;
/// Bytes of the meaningful part of a superblock slot (the rest of its page is zero).
pub const SUPERBLOCK_LEN: usize = 128;
/// Sequences and page numbers stay below this (2^63): sums of two never overflow.
pub const LIMIT: u64 = 1 << 63;
/// Commit flag: the commit holds exactly one record, a checkpoint.
pub const COMMIT_FLAG_CHECKPOINT: u16 = 1;
/// Record flag: the record is a checkpoint (it replaces all state before it).
pub const RECORD_FLAG_CHECKPOINT: u16 = 1;

pub(crate) fn get_u16(bytes: &[u8], at: usize) -> u16 {
    let mut out = [0u8; 2];
    if let Some(src) = bytes.get(at..at + 2) {
        out.copy_from_slice(src);
    }
    u16::from_le_bytes(out)
}

pub(crate) fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut out = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        out.copy_from_slice(src);
    }
    u32::from_le_bytes(out)
}

pub(crate) fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        out.copy_from_slice(src);
    }
    u64::from_le_bytes(out)
}

pub(crate) fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Rounds `len` up to a multiple of 8.
pub(crate) fn align8(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// One superblock slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Identifies this log; every commit header repeats it.
    pub log_id: u64,
    /// Incremented on every superblock write; the valid slot with the highest wins.
    pub generation: u64,
    /// First page of the data area (2).
    pub data_start_page: u64,
    /// Pages in the data area (the ring).
    pub data_pages: u64,
    /// Logical page number where recovery starts (a checkpoint commit, or 0).
    pub start_lpn: u64,
    /// Sequence of the first record at `start_lpn`.
    pub start_sequence: u64,
    /// Number of times the log has been opened.
    pub boot: u64,
}

/// Why a superblock slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperblockProblem {
    /// No magic: the slot was never written (or is not ours).
    NoMagic,
    /// Magic present, checksum wrong.
    Checksum,
    /// Checksum right, a field out of range.
    Fields,
    /// Written by a newer format version.
    Version(u32),
}

impl Superblock {
    /// Encodes into the first [`SUPERBLOCK_LEN`] bytes of `page` (which must be that long).
    pub fn encode(&self, page: &mut [u8]) {
        page[..SUPERBLOCK_LEN].fill(0);
        page[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u32(page, 8, VERSION);
        put_u32(page, 12, PAGE_SIZE as u32);
        put_u64(page, 16, self.log_id);
        put_u64(page, 24, self.generation);
        put_u64(page, 32, self.data_start_page);
        put_u64(page, 40, self.data_pages);
        put_u64(page, 48, self.start_lpn);
        put_u64(page, 56, self.start_sequence);
        put_u64(page, 64, self.boot);
        let crc = crc32c(&page[..SUPERBLOCK_LEN - 4]);
        put_u32(page, SUPERBLOCK_LEN - 4, crc);
    }

    /// Decodes and checks a slot.
    pub fn decode(page: &[u8]) -> Result<Superblock, SuperblockProblem> {
        if page.len() < SUPERBLOCK_LEN || page[0..8] != SUPERBLOCK_MAGIC {
            return Err(SuperblockProblem::NoMagic);
        }
        if crc32c(&page[..SUPERBLOCK_LEN - 4]) != get_u32(page, SUPERBLOCK_LEN - 4) {
            return Err(SuperblockProblem::Checksum);
        }
        let version = get_u32(page, 8);
        if version != VERSION {
            return Err(SuperblockProblem::Version(version));
        }
        let superblock = Superblock {
            log_id: get_u64(page, 16),
            generation: get_u64(page, 24),
            data_start_page: get_u64(page, 32),
            data_pages: get_u64(page, 40),
            start_lpn: get_u64(page, 48),
            start_sequence: get_u64(page, 56),
            boot: get_u64(page, 64),
        };
        if get_u32(page, 12) != PAGE_SIZE as u32
            || superblock.data_start_page != SUPERBLOCK_PAGES
            || superblock.data_pages == 0
            || superblock.start_sequence == 0
            || superblock.start_sequence > LIMIT
            || superblock.start_lpn > LIMIT
            || superblock.data_pages > LIMIT
        {
            return Err(SuperblockProblem::Fields);
        }
        Ok(superblock)
    }
}

/// The header at the start of every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitHeader {
    /// Flags ([`COMMIT_FLAG_CHECKPOINT`]).
    pub flags: u16,
    /// The log's identifier.
    pub log_id: u64,
    /// Logical page number of this commit's first page.
    pub lpn: u64,
    /// Pages the commit spans (at least 1).
    pub pages: u32,
    /// Records in the commit (at least 1).
    pub record_count: u32,
    /// Sequence of the first record.
    pub first_sequence: u64,
    /// Bytes of records after the header.
    pub body_len: u32,
    /// Header checksum of the previous commit in the chain (0 for none).
    pub previous_crc: u32,
    /// Boot count of the writer.
    pub boot: u64,
}

/// Why a page does not start a valid commit header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// No magic: never written, or the middle of some other commit.
    NoMagic,
    /// Magic present, checksum wrong.
    Checksum,
    /// Checksum right but version or sizes impossible.
    Fields,
}

impl CommitHeader {
    /// Encodes into `out[..64]` and returns the header checksum.
    pub fn encode(&self, out: &mut [u8]) -> u32 {
        out[..COMMIT_HEADER_LEN].fill(0);
        out[0..4].copy_from_slice(&COMMIT_MAGIC);
        put_u16(out, 4, VERSION as u16);
        put_u16(out, 6, self.flags);
        put_u64(out, 8, self.log_id);
        put_u64(out, 16, self.lpn);
        put_u32(out, 24, self.pages);
        put_u32(out, 28, self.record_count);
        put_u64(out, 32, self.first_sequence);
        put_u32(out, 40, self.body_len);
        put_u32(out, 44, self.previous_crc);
        put_u64(out, 48, self.boot);
        let crc = crc32c(&out[..COMMIT_HEADER_LEN - 4]);
        put_u32(out, COMMIT_HEADER_LEN - 4, crc);
        crc
    }

    /// Decodes and checks a header; returns it with its checksum.
    pub fn decode(page: &[u8]) -> Result<(CommitHeader, u32), HeaderProblem> {
        if page.len() < COMMIT_HEADER_LEN || page[0..4] != COMMIT_MAGIC {
            return Err(HeaderProblem::NoMagic);
        }
        let crc = get_u32(page, COMMIT_HEADER_LEN - 4);
        if crc32c(&page[..COMMIT_HEADER_LEN - 4]) != crc {
            return Err(HeaderProblem::Checksum);
        }
        let header = CommitHeader {
            flags: get_u16(page, 6),
            log_id: get_u64(page, 8),
            lpn: get_u64(page, 16),
            pages: get_u32(page, 24),
            record_count: get_u32(page, 28),
            first_sequence: get_u64(page, 32),
            body_len: get_u32(page, 40),
            previous_crc: get_u32(page, 44),
            boot: get_u64(page, 48),
        };
        let capacity = (header.pages as u64).saturating_mul(PAGE_SIZE as u64);
        if get_u16(page, 4) != VERSION as u16
            || header.pages == 0
            || header.record_count == 0
            || (header.body_len as u64).saturating_add(COMMIT_HEADER_LEN as u64) > capacity
            || header.first_sequence == 0
            || header.first_sequence > LIMIT
            || header.lpn > LIMIT
        {
            return Err(HeaderProblem::Fields);
        }
        Ok((header, crc))
    }
}

/// A record header: what precedes each payload in a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload bytes.
    pub length: u32,
    /// Sequence number.
    pub sequence: u64,
    /// Epoch of the primary that logged it.
    pub epoch: u64,
    /// Application-chosen kind.
    pub kind: u16,
    /// Flags ([`RECORD_FLAG_CHECKPOINT`]).
    pub flags: u16,
}

impl RecordHeader {
    /// Appends header, payload and zero padding to `out`.
    pub fn encode_with(&self, payload: &[u8], out: &mut alloc::vec::Vec<u8>) {
        let start = out.len();
        out.resize(start + RECORD_HEADER_LEN, 0);
        let header = &mut out[start..];
        put_u32(header, 4, self.length);
        put_u64(header, 8, self.sequence);
        put_u64(header, 16, self.epoch);
        put_u16(header, 24, self.kind);
        put_u16(header, 26, self.flags);
        let mut crc = Crc32c::new();
        crc.update(&header[4..RECORD_HEADER_LEN]);
        crc.update(payload);
        put_u32(header, 0, crc.finish());
        out.extend_from_slice(payload);
        out.resize(start + align8(RECORD_HEADER_LEN + payload.len()), 0);
    }

    /// Decodes the record at the start of `bytes`; returns it, its payload and the bytes
    /// it occupies (with padding). `None` when truncated, checksum wrong or reserved bits set.
    pub fn decode(bytes: &[u8]) -> Option<(RecordHeader, &[u8], usize)> {
        let header_bytes = bytes.get(..RECORD_HEADER_LEN)?;
        let header = RecordHeader {
            length: get_u32(header_bytes, 4),
            sequence: get_u64(header_bytes, 8),
            epoch: get_u64(header_bytes, 16),
            kind: get_u16(header_bytes, 24),
            flags: get_u16(header_bytes, 26),
        };
        if get_u32(header_bytes, 28) != 0 || header.flags & !RECORD_FLAG_CHECKPOINT != 0 {
            return None;
        }
        let end = RECORD_HEADER_LEN.checked_add(header.length as usize)?;
        let payload = bytes.get(RECORD_HEADER_LEN..end)?;
        let mut crc = Crc32c::new();
        crc.update(&header_bytes[4..]);
        crc.update(payload);
        if crc.finish() != get_u32(header_bytes, 0) {
            return None;
        }
        Some((header, payload, align8(end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn superblock_round_trip_and_damage() {
        let superblock = Superblock {
            log_id: 7,
            generation: 3,
            data_start_page: 2,
            data_pages: 100,
            start_lpn: 42,
            start_sequence: 9,
            boot: 5,
        };
        let mut page = vec![0u8; PAGE_SIZE];
        superblock.encode(&mut page);
        assert_eq!(Superblock::decode(&page), Ok(superblock));
        page[20] ^= 1;
        assert_eq!(Superblock::decode(&page), Err(SuperblockProblem::Checksum));
        assert_eq!(
            Superblock::decode(&[0u8; 10]),
            Err(SuperblockProblem::NoMagic)
        );
        let mut page = vec![0u8; PAGE_SIZE];
        Superblock {
            data_pages: 0,
            ..superblock
        }
        .encode(&mut page);
        assert_eq!(Superblock::decode(&page), Err(SuperblockProblem::Fields));
    }

    #[test]
    fn commit_header_round_trip_and_damage() {
        let header = CommitHeader {
            flags: COMMIT_FLAG_CHECKPOINT,
            log_id: 1,
            lpn: 2,
            pages: 3,
            record_count: 1,
            first_sequence: 4,
            body_len: 100,
            previous_crc: 5,
            boot: 6,
        };
        let mut page = vec![0u8; PAGE_SIZE];
        let crc = header.encode(&mut page);
        assert_eq!(CommitHeader::decode(&page), Ok((header, crc)));
        for byte in 0..COMMIT_HEADER_LEN {
            let mut bad = page.clone();
            bad[byte] ^= 0x10;
            assert!(CommitHeader::decode(&bad).is_err(), "byte {byte}");
        }
        let mut page = vec![0u8; PAGE_SIZE];
        CommitHeader {
            body_len: 3 * 4096,
            ..header
        }
        .encode(&mut page);
        assert_eq!(CommitHeader::decode(&page), Err(HeaderProblem::Fields));
    }

    #[test]
    fn record_round_trip_and_damage() {
        let header = RecordHeader {
            length: 5,
            sequence: 10,
            epoch: 2,
            kind: 0x101,
            flags: 0,
        };
        let mut out = Vec::new();
        header.encode_with(b"hello", &mut out);
        assert_eq!(out.len(), 40);
        let (decoded, payload, used) = RecordHeader::decode(&out).unwrap();
        assert_eq!((decoded, payload, used), (header, &b"hello"[..], 40));
        for byte in 0..37 {
            let mut bad = out.clone();
            bad[byte] ^= 0x01;
            assert!(RecordHeader::decode(&bad).is_none(), "byte {byte}");
        }
        assert!(RecordHeader::decode(&out[..36]).is_none());
        let mut huge = out.clone();
        put_u32(&mut huge, 4, u32::MAX);
        assert!(RecordHeader::decode(&huge).is_none());
    }
}
