//! Host micro-benchmark of the log: `cargo run --release -p duplex-replog --example bench
//! [-- --json]`.
//!
//! Measures, with the in-memory fake block device (so "flush" is a memory copy here; the
//! QEMU numbers come from `cargo lab bench log`):
//! - `log_async` cost (the stall a service sees), in ns;
//! - `poll` cost: one commit plus its flush, in ns;
//! - replication latency: `log_async` on the primary to `log_notify` on the standby, both
//!   in this process, frames handed over in memory;
//! - records per second through `log_async` + `poll`.

use std::time::Instant as WallClock;

use duplex_hal::Instant;
use duplex_hal::fake::FakeBlockDevice;
use duplex_replog::{Config, Log};

const RECORDS: usize = 200_000;
const PAYLOAD: usize = 128;
const BATCH: usize = 32;

fn percentiles(samples: &mut [u64]) -> [u64; 4] {
    samples.sort_unstable();
    let at = |fraction: f64| {
        samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)]
    };
    [at(0.5), at(0.9), at(0.99), *samples.last().unwrap_or(&0)]
}

fn main() {
    let json = std::env::args().any(|arg| arg == "--json");
    let config = Config::default();
    let mut disk = FakeBlockDevice::new(512, (2 + 65_536) * 8);
    let mut log = Log::format(&mut disk, 1, config).expect("format");
    let payload = vec![0x5Au8; PAYLOAD];

    let mut stall = Vec::with_capacity(RECORDS);
    let mut commit = Vec::with_capacity(RECORDS / BATCH);
    let start = WallClock::now();
    let mut logged = 0;
    while logged < RECORDS {
        for _ in 0..BATCH {
            let t0 = WallClock::now();
            log.log_async(1, &payload).expect("log_async");
            stall.push(t0.elapsed().as_nanos() as u64);
            logged += 1;
        }
        let t0 = WallClock::now();
        log.poll(&mut disk, Instant::ZERO).expect("poll");
        commit.push(t0.elapsed().as_nanos() as u64);
        if log.checkpoint_wanted() {
            log.checkpoint(2, vec![1; 4096]).expect("checkpoint");
        }
    }
    while log.poll_at(Instant::ZERO).is_some() {
        log.poll(&mut disk, Instant::ZERO).expect("poll");
    }
    let elapsed = start.elapsed();
    let records_per_second = RECORDS as f64 / elapsed.as_secs_f64();

    // Replication latency, in memory.
    let mut primary_disk = FakeBlockDevice::new(512, (2 + 16_384) * 8);
    let mut replica_disk = FakeBlockDevice::new(512, (2 + 16_384) * 8);
    let mut primary = Log::format(&mut primary_disk, 2, config).expect("format");
    let mut replica = Log::format(&mut replica_disk, 3, config).expect("format");
    primary.become_primary(1).expect("primary");
    primary.attach_peer();
    replica.become_replica(1, Instant::ZERO);
    let mut to_replica: Vec<Vec<u8>> = Vec::new();
    let mut to_primary: Vec<Vec<u8>> = Vec::new();
    let mut replication = Vec::new();
    let now = Instant::ZERO;
    for round in 0..20_000u64 {
        let t0 = WallClock::now();
        let sequence = primary.log_async(1, &payload).expect("log_async");
        let mut arrived = false;
        while !arrived {
            primary.transmit(now, |frame| {
                to_replica.push(frame.to_vec());
                true
            });
            for frame in to_replica.drain(..) {
                replica
                    .receive_frame(&frame, now, |record| arrived |= record.sequence == sequence)
                    .expect("receive");
            }
            replica.transmit(Instant::from_millis(round), |frame| {
                to_primary.push(frame.to_vec());
                true
            });
            for frame in to_primary.drain(..) {
                primary.receive_frame(&frame, now, |_| {}).expect("ack");
            }
        }
        replication.push(t0.elapsed().as_nanos() as u64);
        if round % 64 == 0 {
            primary.poll(&mut primary_disk, now).expect("poll");
            replica.poll(&mut replica_disk, now).expect("poll");
        }
    }

    let stall = percentiles(&mut stall);
    let commit = percentiles(&mut commit);
    let replication = percentiles(&mut replication);
    if json {
        println!(
            "{{\"log_async_ns\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}},\
             \"commit_ns\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}},\
             \"replication_ns\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}},\
             \"records_per_second\":{:.0},\"payload_bytes\":{},\"records_per_commit\":{}}}",
            stall[0],
            stall[1],
            stall[2],
            stall[3],
            commit[0],
            commit[1],
            commit[2],
            commit[3],
            replication[0],
            replication[1],
            replication[2],
            replication[3],
            records_per_second,
            PAYLOAD,
            BATCH
        );
    } else {
        println!(
            "replog host bench: {RECORDS} records of {PAYLOAD} bytes, {BATCH} per commit, fake disk in RAM"
        );
        println!(
            "log_async   p50 {:>8} ns  p90 {:>8} ns  p99 {:>8} ns  max {:>8} ns",
            stall[0], stall[1], stall[2], stall[3]
        );
        println!(
            "commit      p50 {:>8} ns  p90 {:>8} ns  p99 {:>8} ns  max {:>8} ns",
            commit[0], commit[1], commit[2], commit[3]
        );
        println!(
            "replication p50 {:>8} ns  p90 {:>8} ns  p99 {:>8} ns  max {:>8} ns",
            replication[0], replication[1], replication[2], replication[3]
        );
        println!("throughput  {records_per_second:.0} records/s (log_async + poll)");
    }
}
