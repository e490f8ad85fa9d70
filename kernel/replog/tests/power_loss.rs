//! Power loss at every write point of a scripted workload.
//!
//! The workload logs records of many sizes (some span pages), `log_sync`s some, writes
//! checkpoints (the log wraps around the device several times), and polls. For every
//! block write n, a fresh run cuts the power after n block writes; then the volatile cache
//! is lost entirely, partly or not at all, and recovery must hand out a prefix of what was
//! logged that holds every record the log had reported durable and every completed
//! `log_sync`. Then the recovered log appends more, loses power again, and recovers again.

mod common;

use common::{Model, Replayed, Rng, SplitDevice, payload, small_config};
use duplex_hal::Instant;
use duplex_hal::fake::FakeBlockDevice;
use duplex_replog::{Error, Log, LogEnd, Result};

const KIND: u16 = 0x0042;
const KIND_SNAPSHOT: u16 = 0x0043;
/// Superblocks plus 40 data pages of 4 KiB.
const BLOCKS: u64 = (2 + 40) * 8;
const SALT: u64 = 0x5EED;

fn formatted(reverse: bool) -> SplitDevice {
    let mut device = SplitDevice::new(FakeBlockDevice::new(512, BLOCKS), reverse);
    Log::format(&mut device, 0xD0D0, small_config()).unwrap();
    device
}

/// The scripted workload. Returns the first error (a power cut).
fn workload(device: &mut SplitDevice, model: &mut Model, steps: usize) -> Result {
    let mut rng = Rng::new(7);
    let (mut log, _) = Log::open(device, small_config(), |_| {})?;
    let mut tickets = Vec::new();
    let now = Instant::from_millis(1);
    for _ in 0..steps {
        for _ in 0..rng.below(4) + 1 {
            let len = match rng.below(10) {
                0 => 5000 + rng.below(5000),
                1..=3 => rng.below(700),
                _ => rng.below(100),
            } as usize;
            let sequence = log.next_sequence();
            let data = payload(SALT, sequence, len);
            let result = if rng.chance(30) {
                log.log_sync(KIND, &data).map(|ticket| {
                    tickets.push(ticket);
                    ticket.sequence()
                })
            } else {
                log.log_async(KIND, &data)
            };
            match result {
                Ok(logged) => {
                    assert_eq!(logged, sequence);
                    model.push(sequence, false, data);
                }
                Err(Error::Full) => break,
                Err(error) => return Err(error),
            }
        }
        if log.checkpoint_wanted() || rng.chance(4) {
            let sequence = log.next_sequence();
            let data = payload(SALT ^ 1, sequence, rng.below(6000) as usize);
            log.checkpoint(KIND_SNAPSHOT, data.clone())?;
            model.push(sequence, true, data);
        }
        let polls = if rng.chance(20) { 4 } else { 1 };
        for _ in 0..polls {
            log.poll(device, now)?;
            model.durable = log.durable_sequence();
            tickets.retain(|ticket| {
                let done = log.is_durable(*ticket);
                if done {
                    model.synced = model.synced.max(ticket.sequence());
                }
                !done
            });
        }
    }
    Ok(())
}

/// Recovers `device`, checks what comes back against `model`, appends three records,
/// loses power once more, and checks again. Returns the first recovery's end.
fn recover_and_continue(device: &mut SplitDevice, model: &Model) -> LogEnd {
    let mut replayed = Replayed::default();
    let (mut log, report) = Log::open(device, small_config(), |record| replayed.push(record))
        .expect("recovery after a power loss never fails");
    let last = replayed.check_prefix_of(model);
    assert!(
        last >= model.durable,
        "lost durable records: recovered {last}, durable {}",
        model.durable
    );
    assert!(
        last >= model.synced,
        "lost a synced record: recovered {last}, synced {}",
        model.synced
    );
    assert_eq!(report.last_sequence, last);
    assert_eq!(report.records as usize, replayed.records.len());
    if let LogEnd::Damaged { page, .. } = report.end {
        assert_eq!(page, report.end_page, "stopped where it says");
    }

    // The recovered log goes on from where recovery stopped.
    let mut model = model.clone();
    model.truncate(last);
    assert_eq!(log.next_sequence(), last + 1);
    for length in [10, 3000, 0] {
        let sequence = log.next_sequence();
        let data = payload(SALT ^ 2, sequence, length);
        log.log_async(KIND, &data).unwrap();
        model.push(sequence, false, data);
    }
    while log.durable_sequence() < model.logged() {
        match log.poll(device, Instant::ZERO) {
            Ok(()) => {}
            Err(Error::LogFull) => {
                let sequence = log.next_sequence();
                log.checkpoint(KIND_SNAPSHOT, vec![1; 10]).unwrap();
                model.push(sequence, true, vec![1; 10]);
            }
            Err(error) => panic!("poll after recovery: {error}"),
        }
    }
    device.inner.power_loss(0);
    let mut again = Replayed::default();
    let (_, report_again) = Log::open(device, small_config(), |record| again.push(record)).unwrap();
    assert_eq!(
        again.check_prefix_of(&model),
        model.logged(),
        "second recovery"
    );
    assert_eq!(report_again.end, LogEnd::NoCommit);
    report.end
}

fn every_write_point(reverse: bool) {
    let base = formatted(reverse);
    let steps = 70;
    let mut full = base.clone();
    let before = full.inner.writes;
    let mut model = Model::default();
    workload(&mut full, &mut model, steps).unwrap();
    let total = full.inner.writes - before;
    assert!(total > 400, "the workload writes {total} blocks");
    assert!(
        full.inner.writes > BLOCKS,
        "the log wraps around the device"
    );

    assert_eq!(
        recover_and_continue(&mut full.clone(), &model),
        LogEnd::NoCommit
    );

    let mut damaged = 0;
    for cut in 0..=total {
        let mut device = base.clone();
        device.inner.fail_after_writes(cut);
        let mut model = Model::default();
        let outcome = workload(&mut device, &mut model, steps);
        // The fake also refuses the flush after the last write it lets through.
        assert!(outcome.is_err() || cut == total, "cut {cut}: {outcome:?}");
        for keep in [0, 1, 5, usize::MAX] {
            let mut crashed = device.clone();
            crashed.inner.power_loss(keep);
            if let LogEnd::Damaged { .. } = recover_and_continue(&mut crashed, &model) {
                damaged += 1;
            }
        }
    }
    // Torn commits whose header made it are found and reported.
    if !reverse {
        assert!(damaged > 20, "only {damaged} damaged tails seen");
    }
}

#[test]
fn power_loss_at_every_write_point() {
    every_write_point(false);
}

#[test]
fn power_loss_at_every_write_point_blocks_reordered() {
    every_write_point(true);
}
