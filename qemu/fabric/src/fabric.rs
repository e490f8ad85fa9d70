//! Ports, segments, the bypass relay, impairments and the delay timer.

use std::collections::{BinaryHeap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::pcap::PcapWriter;
use crate::rng::{SharedRng, mix};
use crate::socket::VmSocket;
use crate::{Error, MacAddress, Result, clock, socket};

/// Shortest frame the fabric carries: an Ethernet header.
pub const MIN_FRAME_LENGTH: usize = 14;
/// Longest frame the fabric carries: the largest UDP payload over IPv4.
pub const MAX_FRAME_LENGTH: usize = 65_507;
/// How many bypass relays one frame may cross; more means a loop, and the frame is dropped.
pub const MAX_BYPASS_HOPS: u8 = 16;

/// Names a port of one [`Fabric`]. Ports are numbered from 0 in order of creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(u32);

impl PortId {
    /// The port's number.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    #[cfg(test)]
    pub(crate) const fn new_for_tests(index: u32) -> PortId {
        PortId(index)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which way through a port an impairment applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the attached device (VM NIC, source) into the fabric.
    Ingress,
    /// From the fabric to the attached device.
    Egress,
    /// Both ways.
    Both,
}

impl Direction {
    fn indices(self) -> &'static [usize] {
        match self {
            Direction::Ingress => &[INGRESS],
            Direction::Egress => &[EGRESS],
            Direction::Both => &[INGRESS, EGRESS],
        }
    }
}

const INGRESS: usize = 0;
const EGRESS: usize = 1;

/// A frame handed to an internal port's [`Endpoint`].
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The Ethernet frame, without FCS.
    pub frame: &'a [u8],
    /// The port that delivers it.
    pub port: PortId,
    /// The port where the frame entered the fabric: the VM NIC or source that sent it, or,
    /// for a frame that crossed a bypass relay, the relay's output port.
    pub origin: PortId,
    /// [`clock::now_ns`] at delivery (after any delay).
    pub time_ns: u64,
}

/// What sits behind an internal port: it gets every frame the fabric sends to the port.
///
/// `deliver` runs on the fabric's threads (a VM port's receive thread, the delay timer, a
/// source's thread): keep it short and never block in it. It may call
/// [`Fabric::inject`]-like paths only if that cannot loop back to itself (the forwarding
/// runs on the same stack).
pub trait Endpoint: Send + Sync + 'static {
    /// Takes one frame.
    fn deliver(&self, delivery: &Delivery<'_>);
}

impl<F: Fn(&Delivery<'_>) + Send + Sync + 'static> Endpoint for F {
    fn deliver(&self, delivery: &Delivery<'_>) {
        self(delivery)
    }
}

/// An endpoint that drops every frame (they still count in the port's `tx_frames`): the
/// receiving side of a traffic source's port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discard;

impl Endpoint for Discard {
    fn deliver(&self, _delivery: &Delivery<'_>) {}
}

/// Settings of a [`Fabric`].
#[derive(Clone, Debug)]
pub struct FabricConfig {
    /// Seed of the loss generators (each port derives its own from it and its number).
    pub seed: u64,
    /// `SO_RCVBUF`/`SO_SNDBUF` requested for every fabric socket (0: the system default).
    pub socket_buffer_bytes: usize,
    /// The same for the QEMU-side sockets of [`Fabric::add_vm_port_with_socket`]. Large
    /// buffers ride out QEMU main-loop hiccups without loss; but frames sent to a stopped
    /// VM wait there, and a resumed VM reads all of them (up to twice this many bytes, as
    /// Linux doubles the request).
    pub vm_socket_buffer_bytes: usize,
    /// How often idle threads look at the stop flag; bounds the time [`Fabric`]'s drop takes
    /// when a wake-up is lost.
    pub poll_interval: Duration,
}

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig {
            seed: 1,
            socket_buffer_bytes: 4 << 20,
            vm_socket_buffer_bytes: 4 << 20,
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// A VM NIC's port: what QEMU needs to connect to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPort {
    /// The port in the fabric.
    pub id: PortId,
    /// The port's name.
    pub name: String,
    /// The MAC address the NIC must have (passed as `mac=`).
    pub mac: MacAddress,
    /// The fabric's socket: QEMU sends here (`remote`).
    pub fabric_addr: SocketAddr,
    /// QEMU's socket (`local`): the fabric sends here and accepts frames only from here.
    pub vm_addr: SocketAddr,
}

impl VmPort {
    /// The value of QEMU's `-netdev` option for this NIC:
    /// `dgram,id=ID,local.type=inet,local.host=127.0.0.1,local.port=VM,remote.type=inet,`
    /// `remote.host=127.0.0.1,remote.port=FABRIC` (QEMU 7.2 and later).
    pub fn netdev_arg(&self, netdev_id: &str) -> String {
        format!(
            "dgram,id={netdev_id},local.type=inet,local.host={},local.port={},\
             remote.type=inet,remote.host={},remote.port={}",
            self.vm_addr.ip(),
            self.vm_addr.port(),
            self.fabric_addr.ip(),
            self.fabric_addr.port()
        )
    }

    /// The value of QEMU's `-device` option for this NIC, e.g. `model` = `virtio-net-pci`:
    /// `virtio-net-pci,netdev=ID,mac=52:54:00:..`.
    pub fn device_arg(&self, netdev_id: &str, model: &str) -> String {
        format!("{model},netdev={netdev_id},mac={}", self.mac)
    }

    /// `["-netdev", netdev_arg, "-device", device_arg]`, ready for `Command::args`.
    pub fn qemu_args(&self, netdev_id: &str, model: &str) -> [String; 4] {
        [
            "-netdev".to_owned(),
            self.netdev_arg(netdev_id),
            "-device".to_owned(),
            self.device_arg(netdev_id, model),
        ]
    }
}

/// Frames a port dropped in one direction, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// The port was down.
    pub down: u64,
    /// The loss generator took them.
    pub loss: u64,
    /// An EtherType filter matched.
    pub filter: u64,
}

/// A port's counters since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames the device (or the bypass relay) handed to the port.
    pub rx_frames: u64,
    /// Bytes in them.
    pub rx_bytes: u64,
    /// Frames the port handed to the device (or the bypass relay).
    pub tx_frames: u64,
    /// Bytes in them.
    pub tx_bytes: u64,
    /// Frames dropped on their way in.
    pub ingress_dropped: DropCounters,
    /// Frames dropped on their way out.
    pub egress_dropped: DropCounters,
    /// Frames the port handed to its bypass relay (counted in `tx_frames` too).
    pub bypassed: u64,
    /// Frames the device sent while its bypass relay was closed (the box is cut off).
    pub dropped_while_bypassed: u64,
    /// Frames dropped after crossing [`MAX_BYPASS_HOPS`] relays (a loop).
    pub dropped_loop: u64,
    /// Frames that entered while the port was in no segment.
    pub unconnected: u64,
    /// Frames queued on the delay timer.
    pub delayed: u64,
    /// Datagrams from an address other than the VM's (dropped).
    pub rx_foreign: u64,
    /// Datagrams too short to be a frame (dropped).
    pub rx_invalid: u64,
    /// Sends to the VM's socket that failed.
    pub tx_errors: u64,
    /// Pcap writes that failed (the capture stops at the first one).
    pub pcap_errors: u64,
}

#[derive(Default)]
struct AtomicDrops {
    down: AtomicU64,
    loss: AtomicU64,
    filter: AtomicU64,
}

impl AtomicDrops {
    fn snapshot(&self) -> DropCounters {
        DropCounters {
            down: self.down.load(Ordering::Relaxed),
            loss: self.loss.load(Ordering::Relaxed),
            filter: self.filter.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    dropped: [AtomicDrops; 2],
    bypassed: AtomicU64,
    dropped_while_bypassed: AtomicU64,
    dropped_loop: AtomicU64,
    unconnected: AtomicU64,
    delayed: AtomicU64,
    rx_foreign: AtomicU64,
    rx_invalid: AtomicU64,
    tx_errors: AtomicU64,
    pcap_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, amount: usize) {
    counter.fetch_add(amount as u64, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> PortCounters {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PortCounters {
            rx_frames: load(&self.rx_frames),
            rx_bytes: load(&self.rx_bytes),
            tx_frames: load(&self.tx_frames),
            tx_bytes: load(&self.tx_bytes),
            ingress_dropped: self.dropped[INGRESS].snapshot(),
            egress_dropped: self.dropped[EGRESS].snapshot(),
            bypassed: load(&self.bypassed),
            dropped_while_bypassed: load(&self.dropped_while_bypassed),
            dropped_loop: load(&self.dropped_loop),
            unconnected: load(&self.unconnected),
            delayed: load(&self.delayed),
            rx_foreign: load(&self.rx_foreign),
            rx_invalid: load(&self.rx_invalid),
            tx_errors: load(&self.tx_errors),
            pcap_errors: load(&self.pcap_errors),
        }
    }
}

enum PortKind {
    Vm {
        socket: UdpSocket,
        vm_addr: SocketAddr,
        mac: MacAddress,
    },
    Internal {
        endpoint: Box<dyn Endpoint>,
    },
}

struct Port {
    id: PortId,
    name: String,
    kind: PortKind,
    up: AtomicBool,
    /// Loss in parts per million, by direction.
    loss_ppm: [AtomicU32; 2],
    /// Delay in nanoseconds, by direction.
    delay_ns: [AtomicU64; 2],
    /// EtherTypes dropped both ways; `filtering` says whether the list is non-empty.
    filters: RwLock<Vec<u16>>,
    filtering: AtomicBool,
    rng: SharedRng,
    pcap: Mutex<Option<PcapWriter<BufWriter<File>>>>,
    capturing: AtomicBool,
    counters: Counters,
}

impl Port {
    fn new(id: PortId, name: &str, kind: PortKind, seed: u64) -> Port {
        Port {
            id,
            name: name.to_owned(),
            kind,
            up: AtomicBool::new(true),
            loss_ppm: Default::default(),
            delay_ns: Default::default(),
            filters: RwLock::new(Vec::new()),
            filtering: AtomicBool::new(false),
            rng: SharedRng::new(mix(seed ^ mix(u64::from(id.0)))),
            pcap: Mutex::new(None),
            capturing: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    /// Applies up/down, filters and loss for one direction; counts what it drops.
    fn admit(&self, direction: usize, frame: &[u8]) -> bool {
        let drops = &self.counters.dropped[direction];
        if !self.up.load(Ordering::Relaxed) {
            bump(&drops.down);
            return false;
        }
        if self.filtering.load(Ordering::Relaxed) && self.filtered(frame) {
            bump(&drops.filter);
            return false;
        }
        if self
            .rng
            .chance_ppm(self.loss_ppm[direction].load(Ordering::Relaxed))
        {
            bump(&drops.loss);
            return false;
        }
        true
    }

    fn filtered(&self, frame: &[u8]) -> bool {
        let filters = self.filters.read().unwrap_or_else(PoisonError::into_inner);
        ether_types(frame).any(|ether_type| filters.contains(&ether_type))
    }

    fn capture(&self, frame: &[u8]) {
        if !self.capturing.load(Ordering::Relaxed) {
            return;
        }
        let mut pcap = lock(&self.pcap);
        if let Some(writer) = pcap.as_mut()
            && writer
                .write_frame(clock::wall_ns(clock::now_ns()), frame)
                .is_err()
        {
            *pcap = None;
            self.capturing.store(false, Ordering::Relaxed);
            bump(&self.counters.pcap_errors);
        }
    }
}

/// The EtherType of a frame, and the inner one of a VLAN-tagged (802.1Q or 802.1ad) frame.
fn ether_types(frame: &[u8]) -> impl Iterator<Item = u16> {
    let field = |offset: usize| {
        frame
            .get(offset..offset + 2)
            .map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
    };
    let outer = field(12);
    let inner = match outer {
        Some(0x8100 | 0x88a8) => field(16),
        _ => None,
    };
    outer.into_iter().chain(inner)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ports and how they connect. Replaced whole (copy on write) when it changes, so the
/// forwarding path holds a snapshot without any lock.
#[derive(Clone, Default)]
struct Topology {
    ports: Vec<Arc<Port>>,
    /// For each port, the members of its segment (itself included).
    segments: Vec<Option<Arc<[PortId]>>>,
    /// For each port, the other port of its closed bypass relay.
    bypass: Vec<Option<PortId>>,
}

impl Topology {
    fn port(&self, id: PortId) -> Result<&Arc<Port>> {
        self.ports.get(id.index()).ok_or(Error::UnknownPort(id))
    }
}

enum Action {
    /// The frame has crossed `from`'s ingress delay: forward it into the segment.
    Forward { from: PortId },
    /// The frame has crossed `to`'s egress delay: hand it to the device.
    Deliver { to: PortId },
}

struct Job {
    due_ns: u64,
    sequence: u64,
    action: Action,
    origin: PortId,
    hops: u8,
    frame: Vec<u8>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.sequence) == (other.due_ns, other.sequence)
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    /// Reversed, so that `BinaryHeap` pops the earliest job first (FIFO among equals).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due_ns, other.sequence).cmp(&(self.due_ns, self.sequence))
    }
}

#[derive(Default)]
struct TimerQueue {
    jobs: BinaryHeap<Job>,
    next_sequence: u64,
}

pub(crate) struct Shared {
    config: FabricConfig,
    topology: RwLock<Arc<Topology>>,
    timer: Mutex<TimerQueue>,
    timer_wake: Condvar,
    stopped: AtomicBool,
    reserved_vm_ports: Mutex<HashSet<u16>>,
}

impl Shared {
    fn snapshot(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the topology with `change` applied to a copy of it.
    fn modify<R>(&self, change: impl FnOnce(&mut Topology) -> Result<R>) -> Result<R> {
        let mut current = self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Topology::clone(&current);
        let result = change(&mut next)?;
        *current = Arc::new(next);
        Ok(result)
    }

    fn with_port<R>(&self, id: PortId, action: impl FnOnce(&Port) -> R) -> Result<R> {
        Ok(action(self.snapshot().port(id)?))
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn inject(&self, id: PortId, frame: &[u8]) -> Result {
        if !(MIN_FRAME_LENGTH..=MAX_FRAME_LENGTH).contains(&frame.len()) {
            return Err(Error::FrameLength(frame.len()));
        }
        if self.is_stopped() {
            return Err(Error::Stopped);
        }
        let topology = self.snapshot();
        let port = topology.port(id)?;
        self.receive(&topology, port, frame, false, 0);
        Ok(())
    }

    /// A frame arrives at `port` from its device (or from the bypass relay).
    fn receive(&self, topology: &Topology, port: &Port, frame: &[u8], from_relay: bool, hops: u8) {
        let counters = &port.counters;
        bump(&counters.rx_frames);
        add(&counters.rx_bytes, frame.len());
        port.capture(frame);
        if !from_relay && topology.bypass[port.id.index()].is_some() {
            bump(&counters.dropped_while_bypassed);
            return;
        }
        if !port.admit(INGRESS, frame) {
            return;
        }
        let delay = port.delay_ns[INGRESS].load(Ordering::Relaxed);
        if delay > 0 {
            bump(&counters.delayed);
            let action = Action::Forward { from: port.id };
            self.schedule(delay, action, port.id, hops, frame);
            return;
        }
        self.forward(topology, port.id, port.id, frame, hops);
    }

    /// Sends a frame that entered at `from` to every other port of `from`'s segment.
    fn forward(&self, topology: &Topology, from: PortId, origin: PortId, frame: &[u8], hops: u8) {
        let Some(members) = &topology.segments[from.index()] else {
            bump(&topology.ports[from.index()].counters.unconnected);
            return;
        };
        for &to in members.iter().filter(|&&member| member != from) {
            self.transmit(topology, &topology.ports[to.index()], origin, frame, hops);
        }
    }

    /// A frame leaves the fabric through `port`: egress impairments, then delivery.
    fn transmit(&self, topology: &Topology, port: &Port, origin: PortId, frame: &[u8], hops: u8) {
        if !port.admit(EGRESS, frame) {
            return;
        }
        let delay = port.delay_ns[EGRESS].load(Ordering::Relaxed);
        if delay > 0 {
            bump(&port.counters.delayed);
            self.schedule(delay, Action::Deliver { to: port.id }, origin, hops, frame);
            return;
        }
        self.deliver(topology, port, origin, frame, hops);
    }

    fn deliver(&self, topology: &Topology, port: &Port, origin: PortId, frame: &[u8], hops: u8) {
        let counters = &port.counters;
        bump(&counters.tx_frames);
        add(&counters.tx_bytes, frame.len());
        port.capture(frame);
        if let Some(peer) = topology.bypass[port.id.index()] {
            bump(&counters.bypassed);
            if hops >= MAX_BYPASS_HOPS {
                bump(&counters.dropped_loop);
                return;
            }
            let peer = &topology.ports[peer.index()];
            self.receive(topology, peer, frame, true, hops + 1);
            return;
        }
        match &port.kind {
            PortKind::Vm {
                socket, vm_addr, ..
            } => {
                if socket.send_to(frame, vm_addr).is_err() {
                    bump(&counters.tx_errors);
                }
            }
            PortKind::Internal { endpoint } => endpoint.deliver(&Delivery {
                frame,
                port: port.id,
                origin,
                time_ns: clock::now_ns(),
            }),
        }
    }

    fn schedule(&self, delay_ns: u64, action: Action, origin: PortId, hops: u8, frame: &[u8]) {
        let due_ns = clock::now_ns().saturating_add(delay_ns);
        let mut queue = lock(&self.timer);
        let sequence = queue.next_sequence;
        queue.next_sequence = sequence.wrapping_add(1);
        let earliest = queue.jobs.peek().is_none_or(|first| due_ns < first.due_ns);
        queue.jobs.push(Job {
            due_ns,
            sequence,
            action,
            origin,
            hops,
            frame: frame.to_vec(),
        });
        drop(queue);
        if earliest {
            self.timer_wake.notify_one();
        }
    }

    /// The delay timer: runs due jobs in order, sleeps until the next one.
    fn run_timer(&self) {
        let mut due = Vec::new();
        let mut queue = lock(&self.timer);
        while !self.is_stopped() {
            let now = clock::now_ns();
            while queue.jobs.peek().is_some_and(|job| job.due_ns <= now) {
                due.extend(queue.jobs.pop());
            }
            if !due.is_empty() {
                drop(queue);
                let topology = self.snapshot();
                for job in due.drain(..) {
                    self.run_job(&topology, job);
                }
                queue = lock(&self.timer);
                continue;
            }
            let wait = queue.jobs.peek().map_or(self.config.poll_interval, |job| {
                Duration::from_nanos(job.due_ns.saturating_sub(now))
            });
            queue = self
                .timer_wake
                .wait_timeout(queue, wait.min(self.config.poll_interval))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn run_job(&self, topology: &Topology, job: Job) {
        match job.action {
            Action::Forward { from } => {
                self.forward(topology, from, job.origin, &job.frame, job.hops);
            }
            Action::Deliver { to } => {
                let port = &topology.ports[to.index()];
                self.deliver(topology, port, job.origin, &job.frame, job.hops);
            }
        }
    }

    /// A VM port's receive thread.
    fn run_receiver(&self, port: &Port) {
        let PortKind::Vm {
            socket, vm_addr, ..
        } = &port.kind
        else {
            return;
        };
        let mut buffer = vec![0u8; 65_536];
        while !self.is_stopped() {
            let (length, sender) = match socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error) if is_timeout(&error) => continue,
                Err(_) => {
                    bump(&port.counters.rx_invalid);
                    continue;
                }
            };
            if self.is_stopped() {
                break;
            }
            if sender != *vm_addr {
                bump(&port.counters.rx_foreign);
                continue;
            }
            if length < MIN_FRAME_LENGTH {
                bump(&port.counters.rx_invalid);
                continue;
            }
            let topology = self.snapshot();
            self.receive(&topology, port, &buffer[..length], false, 0);
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The lab's network fabric. Shared between threads by reference (`&Fabric`, or in an
/// `Arc`); every method takes `&self`. Dropping it stops and joins its threads.
pub struct Fabric {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Fabric {
    /// A fabric with the default settings (loss seed 1).
    pub fn new() -> Result<Fabric> {
        Fabric::with_config(FabricConfig::default())
    }

    /// A fabric with these settings; starts the delay timer thread.
    pub fn with_config(config: FabricConfig) -> Result<Fabric> {
        let shared = Arc::new(Shared {
            config,
            topology: RwLock::new(Arc::new(Topology::default())),
            timer: Mutex::new(TimerQueue::default()),
            timer_wake: Condvar::new(),
            stopped: AtomicBool::new(false),
            reserved_vm_ports: Mutex::new(HashSet::new()),
        });
        let timer_shared = Arc::clone(&shared);
        let timer = thread::Builder::new()
            .name("fabric-timer".to_owned())
            .spawn(move || timer_shared.run_timer())?;
        Ok(Fabric {
            shared,
            threads: Mutex::new(vec![timer]),
        })
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Adds a port for a VM NIC with MAC `mac`. The fabric binds its own socket on
    /// 127.0.0.1 and picks a free port for QEMU's side; see [`VmPort::netdev_arg`].
    ///
    /// Picking QEMU's port is a race in principle (the port is free when picked, another
    /// program might take it before QEMU binds it); QEMU then fails with "Address already
    /// in use" and the lab may retry with a new port. The fabric never hands out the same
    /// port twice and only accepts datagrams sent from the VM's address.
    pub fn add_vm_port(&self, name: &str, mac: MacAddress) -> Result<VmPort> {
        let vm_port = self.reserve_vm_port()?;
        self.add_vm_port_at(name, mac, vm_port)
    }

    /// Like [`Fabric::add_vm_port`], with QEMU's port chosen by the caller.
    pub fn add_vm_port_at(&self, name: &str, mac: MacAddress, vm_port: u16) -> Result<VmPort> {
        if vm_port == 0 {
            return Err(Error::InvalidArgument("VM port 0"));
        }
        lock(&self.shared.reserved_vm_ports).insert(vm_port);
        let config = &self.shared.config;
        let socket = socket::bind_loopback(0, config.socket_buffer_bytes, config.poll_interval)?;
        let fabric_addr = socket.local_addr()?;
        let vm_addr = socket::loopback(vm_port);
        let kind = PortKind::Vm {
            socket,
            vm_addr,
            mac,
        };
        let port = self.add_port(name, kind)?;
        let shared = Arc::clone(&self.shared);
        let receiver = Arc::clone(&port);
        let thread = thread::Builder::new()
            .name(format!("fabric-{name}"))
            .spawn(move || shared.run_receiver(&receiver))?;
        lock(&self.threads).push(thread);
        Ok(VmPort {
            id: port.id,
            name: name.to_owned(),
            mac,
            fabric_addr,
            vm_addr,
        })
    }

    /// Like [`Fabric::add_vm_port`], but the fabric also opens QEMU's socket (bound on
    /// 127.0.0.1 with [`FabricConfig::vm_socket_buffer_bytes`], connected to the fabric's
    /// socket) and returns it, to be passed to QEMU by descriptor: no port race, and large
    /// buffers on both sides. See [`VmSocket`].
    pub fn add_vm_port_with_socket(
        &self,
        name: &str,
        mac: MacAddress,
    ) -> Result<(VmPort, VmSocket)> {
        let config = &self.shared.config;
        let vm_socket =
            socket::bind_loopback(0, config.vm_socket_buffer_bytes, config.poll_interval)?;
        let port = self.add_vm_port_at(name, mac, vm_socket.local_addr()?.port())?;
        vm_socket.connect(port.fabric_addr)?;
        Ok((port, VmSocket::new(vm_socket)))
    }

    fn reserve_vm_port(&self) -> Result<u16> {
        for _ in 0..64 {
            let probe = socket::bind_loopback(0, 0, self.shared.config.poll_interval)?;
            let port = probe.local_addr()?.port();
            drop(probe);
            if lock(&self.shared.reserved_vm_ports).insert(port) {
                return Ok(port);
            }
        }
        Err(Error::Io(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free UDP port for a VM NIC",
        )))
    }

    /// Adds an internal port: frames sent to it go to `endpoint`, frames from it come from
    /// [`Fabric::inject`] (a [`crate::Source`], a test).
    pub fn add_internal_port(&self, name: &str, endpoint: impl Endpoint) -> Result<PortId> {
        let kind = PortKind::Internal {
            endpoint: Box::new(endpoint),
        };
        Ok(self.add_port(name, kind)?.id)
    }

    fn add_port(&self, name: &str, kind: PortKind) -> Result<Arc<Port>> {
        if self.shared.is_stopped() {
            return Err(Error::Stopped);
        }
        let seed = self.shared.config.seed;
        self.shared.modify(|topology| {
            if topology.ports.iter().any(|port| port.name == name) {
                return Err(Error::DuplicateName(name.to_owned()));
            }
            let index = u32::try_from(topology.ports.len())
                .map_err(|_| Error::InvalidArgument("too many ports"))?;
            let port = Arc::new(Port::new(PortId(index), name, kind, seed));
            topology.ports.push(Arc::clone(&port));
            topology.segments.push(None);
            topology.bypass.push(None);
            Ok(port)
        })
    }

    /// Sends `frame` into the fabric as if the device at `port` had sent it (ingress
    /// impairments apply). Runs the forwarding on the caller's thread.
    pub fn inject(&self, port: PortId, frame: &[u8]) -> Result {
        self.shared.inject(port, frame)
    }

    /// Connects two ports with a point-to-point wire (a two-port segment).
    pub fn wire(&self, a: PortId, b: PortId) -> Result {
        self.hub(&[a, b])
    }

    /// Joins ports into a hub: a frame entering at one leaves at every other one, never
    /// at its own. Every port must exist, be named once and be in no segment yet.
    pub fn hub(&self, ports: &[PortId]) -> Result {
        if ports.len() < 2 {
            return Err(Error::InvalidArgument("a segment needs two ports or more"));
        }
        let members: Arc<[PortId]> = Arc::from(ports);
        self.shared.modify(|topology| {
            for (position, &id) in ports.iter().enumerate() {
                topology.port(id)?;
                if ports[..position].contains(&id) {
                    return Err(Error::InvalidArgument("a port named twice in a segment"));
                }
                if topology.segments[id.index()].is_some() {
                    return Err(Error::PortInUse(id));
                }
                if let Some(peer) = topology.bypass[id.index()]
                    && ports.contains(&peer)
                {
                    return Err(Error::BypassLoop);
                }
            }
            for &id in ports {
                topology.segments[id.index()] = Some(Arc::clone(&members));
            }
            Ok(())
        })
    }

    /// Takes a port out of its segment; the other members stay joined, or, if only one is
    /// left, it is in no segment either. No-op for a port in no segment.
    pub fn detach(&self, port: PortId) -> Result {
        self.shared.modify(|topology| {
            topology.port(port)?;
            let Some(members) = topology.segments[port.index()].take() else {
                return Ok(());
            };
            let rest: Arc<[PortId]> = members.iter().copied().filter(|&m| m != port).collect();
            // A port left alone is in no segment any more, free to be wired again.
            let remaining = (rest.len() >= 2).then_some(rest);
            for &member in members.iter().filter(|&&m| m != port) {
                topology.segments[member.index()] = remaining.clone();
            }
            Ok(())
        })
    }

    /// Closes (`on`) or opens the bypass relay across a box's two ports `a` and `b`.
    ///
    /// While closed, a frame the fabric sends out of `a` enters the fabric again at `b`
    /// (and the other way round), as if the box were a cable; frames the box's own NICs
    /// send on `a` or `b` are dropped (`dropped_while_bypassed`), and the box receives
    /// nothing. Impairments of both ports still apply (they model the cables).
    pub fn set_bypass(&self, a: PortId, b: PortId, on: bool) -> Result {
        if a == b {
            return Err(Error::InvalidArgument("bypass needs two different ports"));
        }
        self.shared.modify(|topology| {
            topology.port(a)?;
            topology.port(b)?;
            for (port, other) in [(a, b), (b, a)] {
                if let Some(peer) = topology.bypass[port.index()]
                    && peer != other
                {
                    return Err(Error::PortInUse(port));
                }
            }
            if on {
                if let Some(members) = &topology.segments[a.index()]
                    && members.contains(&b)
                {
                    return Err(Error::BypassLoop);
                }
                topology.bypass[a.index()] = Some(b);
                topology.bypass[b.index()] = Some(a);
            } else {
                topology.bypass[a.index()] = None;
                topology.bypass[b.index()] = None;
            }
            Ok(())
        })
    }

    /// The port across `port`'s closed bypass relay, if the relay is closed.
    pub fn bypass_peer(&self, port: PortId) -> Result<Option<PortId>> {
        let topology = self.shared.snapshot();
        topology.port(port)?;
        Ok(topology.bypass[port.index()])
    }

    /// Brings a port up or down (a cable plugged or cut): a down port drops every frame
    /// both ways.
    pub fn set_up(&self, port: PortId, up: bool) -> Result {
        self.shared
            .with_port(port, |port| port.up.store(up, Ordering::Relaxed))
    }

    /// Drops `percent` % (0 to 100, resolution 0.0001 %) of the frames crossing `port` in
    /// `direction`, chosen by the port's seeded generator.
    pub fn set_loss(&self, port: PortId, direction: Direction, percent: f64) -> Result {
        if !(0.0..=100.0).contains(&percent) {
            return Err(Error::InvalidArgument("loss percent outside 0..=100"));
        }
        let parts_per_million = (percent * 10_000.0).round() as u32;
        self.shared.with_port(port, |port| {
            for &index in direction.indices() {
                port.loss_ppm[index].store(parts_per_million, Ordering::Relaxed);
            }
        })
    }

    /// Delays frames crossing `port` in `direction` by `delay` (held in the timer's queue;
    /// frames already queued keep their time). A frame between two delayed ports gets both
    /// delays.
    pub fn set_delay(&self, port: PortId, direction: Direction, delay: Duration) -> Result {
        let nanoseconds = clock::duration_ns(delay);
        self.shared.with_port(port, |port| {
            for &index in direction.indices() {
                port.delay_ns[index].store(nanoseconds, Ordering::Relaxed);
            }
        })
    }

    /// Drops (`drop` true) or lets through again frames of `ether_type` crossing `port`
    /// either way; the inner EtherType of a VLAN-tagged frame counts too. With the
    /// heartbeat EtherType this cuts heartbeats only: a heartbeat-only partition.
    pub fn set_filter(&self, port: PortId, ether_type: u16, drop: bool) -> Result {
        self.shared.with_port(port, |port| {
            let mut filters = port.filters.write().unwrap_or_else(PoisonError::into_inner);
            filters.retain(|&filtered| filtered != ether_type);
            if drop {
                filters.push(ether_type);
            }
            port.filtering.store(!filters.is_empty(), Ordering::Relaxed);
        })
    }

    /// Starts writing every frame crossing `port` to a new pcap file at `path` (replacing
    /// any capture running on the port). Frames are written as the device sees them: what
    /// it sent, before ingress impairments, and what it got, after egress impairments.
    pub fn start_pcap(&self, port: PortId, path: impl AsRef<Path>) -> Result {
        let file = BufWriter::new(File::create(path)?);
        let writer = PcapWriter::new(file)?;
        self.shared.with_port(port, |port| {
            *lock(&port.pcap) = Some(writer);
            port.capturing.store(true, Ordering::Relaxed);
        })
    }

    /// Stops the capture on `port`, flushing and closing its file. No-op without one.
    pub fn stop_pcap(&self, port: PortId) -> Result {
        let writer = self.shared.with_port(port, |port| {
            port.capturing.store(false, Ordering::Relaxed);
            lock(&port.pcap).take()
        })?;
        if let Some(mut writer) = writer {
            writer.flush()?;
        }
        Ok(())
    }

    /// The port's counters.
    pub fn counters(&self, port: PortId) -> Result<PortCounters> {
        self.shared.with_port(port, |port| port.counters.snapshot())
    }

    /// The port's name.
    pub fn port_name(&self, port: PortId) -> Result<String> {
        self.shared.with_port(port, |port| port.name.clone())
    }

    /// The port with this name.
    pub fn port_by_name(&self, name: &str) -> Option<PortId> {
        let topology = self.shared.snapshot();
        let port = topology.ports.iter().find(|port| port.name == name)?;
        Some(port.id)
    }

    /// All ports, in order of creation.
    pub fn ports(&self) -> Vec<PortId> {
        let topology = self.shared.snapshot();
        topology.ports.iter().map(|port| port.id).collect()
    }

    /// What QEMU needs to connect to a VM port.
    pub fn vm_port(&self, port: PortId) -> Result<VmPort> {
        let topology = self.shared.snapshot();
        let port = topology.port(port)?;
        match &port.kind {
            PortKind::Vm {
                socket,
                vm_addr,
                mac,
            } => Ok(VmPort {
                id: port.id,
                name: port.name.clone(),
                mac: *mac,
                fabric_addr: socket.local_addr()?,
                vm_addr: *vm_addr,
            }),
            PortKind::Internal { .. } => Err(Error::WrongPortKind(port.id)),
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        {
            let _queue = lock(&self.shared.timer);
            self.shared.timer_wake.notify_all();
        }
        // Wake each receive thread with a datagram to itself; the read timeout is the
        // fallback.
        for port in &self.shared.snapshot().ports {
            if let PortKind::Vm { socket, .. } = &port.kind
                && let Ok(address) = socket.local_addr()
            {
                let _ = socket.send_to(&[0], address);
            }
        }
        for thread in lock(&self.threads).drain(..) {
            let _ = thread.join();
        }
        for port in &self.shared.snapshot().ports {
            if let Some(mut writer) = lock(&port.pcap).take() {
                let _ = writer.flush();
            }
        }
    }
}

impl fmt::Debug for Fabric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = self.shared.snapshot();
        f.debug_struct("Fabric")
            .field("ports", &topology.ports.len())
            .field("stopped", &self.shared.is_stopped())
            .finish()
    }
}
