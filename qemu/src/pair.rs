//! Two appliances as a Duplex pair on the lab's fabric, with fault injection.
//!
//! Parallel topology: `source - [LAN hub] - A.lan, B.lan` and `A.wan, B.wan - [WAN hub] -
//! sink`, plus a dedicated heartbeat wire `A.link - B.link`. The source sends numbered UDP
//! frames to the sink's MAC; the sink records which box's WAN port each frame came
//! from, so a fail-over shows as a switch of origin (`Transition`).
//!
//! Serial topology: `source - A.lan | A.wan - B.lan | B.wan - sink` (wires), the same
//! dedicated link, and a bypass card per box (`crate::bypass_card`, the VM's COM2) whose
//! relay shorts the box's lan and wan ports. Every frame reaches the sink through B.wan's
//! segment whichever way it went, so a fail-over shows as a silence of the stream
//! (`SinkReport::gap_after`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use duplex_fabric::{
    Direction, Fabric, MacAddress, PortId, Rate, Sink, SinkReport, Source, SourceConfig,
    SourceReport, TrafficSpec, clock,
};

use std::sync::Arc;

use crate::appliance::{Appliance, NicModel};
use crate::bypass_card::{BypassCard, CardConfig, CardStatus};
use crate::image;
use crate::vm::{Accel, Vm, VmConfig};
use crate::{Result, lab_error};

/// The heartbeat EtherType (filtered for `partition`).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
/// The source's MAC (on the LAN side).
pub const SOURCE_MAC: MacAddress = MacAddress([0x02, 0x53, 0x52, 0x43, 0x00, 0x01]);
/// The sink's MAC (on the WAN side).
pub const SINK_MAC: MacAddress = MacAddress([0x02, 0x53, 0x4e, 0x4b, 0x00, 0x01]);

/// How the boxes stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairMode {
    /// Side by side on hubs; the Master forwards, the Slave stands by.
    Parallel,
    /// In series, each with a bypass relay; the Master works, the Slave passes through.
    Serial,
}

impl PairMode {
    /// `parallel` or `serial` (the boot option's and the lab flag's word).
    pub fn name(self) -> &'static str {
        match self {
            PairMode::Parallel => "parallel",
            PairMode::Serial => "serial",
        }
    }

    /// Parses `parallel` or `serial`.
    pub fn parse(word: &str) -> Option<PairMode> {
        match word {
            "parallel" => Some(PairMode::Parallel),
            "serial" => Some(PairMode::Serial),
            _ => None,
        }
    }
}

/// How to build the pair.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Parallel or serial.
    pub mode: PairMode,
    /// Serial mode: the bypass cards' watchdog timeout in ms (`bypass_ms=`).
    pub bypass_ms: u32,
    /// NIC model of every NIC.
    pub nic: NicModel,
    /// Heartbeat interval in microseconds.
    pub heartbeat_us: u32,
    /// Extra boot options for both boxes.
    pub extra_cmdline: String,
    /// A dedicated heartbeat link between the boxes.
    pub dedicated_link: bool,
    /// TCG or KVM.
    pub accel: Accel,
    /// Deadline for boots and state changes.
    pub timeout: Duration,
    /// A virtio-blk disk of this many MiB per box for the state log (kept across
    /// `restart`, removed with the pair); `None`: no disk.
    pub disk_mib: Option<u32>,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            mode: PairMode::Parallel,
            bypass_ms: 10,
            nic: NicModel::Virtio,
            heartbeat_us: 1000,
            extra_cmdline: String::new(),
            dedicated_link: true,
            accel: Accel::Tcg,
            timeout: Duration::from_secs(60),
            disk_mib: None,
        }
    }
}

/// The boxes' names.
pub const NAMES: [&str; 2] = ["A", "B"];

/// One box: its VM (when running) and the fabric ports it plugs into.
pub struct Box_ {
    /// "A" or "B".
    pub name: &'static str,
    /// The VM, `None` after `kill`.
    pub appliance: Option<Appliance>,
    config: VmConfig,
    ports: Vec<duplex_fabric::VmPort>,
    /// Serial mode: the box's bypass card (it outlives the VM, as a real card outlives
    /// a reboot).
    pub card: Option<BypassCard>,
}

/// A running pair.
pub struct Pair {
    /// The fabric (shared with the bypass cards' relays).
    pub fabric: Arc<Fabric>,
    /// A and B.
    pub boxes: [Box_; 2],
    /// The traffic source's port (on the LAN hub).
    pub source_port: PortId,
    /// The sink's port (on the WAN hub).
    pub sink_port: PortId,
    /// The sink.
    pub sink: Sink,
    config: PairConfig,
    /// The boxes' disks (`PairConfig::disk_mib`), kept across restarts.
    disks: Option<crate::vm::DiskDirectory>,
}

/// A box's state as `show status --json` reports it.
pub fn state_of(vm: &mut Vm) -> Result<String> {
    let out = vm.command("show status --json", Duration::from_secs(10))?;
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| lab_error!("no JSON from {}: {out}", vm.name()))?;
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| lab_error!("bad JSON from {}: {e}: {line}", vm.name()))?;
    Ok(value["state"].as_str().unwrap_or("?").to_string())
}

impl Pair {
    /// Boots A (node 1, priority 200) and B (node 2, priority 100) and waits until one is
    /// Master and the other Slave.
    pub fn start(config: PairConfig) -> Result<Pair> {
        let mut pair = Pair::new(config)?;
        pair.boot_both()?;
        Ok(pair)
    }

    /// Builds the image, the fabric, the boxes' ports (and cards), but boots nothing:
    /// for tests that need traffic running before the boxes come up.
    pub fn new(config: PairConfig) -> Result<Pair> {
        let kernel = image::build()?;
        let fabric = Arc::new(Fabric::new()?);
        let serial = config.mode == PairMode::Serial;
        let sink = Sink::new();
        let source_port = fabric.add_internal_port("source", duplex_fabric::Discard)?;
        let sink_port = fabric.add_internal_port("sink", sink.clone())?;
        let mut nics = vec!["lan", "wan"];
        if config.dedicated_link {
            nics.push("link");
        }
        let mut boxes = Vec::new();
        let disks = match config.disk_mib {
            Some(_) => Some(crate::vm::DiskDirectory::new("pair")?),
            None => None,
        };
        for (index, name) in NAMES.iter().enumerate() {
            let node = index as u8 + 1;
            let priority = if index == 0 { 200 } else { 100 };
            // In series, A's wan faces B and B's lan faces A.
            let serial_options = if serial {
                format!(
                    " peer={} bypass_ms={}",
                    if index == 0 { "wan" } else { "lan" },
                    config.bypass_ms
                )
            } else {
                String::new()
            };
            let mut vm = VmConfig::new(name, &kernel).cmdline(&format!(
                "node={node} priority={priority} mode={}{serial_options} hb_us={} key=duplex-lab-pair-key {}",
                config.mode.name(),
                config.heartbeat_us,
                config.extra_cmdline
            ));
            vm.accel = config.accel;
            vm.lifetime = Duration::from_secs(3600);
            if let (Some(disks), Some(mib)) = (&disks, config.disk_mib) {
                let path = disks.create(name, mib)?;
                vm.extra_args.extend(crate::vm::disk_args(&path, "d0"));
            }
            let mut ports = Vec::new();
            for (nic_index, nic) in nics.iter().enumerate() {
                let port = fabric.add_vm_port(
                    &format!("{name}.{nic}"),
                    crate::appliance::nic_mac(node, nic_index as u8),
                )?;
                vm.extra_args
                    .extend(port.qemu_args(&format!("n{nic_index}"), config.nic.qemu_device()));
                ports.push(port);
            }
            let card = if serial {
                // A card without power is a wire: the relay starts closed, and the box
                // opens it once it runs.
                let mut card_config = CardConfig::new(name);
                card_config.relay_at_start = true;
                let card =
                    BypassCard::start(Arc::clone(&fabric), ports[0].id, ports[1].id, card_config)?;
                vm.extra_args.extend(card.qemu_args("bp0"));
                Some(card)
            } else {
                None
            };
            boxes.push(Box_ {
                name,
                appliance: None,
                config: vm,
                ports,
                card,
            });
        }
        if serial {
            fabric.wire(source_port, boxes[0].ports[0].id)?;
            fabric.wire(boxes[0].ports[1].id, boxes[1].ports[0].id)?;
            fabric.wire(boxes[1].ports[1].id, sink_port)?;
        } else {
            fabric.hub(&[source_port, boxes[0].ports[0].id, boxes[1].ports[0].id])?;
            fabric.hub(&[boxes[0].ports[1].id, boxes[1].ports[1].id, sink_port])?;
        }
        if config.dedicated_link {
            fabric.wire(boxes[0].ports[2].id, boxes[1].ports[2].id)?;
        }
        let [a, b]: [Box_; 2] = boxes.try_into().map_err(|_| lab_error!("two boxes"))?;
        Ok(Pair {
            fabric,
            boxes: [a, b],
            source_port,
            sink_port,
            sink,
            config,
            disks,
        })
    }

    /// Boots A, waits until it is Master, boots B, waits until it is Slave (and, in serial
    /// mode, until both relays are open).
    pub fn boot_both(&mut self) -> Result {
        // A first, so that it is the first to finish probing and becomes Master.
        self.boot(0)?;
        self.wait_state(0, "Master")?;
        self.boot(1)?;
        self.wait_state(1, "Slave")?;
        self.wait_in_path(0)?;
        self.wait_in_path(1)
    }

    /// Waits until box `index` is in the traffic's path: in serial mode, until its relay
    /// is open (a parallel box has no relay: nothing to wait for).
    pub fn wait_in_path(&mut self, index: usize) -> Result {
        match self.config.mode {
            PairMode::Serial => self.wait_relay(index, false),
            PairMode::Parallel => Ok(()),
        }
    }

    /// Boots box `index` (again) with its ports and waits for its ready marker.
    pub fn boot(&mut self, index: usize) -> Result {
        let b = &mut self.boxes[index];
        b.appliance = None;
        let vm = Vm::launch(&b.config)?;
        vm.wait_ready(self.config.timeout)?;
        b.appliance = Some(Appliance {
            vm,
            ports: b.ports.clone(),
        });
        Ok(())
    }

    /// The disk image of box `index`, when the pair has disks.
    pub fn disk_path(&self, index: usize) -> Option<std::path::PathBuf> {
        let disks = self.disks.as_ref()?;
        Some(disks.path().join(format!("{}.img", NAMES[index])))
    }

    /// The VM of box `index`.
    pub fn vm(&mut self, index: usize) -> Result<&mut Vm> {
        let name = self.boxes[index].name;
        self.boxes[index]
            .appliance
            .as_mut()
            .map(|a| &mut a.vm)
            .ok_or_else(|| lab_error!("box {name} is not running"))
    }

    /// The state of box `index` (`"down"` when not running).
    pub fn state(&mut self, index: usize) -> Result<String> {
        match self.boxes[index].appliance.as_mut() {
            None => Ok("down".to_string()),
            Some(a) => state_of(&mut a.vm),
        }
    }

    /// Waits until box `index` reports `state`.
    pub fn wait_state(&mut self, index: usize, state: &str) -> Result {
        self.wait_until(Duration::from_millis(50), |pair| {
            let now_state = pair.state(index)?;
            Ok(if now_state == state {
                Ok(())
            } else {
                Err(format!("box {} is {now_state}, not {state}", NAMES[index]))
            })
        })
    }

    /// Polls `check` every `every` until it gives a value or the pair's timeout passes;
    /// then fails with what `check` last said was missing.
    fn wait_until<T>(
        &mut self,
        every: Duration,
        mut check: impl FnMut(&mut Pair) -> Result<std::result::Result<T, String>>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.config.timeout;
        loop {
            match check(self)? {
                Ok(value) => return Ok(value),
                Err(missing) if Instant::now() >= deadline => {
                    return Err(lab_error!("{missing}, after {:?}", self.config.timeout));
                }
                Err(_) => std::thread::sleep(every),
            }
        }
    }

    /// Which box is Master, if exactly one is.
    pub fn master(&mut self) -> Result<Option<usize>> {
        Ok(single_master(&[self.state(0)?, self.state(1)?]))
    }

    /// Waits (up to the pair's timeout) until exactly one box is Master, and returns it.
    /// Under host load a pair may be between states for a moment.
    pub fn wait_master(&mut self) -> Result<usize> {
        self.wait_until(Duration::from_millis(50), |pair| {
            let states = [pair.state(0)?, pair.state(1)?];
            Ok(single_master(&states)
                .ok_or_else(|| format!("no single Master (A {}, B {})", states[0], states[1])))
        })
    }

    /// Box index by name ("A"/"B", case-insensitive).
    pub fn index_of(name: &str) -> Result<usize> {
        NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| lab_error!("no box '{name}' (A or B)"))
    }

    /// The fabric port named like "A.lan".
    pub fn port(&self, name: &str) -> Result<PortId> {
        self.fabric
            .port_by_name(name)
            .ok_or_else(|| lab_error!("no port '{name}'"))
    }

    /// `kill`: QEMU dies at once (power loss). Returns the fabric clock at the kill.
    pub fn kill(&mut self, index: usize) -> Result<u64> {
        let vm = self.vm(index)?;
        let at = clock::now_ns();
        vm.kill();
        self.boxes[index].appliance = None;
        Ok(at)
    }

    /// `freeze`: the VM stops (QMP stop): a hung box. Returns the fabric clock.
    pub fn freeze(&mut self, index: usize) -> Result<u64> {
        let vm = self.vm(index)?;
        let at = clock::now_ns();
        vm.qmp().execute("stop", None, Duration::from_secs(10))?;
        Ok(at)
    }

    /// `thaw`: the VM runs again (QMP cont).
    pub fn thaw(&mut self, index: usize) -> Result<u64> {
        let vm = self.vm(index)?;
        let at = clock::now_ns();
        vm.qmp().execute("cont", None, Duration::from_secs(10))?;
        Ok(at)
    }

    /// `cut A.lan` / `mend A.lan`: the cable of that NIC is pulled or plugged back in:
    /// the NIC's link goes down (QMP `set_link`), as the guest's driver sees it.
    pub fn set_port(&mut self, port: &str, up: bool) -> Result<u64> {
        let (name, nic) = port
            .split_once('.')
            .ok_or_else(|| lab_error!("'{port}' is not BOX.NIC, like A.lan"))?;
        let index = Self::index_of(name)?;
        let nic_index = self.boxes[index]
            .ports
            .iter()
            .position(|p| p.name == format!("{}.{nic}", NAMES[index]))
            .ok_or_else(|| lab_error!("box {name} has no NIC '{nic}'"))?;
        let vm = self.vm(index)?;
        let at = clock::now_ns();
        vm.qmp().execute(
            "set_link",
            Some(serde_json::json!({"name": format!("n{nic_index}"), "up": up})),
            Duration::from_secs(10),
        )?;
        Ok(at)
    }

    /// `partition` / `heal`: heartbeats between the boxes are dropped on every path (or
    /// only on `path`, e.g. "lan"), both ways; data still flows.
    pub fn partition(&mut self, path: Option<&str>, on: bool) -> Result {
        for port in &self.boxes[0].ports {
            let nic = port.name.split('.').nth(1).unwrap_or("");
            if path.is_none_or(|p| p == nic) {
                self.fabric.set_filter(port.id, HEARTBEAT_ETHERTYPE, on)?;
            }
        }
        Ok(())
    }

    /// `restart`: kill if running, boot again, wait for ready.
    pub fn restart(&mut self, index: usize) -> Result {
        if self.boxes[index].appliance.is_some() {
            self.kill(index)?;
        }
        self.boot(index)
    }

    /// Starts traffic from the source to the sink at `mbps` with `size`-byte frames
    /// (`mbps` = 0: a low 100 frames/s keep-alive stream, so fail-over is still visible).
    pub fn start_traffic(&self, mbps: f64, size: usize, duration: Duration) -> Result<Source> {
        let spec = TrafficSpec::new(
            SOURCE_MAC,
            SINK_MAC,
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(10, 2, 0, 1),
        );
        self.traffic(self.source_port, spec, mbps, size, duration)
    }

    /// Traffic the other way, from the sink's side to the source's (the replies of a real
    /// network: a port that only transmits sees no traffic of its own). The sink does not
    /// count it.
    pub fn start_reverse_traffic(
        &self,
        mbps: f64,
        size: usize,
        duration: Duration,
    ) -> Result<Source> {
        let spec = TrafficSpec::new(
            SINK_MAC,
            SOURCE_MAC,
            Ipv4Addr::new(10, 2, 0, 1),
            Ipv4Addr::new(10, 1, 0, 1),
        );
        self.traffic(self.sink_port, spec, mbps, size, duration)
    }

    fn traffic(
        &self,
        port: PortId,
        spec: TrafficSpec,
        mbps: f64,
        size: usize,
        duration: Duration,
    ) -> Result<Source> {
        let rate = if mbps <= 0.0 {
            Rate::FramesPerSecond(100.0)
        } else {
            Rate::BitsPerSecond(mbps * 1e6)
        };
        let mut config = SourceConfig::new(spec, rate, size);
        config.duration = Some(duration);
        Ok(Source::start(&self.fabric, port, config)?)
    }

    /// The WAN port of box `index` (where its forwarded frames enter the sink's hub).
    pub fn wan_port(&self, index: usize) -> PortId {
        self.boxes[index].ports[1].id
    }

    /// Serial mode: the bypass card of box `index`.
    pub fn card(&self, index: usize) -> Result<&BypassCard> {
        self.boxes[index]
            .card
            .as_ref()
            .ok_or_else(|| lab_error!("box {} has no bypass card (parallel mode)", NAMES[index]))
    }

    /// Serial mode: whether box `index`'s relay is closed, as its card says.
    pub fn relay_closed(&self, index: usize) -> Result<bool> {
        Ok(self.card(index)?.status().relay)
    }

    /// Serial mode: the card's state of box `index`.
    pub fn card_status(&self, index: usize) -> Result<CardStatus> {
        Ok(self.card(index)?.status())
    }

    /// Waits until box `index`'s relay is `closed` (serial mode).
    pub fn wait_relay(&mut self, index: usize, closed: bool) -> Result {
        self.wait_until(Duration::from_millis(20), |pair| {
            let now_closed = pair.relay_closed(index)?;
            Ok(if now_closed == closed {
                Ok(())
            } else {
                Err(format!(
                    "box {}'s relay is still {}",
                    NAMES[index],
                    if now_closed { "closed" } else { "open" }
                ))
            })
        })
    }

    /// Measures a fail-over caused by a fault of box `old` at `fault_ns`, after which
    /// `new` is the Master: in parallel mode the switch of origin at the sink, in
    /// serial mode the stream's silence around the fault.
    pub fn measure(
        &self,
        source: &SourceReport,
        fault_ns: u64,
        old: usize,
        new: usize,
    ) -> Result<FailoverMeasurement> {
        let report = self.sink.report();
        match self.config.mode {
            PairMode::Parallel => measure(
                &report,
                source,
                fault_ns,
                self.wan_port(old),
                self.wan_port(new),
            ),
            PairMode::Serial => measure_silence(&report, source, fault_ns),
        }
    }

    /// Drops a direction of a port's traffic with `percent` loss.
    pub fn set_loss(&self, port: &str, percent: f64) -> Result {
        Ok(self
            .fabric
            .set_loss(self.port(port)?, Direction::Both, percent)?)
    }
}

/// The index of the one box in `states` that is Master, if exactly one is.
fn single_master(states: &[String; 2]) -> Option<usize> {
    let mut masters = (0..2).filter(|&i| states[i] == "Master");
    match (masters.next(), masters.next()) {
        (Some(master), None) => Some(master),
        _ => None,
    }
}

/// What one fail-over under traffic measured at the sink.
#[derive(Debug, Clone)]
pub struct FailoverMeasurement {
    /// Last frame from the old Master to first frame from the new one.
    pub failover_ms: f64,
    /// Frames sent and not received.
    pub lost: u64,
    /// Frames received twice.
    pub duplicated: u64,
    /// Frames sent.
    pub sent: u64,
}

impl FailoverMeasurement {
    fn new(failover_ms: f64, loss: &duplex_fabric::LossStats) -> FailoverMeasurement {
        FailoverMeasurement {
            failover_ms,
            lost: loss.lost,
            duplicated: loss.duplicated,
            sent: loss.sent,
        }
    }
}

/// Reads a fail-over from the sink as the longest silence of the stream that ends after
/// `fault_ns` (and starts within a second of it): serial mode, where the frames reach the
/// sink through the same port before and after. No silence at all (none of at least the
/// sink's gap threshold, 2 ms) measures 0.
pub fn measure_silence(
    report: &SinkReport,
    source: &SourceReport,
    fault_ns: u64,
) -> Result<FailoverMeasurement> {
    let loss = report.loss_against(source);
    if report.origins.values().all(|o| o.last_ns < fault_ns) {
        return Err(lab_error!("the sink saw no frame after the fault"));
    }
    let failover_ms = report
        .gap_after(fault_ns, Duration::from_secs(1))
        .map_or(0.0, |gap| gap.duration_ns() as f64 / 1e6);
    Ok(FailoverMeasurement::new(failover_ms, &loss))
}

/// Reads a fail-over from the sink: the first change of origin after `fault_ns` from the
/// old Master's WAN port to the new one's.
pub fn measure(
    report: &SinkReport,
    source: &SourceReport,
    fault_ns: u64,
    from: PortId,
    to: PortId,
) -> Result<FailoverMeasurement> {
    let loss = report.loss_against(source);
    // The switch to the new Master after the fault (from the old one, normally; from
    // anywhere if something else forwarded in between).
    let transition = report
        .transitions
        .iter()
        .find(|t| t.first_to_ns >= fault_ns && t.from == from && t.to == to)
        .or_else(|| {
            report
                .transitions
                .iter()
                .find(|t| t.first_to_ns >= fault_ns && t.to == to)
        });
    let failover_ms = match transition {
        Some(t) => t.gap_ns() as f64 / 1e6,
        // No switch: the new Master was already the one forwarding when the fault came
        // (it had taken over before); fail-over cost nothing at the sink.
        None if report
            .origins
            .get(&to)
            .is_some_and(|o| o.last_ns >= fault_ns) =>
        {
            0.0
        }
        None => {
            return Err(lab_error!(
                "the sink saw no frame from the new Master after the fault"
            ));
        }
    };
    Ok(FailoverMeasurement::new(failover_ms, &loss))
}
