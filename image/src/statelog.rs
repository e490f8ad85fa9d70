//! The replicated state log service (the paper's `log_async`, `log_sync`, `log_notify`,
//! `log_recover`) on the first virtio-blk disk, replicated to the peer over Ethernet.
//!
//! The portable engine is `duplex_replog::Log`; this module wires it to the machine:
//!
//! - **Device.** The first virtio-blk function found on PCI ([`VirtioBlk`], FLUSH
//!   negotiated), wrapped in [`Disk`] which times every write and flush. `log=off` leaves the
//!   disk alone, `log=format` starts a fresh log on it.
//! - **Recovery** (`log_recover`) at boot, before the Duplex node starts: the log is opened,
//!   its records replayed into [`AppState`], the report printed on the console (`replog:
//!   boot N, ...`), and the bridge's MAC table restored from it. An unformatted disk is
//!   formatted; a damaged or foreign superblock is left alone (the log stays off) unless
//!   `log=format` is given.
//! - **Roles.** The Duplex node decides: Master and QuasiMaster are the log's primary,
//!   every other state a replica; a standalone box is always primary. On becoming primary
//!   the log takes an epoch above every log epoch this node has seen, its own and its
//!   peer's, so that histories written by different primaries never mix; a primary told
//!   by its peer that a newer epoch exists (`superseded`) takes a newer one still. A primary
//!   attaches its peer while the Duplex node hears it alive *and* the peer's replication
//!   frames arrive (within [`PEER_SILENCE`]), and detaches it when the node has called it
//!   dead for [`DETACH_GRACE`] or its frames stop; `log_sync` waits for an attached
//!   peer's disk.
//! - **Transport.** Replication frames travel in Ethernet frames of EtherType `0x88B6` to
//!   the group address `03:44:50:52:GG:GG` on the dedicated link port (the third NIC), or on
//!   the LAN port when there is none, or on the first bridged port whose link is up when
//!   that one's is down; they are taken from any port. Each carries a 16-byte tag after the replog frame:
//!   the heartbeat key's BLAKE3 keyed hash over the EtherType (2 bytes, big-endian) and the
//!   replog frame (replog SPEC §5.1). Frames without a valid tag are dropped and counted.
//!   The dataplane queues received frames ([`crate::dataplane::Dataplane::replication_in`]);
//!   the service takes up to 8 of them per main-loop pass and sends up to 4 (tagging or
//!   checking a full frame costs about 50 us under emulation), and comes back at once
//!   while more wait.
//! - **State.** The first state logged is the bridge: its configuration, and every change
//!   of its MAC table (found by comparing the table with what was logged, every
//!   [`TABLE_CHECK`] when the bridge's counters moved and every [`TABLE_FULL_CHECK`] in any
//!   case), plus operator notes (`log write` / `log sync`) and benchmark records. On the
//!   standby `log_notify` applies each replicated record to the same [`AppState`]; at a
//!   takeover the bridge's table is restored from it, so the new Master starts with the old
//!   Master's table (entries count as fresh) instead of an empty one. A checkpoint (the whole
//!   [`AppState`]) is logged whenever the log asks for one.
//!
//! Record kinds of the image (the bridge's are replog SPEC §6):
//!
//! | kind | record | payload |
//! | --- | --- | --- |
//! | 0x0F00 | snapshot (checkpoint) | version `1` u8, 3 zero bytes, bridge snapshot length u32, the bridge snapshot (replog SPEC §6 kind 0x0103 layout), notes dropped u64, note count u32, notes: sequence u64, epoch u64, length u16, UTF-8 bytes |
//! | 0x0F01 | operator note | UTF-8 text, at most 200 bytes |
//! | 0x0F02 | benchmark record | anything; replay only counts it |
//!
//! All integers little-endian.
//!
//! **The main loop never waits for the disk.** `duplex_hal::BlockDevice` is synchronous and
//! a write plus flush takes about a millisecond here (host `fdatasync`), so [`Disk`] runs
//! each commit asynchronously through the driver's `start_write` / `start_flush` /
//! `poll_request` and answers replog's `flush` with `Busy` until the commit is durable;
//! meanwhile new records wait in a staging queue (a copy, like the ring) and a replica
//! leaves received frames queued, so that replog builds the identical commit again and
//! takes it as durable (see [`Disk`]). `show log` reports the longest pass of the service
//! (its stall on the main loop) and where the time went. The price: records staged
//! during a commit reach replog's ring, and so the peer, only after that commit, and a
//! replica takes no frame while its own commit runs. A replog `poll` that commits only up
//! to a given sequence would lift both (the ring could take records at any time).
//!
//! Long console lines of the service (the `LOG BENCH` result) are written a few bytes per
//! pass: the emulated UART costs about 5 us a byte, and a whole line at once would hold
//! the loop for milliseconds.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;

use duplex_arch::timer;
use duplex_core::{Key, State};
use duplex_drivers::pci::{self, PciFunction};
use duplex_drivers::virtio::blk::{VirtioBlk, WriteCache};
use duplex_hal::{BlockDevice, Instant, MacAddress};
use duplex_mgmt::json::JsonObject;
use duplex_mgmt::markers;
use duplex_mgmt::options::{BootOptions, LogChoice};
use duplex_nad::{Bridge, PortId, SnapshotEntry, TableSnapshot};
use duplex_replog::bridge::{self as records, BridgeRecord, BridgeState, MacEntry};
use duplex_replog::{Config, Error, Log, Record, RecoveryReport, Role, wire};

use crate::dataplane::Dataplane;
use crate::net::Port;
use crate::pair::Duplex;
use crate::println;

/// EtherType of replication frames (replog SPEC §5.1).
pub const ETHERTYPE: u16 = wire::ETHERTYPE;
/// Replication frames the dataplane keeps for the service at most between two passes.
pub const QUEUE_LIMIT: usize = 512;
/// Kind of the image's checkpoint: the whole [`AppState`].
pub const KIND_SNAPSHOT: u16 = 0x0F00;
/// Kind of an operator note.
pub const KIND_NOTE: u16 = 0x0F01;
/// Kind of a benchmark record.
pub const KIND_BENCH: u16 = 0x0F02;
/// Notes kept (and checkpointed) at most; older ones are dropped and counted.
pub const MAX_NOTES: usize = 10_000;
/// A primary detaches a peer whose replication frames stopped for this long.
pub const PEER_SILENCE: Duration = Duration::from_millis(200);
/// How often the MAC table is compared with what was logged, when the bridge's counters
/// show a change.
pub const TABLE_CHECK: Duration = Duration::from_millis(20);
/// How often the MAC table is compared with what was logged in any case.
pub const TABLE_FULL_CHECK: Duration = Duration::from_secs(1);
/// How long `log sync` waits for the disk and the peer.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

const SNAPSHOT_VERSION: u8 = 1;
const TAG_LEN: usize = duplex_core::wire::TAG_LEN;
const ETHERNET_HEADER_LEN: usize = 14;
/// The replog frame length: what fits a 1514-byte Ethernet frame with the tag.
const FRAME_LEN: usize = 1514 - ETHERNET_HEADER_LEN - TAG_LEN;
/// An attached peer the Duplex node calls dead is detached after this long.
pub const DETACH_GRACE: Duration = Duration::from_millis(50);
/// How often the primary asks the Duplex node whether its peer is alive.
const PEER_CHECK: Duration = Duration::from_millis(10);
/// A superseded primary takes a newer epoch at most this often.
const EPOCH_BUMP_INTERVAL: Duration = Duration::from_millis(50);
/// After a device error the writer waits this long before it tries again.
const DEVICE_RETRY: Duration = Duration::from_millis(100);
/// Benchmark records logged per main-loop pass at most.
const BENCH_BATCH: u32 = 128;
/// Latency marks a benchmark keeps at most (records sampled evenly).
const BENCH_MARKS: u32 = 4096;
/// A benchmark gives up after this long.
const BENCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Payload bytes the staging queue holds at most (records logged while a commit is on
/// its way to the disk).
const STAGING_BYTES: usize = 1 << 20;
/// Records the staging queue holds at most.
const STAGING_RECORDS: usize = 16_384;
/// Console bytes the service writes per pass at most (about 0.3 ms of emulated UART).
const CONSOLE_BYTES_PER_PASS: usize = 64;
/// Replication frames sent, and received, per main-loop pass at most.
const FRAMES_PER_PASS: usize = 4;
/// Parts of a pass timed for `show log`.
const PHASES: usize = 6;
/// While a batch is on the disk, the service looks again this soon (the timer wakes the
/// main loop every 125 us anyway).
const DISK_POLL: Duration = Duration::from_micros(100);

/// The replication group address `03:44:50:52:GG:GG` ("DPR" and the Duplex group).
pub fn group_address(group: u16) -> MacAddress {
    let g = group.to_be_bytes();
    MacAddress([0x03, 0x44, 0x50, 0x52, g[0], g[1]])
}

/// True when `frame` (a whole Ethernet frame) carries the replication EtherType.
pub fn is_replication(frame: &[u8]) -> bool {
    frame.len() >= ETHERNET_HEADER_LEN && frame[12..14] == ETHERTYPE.to_be_bytes()
}

// ----- the logged state -----

/// An operator note as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Its record's sequence.
    pub sequence: u64,
    /// Its record's epoch.
    pub epoch: u64,
    /// The text.
    pub text: String,
}

/// Everything the image logs: the bridge's state and the operator notes.
#[derive(Debug, Clone, Default)]
pub struct AppState {
    /// The bridge's configuration and MAC table, as logged.
    pub bridge: BridgeState,
    /// The newest notes, oldest first.
    pub notes: VecDeque<Note>,
    /// Notes dropped because more than [`MAX_NOTES`] were logged.
    pub notes_dropped: u64,
    /// Benchmark records seen.
    pub bench_records: u64,
    /// Records of kinds this image does not know.
    pub other_records: u64,
    /// Records of a known kind that did not decode.
    pub bad_records: u64,
    /// Records applied (replayed, replicated or logged here).
    pub applied: u64,
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Reads little-endian integers from a byte slice, refusing to run past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(b);
        Some(u64::from_le_bytes(bytes))
    }
}

impl AppState {
    /// `log_notify` and replay: applies one record. A checkpoint replaces the state.
    pub fn apply(&mut self, record: &Record<'_>) {
        self.applied += 1;
        if record.checkpoint {
            match record.kind {
                KIND_SNAPSHOT => match AppState::from_snapshot(record.payload) {
                    Some(state) => {
                        self.bridge = state.bridge;
                        self.notes = state.notes;
                        self.notes_dropped = state.notes_dropped;
                    }
                    None => self.bad_records += 1,
                },
                records::KIND_SNAPSHOT => match BridgeState::from_snapshot(record.payload) {
                    Ok(bridge) => {
                        self.bridge = bridge;
                        self.notes.clear();
                    }
                    Err(_) => self.bad_records += 1,
                },
                _ => self.other_records += 1,
            }
            return;
        }
        match record.kind {
            KIND_NOTE => self.push_note(Note {
                sequence: record.sequence,
                epoch: record.epoch,
                text: String::from_utf8_lossy(record.payload).into_owned(),
            }),
            KIND_BENCH => self.bench_records += 1,
            records::KIND_CONFIG..=records::KIND_FORGOTTEN => {
                if self.bridge.apply(record).is_err() {
                    self.bad_records += 1;
                }
            }
            _ => self.other_records += 1,
        }
    }

    fn push_note(&mut self, note: Note) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
            self.notes_dropped += 1;
        }
        self.notes.push_back(note);
    }

    /// The checkpoint payload (kind [`KIND_SNAPSHOT`]).
    pub fn snapshot(&self) -> Vec<u8> {
        let bridge = self.bridge.snapshot();
        let mut out = Vec::with_capacity(bridge.len() + 32 + self.notes.len() * 64);
        out.extend_from_slice(&[SNAPSHOT_VERSION, 0, 0, 0]);
        put_u32(&mut out, bridge.len() as u32);
        out.extend_from_slice(&bridge);
        put_u64(&mut out, self.notes_dropped);
        put_u32(&mut out, self.notes.len() as u32);
        for note in &self.notes {
            put_u64(&mut out, note.sequence);
            put_u64(&mut out, note.epoch);
            let text = note.text.as_bytes();
            let len = text.len().min(usize::from(u16::MAX));
            put_u16(&mut out, len as u16);
            out.extend_from_slice(&text[..len]);
        }
        out
    }

    /// Decodes a checkpoint payload; `None` for anything malformed.
    pub fn from_snapshot(bytes: &[u8]) -> Option<AppState> {
        let mut reader = Reader { bytes };
        if reader.take(4)? != [SNAPSHOT_VERSION, 0, 0, 0] {
            return None;
        }
        let bridge_len = usize::try_from(reader.u32()?).ok()?;
        let bridge = BridgeState::from_snapshot(reader.take(bridge_len)?).ok()?;
        let notes_dropped = reader.u64()?;
        let count = reader.u32()?;
        let mut notes = VecDeque::new();
        for _ in 0..count {
            let sequence = reader.u64()?;
            let epoch = reader.u64()?;
            let len = usize::from(reader.u16()?);
            let text = String::from_utf8_lossy(reader.take(len)?).into_owned();
            notes.push_back(Note {
                sequence,
                epoch,
                text,
            });
        }
        if !reader.bytes.is_empty() || notes.len() > MAX_NOTES {
            return None;
        }
        Some(AppState {
            bridge,
            notes,
            notes_dropped,
            ..AppState::default()
        })
    }
}

// ----- the disk -----

/// Writes of one commit or superblock update, as replog asked for them: (block, bytes).
type Batch = Vec<(u64, Vec<u8>)>;

/// A batch on its way to the disk: its writes one request at a time, then a flush.
struct InFlight {
    writes: Batch,
    /// The next write to start, and the bytes of it already started.
    next: usize,
    offset: usize,
    flushing: bool,
    started: Instant,
    flush_started: Instant,
    request_started: Instant,
}

/// The virtio-blk device as the log sees it, with timings.
///
/// At boot (`Log::open`, `Log::format`) it is synchronous. Then it turns asynchronous, so
/// that the main loop never waits for the disk: `write` only records what replog asks
/// for; `flush` starts that batch (its writes, then a FLUSH, one request at a time, moved
/// along by [`Disk::advance`] every pass) and answers `Busy`; replog keeps its records and
/// builds the same commit again at its next `poll`, which the service makes only once the
/// batch is done ([`Disk::busy`] false) and without adding records in between (records
/// wait in the service's staging queue, replicated frames in the dataplane's queue). This
/// time `flush` finds the identical batch durable and answers `Ok`: replog then counts
/// the commit as on disk, as it would after a synchronous flush.
pub struct Disk {
    device: VirtioBlk,
    /// PCI address, for the console.
    pub address: pci::PciAddress,
    asynchronous: bool,
    captured: Batch,
    in_flight: Option<InFlight>,
    /// The last batch made durable, until replog's `flush` takes it.
    durable: Option<Batch>,
    /// The error the last batch ended with, for replog's next `flush`.
    failed: Option<duplex_hal::Error>,
    /// Batches started (commits and superblock updates).
    pub batches: u64,
    /// Flushes started.
    pub flushes: u64,
    /// Time of the last flush request.
    pub last_flush: Duration,
    /// Longest flush request.
    pub max_flush: Duration,
    /// Time of the last batch (writes and flush).
    pub last_commit: Duration,
    /// Longest batch.
    pub max_commit: Duration,
    /// Flush and batch durations in ns, while a benchmark records them.
    samples: Option<(Histogram, Histogram)>,
}

fn nanos(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos()).unwrap_or(u32::MAX)
}

/// How long one device request may take before the disk is given up.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(5);

impl Disk {
    /// A batch is on its way to the disk.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A batch is durable and replog has not taken it yet.
    pub fn holding(&self) -> bool {
        self.durable.is_some()
    }

    fn end(&mut self, error: duplex_hal::Error) {
        self.failed = Some(error);
        self.in_flight = None;
    }

    /// Moves the batch in flight along: checks the request on the device and starts the
    /// next one. Never waits.
    pub fn advance(&mut self) {
        let Some(mut batch) = self.in_flight.take() else {
            return;
        };
        loop {
            if self.device.request_in_flight() {
                match self.device.poll_request() {
                    None => {
                        if timer::now().saturating_since(batch.request_started) > DEVICE_TIMEOUT {
                            let error = self
                                .device
                                .abort_request()
                                .err()
                                .unwrap_or(duplex_hal::Error::Timeout);
                            return self.end(error);
                        }
                        self.in_flight = Some(batch);
                        return;
                    }
                    Some(Ok(())) => {}
                    Some(Err(error)) => return self.end(error),
                }
                if batch.flushing {
                    let now = timer::now();
                    let flush = now.saturating_since(batch.flush_started);
                    let commit = now.saturating_since(batch.started);
                    self.last_flush = flush;
                    self.max_flush = self.max_flush.max(flush);
                    self.last_commit = commit;
                    self.max_commit = self.max_commit.max(commit);
                    if let Some((flushes, commits)) = self.samples.as_mut() {
                        flushes.record(nanos(flush));
                        commits.record(nanos(commit));
                    }
                    self.durable = Some(batch.writes);
                    return;
                }
            }
            let now = timer::now();
            batch.request_started = now;
            let started = match batch.writes.get(batch.next) {
                Some((block, bytes)) => {
                    let len = (bytes.len() - batch.offset).min(self.device.max_request_bytes());
                    let first = block + (batch.offset / self.device.block_size()) as u64;
                    let result = self
                        .device
                        .start_write(first, &bytes[batch.offset..batch.offset + len]);
                    batch.offset += len;
                    if batch.offset >= bytes.len() {
                        batch.next += 1;
                        batch.offset = 0;
                    }
                    result
                }
                None => {
                    batch.flushing = true;
                    batch.flush_started = now;
                    self.flushes += 1;
                    self.device.start_flush()
                }
            };
            if let Err(error) = started {
                return self.end(error);
            }
        }
    }
}

impl BlockDevice for Disk {
    fn block_size(&self) -> usize {
        self.device.block_size()
    }
    fn block_count(&self) -> u64 {
        self.device.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> duplex_hal::Result {
        self.device.read(block, buf)
    }
    fn write(&mut self, block: u64, buf: &[u8]) -> duplex_hal::Result {
        if !self.asynchronous {
            return self.device.write(block, buf);
        }
        if !buf.is_empty() {
            self.captured.push((block, buf.to_vec()));
        }
        Ok(())
    }
    fn flush(&mut self) -> duplex_hal::Result {
        if !self.asynchronous {
            let started = timer::now();
            let result = self.device.flush();
            let took = timer::now().saturating_since(started);
            self.flushes += 1;
            self.last_flush = took;
            self.max_flush = self.max_flush.max(took);
            return result;
        }
        let batch = core::mem::take(&mut self.captured);
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        if batch.is_empty() {
            return Ok(());
        }
        if self.durable.as_ref() == Some(&batch) {
            self.durable = None;
            return Ok(());
        }
        if self.busy() {
            return Err(duplex_hal::Error::Busy);
        }
        let now = timer::now();
        self.durable = None;
        self.batches += 1;
        self.in_flight = Some(InFlight {
            writes: batch,
            next: 0,
            offset: 0,
            flushing: false,
            started: now,
            flush_started: now,
            request_started: now,
        });
        self.advance();
        Err(duplex_hal::Error::Busy)
    }
}

// ----- the benchmark -----

/// A running `log bench`.
struct Bench {
    count: u32,
    size: u32,
    rate: u32,
    payload: Vec<u8>,
    started: Instant,
    logged: u32,
    refused: u64,
    stride: u32,
    last_sequence: u64,
    peer: bool,
    stall: Histogram,
    marks: Vec<(u64, Instant)>,
    cursors: [usize; 3],
    /// Latencies to local durability, peer receipt, peer durability (ns).
    latency: [Histogram; 3],

    pass_max: Duration,
    pass: Histogram,
    commits_before: u64,
    /// The last attempt found the ring (or the staging queue) full.
    blocked: bool,
}

impl Bench {
    /// When the next records are due: at the rate's pace; at once for a flood (the loop
    /// still sleeps while the ring and the staging queue are full and the disk is busy,
    /// as `poll_at` then says); a short look while waiting for the last acknowledgements.
    fn next_due(&self, now: Instant) -> Instant {
        if self.logged >= self.count {
            return now + DISK_POLL;
        }
        if self.rate == 0 {
            return if self.blocked { now + DISK_POLL } else { now };
        }
        let nanos = u128::from(self.logged + 1) * 1_000_000_000 / u128::from(self.rate);
        self.started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A histogram of durations in ns with about 1.5 % resolution (64 exact buckets, then
/// 32 per power of two): recording is O(1) and a percentile is one pass over 896
/// buckets, so a benchmark's result costs the main loop nothing worth noticing.
struct Histogram {
    counts: Vec<u32>,
    total: u64,
    max: u32,
}

impl Histogram {
    const BUCKETS: usize = 64 + 26 * 32;

    fn new() -> Histogram {
        Histogram {
            counts: alloc::vec![0; Histogram::BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn bucket(ns: u32) -> usize {
        if ns < 64 {
            return ns as usize;
        }
        let exponent = 31 - ns.leading_zeros();
        let shift = exponent - 5;
        let mantissa = ns >> shift;
        64 + (exponent as usize - 6) * 32 + (mantissa as usize - 32)
    }

    /// A value in the middle of bucket `index`.
    fn value(index: usize) -> u64 {
        if index < 64 {
            return index as u64;
        }
        let exponent = (index - 64) / 32 + 6;
        let mantissa = ((index - 64) % 32 + 32) as u64;
        let shift = exponent - 5;
        (mantissa << shift) + ((1u64 << shift) >> 1)
    }

    fn record(&mut self, ns: u32) {
        self.counts[Histogram::bucket(ns)] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    fn len(&self) -> u64 {
        self.total
    }

    /// Nearest-rank percentile in µs with one decimal (`null` when empty).
    fn percentile_us(&self, p: u64) -> String {
        if self.total == 0 {
            return String::from("null");
        }
        let ns = if p >= 100 {
            u64::from(self.max)
        } else {
            let rank = (self.total * p).div_ceil(100).max(1);
            let mut seen = 0u64;
            let mut found = u64::from(self.max);
            for (index, &count) in self.counts.iter().enumerate() {
                seen += u64::from(count);
                if seen >= rank {
                    found = Histogram::value(index).min(u64::from(self.max));
                    break;
                }
            }
            found
        };
        format!("{}.{}", ns / 1000, (ns % 1000) / 100)
    }
}

// ----- the service -----

/// The replication transport: where frames go and the key that tags them.
struct Transport {
    key: Key,
    /// The preferred port (the dedicated link, else the LAN).
    port: usize,
    destination: MacAddress,
    frame: Vec<u8>,
}

/// What a `log sync` waits for.
struct PendingSync {
    sequence: u64,
    started: Instant,
    deadline: Instant,
}

/// A record logged while the log's ring is frozen (a commit on its way to the disk).
struct Staged {
    kind: u16,
    /// A checkpoint's payload (kept whole), or `None` for a record in the arena.
    checkpoint: Option<Vec<u8>>,
    start: usize,
    len: usize,
}

/// Counters of the service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Replication frames received (before the tag check).
    pub frames_in: u64,
    /// Replication frames sent.
    pub frames_out: u64,
    /// Frames the NIC had no room for (sent again later).
    pub transmit_busy: u64,
    /// Frames dropped: too short, bad length.
    pub malformed: u64,
    /// Frames dropped: wrong tag.
    pub bad_tag: u64,
    /// Frames dropped: no transport (standalone) or our own.
    pub ignored: u64,
    /// Frames the log refused (stale epoch, undecodable).
    pub refused: u64,
    /// Bridge records logged.
    pub bridge_records: u64,
    /// Checkpoints logged.
    pub checkpoints: u64,
    /// Times the bridge table was restored from the log.
    pub restores: u64,
    /// Epoch changes after the peer reported a newer epoch.
    pub epoch_bumps: u64,
    /// Errors from the log (device, full ring, ...).
    pub errors: u64,
    /// Staged records dropped because this node stopped being the primary.
    pub dropped_on_step_down: u64,
}

/// The running log.
pub struct Active {
    disk: Disk,
    log: Log,
    /// This node's id: the low byte of every epoch it takes as primary.
    node_id: u8,
    staging: VecDeque<Staged>,
    arena: Vec<u8>,
    report: Option<RecoveryReport>,
    formatted: bool,
    recovery_time: Duration,
    /// The logged state (primary) or the replicated one (replica).
    pub state: AppState,
    transport: Option<Transport>,
    transport_checked: bool,
    role: Option<Role>,
    attached: bool,
    /// Since when the Duplex node has called the peer dead.
    peer_dead_since: Option<Instant>,
    next_peer_check: Instant,
    peer_heard: Option<Instant>,
    peer_epoch: u64,
    next_bump: Instant,
    next_table_check: Instant,
    next_full_check: Instant,
    fingerprint: (u64, u64, u64, usize),
    retry_at: Instant,
    last_error: Option<(Error, Instant)>,
    counters: Counters,
    /// The longest main-loop pass of the service (its stall on the loop).
    pub pass_max: Duration,
    /// Passes of the service longer than 0.5, 1 and 2 ms.
    pub passes_over: [u64; 3],
    /// Replication frames were left in the dataplane's queue for the next pass.
    frames_waiting: bool,
    /// Console output not yet written ([`Active::say`]).
    console_out: VecDeque<u8>,
    /// The longest time each part of a pass took: receive, role and peer, bridge and
    /// checkpoint and bench, transmit, disk, progress.
    phase_max: [Duration; PHASES],
    pending_sync: Option<PendingSync>,
    answer: Option<String>,
    bench: Option<Bench>,
    bench_result: Option<String>,
}

/// The log service: running, or why not.
pub struct StateLog {
    /// The running log, if any.
    pub active: Option<Active>,
    /// Why there is none (for the console).
    pub reason: String,
}

fn log_config() -> Config {
    Config {
        frame_len: FRAME_LEN,
        // Tagging a full frame costs about 50 us under emulation: a few per pass keep the
        // pass short; the main loop comes back at once while more are due.
        frames_per_transmit: FRAMES_PER_PASS,
        ..Config::default()
    }
}

/// A log id nobody used on this disk before: time of day, TSC and a MAC.
fn fresh_log_id(dataplane: &Dataplane) -> u64 {
    let seconds = duplex_arch::rtc::unix_seconds().unwrap_or(0);
    let mac = dataplane.ports.first().map_or(0, |p| {
        p.nic
            .mac_address()
            .0
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    });
    ((seconds << 24) ^ timer::now().as_nanos() ^ mac.rotate_left(40)) | 1
}

/// The table as the log records entries.
fn table_of(bridge: &Bridge) -> BTreeMap<(u16, MacAddress), MacEntry> {
    bridge
        .table()
        .map(|e| {
            (
                (e.vlan, e.mac),
                MacEntry {
                    mac: e.mac,
                    vlan: e.vlan,
                    port: e.port.0,
                    is_static: e.is_static,
                },
            )
        })
        .collect()
}

/// The bridge configuration as the log records it.
fn logged_config(bridge: &Bridge) -> records::BridgeConfig {
    let config = bridge.config();
    records::BridgeConfig {
        port_count: u8::try_from(config.port_count).unwrap_or(u8::MAX),
        learning: config.learning,
        aging_seconds: u32::try_from(config.ageing_time.as_secs()).unwrap_or(u32::MAX),
        max_entries: u32::try_from(config.max_entries).unwrap_or(u32::MAX),
    }
}

/// Replaces the bridge's table with the logged one (entries count as just seen); entries
/// the bridge learned itself and the log does not know are kept. Returns the entries now
/// in the table.
fn restore_bridge(state: &BridgeState, bridge: &mut Bridge, now: Instant) -> usize {
    let mut entries: BTreeMap<(u16, MacAddress), SnapshotEntry> = state
        .table
        .values()
        .map(|e| {
            (
                (e.vlan, e.mac),
                SnapshotEntry {
                    mac: e.mac,
                    vlan: e.vlan,
                    port: PortId(e.port),
                    is_static: e.is_static,
                    age: Duration::ZERO,
                },
            )
        })
        .collect();
    for e in bridge.table() {
        entries.entry((e.vlan, e.mac)).or_insert(SnapshotEntry {
            mac: e.mac,
            vlan: e.vlan,
            port: e.port,
            is_static: e.is_static,
            age: e.age(now),
        });
    }
    let snapshot = TableSnapshot {
        entries: entries.into_values().collect(),
    };
    bridge.restore(&snapshot, now).restored
}

impl StateLog {
    /// `log_recover`: finds the disk, opens (or formats) the log, replays it, prints the
    /// recovery report and restores the bridge's table from it.
    pub fn init(
        config: &'static dyn pci::ConfigSpace,
        functions: &[PciFunction],
        options: &BootOptions,
        dataplane: &mut Dataplane,
        now: Instant,
    ) -> StateLog {
        let off = |reason: String| {
            println!("statelog: off ({reason})");
            StateLog {
                active: None,
                reason,
            }
        };
        if options.log == LogChoice::Off {
            return off(String::from("log=off"));
        }
        let Some(function) = functions
            .iter()
            .find(|f| duplex_drivers::virtio::identify_block(f.vendor, f.device).is_some())
        else {
            return off(String::from("no virtio-blk device"));
        };
        // SAFETY: 1. the function's BARs were assigned at enumeration, below 4 GiB, and the
        // appliance maps that range by identity, uncached; 2. RAM is identity-mapped; 3. this
        // is the only driver instance for the function (the first virtio-blk, probed once).
        let device = match unsafe { VirtioBlk::new_pci(config, function.address) } {
            Ok(device) => device,
            Err(e) => {
                return off(format!("virtio-blk at {}: {e}", function.address));
            }
        };
        if device.write_cache() == WriteCache::Unflushable {
            return off(format!(
                "virtio-blk at {}: write cache without FLUSH, durability impossible",
                function.address
            ));
        }
        let mut disk = Disk {
            device,
            address: function.address,
            asynchronous: false,
            captured: Vec::new(),
            in_flight: None,
            durable: None,
            failed: None,
            batches: 0,
            flushes: 0,
            last_flush: Duration::ZERO,
            max_flush: Duration::ZERO,
            last_commit: Duration::ZERO,
            max_commit: Duration::ZERO,
            samples: None,
        };
        println!(
            "statelog: virtio-blk at {}: {} MiB, write cache {:?}",
            function.address,
            (disk.block_count() * disk.block_size() as u64) >> 20,
            disk.device.write_cache()
        );
        let mut state = AppState::default();
        let started = timer::now();
        let format = |disk: &mut Disk, why: &str| {
            println!("statelog: formatting the disk ({why})");
            Log::format(disk, fresh_log_id(dataplane), log_config())
        };
        let opened = if options.log == LogChoice::Format {
            format(&mut disk, "log=format").map(|log| (log, None, true))
        } else {
            match Log::open(&mut disk, log_config(), |record| state.apply(&record)) {
                Ok((log, report)) => Ok((log, Some(report), false)),
                Err(Error::NotFormatted) => {
                    format(&mut disk, "no log on it").map(|log| (log, None, true))
                }
                Err(e) => Err(e),
            }
        };
        let recovery_time = timer::now().saturating_since(started);
        let (log, report, formatted) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                return off(format!(
                    "cannot open the log: {e}; boot with log=format to start a new one (the old one is lost)"
                ));
            }
        };
        match &report {
            Some(report) => println!("{report}"),
            None => println!(
                "replog: new log {:#018x}, {} data pages",
                log.log_id(),
                log.data_pages()
            ),
        }
        println!(
            "statelog: recovery took {} ms; {} notes, {} bridge entries",
            recovery_time.as_millis(),
            state.notes.len(),
            state.bridge.table.len()
        );
        if !state.bridge.table.is_empty() {
            let restored = restore_bridge(&state.bridge, &mut dataplane.bridge, now);
            println!("statelog: bridge table restored from the log ({restored} stations)");
        }
        let mut counters = Counters::default();
        if !state.bridge.table.is_empty() {
            counters.restores += 1;
        }
        // From now on the main loop never waits for the disk.
        disk.asynchronous = true;
        StateLog {
            active: Some(Active {
                disk,
                log,
                node_id: options.node,
                // Reserved once: growing them would copy up to a MiB inside a `log_async`.
                staging: VecDeque::with_capacity(STAGING_RECORDS),
                arena: Vec::with_capacity(STAGING_BYTES),
                report,
                formatted,
                recovery_time,
                state,
                transport: None,
                transport_checked: false,
                role: None,
                attached: false,
                peer_dead_since: Some(now),
                next_peer_check: now,
                peer_heard: None,
                peer_epoch: 0,
                next_bump: now,
                next_table_check: now,
                next_full_check: now,
                fingerprint: (0, 0, 0, usize::MAX),
                retry_at: now,
                last_error: None,
                counters,
                pass_max: Duration::ZERO,
                passes_over: [0; 3],
                frames_waiting: false,
                console_out: VecDeque::new(),
                phase_max: [Duration::ZERO; PHASES],
                pending_sync: None,
                answer: None,
                bench: None,
                bench_result: None,
            }),
            reason: String::new(),
        }
    }

    /// One main-loop pass: replication frames in, role, bridge changes, checkpoint,
    /// benchmark, disk, replication frames out.
    pub fn poll(&mut self, dataplane: &mut Dataplane, duplex: Option<&mut Duplex>, now: Instant) {
        let Some(active) = self.active.as_mut() else {
            dataplane.replication_in.clear();
            return;
        };
        active.poll(dataplane, duplex, now);
        let took = timer::now().saturating_since(now);
        active.pass_max = active.pass_max.max(took);
        for (count, limit) in active.passes_over.iter_mut().zip([500, 1000, 2000]) {
            if took >= Duration::from_micros(limit) {
                *count += 1;
            }
        }
        if let Some(bench) = active.bench.as_mut() {
            bench.pass_max = bench.pass_max.max(took);
            bench.pass.record(nanos(took));
        }
    }

    /// When the service next has work (`Instant::MAX`: only a frame or a command makes some).
    pub fn poll_at(&self, now: Instant) -> Instant {
        let Some(active) = self.active.as_ref() else {
            return Instant::MAX;
        };
        let mut at = if active.disk.busy() {
            // Only the disk can move; look again soon.
            let network = active.log.poll_at(now).unwrap_or(Instant::MAX);
            network.max(now).min(now + DISK_POLL)
        } else if active.disk.holding()
            || !active.staging.is_empty()
            || active.frames_waiting
            || !active.console_out.is_empty()
        {
            now
        } else {
            active.log.poll_at(now).unwrap_or(Instant::MAX)
        };
        if active.role == Some(Role::Primary) {
            at = at.min(active.next_table_check);
        }
        if active.transport.is_some() {
            at = at.min(active.next_peer_check);
        }
        if let Some(pending) = &active.pending_sync {
            at = at.min(pending.deadline);
        }
        if let Some(bench) = &active.bench {
            at = at.min(bench.next_due(now));
        }
        at
    }

    /// True while a `log sync` waits: the console prints no prompt and reads no input.
    pub fn console_busy(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.pending_sync.is_some())
    }

    /// The answer of a finished `log sync`, once.
    pub fn take_answer(&mut self) -> Option<String> {
        self.active.as_mut().and_then(|a| a.answer.take())
    }

    fn not_running(&self, out: &mut String) {
        let _ = write!(
            out,
            "{}the state log is off ({})\r\n",
            markers::ERROR,
            self.reason
        );
    }

    /// `log write TEXT`: `log_async` of an operator note.
    pub fn write_note(&mut self, text: &str, out: &mut String) {
        let Some(active) = self.active.as_mut() else {
            return self.not_running(out);
        };
        match active.log_note(text) {
            Ok(sequence) => {
                let _ = write!(out, "logged: sequence {sequence}\r\n");
            }
            Err(e) => {
                let _ = write!(out, "{}log write: {e}\r\n", markers::ERROR);
            }
        }
    }

    /// `log sync TEXT`: `log_sync` of an operator note. The answer comes later
    /// ([`StateLog::take_answer`]) unless the note could not be logged at all.
    pub fn sync_note(&mut self, text: &str, out: &mut String) {
        let Some(active) = self.active.as_mut() else {
            return self.not_running(out);
        };
        if active.pending_sync.is_some() {
            let _ = write!(
                out,
                "{}log sync: another sync is waiting\r\n",
                markers::ERROR
            );
            return;
        }
        let now = timer::now();
        match active.log_note(text) {
            Ok(sequence) => {
                active.pending_sync = Some(PendingSync {
                    sequence,
                    started: now,
                    deadline: now + SYNC_TIMEOUT,
                });
            }
            Err(e) => {
                let _ = write!(out, "{}log sync: {e}\r\n", markers::ERROR);
            }
        }
    }

    /// `log checkpoint`.
    pub fn checkpoint(&mut self, out: &mut String) {
        let Some(active) = self.active.as_mut() else {
            return self.not_running(out);
        };
        match active.checkpoint() {
            Ok(sequence) => {
                let _ = write!(out, "checkpoint: sequence {sequence}\r\n");
            }
            Err(e) => {
                let _ = write!(out, "{}log checkpoint: {e}\r\n", markers::ERROR);
            }
        }
    }

    /// `log bench COUNT SIZE RATE`: starts the benchmark; it prints `LOG BENCH {json}`
    /// when done.
    pub fn start_bench(&mut self, count: u32, size: u32, rate: u32, out: &mut String) {
        let Some(active) = self.active.as_mut() else {
            return self.not_running(out);
        };
        if active.bench.is_some() {
            let _ = write!(out, "{}log bench: one is running\r\n", markers::ERROR);
            return;
        }
        if active.role != Some(Role::Primary) {
            let _ = write!(
                out,
                "{}log bench: only the primary logs (this node is a replica)\r\n",
                markers::ERROR
            );
            return;
        }
        let now = timer::now();
        active.disk.samples = Some((Histogram::new(), Histogram::new()));
        active.bench = Some(Bench {
            count,
            size,
            rate,
            payload: alloc::vec![0xA5; size as usize],
            started: now,
            logged: 0,
            refused: 0,
            stride: count.div_ceil(BENCH_MARKS).max(1),
            last_sequence: 0,
            peer: active.attached,
            stall: Histogram::new(),
            marks: Vec::new(),
            cursors: [0; 3],
            latency: [Histogram::new(), Histogram::new(), Histogram::new()],

            pass_max: Duration::ZERO,
            pass: Histogram::new(),
            commits_before: active.log.stats().commits,
            blocked: false,
        });
        let _ = write!(
            out,
            "bench: {count} records of {size} bytes at {} (peer attached: {}); result follows as 'LOG BENCH {{...}}'\r\n",
            if rate == 0 {
                String::from("full speed")
            } else {
                format!("{rate}/s")
            },
            active.attached
        );
    }

    /// `log dump [N]`.
    pub fn dump(&self, last: Option<usize>, out: &mut String) {
        let Some(active) = self.active.as_ref() else {
            return self.not_running(out);
        };
        let notes = &active.state.notes;
        let _ = write!(
            out,
            "notes: {} held ({} older dropped)\r\n",
            notes.len(),
            active.state.notes_dropped
        );
        let skip = last.map_or(0, |n| notes.len().saturating_sub(n));
        for note in notes.iter().skip(skip) {
            let _ = write!(
                out,
                "{:>10} epoch {:<4} {}\r\n",
                note.sequence, note.epoch, note.text
            );
        }
        let bridge = &active.state.bridge;
        let _ = write!(
            out,
            "bridge (as logged or replicated): {} stations\r\n",
            bridge.table.len()
        );
        if last.is_none() {
            for entry in bridge.table.values() {
                let _ = write!(
                    out,
                    "  station {} vlan {} port {}{}\r\n",
                    entry.mac,
                    entry.vlan,
                    entry.port,
                    if entry.is_static { " static" } else { "" }
                );
            }
        }
    }

    /// `show log [--json]`.
    pub fn describe(&self, duplex: Option<&Duplex>, json: bool, out: &mut String) {
        let Some(active) = self.active.as_ref() else {
            if json {
                let object = JsonObject::new()
                    .boolean("running", false)
                    .string("reason", &self.reason)
                    .finish();
                let _ = write!(out, "{object}\r\n");
            } else {
                let _ = write!(out, "state log: off ({})\r\n", self.reason);
            }
            return;
        };
        active.describe(duplex, json, out);
    }
}

fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Primary) => "primary",
        Some(Role::Replica) => "replica",
        None => "none",
    }
}

impl Active {
    /// Queues console output that [`Active::trickle`] writes a little per pass: a long
    /// line written at once holds the main loop for milliseconds (about 5 us a byte
    /// through the emulated UART here).
    fn say(&mut self, text: &str) {
        self.console_out.extend(text.bytes());
    }

    /// Writes the next bytes of queued console output.
    fn trickle(&mut self) {
        if self.console_out.is_empty() {
            return;
        }
        let count = self.console_out.len().min(CONSOLE_BYTES_PER_PASS);
        let chunk: Vec<u8> = self.console_out.drain(..count).collect();
        crate::console::write_bytes(&chunk);
    }

    fn error(&mut self, error: Error, now: Instant) {
        self.counters.errors += 1;
        let repeated = self.last_error.is_some_and(|(last, _)| last == error);
        if !repeated {
            println!("statelog: {error}");
        }
        self.last_error = Some((error, now));
    }

    /// The log's ring must not change: a commit is on its way to the disk, or done and
    /// not yet taken by replog.
    fn frozen(&self) -> bool {
        self.disk.busy() || self.disk.holding()
    }

    /// `log_async`: the record goes into the log's ring, or, while the ring is frozen,
    /// into the staging queue (both a copy); returns its sequence at once.
    pub fn log_async(&mut self, kind: u16, payload: &[u8]) -> Result<u64, Error> {
        if self.role != Some(Role::Primary) {
            return Err(Error::NotPrimary);
        }
        if !self.frozen() && self.staging.is_empty() {
            return self.log.log_async(kind, payload);
        }
        if payload.len() > log_config().max_record_len {
            return Err(Error::TooLarge);
        }
        if self.arena.len() + payload.len() > STAGING_BYTES || self.staging.len() >= STAGING_RECORDS
        {
            return Err(Error::Full);
        }
        let sequence = self.log.next_sequence() + self.staging.len() as u64;
        self.staging.push_back(Staged {
            kind,
            checkpoint: None,
            start: self.arena.len(),
            len: payload.len(),
        });
        self.arena.extend_from_slice(payload);
        Ok(sequence)
    }

    /// A checkpoint of the whole state, through the staging queue like any record.
    fn checkpoint(&mut self) -> Result<u64, Error> {
        if self.role != Some(Role::Primary) {
            return Err(Error::NotPrimary);
        }
        let payload = self.state.snapshot();
        let pages = (64 + 32 + payload.len()).div_ceil(4096) as u64;
        if payload.len() > log_config().max_checkpoint_len || pages > self.log.data_pages() / 4 {
            return Err(Error::TooLarge);
        }
        let sequence = if !self.frozen() && self.staging.is_empty() {
            self.log.checkpoint(KIND_SNAPSHOT, payload)?
        } else {
            let sequence = self.log.next_sequence() + self.staging.len() as u64;
            self.staging.push_back(Staged {
                kind: KIND_SNAPSHOT,
                checkpoint: Some(payload),
                start: 0,
                len: 0,
            });
            sequence
        };
        self.counters.checkpoints += 1;
        Ok(sequence)
    }

    /// Moves staged records into the log's ring (the ring is not frozen).
    fn feed(&mut self, now: Instant) {
        while let Some(front) = self.staging.front() {
            let expected = self.log.next_sequence();
            let result = match &front.checkpoint {
                Some(payload) => self.log.checkpoint(front.kind, payload.clone()),
                None => self.log.log_async(
                    front.kind,
                    &self.arena[front.start..front.start + front.len],
                ),
            };
            match result {
                Ok(sequence) => {
                    if sequence != expected {
                        println!("statelog: staged record got sequence {sequence}, not {expected}");
                    }
                    self.staging.pop_front();
                }
                Err(Error::Full) => break,
                Err(e) => {
                    // Checked when staged: not expected. Later staged records now get
                    // one sequence less than announced.
                    self.staging.pop_front();
                    self.error(e, now);
                }
            }
        }
        if self.staging.is_empty() {
            self.arena.clear();
        }
    }

    fn log_note(&mut self, text: &str) -> Result<u64, Error> {
        let sequence = self.log_async(KIND_NOTE, text.as_bytes())?;
        let epoch = self.log.replication_status().epoch;
        self.state.applied += 1;
        self.state.push_note(Note {
            sequence,
            epoch,
            text: String::from(text),
        });
        Ok(sequence)
    }

    /// What `log_sync` promises for record `sequence`: on the local disk and, with a peer
    /// attached, on the peer's disk (replog's `is_durable` with `PeerAck::Durable`).
    fn is_synced(&self, sequence: u64) -> bool {
        if sequence >= self.log.next_sequence() || self.log.durable_sequence() < sequence {
            return false;
        }
        let status = self.log.replication_status();
        status.role != Role::Primary
            || !status.peer_attached
            || self.log.peer_durable_sequence() >= sequence
    }

    fn poll(&mut self, dataplane: &mut Dataplane, duplex: Option<&mut Duplex>, now: Instant) {
        if !self.transport_checked {
            self.transport_checked = true;
            self.transport = duplex.as_deref().map(|d| {
                let config = d.node.config();
                Transport {
                    key: config.key.clone(),
                    // The dedicated link when there is one, else the LAN port.
                    port: if dataplane.ports.len() > 2 { 2 } else { 0 },
                    destination: group_address(config.group),
                    frame: alloc::vec![0; 1514],
                }
            });
        }
        let mut mark = timer::now();
        let mut phase = |index: usize, phases: &mut [Duration; PHASES]| {
            let at = timer::now();
            phases[index] = phases[index].max(at.saturating_since(mark));
            mark = at;
        };
        self.receive(dataplane, now);
        phase(0, &mut self.phase_max);
        self.follow_role(dataplane, duplex.as_deref(), now);
        if self.role == Some(Role::Primary) {
            self.follow_peer(duplex.as_deref(), now);
            phase(1, &mut self.phase_max);
            self.log_bridge_changes(&mut dataplane.bridge, now);
            let checkpoint_staged = self.staging.iter().any(|s| s.checkpoint.is_some());
            if self.log.checkpoint_wanted()
                && !checkpoint_staged
                && let Err(e) = self.checkpoint()
            {
                self.error(e, now);
            }
            self.bench_step();
        }
        phase(2, &mut self.phase_max);
        self.transmit(&mut dataplane.ports, now);
        phase(3, &mut self.phase_max);
        self.write(now);
        phase(4, &mut self.phase_max);
        self.transmit(&mut dataplane.ports, now);
        phase(3, &mut self.phase_max);
        self.bench_progress(now);
        self.sync_progress(now);
        self.trickle();
        phase(5, &mut self.phase_max);
        if let Some(d) = duplex {
            // The heartbeats announce how far this node's log is on disk.
            d.node.set_log_position(self.log.durable_sequence());
        }
    }

    /// The disk writer: moves the batch in flight along; once it is durable lets replog
    /// take it; then feeds the staged records into the ring and lets replog start the
    /// next commit. Never waits for the disk.
    fn write(&mut self, now: Instant) {
        self.disk.advance();
        if self.disk.busy() || now < self.retry_at {
            return;
        }
        for _ in 0..2 {
            if !self.disk.holding() {
                self.feed(now);
                if self.log.poll_at(now).is_none_or(|at| at > now) {
                    return;
                }
            }
            match self.log.poll(&mut self.disk, now) {
                Ok(()) => {}
                // A batch started: replog will build it again once it is durable.
                Err(Error::Device(duplex_hal::Error::Busy)) => return,
                Err(e @ Error::Device(_)) => {
                    self.retry_at = now + DEVICE_RETRY;
                    self.error(e, now);
                    return;
                }
                Err(e) => {
                    self.error(e, now);
                    return;
                }
            }
        }
    }

    /// Drains the dataplane's queue of replication frames into the log. A replica leaves
    /// the queue alone while its ring is frozen (the frames would add records).
    fn receive(&mut self, dataplane: &mut Dataplane, now: Instant) {
        if self.role == Some(Role::Replica) && self.frozen() {
            self.frames_waiting = false;
            return;
        }
        for _ in 0..2 * FRAMES_PER_PASS {
            let Some((_ingress, frame)) = dataplane.replication_in.pop_front() else {
                break;
            };
            self.counters.frames_in += 1;
            let Some(transport) = self.transport.as_ref() else {
                self.counters.ignored += 1;
                continue;
            };
            if frame.len() < ETHERNET_HEADER_LEN + wire::HEADER_LEN + TAG_LEN {
                self.counters.malformed += 1;
                continue;
            }
            if dataplane
                .ports
                .iter()
                .any(|p| frame[6..12] == p.nic.mac_address().0)
            {
                // One of this box's own frames (a loop in the network).
                self.counters.ignored += 1;
                continue;
            }
            let length = usize::from(u16::from_le_bytes([
                frame[ETHERNET_HEADER_LEN + 2],
                frame[ETHERNET_HEADER_LEN + 3],
            ]));
            let end = ETHERNET_HEADER_LEN + length;
            if length < wire::HEADER_LEN || end + TAG_LEN > frame.len() {
                self.counters.malformed += 1;
                continue;
            }
            if !transport
                .key
                .verify(&frame[12..end], &frame[end..end + TAG_LEN])
            {
                self.counters.bad_tag += 1;
                continue;
            }
            let body = &frame[ETHERNET_HEADER_LEN..end];
            let epoch = match wire::Frame::parse(body) {
                Ok(wire::Frame::Data(data)) => data.header.epoch,
                Ok(wire::Frame::Ack(ack)) => ack.header.epoch,
                Err(_) => {
                    self.counters.refused += 1;
                    continue;
                }
            };
            self.peer_epoch = self.peer_epoch.max(epoch);
            self.peer_heard = Some(now);
            let Active { log, state, .. } = self;
            if log
                .receive_frame(body, now, |record| state.apply(&record))
                .is_err()
            {
                self.counters.refused += 1;
            }
        }
        self.frames_waiting = !dataplane.replication_in.is_empty();
    }

    /// Takes the role the Duplex node's state calls for.
    fn follow_role(&mut self, dataplane: &mut Dataplane, duplex: Option<&Duplex>, now: Instant) {
        let wanted = match duplex.map(|d| d.node.state()) {
            None | Some(State::Master | State::QuasiMaster) => Role::Primary,
            Some(_) => Role::Replica,
        };
        if self.role == Some(wanted) {
            if wanted == Role::Primary
                && self.log.replication_status().superseded
                && now >= self.next_bump
            {
                // The peer has seen a newer epoch (from an earlier primary): go above it.
                self.next_bump = now + EPOCH_BUMP_INTERVAL;
                self.counters.epoch_bumps += 1;
                self.become_primary(now);
            }
            return;
        }
        let first = self.role.is_none();
        self.role = Some(wanted);
        self.attached = false;
        match wanted {
            Role::Primary => {
                self.become_primary(now);
                if !first {
                    // A takeover: start from the table the old Master logged.
                    let restored = restore_bridge(&self.state.bridge, &mut dataplane.bridge, now);
                    self.counters.restores += 1;
                    println!(
                        "statelog: primary; bridge table restored from the replicated log ({restored} stations)"
                    );
                }
                let config = logged_config(&dataplane.bridge);
                if self.state.bridge.config != config {
                    match self.log_bridge_record(&BridgeRecord::Config(config)) {
                        Ok(_) => {
                            self.state.bridge.config = config;
                            self.counters.bridge_records += 1;
                        }
                        Err(e) => self.error(e, now),
                    }
                }
                // Compare the table at once.
                self.fingerprint.3 = usize::MAX;
                self.next_table_check = now;
            }
            Role::Replica => {
                self.log.become_replica(0, now);
                // Records staged as primary are not logged: the new primary's history wins.
                self.counters.dropped_on_step_down += self.staging.len() as u64;
                self.staging.clear();
                self.arena.clear();
                if self.bench.take().is_some() {
                    self.say("LOG BENCH {\"aborted\":\"this node stopped being the primary\"}\r\n");
                }
                self.disk.samples = None;
                println!(
                    "statelog: replica (epoch {})",
                    self.log.replication_status().epoch
                );
            }
        }
    }

    /// Takes an epoch no primary has used: above every epoch this node has seen (its own
    /// records, the ones it accepted, its peer's), with its node id in the low byte, so
    /// that two nodes never pick the same one.
    fn become_primary(&mut self, now: Instant) {
        let highest = self.log.replication_status().epoch.max(self.peer_epoch);
        let epoch = ((highest >> 8).saturating_add(1) << 8) | u64::from(self.node_id);
        match self.log.become_primary(epoch) {
            Ok(()) => {
                self.attached = false;
                println!("statelog: primary, epoch {epoch}");
            }
            Err(e) => self.error(e, now),
        }
    }

    /// Attaches the peer while it is alive and talks replication, detaches it otherwise.
    fn follow_peer(&mut self, duplex: Option<&Duplex>, now: Instant) {
        let Some(duplex) = duplex else {
            return;
        };
        if now >= self.next_peer_check {
            self.next_peer_check = now + PEER_CHECK;
            let alive = duplex.node.status().peers.iter().any(|p| p.alive);
            self.peer_dead_since = match (alive, self.peer_dead_since) {
                (true, _) => None,
                (false, None) => Some(now),
                (false, since) => since,
            };
        }
        let heard = self
            .peer_heard
            .is_some_and(|heard| now.saturating_since(heard) < PEER_SILENCE);
        // Attach a peer that is alive and talks replication; detach it once the node has
        // called it dead for DETACH_GRACE (a blip of a loaded host does not restart
        // replication) or its replication frames stopped.
        let present = if self.attached {
            heard
                && self
                    .peer_dead_since
                    .is_none_or(|since| now.saturating_since(since) < DETACH_GRACE)
        } else {
            heard && self.peer_dead_since.is_none()
        };
        if present && !self.attached {
            self.log.attach_peer();
            self.attached = true;
            println!("statelog: peer attached");
        } else if !present && self.attached {
            self.log.detach_peer();
            self.attached = false;
            println!("statelog: peer detached");
        }
    }

    /// Logs what changed in the bridge's MAC table since the last look.
    fn log_bridge_changes(&mut self, bridge: &mut Bridge, now: Instant) {
        if now < self.next_table_check {
            return;
        }
        self.next_table_check = now + TABLE_CHECK;
        bridge.poll(now);
        let counters = bridge.counters();
        let fingerprint = (
            counters.learned,
            counters.moves,
            counters.aged,
            bridge.len(),
        );
        if fingerprint == self.fingerprint && now < self.next_full_check {
            return;
        }
        self.next_full_check = now + TABLE_FULL_CHECK;
        let table = table_of(bridge);
        let mut changes: Vec<BridgeRecord> = Vec::new();
        for (key, entry) in &table {
            if self.state.bridge.table.get(key) != Some(entry) {
                changes.push(BridgeRecord::Learned(*entry));
            }
        }
        for key in self.state.bridge.table.keys() {
            if !table.contains_key(key) {
                changes.push(BridgeRecord::Forgotten {
                    mac: key.1,
                    vlan: key.0,
                });
            }
        }
        let mut complete = true;
        for change in changes {
            match self.log_bridge_record(&change) {
                Ok(_) => {
                    self.state.bridge.apply_record(&change);
                    self.state.applied += 1;
                    self.counters.bridge_records += 1;
                }
                Err(e) => {
                    // The ring is full: the rest goes at the next look.
                    self.error(e, now);
                    complete = false;
                    break;
                }
            }
        }
        self.fingerprint = if complete {
            fingerprint
        } else {
            (0, 0, 0, usize::MAX)
        };
    }

    fn log_bridge_record(&mut self, record: &BridgeRecord) -> Result<u64, Error> {
        let mut bytes = [0u8; records::MAX_RECORD_LEN];
        let len = record.encode(&mut bytes);
        self.log_async(record.kind(), &bytes[..len])
    }

    /// Sends what replication owes the peer.
    fn transmit(&mut self, ports: &mut [Port], now: Instant) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        // The preferred port (the dedicated link, else the LAN) while its link is up, else
        // the first bridged port whose link is.
        let index = if ports.get(transport.port).is_some_and(|p| p.link_up) {
            transport.port
        } else {
            match ports.iter().take(2).position(|p| p.link_up) {
                Some(index) => index,
                None => transport.port,
            }
        };
        let Some(port) = ports.get_mut(index) else {
            return;
        };
        let source = port.nic.mac_address();
        let counters = &mut self.counters;
        let mut sent = false;
        self.log.transmit(now, |body| {
            let end = ETHERNET_HEADER_LEN + body.len();
            let Some(frame) = transport.frame.get_mut(..end + TAG_LEN) else {
                return false;
            };
            frame[0..6].copy_from_slice(&transport.destination.0);
            frame[6..12].copy_from_slice(&source.0);
            frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
            frame[ETHERNET_HEADER_LEN..end].copy_from_slice(body);
            let tag = transport.key.tag(&frame[12..end]);
            frame[end..].copy_from_slice(&tag);
            match port.nic.transmit(frame) {
                Ok(()) => {
                    counters.frames_out += 1;
                    sent = true;
                    true
                }
                Err(_) => {
                    // Reclaim finished buffers and try once more.
                    port.nic.flush();
                    if port.nic.transmit(frame).is_ok() {
                        counters.frames_out += 1;
                        sent = true;
                        true
                    } else {
                        counters.transmit_busy += 1;
                        false
                    }
                }
            }
        });
        if sent {
            port.nic.flush();
        }
    }

    /// Logs the benchmark's records that are due.
    fn bench_step(&mut self) {
        let Some(mut bench) = self.bench.take() else {
            return;
        };
        self.bench_records(&mut bench);
        self.bench = Some(bench);
    }

    fn bench_records(&mut self, bench: &mut Bench) {
        if bench.logged >= bench.count {
            return;
        }
        let elapsed = timer::now().saturating_since(bench.started);
        let due = if bench.rate == 0 {
            BENCH_BATCH
        } else {
            let target = (elapsed.as_nanos() * u128::from(bench.rate) / 1_000_000_000)
                .min(u128::from(bench.count)) as u32;
            target.saturating_sub(bench.logged).min(BENCH_BATCH)
        };
        bench.blocked = false;
        for _ in 0..due {
            if bench.logged >= bench.count {
                break;
            }
            let started = timer::now();
            match self.log_async(KIND_BENCH, &bench.payload) {
                Ok(sequence) => {
                    let done = timer::now();
                    bench.stall.record(nanos(done.saturating_since(started)));
                    if bench.logged.is_multiple_of(bench.stride) || bench.logged + 1 == bench.count
                    {
                        bench.marks.push((sequence, done));
                    }
                    bench.logged += 1;
                    bench.last_sequence = sequence;
                    self.state.bench_records += 1;
                }
                Err(Error::Full) => {
                    bench.refused += 1;
                    bench.blocked = true;
                    break;
                }
                Err(e) => {
                    println!("statelog: bench stopped: {e}");
                    bench.count = bench.logged;
                    break;
                }
            }
        }
    }

    /// Takes latency samples and finishes the benchmark when everything is durable.
    fn bench_progress(&mut self, now: Instant) {
        let Some(bench) = self.bench.as_mut() else {
            return;
        };
        // The pass's `now` may predate records logged in this pass.
        let now = timer::now().max(now);
        let reached = [
            self.log.durable_sequence(),
            self.log.acked_sequence(),
            self.log.peer_durable_sequence(),
        ];
        for (which, &position) in reached.iter().enumerate() {
            while let Some(&(sequence, at)) = bench.marks.get(bench.cursors[which]) {
                if sequence > position {
                    break;
                }
                bench.latency[which].record(nanos(now.saturating_since(at)));
                bench.cursors[which] += 1;
            }
        }
        let logged_all = bench.logged >= bench.count;
        let durable = reached[0] >= bench.last_sequence;
        let replicated = !bench.peer || reached[2] >= bench.last_sequence;
        let timed_out = now.saturating_since(bench.started) > BENCH_TIMEOUT;
        let finished = logged_all && durable && replicated;
        if !finished && !timed_out {
            return;
        }
        let Some(bench) = self.bench.take() else {
            return;
        };
        let (flush, commit) = self
            .disk
            .samples
            .take()
            .unwrap_or_else(|| (Histogram::new(), Histogram::new()));
        let elapsed = now.saturating_since(bench.started);
        let records_per_second =
            u64::from(bench.logged) * 1_000_000_000 / (elapsed.as_nanos().max(1) as u64);
        let [local, replicate, peer_durable] = &bench.latency;
        let mut object = JsonObject::new()
            .raw("stall_us_p50", &bench.stall.percentile_us(50))
            .raw("stall_us_p90", &bench.stall.percentile_us(90))
            .raw("stall_us_p99", &bench.stall.percentile_us(99))
            .raw("stall_us_max", &bench.stall.percentile_us(100))
            .raw("flush_us_p50", &flush.percentile_us(50))
            .raw("flush_us_p90", &flush.percentile_us(90))
            .raw("flush_us_p99", &flush.percentile_us(99))
            .raw("commit_us_p50", &commit.percentile_us(50))
            .raw("commit_us_p90", &commit.percentile_us(90))
            .raw("commit_us_p99", &commit.percentile_us(99))
            .raw("durable_us_p50", &local.percentile_us(50))
            .raw("durable_us_p90", &local.percentile_us(90))
            .raw("durable_us_p99", &local.percentile_us(99))
            .raw("replicate_us_p50", &replicate.percentile_us(50))
            .raw("replicate_us_p90", &replicate.percentile_us(90))
            .raw("replicate_us_p99", &replicate.percentile_us(99))
            .raw("peer_durable_us_p50", &peer_durable.percentile_us(50))
            .raw("peer_durable_us_p90", &peer_durable.percentile_us(90))
            .raw("peer_durable_us_p99", &peer_durable.percentile_us(99))
            .raw("loop_stall_us_p50", &bench.pass.percentile_us(50))
            .raw("loop_stall_us_p90", &bench.pass.percentile_us(90))
            .raw("loop_stall_us_p99", &bench.pass.percentile_us(99))
            .raw("loop_stall_us_max", &bench.pass.percentile_us(100))
            .uint("records_per_s", records_per_second)
            .uint("records", u64::from(bench.logged))
            .uint("size", u64::from(bench.size))
            .uint("rate", u64::from(bench.rate))
            .uint("ring_full", bench.refused)
            .uint("commits", self.log.stats().commits - bench.commits_before)
            .uint("flushes", flush.len())
            .boolean("peer", bench.peer);
        if timed_out {
            object = object.boolean("timed_out", true);
        }
        let json = object.finish();
        self.say(&format!("LOG BENCH {json}\r\n"));
        self.bench_result = Some(json);
    }

    /// Answers a waiting `log sync` once its record is durable (and acknowledged).
    fn sync_progress(&mut self, now: Instant) {
        let Some(pending) = self.pending_sync.as_ref() else {
            return;
        };
        let sequence = pending.sequence;
        let took = now.saturating_since(pending.started);
        let status = self.log.replication_status();
        let lost = self.role != Some(Role::Primary)
            && sequence >= self.log.next_sequence()
            && self.staging.is_empty();
        let answer = if lost {
            format!(
                "{}log sync: sequence {sequence} was not logged: this node stopped being the primary\r\n",
                markers::ERROR
            )
        } else if self.is_synced(sequence) {
            let how = if status.role != Role::Primary {
                "durable locally; this node is no longer the primary"
            } else if status.peer_attached {
                "durable locally and on the peer"
            } else {
                "durable locally (no peer attached)"
            };
            format!(
                "synced: sequence {sequence} {how} ({}.{:03} ms)\r\n",
                took.as_millis(),
                took.as_micros() % 1000
            )
        } else if now >= pending.deadline {
            format!(
                "{}log sync: sequence {sequence} not confirmed within {} ms (local disk up to {}, peer {} up to {})\r\n",
                markers::ERROR,
                SYNC_TIMEOUT.as_millis(),
                self.log.durable_sequence(),
                if status.peer_attached {
                    "attached, durable"
                } else {
                    "detached"
                },
                self.log.peer_durable_sequence()
            )
        } else {
            return;
        };
        self.pending_sync = None;
        self.answer = Some(answer);
    }

    fn describe(&self, duplex: Option<&Duplex>, json: bool, out: &mut String) {
        let status = self.log.replication_status();
        let stats = self.log.stats();
        let capacity = self.disk.block_count() * self.disk.block_size() as u64;
        let recovery = self
            .report
            .map_or_else(|| String::from("new log (formatted)"), |r| format!("{r}"));
        let last_note = self.state.notes.back().map_or(0, |n| n.sequence);
        let last_error = self.last_error.map_or_else(String::new, |(e, at)| {
            format!("{e} at {} ms", at.as_millis())
        });
        let duplex_state = duplex.map_or_else(
            || String::from("standalone"),
            |d| format!("{}", d.node.state()),
        );
        if json {
            let object = JsonObject::new()
                .boolean("running", true)
                .string("device", &format!("virtio-blk {}", self.disk.address))
                .uint("capacity_bytes", capacity)
                .string("log_id", &format!("{:#018x}", self.log.log_id()))
                .uint("boot", self.log.boot())
                .boolean("formatted", self.formatted)
                .string("role", role_name(self.role))
                .string("duplex_state", &duplex_state)
                .uint("epoch", status.epoch)
                .uint("next_sequence", self.log.next_sequence())
                .uint("durable_sequence", self.log.durable_sequence())
                .uint("acked_sequence", self.log.acked_sequence())
                .uint("peer_durable_sequence", self.log.peer_durable_sequence())
                .uint("pending_records", self.log.pending_records() as u64)
                .boolean("peer_attached", status.peer_attached)
                .boolean("peer_in_sync", status.peer_in_sync)
                .boolean("superseded", status.superseded)
                .uint("session", status.session)
                .uint("frames_in", self.counters.frames_in)
                .uint("frames_out", self.counters.frames_out)
                .uint("bad_tag", self.counters.bad_tag)
                .uint("retransmissions", stats.retransmissions)
                .uint("records_received", stats.records_received)
                .uint("notes", self.state.notes.len() as u64)
                .uint("last_note_sequence", last_note)
                .uint("bridge_entries", self.state.bridge.table.len() as u64)
                .uint("bridge_records", self.counters.bridge_records)
                .uint("checkpoints", self.counters.checkpoints)
                .uint("restores", self.counters.restores)
                .uint("commits", stats.commits)
                .uint("flushes", self.disk.flushes)
                .uint("flush_us_last", self.disk.last_flush.as_micros() as u64)
                .uint("flush_us_max", self.disk.max_flush.as_micros() as u64)
                .uint("commit_us_last", self.disk.last_commit.as_micros() as u64)
                .uint("commit_us_max", self.disk.max_commit.as_micros() as u64)
                .uint("staged", self.staging.len() as u64)
                .uint("dropped_on_step_down", self.counters.dropped_on_step_down)
                .uint("loop_stall_us_max", self.pass_max.as_micros() as u64)
                .string(
                    "log_passes_over_0_5_1_2_ms",
                    &format!("{:?}", self.passes_over),
                )
                .uint("recovered_records", self.report.map_or(0, |r| r.records))
                .uint(
                    "recovered_last_sequence",
                    self.report.map_or(0, |r| r.last_sequence),
                )
                .uint("recovery_ms", self.recovery_time.as_millis() as u64)
                .string("recovery", &recovery)
                .string("last_error", &last_error)
                .finish();
            let _ = write!(out, "{object}\r\n");
            return;
        }
        let mut line = |text: String| {
            out.push_str(&text);
            out.push_str("\r\n");
        };
        line(format!(
            "device:      virtio-blk at {}, {} MiB, write cache {:?}",
            self.disk.address,
            capacity >> 20,
            self.disk.device.write_cache()
        ));
        line(format!(
            "log:         id {:#018x}, boot {}, {} data pages, {} in use, head page {}",
            self.log.log_id(),
            self.log.boot(),
            self.log.data_pages(),
            self.log.pages_used(),
            self.log.head_page()
        ));
        line(format!(
            "role:        {}, epoch {} (duplex: {duplex_state})",
            role_name(self.role),
            status.epoch
        ));
        line(format!(
            "sequences:   next {}, durable {}, peer acked {}, peer durable {}; {} records pending ({} bytes)",
            self.log.next_sequence(),
            self.log.durable_sequence(),
            self.log.acked_sequence(),
            self.log.peer_durable_sequence(),
            self.log.pending_records(),
            self.log.ring_bytes_used()
        ));
        line(format!(
            "replication: peer {}{}{}, session {:#x}; frames in {} (bad tag {}, refused {}), out {} (busy {}); retransmissions {}; records received {}",
            if status.peer_attached {
                "attached"
            } else {
                "detached"
            },
            if status.peer_in_sync { ", in sync" } else { "" },
            if status.superseded {
                ", SUPERSEDED"
            } else {
                ""
            },
            status.session,
            self.counters.frames_in,
            self.counters.bad_tag,
            self.counters.refused,
            self.counters.frames_out,
            self.counters.transmit_busy,
            stats.retransmissions,
            stats.records_received
        ));
        line(format!(
            "state:       bridge {} stations (config {:?}), {} bridge records logged, {} restores; notes {} (last sequence {}); bench records {}",
            self.state.bridge.table.len(),
            self.state.bridge.config,
            self.counters.bridge_records,
            self.counters.restores,
            self.state.notes.len(),
            last_note,
            self.state.bench_records
        ));
        line(format!(
            "disk:        commits {}, pages {}; batches {} (last {} us, max {} us), flushes {} (last {} us, max {} us), asynchronous; longest log pass {} us (over 0.5/1/2 ms: {:?}); checkpoints {}; staged {}",
            stats.commits,
            stats.pages_written,
            self.disk.batches,
            self.disk.last_commit.as_micros(),
            self.disk.max_commit.as_micros(),
            self.disk.flushes,
            self.disk.last_flush.as_micros(),
            self.disk.max_flush.as_micros(),
            self.pass_max.as_micros(),
            self.passes_over,
            self.counters.checkpoints,
            self.staging.len()
        ));
        let phases: Vec<u128> = self.phase_max.iter().map(|d| d.as_micros()).collect();

        line(format!(
            "pass parts:  longest receive/role+peer/state/transmit/disk/progress: {phases:?} us"
        ));
        line(format!(
            "recovery:    {recovery} ({} ms)",
            self.recovery_time.as_millis()
        ));
        if !last_error.is_empty() {
            line(format!(
                "last error:  {last_error} ({} errors)",
                self.counters.errors
            ));
        }
        if let Some(result) = &self.bench_result {
            line(format!("last bench:  {result}"));
        }
    }
}
