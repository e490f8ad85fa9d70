//! Replication between two logs over a seeded channel that loses, delays (and so
//! reorders) and duplicates frames, in virtual time.

mod common;

use core::time::Duration;

use common::{Model, Replayed, Rng, payload, small_config};
use duplex_hal::Instant;
use duplex_hal::fake::FakeBlockDevice;
use duplex_replog::{Config, Error, Log, PeerAck, Record, Role};

const KIND: u16 = 0x0200;
const TICK: Duration = Duration::from_micros(100);

/// One direction of the wire.
struct Link {
    queue: Vec<(Instant, u64, Vec<u8>)>,
    rng: Rng,
    loss: u64,
    duplicate: u64,
    busy: u64,
    max_delay_us: u64,
    order: u64,
    up: bool,
}

impl Link {
    fn new(seed: u64, loss: u64, duplicate: u64, max_delay_us: u64) -> Link {
        Link {
            queue: Vec::new(),
            rng: Rng::new(seed),
            loss,
            duplicate,
            busy: 0,
            max_delay_us,
            order: 0,
            up: true,
        }
    }

    fn perfect() -> Link {
        Link::new(1, 0, 0, 0)
    }

    /// What the NIC does with a frame: `false` when "busy" (not sent).
    fn send(&mut self, now: Instant, frame: &[u8]) -> bool {
        if self.rng.chance(self.busy) {
            return false;
        }
        let copies = if self.rng.chance(self.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if !self.up || self.rng.chance(self.loss) {
                continue;
            }
            let delay = Duration::from_micros(self.rng.below(self.max_delay_us + 1));
            self.order += 1;
            self.queue.push((now + delay, self.order, frame.to_vec()));
        }
        true
    }

    fn due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.queue.sort_by_key(|(at, order, _)| (*at, *order));
        let count = self
            .queue
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .count();
        self.queue
            .drain(..count)
            .map(|(_, _, frame)| frame)
            .collect()
    }
}

struct Node {
    log: Log,
    disk: FakeBlockDevice,
    notified: Replayed,
}

impl Node {
    fn new(log_id: u64, config: Config) -> Node {
        Node::with_pages(log_id, config, 2048)
    }

    fn with_pages(log_id: u64, config: Config, pages: u64) -> Node {
        let mut disk = FakeBlockDevice::new(512, (2 + pages) * 8);
        let log = Log::format(&mut disk, log_id, config).unwrap();
        Node {
            log,
            disk,
            notified: Replayed::default(),
        }
    }

    fn poll(&mut self, now: Instant) {
        match self.log.poll(&mut self.disk, now) {
            Ok(()) | Err(Error::LogFull) => {}
            Err(error) => panic!("poll: {error}"),
        }
    }
}

/// One tick of virtual time: disks, transmissions, deliveries.
fn step(a: &mut Node, b: &mut Node, ab: &mut Link, ba: &mut Link, now: Instant) {
    a.poll(now);
    b.poll(now);
    a.log.transmit(now, |frame| ab.send(now, frame));
    b.log.transmit(now, |frame| ba.send(now, frame));
    for frame in ab.due(now) {
        let _ = b
            .log
            .receive_frame(&frame, now, |record| b.notified.push(record));
    }
    for frame in ba.due(now) {
        let _ = a
            .log
            .receive_frame(&frame, now, |record| a.notified.push(record));
    }
}

fn pair(config: Config) -> (Node, Node) {
    let mut primary = Node::new(1, config);
    let mut replica = Node::new(2, config);
    primary.log.become_primary(1).unwrap();
    primary.log.attach_peer();
    replica.log.become_replica(1, Instant::ZERO);
    (primary, replica)
}

/// Logs `count` records of mixed sizes at random ticks while the pair runs; returns the
/// model and the time reached.
#[expect(
    clippy::too_many_arguments,
    reason = "a test harness threading the whole pair"
)]
fn log_while_running(
    a: &mut Node,
    b: &mut Node,
    ab: &mut Link,
    ba: &mut Link,
    model: &mut Model,
    count: u64,
    seed: u64,
    mut now: Instant,
) -> Instant {
    let mut rng = Rng::new(seed);
    let target = model.logged() + count;
    let mut ticks = 0;
    while model.logged() < target {
        if rng.chance(40) {
            let sequence = a.log.next_sequence();
            let len = if rng.chance(10) {
                1500 + rng.below(4000)
            } else {
                rng.below(300)
            } as usize;
            let data = payload(seed, sequence, len);
            match a.log.log_async(KIND, &data) {
                Ok(logged) => model.push(logged, false, data),
                Err(Error::Full) => {}
                Err(error) => panic!("{error}"),
            }
        }
        step(a, b, ab, ba, now);
        now += TICK;
        ticks += 1;
        assert!(ticks < 2_000_000, "logging stalled at {}", model.logged());
    }
    now
}

/// Runs until the peer holds (and has written) everything logged.
fn settle(a: &mut Node, b: &mut Node, ab: &mut Link, ba: &mut Link, mut now: Instant) -> Instant {
    let mut ticks = 0;
    while a.log.peer_durable_sequence() + 1 < a.log.next_sequence()
        || a.log.durable_sequence() + 1 < a.log.next_sequence()
    {
        step(a, b, ab, ba, now);
        now += TICK;
        ticks += 1;
        assert!(
            ticks < 200_000,
            "no progress: {:?} {:?} {:?}",
            a.log.replication_status(),
            a.log,
            a.log.stats()
        );
    }
    now
}

#[test]
fn lossy_reordering_duplicating_channel_delivers_every_record_once_in_order() {
    for seed in 1..=24u64 {
        let (mut a, mut b) = pair(small_config());
        let mut ab = Link::new(seed, 15, 10, 3000);
        let mut ba = Link::new(seed + 1000, 15, 10, 3000);
        ab.busy = 5;
        let mut model = Model::default();
        let now = log_while_running(
            &mut a,
            &mut b,
            &mut ab,
            &mut ba,
            &mut model,
            300,
            seed,
            Instant::ZERO,
        );
        settle(&mut a, &mut b, &mut ab, &mut ba, now);
        // Exactly once, in order, the same bytes.
        assert_eq!(
            b.notified.records.len() as u64,
            model.logged(),
            "seed {seed}"
        );
        assert_eq!(
            b.notified.check_prefix_of(&model),
            model.logged(),
            "seed {seed}"
        );
        assert!(
            a.log.stats().retransmissions > 0,
            "seed {seed}: the channel lost nothing?"
        );
        assert_eq!(
            a.log.pending_records(),
            0,
            "seed {seed}: acknowledged records are released"
        );
        // The standby's own disk holds the same log.
        let mut recovered = Replayed::default();
        Log::open(&mut b.disk, small_config(), |record| recovered.push(record)).unwrap();
        assert_eq!(
            recovered.check_prefix_of(&model),
            model.logged(),
            "seed {seed}"
        );
    }
}

#[test]
fn log_sync_waits_for_the_local_disk_and_the_peer() {
    for policy in [PeerAck::Received, PeerAck::Durable] {
        let config = Config {
            peer_ack: policy,
            ..small_config()
        };
        let (mut a, mut b) = pair(config);
        let (mut ab, mut ba) = (Link::perfect(), Link::perfect());
        let mut now = settle(&mut a, &mut b, &mut ab, &mut ba, Instant::ZERO);
        // The peer must join first.
        for _ in 0..3 {
            step(&mut a, &mut b, &mut ab, &mut ba, now);
            now += TICK;
        }
        assert!(a.log.replication_status().peer_in_sync);
        let ticket = a.log.log_sync(KIND, b"sync me").unwrap();
        assert!(!a.log.is_durable(ticket));
        a.poll(now);
        assert_eq!(a.log.durable_sequence(), ticket.sequence());
        assert!(
            !a.log.is_durable(ticket),
            "on the local disk but not at the peer"
        );
        a.log.transmit(now, |frame| ab.send(now, frame));
        for frame in ab.due(now) {
            b.log
                .receive_frame(&frame, now, |record| b.notified.push(record))
                .unwrap();
        }
        assert_eq!(b.notified.records.len(), 1, "log_notify on arrival");
        b.log.transmit(now, |frame| ba.send(now, frame));
        for frame in ba.due(now) {
            a.log.receive_frame(&frame, now, |_| {}).unwrap();
        }
        // Received, not yet on the peer's disk.
        assert_eq!(
            a.log.is_durable(ticket),
            policy == PeerAck::Received,
            "{policy:?}"
        );
        b.poll(now);
        b.log.transmit(now, |frame| ba.send(now, frame));
        for frame in ba.due(now) {
            a.log.receive_frame(&frame, now, |_| {}).unwrap();
        }
        assert!(a.log.is_durable(ticket));

        // A detached peer is not waited for.
        a.log.detach_peer();
        let ticket = a.log.log_sync(KIND, b"alone").unwrap();
        a.poll(now);
        assert!(a.log.is_durable(ticket));
    }
}

/// A small "service": its state is the list of (sequence, payload) applied, and a
/// checkpoint is that list encoded.
#[derive(Debug, Default, Clone, PartialEq)]
struct Service {
    applied: Vec<(u64, Vec<u8>)>,
}

impl Service {
    fn apply(&mut self, record: &Record<'_>) {
        if record.checkpoint {
            *self = Service::decode(record.payload);
        } else {
            self.applied
                .push((record.sequence, record.payload.to_vec()));
        }
    }
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (sequence, payload) in &self.applied {
            out.extend_from_slice(&sequence.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }
    fn decode(mut bytes: &[u8]) -> Service {
        let mut service = Service::default();
        while !bytes.is_empty() {
            let sequence = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            service
                .applied
                .push((sequence, bytes[12..12 + len].to_vec()));
            bytes = &bytes[12 + len..];
        }
        service
    }
    /// Replays a sequence of records (a checkpoint replaces the state).
    fn from_records(records: &[(u64, bool, Vec<u8>)]) -> Service {
        let mut service = Service::default();
        for (sequence, checkpoint, payload) in records {
            service.apply(&Record {
                sequence: *sequence,
                epoch: 0,
                kind: KIND,
                checkpoint: *checkpoint,
                payload,
            });
        }
        service
    }
}

fn big_config() -> Config {
    Config {
        max_checkpoint_len: 512 * 1024,
        ..small_config()
    }
}

/// Runs the pair, handing the primary's service state out as a checkpoint whenever the
/// log asks for one, until the peer holds everything.
fn settle_with_checkpoints(
    a: &mut Node,
    b: &mut Node,
    ab: &mut Link,
    ba: &mut Link,
    service: &Service,
    mut now: Instant,
) -> Instant {
    let mut ticks = 0;
    while a.log.peer_durable_sequence() + 1 < a.log.next_sequence() {
        if a.log.checkpoint_wanted() {
            a.log.checkpoint(KIND, service.encode()).unwrap();
        }
        step(a, b, ab, ba, now);
        now += TICK;
        ticks += 1;
        assert!(
            ticks < 1_000_000,
            "no progress: {:?}",
            a.log.replication_status()
        );
    }
    now
}

#[test]
fn a_late_standby_catches_up_from_a_checkpoint_plus_tail() {
    for seed in 1..=6u64 {
        let config = big_config();
        let mut a = Node::new(1, config);
        let mut b = Node::new(2, config);
        a.log.become_primary(1).unwrap();
        let mut service = Service::default();
        let mut rng = Rng::new(seed);
        // 150 records while the standby is away: they leave the ring once on disk.
        for _ in 0..150 {
            let sequence = a.log.next_sequence();
            let data = payload(seed, sequence, rng.below(400) as usize);
            a.log.log_async(KIND, &data).unwrap();
            service.applied.push((sequence, data));
            a.poll(Instant::ZERO);
        }
        assert_eq!(a.log.pending_records(), 0);
        // The standby arrives: it must be restarted from a checkpoint.
        let mut ab = Link::new(seed, 10, 5, 2000);
        let mut ba = Link::new(seed + 7, 10, 5, 2000);
        a.log.attach_peer();
        b.log.become_replica(1, Instant::ZERO);
        let mut now = Instant::ZERO;
        while !a.log.replication_status().peer_needs_checkpoint {
            step(&mut a, &mut b, &mut ab, &mut ba, now);
            now += TICK;
        }
        // The primary keeps logging while the standby catches up.
        for _ in 0..40 {
            if a.log.checkpoint_wanted() {
                a.log.checkpoint(KIND, service.encode()).unwrap();
            }
            let sequence = a.log.next_sequence();
            let data = payload(seed + 1, sequence, rng.below(3000) as usize);
            match a.log.log_async(KIND, &data) {
                Ok(_) => service.applied.push((sequence, data)),
                Err(Error::Full) => {}
                Err(error) => panic!("{error}"),
            }
            for _ in 0..5 {
                step(&mut a, &mut b, &mut ab, &mut ba, now);
                now += TICK;
            }
        }
        settle_with_checkpoints(&mut a, &mut b, &mut ab, &mut ba, &service, now);
        let (first, checkpoint, _) = &b.notified.records[0];
        assert!(
            *checkpoint && *first > 150,
            "seed {seed}: starts with a checkpoint"
        );
        assert_eq!(
            Service::from_records(&b.notified.records),
            service,
            "seed {seed}"
        );
        let mut recovered = Replayed::default();
        Log::open(&mut b.disk, config, |record| recovered.push(record)).unwrap();
        assert_eq!(
            Service::from_records(&recovered.records),
            service,
            "seed {seed}: on disk"
        );
    }
}

#[test]
fn a_rejoining_node_in_step_resumes_without_a_checkpoint() {
    let (mut a, mut b) = pair(small_config());
    let (mut ab, mut ba) = (Link::new(3, 5, 5, 500), Link::new(4, 5, 5, 500));
    let mut model = Model::default();
    let now = log_while_running(
        &mut a,
        &mut b,
        &mut ab,
        &mut ba,
        &mut model,
        100,
        9,
        Instant::ZERO,
    );
    let now = settle(&mut a, &mut b, &mut ab, &mut ba, now);
    // The standby reboots: recovery from its disk, then it joins again.
    let mut recovered = Replayed::default();
    let (log, _) = Log::open(&mut b.disk, small_config(), |record| recovered.push(record)).unwrap();
    b.log = log;
    b.log.become_replica(1, now);
    let now = log_while_running(&mut a, &mut b, &mut ab, &mut ba, &mut model, 100, 10, now);
    settle(&mut a, &mut b, &mut ab, &mut ba, now);
    recovered
        .records
        .extend(b.notified.records.iter().skip(100).cloned());
    assert_eq!(recovered.check_prefix_of(&model), model.logged());
    assert!(
        !recovered.records.iter().any(|r| r.1),
        "no checkpoint was needed"
    );
}

#[test]
fn a_diverged_old_primary_is_reset_to_the_new_primarys_history() {
    let config = big_config();
    let (mut a, mut b) = pair(config);
    let (mut ab, mut ba) = (Link::new(5, 5, 5, 500), Link::new(6, 5, 5, 500));
    let mut model = Model::default();
    let now = log_while_running(
        &mut a,
        &mut b,
        &mut ab,
        &mut ba,
        &mut model,
        50,
        11,
        Instant::ZERO,
    );
    let mut now = settle(&mut a, &mut b, &mut ab, &mut ba, now);
    // The link goes down; A logs ten records B never sees (A has them on disk).
    ab.up = false;
    ba.up = false;
    for i in 0..10u8 {
        a.log.log_async(KIND, &[i; 50]).unwrap();
        a.poll(now);
    }
    assert_eq!(a.log.durable_sequence(), 60);
    // A is declared dead; B takes over in epoch 2 and logs its own 51..
    let mut service = Service::from_records(&b.notified.records);
    b.log.become_primary(2).unwrap();
    for i in 0..20u8 {
        let sequence = b.log.next_sequence();
        b.log.log_async(KIND, &[100 + i; 80]).unwrap();
        service.applied.push((sequence, vec![100 + i; 80]));
        b.poll(now);
    }
    // A comes back as a standby of epoch 2.
    a.log.become_replica(2, now);
    b.log.attach_peer();
    ab.up = true;
    ba.up = true;
    a.notified = Replayed::default();
    now = settle_with_checkpoints(&mut b, &mut a, &mut ba, &mut ab, &service, now);
    assert!(a.notified.records[0].1, "reset by a checkpoint");
    assert_eq!(Service::from_records(&a.notified.records), service);
    // A's disk: its ten diverged records are followed by the reset; replay ends in B's state.
    let mut recovered = Replayed::default();
    Log::open(&mut a.disk, config, |record| recovered.push(record)).unwrap();
    assert_eq!(Service::from_records(&recovered.records), service);
    let _ = now;
}

#[test]
fn an_older_primary_is_refused_and_told() {
    let (mut a, mut b) = pair(small_config());
    let (mut ab, mut ba) = (Link::perfect(), Link::perfect());
    let mut model = Model::default();
    let now = log_while_running(
        &mut a,
        &mut b,
        &mut ab,
        &mut ba,
        &mut model,
        5,
        12,
        Instant::ZERO,
    );
    let now = settle(&mut a, &mut b, &mut ab, &mut ba, now);
    // B learns of epoch 3 from the Duplex state machine; A still thinks it is primary of 1.
    b.log.become_replica(3, now);
    a.log.log_async(KIND, b"stale").unwrap();
    let mut refused = 0;
    let mut now = now;
    for _ in 0..100 {
        a.poll(now);
        a.log.transmit(now, |frame| ab.send(now, frame));
        b.log.transmit(now, |frame| ba.send(now, frame));
        for frame in ab.due(now) {
            if b.log
                .receive_frame(&frame, now, |record| b.notified.push(record))
                == Err(Error::StaleEpoch)
            {
                refused += 1;
            }
        }
        for frame in ba.due(now) {
            a.log.receive_frame(&frame, now, |_| {}).unwrap();
        }
        now += Duration::from_millis(1);
    }
    // A joined B's new session, was told of epoch 3 and stopped.
    let status = a.log.replication_status();
    assert!(status.superseded, "{status:?}");
    assert_eq!(
        b.notified.records.len(),
        5,
        "nothing of the stale primary accepted: {refused}"
    );
    assert_eq!(b.log.replication_status().epoch, 3);
    assert_eq!(
        a.log.become_primary(2),
        Err(Error::StaleEpoch).or(Ok(())),
        "epoch 2 >= 1 is allowed"
    );
    assert_eq!(b.log.log_async(KIND, b"x"), Err(Error::NotPrimary));
    assert_eq!(b.log.role(), Role::Replica);
}

#[test]
fn garbage_frames_are_refused_without_harm() {
    let (mut a, mut b) = pair(small_config());
    let (mut ab, mut ba) = (Link::perfect(), Link::perfect());
    let mut model = Model::default();
    let now = log_while_running(
        &mut a,
        &mut b,
        &mut ab,
        &mut ba,
        &mut model,
        30,
        13,
        Instant::ZERO,
    );
    let mut rng = Rng::new(77);
    // Capture real frames, mangle them, feed them to both sides.
    let mut frames = Vec::new();
    a.log.log_async(KIND, &[5; 3000]).unwrap();
    model.push(31, false, vec![5; 3000]);
    a.log.transmit(now, |frame| {
        frames.push(frame.to_vec());
        false
    });
    b.log.transmit(now + Duration::from_secs(1), |frame| {
        frames.push(frame.to_vec());
        false
    });
    assert!(frames.len() >= 2);
    for _ in 0..3000 {
        let mut frame = frames[rng.below(frames.len() as u64) as usize].clone();
        for _ in 0..rng.below(4) + 1 {
            let at = rng.below(frame.len() as u64) as usize;
            frame[at] = rng.next() as u8;
        }
        if rng.chance(20) {
            frame.truncate(rng.below(frame.len() as u64) as usize);
        }
        let _ = b
            .log
            .receive_frame(&frame, now, |record| b.notified.push(record));
        let _ = a.log.receive_frame(&frame, now, |_| {});
    }
    let now = settle(
        &mut a,
        &mut b,
        &mut ab,
        &mut ba,
        now + Duration::from_secs(2),
    );
    let _ = now;
    // Every mangled frame failed its checksum: nothing of it was taken.
    assert_eq!(b.notified.check_prefix_of(&model), model.logged());
    assert_eq!(b.notified.records.len() as u64, model.logged());
    assert!(!a.log.replication_status().superseded);
    assert!(a.log.stats().frames_received > 3000);
}

#[test]
fn a_standby_with_a_smaller_disk_gets_the_checkpoints_it_needs() {
    let config = big_config();
    let mut a = Node::with_pages(1, config, 512);
    let mut b = Node::with_pages(2, config, 48);
    a.log.become_primary(1).unwrap();
    a.log.attach_peer();
    b.log.become_replica(1, Instant::ZERO);
    let (mut ab, mut ba) = (Link::new(8, 2, 2, 300), Link::new(9, 2, 2, 300));
    let mut service = Service::default();
    let mut rng = Rng::new(4);
    let mut now = Instant::ZERO;
    let mut checkpoints = 0;
    for _ in 0..20_000 {
        if a.log.checkpoint_wanted() {
            // The snapshot stays small: the service forgets all but its last 8 records.
            let keep = service.applied.len().saturating_sub(8);
            service.applied.drain(..keep);
            a.log.checkpoint(KIND, service.encode()).unwrap();
            checkpoints += 1;
        }
        if rng.chance(50) {
            let sequence = a.log.next_sequence();
            let data = payload(4, sequence, 200 + rng.below(800) as usize);
            match a.log.log_async(KIND, &data) {
                Ok(_) => service.applied.push((sequence, data)),
                Err(Error::Full) => {}
                Err(error) => panic!("{error}"),
            }
        }
        step(&mut a, &mut b, &mut ab, &mut ba, now);
        now += TICK;
    }
    settle_with_checkpoints(&mut a, &mut b, &mut ab, &mut ba, &service, now);
    assert!(
        a.log.pages_used() * 4 < a.log.data_pages(),
        "the primary alone would not ask"
    );
    assert!(checkpoints >= 5, "{checkpoints} checkpoints");
    assert!(
        a.log.stats().records_logged > 5000,
        "{:?} {:?}",
        a.log.stats(),
        b.log.stats()
    );
    assert_eq!(Service::from_records(&b.notified.records), service);
}

#[test]
fn a_standby_whose_disk_is_full_is_reset_by_the_next_checkpoint() {
    // The primary piles up far more than the standby's disk holds before any checkpoint;
    // the standby fills up with its ring full, so a checkpoint behind those records could
    // never reach it: it comes as a reset instead.
    let primary_config = Config {
        ring_bytes: 2 << 20,
        ring_records: 4096,
        ..big_config()
    };
    let mut a = Node::with_pages(1, primary_config, 1024);
    let mut b = Node::with_pages(2, big_config(), 40);
    a.log.become_primary(1).unwrap();
    a.log.attach_peer();
    b.log.become_replica(1, Instant::ZERO);
    let (mut ab, mut ba) = (Link::perfect(), Link::perfect());
    let mut service = Service::default();
    let mut now = Instant::ZERO;
    for _ in 0..10 {
        step(&mut a, &mut b, &mut ab, &mut ba, now);
        now += TICK;
    }
    for _ in 0..300 {
        let sequence = a.log.next_sequence();
        let data = payload(21, sequence, 3000);
        a.log.log_async(KIND, &data).unwrap();
        service.applied.push((sequence, data));
    }
    let mut full_seen = false;
    for _ in 0..2000 {
        step(&mut a, &mut b, &mut ab, &mut ba, now);
        now += TICK;
        full_seen |= b.log.poll_at(now).is_none_or(|at| at > now) && b.log.pending_records() > 0;
    }
    assert!(full_seen, "the standby filled up");
    assert!(a.log.checkpoint_wanted());
    let keep = service.applied.len() - 4;
    service.applied.drain(..keep);
    a.log.checkpoint(KIND, service.encode()).unwrap();
    settle_with_checkpoints(&mut a, &mut b, &mut ab, &mut ba, &service, now);
    assert_eq!(Service::from_records(&b.notified.records), service);
    assert!(
        b.notified.records.iter().any(|record| record.1),
        "a checkpoint arrived"
    );
    let mut recovered = Replayed::default();
    Log::open(&mut b.disk, big_config(), |record| recovered.push(record)).unwrap();
    assert_eq!(Service::from_records(&recovered.records), service);
}
