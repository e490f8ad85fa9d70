//! The traffic source: a thread sending UDP/IPv4 test frames into a fabric port at a set
//! rate, flows in turn, each frame stamped with its flow's sequence number and the time.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::fabric::{Fabric, PortId, Shared};
use crate::frame::{FlowAddresses, FrameTemplate};
use crate::{Error, MacAddress, Result, clock};

/// How fast a source sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Frames per second.
    FramesPerSecond(f64),
    /// Bits per second, counting each frame's full size with FCS (RFC 2544 sizes; no
    /// preamble or inter-frame gap).
    BitsPerSecond(f64),
    /// As fast as the thread can.
    Unlimited,
}

impl Rate {
    /// Frames per second for frames of `frame_size` bytes (infinite for `Unlimited`).
    pub fn frames_per_second(self, frame_size: usize) -> f64 {
        match self {
            Rate::FramesPerSecond(frames) => frames,
            Rate::BitsPerSecond(bits) => bits / (frame_size as f64 * 8.0),
            Rate::Unlimited => f64::INFINITY,
        }
    }
}

/// Addresses and flows of a source's traffic. Flow `i` (0-based) has flow id
/// `first_flow + i` and UDP source port `source_port + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Ethernet source of every frame.
    pub source_mac: MacAddress,
    /// Ethernet destination of every frame.
    pub destination_mac: MacAddress,
    /// IPv4 source.
    pub source_ip: Ipv4Addr,
    /// IPv4 destination.
    pub destination_ip: Ipv4Addr,
    /// UDP source port of the first flow.
    pub source_port: u16,
    /// UDP destination port.
    pub destination_port: u16,
    /// Number of flows (at least 1).
    pub flows: u16,
    /// Flow id of the first flow. Two sources feeding one sink need disjoint flow ids.
    pub first_flow: u16,
}

impl TrafficSpec {
    /// One flow from `source_ip`:40000 to `destination_ip`:9 (discard), flow id 0.
    pub fn new(
        source_mac: MacAddress,
        destination_mac: MacAddress,
        source_ip: Ipv4Addr,
        destination_ip: Ipv4Addr,
    ) -> TrafficSpec {
        TrafficSpec {
            source_mac,
            destination_mac,
            source_ip,
            destination_ip,
            source_port: 40_000,
            destination_port: 9,
            flows: 1,
            first_flow: 0,
        }
    }

    /// The flow ids this spec sends.
    pub fn flow_ids(&self) -> impl Iterator<Item = u16> + use<> {
        let first = self.first_flow;
        (0..self.flows).map(move |index| first.wrapping_add(index))
    }

    fn addresses(&self, index: u16) -> FlowAddresses {
        FlowAddresses {
            source_mac: self.source_mac,
            destination_mac: self.destination_mac,
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            source_port: self.source_port.wrapping_add(index),
            destination_port: self.destination_port,
        }
    }
}

/// Settings of a [`Source`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceConfig {
    /// Addresses and flows.
    pub traffic: TrafficSpec,
    /// Sending rate, all flows together.
    pub rate: Rate,
    /// Frame size with FCS, 64 to 1518 (the datagram is 4 bytes shorter).
    pub frame_size: usize,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Stop after this time.
    pub duration: Option<Duration>,
    /// Most frames sent back to back when the source is behind its schedule.
    pub max_burst: u32,
    /// Waits shorter than this are spent yielding the CPU in a loop (precise); longer ones
    /// sleep (cheap, but a sleep overshoots by ~50-100 µs, caught up by a burst).
    pub spin_below: Duration,
}

impl SourceConfig {
    /// Unbounded traffic at `rate` (stop it with [`Source::stop`]), bursts of at most 32,
    /// spinning below 100 µs.
    pub fn new(traffic: TrafficSpec, rate: Rate, frame_size: usize) -> SourceConfig {
        SourceConfig {
            traffic,
            rate,
            frame_size,
            count: None,
            duration: None,
            max_burst: 32,
            spin_below: Duration::from_micros(100),
        }
    }
}

/// What a source sent.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceReport {
    /// Frames sent.
    pub sent: u64,
    /// Frames sent per flow id.
    pub sent_per_flow: BTreeMap<u16, u64>,
    /// Frame size with FCS.
    pub frame_size: usize,
    /// The rate asked for, in frames per second (infinite for [`Rate::Unlimited`]).
    pub offered_fps: f64,
    /// [`clock::now_ns`] when sending started.
    pub start_ns: u64,
    /// [`clock::now_ns`] after the last frame.
    pub end_ns: u64,
}

impl SourceReport {
    /// Frames per second really sent.
    pub fn achieved_fps(&self) -> f64 {
        let seconds = self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        if seconds > 0.0 {
            self.sent as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Number of frames due `elapsed_ns` after the start at `frames_per_second`: frame `k`
/// (from 0) is due at `k / frames_per_second`.
pub(crate) fn frames_due(elapsed_ns: u64, frames_per_second: f64) -> u64 {
    if !frames_per_second.is_finite() {
        return u64::MAX;
    }
    (elapsed_ns as f64 * frames_per_second / 1e9).floor() as u64 + 1
}

struct Control {
    stop: AtomicBool,
    sent: AtomicU64,
}

/// A running traffic source; stops (and joins its thread) on drop.
pub struct Source {
    control: Arc<Control>,
    thread: Option<JoinHandle<Result<SourceReport>>>,
    bounded: bool,
}

impl Source {
    /// Starts sending into `port` (normally an internal port wired to the device under
    /// test; frames delivered back to that port are the endpoint's business).
    pub fn start(fabric: &Fabric, port: PortId, config: SourceConfig) -> Result<Source> {
        let frames_per_second = config.rate.frames_per_second(config.frame_size);
        if frames_per_second.is_nan() || frames_per_second <= 0.0 {
            return Err(Error::InvalidArgument("rate must be positive"));
        }
        if config.traffic.flows == 0 {
            return Err(Error::InvalidArgument("a source needs at least one flow"));
        }
        if config.max_burst == 0 {
            return Err(Error::InvalidArgument("max_burst must be at least 1"));
        }
        let templates = (0..config.traffic.flows)
            .map(|index| {
                let flow = config.traffic.first_flow.wrapping_add(index);
                FrameTemplate::new(&config.traffic.addresses(index), flow, config.frame_size)
            })
            .collect::<Result<Vec<_>>>()?;
        fabric.counters(port)?;
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        });
        let shared = fabric.shared();
        let thread_control = Arc::clone(&control);
        let thread = thread::Builder::new()
            .name("fabric-source".to_owned())
            .spawn(move || {
                run(
                    &shared,
                    port,
                    &config,
                    templates,
                    frames_per_second,
                    &thread_control,
                )
            })?;
        Ok(Source {
            control,
            thread: Some(thread),
            bounded: config.count.is_some() || config.duration.is_some(),
        })
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.control.sent.load(Ordering::Relaxed)
    }

    /// True once the source has sent all it was asked to, or failed.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits until the source has sent its count or run its duration.
    /// [`Error::InvalidArgument`] for a source with neither (it would never end).
    pub fn wait(mut self) -> Result<SourceReport> {
        if !self.bounded {
            return Err(Error::InvalidArgument(
                "wait on a source without count or duration",
            ));
        }
        self.join()
    }

    /// Stops sending and returns what was sent.
    pub fn stop(mut self) -> Result<SourceReport> {
        self.control.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> Result<SourceReport> {
        let thread = self.thread.take().ok_or(Error::Stopped)?;
        // A panic in the source thread is a bug: pass it on.
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    fabric: &Shared,
    port: PortId,
    config: &SourceConfig,
    mut templates: Vec<FrameTemplate>,
    frames_per_second: f64,
    control: &Control,
) -> Result<SourceReport> {
    let limit = config.count.unwrap_or(u64::MAX);
    let duration_ns = config.duration.map_or(u64::MAX, clock::duration_ns);
    let spin_below_ns = clock::duration_ns(config.spin_below);
    // Frames sent per flow; the next frame's sequence number (wraps after 2^32 frames).
    let mut sequences = vec![0u64; templates.len()];
    let mut next_flow = 0usize;
    let mut sent = 0u64;
    let start_ns = clock::now_ns();
    loop {
        if control.stop.load(Ordering::Relaxed) || sent >= limit {
            break;
        }
        let elapsed = clock::now_ns().saturating_sub(start_ns);
        if elapsed >= duration_ns {
            break;
        }
        let due = frames_due(elapsed, frames_per_second).min(limit);
        if due > sent {
            let burst = (due - sent).min(u64::from(config.max_burst));
            for _ in 0..burst {
                let sequence = sequences[next_flow];
                let frame = templates[next_flow].stamp(sequence as u32, clock::now_ns());
                fabric.inject(port, frame)?;
                sequences[next_flow] = sequence + 1;
                next_flow = (next_flow + 1) % templates.len();
                sent += 1;
            }
            control.sent.store(sent, Ordering::Relaxed);
            continue;
        }
        // `due <= sent` implies a finite rate: frame `sent` is due at sent / rate.
        let next_due_ns = (sent as f64 * 1e9 / frames_per_second) as u64;
        let wait_ns = next_due_ns.saturating_sub(elapsed);
        if wait_ns > spin_below_ns {
            thread::sleep(Duration::from_nanos(wait_ns - spin_below_ns / 2));
        } else {
            thread::yield_now();
        }
    }
    let end_ns = clock::now_ns();
    let sent_per_flow = config
        .traffic
        .flow_ids()
        .zip(&sequences)
        .map(|(flow, &count)| (flow, count))
        .collect();
    Ok(SourceReport {
        sent,
        sent_per_flow,
        frame_size: config.frame_size,
        offered_fps: frames_per_second,
        start_ns,
        end_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_releases_frames_on_time() {
        assert_eq!(frames_due(0, 1000.0), 1);
        assert_eq!(frames_due(999_999, 1000.0), 1);
        assert_eq!(frames_due(1_000_000, 1000.0), 2);
        assert_eq!(frames_due(1_000_000_000, 100_000.0), 100_001);
        assert_eq!(frames_due(5, f64::INFINITY), u64::MAX);
    }

    #[test]
    fn bit_rates_count_the_whole_frame() {
        assert_eq!(Rate::BitsPerSecond(512_000.0).frames_per_second(64), 1000.0);
        assert_eq!(Rate::FramesPerSecond(5.0).frames_per_second(64), 5.0);
    }
}
