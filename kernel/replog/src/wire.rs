//! Replication frames (SPEC.md "Replication").
//!
//! A frame is what follows the EtherType [`ETHERTYPE`] in an Ethernet frame. The
//! transport (the image) adds the Ethernet header and, where it authenticates, a keyed MAC
//! after the frame; [`Frame::parse`] uses the length field and ignores anything after it.
//! All integers are little-endian.
//!
//! ```text
//! header (32 bytes): version u8 = 1 | type u8 (1 data, 2 ack) | length u16 | crc32c u32 |
//!                    session u64 | epoch u64 | flags u16 | piece_count u16 | reserved u32
//! data:  piece_count pieces:
//!        sequence u64 | epoch u64 | previous_epoch u64 | total_len u32 | offset u32 |
//!        kind u16 | flags u8 (1 checkpoint, 2 reset) | reserved u8 | piece_len u16 |
//!        reserved u16 | bytes
//! ack:   next_sequence u64 | next_offset u32 | window u32 | last_epoch u64 |
//!        durable_sequence u64
//! ```

use crate::crc::Crc32c;
use crate::format::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::{Epoch, Error, Result, Sequence};

/// The EtherType of replication frames (IEEE 802 "local experimental" 2).
pub const ETHERTYPE: u16 = 0x88B6;
/// Protocol version.
pub const VERSION: u8 = 1;
/// Bytes of the common header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a piece header.
pub const PIECE_HEADER_LEN: usize = 40;
/// Bytes of an acknowledgement frame.
pub const ACK_LEN: usize = HEADER_LEN + 32;
/// The smallest `frame_len` a configuration may ask for.
pub const MIN_FRAME_LEN: usize = 128;

const TYPE_DATA: u8 = 1;
const TYPE_ACK: u8 = 2;
const PIECE_CHECKPOINT: u8 = 1;
const PIECE_RESET: u8 = 2;
/// Ack flag: the receiver is reassembling a reset checkpoint; the position is inside it.
const ACK_RESETTING: u16 = 1;
/// Ack flag: the standby's own disk wants a checkpoint (its segment is long or it is full).
const ACK_CHECKPOINT_WANTED: u16 = 2;
/// Ack flag: the standby's disk is full; it needs a checkpoint it can take without ring space.
const ACK_LOG_FULL: u16 = 4;

/// The common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The receiver's session (chosen by the standby when it joins; data echoes it).
    pub session: u64,
    /// Data: the primary's epoch. Ack: the epoch the standby has accepted.
    pub epoch: Epoch,
}

/// A piece of one record in a data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Record sequence.
    pub sequence: Sequence,
    /// Record epoch.
    pub epoch: Epoch,
    /// Epoch of record `sequence - 1` in the primary's history (0 in reset pieces): the
    /// standby accepts the record only when its own previous record has this epoch.
    pub previous_epoch: Epoch,
    /// Record payload length.
    pub total_len: u32,
    /// Where `bytes` start in the payload.
    pub offset: u32,
    /// Record kind.
    pub kind: u16,
    /// The record is a checkpoint.
    pub checkpoint: bool,
    /// The checkpoint restarts the standby's log (catch-up or divergence).
    pub reset: bool,
    /// Payload bytes `offset..offset + bytes.len()`.
    pub bytes: &'a [u8],
}

/// An acknowledgement, cumulative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Session and accepted epoch.
    pub header: Header,
    /// Every record before this one is held.
    pub next_sequence: Sequence,
    /// Bytes of record `next_sequence` already held.
    pub next_offset: u32,
    /// Payload bytes the standby accepts beyond that point.
    pub window: u32,
    /// Epoch of record `next_sequence - 1` (0 when none).
    pub last_epoch: Epoch,
    /// Highest sequence on the standby's disk (0 when none).
    pub durable_sequence: Sequence,
    /// The position is inside a reset checkpoint being reassembled.
    pub resetting: bool,
    /// The standby's disk wants a checkpoint from the primary.
    pub checkpoint_wanted: bool,
    /// The standby's disk is full.
    pub log_full: bool,
}

/// A decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Records from the primary.
    Data(DataFrame<'a>),
    /// Acknowledgement from the standby.
    Ack(Ack),
}

/// A data frame whose pieces have been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFrame<'a> {
    /// Session and the primary's epoch.
    pub header: Header,
    count: u16,
    body: &'a [u8],
}

impl<'a> DataFrame<'a> {
    /// The pieces, in order.
    pub fn pieces(&self) -> Pieces<'a> {
        Pieces {
            rest: self.body,
            left: self.count,
        }
    }
}

/// Iterator over the pieces of a checked data frame.
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;
    fn next(&mut self) -> Option<Piece<'a>> {
        if self.left == 0 {
            return None;
        }
        let (piece, used) = decode_piece(self.rest)?;
        self.rest = &self.rest[used..];
        self.left -= 1;
        Some(piece)
    }
}

fn decode_piece(bytes: &[u8]) -> Option<(Piece<'_>, usize)> {
    let header = bytes.get(..PIECE_HEADER_LEN)?;
    let flags = header[34];
    let piece_len = usize::from(get_u16(header, 36));
    let end = PIECE_HEADER_LEN + piece_len;
    let piece = Piece {
        sequence: get_u64(header, 0),
        epoch: get_u64(header, 8),
        previous_epoch: get_u64(header, 16),
        total_len: get_u32(header, 24),
        offset: get_u32(header, 28),
        kind: get_u16(header, 32),
        checkpoint: flags & PIECE_CHECKPOINT != 0,
        reset: flags & PIECE_RESET != 0,
        bytes: bytes.get(PIECE_HEADER_LEN..end)?,
    };
    let fits = u64::from(piece.offset) + piece_len as u64 <= u64::from(piece.total_len);
    let valid = fits
        && flags & !(PIECE_CHECKPOINT | PIECE_RESET) == 0
        && (!piece.reset || piece.checkpoint)
        && piece.sequence != 0
        && piece.sequence <= crate::format::LIMIT
        && header[35] == 0
        && get_u16(header, 38) == 0
        && (piece_len > 0 || piece.total_len == 0);
    valid.then_some((piece, end))
}

impl<'a> Frame<'a> {
    /// Decodes a frame; every length is checked, nothing panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return Err(Error::Malformed);
        }
        let length = usize::from(get_u16(bytes, 2));
        let bytes = bytes.get(..length).ok_or(Error::Malformed)?;
        if length < HEADER_LEN || frame_crc(bytes) != get_u32(bytes, 4) || get_u32(bytes, 28) != 0 {
            return Err(Error::Malformed);
        }
        let flags = get_u16(bytes, 24);
        let count = get_u16(bytes, 26);
        let header = Header {
            session: get_u64(bytes, 8),
            epoch: get_u64(bytes, 16),
        };
        match bytes[1] {
            TYPE_DATA => {
                let body = &bytes[HEADER_LEN..];
                let mut rest = body;
                for _ in 0..count {
                    let (_, used) = decode_piece(rest).ok_or(Error::Malformed)?;
                    rest = &rest[used..];
                }
                if !rest.is_empty() || flags != 0 {
                    return Err(Error::Malformed);
                }
                Ok(Frame::Data(DataFrame {
                    header,
                    count,
                    body,
                }))
            }
            TYPE_ACK => {
                if length != ACK_LEN
                    || flags & !(ACK_RESETTING | ACK_CHECKPOINT_WANTED | ACK_LOG_FULL) != 0
                    || count != 0
                {
                    return Err(Error::Malformed);
                }
                let body = &bytes[HEADER_LEN..];
                Ok(Frame::Ack(Ack {
                    header,
                    next_sequence: get_u64(body, 0),
                    next_offset: get_u32(body, 8),
                    window: get_u32(body, 12),
                    last_epoch: get_u64(body, 16),
                    durable_sequence: get_u64(body, 24),
                    resetting: flags & ACK_RESETTING != 0,
                    checkpoint_wanted: flags & ACK_CHECKPOINT_WANTED != 0,
                    log_full: flags & ACK_LOG_FULL != 0,
                }))
            }
            _ => Err(Error::Malformed),
        }
    }
}

/// CRC-32C of a frame with its checksum field taken as zero.
fn frame_crc(frame: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(&frame[..4]);
    crc.update(&[0; 4]);
    crc.update(&frame[8..]);
    crc.finish()
}

/// Writes the header of the `length`-byte frame in `out` (body already in place) and its
/// checksum.
fn put_header(
    out: &mut [u8],
    frame_type: u8,
    length: usize,
    flags: u16,
    count: u16,
    header: Header,
) {
    out[..HEADER_LEN].fill(0);
    out[0] = VERSION;
    out[1] = frame_type;
    put_u16(out, 2, length as u16);
    put_u64(out, 8, header.session);
    put_u64(out, 16, header.epoch);
    put_u16(out, 24, flags);
    put_u16(out, 26, count);
    let crc = frame_crc(&out[..length]);
    put_u32(out, 4, crc);
}

impl Ack {
    /// Encodes into `out` (at least [`ACK_LEN`] bytes); returns the length.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let mut flags = 0;
        if self.resetting {
            flags |= ACK_RESETTING;
        }
        if self.checkpoint_wanted {
            flags |= ACK_CHECKPOINT_WANTED;
        }
        if self.log_full {
            flags |= ACK_LOG_FULL;
        }
        let body = &mut out[HEADER_LEN..ACK_LEN];
        put_u64(body, 0, self.next_sequence);
        put_u32(body, 8, self.next_offset);
        put_u32(body, 12, self.window);
        put_u64(body, 16, self.last_epoch);
        put_u64(body, 24, self.durable_sequence);
        put_header(out, TYPE_ACK, ACK_LEN, flags, 0, self.header);
        ACK_LEN
    }
}

/// Builds a data frame piece by piece in a caller's buffer.
#[derive(Debug)]
pub struct DataFrameWriter<'a> {
    out: &'a mut [u8],
    header: Header,
    len: usize,
    count: u16,
}

impl<'a> DataFrameWriter<'a> {
    /// Starts a frame in `out` (at most 65535 bytes are used).
    pub fn new(out: &'a mut [u8], header: Header) -> Self {
        let limit = out.len().min(usize::from(u16::MAX));
        DataFrameWriter {
            out: &mut out[..limit],
            header,
            len: HEADER_LEN,
            count: 0,
        }
    }

    /// Payload bytes a next piece may carry; `None` when not even a piece header fits.
    pub fn room(&self) -> Option<usize> {
        if self.count == u16::MAX {
            return None;
        }
        let left = self.out.len().checked_sub(self.len + PIECE_HEADER_LEN)?;
        Some(left.min(usize::from(u16::MAX)))
    }

    /// Pieces so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Appends a piece; `false` (and nothing written) when it does not fit.
    pub fn push(&mut self, piece: &Piece<'_>) -> bool {
        match self.room() {
            Some(room) if piece.bytes.len() <= room => {}
            _ => return false,
        }
        let at = self.len;
        let header = &mut self.out[at..at + PIECE_HEADER_LEN];
        header.fill(0);
        put_u64(header, 0, piece.sequence);
        put_u64(header, 8, piece.epoch);
        put_u64(header, 16, piece.previous_epoch);
        put_u32(header, 24, piece.total_len);
        put_u32(header, 28, piece.offset);
        put_u16(header, 32, piece.kind);
        let mut flags = 0;
        if piece.checkpoint {
            flags |= PIECE_CHECKPOINT;
        }
        if piece.reset {
            flags |= PIECE_RESET;
        }
        header[34] = flags;
        put_u16(header, 36, piece.bytes.len() as u16);
        let start = at + PIECE_HEADER_LEN;
        self.out[start..start + piece.bytes.len()].copy_from_slice(piece.bytes);
        self.len = start + piece.bytes.len();
        self.count += 1;
        true
    }

    /// Writes the header and returns the frame length.
    pub fn finish(self) -> usize {
        put_header(self.out, TYPE_DATA, self.len, 0, self.count, self.header);
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn piece(bytes: &[u8]) -> Piece<'_> {
        Piece {
            sequence: 5,
            epoch: 2,
            previous_epoch: 1,
            total_len: 100,
            offset: 10,
            kind: 7,
            checkpoint: true,
            reset: true,
            bytes,
        }
    }

    #[test]
    fn data_round_trip() {
        let mut buffer = vec![0u8; 200];
        let header = Header {
            session: 9,
            epoch: 3,
        };
        let mut writer = DataFrameWriter::new(&mut buffer, header);
        assert!(writer.push(&piece(&[1, 2, 3])));
        assert!(writer.push(&Piece {
            reset: false,
            checkpoint: false,
            ..piece(&[4])
        }));
        assert!(!writer.push(&piece(&[0; 200])));
        let len = writer.finish();
        let mut padded = buffer[..len].to_vec();
        padded.extend_from_slice(&[0xAA; 16]); // a transport trailer is ignored
        let Ok(Frame::Data(frame)) = Frame::parse(&padded) else {
            panic!()
        };
        assert_eq!(frame.header, header);
        let pieces: Vec<_> = frame.pieces().collect();
        assert_eq!(
            pieces,
            [
                piece(&[1, 2, 3]),
                Piece {
                    reset: false,
                    checkpoint: false,
                    ..piece(&[4])
                }
            ]
        );
    }

    #[test]
    fn ack_round_trip() {
        let ack = Ack {
            header: Header {
                session: 1,
                epoch: 2,
            },
            next_sequence: 3,
            next_offset: 4,
            window: 5,
            last_epoch: 6,
            durable_sequence: 7,
            resetting: true,
            checkpoint_wanted: true,
            log_full: false,
        };
        let mut buffer = [0u8; ACK_LEN];
        assert_eq!(ack.emit(&mut buffer), ACK_LEN);
        assert_eq!(Frame::parse(&buffer), Ok(Frame::Ack(ack)));
    }

    #[test]
    fn garbage_never_panics() {
        let mut buffer = vec![0u8; 300];
        let mut writer = DataFrameWriter::new(
            &mut buffer,
            Header {
                session: 1,
                epoch: 1,
            },
        );
        assert!(writer.push(&piece(&[7; 40])));
        let len = writer.finish();
        let good = buffer[..len].to_vec();
        // Every truncation and every single-byte change of a valid frame.
        for cut in 0..good.len() {
            let _ = Frame::parse(&good[..cut]);
        }
        let mut seed = 0x1234_5678u32;
        for at in 0..good.len() {
            for _ in 0..8 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let mut bad = good.clone();
                bad[at] = seed as u8;
                assert!(
                    at < 4 || bad == good || Frame::parse(&bad).is_err(),
                    "checksum"
                );
                // With a fresh checksum the decoder itself is exercised.
                if bad.len() >= HEADER_LEN {
                    let length = usize::from(get_u16(&bad, 2)).min(bad.len()).max(8);
                    let crc = frame_crc(&bad[..length]);
                    put_u32(&mut bad, 4, crc);
                }
                if let Ok(Frame::Data(frame)) = Frame::parse(&bad) {
                    for piece in frame.pieces() {
                        assert!(
                            piece.offset as usize + piece.bytes.len() <= piece.total_len as usize
                        );
                    }
                }
            }
        }
        assert_eq!(Frame::parse(&good[..len - 1]), Err(Error::Malformed));
    }
}
