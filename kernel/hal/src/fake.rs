//! In-memory implementations of the hardware traits, for host tests and simulators.
//!
//! They behave like the real parts where it matters to the core: the fake NIC has bounded
//! rings, the fake block device keeps written data in a volatile cache until `flush`
//! and can lose power at any write.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::time::Duration;

use crate::{
    BlockDevice, Bypass, BypassStatus, Clock, Error, Instant, MacAddress, Nic, NicCounters, Result,
    Watchdog,
};

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: Cell<Instant>,
}

impl FakeClock {
    /// A clock at `start`.
    pub fn new(start: Instant) -> Self {
        FakeClock {
            now: Cell::new(start),
        }
    }
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.set(self.now.get() + d);
    }
    /// Sets the clock to `t` (never backwards).
    pub fn set(&self, t: Instant) {
        if t > self.now.get() {
            self.now.set(t);
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.now.get()
    }
}

/// A NIC whose wire is two queues the test reads and writes.
#[derive(Debug)]
pub struct FakeNic {
    mac: MacAddress,
    /// Frames waiting to be received (the test pushes here).
    pub rx_queue: VecDeque<Vec<u8>>,
    /// Frames queued by `transmit`, not yet flushed.
    pending: Vec<Vec<u8>>,
    /// Frames flushed onto the wire (the test pops here).
    pub wire: VecDeque<Vec<u8>>,
    /// Transmit ring size: `transmit` returns `Busy` past this many unflushed frames.
    pub tx_ring: usize,
    /// Link state the test controls.
    pub link: bool,
    counters: NicCounters,
}

impl FakeNic {
    /// A NIC with address `mac`, link up, a 256-entry transmit ring.
    pub fn new(mac: MacAddress) -> Self {
        FakeNic {
            mac,
            rx_queue: VecDeque::new(),
            pending: Vec::new(),
            wire: VecDeque::new(),
            tx_ring: 256,
            link: true,
            counters: NicCounters::default(),
        }
    }
}

impl Nic for FakeNic {
    fn mac_address(&self) -> MacAddress {
        self.mac
    }
    fn link_up(&mut self) -> bool {
        self.link
    }
    fn receive(&mut self, budget: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(frame) = self.rx_queue.pop_front() else {
                break;
            };
            if !self.link {
                self.counters.rx_dropped += 1;
                continue;
            }
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += frame.len() as u64;
            sink(&frame);
            n += 1;
        }
        n
    }
    fn transmit(&mut self, frame: &[u8]) -> Result {
        if frame.len() < 14 || frame.len() > self.max_frame_len() {
            self.counters.tx_dropped += 1;
            return Err(Error::OutOfRange);
        }
        if self.pending.len() >= self.tx_ring {
            self.counters.tx_dropped += 1;
            return Err(Error::Busy);
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        self.pending.push(frame.to_vec());
        Ok(())
    }
    fn flush(&mut self) {
        let link = self.link;
        for frame in self.pending.drain(..) {
            if link {
                self.wire.push_back(frame);
            }
        }
    }
    fn counters(&self) -> NicCounters {
        self.counters
    }
    fn model(&self) -> &'static str {
        "fake"
    }
}

/// A watchdog that records what was done to it and can be asked whether it fired.
#[derive(Debug, Default)]
pub struct FakeWatchdog {
    /// The armed timeout, if armed.
    pub armed: Option<Duration>,
    /// Number of kicks.
    pub kicks: u64,
    /// What `last_reset_was_watchdog` answers.
    pub fired_before: bool,
}

impl Watchdog for FakeWatchdog {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn arm(&mut self, timeout: Duration) -> Result<Duration> {
        if timeout.is_zero() {
            return Err(Error::OutOfRange);
        }
        self.armed = Some(timeout);
        Ok(timeout)
    }
    fn kick(&mut self) {
        self.kicks += 1;
    }
    fn disarm(&mut self) {
        self.armed = None;
    }
    fn last_reset_was_watchdog(&self) -> bool {
        self.fired_before
    }
    fn timeout_range(&self) -> (Duration, Duration) {
        (Duration::from_millis(1), Duration::from_secs(3600))
    }
}

/// A bypass card held in memory.
#[derive(Debug, Default)]
pub struct FakeBypass {
    /// Current status.
    pub state: BypassStatus,
    /// Number of kicks.
    pub kicks: u64,
}

impl Bypass for FakeBypass {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn set_bypass(&mut self, on: bool) -> Result {
        self.state.bypassing = on;
        Ok(())
    }
    fn status(&mut self) -> Result<BypassStatus> {
        Ok(self.state)
    }
    fn arm_watchdog(&mut self, timeout: Duration) -> Result {
        self.state.watchdog_armed = true;
        self.state.watchdog_timeout = timeout;
        self.state.watchdog_fired = false;
        Ok(())
    }
    fn disarm_watchdog(&mut self) -> Result {
        self.state.watchdog_armed = false;
        Ok(())
    }
    fn kick(&mut self) -> Result {
        self.kicks += 1;
        Ok(())
    }
}

/// A block device in memory with a volatile write cache and a power switch.
///
/// Writes land in a cache; `flush` makes them durable. `power_loss` throws the cache
/// away, as a real disk does when the power goes. `fail_after_writes(n)` makes the
/// n-th next write the last one that reaches the cache: every write after it returns
/// [`Error::Io`], as if the power went at that point, so a test can cut the power at
/// every write point in turn.
#[derive(Debug, Clone)]
pub struct FakeBlockDevice {
    block_size: usize,
    durable: Vec<u8>,
    /// Cached writes, oldest first: (first block, data).
    cache: Vec<(u64, Vec<u8>)>,
    writes_left: Option<u64>,
    /// Number of writes accepted so far.
    pub writes: u64,
    /// Number of flushes so far.
    pub flushes: u64,
}

impl FakeBlockDevice {
    /// A zeroed device of `block_count` blocks of `block_size` bytes.
    pub fn new(block_size: usize, block_count: u64) -> Self {
        let len = usize::try_from(block_count)
            .unwrap_or(0)
            .saturating_mul(block_size);
        FakeBlockDevice {
            block_size,
            durable: vec![0; len],
            cache: Vec::new(),
            writes_left: None,
            writes: 0,
            flushes: 0,
        }
    }

    /// Lets `n` more writes through, then fails every later one (power cut).
    pub fn fail_after_writes(&mut self, n: u64) {
        self.writes_left = Some(n);
    }

    /// True once the power has been cut by `fail_after_writes`.
    pub fn is_dead(&self) -> bool {
        self.writes_left == Some(0)
    }

    /// Loses the volatile cache and restores power: what survives is what was flushed.
    /// With `keep_cached_prefix = k`, the first `k` cached writes reach the medium
    /// (a disk may write back part of its cache in any order; a prefix is the common case).
    pub fn power_loss(&mut self, keep_cached_prefix: usize) {
        let cache = core::mem::take(&mut self.cache);
        for (block, data) in cache.into_iter().take(keep_cached_prefix) {
            self.apply(block, &data);
        }
        self.writes_left = None;
    }

    /// The durable contents (what survives a power loss with nothing of the cache).
    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    fn apply(&mut self, block: u64, data: &[u8]) {
        let start = block as usize * self.block_size;
        self.durable[start..start + data.len()].copy_from_slice(data);
    }

    fn check(&self, block: u64, len: usize) -> Result {
        if !len.is_multiple_of(self.block_size) {
            return Err(Error::OutOfRange);
        }
        let blocks = (len / self.block_size) as u64;
        match block.checked_add(blocks) {
            Some(end) if end <= self.block_count() => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }
}

impl BlockDevice for FakeBlockDevice {
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn block_count(&self) -> u64 {
        (self.durable.len() / self.block_size) as u64
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result {
        self.check(block, buf.len())?;
        let start = block as usize * self.block_size;
        buf.copy_from_slice(&self.durable[start..start + buf.len()]);
        // Reads see the cache, newest write last.
        let end = start + buf.len();
        for (cblock, data) in &self.cache {
            let cstart = *cblock as usize * self.block_size;
            let cend = cstart + data.len();
            let lo = cstart.max(start);
            let hi = cend.min(end);
            if lo < hi {
                buf[lo - start..hi - start].copy_from_slice(&data[lo - cstart..hi - cstart]);
            }
        }
        Ok(())
    }
    fn write(&mut self, block: u64, buf: &[u8]) -> Result {
        self.check(block, buf.len())?;
        match self.writes_left {
            Some(0) => return Err(Error::Io),
            Some(ref mut n) => *n -= 1,
            None => {}
        }
        self.writes += 1;
        self.cache.push((block, buf.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> Result {
        if self.is_dead() {
            return Err(Error::Io);
        }
        self.flushes += 1;
        for (block, data) in core::mem::take(&mut self.cache) {
            self.apply(block, &data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_device_loses_unflushed_writes() {
        let mut d = FakeBlockDevice::new(512, 8);
        d.write(1, &[1; 512]).unwrap();
        d.flush().unwrap();
        d.write(2, &[2; 1024]).unwrap();
        let mut buf = [0u8; 1536];
        d.read(1, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 1));
        assert!(buf[512..].iter().all(|&b| b == 2));
        d.power_loss(0);
        d.read(1, &mut buf).unwrap();
        assert!(buf[512..].iter().all(|&b| b == 0));
        assert_eq!(d.write(7, &[0; 1024]), Err(Error::OutOfRange));
    }

    #[test]
    fn block_device_power_cut_after_n_writes() {
        let mut d = FakeBlockDevice::new(512, 8);
        d.fail_after_writes(1);
        assert!(d.write(0, &[1; 512]).is_ok());
        assert_eq!(d.write(1, &[1; 512]), Err(Error::Io));
        assert_eq!(d.flush(), Err(Error::Io));
        d.power_loss(1);
        assert_eq!(d.durable()[0], 1);
    }

    #[test]
    fn nic_ring_fills_and_flushes() {
        let mut n = FakeNic::new(MacAddress([2, 0, 0, 0, 0, 1]));
        n.tx_ring = 1;
        assert!(n.transmit(&[0; 60]).is_ok());
        assert_eq!(n.transmit(&[0; 60]), Err(Error::Busy));
        assert_eq!(n.transmit(&[0; 10]), Err(Error::OutOfRange));
        n.flush();
        assert_eq!(n.wire.len(), 1);
        n.rx_queue.push_back(vec![1; 60]);
        let mut got = 0;
        assert_eq!(n.receive(8, &mut |f| got += f.len()), 1);
        assert_eq!(got, 60);
    }
}
