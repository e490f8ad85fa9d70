//! The log engine: ring, disk writer, superblock, checkpoints, roles.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use duplex_hal::{BlockDevice, Instant};

use crate::format::{
    COMMIT_FLAG_CHECKPOINT, COMMIT_HEADER_LEN, CommitHeader, PAGE_SIZE, RECORD_FLAG_CHECKPOINT,
    RECORD_HEADER_LEN, RecordHeader, SUPERBLOCK_PAGES, Superblock, SuperblockProblem, align8,
};
use crate::recovery::{self, RecoveryReport};
use crate::replication::{Receiver, Sender};
use crate::ring::{Meta, Ring};
use crate::{Config, Epoch, Error, PeerAck, Record, Result, Sequence};

/// Where the log lives on the device, in pages of 4 KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub blocks_per_page: u64,
    pub data_pages: u64,
}

impl Geometry {
    /// Checks the device; returns blocks per page and whole pages on it.
    fn of_device<D: BlockDevice>(device: &D) -> Result<(u64, u64)> {
        let block_size = device.block_size();
        if block_size == 0 || block_size > PAGE_SIZE || !PAGE_SIZE.is_multiple_of(block_size) {
            return Err(Error::UnsupportedDevice);
        }
        let blocks_per_page = (PAGE_SIZE / block_size) as u64;
        Ok((blocks_per_page, device.block_count() / blocks_per_page))
    }

    /// First device block of logical page `lpn`.
    pub fn block_of(&self, lpn: u64) -> u64 {
        (SUPERBLOCK_PAGES + lpn % self.data_pages) * self.blocks_per_page
    }

    /// Pages from `lpn` to the end of the ring.
    fn pages_to_wrap(&self, lpn: u64) -> usize {
        usize::try_from(self.data_pages - lpn % self.data_pages).unwrap_or(usize::MAX)
    }

    /// Reads whole pages starting at logical page `lpn`, wrapping around the ring.
    pub fn read<D: BlockDevice>(&self, device: &mut D, lpn: u64, buffer: &mut [u8]) -> Result {
        let mut lpn = lpn;
        let mut done = 0;
        while done < buffer.len() {
            let pages = ((buffer.len() - done) / PAGE_SIZE).min(self.pages_to_wrap(lpn));
            let end = done + pages * PAGE_SIZE;
            device.read(self.block_of(lpn), &mut buffer[done..end])?;
            done = end;
            lpn += pages as u64;
        }
        Ok(())
    }

    /// Writes whole pages starting at `lpn`, wrapping, at most `max_write` bytes a write.
    fn write<D: BlockDevice>(
        &self,
        device: &mut D,
        lpn: u64,
        buffer: &[u8],
        max_write: usize,
    ) -> Result {
        let mut lpn = lpn;
        let mut done = 0;
        while done < buffer.len() {
            let pages = ((buffer.len() - done) / PAGE_SIZE)
                .min(self.pages_to_wrap(lpn))
                .min(max_write / PAGE_SIZE);
            let end = done + pages * PAGE_SIZE;
            device.write(self.block_of(lpn), &buffer[done..end])?;
            done = end;
            lpn += pages as u64;
        }
        Ok(())
    }
}

/// A node's role in replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Logs records (`log_async`) and, with a peer attached, streams them to it.
    Primary,
    /// Receives records from the primary (`receive_frame`), writes them, acknowledges.
    Replica,
}

/// A handle on a record logged with [`Log::log_sync`]: poll [`Log::is_durable`] with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(Sequence);

impl Ticket {
    /// The record's sequence.
    pub fn sequence(self) -> Sequence {
        self.0
    }
}

/// Counters since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records accepted by `log_async` / `log_sync`.
    pub records_logged: u64,
    /// Checkpoints accepted by `checkpoint`.
    pub checkpoints_logged: u64,
    /// Calls refused with [`Error::Full`].
    pub ring_full: u64,
    /// Commits written and flushed.
    pub commits: u64,
    /// Pages written by commits.
    pub pages_written: u64,
    /// Flushes of the device (commits and superblocks).
    pub flushes: u64,
    /// Superblock writes.
    pub superblock_writes: u64,
    /// Records not written because a later checkpoint in the same batch covers them.
    pub records_superseded: u64,
    /// Replication frames sent.
    pub frames_sent: u64,
    /// Replication frames received (any kind, before checks).
    pub frames_received: u64,
    /// Retransmission timeouts and fast retransmissions.
    pub retransmissions: u64,
    /// Records received from the primary (standby).
    pub records_received: u64,
    /// Frames refused because their epoch is older than the accepted one.
    pub frames_refused: u64,
    /// Frames ignored: another session, or nothing in them continues the log.
    pub frames_ignored: u64,
}

/// Replication state, for the console and the Duplex state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// This node's role.
    pub role: Role,
    /// Primary: epoch of new records. Replica: the highest epoch accepted.
    pub epoch: Epoch,
    /// Primary: a peer is attached (tickets wait for it).
    pub peer_attached: bool,
    /// Primary: the peer's position is known and it is being fed.
    pub peer_in_sync: bool,
    /// Primary: the peer cannot continue from what is retained; a checkpoint is wanted.
    pub peer_needs_checkpoint: bool,
    /// Primary: every record up to this one is held by the peer.
    pub peer_received: Sequence,
    /// Primary: every record up to this one is on the peer's disk.
    pub peer_durable: Sequence,
    /// Primary: a peer reported a newer epoch; this node should step down.
    pub superseded: bool,
    /// The replication session (the standby's, echoed by the primary).
    pub session: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    generation: u64,
    start_lpn: u64,
}

/// The replicated state log of one node. See the crate documentation.
pub struct Log {
    pub(crate) config: Config,
    geometry: Geometry,
    log_id: u64,
    pub(crate) boot: u64,
    slots: [Option<Slot>; 2],
    head_lpn: u64,
    previous_crc: u32,
    /// Superblock update owed after a checkpoint commit: start page and sequence.
    pending_start: Option<(u64, Sequence)>,
    pub(crate) ring: Ring,
    pub(crate) next_sequence: Sequence,
    /// Epoch given to records logged here.
    pub(crate) epoch: Epoch,
    /// Sequence and epoch of the last record logged or received.
    pub(crate) last: (Sequence, Epoch),
    /// Every record up to this one is on the local disk.
    pub(crate) durable: Sequence,
    /// The record just before the ring's front, when known.
    pub(crate) before_front: Option<(Sequence, Epoch)>,
    /// Checkpoints in the ring not yet written.
    pub(crate) unwritten_checkpoints: usize,
    log_full: bool,
    pub(crate) role: Role,
    pub(crate) sender: Sender,
    pub(crate) receiver: Receiver,
    commit_buffer: Vec<u8>,
    pub(crate) frame_buffer: Vec<u8>,
    pub(crate) stats: Stats,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("log_id", &self.log_id)
            .field("boot", &self.boot)
            .field("role", &self.role)
            .field("head_page", &self.head_lpn)
            .field("next_sequence", &self.next_sequence)
            .field("durable", &self.durable)
            .field("pending_records", &self.ring.len())
            .finish_non_exhaustive()
    }
}

fn read_superblocks<D: BlockDevice>(
    device: &mut D,
    blocks_per_page: u64,
) -> Result<[core::result::Result<Superblock, SuperblockProblem>; 2]> {
    let mut page = vec![0u8; PAGE_SIZE];
    let mut read = |slot: u64| -> Result<_> {
        device.read(slot * blocks_per_page, &mut page)?;
        Ok(Superblock::decode(&page))
    };
    Ok([read(0)?, read(1)?])
}

impl Log {
    /// Writes an empty log over the whole device and opens it. `log_id` must differ from
    /// any log formatted on this device before (use a boot counter, MAC and time).
    pub fn format<D: BlockDevice>(device: &mut D, log_id: u64, config: Config) -> Result<Log> {
        config.validate()?;
        let (blocks_per_page, pages) = Geometry::of_device(device)?;
        let data_pages = pages
            .checked_sub(SUPERBLOCK_PAGES)
            .ok_or(Error::UnsupportedDevice)?;
        if data_pages < 8 {
            return Err(Error::UnsupportedDevice);
        }
        let mut page = vec![0u8; PAGE_SIZE];
        device.write(SUPERBLOCK_PAGES * blocks_per_page, &page)?;
        for slot in 0..2u64 {
            let superblock = Superblock {
                log_id,
                generation: slot + 1,
                data_start_page: SUPERBLOCK_PAGES,
                data_pages,
                start_lpn: 0,
                start_sequence: 1,
                boot: 0,
            };
            superblock.encode(&mut page);
            device.write(slot * blocks_per_page, &page)?;
        }
        device.flush()?;
        let (log, _) = Log::open(device, config, |_| {})?;
        Ok(log)
    }

    /// `log_recover`: reads the superblock, replays the latest checkpoint and every later
    /// valid record into `replay` (a checkpoint means "replace all state"), stops at the
    /// first invalid commit and says where in the report. Then writes the superblock (boot
    /// count, start at the latest checkpoint) and returns the log ready to append, as a
    /// standalone primary in the last epoch it saw.
    pub fn open<D: BlockDevice, F: FnMut(Record<'_>)>(
        device: &mut D,
        config: Config,
        replay: F,
    ) -> Result<(Log, RecoveryReport)> {
        config.validate()?;
        let (blocks_per_page, pages) = Geometry::of_device(device)?;
        let found = read_superblocks(device, blocks_per_page)?;
        let fits = |superblock: &Superblock| {
            superblock
                .data_pages
                .checked_add(SUPERBLOCK_PAGES)
                .is_some_and(|end| end <= pages)
        };
        let mut slots: [Option<Superblock>; 2] =
            [found[0].ok().filter(fits), found[1].ok().filter(fits)];
        let newest_index = match slots {
            [Some(a), Some(b)] => usize::from(b.generation > a.generation),
            [Some(_), None] => 0,
            [None, Some(_)] => 1,
            [None, None] => {
                return Err(match found {
                    [Err(SuperblockProblem::Version(version)), _]
                    | [_, Err(SuperblockProblem::Version(version))] => {
                        Error::UnsupportedVersion(version)
                    }
                    [
                        Err(SuperblockProblem::NoMagic),
                        Err(SuperblockProblem::NoMagic),
                    ] => Error::NotFormatted,
                    _ => Error::CorruptSuperblock,
                });
            }
        };
        let Some(newest) = slots[newest_index] else {
            return Err(Error::CorruptSuperblock);
        };
        // A second copy from another log or geometry does not count.
        let other = 1 - newest_index;
        if let Some(older) = slots[other]
            && (older.log_id != newest.log_id
                || older.data_pages != newest.data_pages
                || older.start_lpn > newest.start_lpn)
        {
            slots[other] = None;
        }
        let geometry = Geometry {
            blocks_per_page,
            data_pages: newest.data_pages,
        };
        let mut commit_buffer = Vec::new();
        let mut scan = recovery::scan(device, &geometry, &newest, &mut commit_buffer, replay)?;
        scan.report.superblock_copies = slots.iter().flatten().count() as u8;
        let report = &scan.report;
        let last = if report.last_sequence == 0 {
            (newest.start_sequence - 1, 0)
        } else {
            (report.last_sequence, report.last_epoch)
        };
        let mut log = Log {
            config,
            geometry,
            log_id: newest.log_id,
            boot: report.boot,
            slots: slots.map(|slot| {
                slot.map(|s| Slot {
                    generation: s.generation,
                    start_lpn: s.start_lpn,
                })
            }),
            head_lpn: report.end_page,
            previous_crc: scan.last_header_crc,
            pending_start: None,
            ring: Ring::new(config.ring_bytes, config.ring_records),
            next_sequence: last.0 + 1,
            epoch: last.1,
            last,
            durable: last.0,
            before_front: Some(last),
            unwritten_checkpoints: 0,
            log_full: false,
            role: Role::Primary,
            sender: Sender::new(&config),
            receiver: Receiver::new(),
            commit_buffer,
            frame_buffer: vec![0; config.frame_len],
            stats: Stats::default(),
        };
        let (start_lpn, start_sequence) = scan
            .last_checkpoint
            .unwrap_or((newest.start_lpn, newest.start_sequence));
        log.write_superblock(device, start_lpn, start_sequence)?;
        Ok((log, scan.report))
    }

    fn write_superblock<D: BlockDevice>(
        &mut self,
        device: &mut D,
        start_lpn: u64,
        start_sequence: Sequence,
    ) -> Result {
        // Write over the older (or damaged) copy; the newer one stays valid meanwhile.
        let target = match self.slots {
            [None, _] => 0,
            [Some(_), None] => 1,
            [Some(a), Some(b)] => usize::from(b.generation < a.generation),
        };
        let generation = self
            .slots
            .iter()
            .flatten()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0)
            + 1;
        let superblock = Superblock {
            log_id: self.log_id,
            generation,
            data_start_page: SUPERBLOCK_PAGES,
            data_pages: self.geometry.data_pages,
            start_lpn,
            start_sequence,
            boot: self.boot,
        };
        let mut page = vec![0u8; PAGE_SIZE];
        superblock.encode(&mut page);
        device.write(target as u64 * self.geometry.blocks_per_page, &page)?;
        device.flush()?;
        self.slots[target] = Some(Slot {
            generation,
            start_lpn,
        });
        self.stats.superblock_writes += 1;
        self.stats.flushes += 1;
        Ok(())
    }

    /// The oldest page still needed: the start of the older superblock copy (so that
    /// either copy leads to a complete log).
    fn reclaim_lpn(&self) -> u64 {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.start_lpn)
            .min()
            .unwrap_or(self.head_lpn)
    }

    fn newest_start_lpn(&self) -> u64 {
        self.slots
            .iter()
            .flatten()
            .max_by_key(|s| s.generation)
            .map_or(self.head_lpn, |s| s.start_lpn)
    }

    /// `log_async`: copies the record into the ring and returns its sequence at once.
    /// [`Error::Full`] when the ring has no room (nothing was logged: poll and retry);
    /// [`Error::TooLarge`] above `max_record_len`; [`Error::NotPrimary`] on a replica.
    pub fn log_async(&mut self, kind: u16, payload: &[u8]) -> Result<Sequence> {
        if self.role != Role::Primary {
            return Err(Error::NotPrimary);
        }
        if payload.len() > self.config.max_record_len {
            return Err(Error::TooLarge);
        }
        let sequence = self.next_sequence;
        let meta = Meta {
            sequence,
            epoch: self.epoch,
            kind,
            checkpoint: false,
        };
        if !self.ring.push(meta, payload) {
            self.stats.ring_full += 1;
            return Err(Error::Full);
        }
        self.appended(sequence);
        self.stats.records_logged += 1;
        Ok(sequence)
    }

    /// `log_sync`: like `log_async`; the ticket completes ([`Log::is_durable`]) once the
    /// record is on the local disk and, with a peer attached, acknowledged by the peer.
    pub fn log_sync(&mut self, kind: u16, payload: &[u8]) -> Result<Ticket> {
        self.log_async(kind, payload).map(Ticket)
    }

    /// Logs a checkpoint: a snapshot of the service state that covers every record before
    /// it. Once it is on disk, recovery starts from it and older pages are reclaimed. The
    /// payload is taken as is (no copy into the ring).
    pub fn checkpoint(&mut self, kind: u16, payload: Vec<u8>) -> Result<Sequence> {
        if self.role != Role::Primary {
            return Err(Error::NotPrimary);
        }
        let pages = (COMMIT_HEADER_LEN + RECORD_HEADER_LEN + payload.len()).div_ceil(PAGE_SIZE);
        if payload.len() > self.config.max_checkpoint_len
            || pages as u64 > self.geometry.data_pages / 4
        {
            return Err(Error::TooLarge);
        }
        let sequence = self.next_sequence;
        let meta = Meta {
            sequence,
            epoch: self.epoch,
            kind,
            checkpoint: true,
        };
        if !self.ring.push_owned(meta, payload) {
            self.stats.ring_full += 1;
            return Err(Error::Full);
        }
        self.appended(sequence);
        self.unwritten_checkpoints += 1;
        self.log_full = false;
        self.stats.checkpoints_logged += 1;
        self.sender.checkpoint_logged(sequence);
        Ok(sequence)
    }

    pub(crate) fn appended(&mut self, sequence: Sequence) {
        self.last = (sequence, self.epoch);
        self.next_sequence = sequence + 1;
    }

    /// True once the ticket's record is durable as [`Log::log_sync`] promises. A ticket
    /// logged while a peer is attached also waits for the peer (or for `detach_peer`).
    pub fn is_durable(&self, ticket: Ticket) -> bool {
        let sequence = ticket.0;
        if sequence > self.durable {
            return false;
        }
        if self.role != Role::Primary || !self.sender.attached {
            return true;
        }
        match self.config.peer_ack {
            PeerAck::Received => self.sender.peer_received() >= sequence,
            PeerAck::Durable => self.sender.peer_durable() >= sequence,
        }
    }

    /// Every record up to this sequence is on the local disk (0: none).
    pub fn durable_sequence(&self) -> Sequence {
        self.durable
    }

    /// Every record up to this sequence is held by the peer (0: none or no peer in sync).
    pub fn acked_sequence(&self) -> Sequence {
        self.sender.peer_received()
    }

    /// Every record up to this sequence is on the peer's disk (0: none or no peer in sync).
    pub fn peer_durable_sequence(&self) -> Sequence {
        self.sender.peer_durable()
    }

    /// The sequence the next record will get.
    pub fn next_sequence(&self) -> Sequence {
        self.next_sequence
    }

    /// Logical page where the next commit goes (grows forever; the device page is this
    /// modulo the data area).
    pub fn head_page(&self) -> u64 {
        self.head_lpn
    }

    /// Pages in the data area.
    pub fn data_pages(&self) -> u64 {
        self.geometry.data_pages
    }

    /// Pages in use (from the oldest page still needed to the head).
    pub fn pages_used(&self) -> u64 {
        self.head_lpn - self.reclaim_lpn()
    }

    /// Records in the ring (not yet durable, or not yet acknowledged by the peer).
    pub fn pending_records(&self) -> usize {
        self.ring.len()
    }

    /// Bytes of the ring in use.
    pub fn ring_bytes_used(&self) -> usize {
        self.ring.bytes_used()
    }

    /// The log's identifier.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// This boot's number.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The service should call [`Log::checkpoint`] soon: the current segment has grown to a
    /// quarter of the device, the device is full, the peer needs one to catch up, or the
    /// peer's own disk asks for one.
    pub fn checkpoint_wanted(&self) -> bool {
        self.unwritten_checkpoints == 0
            && (self.disk_wants_checkpoint() || self.sender.needs_checkpoint())
    }

    pub(crate) fn is_log_full(&self) -> bool {
        self.log_full
    }

    /// A checkpoint arrived: the writer may try again (it can use the reserve).
    pub(crate) fn clear_log_full(&mut self) {
        self.log_full = false;
    }

    /// This node's disk wants a checkpoint: the current segment reached a quarter of the
    /// data area, or the log is full. A standby tells its primary (§5.5).
    pub(crate) fn disk_wants_checkpoint(&self) -> bool {
        self.log_full || (self.head_lpn - self.newest_start_lpn()) * 4 >= self.geometry.data_pages
    }

    /// The disk writer: writes the records waiting in the ring as one commit (pages of
    /// 4 KiB, at most `commit_bytes` per device write), flushes, and after a checkpoint
    /// commit writes the superblock. Call whenever [`Log::poll_at`] says. On an error
    /// nothing is lost from the ring; the next call writes the same commit again.
    pub fn poll<D: BlockDevice>(&mut self, device: &mut D, now: Instant) -> Result {
        if let Some((lpn, sequence)) = self.pending_start {
            self.write_superblock(device, lpn, sequence)?;
            self.pending_start = None;
        }
        let written = self.ring.written();
        let total = self.ring.len();
        if written < total {
            self.write_commit(device, written, total)?;
            if self.role == Role::Replica {
                self.receiver.ack_due_at(now);
            }
        }
        self.release();
        Ok(())
    }

    fn write_commit<D: BlockDevice>(
        &mut self,
        device: &mut D,
        written: usize,
        total: usize,
    ) -> Result {
        // A checkpoint covers every record before it: write the latest one first.
        let mut first = written;
        if self.unwritten_checkpoints > 0 {
            for index in written..total {
                if self.ring.get(index).is_some_and(|entry| entry.checkpoint) {
                    first = index;
                }
            }
        }
        let Log {
            ring,
            commit_buffer,
            config,
            ..
        } = self;
        commit_buffer.clear();
        commit_buffer.resize(COMMIT_HEADER_LEN, 0);
        let mut end = first;
        let mut checkpoint = false;
        while let Some(entry) = ring.get(end) {
            let size = align8(RECORD_HEADER_LEN + entry.len());
            if end > first && (entry.checkpoint || commit_buffer.len() + size > config.commit_bytes)
            {
                break;
            }
            let header = RecordHeader {
                length: entry.len() as u32,
                sequence: entry.sequence,
                epoch: entry.epoch,
                kind: entry.kind,
                flags: if entry.checkpoint {
                    RECORD_FLAG_CHECKPOINT
                } else {
                    0
                },
            };
            header.encode_with(ring.payload(entry), commit_buffer);
            end += 1;
            if entry.checkpoint {
                checkpoint = true;
                break;
            }
        }
        let Some(first_entry) = ring.get(first) else {
            return Ok(());
        };
        let first_sequence = first_entry.sequence;
        let last_sequence = ring
            .get(end - 1)
            .map_or(first_sequence, |entry| entry.sequence);
        let body_len = commit_buffer.len() - COMMIT_HEADER_LEN;
        let pages = commit_buffer.len().div_ceil(PAGE_SIZE);
        commit_buffer.resize(pages * PAGE_SIZE, 0);
        // Ordinary commits leave room for the largest checkpoint, so that a full log can
        // always be relieved by one.
        let reserve = if checkpoint {
            0
        } else {
            self.geometry.data_pages / 4
        };
        let limit = self.reclaim_lpn() + self.geometry.data_pages - reserve;
        if self.head_lpn + pages as u64 > limit {
            self.log_full = true;
            return Err(Error::LogFull);
        }
        let header = CommitHeader {
            flags: if checkpoint {
                COMMIT_FLAG_CHECKPOINT
            } else {
                0
            },
            log_id: self.log_id,
            lpn: self.head_lpn,
            pages: pages as u32,
            record_count: (end - first) as u32,
            first_sequence,
            body_len: body_len as u32,
            previous_crc: self.previous_crc,
            boot: self.boot,
        };
        let header_crc = header.encode(&mut self.commit_buffer[..COMMIT_HEADER_LEN]);
        self.geometry.write(
            device,
            self.head_lpn,
            &self.commit_buffer,
            self.config.commit_bytes,
        )?;
        device.flush()?;
        // Durable.
        let lpn = self.head_lpn;
        self.head_lpn += pages as u64;
        self.previous_crc = header_crc;
        self.ring.mark_written(end - written);
        self.durable = last_sequence;
        self.log_full = false;
        self.stats.commits += 1;
        self.stats.flushes += 1;
        self.stats.pages_written += pages as u64;
        self.stats.records_superseded += (first - written) as u64;
        if checkpoint {
            self.unwritten_checkpoints = self.unwritten_checkpoints.saturating_sub(1);
            self.pending_start = Some((lpn, first_sequence));
            self.write_superblock(device, lpn, first_sequence)?;
            self.pending_start = None;
        }
        Ok(())
    }

    /// Drops the written entries the peer no longer needs.
    pub(crate) fn release(&mut self) {
        let limit = match self.role {
            Role::Primary => self.sender.retention_limit(),
            Role::Replica => Sequence::MAX,
        };
        while let Some(front) = self.ring.front() {
            if self.ring.written() == 0 || front.sequence >= limit {
                break;
            }
            let kept = (front.sequence, front.epoch);
            self.ring.pop_front();
            self.before_front = Some(kept);
        }
    }

    /// The epoch of record `sequence` in this node's history, if still known.
    pub(crate) fn epoch_of(&self, sequence: Sequence) -> Option<Epoch> {
        if let Some((known, epoch)) = self.before_front
            && known == sequence
        {
            return Some(epoch);
        }
        let index = self.ring.find(sequence)?;
        self.ring.get(index).map(|entry| entry.epoch)
    }

    /// When to call `poll` or `transmit` next: `Some(t <= now)` means now, `None` means
    /// only when something happens (a record logged, a frame received).
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        let disk_work = self.pending_start.is_some()
            || (self.ring.written() < self.ring.len() && !self.log_full);
        let disk = disk_work.then_some(now);
        let network = self.replication_poll_at(now);
        match (disk, network) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }
}
