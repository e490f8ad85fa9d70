//! An endpoint that queues every frame it gets, for tests and for the lab's checks.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::fabric::{Delivery, Endpoint, PortId};

/// A frame a [`Capture`] got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFrame {
    /// The frame.
    pub frame: Vec<u8>,
    /// The port that delivered it.
    pub port: PortId,
    /// The port where it entered the fabric.
    pub origin: PortId,
    /// [`crate::clock::now_ns`] at delivery.
    pub time_ns: u64,
}

#[derive(Debug, Default)]
struct Queue {
    frames: Mutex<VecDeque<CapturedFrame>>,
    arrived: Condvar,
}

/// Queues the frames sent to an internal port. Clones share the queue: give one to
/// [`crate::Fabric::add_internal_port`], read from another. Unbounded: for low rates.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    queue: Arc<Queue>,
}

impl Capture {
    /// An empty capture.
    pub fn new() -> Capture {
        Capture::default()
    }

    fn frames(&self) -> MutexGuard<'_, VecDeque<CapturedFrame>> {
        self.queue
            .frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The oldest frame, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<CapturedFrame> {
        let deadline = Instant::now() + timeout;
        let mut frames = self.frames();
        loop {
            if let Some(frame) = frames.pop_front() {
                return Some(frame);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            frames = self
                .queue
                .arrived
                .wait_timeout(frames, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The oldest frame, if any.
    pub fn try_recv(&self) -> Option<CapturedFrame> {
        self.frames().pop_front()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames().len()
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames().is_empty()
    }

    /// Takes every waiting frame.
    pub fn drain(&self) -> Vec<CapturedFrame> {
        self.frames().drain(..).collect()
    }
}

impl Endpoint for Capture {
    fn deliver(&self, delivery: &Delivery<'_>) {
        self.frames().push_back(CapturedFrame {
            frame: delivery.frame.to_vec(),
            port: delivery.port,
            origin: delivery.origin,
            time_ns: delivery.time_ns,
        });
        self.queue.arrived.notify_all();
    }
}
