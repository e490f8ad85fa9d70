//! The traffic sink: counts test frames, and measures loss, duplicates, reordering, gaps,
//! latency and fail-over from their headers, per flow and per origin port.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::fabric::{Delivery, Endpoint, PortId};
use crate::frame;
use crate::histogram::Histogram;
use crate::source::SourceReport;

/// Settings of a [`Sink`].
#[derive(Clone, Copy, Debug)]
pub struct SinkConfig {
    /// How many sequence numbers below the highest one seen per flow the sink remembers to
    /// tell duplicates from late frames (one bit each). An older frame counts as `late`.
    pub sequence_window: u32,
    /// How many origin changes [`SinkReport::transitions`] keeps; later ones are counted.
    pub max_transitions: usize,
    /// Silences of the whole stream at least this long are kept in [`SinkReport::gaps`].
    pub gap_threshold: Duration,
    /// How many such silences are kept; later ones are counted.
    pub max_gaps: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            sequence_window: 1 << 16,
            max_transitions: 10_000,
            gap_threshold: Duration::from_millis(2),
            max_gaps: 10_000,
        }
    }
}

/// The longest silence between two consecutive test frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Receive time of the last frame before the gap.
    pub last_before_ns: u64,
    /// Receive time of the first frame after it.
    pub first_after_ns: u64,
    /// Origin port of the last frame before the gap.
    pub last_before_origin: PortId,
    /// Origin port of the first frame after it.
    pub first_after_origin: PortId,
}

impl Gap {
    /// Length of the gap in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.first_after_ns.saturating_sub(self.last_before_ns)
    }
}

/// Two consecutive test frames that entered the fabric at different ports: the path
/// changed (for example from box A's WAN port to box B's after a fail-over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Origin of the earlier frame (the old path).
    pub from: PortId,
    /// Origin of the later frame (the new path).
    pub to: PortId,
    /// Receive time of the last frame on the old path.
    pub last_from_ns: u64,
    /// Receive time of the first frame on the new path.
    pub first_to_ns: u64,
}

impl Transition {
    /// Time between the old path's last frame and the new path's first, in nanoseconds.
    pub fn gap_ns(&self) -> u64 {
        self.first_to_ns.saturating_sub(self.last_from_ns)
    }
}

/// Test frames that entered the fabric at one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginReport {
    /// Frames received.
    pub frames: u64,
    /// Receive time of the first.
    pub first_ns: u64,
    /// Receive time of the last.
    pub last_ns: u64,
}

/// What the sink saw of one flow (or of all flows together).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowReport {
    /// Test frames received, duplicates included.
    pub received: u64,
    /// Frames whose sequence number had been received already.
    pub duplicated: u64,
    /// Frames that came after a frame with a higher sequence number (and were not
    /// duplicates), `late` ones included.
    pub reordered: u64,
    /// Frames more than [`SinkConfig::sequence_window`] below the highest sequence number:
    /// counted as reordered and not as duplicates, since the sink no longer knows.
    pub late: u64,
    /// Highest sequence number seen (for all flows together: the sum of `highest + 1` over
    /// flows, minus one, so that [`FlowReport::lost_by_gaps`] adds up).
    pub highest_sequence: Option<u64>,
    /// Receive time of the first frame.
    pub first_ns: Option<u64>,
    /// Receive time of the last frame.
    pub last_ns: Option<u64>,
    /// The longest time between two consecutive frames.
    pub longest_gap: Option<Gap>,
    /// Receive time minus send time of every frame.
    pub latency: Histogram,
}

impl FlowReport {
    /// Frames received once: `received - duplicated`.
    pub fn unique(&self) -> u64 {
        self.received.saturating_sub(self.duplicated)
    }

    /// Frames missing below the highest sequence number seen. Frames lost after the last
    /// one received do not show: use [`SinkReport::loss_against`] for the final count.
    pub fn lost_by_gaps(&self) -> u64 {
        self.highest_sequence
            .map_or(0, |highest| (highest + 1).saturating_sub(self.unique()))
    }
}

/// Loss of one run, from what a source sent and a sink received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossStats {
    /// Frames sent.
    pub sent: u64,
    /// Distinct frames received.
    pub received: u64,
    /// Frames sent and never received.
    pub lost: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// Frames received out of order.
    pub reordered: u64,
}

impl LossStats {
    /// `lost / sent` (0 when nothing was sent).
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }
}

/// A snapshot of everything a [`Sink`] measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Each flow, by flow id.
    pub flows: BTreeMap<u16, FlowReport>,
    /// All flows as one stream; its gap is the longest silence of the whole stream.
    pub total: FlowReport,
    /// Test frames by the port where they entered the fabric.
    pub origins: BTreeMap<PortId, OriginReport>,
    /// Every change of origin between consecutive frames, in order.
    pub transitions: Vec<Transition>,
    /// Transitions past [`SinkConfig::max_transitions`], not kept.
    pub transitions_dropped: u64,
    /// Every silence of the whole stream of at least [`SinkConfig::gap_threshold`], in
    /// order: a path that stays the same port (a bypass relay) shows its fail-over here.
    pub gaps: Vec<Gap>,
    /// Gaps past [`SinkConfig::max_gaps`], not kept.
    pub gaps_dropped: u64,
    /// Frames that were not test frames (ARP, heartbeats, ...).
    pub other_frames: u64,
}

impl SinkReport {
    /// The longest kept silence that ends after `time_ns` and starts no later than
    /// `within` after it: the outage a fault at `time_ns` caused.
    pub fn gap_after(&self, time_ns: u64, within: Duration) -> Option<Gap> {
        let latest_start = time_ns.saturating_add(within.as_nanos() as u64);
        self.gaps
            .iter()
            .filter(|g| g.first_after_ns > time_ns && g.last_before_ns <= latest_start)
            .max_by_key(|g| g.duration_ns())
            .copied()
    }

    /// Loss of the flows `source` sent, counting only those flows.
    pub fn loss_against(&self, source: &SourceReport) -> LossStats {
        let mut stats = LossStats::default();
        for (flow, &sent) in &source.sent_per_flow {
            stats.sent += sent;
            if let Some(report) = self.flows.get(flow) {
                stats.received += report.unique();
                stats.lost += sent.saturating_sub(report.unique());
                stats.duplicated += report.duplicated;
                stats.reordered += report.reordered;
            } else {
                stats.lost += sent;
            }
        }
        stats
    }

    /// The first change of path whose new path's first frame came at or after `time_ns`
    /// (for example the fault injection time): the fail-over as the traffic saw it.
    pub fn first_transition_after(&self, time_ns: u64) -> Option<&Transition> {
        self.transitions
            .iter()
            .find(|transition| transition.first_to_ns >= time_ns)
    }

    /// Latency over the given flows only.
    pub fn latency_of(&self, flows: impl IntoIterator<Item = u16>) -> Histogram {
        let mut latency = Histogram::new();
        for flow in flows {
            if let Some(report) = self.flows.get(&flow) {
                latency.merge(&report.latency);
            }
        }
        latency
    }
}

/// Remembers which sequence numbers in a window below the highest one were seen.
#[derive(Clone, Debug)]
struct SequenceWindow {
    bits: Vec<u64>,
    highest: Option<u64>,
}

enum Arrival {
    InOrder,
    Duplicate,
    Reordered,
    Late,
}

impl SequenceWindow {
    fn new(window: u32) -> SequenceWindow {
        let words = (window as usize).div_ceil(64).max(1);
        SequenceWindow {
            bits: vec![0; words],
            highest: None,
        }
    }

    fn size(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn slot(&self, sequence: u64) -> (usize, u64) {
        let bit = sequence % self.size();
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn observe(&mut self, sequence: u64) -> Arrival {
        let arrival = match self.highest {
            Some(highest) if sequence <= highest => {
                if highest - sequence >= self.size() {
                    return Arrival::Late;
                }
                let (word, mask) = self.slot(sequence);
                if self.bits[word] & mask != 0 {
                    return Arrival::Duplicate;
                }
                Arrival::Reordered
            }
            Some(highest) => {
                if sequence - highest >= self.size() {
                    self.bits.fill(0);
                } else {
                    for skipped in highest + 1..sequence {
                        let (word, mask) = self.slot(skipped);
                        self.bits[word] &= !mask;
                    }
                }
                self.highest = Some(sequence);
                Arrival::InOrder
            }
            None => {
                self.highest = Some(sequence);
                Arrival::InOrder
            }
        };
        let (word, mask) = self.slot(sequence);
        self.bits[word] |= mask;
        arrival
    }
}

#[derive(Clone, Debug)]
struct FlowState {
    report: FlowReport,
    window: SequenceWindow,
    last_origin: Option<PortId>,
}

/// Updates a report's times and longest gap for a frame received at `time_ns`.
/// Returns the silence this frame ended (none for the first frame).
fn note_arrival(
    report: &mut FlowReport,
    last_origin: Option<PortId>,
    time_ns: u64,
    origin: PortId,
) -> Option<Gap> {
    let gap = match (report.last_ns, last_origin) {
        (Some(last_ns), Some(last_origin)) => Some(Gap {
            last_before_ns: last_ns,
            first_after_ns: time_ns.max(last_ns),
            last_before_origin: last_origin,
            first_after_origin: origin,
        }),
        _ => None,
    };
    if let Some(gap) = gap
        && report
            .longest_gap
            .is_none_or(|longest| gap.duration_ns() > longest.duration_ns())
    {
        report.longest_gap = Some(gap);
    }
    report.first_ns.get_or_insert(time_ns);
    report.last_ns = Some(report.last_ns.map_or(time_ns, |last| last.max(time_ns)));
    gap
}

#[derive(Debug, Default)]
struct SinkState {
    flows: BTreeMap<u16, FlowState>,
    total: FlowReport,
    last_origin: Option<PortId>,
    origins: BTreeMap<PortId, OriginReport>,
    transitions: Vec<Transition>,
    transitions_dropped: u64,
    gaps: Vec<Gap>,
    gaps_dropped: u64,
    other_frames: u64,
}

#[derive(Debug)]
struct SinkInner {
    config: SinkConfig,
    state: Mutex<SinkState>,
    arrived: Condvar,
    waiters: AtomicUsize,
}

/// Counts test frames delivered to an internal port. Cheap to clone (clones share the
/// counts): give one clone to [`crate::Fabric::add_internal_port`], keep one to read.
#[derive(Clone, Debug)]
pub struct Sink {
    inner: Arc<SinkInner>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink::new()
    }
}

impl Sink {
    /// A sink with the default settings.
    pub fn new() -> Sink {
        Sink::with_config(SinkConfig::default())
    }

    /// A sink with these settings.
    pub fn with_config(config: SinkConfig) -> Sink {
        Sink {
            inner: Arc::new(SinkInner {
                config,
                state: Mutex::new(SinkState::default()),
                arrived: Condvar::new(),
                waiters: AtomicUsize::new(0),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SinkState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one frame received at `time_ns` that entered the fabric at `origin`.
    /// [`Endpoint::deliver`] calls this; tests call it with made-up times.
    pub fn record(&self, frame: &[u8], origin: PortId, time_ns: u64) {
        let mut state = self.state();
        let Some(header) = frame::parse(frame) else {
            state.other_frames += 1;
            return;
        };
        let latency = time_ns.saturating_sub(header.timestamp_ns);
        let window = self.inner.config.sequence_window;
        let state = &mut *state;
        let flow = state.flows.entry(header.flow).or_insert_with(|| FlowState {
            report: FlowReport::default(),
            window: SequenceWindow::new(window),
            last_origin: None,
        });
        let arrival = flow.window.observe(u64::from(header.sequence));
        for report in [&mut flow.report, &mut state.total] {
            report.received += 1;
            match arrival {
                Arrival::InOrder => {}
                Arrival::Duplicate => report.duplicated += 1,
                Arrival::Reordered => report.reordered += 1,
                Arrival::Late => {
                    report.reordered += 1;
                    report.late += 1;
                }
            }
            report.latency.record(latency);
        }
        note_arrival(&mut flow.report, flow.last_origin, time_ns, origin);
        flow.report.highest_sequence = flow.window.highest;
        flow.last_origin = Some(origin);
        let silence = note_arrival(&mut state.total, state.last_origin, time_ns, origin);
        if let Some(gap) = silence
            && gap.duration_ns() >= self.inner.config.gap_threshold.as_nanos() as u64
        {
            if state.gaps.len() < self.inner.config.max_gaps {
                state.gaps.push(gap);
            } else {
                state.gaps_dropped += 1;
            }
        }

        if let Some(from) = state.last_origin
            && from != origin
        {
            if state.transitions.len() < self.inner.config.max_transitions {
                let last_from_ns = state.origins.get(&from).map_or(0, |o| o.last_ns);
                state.transitions.push(Transition {
                    from,
                    to: origin,
                    last_from_ns,
                    first_to_ns: time_ns,
                });
            } else {
                state.transitions_dropped += 1;
            }
        }
        state.last_origin = Some(origin);
        let origin_report = state.origins.entry(origin).or_insert(OriginReport {
            frames: 0,
            first_ns: time_ns,
            last_ns: time_ns,
        });
        origin_report.frames += 1;
        origin_report.last_ns = origin_report.last_ns.max(time_ns);

        if self.inner.waiters.load(Ordering::Relaxed) > 0 {
            self.inner.arrived.notify_all();
        }
    }

    /// Everything measured so far.
    pub fn report(&self) -> SinkReport {
        let state = self.state();
        let mut total = state.total.clone();
        let mut highest_sum = 0u64;
        for flow in state.flows.values() {
            highest_sum += flow
                .report
                .highest_sequence
                .map_or(0, |highest| highest + 1);
        }
        total.highest_sequence = highest_sum.checked_sub(1);
        SinkReport {
            flows: state
                .flows
                .iter()
                .map(|(&id, flow)| (id, flow.report.clone()))
                .collect(),
            total,
            origins: state.origins.clone(),
            transitions: state.transitions.clone(),
            transitions_dropped: state.transitions_dropped,
            gaps: state.gaps.clone(),
            gaps_dropped: state.gaps_dropped,
            other_frames: state.other_frames,
        }
    }

    /// Test frames received so far, duplicates included.
    pub fn received(&self) -> u64 {
        self.state().total.received
    }

    /// Forgets everything measured.
    pub fn reset(&self) {
        *self.state() = SinkState::default();
    }

    /// Waits until `frames` test frames were received, or `timeout` passed; true if they
    /// were.
    pub fn wait_for(&self, frames: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.wait_until(deadline, |state| state.total.received >= frames)
    }

    /// Waits until no test frame arrived for `quiet` (the path has drained), or `timeout`
    /// passed; true if the path went quiet.
    pub fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last_count = self.received();
        let mut last_change = Instant::now();
        loop {
            let now = Instant::now();
            if now >= last_change + quiet {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let until = (last_change + quiet).min(deadline);
            self.wait_until(until, |state| state.total.received != last_count);
            let count = self.received();
            if count != last_count {
                last_count = count;
                last_change = Instant::now();
            }
        }
    }

    fn wait_until(&self, deadline: Instant, done: impl Fn(&SinkState) -> bool) -> bool {
        self.inner.waiters.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let reached = loop {
            if done(&state) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            // Bounded wait: a notification may slip past between the count and the wait.
            let slice = (deadline - now).min(Duration::from_millis(10));
            state = self
                .inner
                .arrived
                .wait_timeout(state, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(state);
        self.inner.waiters.fetch_sub(1, Ordering::Relaxed);
        reached
    }
}

impl Endpoint for Sink {
    fn deliver(&self, delivery: &Delivery<'_>) {
        self.record(delivery.frame, delivery.origin, delivery.time_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MacAddress;
    use crate::frame::{FlowAddresses, FrameTemplate};
    use std::net::Ipv4Addr;

    const A: PortId = PortId::new_for_tests(1);
    const B: PortId = PortId::new_for_tests(2);

    fn template(flow: u16) -> FrameTemplate {
        let addresses = FlowAddresses {
            source_mac: MacAddress([2, 0, 0, 0, 0, 1]),
            destination_mac: MacAddress([2, 0, 0, 0, 0, 2]),
            source_ip: Ipv4Addr::new(10, 0, 0, 1),
            destination_ip: Ipv4Addr::new(10, 0, 1, 1),
            source_port: 40_000,
            destination_port: 9,
        };
        FrameTemplate::new(&addresses, flow, 64).unwrap()
    }

    /// Feeds frames of `flow` with these sequence numbers, sent at time 0, received at the
    /// given times from the given origins.
    fn feed(sink: &Sink, flow: u16, frames: &[(u32, u64, PortId)]) {
        let mut template = template(flow);
        for &(sequence, time_ns, origin) in frames {
            sink.record(template.stamp(sequence, 1_000), origin, time_ns);
        }
    }

    #[test]
    fn counts_lost_duplicated_reordered_and_gaps() {
        let sink = Sink::new();
        // Sequence 4 and 7 missing, 2 arrives late, 3 twice; a 50 µs silence before 5.
        feed(
            &sink,
            0,
            &[
                (0, 10_000, A),
                (1, 11_000, A),
                (3, 12_000, A),
                (2, 13_000, A),
                (3, 14_000, A),
                (5, 64_000, A),
                (6, 65_000, A),
                (8, 66_000, A),
            ],
        );
        sink.record(&[0u8; 60], A, 70_000);
        let report = sink.report();
        let flow = &report.flows[&0];
        assert_eq!(flow.received, 8);
        assert_eq!(flow.duplicated, 1);
        assert_eq!(flow.reordered, 1);
        assert_eq!(flow.late, 0);
        assert_eq!(flow.unique(), 7);
        assert_eq!(flow.highest_sequence, Some(8));
        assert_eq!(flow.lost_by_gaps(), 2);
        let gap = flow.longest_gap.unwrap();
        assert_eq!((gap.last_before_ns, gap.first_after_ns), (14_000, 64_000));
        assert_eq!(gap.duration_ns(), 50_000);
        assert_eq!(report.other_frames, 1);
        let latency = flow.latency.summary().unwrap();
        assert_eq!(latency.min_ns, 9_000);
        assert_eq!(latency.max_ns, 65_000);
        assert_eq!(report.total.received, 8);
        assert_eq!(report.total.lost_by_gaps(), 2);
    }

    #[test]
    fn final_loss_counts_frames_lost_after_the_last_one() {
        let sink = Sink::new();
        feed(&sink, 3, &[(0, 1, A), (1, 2, A), (2, 3, A), (2, 4, A)]);
        let source = SourceReport {
            sent: 15,
            sent_per_flow: BTreeMap::from([(3, 10), (4, 5)]),
            frame_size: 64,
            offered_fps: 1000.0,
            start_ns: 0,
            end_ns: 1,
        };
        let loss = sink.report().loss_against(&source);
        assert_eq!(
            loss,
            LossStats {
                sent: 15,
                received: 3,
                lost: 12,
                duplicated: 1,
                reordered: 0,
            }
        );
        assert!((loss.loss_ratio() - 0.8).abs() < 1e-12);
    }

    #[test]
    fn flows_are_counted_apart_and_together() {
        let sink = Sink::new();
        feed(&sink, 1, &[(0, 100, A)]);
        feed(&sink, 2, &[(0, 200, A)]);
        feed(&sink, 1, &[(1, 300, A)]);
        feed(&sink, 2, &[(2, 400, A)]);
        let report = sink.report();
        assert_eq!(report.flows.len(), 2);
        assert_eq!(report.flows[&1].lost_by_gaps(), 0);
        assert_eq!(report.flows[&2].lost_by_gaps(), 1);
        assert_eq!(report.total.received, 4);
        assert_eq!(report.total.lost_by_gaps(), 1);
        // Per flow the gap is 200 ns; the stream's is 100 ns.
        assert_eq!(report.flows[&1].longest_gap.unwrap().duration_ns(), 200);
        assert_eq!(report.total.longest_gap.unwrap().duration_ns(), 100);
        assert_eq!(report.latency_of([1]).samples(), 2);
    }

    #[test]
    fn gaps_on_one_origin_measure_a_relay_fail_over() {
        let sink = Sink::new();
        // One port all along (a bypass relay closed): 1 ms apart, a 12 ms outage after a
        // fault at 3.5 ms, and an earlier 3 ms hiccup.
        feed(
            &sink,
            0,
            &[
                (0, 0, A),
                (1, 3_000_000, A),
                (2, 4_000_000, A),
                (3, 16_000_000, A),
                (4, 17_000_000, A),
            ],
        );
        let report = sink.report();
        assert_eq!(report.gaps.len(), 2);
        assert_eq!(report.gaps_dropped, 0);
        let gap = report
            .gap_after(3_500_000, Duration::from_millis(100))
            .unwrap();
        assert_eq!(
            (gap.last_before_ns, gap.first_after_ns),
            (4_000_000, 16_000_000)
        );
        assert_eq!(gap.duration_ns(), 12_000_000);
        // A fault after every gap: none.
        assert!(
            report
                .gap_after(16_500_000, Duration::from_millis(100))
                .is_none()
        );
        // A fault long before the outage: not within the window.
        assert!(report.gap_after(0, Duration::from_nanos(1)).is_some());
        assert!(
            report
                .gap_after(3_100_000, Duration::from_nanos(1))
                .is_none()
        );
    }

    #[test]
    fn origin_changes_measure_the_fail_over() {
        let sink = Sink::new();
        // A forwards until 5 ms, B from 25 ms on; a stale frame from A at 26 ms.
        feed(
            &sink,
            0,
            &[
                (0, 4_000_000, A),
                (1, 5_000_000, A),
                (5, 25_000_000, B),
                (6, 26_000_000, A),
                (7, 27_000_000, B),
            ],
        );
        let report = sink.report();
        assert_eq!(report.transitions.len(), 3);
        let failover = report.first_transition_after(20_000_000).unwrap();
        assert_eq!((failover.from, failover.to), (A, B));
        assert_eq!(failover.last_from_ns, 5_000_000);
        assert_eq!(failover.first_to_ns, 25_000_000);
        assert_eq!(failover.gap_ns(), 20_000_000);
        assert_eq!(report.origins[&A].frames, 3);
        assert_eq!(report.origins[&B].first_ns, 25_000_000);
        assert_eq!(report.origins[&A].last_ns, 26_000_000);
        let gap = report.total.longest_gap.unwrap();
        assert_eq!((gap.last_before_origin, gap.first_after_origin), (A, B));
        assert_eq!(report.total.lost_by_gaps(), 3);
    }

    #[test]
    fn old_frames_beyond_the_window_count_as_late() {
        let sink = Sink::with_config(SinkConfig {
            sequence_window: 64,
            max_transitions: 1,
            ..SinkConfig::default()
        });
        feed(
            &sink,
            0,
            &[(0, 1, A), (100, 2, B), (1, 3, A), (100, 4, B), (50, 5, B)],
        );
        let flow = sink.report().flows[&0].clone();
        assert_eq!(flow.late, 1);
        assert_eq!(flow.reordered, 2);
        assert_eq!(flow.duplicated, 1);
        let report = sink.report();
        assert_eq!(report.transitions.len(), 1);
        assert_eq!(report.transitions_dropped, 2);
    }

    #[test]
    fn wait_for_returns_at_once_when_reached_and_false_at_deadline() {
        let sink = Sink::new();
        feed(&sink, 0, &[(0, 1, A)]);
        assert!(sink.wait_for(1, Duration::ZERO));
        assert!(!sink.wait_for(2, Duration::from_millis(20)));
        sink.reset();
        assert_eq!(sink.received(), 0);
    }
}
