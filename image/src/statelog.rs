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
//!   frames arrive (within [`PEER_SILENCE`]); `log_sync` then waits for the peer's disk.
//! - **Transport.** Replication frames travel in Ethernet frames of EtherType `0x88B6` to
//!   the group address `03:44:50:52:GG:GG` on the dedicated link port (the third NIC), or on
//!   the LAN port when there is none. Each carries a 16-byte tag after the replog frame:
//!   the heartbeat key's BLAKE3 keyed hash over the EtherType (2 bytes, big-endian) and the
//!   replog frame (replog SPEC §5.1). Frames without a valid tag are dropped and counted.
//!   The dataplane queues received frames ([`crate::dataplane::Dataplane::replication_in`]);
//!   the service drains the queue every main-loop pass.
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
//! All integers little-endian. The disk write and flush of a commit run synchronously in
//! the main loop (the `BlockDevice` trait is synchronous); [`Disk`] measures how long, and
//! `show log` and `log bench` report it as the main-loop stall the log causes.

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
use duplex_replog::{Config, Error, Log, Record, RecoveryReport, Role, Ticket, wire};

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
/// How often the primary asks the Duplex node whether its peer is alive.
const PEER_CHECK: Duration = Duration::from_millis(10);
/// A superseded primary takes a newer epoch at most this often.
const EPOCH_BUMP_INTERVAL: Duration = Duration::from_millis(50);
/// After a device error the writer waits this long before it tries again.
const DEVICE_RETRY: Duration = Duration::from_millis(100);
/// Benchmark records logged per main-loop pass at most.
const BENCH_BATCH: u32 = 512;
/// Latency marks a benchmark keeps at most (records sampled evenly).
const BENCH_MARKS: u32 = 4096;
/// Stall samples a benchmark keeps at most.
const BENCH_STALLS: usize = 200_000;
/// A benchmark gives up after this long.
const BENCH_TIMEOUT: Duration = Duration::from_secs(120);

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

/// The virtio-blk device with timings.
pub struct Disk {
    device: VirtioBlk,
    /// PCI address, for the console.
    pub address: pci::PciAddress,
    /// Flushes since boot.
    pub flushes: u64,
    /// Time of the last flush.
    pub last_flush: Duration,
    /// Longest flush.
    pub max_flush: Duration,
    /// Longest write request (one call).
    pub max_write: Duration,
    /// Flush durations in ns, while a benchmark records them.
    samples: Option<Vec<u32>>,
}

fn nanos(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos()).unwrap_or(u32::MAX)
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
        let started = timer::now();
        let result = self.device.write(block, buf);
        self.max_write = self.max_write.max(timer::now().saturating_since(started));
        result
    }
    fn flush(&mut self) -> duplex_hal::Result {
        let started = timer::now();
        let result = self.device.flush();
        let took = timer::now().saturating_since(started);
        self.flushes += 1;
        self.last_flush = took;
        self.max_flush = self.max_flush.max(took);
        if let Some(samples) = self.samples.as_mut() {
            samples.push(nanos(took));
        }
        result
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
    stall: Vec<u32>,
    marks: Vec<(u64, Instant)>,
    cursors: [usize; 3],
    /// Latencies to local durability, peer receipt, peer durability (ns).
    latency: [Vec<u32>; 3],
    commit: Vec<u32>,
    pass_max: Duration,
    pass: Vec<u32>,
    commits_before: u64,
}

/// Nearest-rank percentile of `samples` (sorted in place), in µs with one decimal.
fn percentile_us(samples: &mut [u32], p: u32) -> String {
    if samples.is_empty() {
        return String::from("null");
    }
    samples.sort_unstable();
    let rank = (samples.len() * p as usize)
        .div_ceil(100)
        .clamp(1, samples.len());
    let ns = samples[rank - 1];
    format!("{}.{}", ns / 1000, (ns % 1000) / 100)
}

// ----- the service -----

/// The replication transport: where frames go and the key that tags them.
struct Transport {
    key: Key,
    port: usize,
    source: MacAddress,
    destination: MacAddress,
    frame: Vec<u8>,
}

/// What a `log sync` waits for.
struct PendingSync {
    ticket: Ticket,
    started: Instant,
    deadline: Instant,
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
}

/// The running log.
pub struct Active {
    disk: Disk,
    log: Log,
    report: Option<RecoveryReport>,
    formatted: bool,
    recovery_time: Duration,
    /// The logged state (primary) or the replicated one (replica).
    pub state: AppState,
    transport: Option<Transport>,
    transport_checked: bool,
    role: Option<Role>,
    attached: bool,
    peer_alive: bool,
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
            flushes: 0,
            last_flush: Duration::ZERO,
            max_flush: Duration::ZERO,
            max_write: Duration::ZERO,
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
        StateLog {
            active: Some(Active {
                disk,
                log,
                report,
                formatted,
                recovery_time,
                state,
                transport: None,
                transport_checked: false,
                role: None,
                attached: false,
                peer_alive: false,
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
        if let Some(bench) = active.bench.as_mut() {
            bench.pass_max = bench.pass_max.max(took);
            bench.pass.push(nanos(took));
        }
    }

    /// When the service next has work (`Instant::MAX`: only a frame or a command makes some).
    pub fn poll_at(&self, now: Instant) -> Instant {
        let Some(active) = self.active.as_ref() else {
            return Instant::MAX;
        };
        if active.bench.is_some() {
            return now;
        }
        let mut at = active.log.poll_at(now).unwrap_or(Instant::MAX);
        if active.role == Some(Role::Primary) {
            at = at.min(active.next_table_check);
        }
        if active.transport.is_some() {
            at = at.min(active.next_peer_check);
        }
        if let Some(pending) = &active.pending_sync {
            at = at.min(pending.deadline);
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
        match active.log_note_sync(text) {
            Ok(ticket) => {
                active.pending_sync = Some(PendingSync {
                    ticket,
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
        active.disk.samples = Some(Vec::new());
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
            stall: Vec::with_capacity((count as usize).min(BENCH_STALLS)),
            marks: Vec::new(),
            cursors: [0; 3],
            latency: [Vec::new(), Vec::new(), Vec::new()],
            commit: Vec::new(),
            pass_max: Duration::ZERO,
            pass: Vec::new(),
            commits_before: active.log.stats().commits,
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
    fn error(&mut self, error: Error, now: Instant) {
        self.counters.errors += 1;
        let repeated = self.last_error.is_some_and(|(last, _)| last == error);
        if !repeated {
            println!("statelog: {error}");
        }
        self.last_error = Some((error, now));
    }

    fn log_note(&mut self, text: &str) -> Result<u64, Error> {
        let sequence = self.log.log_async(KIND_NOTE, text.as_bytes())?;
        self.noted(sequence, text);
        Ok(sequence)
    }

    fn log_note_sync(&mut self, text: &str) -> Result<Ticket, Error> {
        let ticket = self.log.log_sync(KIND_NOTE, text.as_bytes())?;
        self.noted(ticket.sequence(), text);
        Ok(ticket)
    }

    fn noted(&mut self, sequence: u64, text: &str) {
        let epoch = self.log.replication_status().epoch;
        self.state.applied += 1;
        self.state.push_note(Note {
            sequence,
            epoch,
            text: String::from(text),
        });
    }

    fn checkpoint(&mut self) -> Result<u64, Error> {
        let sequence = self.log.checkpoint(KIND_SNAPSHOT, self.state.snapshot())?;
        self.counters.checkpoints += 1;
        Ok(sequence)
    }

    fn poll(&mut self, dataplane: &mut Dataplane, duplex: Option<&mut Duplex>, now: Instant) {
        if !self.transport_checked {
            self.transport_checked = true;
            self.transport = duplex.as_deref().and_then(|d| {
                // The dedicated link when there is one, else the LAN port.
                let port = if dataplane.ports.len() > 2 { 2 } else { 0 };
                let config = d.node.config();
                Some(Transport {
                    key: config.key.clone(),
                    port,
                    source: dataplane.ports.get(port)?.nic.mac_address(),
                    destination: group_address(config.group),
                    frame: alloc::vec![0; 1514],
                })
            });
        }
        self.receive(dataplane, now);
        self.follow_role(dataplane, duplex.as_deref(), now);
        if self.role == Some(Role::Primary) {
            self.follow_peer(duplex.as_deref(), now);
            self.log_bridge_changes(&mut dataplane.bridge, now);
            if self.log.checkpoint_wanted()
                && let Err(e) = self.checkpoint()
            {
                self.error(e, now);
            }
            self.bench_step();
        }
        self.transmit(&mut dataplane.ports, now);
        if now >= self.retry_at && self.log.poll_at(now).is_some_and(|at| at <= now) {
            let commits = self.log.stats().commits;
            let started = timer::now();
            let result = self.log.poll(&mut self.disk, now);
            let took = timer::now().saturating_since(started);
            if let Some(bench) = self.bench.as_mut()
                && self.log.stats().commits != commits
            {
                bench.commit.push(nanos(took));
            }
            match result {
                Ok(()) => {}
                Err(e @ Error::Device(_)) => {
                    self.retry_at = now + DEVICE_RETRY;
                    self.error(e, now);
                }
                Err(e) => self.error(e, now),
            }
            self.transmit(&mut dataplane.ports, now);
        }
        self.bench_progress(now);
        self.sync_progress(now);
        if let Some(d) = duplex {
            // The heartbeats announce how far this node's log is on disk.
            d.node.set_log_position(self.log.durable_sequence());
        }
    }

    /// Drains the dataplane's queue of replication frames into the log.
    fn receive(&mut self, dataplane: &mut Dataplane, now: Instant) {
        while let Some((_ingress, frame)) = dataplane.replication_in.pop_front() {
            self.counters.frames_in += 1;
            let Some(transport) = self.transport.as_ref() else {
                self.counters.ignored += 1;
                continue;
            };
            if frame.len() < ETHERNET_HEADER_LEN + wire::HEADER_LEN + TAG_LEN {
                self.counters.malformed += 1;
                continue;
            }
            if frame[6..12] == transport.source.0 {
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
                    match records::log_record(&mut self.log, &BridgeRecord::Config(config)) {
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
                self.bench = None;
                self.disk.samples = None;
                println!(
                    "statelog: replica (epoch {})",
                    self.log.replication_status().epoch
                );
            }
        }
    }

    fn become_primary(&mut self, now: Instant) {
        let epoch = self
            .log
            .replication_status()
            .epoch
            .max(self.peer_epoch)
            .saturating_add(1);
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
            self.peer_alive = duplex.node.status().peers.iter().any(|p| p.alive);
        }
        let present = self.peer_alive
            && self
                .peer_heard
                .is_some_and(|heard| now.saturating_since(heard) < PEER_SILENCE);
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
            match records::log_record(&mut self.log, &change) {
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

    /// Sends what replication owes the peer.
    fn transmit(&mut self, ports: &mut [Port], now: Instant) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let Some(port) = ports.get_mut(transport.port) else {
            return;
        };
        let counters = &mut self.counters;
        let mut sent = false;
        self.log.transmit(now, |body| {
            let end = ETHERNET_HEADER_LEN + body.len();
            let Some(frame) = transport.frame.get_mut(..end + TAG_LEN) else {
                return false;
            };
            frame[0..6].copy_from_slice(&transport.destination.0);
            frame[6..12].copy_from_slice(&transport.source.0);
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
        let Some(bench) = self.bench.as_mut() else {
            return;
        };
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
        for _ in 0..due {
            if bench.logged >= bench.count {
                break;
            }
            let started = timer::now();
            match self.log.log_async(KIND_BENCH, &bench.payload) {
                Ok(sequence) => {
                    let done = timer::now();
                    if bench.stall.len() < BENCH_STALLS {
                        bench.stall.push(nanos(done.saturating_since(started)));
                    }
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
                bench.latency[which].push(nanos(now.saturating_since(at)));
                bench.cursors[which] += 1;
            }
        }
        let logged_all = bench.logged >= bench.count;
        let durable = reached[0] >= bench.last_sequence;
        let replicated = !bench.peer || reached[2] >= bench.last_sequence;
        let timed_out = now.saturating_since(bench.started) > BENCH_TIMEOUT;
        if !(logged_all && durable && replicated) && !timed_out {
            return;
        }
        let Some(mut bench) = self.bench.take() else {
            return;
        };
        let mut flush = self.disk.samples.take().unwrap_or_default();
        let elapsed = now.saturating_since(bench.started);
        let records_per_second =
            u64::from(bench.logged) * 1_000_000_000 / (elapsed.as_nanos().max(1) as u64);
        let [local, replicate, peer_durable] = &mut bench.latency;
        let mut object = JsonObject::new()
            .raw("stall_us_p50", &percentile_us(&mut bench.stall, 50))
            .raw("stall_us_p90", &percentile_us(&mut bench.stall, 90))
            .raw("stall_us_p99", &percentile_us(&mut bench.stall, 99))
            .raw("stall_us_max", &percentile_us(&mut bench.stall, 100))
            .raw("flush_us_p50", &percentile_us(&mut flush, 50))
            .raw("flush_us_p90", &percentile_us(&mut flush, 90))
            .raw("flush_us_p99", &percentile_us(&mut flush, 99))
            .raw("commit_us_p50", &percentile_us(&mut bench.commit, 50))
            .raw("commit_us_p90", &percentile_us(&mut bench.commit, 90))
            .raw("commit_us_p99", &percentile_us(&mut bench.commit, 99))
            .raw("durable_us_p50", &percentile_us(local, 50))
            .raw("durable_us_p90", &percentile_us(local, 90))
            .raw("replicate_us_p50", &percentile_us(replicate, 50))
            .raw("replicate_us_p90", &percentile_us(replicate, 90))
            .raw("replicate_us_p99", &percentile_us(replicate, 99))
            .raw("peer_durable_us_p90", &percentile_us(peer_durable, 90))
            .raw("loop_stall_us_p99", &percentile_us(&mut bench.pass, 99))
            .raw("loop_stall_us_max", &percentile_us(&mut bench.pass, 100))
            .uint("records_per_s", records_per_second)
            .uint("records", u64::from(bench.logged))
            .uint("size", u64::from(bench.size))
            .uint("rate", u64::from(bench.rate))
            .uint("ring_full", bench.refused)
            .uint("commits", self.log.stats().commits - bench.commits_before)
            .uint("flushes", flush.len() as u64)
            .boolean("peer", bench.peer);
        if timed_out {
            object = object.boolean("timed_out", true);
        }
        let json = object.finish();
        println!("LOG BENCH {json}");
        self.bench_result = Some(json);
    }

    /// Answers a waiting `log sync` once its record is durable (and acknowledged).
    fn sync_progress(&mut self, now: Instant) {
        let Some(pending) = self.pending_sync.as_ref() else {
            return;
        };
        let sequence = pending.ticket.sequence();
        let took = now.saturating_since(pending.started);
        let status = self.log.replication_status();
        let answer = if self.log.is_durable(pending.ticket) {
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
                .uint("loop_stall_us_max", self.pass_max.as_micros() as u64)
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
            "disk:        commits {}, pages {}, flushes {} (last {} us, max {} us), longest write {} us; longest log pass {} us; checkpoints {}",
            stats.commits,
            stats.pages_written,
            self.disk.flushes,
            self.disk.last_flush.as_micros(),
            self.disk.max_flush.as_micros(),
            self.disk.max_write.as_micros(),
            self.pass_max.as_micros(),
            self.counters.checkpoints
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
