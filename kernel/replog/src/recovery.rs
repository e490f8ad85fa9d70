//! Recovery: walk the commit chain from the superblock's start, replay every record of
//! every valid commit, stop at the first page that does not continue the chain, and say
//! why (SPEC.md "Recovery").

use alloc::vec::Vec;
use core::fmt;

use duplex_hal::BlockDevice;

use crate::format::{
    COMMIT_FLAG_CHECKPOINT, COMMIT_HEADER_LEN, CommitHeader, HeaderProblem, PAGE_SIZE,
    RECORD_FLAG_CHECKPOINT, RecordHeader, Superblock,
};
use crate::log::Geometry;
use crate::{Epoch, Record, Result, Sequence};

/// What `Log::open` found: the console prints it (`Display`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log's identifier.
    pub log_id: u64,
    /// This boot's number (how many times the log has been opened, this time included).
    pub boot: u64,
    /// Generation of the superblock copy used.
    pub superblock_generation: u64,
    /// Superblock copies that passed their checks (1 or 2).
    pub superblock_copies: u8,
    /// Logical page where replay started.
    pub start_page: u64,
    /// Logical page after the last valid commit (where the next commit goes).
    pub end_page: u64,
    /// Valid commits replayed.
    pub commits: u64,
    /// Records replayed (checkpoints included).
    pub records: u64,
    /// Sequence of the first record replayed (0 when none).
    pub first_sequence: Sequence,
    /// Sequence of the last record replayed (0 when none).
    pub last_sequence: Sequence,
    /// Epoch of the last record replayed (0 when none).
    pub last_epoch: Epoch,
    /// Sequence of the latest checkpoint replayed, if any.
    pub checkpoint: Option<Sequence>,
    /// How the log ended.
    pub end: LogEnd,
}

/// How the walk along the commit chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// The next page holds no commit of this log at this position: never written,
    /// written in an earlier lap or an older history (the normal end), or a commit whose
    /// first block never reached the disk or whose magic is destroyed.
    NoCommit,
    /// The next page starts a commit of this log that fails its checks: a torn write or
    /// corruption. Everything before it was replayed; the commit and all after it were not.
    Damaged {
        /// Logical page of the damaged commit.
        page: u64,
        /// First device block of that page.
        block: u64,
        /// What failed.
        damage: Damage,
        /// A valid commit of this log follows the damaged one: the damage is in the middle
        /// of the log (corruption), and records after it were lost.
        valid_commits_follow: bool,
    },
}

/// What failed in a damaged commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The commit header's checksum is wrong.
    HeaderChecksum,
    /// The header's checksum is right but its fields are impossible.
    HeaderFields,
    /// A record's checksum is wrong or it runs past the commit (torn write).
    RecordChecksum {
        /// The sequence the record should have.
        sequence: Sequence,
    },
    /// A record's checksum is right but it does not fit the chain (sequence, epoch, flags).
    RecordFields {
        /// The sequence the record should have.
        sequence: Sequence,
    },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::HeaderChecksum => f.write_str("commit header checksum mismatch"),
            Damage::HeaderFields => f.write_str("commit header fields out of range"),
            Damage::RecordChecksum { sequence } => {
                write!(f, "record {sequence} checksum mismatch or truncated")
            }
            Damage::RecordFields { sequence } => {
                write!(f, "record {sequence} does not continue the log")
            }
        }
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replog: boot {}, ", self.boot)?;
        if self.records == 0 {
            f.write_str("log empty")?;
        } else {
            write!(
                f,
                "recovered {} records (sequence {}..={}, epoch {}) from {} commits",
                self.records,
                self.first_sequence,
                self.last_sequence,
                self.last_epoch,
                self.commits
            )?;
            if let Some(checkpoint) = self.checkpoint {
                write!(f, ", latest checkpoint {checkpoint}")?;
            }
        }
        write!(f, "; log pages {}..{}", self.start_page, self.end_page)?;
        if self.superblock_copies < 2 {
            f.write_str("; one superblock copy damaged")?;
        }
        match self.end {
            LogEnd::NoCommit => write!(f, "; end of log at page {}", self.end_page),
            LogEnd::Damaged {
                page,
                block,
                damage,
                valid_commits_follow,
            } => {
                write!(
                    f,
                    "; STOPPED at log page {page} (device block {block}): {damage}; \
                     everything before it recovered"
                )?;
                if valid_commits_follow {
                    f.write_str("; valid commits follow it: records after it are LOST")
                } else {
                    f.write_str(" (torn or corrupt tail)")
                }
            }
        }
    }
}

/// Where the walk left the log.
pub(crate) struct Scan {
    pub report: RecoveryReport,
    /// Header checksum of the last valid commit (0 when none).
    pub last_header_crc: u32,
    /// Logical page and sequence of the latest checkpoint commit replayed.
    pub last_checkpoint: Option<(u64, Sequence)>,
}

/// The previous record of the chain: sequence, epoch, header checksum of its commit.
#[derive(Clone, Copy)]
struct Previous {
    sequence: Sequence,
    epoch: Epoch,
    header_crc: u32,
}

pub(crate) fn scan<D: BlockDevice, F: FnMut(Record<'_>)>(
    device: &mut D,
    geometry: &Geometry,
    superblock: &Superblock,
    buffer: &mut Vec<u8>,
    mut replay: F,
) -> Result<Scan> {
    let start = superblock.start_lpn;
    let mut lpn = start;
    let mut previous: Option<Previous> = None;
    let mut scan = Scan {
        report: RecoveryReport {
            log_id: superblock.log_id,
            boot: superblock.boot.saturating_add(1),
            superblock_generation: superblock.generation,
            superblock_copies: 0,
            start_page: start,
            end_page: start,
            commits: 0,
            records: 0,
            first_sequence: 0,
            last_sequence: 0,
            last_epoch: 0,
            checkpoint: None,
            end: LogEnd::NoCommit,
        },
        last_header_crc: 0,
        last_checkpoint: None,
    };
    loop {
        let used = lpn - start;
        if used >= geometry.data_pages {
            break;
        }
        buffer.resize(PAGE_SIZE, 0);
        geometry.read(device, lpn, &mut buffer[..PAGE_SIZE])?;
        let (header, header_crc) = match CommitHeader::decode(buffer) {
            Ok(found) => found,
            Err(HeaderProblem::NoMagic) => break,
            Err(HeaderProblem::Checksum) => {
                scan.report.end = damaged(geometry, lpn, Damage::HeaderChecksum, false);
                break;
            }
            Err(HeaderProblem::Fields) => {
                scan.report.end = damaged(geometry, lpn, Damage::HeaderFields, false);
                break;
            }
        };
        if header.log_id != superblock.log_id || header.lpn != lpn {
            break; // a page of an earlier lap or an earlier format
        }
        if let Some(previous) = previous
            && header.previous_crc != previous.header_crc
        {
            break; // a commit of an older history at the right place: not ours
        }
        let pages = u64::from(header.pages);
        if pages > geometry.data_pages - used {
            scan.report.end = damaged(geometry, lpn, Damage::HeaderFields, false);
            break;
        }
        let len = header.pages as usize * PAGE_SIZE;
        buffer.resize(len, 0);
        geometry.read(device, lpn + 1, &mut buffer[PAGE_SIZE..len])?;
        let body = &buffer[COMMIT_HEADER_LEN..COMMIT_HEADER_LEN + header.body_len as usize];
        if let Err(damage) = check_commit(&header, body, previous, superblock.start_sequence) {
            let follow = valid_commit_at(device, geometry, superblock.log_id, lpn + pages)?;
            scan.report.end = damaged(geometry, lpn, damage, follow);
            break;
        }
        // The whole commit is valid: replay it.
        let mut offset = 0;
        let mut last = None;
        for _ in 0..header.record_count {
            let Some((record, payload, used)) = RecordHeader::decode(&body[offset..]) else {
                break; // checked above
            };
            offset += used;
            let checkpoint = record.flags & RECORD_FLAG_CHECKPOINT != 0;
            replay(Record {
                sequence: record.sequence,
                epoch: record.epoch,
                kind: record.kind,
                checkpoint,
                payload,
            });
            if scan.report.records == 0 {
                scan.report.first_sequence = record.sequence;
            }
            scan.report.records += 1;
            if checkpoint {
                scan.report.checkpoint = Some(record.sequence);
                scan.last_checkpoint = Some((lpn, record.sequence));
            }
            last = Some((record.sequence, record.epoch));
        }
        if let Some((sequence, epoch)) = last {
            previous = Some(Previous {
                sequence,
                epoch,
                header_crc,
            });
            scan.report.last_sequence = sequence;
            scan.report.last_epoch = epoch;
        }
        scan.report.commits += 1;
        scan.last_header_crc = header_crc;
        lpn += pages;
    }
    scan.report.end_page = lpn;
    Ok(scan)
}

fn damaged(geometry: &Geometry, page: u64, damage: Damage, follow: bool) -> LogEnd {
    LogEnd::Damaged {
        page,
        block: geometry.block_of(page),
        damage,
        valid_commits_follow: follow,
    }
}

/// Checks every record of a commit before any is replayed (a commit is all or nothing).
fn check_commit(
    header: &CommitHeader,
    body: &[u8],
    previous: Option<Previous>,
    start_sequence: Sequence,
) -> core::result::Result<(), Damage> {
    let checkpoint_commit = header.flags & COMMIT_FLAG_CHECKPOINT != 0;
    if header.flags & !COMMIT_FLAG_CHECKPOINT != 0
        || (checkpoint_commit && header.record_count != 1)
    {
        return Err(Damage::HeaderFields);
    }
    let mut offset = 0;
    let mut before: Option<(Sequence, Epoch)> = previous.map(|p| (p.sequence, p.epoch));
    for index in 0..u64::from(header.record_count) {
        let sequence = header.first_sequence.saturating_add(index);
        let Some((record, _, used)) = body.get(offset..).and_then(RecordHeader::decode) else {
            return Err(Damage::RecordChecksum { sequence });
        };
        offset += used;
        let checkpoint = record.flags & RECORD_FLAG_CHECKPOINT != 0;
        let continues = match before {
            // The first commit after the start: the superblock names its sequence.
            None => record.sequence == start_sequence,
            // A checkpoint may move to any later (epoch, sequence): a standby reset.
            Some(last) if checkpoint => (record.epoch, record.sequence) > (last.1, last.0),
            Some(last) => Some(record.sequence) == last.0.checked_add(1) && record.epoch >= last.1,
        };
        if record.sequence != sequence || checkpoint != checkpoint_commit || !continues {
            return Err(Damage::RecordFields { sequence });
        }
        before = Some((record.sequence, record.epoch));
    }
    if offset != body.len() {
        let sequence = header
            .first_sequence
            .saturating_add(u64::from(header.record_count));
        return Err(Damage::RecordFields { sequence });
    }
    Ok(())
}

/// True when a valid commit header of this log sits at `lpn`.
fn valid_commit_at<D: BlockDevice>(
    device: &mut D,
    geometry: &Geometry,
    log_id: u64,
    lpn: u64,
) -> Result<bool> {
    let mut page = alloc::vec![0u8; PAGE_SIZE];
    geometry.read(device, lpn, &mut page)?;
    Ok(
        matches!(CommitHeader::decode(&page), Ok((header, _)) if header.log_id == log_id && header.lpn == lpn),
    )
}
