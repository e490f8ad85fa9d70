//! Helpers shared by the integration tests: a seeded generator, a device wrapper that
//! splits writes into single blocks (so a power cut tears a multi-block write), and a
//! model of what the workload logged to check recovery against.

#![allow(dead_code)]

use duplex_hal::BlockDevice;
use duplex_hal::fake::FakeBlockDevice;
use duplex_replog::{Config, Record};

/// xorshift64*: small, seeded, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability percent/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Writes every block of a multi-block write as its own device write, first to last or
/// last to first: with the fake's volatile cache, a power cut then keeps any prefix of
/// those blocks, which tears the write (in either order).
#[derive(Debug, Clone)]
pub struct SplitDevice {
    pub inner: FakeBlockDevice,
    pub reverse: bool,
}

impl SplitDevice {
    pub fn new(inner: FakeBlockDevice, reverse: bool) -> SplitDevice {
        SplitDevice { inner, reverse }
    }
}

impl BlockDevice for SplitDevice {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> duplex_hal::Result {
        self.inner.read(block, buf)
    }
    fn write(&mut self, block: u64, buf: &[u8]) -> duplex_hal::Result {
        let size = self.inner.block_size();
        let count = buf.len() / size;
        for step in 0..count {
            let index = if self.reverse { count - 1 - step } else { step };
            self.inner
                .write(block + index as u64, &buf[index * size..(index + 1) * size])?;
        }
        Ok(())
    }
    fn flush(&mut self) -> duplex_hal::Result {
        self.inner.flush()
    }
}

/// A configuration with a small ring, so that the ring fills in tests.
pub fn small_config() -> Config {
    Config {
        ring_bytes: 32 * 1024,
        ring_records: 256,
        max_record_len: 12 * 1024,
        max_checkpoint_len: 16 * 1024,
        commit_bytes: 16 * 1024,
        ..Config::default()
    }
}

/// A record's payload, determined by its sequence and the run's salt.
pub fn payload(salt: u64, sequence: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(salt ^ sequence.wrapping_mul(0x1000_0000_01B3));
    (0..len).map(|_| rng.next() as u8).collect()
}

/// What was logged, by sequence (index = sequence - 1): checkpoint flag and payload.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub items: Vec<(bool, Vec<u8>)>,
    /// Highest sequence whose `log_sync` ticket completed.
    pub synced: u64,
    /// Highest `durable_sequence()` the log reported.
    pub durable: u64,
}

impl Model {
    pub fn logged(&self) -> u64 {
        self.items.len() as u64
    }

    pub fn push(&mut self, sequence: u64, checkpoint: bool, payload: Vec<u8>) {
        assert_eq!(sequence, self.logged() + 1, "sequences are dense");
        self.items.push((checkpoint, payload));
    }

    /// Forgets everything after `last` (what a crash lost).
    pub fn truncate(&mut self, last: u64) {
        self.items.truncate(last as usize);
        self.synced = self.synced.min(last);
        self.durable = self.durable.min(last);
    }
}

/// Collects what recovery or replication hands out and checks it against a model.
#[derive(Debug, Default)]
pub struct Replayed {
    pub records: Vec<(u64, bool, Vec<u8>)>,
}

impl Replayed {
    pub fn push(&mut self, record: Record<'_>) {
        self.records
            .push((record.sequence, record.checkpoint, record.payload.to_vec()));
    }

    /// The last sequence handed out (0 when none).
    pub fn last(&self) -> u64 {
        self.records.last().map_or(0, |r| r.0)
    }

    /// Checks the replayed records are exactly the model's records from a checkpoint (or
    /// from sequence 1) to some point: a prefix of what was logged. Returns the last one.
    pub fn check_prefix_of(&self, model: &Model) -> u64 {
        let mut expected_next: Option<u64> = None;
        for (sequence, checkpoint, payload) in &self.records {
            let Some(item) = model.items.get((*sequence as usize).wrapping_sub(1)) else {
                panic!(
                    "record {sequence} was never logged (logged {})",
                    model.logged()
                );
            };
            assert_eq!(item.0, *checkpoint, "record {sequence}: checkpoint flag");
            assert!(item.1 == *payload, "record {sequence}: payload differs");
            match expected_next {
                None => assert!(*checkpoint || *sequence == 1, "replay starts at {sequence}"),
                Some(next) => assert!(
                    *sequence == next || (*checkpoint && *sequence > next),
                    "record {sequence} after {next} - 1"
                ),
            }
            expected_next = Some(sequence + 1);
        }
        self.last()
    }
}
