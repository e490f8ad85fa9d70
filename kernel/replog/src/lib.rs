//! The Duplex replicated state log.
//!
//! Services log the state they want to survive a failure (the bridge's configuration and
//! MAC table first, connection tracking later). A record is copied into memory at once,
//! written to the local block device in 4 KiB-aligned commits, and streamed to the peer;
//! after a crash the log replays the latest checkpoint plus every later record; on the
//! standby every replicated record is handed to the service as it arrives. This is the
//! paper's `log_async` / `log_notify` / `log_recover`, without blocking and without a clock.
//!
//! # Layers
//!
//! | module | what |
//! | --- | --- |
//! | `crc` | CRC-32C (Castagnoli), table-driven |
//! | `format` | on-disk layout: superblock, commit header, record header (SPEC.md) |
//! | `ring` | bounded in-memory ring that `log_async` copies into |
//! | [`Log`] | the engine: ring, disk writer (`poll`), recovery (`open`), checkpoints |
//! | [`wire`] | replication frames (SPEC.md "Replication"); sender and receiver live in [`Log`] |
//! | [`bridge`] | typed records for the bridge: configuration and MAC table |
//!
//! # Use
//!
//! ```text
//! boot:        let (mut log, report) = Log::open(&mut disk, config, |record| service.replay(record))?;
//!              console.print(report)          // says where recovery stopped and why
//! primary:     log.become_primary(epoch)?; log.attach_peer();
//!              let seq = log.log_async(kind, &bytes)?;      // a memory copy
//!              let ticket = log.log_sync(kind, &bytes)?;    // then poll until log.is_durable(ticket)
//! standby:     log.become_replica(epoch, now);
//!              log.receive_frame(frame, now, |record| service.apply(record))?;   // log_notify
//! main loop:   log.poll(&mut disk, now)?;                   // commits + flush
//!              log.transmit(now, |frame| nic.send(0x88B6, frame));
//!              sleep until log.poll_at(now)
//! ```
//!
//! Nothing here blocks (the block device's `flush` is the only wait, inside `poll`) and
//! nothing reads a clock: `now` comes in, and [`Log::poll_at`] says when to call again.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bridge;
mod crc;
pub mod format;
mod log;
mod recovery;
mod replication;
mod ring;
pub mod wire;

pub use crc::{Crc32c, crc32c};
pub use log::{Log, ReplicationStatus, Role, Stats, Ticket};
pub use recovery::{Damage, LogEnd, RecoveryReport};

use core::fmt;
use core::time::Duration;

/// Record sequence number: 1 for the first record ever, then +1 per record; 0 means none.
pub type Sequence = u64;
/// Epoch (term) of a primary: raised by the Duplex state machine at each take-over.
pub type Epoch = u64;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The block device failed.
    Device(duplex_hal::Error),
    /// The in-memory ring has no room: the record was NOT logged. Poll, then retry.
    Full,
    /// The record (or checkpoint) is larger than the configuration allows.
    TooLarge,
    /// The disk has no free page for the next commit: write a checkpoint.
    LogFull,
    /// The device carries no superblock of this format (never formatted).
    NotFormatted,
    /// Both superblock copies are damaged or inconsistent with the device.
    CorruptSuperblock,
    /// The superblock was written by an unknown format version.
    UnsupportedVersion(u32),
    /// The device is too small or its block size does not divide 4096.
    UnsupportedDevice,
    /// The configuration is inconsistent (see [`Config::validate`]).
    InvalidConfig,
    /// Records can only be logged by the primary.
    NotPrimary,
    /// The frame or the requested epoch is older than the epoch already accepted.
    StaleEpoch,
    /// A frame could not be decoded.
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Device(error) => write!(f, "block device: {error}"),
            Error::Full => f.write_str("log ring full"),
            Error::TooLarge => f.write_str("record too large"),
            Error::LogFull => f.write_str("log device full: a checkpoint is needed"),
            Error::NotFormatted => f.write_str("no replog superblock on the device"),
            Error::CorruptSuperblock => f.write_str("both replog superblock copies are damaged"),
            Error::UnsupportedVersion(version) => {
                write!(f, "replog format version {version} is not supported")
            }
            Error::UnsupportedDevice => f.write_str("block device too small or odd block size"),
            Error::InvalidConfig => f.write_str("invalid replog configuration"),
            Error::NotPrimary => f.write_str("only the primary logs records"),
            Error::StaleEpoch => f.write_str("epoch older than the accepted one"),
            Error::Malformed => f.write_str("malformed replication frame"),
        }
    }
}

impl From<duplex_hal::Error> for Error {
    fn from(error: duplex_hal::Error) -> Self {
        Error::Device(error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T = ()> = core::result::Result<T, Error>;

/// A record as recovery and replication hand it to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its sequence number.
    pub sequence: Sequence,
    /// The epoch of the primary that logged it.
    pub epoch: Epoch,
    /// The application's kind (see [`bridge`] for the kinds in use).
    pub kind: u16,
    /// A checkpoint: the service replaces all its state with this payload.
    pub checkpoint: bool,
    /// The bytes the service logged.
    pub payload: &'a [u8],
}

/// What the peer's acknowledgement must say before a [`Log::log_sync`] ticket completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerAck {
    /// The peer holds the record in memory (it will write it within a commit).
    Received,
    /// The peer has the record on its own disk.
    #[default]
    Durable,
}

/// Sizes and timers of a [`Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bytes of the in-memory ring (payloads of records not yet durable or acknowledged).
    pub ring_bytes: usize,
    /// Records the ring holds at most.
    pub ring_records: usize,
    /// Largest payload of one record.
    pub max_record_len: usize,
    /// Largest checkpoint payload.
    pub max_checkpoint_len: usize,
    /// Target size of one commit and largest single device write (multiple of 4096).
    pub commit_bytes: usize,
    /// What a `log_sync` ticket waits for from an attached peer.
    pub peer_ack: PeerAck,
    /// Largest replication frame this node sends (the Ethernet payload, after the EtherType).
    pub frame_len: usize,
    /// Retransmission timeout until a round trip has been measured.
    pub retransmit_timeout: Duration,
    /// Retransmission timeout floor (the estimate is smoothed round trip + 4 deviations).
    pub min_retransmit_timeout: Duration,
    /// Retransmission timeout ceiling (the timeout doubles on each expiry).
    pub max_retransmit_timeout: Duration,
    /// How often the standby repeats its acknowledgement when nothing happens.
    pub ack_interval: Duration,
    /// Unacknowledged payload bytes the primary keeps in flight at most.
    pub max_in_flight: usize,
    /// Replication frames sent per `transmit` call at most.
    pub frames_per_transmit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_bytes: 1 << 20,
            ring_records: 16_384,
            max_record_len: 64 * 1024,
            max_checkpoint_len: 8 << 20,
            commit_bytes: 64 * 1024,
            peer_ack: PeerAck::Durable,
            frame_len: 1400,
            retransmit_timeout: Duration::from_millis(20),
            min_retransmit_timeout: Duration::from_millis(1),
            max_retransmit_timeout: Duration::from_secs(1),
            ack_interval: Duration::from_millis(10),
            max_in_flight: 256 * 1024,
            frames_per_transmit: 32,
        }
    }
}

impl Config {
    /// Checks the sizes against each other.
    pub fn validate(&self) -> Result {
        let ok = self.ring_bytes > 0
            && self.ring_records > 0
            && self.max_record_len <= self.ring_bytes
            && self.max_record_len <= u32::MAX as usize
            && self.max_checkpoint_len <= u32::MAX as usize
            && self.commit_bytes >= format::PAGE_SIZE
            && self.commit_bytes.is_multiple_of(format::PAGE_SIZE)
            && self.frame_len >= wire::MIN_FRAME_LEN
            && self.frame_len <= usize::from(u16::MAX)
            && self.max_in_flight > 0
            && self.frames_per_transmit > 0
            && !self.min_retransmit_timeout.is_zero()
            && self.retransmit_timeout >= self.min_retransmit_timeout
            && self.max_retransmit_timeout >= self.retransmit_timeout
            && !self.ack_interval.is_zero();
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig)
        }
    }
}
