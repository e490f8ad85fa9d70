//! Corruption: a changed byte anywhere in the tail, damaged superblocks, odd devices.

mod common;

use common::{Model, Replayed, Rng, payload, small_config};
use duplex_hal::fake::FakeBlockDevice;
use duplex_hal::{BlockDevice, Instant};
use duplex_replog::format::{PAGE_SIZE, Superblock};
use duplex_replog::{Damage, Error, Log, LogEnd};

const KIND: u16 = 7;
const SALT: u64 = 99;

/// Where one commit went: logical pages and the records in it.
#[derive(Debug, Clone, Copy)]
struct Commit {
    start: u64,
    end: u64,
    last: u64,
}

/// Logs records in commits of 1..4 pages on a device that does not wrap; returns the
/// device, the model and the commits.
fn build() -> (FakeBlockDevice, Model, Vec<Commit>) {
    let mut device = FakeBlockDevice::new(512, (2 + 64) * 8);
    let mut log = Log::format(&mut device, 5, small_config()).unwrap();
    let mut model = Model::default();
    let mut commits = Vec::new();
    let mut rng = Rng::new(3);
    for _ in 0..12 {
        for _ in 0..rng.below(5) + 1 {
            let sequence = log.next_sequence();
            let data = payload(SALT, sequence, rng.below(3000) as usize);
            log.log_async(KIND, &data).unwrap();
            model.push(sequence, false, data);
        }
        let start = log.head_page();
        log.poll(&mut device, Instant::ZERO).unwrap();
        commits.push(Commit {
            start,
            end: log.head_page(),
            last: log.durable_sequence(),
        });
    }
    assert_eq!(log.durable_sequence(), model.logged());
    (device, model, commits)
}

fn flip(device: &mut FakeBlockDevice, page: u64, offset: usize, mask: u8) {
    // Data page `page` (no wrap here) is device page 2 + page.
    let byte = (2 + page) as usize * PAGE_SIZE + offset;
    let block = (byte / 512) as u64;
    let mut buffer = [0u8; 512];
    device.read(block, &mut buffer).unwrap();
    buffer[byte % 512] ^= mask;
    device.write(block, &buffer).unwrap();
    device.flush().unwrap();
}

#[test]
fn a_changed_byte_in_the_tail_stops_recovery_before_it_and_loses_nothing_before() {
    let (device, model, commits) = build();
    let tail = &commits[commits.len() - 3..];
    let mut tried = 0;
    for (index, commit) in tail.iter().enumerate() {
        let is_last = index == tail.len() - 1;
        let before = commits[commits.len() - 3 + index - 1].last;
        let bytes = (commit.end - commit.start) as usize * PAGE_SIZE;
        let offsets = (0..160).chain((160..bytes).step_by(37));
        for offset in offsets {
            let mut corrupted = device.clone();
            let page = commit.start + (offset / PAGE_SIZE) as u64;
            flip(&mut corrupted, page, offset % PAGE_SIZE, 0x20);
            let mut replayed = Replayed::default();
            let (_, report) = Log::open(&mut corrupted, small_config(), |r| replayed.push(r))
                .expect("corruption is reported, not an error");
            let last = replayed.check_prefix_of(&model);
            assert!(
                last >= before,
                "offset {offset}: lost records before the damage"
            );
            tried += 1;
            if last == commit.last && report.end == LogEnd::NoCommit && is_last {
                continue; // the byte was padding: nothing lost
            }
            if last >= commit.last {
                continue; // padding of an earlier commit
            }
            assert_eq!(last, before, "offset {offset}");
            assert_eq!(
                report.end_page, commit.start,
                "offset {offset}: names where it stopped"
            );
            match report.end {
                LogEnd::NoCommit => {
                    assert!(offset < 4, "offset {offset}: only the magic hides a commit")
                }
                LogEnd::Damaged {
                    page,
                    damage,
                    valid_commits_follow,
                    ..
                } => {
                    assert_eq!(page, commit.start);
                    if offset < 64 {
                        assert_eq!(damage, Damage::HeaderChecksum, "offset {offset}");
                    } else {
                        assert_eq!(valid_commits_follow, !is_last, "offset {offset}");
                    }
                }
            }
        }
    }
    assert!(tried > 300);
}

#[test]
fn report_names_the_damage() {
    let (mut device, _, commits) = build();
    let commit = commits[commits.len() - 2];
    flip(&mut device, commit.start, 200, 1);
    let (_, report) = Log::open(&mut device, small_config(), |_| {}).unwrap();
    let text = format!("{report}");
    assert!(text.contains("STOPPED at log page"), "{text}");
    assert!(text.contains("records after it are LOST"), "{text}");
    assert!(matches!(
        report.end,
        LogEnd::Damaged {
            damage: Damage::RecordChecksum { .. },
            ..
        }
    ));
}

fn write_page(device: &mut FakeBlockDevice, page: u64, bytes: &[u8]) {
    device.write(page * 8, bytes).unwrap();
    device.flush().unwrap();
}

fn read_page(device: &mut FakeBlockDevice, page: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE_SIZE];
    device.read(page * 8, &mut bytes).unwrap();
    bytes
}

#[test]
fn unformatted_and_garbage_devices_are_refused_cleanly() {
    let mut blank = FakeBlockDevice::new(512, 100 * 8);
    assert_eq!(
        Log::open(&mut blank, small_config(), |_| {}).unwrap_err(),
        Error::NotFormatted
    );
    let mut rng = Rng::new(1);
    let garbage: Vec<u8> = (0..2 * PAGE_SIZE).map(|_| rng.next() as u8).collect();
    write_page(&mut blank, 0, &garbage);
    assert_eq!(
        Log::open(&mut blank, small_config(), |_| {}).unwrap_err(),
        Error::NotFormatted
    );

    let mut odd = FakeBlockDevice::new(1000, 100);
    assert_eq!(
        Log::format(&mut odd, 1, small_config()).unwrap_err(),
        Error::UnsupportedDevice
    );
    let mut tiny = FakeBlockDevice::new(512, 8 * 8);
    assert_eq!(
        Log::format(&mut tiny, 1, small_config()).unwrap_err(),
        Error::UnsupportedDevice
    );
    let mut big_blocks = FakeBlockDevice::new(4096, 40);
    let mut log = Log::format(&mut big_blocks, 1, small_config()).unwrap();
    log.log_async(1, b"on 4 KiB blocks").unwrap();
    log.poll(&mut big_blocks, Instant::ZERO).unwrap();
    let mut replayed = Replayed::default();
    Log::open(&mut big_blocks, small_config(), |r| replayed.push(r)).unwrap();
    assert_eq!(replayed.records, [(1, false, b"on 4 KiB blocks".to_vec())]);
}

#[test]
fn damaged_superblocks() {
    let (device, model, _) = build();
    // Both copies damaged.
    let mut both = device.clone();
    for slot in 0..2 {
        let mut page = read_page(&mut both, slot);
        page[30] ^= 1;
        write_page(&mut both, slot, &page);
    }
    assert_eq!(
        Log::open(&mut both, small_config(), |_| {}).unwrap_err(),
        Error::CorruptSuperblock
    );

    // A newer format version.
    let mut newer = device.clone();
    for slot in 0..2 {
        let mut page = read_page(&mut newer, slot);
        page[8] = 2;
        let crc = duplex_replog::crc32c(&page[..124]);
        page[124..128].copy_from_slice(&crc.to_le_bytes());
        write_page(&mut newer, slot, &page);
    }
    assert_eq!(
        Log::open(&mut newer, small_config(), |_| {}).unwrap_err(),
        Error::UnsupportedVersion(2)
    );

    // A geometry larger than the device.
    let mut larger = device.clone();
    for slot in 0..2 {
        let page = read_page(&mut larger, slot);
        let mut superblock = Superblock::decode(&page).unwrap();
        superblock.data_pages = 1000;
        let mut page = vec![0u8; PAGE_SIZE];
        superblock.encode(&mut page);
        write_page(&mut larger, slot, &page);
    }
    assert_eq!(
        Log::open(&mut larger, small_config(), |_| {}).unwrap_err(),
        Error::CorruptSuperblock
    );

    // Fuzzed fields with valid checksums: an error or a log, never a panic.
    let mut rng = Rng::new(11);
    for _ in 0..300 {
        let mut fuzzed = device.clone();
        for slot in 0..2 {
            let mut page = read_page(&mut fuzzed, slot);
            for _ in 0..3 {
                let at = 8 + rng.below(116) as usize;
                page[at] = rng.next() as u8;
            }
            let crc = duplex_replog::crc32c(&page[..124]);
            page[124..128].copy_from_slice(&crc.to_le_bytes());
            write_page(&mut fuzzed, slot, &page);
        }
        if let Ok((mut log, _)) = Log::open(&mut fuzzed, small_config(), |_| {}) {
            let _ = log.log_async(1, &[1; 100]);
            let _ = log.poll(&mut fuzzed, Instant::ZERO);
        }
    }

    // One copy damaged: the other one serves, and the next open repairs it.
    for slot in 0..2 {
        let mut one = device.clone();
        let mut page = read_page(&mut one, slot);
        page[40] ^= 0xff;
        write_page(&mut one, slot, &page);
        let mut replayed = Replayed::default();
        let (_, report) = Log::open(&mut one, small_config(), |r| replayed.push(r)).unwrap();
        assert_eq!(report.superblock_copies, 1);
        assert_eq!(replayed.check_prefix_of(&model), model.logged());
        let (_, report) = Log::open(&mut one, small_config(), |_| {}).unwrap();
        assert_eq!(report.superblock_copies, 2);
    }
}

#[test]
fn the_older_superblock_still_leads_to_the_whole_log_after_checkpoints() {
    let mut device = FakeBlockDevice::new(512, (2 + 40) * 8);
    let mut log = Log::format(&mut device, 8, small_config()).unwrap();
    let mut model = Model::default();
    let mut rng = Rng::new(5);
    for round in 0..150u64 {
        let sequence = log.next_sequence();
        let data = payload(SALT, sequence, rng.below(5000) as usize);
        log.log_async(KIND, &data).unwrap();
        model.push(sequence, false, data);
        if round % 7 == 6 || log.checkpoint_wanted() {
            let sequence = log.next_sequence();
            let data = payload(SALT + 1, sequence, 3000);
            log.checkpoint(KIND, data.clone()).unwrap();
            model.push(sequence, true, data);
        }
        while log.poll_at(Instant::ZERO).is_some() {
            log.poll(&mut device, Instant::ZERO).unwrap();
        }
    }
    assert!(
        log.head_page() > 2 * log.data_pages(),
        "wrapped at least twice"
    );
    // Damage the newest copy: recovery starts from the older one's checkpoint.
    let newest = (0..2)
        .max_by_key(|&slot| {
            Superblock::decode(&read_page(&mut device, slot))
                .unwrap()
                .generation
        })
        .unwrap();
    let mut page = read_page(&mut device, newest);
    page[50] ^= 4;
    write_page(&mut device, newest, &page);
    let mut replayed = Replayed::default();
    let (_, report) = Log::open(&mut device, small_config(), |r| replayed.push(r)).unwrap();
    assert_eq!(replayed.check_prefix_of(&model), model.logged(), "{report}");
    assert!(replayed.records[0].1, "starts at a checkpoint");
    assert!(
        replayed.records.iter().filter(|r| r.1).count() >= 2,
        "two segments kept"
    );
}

#[test]
fn a_full_log_refuses_to_overwrite_what_the_older_superblock_needs() {
    let mut device = FakeBlockDevice::new(512, (2 + 40) * 8);
    let mut log = Log::format(&mut device, 9, small_config()).unwrap();
    let mut model = Model::default();
    let mut checkpoint_page = None;
    let mut full = false;
    for round in 0..400u64 {
        let sequence = log.next_sequence();
        let data = payload(SALT, sequence, 3000 + (round % 3) as usize * 1000);
        log.log_async(KIND, &data).unwrap();
        model.push(sequence, false, data);
        if checkpoint_page.is_none() && log.head_page() >= 22 {
            let sequence = log.next_sequence();
            let data = payload(SALT + 1, sequence, 2000);
            log.checkpoint(KIND, data.clone()).unwrap();
            model.push(sequence, true, data);
            checkpoint_page = Some(log.head_page());
        }
        match log.poll(&mut device, Instant::ZERO) {
            Ok(()) => {}
            Err(Error::LogFull) => {
                full = true;
                break;
            }
            Err(error) => panic!("{error}"),
        }
        if checkpoint_page.is_some_and(|page| log.head_page() > page + 30) {
            break;
        }
    }
    assert!(
        full,
        "the log must fill up instead of overwriting the first segment"
    );
    assert!(log.checkpoint_wanted());
    assert_eq!(
        log.poll_at(Instant::ZERO),
        None,
        "nothing to do until a checkpoint"
    );
    let durable = log.durable_sequence();
    let mut model_at_full = model.clone();
    model_at_full.truncate(durable);

    // A checkpoint always fits and relieves the log.
    let mut relieved = device.clone();
    let sequence = log.next_sequence();
    log.checkpoint(KIND, vec![3; 5000]).unwrap();
    while log.poll_at(Instant::ZERO).is_some() {
        log.poll(&mut relieved, Instant::ZERO).unwrap();
    }
    assert_eq!(log.durable_sequence(), sequence);
    for _ in 0..20 {
        log.log_async(KIND, &[4; 3000]).unwrap();
        log.poll(&mut relieved, Instant::ZERO).unwrap();
    }

    // At the full point, the older superblock still leads to everything.
    let model = model_at_full;
    let newest = (0..2)
        .max_by_key(|&slot| {
            Superblock::decode(&read_page(&mut device, slot))
                .unwrap()
                .generation
        })
        .unwrap();
    let mut page = read_page(&mut device, newest);
    page[50] ^= 4;
    write_page(&mut device, newest, &page);
    let mut replayed = Replayed::default();
    let (_, report) = Log::open(&mut device, small_config(), |r| replayed.push(r)).unwrap();
    assert_eq!(replayed.check_prefix_of(&model), durable, "{report}");
    assert_eq!(
        replayed.records[0].0, 1,
        "replay from the older superblock's start"
    );
}
