//! Measures the fabric's own ceiling: the highest rate under 0.1 % loss from a source
//! through two UDP hops to a sink, for several frame sizes. In the middle sits the
//! loopback appliance (default), or with `--qemu` a real QEMU whose two `-netdev dgram`
//! NICs are joined by its own hub (`-machine none`: QEMU's network I/O without a guest);
//! `--qemu-fd` hands QEMU sockets the fabric opened (4 MiB buffers) instead of ports.
//!
//! `cargo run --release -p duplex-fabric --example ceiling -- [SIZES...] [--trial-ms N]
//! [--max-p99-ms N] [--qemu | --qemu-fd] [--verbose]`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duplex_fabric::bench::{CeilingPath, RateSearch, TrialConfig, TrialRunner, find_max_rate};
use duplex_fabric::{Discard, Fabric, LoopbackAppliance, MacAddress, Sink, VmPort};

type Failure = Box<dyn std::error::Error>;

/// What joins the two VM ports; stopped on drop.
enum Middle {
    Loopback { _appliance: LoopbackAppliance },
    Qemu(Child),
}

impl Drop for Middle {
    fn drop(&mut self) {
        if let Middle::Qemu(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Loopback,
    QemuPorts,
    QemuDescriptors,
}

/// Adds the two VM ports and starts what joins them.
fn start_middle(mode: Mode, fabric: &Fabric) -> Result<(VmPort, VmPort, Middle), Failure> {
    let (lan_mac, wan_mac) = (
        MacAddress([2, 0, 0, 0, 0xfe, 1]),
        MacAddress([2, 0, 0, 0, 0xfe, 2]),
    );
    let (lan, wan, netdevs) = if mode == Mode::QemuDescriptors {
        let (lan, lan_socket) = fabric.add_vm_port_with_socket("lan", lan_mac)?;
        let (wan, wan_socket) = fabric.add_vm_port_with_socket("wan", wan_mac)?;
        lan_socket.make_inheritable()?;
        wan_socket.make_inheritable()?;
        let netdevs = [lan_socket.netdev_arg("a"), wan_socket.netdev_arg("b")];
        // The child inherits the descriptors at spawn; keep them open until then.
        std::mem::forget((lan_socket, wan_socket));
        (lan, wan, netdevs)
    } else {
        let lan = fabric.add_vm_port("lan", lan_mac)?;
        let wan = fabric.add_vm_port("wan", wan_mac)?;
        let netdevs = [lan.netdev_arg("a"), wan.netdev_arg("b")];
        (lan, wan, netdevs)
    };
    if mode == Mode::Loopback {
        let appliance = LoopbackAppliance::start(&lan, &wan)?;
        return Ok((
            lan,
            wan,
            Middle::Loopback {
                _appliance: appliance,
            },
        ));
    }
    let child = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-machine", "none", "-display", "none"])
        .args(["-netdev", &netdevs[0], "-netdev", &netdevs[1]])
        .args(["-netdev", "hubport,id=ha,hubid=0,netdev=a"])
        .args(["-netdev", "hubport,id=hb,hubid=0,netdev=b"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((lan, wan, Middle::Qemu(child)))
}

fn main() -> Result<(), Failure> {
    let mut sizes = Vec::new();
    let mut trial = Duration::from_millis(1000);
    let mut mode = Mode::Loopback;
    let mut verbose = false;
    let mut max_p99 = None;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--trial-ms" => {
                let millis: u64 = arguments
                    .next()
                    .ok_or("--trial-ms needs a value")?
                    .parse()?;
                trial = Duration::from_millis(millis);
            }
            "--max-p99-ms" => {
                let millis: u64 = arguments
                    .next()
                    .ok_or("--max-p99-ms needs a value")?
                    .parse()?;
                max_p99 = Some(Duration::from_millis(millis));
            }
            "--qemu" => mode = Mode::QemuPorts,
            "--qemu-fd" => mode = Mode::QemuDescriptors,
            "--verbose" => verbose = true,
            size => sizes.push(size.parse::<usize>()?),
        }
    }
    if sizes.is_empty() {
        sizes = vec![64, 512, 1518];
    }
    let search = RateSearch {
        max_fps: 400_000.0,
        ..RateSearch::default()
    };
    println!(
        "middle: {}",
        match mode {
            Mode::Loopback => "loopback appliance",
            Mode::QemuPorts => "QEMU hub (-machine none), sockets by port",
            Mode::QemuDescriptors => "QEMU hub (-machine none), sockets by descriptor",
        }
    );
    println!("size   frames/s    Mbit/s   latency median/p99 (us)   trials");
    for size in sizes {
        let fabric = Fabric::new()?;
        let source_port = fabric.add_internal_port("source", Discard)?;
        let (lan, wan, _middle) = start_middle(mode, &fabric)?;
        let sink = Sink::new();
        let sink_port = fabric.add_internal_port("sink", sink.clone())?;
        fabric.wire(source_port, lan.id)?;
        fabric.wire(wan.id, sink_port)?;
        let mut config = TrialConfig::new(CeilingPath::traffic(), size);
        config.duration = trial;
        config.max_p99_latency = max_p99;
        let mut runner = TrialRunner::new(&fabric, source_port, &sink, config);
        // Wait until the middle relays (QEMU binds its sockets after it starts).
        let deadline = Instant::now() + Duration::from_secs(20);
        while runner.run(100.0)?.loss.received == 0 {
            if Instant::now() > deadline {
                return Err("the middle never relayed a frame".into());
            }
        }
        let outcome = find_max_rate(&search, |rate| {
            let result = runner.run(rate);
            if verbose && let Ok(trial) = &result {
                let latency = trial.latency.unwrap_or_default();
                eprintln!(
                    "  {size} B {rate:>8.0} fps: sent {} at {:.0} fps, lost {}, p50 {} us, p99 {} us",
                    trial.loss.sent,
                    trial.achieved_fps,
                    trial.loss.lost,
                    latency.median_ns / 1000,
                    latency.p99_ns / 1000
                );
            }
            result
        })?;
        let trials: Vec<String> = outcome
            .trials
            .iter()
            .map(|(rate, passed)| format!("{:.0}{}", rate, if *passed { "+" } else { "-" }))
            .collect();
        match outcome.best {
            Some((_, best)) => {
                let latency = best.latency.unwrap_or_default();
                println!(
                    "{size:>4} {:>10.0} {:>9.1}   {:>8.1} / {:<8.1}   {}",
                    best.achieved_fps,
                    best.delivered_mbit_per_second(),
                    latency.median_ns as f64 / 1e3,
                    latency.p99_ns as f64 / 1e3,
                    trials.join(" ")
                );
            }
            None => println!("{size:>4}  no rate passed: {}", trials.join(" ")),
        }
    }
    Ok(())
}
