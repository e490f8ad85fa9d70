//! `duplex-lab` (run as `cargo lab <command>`): the Duplex lab's command line.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use duplex_lab::appliance::NicModel;
use duplex_lab::pair::{NAMES, Pair, PairConfig, PairMode};
use duplex_lab::stats::{median, percentile};
use duplex_lab::vm::{Accel, Firmware, Vm, VmConfig};
use duplex_lab::{Result, image, lab_error};

const USAGE: &str = "\
usage: cargo lab <command> [options]

commands:
  build                         build the appliance image and print its path
  iso [--cmdline STR] [--out PATH]
                                build a GRUB hybrid ISO (CD, USB stick, UEFI) of the image
  boot [--cmdline STR] [--kvm] [--memory MIB] [--firmware qboot|seabios]
                                boot one appliance and attach this terminal to its
                                serial console (Ctrl-C ends)
  bench boot [--runs N] [--json] [--firmware qboot|seabios]
                                boot N times (default 10); median and p90 time from QEMU
                                launch to the ready marker, and the image size
  bench forward [--nic virtio|e1000] [--size 64|512|1500|1518] [--rounds N] [--trial-ms N]
                [--max-p50-ms N] [--max-p99-ms N] [--rate FPS] [--cmdline STR] [--json]
                                one appliance between source and sink: highest rate with
                                loss < 0.1 % (median of N rounds, default 3), Mbit/s, latency
                                at half that rate, and the fabric's own ceiling and the ratio
  bench log [--records N] [--size B] [--rate R] [--flood N] [--hb-us N] [--single] [--json]
                                the replicated state log on a pair with a disk per box:
                                log_async stall, commit and flush, replication latency
                                p50/p90/p99 (paced run, default 2000 x 64 B at 1000/s) and
                                records/s (flood run, default 20000), beside the paper
  sim [--seeds N] [--paths P] [--json]
                                the pair simulator: detection time p50/p99 against heartbeat
                                interval and loss, false fail-overs per hour, dual-Master time
  pair [--mode parallel|serial] [--nic virtio|e1000] [--hb-us N] [--bypass-ms N]
                                boot a pair and take fault commands on stdin:
                                kill A, freeze A, thaw A, cut A.lan, mend A.lan, partition [PATH],
                                heal [PATH], restart A, failover, traffic MBPS SECONDS,
                                console A show duplex (any console command), status, quit
                                (serial: source - A - B - sink, a bypass card per box)
  bench failover --mode parallel|serial [--fault kill|freeze] [--rates 0,2,5,...] [--size N]
                 [--runs K] [--hb-us N] [--bypass-ms N] [--json] [--svg PATH]
                                fault the Master under traffic at each rate (default: kill in
                                parallel mode, freeze in serial mode, where the bypass card's
                                watchdog must act); fail-over time and lost frames at the sink,
                                beside the paper's table; SVG plot
  demo [--mode parallel|serial] [--nic virtio|e1000] [--rate MBPS] [--size BYTES]
                                boot a pair, run traffic, kill the Master, print the
                                fail-over time and lost frames, restart the dead box and show
                                it rejoin as Slave
  help                          this text

QEMU runs with TCG (software emulation) unless --kvm is given.
";

/// Command-line words after the command, with typed look-ups.
struct Args {
    words: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.words.len();
        self.words.retain(|w| w != name);
        before != self.words.len()
    }

    fn value(&mut self, name: &str) -> Result<Option<String>> {
        let Some(i) = self.words.iter().position(|w| w == name) else {
            return Ok(None);
        };
        if i + 1 >= self.words.len() {
            return Err(lab_error!("{name} needs a value"));
        }
        let value = self.words.remove(i + 1);
        self.words.remove(i);
        Ok(Some(value))
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T> {
        match self.value(name)? {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| lab_error!("{name}: '{v}' is not a valid number")),
        }
    }

    fn firmware(&mut self) -> Result<Firmware> {
        match self.value("--firmware")? {
            None => Ok(Firmware::default()),
            Some(v) => Firmware::parse(&v)
                .ok_or_else(|| lab_error!("--firmware: '{v}' is not qboot or seabios")),
        }
    }

    fn finish(self) -> Result {
        match self.words.first() {
            None => Ok(()),
            Some(w) => Err(lab_error!("unknown argument '{w}' (see `cargo lab help`)")),
        }
    }
}

fn main() -> ExitCode {
    let mut words: Vec<String> = std::env::args().skip(1).collect();
    if words.is_empty() {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    }
    let command = words.remove(0);
    let args = Args { words };
    let result = match command.as_str() {
        "build" => cmd_build(args),
        "boot" => cmd_boot(args),
        "iso" => cmd_iso(args),
        "bench" => cmd_bench(args),
        "sim" => cmd_sim(args),
        "demo" => cmd_demo(args),
        "pair" => cmd_pair(args),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(lab_error!(
            "unknown command '{other}' (see `cargo lab help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn nic_option(args: &mut Args) -> Result<NicModel> {
    match args.value("--nic")? {
        None => Ok(NicModel::Virtio),
        Some(v) => {
            NicModel::parse(&v).ok_or_else(|| lab_error!("--nic: '{v}' is not virtio or e1000"))
        }
    }
}

fn mode_option(args: &mut Args) -> Result<PairMode> {
    match args.value("--mode")? {
        None => Ok(PairMode::Parallel),
        Some(word) => PairMode::parse(&word)
            .ok_or_else(|| lab_error!("--mode: '{word}' is not parallel or serial")),
    }
}

/// How the bench and the demo fault the Master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// QEMU killed: power loss (a serial box's card closes its relay at once).
    Kill,
    /// QMP `stop`: a hung box (a serial box's card closes its relay when its own
    /// watchdog runs out).
    Freeze,
}

fn fault_option(args: &mut Args, mode: PairMode) -> Result<Fault> {
    match args.value("--fault")?.as_deref() {
        None if mode == PairMode::Serial => Ok(Fault::Freeze),
        None | Some("kill") => Ok(Fault::Kill),
        Some("freeze") => Ok(Fault::Freeze),
        Some(other) => Err(lab_error!("--fault: '{other}' is not kill or freeze")),
    }
}

/// Starts a pair for the `pair`, `demo` and `bench failover` commands.
fn start_pair(mode: PairMode, nic: NicModel, heartbeat_us: u32, bypass_ms: u32) -> Result<Pair> {
    eprintln!(
        "[lab] booting a {} pair ({} NICs, {heartbeat_us} us heartbeats{})...",
        mode.name(),
        nic.name(),
        if mode == PairMode::Serial {
            format!(", bypass cards with a {bypass_ms} ms watchdog")
        } else {
            String::new()
        }
    );
    Pair::start(PairConfig {
        mode,
        nic,
        heartbeat_us,
        bypass_ms,
        ..PairConfig::default()
    })
}

fn cmd_pair(mut args: Args) -> Result {
    let mode = mode_option(&mut args)?;
    let nic = nic_option(&mut args)?;
    let heartbeat_us = args.number("--hb-us", PairConfig::default().heartbeat_us)?;
    let bypass_ms = args.number("--bypass-ms", PairConfig::default().bypass_ms)?;
    args.finish()?;
    let mut pair = start_pair(mode, nic, heartbeat_us, bypass_ms)?;
    let mut traffic: Option<duplex_fabric::Source> = None;
    let print_states = |pair: &mut Pair| {
        let mut line = String::new();
        for (index, name) in NAMES.iter().enumerate() {
            let state = pair.state(index).unwrap_or_else(|e| format!("? ({e})"));
            line.push_str(&format!("{name}: {state:<12} "));
            if let Ok(card) = pair.card_status(index) {
                line.push_str(&format!(
                    "(relay {}{}) ",
                    if card.relay { "closed" } else { "open" },
                    if card.fired { ", card fired" } else { "" }
                ));
            }
        }
        println!("{line}sink: {} frames", pair.sink.received());
    };
    print_states(&mut pair);
    println!(
        "commands: kill|freeze|thaw|restart A|B, cut|mend A.lan, partition|heal [lan|wan|link], failover, traffic MBPS SECONDS, console A|B COMMAND, status, quit"
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("lab> ");
        let _ = std::io::stdout().flush();
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let result: Result = match words.as_slice() {
            [] => Ok(()),
            ["quit" | "exit"] => break,
            ["status"] => Ok(()),
            ["kill", b] => Pair::index_of(b).and_then(|i| pair.kill(i).map(|_| ())),
            ["freeze", b] => Pair::index_of(b).and_then(|i| pair.freeze(i).map(|_| ())),
            ["thaw", b] => Pair::index_of(b).and_then(|i| pair.thaw(i).map(|_| ())),
            ["restart", b] => Pair::index_of(b).and_then(|i| pair.restart(i)),
            ["console", b, command @ ..] if !command.is_empty() => Pair::index_of(b)
                .and_then(|i| pair.vm(i))
                .and_then(|vm| vm.command(&command.join(" "), Duration::from_secs(10)))
                .map(|out| println!("{out}")),
            ["cut", p] => pair.set_port(p, false).map(|_| ()),
            ["mend", p] => pair.set_port(p, true).map(|_| ()),
            ["partition"] => pair.partition(None, true),
            ["partition", p] => pair.partition(Some(p), true),
            ["heal"] => pair.partition(None, false),
            ["heal", p] => pair.partition(Some(p), false),
            ["failover"] => match pair.master() {
                Ok(Some(m)) => pair
                    .vm(m)
                    .and_then(|vm| vm.command("failover", Duration::from_secs(10)))
                    .map(|out| println!("{out}")),
                Ok(None) => Err(lab_error!("no single Master to hand over from")),
                Err(e) => Err(e),
            },
            ["traffic", mbps, seconds] => match (mbps.parse::<f64>(), seconds.parse::<u64>()) {
                (Ok(m), Ok(s)) => pair
                    .start_traffic(m, 512, Duration::from_secs(s))
                    .map(|src| {
                        traffic = Some(src);
                    }),
                _ => Err(lab_error!("usage: traffic MBPS SECONDS")),
            },
            _ => Err(lab_error!("unknown command '{}'", line.trim())),
        };
        if let Err(e) = result {
            println!("error: {e}");
        }
        std::thread::sleep(Duration::from_millis(200));
        print_states(&mut pair);
    }
    drop(traffic);
    Ok(())
}

fn cmd_demo(mut args: Args) -> Result {
    let mode = mode_option(&mut args)?;
    let nic = nic_option(&mut args)?;
    let rate = args.number("--rate", 10.0f64)?;
    let size = args.number("--size", 512usize)?;
    args.finish()?;
    let started = Instant::now();
    let step = |what: &str| eprintln!("[demo {:5.1} s] {what}", started.elapsed().as_secs_f64());
    step(&format!(
        "booting a {} pair ({} NICs): A then B",
        mode.name(),
        nic.name()
    ));
    let defaults = PairConfig::default();
    let mut pair = start_pair(mode, nic, defaults.heartbeat_us, defaults.bypass_ms)?;
    step(&format!("A is {}, B is {}", pair.state(0)?, pair.state(1)?));
    let traffic = Duration::from_secs(6);
    step(&format!(
        "traffic: {rate} Mbit/s of {size}-byte frames from the LAN source to the WAN sink for {} s",
        traffic.as_secs()
    ));
    let source = pair.start_traffic(rate, size, traffic)?;
    std::thread::sleep(Duration::from_secs(2));
    // Under host load the pair may be between states for a moment: wait for one Master.
    let master = pair.wait_master()?;
    let standby = 1 - master;
    step(&format!(
        "killing the Master, {} (QEMU killed: power loss)",
        NAMES[master]
    ));
    let fault = pair.kill(master)?;
    pair.wait_state(standby, "Master")?;
    step(&format!(
        "{} is Master now; waiting for the traffic to end",
        NAMES[standby]
    ));
    let source_report = source.wait()?;
    pair.sink
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(5));
    let m = pair.measure(&source_report, fault, master, standby)?;
    println!();
    match mode {
        PairMode::Parallel => println!(
            "fail-over: {:.2} ms from the last frame forwarded by {} to the first forwarded by {}",
            m.failover_ms, NAMES[master], NAMES[standby]
        ),
        PairMode::Serial => println!(
            "fail-over: {:.2} ms of silence at the sink: {}'s card closed its relay (power loss) and {} carries the traffic",
            m.failover_ms, NAMES[master], NAMES[standby]
        ),
    }
    println!(
        "lost frames: {} of {} sent ({:.3} %), duplicated: {}",
        m.lost,
        m.sent,
        100.0 * m.lost as f64 / m.sent.max(1) as f64,
        m.duplicated
    );
    let budget = rate * 1e6 / (8.0 * size as f64) * m.failover_ms / 1e3;
    println!(
        "(the paper: 101 ms idle to 1287 ms at 100 Mbit/s; lost frames at this rate for this fail-over time: {budget:.0})"
    );
    println!();
    if std::env::var_os("DUPLEX_DEMO_VERBOSE").is_some() {
        for (index, name) in NAMES.iter().enumerate() {
            if let Ok(vm) = pair.vm(index) {
                for line in vm
                    .console_text()
                    .lines()
                    .filter(|l| l.starts_with("duplex:"))
                {
                    eprintln!("  {name}: {line}");
                }
                if let Ok(stats) = vm.command("stats", Duration::from_secs(5)) {
                    for line in stats.lines().filter(|l| l.starts_with("loop_gaps")) {
                        eprintln!("  {name}: {line}");
                    }
                }
            }
        }
    }
    step(&format!("restarting {}", NAMES[master]));
    pair.restart(master)?;
    pair.wait_state(master, "Slave")?;
    pair.wait_in_path(master)?;
    step(&format!(
        "{} rejoined as {}{}; {} stays {}",
        NAMES[master],
        pair.state(master)?,
        if mode == PairMode::Serial {
            " (its relay open again: traffic goes through it)"
        } else {
            ""
        },
        NAMES[standby],
        pair.state(standby)?
    ));
    step("done");
    Ok(())
}

fn cmd_sim(mut args: Args) -> Result {
    let seeds = args.number("--seeds", 200u32)?.max(1);
    let paths = args.number("--paths", 1usize)?.clamp(1, 4);
    let json = args.flag("--json");
    args.finish()?;
    let config = duplex_core::sim::BenchConfig {
        seeds,
        paths,
        ..Default::default()
    };
    eprintln!(
        "[lab] simulating {} nodes, {paths} heartbeat path(s), {seeds} seeds per row (virtual time)...",
        config.nodes
    );
    let started = Instant::now();
    let rows = duplex_core::sim::benchmark(&config);
    print!("{}", duplex_core::sim::render_table(&rows));
    println!(
        "({} rows in {:.1} s of host time)",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if json {
        println!("{}", duplex_core::sim::render_json(&rows));
    }
    Ok(())
}

fn cmd_build(args: Args) -> Result {
    args.finish()?;
    let path = image::build()?;
    let sizes = image::sizes(&path)?;
    println!(
        "{} ({} bytes loaded, {} bytes on disk)",
        path.display(),
        sizes.loaded,
        sizes.file
    );
    Ok(())
}

fn cmd_iso(mut args: Args) -> Result {
    let cmdline = args.value("--cmdline")?.unwrap_or_default();
    let out = args
        .value("--out")?
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| image::target_dir().join("duplex.iso"));
    args.finish()?;
    let kernel = image::build()?;
    image::grub_iso(&kernel, &cmdline, &out)?;
    println!(
        "{} (write it to a USB stick with dd, or boot it with -cdrom)",
        out.display()
    );
    Ok(())
}

fn cmd_boot(mut args: Args) -> Result {
    let cmdline = args.value("--cmdline")?.unwrap_or_default();
    let kvm = args.flag("--kvm");
    let memory = args.number("--memory", 128u32)?;
    let firmware = args.firmware()?;
    args.finish()?;
    let kernel = image::build()?;
    let mut config = VmConfig::new("boot", &kernel).cmdline(&cmdline);
    config.memory_mib = memory;
    config.firmware = firmware;
    config.lifetime = Duration::from_secs(24 * 3600);
    if kvm {
        config.accel = Accel::Kvm;
    }
    let mut vm = Vm::launch(&config)?;
    eprintln!("[lab] QEMU started; console attached. Ctrl-C ends the session.");

    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive {
        Some(RawTerminal::enter())
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut offset = 0;
    let mut stdout = std::io::stdout();
    loop {
        let (bytes, next, closed) = vm.read_from(offset, Duration::from_millis(20));
        offset = next;
        let _ = stdout.write_all(&bytes);
        let _ = stdout.flush();
        while let Ok(input) = rx.try_recv() {
            if input.contains(&0x03) {
                eprint!("\r\n[lab] Ctrl-C: stopping the appliance.\r\n");
                return Ok(());
            }
            let text = String::from_utf8_lossy(&input).replace('\n', "\r");
            vm.send(&text)?;
        }
        if closed || !vm.is_running() {
            let code = vm.wait_exit(Duration::from_secs(5))?;
            eprint!("\r\n[lab] QEMU exited with {code:?}\r\n");
            return Ok(());
        }
    }
}

/// Puts the terminal in raw mode (bytes straight through, no local echo) and restores it
/// on drop.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> RawTerminal {
        let _ = std::process::Command::new("stty")
            .args(["raw", "-echo"])
            .stdin(std::process::Stdio::inherit())
            .status();
        RawTerminal
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = std::process::Command::new("stty")
            .arg("sane")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
}

fn cmd_bench(mut args: Args) -> Result {
    if args.words.is_empty() {
        return Err(lab_error!("bench needs a benchmark name: boot, forward"));
    }
    let which = args.words.remove(0);
    match which.as_str() {
        "boot" => bench_boot(args),
        "failover" => bench_failover(args),
        "forward" => duplex_lab::bench_forward::command(std::mem::take(&mut args.words)),
        "log" => duplex_lab::bench_log::command(std::mem::take(&mut args.words)),
        other => Err(lab_error!(
            "unknown benchmark '{other}' (known: boot, forward)"
        )),
    }
}

fn bench_boot(mut args: Args) -> Result {
    let runs = args.number("--runs", 10usize)?.max(1);
    let json = args.flag("--json");
    let firmware = args.firmware()?;
    args.finish()?;
    let kernel = image::build()?;
    let sizes = image::sizes(&kernel)?;
    let mut config = VmConfig::new("bench-boot", &kernel);
    config.firmware = firmware;
    let mut to_banner = Vec::new();
    let mut to_ready = Vec::new();
    for run in 0..runs {
        let vm = Vm::launch(&config)?;
        let launched = vm.launched();
        vm.wait_for(duplex_mgmt::markers::BANNER, Duration::from_secs(30))?;
        let banner = Instant::now();
        vm.wait_ready(Duration::from_secs(30))?;
        let ready = Instant::now();
        let first_ms = (banner - launched).as_secs_f64() * 1e3;
        let ready_ms = (ready - launched).as_secs_f64() * 1e3;
        if !json {
            println!(
                "run {:>2}: first console line {first_ms:7.1} ms, ready {ready_ms:7.1} ms",
                run + 1
            );
        }
        to_banner.push(first_ms);
        to_ready.push(ready_ms);
    }
    let median_ms = median(&to_ready).unwrap_or(0.0);
    let p90_ms = percentile(&to_ready, 90.0).unwrap_or(0.0);
    let banner_ms = median(&to_banner).unwrap_or(0.0);
    println!(
        "boot to ready over {runs} runs (TCG, {firmware:?}): median {median_ms:.1} ms, p90 {p90_ms:.1} ms (goal: median < 100 ms)"
    );
    println!(
        "  of which QEMU + firmware + loader to first console line: median {banner_ms:.1} ms ({:.0} % of the total); appliance init: {:.1} ms",
        100.0 * banner_ms / median_ms.max(1e-9),
        median_ms - banner_ms
    );
    println!(
        "  image: {} bytes loaded ({} bytes ELF with symbols)",
        sizes.loaded, sizes.file
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "median_ms": round1(median_ms),
                "p90_ms": round1(p90_ms),
                "image_bytes": sizes.loaded,
                "firmware_median_ms": round1(banner_ms),
                "runs": runs,
            })
        );
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The paper's table (Duplex slides, "Performance: Fail-over and packet loss"):
/// (Mbit/s, parallel fail-over ms, serial fail-over ms, parallel lost, serial lost).
const PAPER: &[(f64, f64, f64, u64, u64)] = &[
    (0.0, 101.0, 106.0, 0, 0),
    (2.0, 129.0, 126.0, 58, 1594),
    (5.0, 159.0, 160.0, 189, 3721),
    (10.0, 231.0, 220.0, 514, 7246),
    (20.0, 346.0, 247.0, 1632, 13899),
    (30.0, 457.0, 460.0, 3370, 17424),
    (40.0, 588.0, 591.0, 6270, 28511),
    (50.0, 717.0, 713.0, 8705, 29477),
    (60.0, 833.0, 836.0, 12239, 36385),
    (70.0, 952.0, 955.0, 26365, 42221),
    (80.0, 1073.0, 1089.0, 32494, 48579),
    (90.0, 1174.0, 1197.0, 51225, 58902),
    (100.0, 1287.0, 1267.0, 68705, 73728),
];

fn bench_failover(mut args: Args) -> Result {
    let mode = mode_option(&mut args)?;
    let fault_kind = fault_option(&mut args, mode)?;
    let rates: Vec<f64> = match args.value("--rates")? {
        None => PAPER.iter().map(|r| r.0).collect(),
        Some(list) => list
            .split(',')
            .map(|r| {
                r.trim()
                    .parse::<f64>()
                    .map_err(|_| lab_error!("--rates: '{r}' is not a number"))
            })
            .collect::<Result<_>>()?,
    };
    let size = args.number("--size", 512usize)?;
    let runs = args.number("--runs", 1usize)?.max(1);
    let heartbeat_us = args.number("--hb-us", PairConfig::default().heartbeat_us)?;
    let bypass_ms = args.number("--bypass-ms", PairConfig::default().bypass_ms)?;
    let nic = nic_option(&mut args)?;
    let json = args.flag("--json");
    let svg = args
        .value("--svg")?
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| image::target_dir().join(format!("failover-{}.svg", mode.name())));
    args.finish()?;
    eprintln!("[lab] {size}-byte frames, {runs} run(s) per rate, fault: {fault_kind:?}");
    let mut pair = start_pair(mode, nic, heartbeat_us, bypass_ms)?;
    let mut rows = Vec::new();
    for &rate in &rates {
        let mut times = Vec::new();
        let mut losses = Vec::new();
        let mut duplicates = 0;
        let mut failures = 0;
        while times.len() < runs {
            match failover_run(&mut pair, rate, size, fault_kind) {
                Ok(m) => {
                    eprintln!(
                        "[lab] {rate:>5} Mbit/s: fail-over {:7.2} ms, lost {:>6}, duplicated {}",
                        m.failover_ms, m.lost, m.duplicated
                    );
                    times.push(m.failover_ms);
                    losses.push(m.lost as f64);
                    duplicates += m.duplicated;
                }
                // A run the host spoiled (the pair between states at the fault, a box
                // that did not come back) is said and run again, at most twice per rate.
                Err(e) if failures < 2 => {
                    failures += 1;
                    eprintln!("[lab] {rate:>5} Mbit/s: run failed, again: {e}");
                    recover_pair(&mut pair)?;
                }
                Err(e) => return Err(e),
            }
        }
        rows.push((
            rate,
            median(&times).unwrap_or(0.0),
            median(&losses).unwrap_or(0.0),
            duplicates,
        ));
    }
    println!(
        "mode {}, fault {fault_kind:?}, {size}-byte frames, {} NICs, heartbeat {heartbeat_us} us{}, median of {runs} run(s)",
        mode.name(),
        nic.name(),
        if mode == PairMode::Serial {
            format!(", bypass card watchdog {bypass_ms} ms")
        } else {
            String::new()
        }
    );
    println!(
        "{:>9}  {:>14} {:>10}  {:>16} {:>12}  {:>10}",
        "Mbit/s", "fail-over ms", "lost", "paper f/o ms", "paper lost", "f/o ratio"
    );
    let paper_of = |rate: f64| {
        PAPER
            .iter()
            .find(|p| (p.0 - rate).abs() < 1e-9)
            .map_or((f64::NAN, 0), |p| match mode {
                PairMode::Parallel => (p.1, p.3),
                PairMode::Serial => (p.2, p.4),
            })
    };
    for &(rate, ms, lost, _) in &rows {
        let (pms, plost) = paper_of(rate);
        println!(
            "{rate:>9.0}  {ms:>14.2} {lost:>10.0}  {pms:>16.0} {plost:>12}  {:>9.1}x",
            pms / ms.max(1e-9)
        );
    }
    write_svg(&svg, mode, &rows)?;
    println!("plot: {}", svg.display());
    if json {
        let rows_json: Vec<serde_json::Value> = rows
            .iter()
            .map(|&(rate, ms, lost, duplicated)| serde_json::json!({"rate_mbps": rate, "failover_ms": (ms * 100.0).round() / 100.0, "lost": lost as u64, "duplicated": duplicated}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"mode": mode.name(), "fault": format!("{fault_kind:?}").to_lowercase(), "size": size, "runs": runs, "heartbeat_us": heartbeat_us, "rows": rows_json})
        );
    }
    Ok(())
}

/// One fault under traffic: start traffic, fault the Master after a second, wait for the
/// other box to be Master, measure at the sink, and bring the faulted box back.
fn failover_run(
    pair: &mut Pair,
    rate: f64,
    size: usize,
    fault_kind: Fault,
) -> Result<duplex_lab::pair::FailoverMeasurement> {
    pair.sink.reset();
    let source = pair.start_traffic(rate, size, Duration::from_millis(2500))?;
    std::thread::sleep(Duration::from_millis(1000));
    let master = pair.wait_master()?;
    let standby = 1 - master;
    let fault = match fault_kind {
        Fault::Kill => pair.kill(master)?,
        Fault::Freeze => pair.freeze(master)?,
    };
    let took_over = pair.wait_state(standby, "Master");
    let sent = source.wait()?;
    took_over?;
    pair.sink
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(5));
    let m = pair.measure(&sent, fault, master, standby)?;
    // A frozen box is killed (its card: power loss) and booted again.
    pair.restart(master)?;
    pair.wait_state(master, "Slave")?;
    pair.wait_in_path(master)?;
    Ok(m)
}

/// After a spoiled run: every box that is not running (or is frozen) boots again.
fn recover_pair(pair: &mut Pair) -> Result {
    for index in 0..2 {
        let usable = pair.state(index).is_ok_and(|s| s != "down");
        if !usable {
            pair.restart(index)?;
        }
    }
    pair.wait_master()?;
    pair.wait_in_path(0)?;
    pair.wait_in_path(1)
}

/// Fail-over time against rate, ours and the paper's, as an SVG line plot.
fn write_svg(path: &std::path::Path, mode: PairMode, rows: &[(f64, f64, f64, u64)]) -> Result {
    let paper_ms = |p: &(f64, f64, f64, u64, u64)| match mode {
        PairMode::Parallel => p.1,
        PairMode::Serial => p.2,
    };
    let (w, h, left, bottom) = (720.0, 420.0, 70.0, 50.0);
    let max_rate = rows.iter().map(|r| r.0).fold(100.0f64, f64::max);
    let max_ms = PAPER
        .iter()
        .map(paper_ms)
        .fold(rows.iter().map(|r| r.1).fold(0.0, f64::max), f64::max)
        .max(1.0);
    // Log scale on the time axis: ours is milliseconds, the paper's up to seconds.
    let y = |ms: f64| {
        let v = (ms.max(0.1)).log10();
        let top = max_ms.log10();
        h - bottom - (v - (-1.0)) / (top - (-1.0)) * (h - bottom - 20.0)
    };
    let x = |rate: f64| left + rate / max_rate * (w - left - 20.0);
    let line = |points: Vec<(f64, f64)>| {
        points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ours = line(rows.iter().map(|r| (r.0, r.1)).collect());
    let paper = line(PAPER.iter().map(|p| (p.0, paper_ms(p))).collect());
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="16" text-anchor="middle" font-size="14">Fail-over time against load ({} mode, log scale)</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="20" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">traffic (Mbit/s)</text>
<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">fail-over (ms)</text>
"#,
        w / 2.0,
        mode.name(),
        h - bottom,
        w - 20.0,
        h - bottom,
        h - bottom,
        (w + left) / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        if ms <= max_ms * 1.01 {
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms}</text>\n",
                left - 6.0,
                y(ms) + 4.0
            ));
        }
    }
    for rate in (0..=(max_rate as u32)).step_by(20) {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{rate}</text>\n",
            x(f64::from(rate)),
            h - bottom + 16.0
        ));
    }
    svg.push_str(&format!("<polyline fill=\"none\" stroke=\"gray\" stroke-dasharray=\"5,4\" stroke-width=\"2\" points=\"{paper}\"/>\n"));
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"blue\" stroke-width=\"2\" points=\"{ours}\"/>\n"
    ));
    svg.push_str(&format!("<text x=\"{}\" y=\"40\" fill=\"gray\">Duplex paper (2004)</text>\n<text x=\"{}\" y=\"56\" fill=\"blue\">this appliance (QEMU TCG)</text>\n</svg>\n", w - 220.0, w - 220.0));
    std::fs::write(path, svg)?;
    Ok(())
}
