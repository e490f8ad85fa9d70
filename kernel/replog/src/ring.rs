//! The bounded in-memory ring that `log_async` copies into.
//!
//! Two parts: a queue of entry descriptors (sequence, epoch, kind, where the payload is)
//! and one byte buffer that payloads are copied into in first-in first-out order. A
//! payload is always contiguous in the buffer: when it does not fit before the end, the
//! rest of the lap is skipped. Offsets are "virtual" (they only grow); the physical offset
//! is the virtual one modulo the capacity. Checkpoints carry their own buffer (they can be
//! much larger than the ring) and take no ring space.
//!
//! The front entries are durable ("written"); the rest wait for the disk writer. Entries
//! leave the ring when written and, while a peer is being fed, acknowledged by the peer.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

/// One record in the ring.
#[derive(Debug)]
pub(crate) struct Entry {
    pub sequence: u64,
    pub epoch: u64,
    pub kind: u16,
    pub checkpoint: bool,
    /// Virtual offset of the payload in the ring buffer (for owned payloads: the ring
    /// tail at the time of the push, so the front's start is always the ring head).
    start: u64,
    len: u32,
    owned: Option<Vec<u8>>,
}

impl Entry {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match &self.owned {
            Some(payload) => payload.len(),
            None => self.len as usize,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Ring {
    buffer: Vec<u8>,
    entries: VecDeque<Entry>,
    max_entries: usize,
    tail: u64,
    /// Number of entries at the front that are durable (or superseded by a durable
    /// checkpoint after them).
    written: usize,
}

/// Metadata of a record to push.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub sequence: u64,
    pub epoch: u64,
    pub kind: u16,
    pub checkpoint: bool,
}

impl Ring {
    /// A ring of `bytes` payload bytes and at most `max_entries` records. `bytes` > 0.
    pub fn new(bytes: usize, max_entries: usize) -> Ring {
        Ring {
            buffer: vec![0; bytes],
            entries: VecDeque::with_capacity(max_entries),
            max_entries,
            tail: 0,
            written: 0,
        }
    }

    fn capacity(&self) -> u64 {
        self.buffer.len() as u64
    }

    fn head(&self) -> u64 {
        self.entries.front().map_or(self.tail, |entry| entry.start)
    }

    /// Where a payload of `len` bytes would start, if it fits now.
    fn place(&self, len: usize) -> Option<u64> {
        let capacity = self.capacity();
        let len = len as u64;
        if len > capacity || capacity == 0 {
            return None;
        }
        let physical = self.tail % capacity;
        let start = if physical + len > capacity {
            self.tail + (capacity - physical)
        } else {
            self.tail
        };
        (start + len - self.head() <= capacity).then_some(start)
    }

    /// True when a record of `len` payload bytes can be pushed now.
    pub fn can_push(&self, len: usize) -> bool {
        self.entries.len() < self.max_entries && self.place(len).is_some()
    }

    /// The largest payload that can be pushed now (0 when the entry queue is full).
    pub fn largest_push(&self) -> usize {
        if self.entries.len() >= self.max_entries {
            return 0;
        }
        let capacity = self.capacity();
        let used = self.tail - self.head();
        let physical = self.tail % capacity;
        let free = capacity - used;
        let before_end = free.min(capacity - physical);
        let after_wrap = free.saturating_sub(capacity - physical);
        before_end.max(after_wrap) as usize
    }

    /// Copies `payload` in. `false` when there is no room.
    pub fn push(&mut self, meta: Meta, payload: &[u8]) -> bool {
        if self.entries.len() >= self.max_entries {
            return false;
        }
        let Some(start) = self.place(payload.len()) else {
            return false;
        };
        let physical = (start % self.capacity()) as usize;
        self.buffer[physical..physical + payload.len()].copy_from_slice(payload);
        self.tail = start + payload.len() as u64;
        self.entries.push_back(Entry {
            sequence: meta.sequence,
            epoch: meta.epoch,
            kind: meta.kind,
            checkpoint: meta.checkpoint,
            start,
            len: payload.len() as u32,
            owned: None,
        });
        true
    }

    /// Takes an owned payload (a checkpoint). `false` when the entry queue is full.
    pub fn push_owned(&mut self, meta: Meta, payload: Vec<u8>) -> bool {
        if self.entries.len() >= self.max_entries {
            return false;
        }
        self.entries.push_back(Entry {
            sequence: meta.sequence,
            epoch: meta.epoch,
            kind: meta.kind,
            checkpoint: meta.checkpoint,
            start: self.tail,
            len: 0,
            owned: Some(payload),
        });
        true
    }

    /// The payload of `entry`.
    pub fn payload<'a>(&'a self, entry: &'a Entry) -> &'a [u8] {
        match &entry.owned {
            Some(payload) => payload,
            None => {
                let physical = (entry.start % self.capacity()) as usize;
                &self.buffer[physical..physical + entry.len as usize]
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    pub fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    pub fn written(&self) -> usize {
        self.written
    }

    /// Marks `count` more entries durable.
    pub fn mark_written(&mut self, count: usize) {
        self.written = (self.written + count).min(self.entries.len());
    }

    /// Removes the front entry (which must be written).
    pub fn pop_front(&mut self) -> Option<Entry> {
        if self.written == 0 {
            return None;
        }
        self.written -= 1;
        self.entries.pop_front()
    }

    /// Drops every entry not yet written.
    pub fn truncate_unwritten(&mut self) {
        self.entries.truncate(self.written);
        if let Some(last) = self.entries.back() {
            self.tail = last.start + u64::from(last.len);
        }
    }

    /// Index of the entry with `sequence` (entries are sorted by sequence).
    pub fn find(&self, sequence: u64) -> Option<usize> {
        self.entries
            .binary_search_by_key(&sequence, |entry| entry.sequence)
            .ok()
    }

    /// Bytes of ring buffer in use (including skipped lap ends).
    pub fn bytes_used(&self) -> usize {
        (self.tail - self.head()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sequence: u64) -> Meta {
        Meta {
            sequence,
            epoch: 1,
            kind: 0,
            checkpoint: false,
        }
    }

    #[test]
    fn fills_wraps_and_frees_in_order() {
        let mut ring = Ring::new(100, 10);
        assert!(ring.push(meta(1), &[1; 40]));
        assert!(ring.push(meta(2), &[2; 40]));
        assert!(!ring.push(meta(3), &[3; 40]), "only 20 bytes left");
        assert_eq!(ring.largest_push(), 20);
        ring.mark_written(1);
        assert!(ring.pop_front().is_some());
        assert!(ring.pop_front().is_none(), "second entry not written");
        // 20 bytes at the end are skipped; 40 fit at the start.
        assert_eq!(ring.largest_push(), 40);
        assert!(ring.push(meta(3), &[3; 40]));
        assert_eq!(ring.payload(ring.get(1).unwrap()), &[3; 40]);
        assert_eq!(ring.payload(ring.get(0).unwrap()), &[2; 40]);
        assert!(!ring.can_push(1));
        assert_eq!(ring.find(3), Some(1));
        assert_eq!(ring.find(9), None);
    }

    #[test]
    fn entry_limit_owned_payloads_and_truncation() {
        let mut ring = Ring::new(64, 3);
        assert!(ring.push(meta(1), &[]));
        assert!(ring.push_owned(meta(2), vec![9; 1000]));
        assert!(ring.push(meta(3), &[1; 64]));
        assert!(!ring.push(meta(4), &[]), "entry limit");
        assert_eq!(ring.largest_push(), 0);
        assert_eq!(ring.payload(ring.get(1).unwrap()).len(), 1000);
        ring.mark_written(1);
        ring.truncate_unwritten();
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.largest_push(), 64);
        assert_eq!(ring.bytes_used(), 0);
    }
}
