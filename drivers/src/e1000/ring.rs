//! The receive and transmit descriptor rings, in DMA memory.
//!
//! The rings only touch memory; the driver turns their results into register writes
//! (one RDT or TDT write per batch). See `SPEC.md` for the ownership rules.

use core::sync::atomic::{Ordering, fence};

use duplex_hal::{NicCounters, Result};

use super::registers::descriptor;
use crate::dma::{DmaAllocator, DmaRegion};

/// Bytes per packet buffer (RCTL.BSIZE = 2048, the reset value).
pub const BUFFER_SIZE: usize = 2048;

/// The shortest frame handed out or accepted: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// Index after `index` in a ring of `count`.
#[inline]
fn next(index: usize, count: usize) -> usize {
    if index + 1 == count { 0 } else { index + 1 }
}

/// `count` as the device's 32-bit register value (counts are at most a few thousand).
#[inline]
fn register_value(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Allocates `count` descriptors and `count` buffers and points each descriptor at its
/// buffer.
fn allocate(allocator: &dyn DmaAllocator, count: usize) -> Result<(DmaRegion, DmaRegion)> {
    let descriptor_bytes = count
        .checked_mul(descriptor::SIZE)
        .ok_or(duplex_hal::Error::OutOfRange)?;
    let buffer_bytes = count
        .checked_mul(BUFFER_SIZE)
        .ok_or(duplex_hal::Error::OutOfRange)?;
    let mut descriptors = allocator.allocate(descriptor_bytes)?;
    let buffers = allocator.allocate(buffer_bytes)?;
    for index in 0..count {
        let base = index * descriptor::SIZE;
        descriptors.write_u64(
            base + descriptor::ADDRESS,
            buffers.physical_address_at(index * BUFFER_SIZE),
        );
        descriptors.write_u64(base + descriptor::UPPER, 0);
    }
    Ok((descriptors, buffers))
}

/// The receive ring.
///
/// The device owns descriptors from RDH up to (not including) RDT; the driver owns the
/// rest. One descriptor is always withheld (RDT == RDH would mean "no buffers"), so the
/// tail the driver writes is the descriptor before the next one it will look at.
#[derive(Debug)]
pub struct ReceiveRing {
    descriptors: DmaRegion,
    buffers: DmaRegion,
    count: usize,
    /// The next descriptor the driver will look at.
    next: usize,
    /// Inside a frame that spans several descriptors (longer than a buffer): its pieces
    /// are being dropped until the one with EOP.
    discarding: bool,
}

impl ReceiveRing {
    /// A ring of `count` descriptors, every one armed with a buffer.
    pub fn new(allocator: &dyn DmaAllocator, count: usize) -> Result<Self> {
        let (descriptors, buffers) = allocate(allocator, count)?;
        Ok(ReceiveRing {
            descriptors,
            buffers,
            count,
            next: 0,
            discarding: false,
        })
    }

    /// Physical address of the descriptor ring (for RDBAL/RDBAH).
    pub fn physical_address(&self) -> u64 {
        self.descriptors.physical_address()
    }

    /// Length of the descriptor ring in bytes (for RDLEN).
    pub fn byte_len(&self) -> u32 {
        register_value(self.count * descriptor::SIZE)
    }

    /// The tail to write at start: every descriptor but one belongs to the device.
    pub fn initial_tail(&self) -> u32 {
        register_value(self.count - 1)
    }

    /// The next descriptor the driver looks at.
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// Hands up to `budget` completed frames to `sink`, straight from their buffers, and
    /// re-arms their descriptors. Looks at no more than `budget` descriptors.
    ///
    /// Returns the number of frames handed out and, when descriptors were re-armed, the
    /// new tail for RDT (write it after a release fence: the caller does).
    pub fn receive(
        &mut self,
        budget: usize,
        max_frame_len: usize,
        counters: &mut NicCounters,
        sink: &mut dyn FnMut(&[u8]),
    ) -> (usize, Option<u32>) {
        let mut handed = 0;
        let mut consumed = 0;
        while consumed < budget {
            let base = self.next * descriptor::SIZE;
            let status = self.descriptors.read_u8(base + descriptor::STATUS);
            if status & descriptor::STATUS_DD == 0 {
                break;
            }
            // The device wrote the buffer and length before DD: read them after it.
            fence(Ordering::Acquire);
            let length = usize::from(self.descriptors.read_u16(base + descriptor::LENGTH));
            let errors = self.descriptors.read_u8(base + descriptor::ERRORS);

            if status & descriptor::STATUS_EOP == 0 {
                // A piece of a frame longer than one buffer: drop it and the rest of it.
                self.discarding = true;
            } else if self.discarding {
                self.discarding = false;
                counters.rx_dropped += 1;
            } else if errors & descriptor::ERRORS_FRAME != 0 {
                counters.rx_errors += 1;
            } else if !(MIN_FRAME_LEN..=max_frame_len.min(BUFFER_SIZE)).contains(&length) {
                counters.rx_dropped += 1;
            } else {
                // SAFETY: the device completed this descriptor (DD) and does not touch its
                // buffer again until the descriptor is handed back through RDT, which
                // happens after `sink` returns; `length <= BUFFER_SIZE` keeps the slice
                // inside this descriptor's buffer.
                let frame = unsafe { self.buffers.slice(self.next * BUFFER_SIZE, length) };
                sink(frame);
                counters.rx_frames += 1;
                counters.rx_bytes += length as u64;
                handed += 1;
            }

            // Re-arm: same buffer, status cleared.
            let address = self.buffers.physical_address_at(self.next * BUFFER_SIZE);
            self.descriptors
                .write_u64(base + descriptor::ADDRESS, address);
            self.descriptors.write_u64(base + descriptor::UPPER, 0);
            self.next = next(self.next, self.count);
            consumed += 1;
        }
        if consumed == 0 {
            return (handed, None);
        }
        let tail = if self.next == 0 {
            self.count - 1
        } else {
            self.next - 1
        };
        (handed, Some(register_value(tail)))
    }
}

/// The transmit ring.
///
/// The driver fills descriptors at its tail; the device owns those from TDH up to TDT
/// and writes DD back into each (RS is set on every one). At most `count - 1` descriptors
/// are in use (TDT == TDH means "empty").
#[derive(Debug)]
pub struct TransmitRing {
    descriptors: DmaRegion,
    buffers: DmaRegion,
    count: usize,
    /// The next descriptor to fill.
    tail: usize,
    /// The oldest descriptor not reclaimed yet.
    clean: usize,
    /// Descriptors filled and not reclaimed (includes `unflushed`).
    in_use: usize,
    /// Descriptors filled since the last doorbell.
    unflushed: usize,
}

impl TransmitRing {
    /// A ring of `count` descriptors, each pointing at its own buffer.
    pub fn new(allocator: &dyn DmaAllocator, count: usize) -> Result<Self> {
        let (descriptors, buffers) = allocate(allocator, count)?;
        Ok(TransmitRing {
            descriptors,
            buffers,
            count,
            tail: 0,
            clean: 0,
            in_use: 0,
            unflushed: 0,
        })
    }

    /// Physical address of the descriptor ring (for TDBAL/TDBAH).
    pub fn physical_address(&self) -> u64 {
        self.descriptors.physical_address()
    }

    /// Length of the descriptor ring in bytes (for TDLEN).
    pub fn byte_len(&self) -> u32 {
        register_value(self.count * descriptor::SIZE)
    }

    /// True when one more frame fits.
    pub fn has_room(&self) -> bool {
        self.in_use < self.count - 1
    }

    /// How many more frames fit (one descriptor always stays unused, as in
    /// [`TransmitRing::has_room`]).
    pub fn room(&self) -> usize {
        (self.count - 1).saturating_sub(self.in_use)
    }

    /// Copies `frame` (at most [`BUFFER_SIZE`] bytes, checked by the caller) into the next
    /// buffer and fills its descriptor. The caller checked [`TransmitRing::has_room`].
    pub fn push(&mut self, frame: &[u8]) {
        debug_assert!(self.has_room() && frame.len() <= BUFFER_SIZE);
        self.buffers.copy_from_slice(self.tail * BUFFER_SIZE, frame);
        let command = descriptor::COMMAND_EOP | descriptor::COMMAND_IFCS | descriptor::COMMAND_RS;
        // Length, checksum offset 0, command, status 0 (no DD), CSS 0, special 0.
        let upper = frame.len() as u64 | (u64::from(command) << descriptor::COMMAND_SHIFT);
        self.descriptors
            .write_u64(self.tail * descriptor::SIZE + descriptor::UPPER, upper);
        self.tail = next(self.tail, self.count);
        self.in_use += 1;
        self.unflushed += 1;
    }

    /// If frames were pushed since the last call, the tail to write to TDT.
    pub fn take_doorbell(&mut self) -> Option<u32> {
        if self.unflushed == 0 {
            return None;
        }
        self.unflushed = 0;
        Some(register_value(self.tail))
    }

    /// Frees the descriptors the device has finished (DD written back), oldest first.
    /// Reads descriptor memory only, never a register. Returns how many it freed.
    pub fn reclaim(&mut self) -> usize {
        let mut handed_over = self.in_use - self.unflushed;
        let mut freed = 0;
        while handed_over > 0 {
            let status = self
                .descriptors
                .read_u8(self.clean * descriptor::SIZE + descriptor::STATUS);
            if status & descriptor::STATUS_DD == 0 {
                break;
            }
            self.clean = next(self.clean, self.count);
            self.in_use -= 1;
            handed_over -= 1;
            freed += 1;
        }
        if freed > 0 {
            // The device is done reading these buffers before we overwrite them.
            fence(Ordering::Acquire);
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_wraps() {
        assert_eq!(next(0, 8), 1);
        assert_eq!(next(7, 8), 0);
    }
}
