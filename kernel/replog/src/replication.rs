//! Replication: the primary's sender and the standby's receiver (SPEC.md "Replication").
//!
//! Go-back-N over a byte stream of records: the primary sends pieces of records from its
//! ring; the standby accepts only the piece that continues its log exactly and answers
//! with a cumulative acknowledgement (position, window, durable sequence). Retransmission
//! on timeout (estimated from measured round trips) and on three duplicate
//! acknowledgements; flow control by the standby's
//! window and `max_in_flight`. A standby joins with a new session; the primary resumes it
//! from its position when that position is in the primary's history, or restarts it from a
//! checkpoint ("reset") otherwise.

use alloc::vec::Vec;
use core::time::Duration;

use duplex_hal::Instant;

use crate::log::{Log, ReplicationStatus, Role};
use crate::ring::Meta;
use crate::wire::{Ack, DataFrame, DataFrameWriter, Frame, Header, Piece};
use crate::{Config, Epoch, Error, Record, Result, Sequence};

/// A position in the record stream: every byte before byte `.1` of record `.0` is held.
type Position = (Sequence, u32);

/// The primary's side.
#[derive(Debug)]
pub(crate) struct Sender {
    pub attached: bool,
    session: Option<u64>,
    /// The peer's position is known and records are retained for it.
    tracking: bool,
    /// The peer needs a checkpoint that has not been logged yet.
    catch_up: bool,
    /// Pieces of this checkpoint carry the reset flag until the peer holds it.
    reset_sequence: Option<Sequence>,
    acked: Position,
    send_next: Position,
    peer_durable: Sequence,
    peer_window: u32,
    superseded: bool,
    deadline: Option<Instant>,
    /// Current timeout: `base_timeout` doubled by each expiry since the last progress.
    timeout: Duration,
    /// Timeout from the round-trip estimate (the configured initial one before any).
    base_timeout: Duration,
    min_timeout: Duration,
    max_timeout: Duration,
    /// Smoothed round trip and its mean deviation, once measured.
    round_trip: Option<(Duration, Duration)>,
    /// The one measurement in flight: the position an ack must reach, and when the frame
    /// that ends there was sent. Never started or kept across a go-back (Karn).
    timing: Option<(Position, Instant)>,
    duplicate_acks: u32,
    recovering: bool,
    /// The peer's disk asked for a checkpoint after the last one logged here.
    peer_wants_checkpoint: bool,
    /// The peer's disk is full: the next checkpoint goes to it as a reset.
    peer_full: bool,
    last_checkpoint: Sequence,
}

impl Sender {
    pub fn new(config: &Config) -> Sender {
        Sender {
            attached: false,
            session: None,
            tracking: false,
            catch_up: false,
            reset_sequence: None,
            acked: (0, 0),
            send_next: (0, 0),
            peer_durable: 0,
            peer_window: 0,
            superseded: false,
            deadline: None,
            timeout: config.retransmit_timeout,
            base_timeout: config.retransmit_timeout,
            min_timeout: config.min_retransmit_timeout,
            max_timeout: config.max_retransmit_timeout,
            round_trip: None,
            timing: None,
            duplicate_acks: 0,
            recovering: false,
            peer_wants_checkpoint: false,
            peer_full: false,
            last_checkpoint: 0,
        }
    }

    fn in_sync(&self) -> bool {
        self.attached && self.tracking && self.reset_sequence.is_none()
    }

    /// Every record up to this one is held by the peer.
    pub fn peer_received(&self) -> Sequence {
        if self.in_sync() {
            self.acked.0.saturating_sub(1)
        } else {
            0
        }
    }

    /// Every record up to this one is on the peer's disk.
    pub fn peer_durable(&self) -> Sequence {
        if self.in_sync() {
            self.peer_durable.min(self.peer_received())
        } else {
            0
        }
    }

    /// Entries below this sequence may leave the ring: an attached peer keeps what it
    /// has not acknowledged, and everything until its first acknowledgement (its join)
    /// is decided; a peer that needs a checkpoint keeps nothing.
    pub fn retention_limit(&self) -> Sequence {
        if !self.attached {
            Sequence::MAX
        } else if self.tracking {
            self.acked.0
        } else if self.session.is_none() {
            0
        } else {
            Sequence::MAX
        }
    }

    /// The peer cannot continue without a checkpoint.
    pub fn peer_needs_checkpoint(&self) -> bool {
        self.attached && self.catch_up
    }

    /// The peer needs a checkpoint, or its disk asks for one.
    pub fn needs_checkpoint(&self) -> bool {
        self.attached && (self.catch_up || self.peer_wants_checkpoint)
    }

    fn peer_asks(&mut self, ack: &Ack) {
        if ack.next_sequence > self.last_checkpoint {
            self.peer_wants_checkpoint = ack.checkpoint_wanted;
            self.peer_full = ack.log_full;
        }
    }

    /// A checkpoint was logged: a peer waiting for one restarts from it.
    pub fn checkpoint_logged(&mut self, sequence: Sequence) {
        self.last_checkpoint = sequence;
        self.peer_wants_checkpoint = false;
        // A full peer cannot take the records before the checkpoint; a reset needs no
        // ring space there and supersedes them.
        if self.attached && (self.catch_up || (self.peer_full && self.tracking)) {
            self.peer_full = false;
            self.start_reset(sequence);
        }
    }

    fn start_reset(&mut self, sequence: Sequence) {
        self.catch_up = false;
        self.tracking = true;
        self.reset_sequence = Some(sequence);
        self.acked = (sequence, 0);
        self.send_next = (sequence, 0);
        self.timing = None;
        self.peer_durable = 0;
        self.deadline = None;
        self.recovering = false;
        self.duplicate_acks = 0;
    }

    /// Takes a round-trip sample (RFC 6298 weights) when the timed frame is acknowledged.
    fn measure(&mut self, acked: Position, now: Instant) {
        let Some((until, sent)) = self.timing else {
            return;
        };
        if acked < until {
            return;
        }
        self.timing = None;
        let sample = now.saturating_since(sent);
        let (smoothed, deviation) = match self.round_trip {
            None => (sample, sample / 2),
            Some((smoothed, deviation)) => {
                let error = smoothed.abs_diff(sample);
                ((smoothed * 7 + sample) / 8, (deviation * 3 + error) / 4)
            }
        };
        self.round_trip = Some((smoothed, deviation));
        self.base_timeout = (smoothed + deviation * 4).clamp(self.min_timeout, self.max_timeout);
    }

    /// Goes back to the acknowledged position to send again.
    fn go_back(&mut self) {
        self.send_next = self.acked;
        self.timing = None;
    }

    fn advance(&mut self, to: Position, now: Instant) {
        self.measure(to, now);
        self.acked = to;
        if self.send_next < to {
            self.send_next = to;
        }
        self.timeout = self.base_timeout;
        self.duplicate_acks = 0;
        self.recovering = false;
        self.deadline = (self.send_next > self.acked).then(|| now + self.timeout);
    }
}

/// A record being reassembled on the standby.
#[derive(Debug)]
struct Partial {
    sequence: Sequence,
    epoch: Epoch,
    kind: u16,
    checkpoint: bool,
    reset: bool,
    total: u32,
    data: Vec<u8>,
}

/// The standby's side.
#[derive(Debug)]
pub(crate) struct Receiver {
    session: u64,
    accepted_epoch: Epoch,
    partial: Option<Partial>,
    ack_due: bool,
    next_ack_at: Option<Instant>,
    joins: u32,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver {
            session: 0,
            accepted_epoch: 0,
            partial: None,
            ack_due: false,
            next_ack_at: None,
            joins: 0,
        }
    }

    /// The local disk moved on: tell the primary at the next `transmit`.
    pub fn ack_due_at(&mut self, now: Instant) {
        self.next_ack_at = Some(now);
    }
}

impl Log {
    /// Makes this node the primary of `epoch` (at least the epoch of every record it
    /// holds). Records logged from now on carry `epoch`. The peer starts detached.
    pub fn become_primary(&mut self, epoch: Epoch) -> Result {
        if epoch < self.last.1 || epoch < self.epoch || epoch < self.receiver.accepted_epoch {
            return Err(Error::StaleEpoch);
        }
        self.role = Role::Primary;
        self.epoch = epoch;
        self.receiver.partial = None;
        self.sender = Sender::new(&self.config);
        Ok(())
    }

    /// Makes this node a standby that accepts records of `epoch` or later. It starts a new
    /// session (it "joins"): the primary answers its first acknowledgement by resuming it
    /// or by restarting it from a checkpoint. Records logged here but not yet written stay
    /// and are written; a reset from the primary drops them.
    pub fn become_replica(&mut self, epoch: Epoch, now: Instant) {
        self.role = Role::Replica;
        self.sender = Sender::new(&self.config);
        let receiver = &mut self.receiver;
        receiver.joins = receiver.joins.wrapping_add(1);
        receiver.session = self.boot.wrapping_shl(32) | u64::from(receiver.joins);
        receiver.accepted_epoch = receiver.accepted_epoch.max(epoch).max(self.last.1);
        receiver.partial = None;
        receiver.ack_due = true;
        receiver.next_ack_at = Some(now);
    }

    /// Primary: the peer is alive (the Duplex state machine says so). From now on tickets
    /// wait for its acknowledgement and records are retained until it has them.
    pub fn attach_peer(&mut self) {
        if !self.sender.attached {
            self.sender = Sender::new(&self.config);
            self.sender.attached = true;
        }
    }

    /// Primary: the peer is gone. Tickets complete on local durability alone; when it
    /// comes back it joins again.
    pub fn detach_peer(&mut self) {
        self.sender = Sender::new(&self.config);
        self.release();
    }

    /// Replication state.
    pub fn replication_status(&self) -> ReplicationStatus {
        let sender = &self.sender;
        ReplicationStatus {
            role: self.role,
            epoch: match self.role {
                Role::Primary => self.epoch,
                Role::Replica => self.receiver.accepted_epoch,
            },
            peer_attached: sender.attached,
            peer_in_sync: sender.in_sync(),
            peer_needs_checkpoint: sender.peer_needs_checkpoint(),
            peer_received: sender.peer_received(),
            peer_durable: sender.peer_durable(),
            superseded: sender.superseded,
            session: match self.role {
                Role::Primary => sender.session.unwrap_or(0),
                Role::Replica => self.receiver.session,
            },
        }
    }

    /// Takes one replication frame from the peer (what followed the EtherType).
    /// On the standby every record that completes is handed to `notify` (`log_notify`)
    /// and queued for the local disk. Returns [`Error::Malformed`] for an undecodable
    /// frame and [`Error::StaleEpoch`] for data from an older primary (refused).
    pub fn receive_frame<F: FnMut(Record<'_>)>(
        &mut self,
        frame: &[u8],
        now: Instant,
        notify: F,
    ) -> Result {
        self.stats.frames_received += 1;
        match Frame::parse(frame)? {
            Frame::Ack(ack) => {
                self.receive_ack(&ack, now);
                Ok(())
            }
            Frame::Data(data) => self.receive_data(&data, notify),
        }
    }

    fn receive_ack(&mut self, ack: &Ack, now: Instant) {
        if self.role != Role::Primary || !self.sender.attached {
            self.stats.frames_ignored += 1;
            return;
        }
        if ack.header.epoch > self.epoch {
            self.sender.superseded = true;
            return;
        }
        let session = ack.header.session;
        match self.sender.session {
            Some(current) if session < current => {
                self.stats.frames_ignored += 1;
            }
            Some(current) if session == current => self.ack_progress(ack, now),
            _ => self.join(ack),
        }
    }

    /// Is (next_sequence - 1, last_epoch) a record of this node's history?
    fn in_history(&self, next_sequence: Sequence, last_epoch: Epoch) -> bool {
        let Some(previous) = next_sequence.checked_sub(1) else {
            return false;
        };
        next_sequence <= self.next_sequence && self.epoch_of(previous) == Some(last_epoch)
    }

    fn join(&mut self, ack: &Ack) {
        self.sender.session = Some(ack.header.session);
        self.sender.peer_window = ack.window;
        self.sender.peer_asks(ack);
        if !ack.resetting && self.in_history(ack.next_sequence, ack.last_epoch) {
            let sender = &mut self.sender;
            sender.catch_up = false;
            sender.tracking = true;
            sender.reset_sequence = None;
            sender.acked = (ack.next_sequence, ack.next_offset);
            sender.go_back();
            sender.peer_durable = ack.durable_sequence.min(ack.next_sequence - 1);
            sender.deadline = None;
            return;
        }
        // Restart the peer from the latest checkpoint still in the ring, or ask for one.
        let mut latest = None;
        for index in (0..self.ring.len()).rev() {
            if let Some(entry) = self.ring.get(index)
                && entry.checkpoint
            {
                latest = Some(entry.sequence);
                break;
            }
        }
        self.sender.tracking = false;
        self.sender.reset_sequence = None;
        match latest {
            Some(sequence) => self.sender.start_reset(sequence),
            None => self.sender.catch_up = true,
        }
    }

    fn ack_progress(&mut self, ack: &Ack, now: Instant) {
        if !self.sender.tracking {
            return; // waiting for a checkpoint
        }
        let position = (ack.next_sequence, ack.next_offset);
        let valid = if ack.resetting {
            self.sender.reset_sequence == Some(ack.next_sequence)
        } else {
            let in_history = self.in_history(ack.next_sequence, ack.last_epoch);
            match self.sender.reset_sequence {
                Some(reset) => in_history && ack.next_sequence > reset,
                None => in_history,
            }
        };
        if !valid {
            self.stats.frames_ignored += 1;
            return;
        }
        let sender = &mut self.sender;
        sender.peer_window = ack.window;
        sender.peer_asks(ack);
        if !ack.resetting {
            sender.reset_sequence = None;
            sender.peer_durable = sender.peer_durable.max(ack.durable_sequence);
        }
        if position > sender.acked {
            sender.advance(position, now);
            self.release();
        } else if position == sender.acked && sender.send_next > sender.acked {
            sender.duplicate_acks += 1;
            if sender.duplicate_acks >= 3 && !sender.recovering {
                sender.go_back();
                sender.recovering = true;
                sender.duplicate_acks = 0;
                self.stats.retransmissions += 1;
            }
        }
    }

    fn receive_data<F: FnMut(Record<'_>)>(
        &mut self,
        frame: &DataFrame<'_>,
        mut notify: F,
    ) -> Result {
        if self.role != Role::Replica {
            if frame.header.epoch > self.epoch {
                self.sender.superseded = true;
            }
            self.stats.frames_ignored += 1;
            return Ok(());
        }
        if frame.header.session != self.receiver.session {
            self.stats.frames_ignored += 1;
            return Ok(());
        }
        if frame.header.epoch < self.receiver.accepted_epoch {
            self.receiver.ack_due = true;
            self.stats.frames_refused += 1;
            return Err(Error::StaleEpoch);
        }
        self.receiver.accepted_epoch = frame.header.epoch;
        for piece in frame.pieces() {
            self.accept_piece(&piece, &mut notify);
        }
        self.receiver.ack_due = true;
        Ok(())
    }

    fn accept_piece<F: FnMut(Record<'_>)>(&mut self, piece: &Piece<'_>, notify: &mut F) {
        let continues = match &self.receiver.partial {
            Some(partial) => {
                partial.sequence == piece.sequence
                    && partial.epoch == piece.epoch
                    && partial.reset == piece.reset
                    && partial.kind == piece.kind
                    && partial.checkpoint == piece.checkpoint
                    && partial.total == piece.total_len
                    && partial.data.len() == piece.offset as usize
            }
            None => false,
        };
        if !continues {
            if piece.offset != 0 || !self.may_start(piece) {
                return;
            }
            self.receiver.partial = None;
            if piece.bytes.len() == piece.total_len as usize {
                self.deliver(piece, piece.bytes, notify);
                return;
            }
            self.receiver.partial = Some(Partial {
                sequence: piece.sequence,
                epoch: piece.epoch,
                kind: piece.kind,
                checkpoint: piece.checkpoint,
                reset: piece.reset,
                total: piece.total_len,
                data: Vec::with_capacity(piece.total_len as usize),
            });
        }
        let Some(partial) = self.receiver.partial.as_mut() else {
            return;
        };
        partial.data.extend_from_slice(piece.bytes);
        if partial.data.len() == partial.total as usize
            && let Some(partial) = self.receiver.partial.take()
        {
            self.deliver(piece, &partial.data, notify);
        }
    }

    /// May `piece` (offset 0) start a record here?
    fn may_start(&self, piece: &Piece<'_>) -> bool {
        let total = piece.total_len as usize;
        if piece.reset {
            // A reset moves to a later (epoch, sequence); the first piece of the reset in
            // progress is a duplicate.
            let duplicate = self.receiver.partial.as_ref().is_some_and(|partial| {
                partial.reset && partial.sequence == piece.sequence && partial.epoch == piece.epoch
            });
            return !duplicate
                && (piece.epoch, piece.sequence) > (self.last.1, self.last.0)
                && total <= self.config.max_checkpoint_len;
        }
        if self.receiver.partial.is_some() {
            return false; // the record in progress is retransmitted from its start
        }
        let fits = if piece.checkpoint {
            total <= self.config.max_checkpoint_len
        } else {
            total <= self.config.max_record_len && self.ring.can_push(total)
        };
        Some(piece.sequence) == self.last.0.checked_add(1)
            && piece.previous_epoch == self.last.1
            && piece.epoch >= self.last.1
            && fits
    }

    fn deliver<F: FnMut(Record<'_>)>(&mut self, piece: &Piece<'_>, payload: &[u8], notify: &mut F) {
        if piece.reset {
            // Everything not yet written is superseded; the new history starts here.
            self.ring.truncate_unwritten();
            self.unwritten_checkpoints = 0;
            self.durable = 0;
            self.release();
            self.before_front = None;
        }
        let meta = Meta {
            sequence: piece.sequence,
            epoch: piece.epoch,
            kind: piece.kind,
            checkpoint: piece.checkpoint,
        };
        let pushed = if piece.checkpoint {
            self.ring.push_owned(meta, payload.to_vec())
        } else {
            self.ring.push(meta, payload)
        };
        if !pushed {
            return; // no room after all: the primary retransmits
        }
        if piece.checkpoint {
            self.unwritten_checkpoints += 1;
            self.clear_log_full();
        }
        self.last = (piece.sequence, piece.epoch);
        self.next_sequence = piece.sequence + 1;
        self.stats.records_received += 1;
        notify(Record {
            sequence: piece.sequence,
            epoch: piece.epoch,
            kind: piece.kind,
            checkpoint: piece.checkpoint,
            payload,
        });
    }

    /// Sends what replication owes the peer through `emit` (which returns `false` when the
    /// NIC has no room; the frame is then sent again later): data on the primary,
    /// acknowledgements on the standby.
    pub fn transmit<F: FnMut(&[u8]) -> bool>(&mut self, now: Instant, emit: F) {
        match self.role {
            Role::Primary => self.transmit_data(now, emit),
            Role::Replica => self.transmit_ack(now, emit),
        }
    }

    fn transmit_ack<F: FnMut(&[u8]) -> bool>(&mut self, now: Instant, mut emit: F) {
        let receiver = &self.receiver;
        let due = receiver.ack_due || receiver.next_ack_at.is_none_or(|at| now >= at);
        if !due {
            return;
        }
        let (next_sequence, next_offset, last_epoch, resetting, window) = match &receiver.partial {
            Some(partial) if partial.reset => {
                let left = self
                    .config
                    .max_checkpoint_len
                    .saturating_sub(partial.data.len());
                (partial.sequence, partial.data.len(), 0, true, left)
            }
            Some(partial) => {
                let left = if partial.checkpoint {
                    self.config
                        .max_checkpoint_len
                        .saturating_sub(partial.data.len())
                } else {
                    self.ring.largest_push().saturating_sub(partial.data.len())
                };
                (
                    partial.sequence,
                    partial.data.len(),
                    self.last.1,
                    false,
                    left,
                )
            }
            None => (
                self.last.0 + 1,
                0,
                self.last.1,
                false,
                self.ring.largest_push(),
            ),
        };
        let ack = Ack {
            header: Header {
                session: receiver.session,
                epoch: receiver.accepted_epoch,
            },
            next_sequence,
            next_offset: next_offset as u32,
            window: u32::try_from(window).unwrap_or(u32::MAX),
            last_epoch,
            durable_sequence: self.durable,
            resetting,
            checkpoint_wanted: self.disk_wants_checkpoint(),
            log_full: self.is_log_full(),
        };
        let length = ack.emit(&mut self.frame_buffer);
        if emit(&self.frame_buffer[..length]) {
            self.stats.frames_sent += 1;
            self.receiver.ack_due = false;
            self.receiver.next_ack_at = Some(now + self.config.ack_interval);
        }
    }

    /// Payload bytes from `from` to `to` along the ring.
    fn bytes_between(&self, from: Position, to: Position) -> u64 {
        if to <= from {
            return 0;
        }
        let Some(mut index) = self.ring.find(from.0) else {
            return 0;
        };
        let mut total = 0u64;
        while let Some(entry) = self.ring.get(index) {
            let start = if entry.sequence == from.0 {
                u64::from(from.1)
            } else {
                0
            };
            if entry.sequence >= to.0 {
                if entry.sequence == to.0 {
                    total += u64::from(to.1).saturating_sub(start);
                }
                break;
            }
            total += (entry.len() as u64).saturating_sub(start);
            index += 1;
        }
        total
    }

    fn can_send(&self) -> bool {
        let sender = &self.sender;
        self.role == Role::Primary
            && sender.attached
            && sender.tracking
            && !sender.superseded
            && sender.session.is_some()
    }

    fn transmit_data<F: FnMut(&[u8]) -> bool>(&mut self, now: Instant, mut emit: F) {
        if !self.can_send() {
            return;
        }
        if self.sender.deadline.is_some_and(|deadline| now >= deadline) {
            let sender = &mut self.sender;
            sender.go_back();
            sender.timeout = (sender.timeout * 2).min(sender.max_timeout);
            sender.deadline = None;
            sender.recovering = false;
            self.stats.retransmissions += 1;
        }
        let limit = u64::from(self.sender.peer_window).min(self.config.max_in_flight as u64);
        let mut in_flight = self.bytes_between(self.sender.acked, self.sender.send_next);
        let Some(session) = self.sender.session else {
            return;
        };
        let header = Header {
            session,
            epoch: self.epoch,
        };
        let frame_len = self.config.frame_len;
        for _ in 0..self.config.frames_per_transmit {
            let mut position = self.sender.send_next;
            let Some(mut index) = self.ring.find(position.0) else {
                break;
            };
            let Log {
                ring,
                frame_buffer,
                sender,
                before_front,
                ..
            } = self;
            let mut writer = DataFrameWriter::new(&mut frame_buffer[..frame_len], header);
            while let Some(entry) = ring.get(index) {
                let len = entry.len();
                let offset = position.1 as usize;
                let remaining = len.saturating_sub(offset);
                let Some(room) = writer.room() else { break };
                let allowance = if in_flight == 0 {
                    room
                } else {
                    usize::try_from(limit.saturating_sub(in_flight)).unwrap_or(usize::MAX)
                };
                let take = remaining.min(room).min(allowance);
                if take == 0 && remaining > 0 {
                    break;
                }
                let previous_epoch = match index.checked_sub(1).and_then(|i| ring.get(i)) {
                    Some(previous) => previous.epoch,
                    None => before_front.map_or(0, |(_, epoch)| epoch),
                };
                let reset = sender.reset_sequence == Some(entry.sequence);
                let piece = Piece {
                    sequence: entry.sequence,
                    epoch: entry.epoch,
                    previous_epoch: if reset { 0 } else { previous_epoch },
                    total_len: len as u32,
                    offset: position.1,
                    kind: entry.kind,
                    checkpoint: entry.checkpoint,
                    reset,
                    bytes: &ring.payload(entry)[offset..offset + take],
                };
                if !writer.push(&piece) {
                    break;
                }
                in_flight += take as u64;
                if offset + take == len {
                    position = (entry.sequence + 1, 0);
                    index += 1;
                } else {
                    position.1 += take as u32;
                }
            }
            if writer.count() == 0 {
                break;
            }
            let length = writer.finish();
            if !emit(&self.frame_buffer[..length]) {
                break;
            }
            self.stats.frames_sent += 1;
            self.sender.send_next = position;
            if self.sender.timing.is_none() {
                self.sender.timing = Some((position, now));
            }
            if self.sender.deadline.is_none() {
                self.sender.deadline = Some(now + self.sender.timeout);
            }
        }
    }

    pub(crate) fn replication_poll_at(&self, now: Instant) -> Option<Instant> {
        match self.role {
            Role::Replica => {
                if self.receiver.ack_due {
                    Some(now)
                } else {
                    self.receiver.next_ack_at
                }
            }
            Role::Primary => {
                if !self.can_send() {
                    return None;
                }
                let sender = &self.sender;
                let unsent = sender.send_next.0 < self.next_sequence;
                let in_flight = self.bytes_between(sender.acked, sender.send_next);
                let limit = u64::from(sender.peer_window).min(self.config.max_in_flight as u64);
                if unsent && (in_flight == 0 || in_flight < limit) {
                    Some(now)
                } else {
                    sender.deadline
                }
            }
        }
    }
}
