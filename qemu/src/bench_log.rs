//! `cargo lab bench log`: the replicated state log in the appliance, against the paper's
//! figures (WD200 5400 rpm disk: `log_async` stalls about 1 ms and a flush takes about
//! 3 ms, both at the 90th percentile).
//!
//! # Method
//!
//! A parallel pair boots with a 64 MiB virtio-blk disk per box (`cache=none`, raw image
//! written out in full, see [`crate::vm::create_disk`]). Once the Master (the log's
//! primary) reports its peer attached and in sync, two runs of the guest's own benchmark
//! (`log bench COUNT SIZE RATE`, measured in the guest with the TSC) run on it:
//!
//! - **paced**: `--records` records (default 2000) of `--size` bytes (default 64) at
//!   `--rate` records per second (default 1000). It gives the `log_async` stall (the time
//!   one call takes: a copy into the log's ring or the staging queue), the commit time
//!   (from the start of a commit's first device write to the completion of its flush;
//!   the I/O is asynchronous), the flush alone, the time from `log_async` until the record
//!   is on the Master's disk, until the peer holds it (acknowledged), and until it is on
//!   the peer's disk, and the main-loop passes of the log service (the stall the log puts
//!   on the loop). Completions are seen at the main loop's next wake-up (every 250 us
//!   while idle), which the latencies include.
//! - **flood**: `--flood` records (default 20000; 0 skips it) as fast as the log takes
//!   them; records per second from the first `log_async` until the last record is on both
//!   disks.
//!
//! `--single` runs one standalone appliance instead (no peer: nothing is replicated).
//! The pair runs with 2 ms heartbeats unless `--hb-us` says otherwise: under emulation on
//! a shared 2-core machine, 1 ms heartbeats make the pair change roles now and then, and a
//! role change ends a run (the benchmark then starts it again on the new Master, up to
//! eight times). All figures depend on the host's load: the two VMs and their QEMU I/O
//! threads share two cores, and a flush is the host's `fdatasync`.

use std::time::Duration;

use serde_json::Value;

use crate::pair::{Pair, PairConfig};
use crate::vm::{Vm, VmConfig};
use crate::{Result, image, lab_error};

/// Disk size per box.
const DISK_MIB: u32 = 64;
/// Runs on the pair started again after a role change ended one.
const MAX_ATTEMPTS: u32 = 8;
/// How long one `log bench` may take.
const BENCH_TIMEOUT: Duration = Duration::from_secs(180);

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct LogBenchOptions {
    /// Records of the paced run.
    pub records: u32,
    /// Payload bytes per record.
    pub size: u32,
    /// Records per second of the paced run.
    pub rate: u32,
    /// Records of the flood run (0: none).
    pub flood: u32,
    /// One standalone box instead of a pair.
    pub single: bool,
    /// Heartbeat interval of the pair in microseconds.
    pub heartbeat_us: u32,
    /// Print the JSON line last.
    pub json: bool,
}

impl Default for LogBenchOptions {
    fn default() -> Self {
        LogBenchOptions {
            records: 2000,
            size: 64,
            rate: 1000,
            flood: 20_000,
            single: false,
            heartbeat_us: 2000,
            json: false,
        }
    }
}

/// Runs `log bench` on `vm` and returns its JSON result.
pub fn run_guest_bench(vm: &mut Vm, records: u32, size: u32, rate: u32) -> Result<Value> {
    let answer = vm.command(
        &format!("log bench {records} {size} {rate}"),
        Duration::from_secs(20),
    )?;
    if answer.contains(duplex_mgmt::markers::ERROR) {
        return Err(lab_error!("log bench refused: {answer}"));
    }
    vm.wait_for("LOG BENCH ", BENCH_TIMEOUT)?;
    // The marker may arrive before the rest of its line: wait for the line's end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = vm.console_text();
        let start = text
            .rfind("LOG BENCH ")
            .ok_or_else(|| lab_error!("the LOG BENCH line vanished"))?;
        if let Some(end) = text[start..].find('\n') {
            break text[start..start + end].to_string();
        }
        if std::time::Instant::now() >= deadline {
            return Err(lab_error!("the LOG BENCH line never ended"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let json = line
        .split_once("LOG BENCH ")
        .map(|(_, json)| json.trim())
        .ok_or_else(|| lab_error!("no JSON in '{line}'"))?;
    let value: Value = serde_json::from_str(json)
        .map_err(|e| lab_error!("bad JSON from the guest: {e}: {json}"))?;
    if let Some(why) = value.get("aborted") {
        return Err(lab_error!("log bench aborted: {why}"));
    }
    Ok(value)
}

/// `show log --json` of `vm`.
pub fn show_log(vm: &mut Vm) -> Result<Value> {
    let out = vm.command("show log --json", Duration::from_secs(20))?;
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| lab_error!("no JSON from show log: {out}"))?;
    serde_json::from_str(line).map_err(|e| lab_error!("bad JSON from show log: {e}: {line}"))
}

/// Waits until `vm`'s log has its peer attached and in sync.
pub fn wait_peer_in_sync(vm: &mut Vm, timeout: Duration) -> Result<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let status = show_log(vm)?;
        if status["peer_attached"] == Value::Bool(true)
            && status["peer_in_sync"] == Value::Bool(true)
        {
            return Ok(status);
        }
        if std::time::Instant::now() >= deadline {
            return Err(lab_error!(
                "the log's peer is not attached and in sync after {timeout:?}: {status}"
            ));
        }
        // Not more often: a long console answer holds the guest's main loop for
        // milliseconds.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Both runs on the box that is Master, once its peer is in sync.
fn bench_on_master(
    pair: &mut Pair,
    options: &LogBenchOptions,
) -> Result<(usize, Value, Option<Value>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let master = loop {
        if let Some(master) = pair.master()? {
            break master;
        }
        if std::time::Instant::now() >= deadline {
            return Err(lab_error!("no single Master"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let vm = pair.vm(master)?;
    wait_peer_in_sync(vm, Duration::from_secs(30))?;
    eprintln!(
        "[lab] paced run: {} records of {} bytes at {}/s on {} (Master, primary)...",
        options.records,
        options.size,
        options.rate,
        crate::pair::NAMES[master]
    );
    let paced = run_guest_bench(vm, options.records, options.size, options.rate)?;
    let flood = if options.flood > 0 {
        eprintln!(
            "[lab] flood run: {} records as fast as possible...",
            options.flood
        );
        Some(run_guest_bench(vm, options.flood, options.size, 0)?)
    } else {
        None
    };
    Ok((master, paced, flood))
}

fn figure(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// Runs the benchmark and prints the table (and the JSON line).
pub fn run(options: &LogBenchOptions) -> Result {
    let (paced, flood, peer) = if options.single {
        let kernel = image::build()?;
        let disks = crate::vm::DiskDirectory::new("bench-log")?;
        let disk = disks.create("single", DISK_MIB)?;
        let mut config = VmConfig::new("log", &kernel).cmdline("mode=standalone");
        config.extra_args.extend(crate::vm::disk_args(&disk, "d0"));
        let mut vm = Vm::launch(&config)?;
        vm.wait_ready(Duration::from_secs(60))?;
        let paced = run_guest_bench(&mut vm, options.records, options.size, options.rate)?;
        let flood = if options.flood > 0 {
            Some(run_guest_bench(&mut vm, options.flood, options.size, 0)?)
        } else {
            None
        };
        (paced, flood, false)
    } else {
        eprintln!(
            "[lab] booting a parallel pair ({} us heartbeats) with a {DISK_MIB} MiB disk per box...",
            options.heartbeat_us
        );
        let mut pair = Pair::start(PairConfig {
            disk_mib: Some(DISK_MIB),
            heartbeat_us: options.heartbeat_us,
            ..PairConfig::default()
        })?;
        // A role change ends a run (the pair is emulated on a shared machine): try again
        // on whichever box is Master then.
        let mut attempts = 0;
        let (master, paced, flood) = loop {
            attempts += 1;
            match bench_on_master(&mut pair, options) {
                Ok(result) => break result,
                Err(e) if attempts < MAX_ATTEMPTS => eprintln!("[lab] {e}; again"),
                Err(e) => return Err(e),
            }
        };
        let vm = pair.vm(master)?;
        let loop_gaps = vm
            .command("stats", Duration::from_secs(10))?
            .lines()
            .find(|l| l.starts_with("loop_gaps"))
            .map(str::to_string);
        if let Some(gaps) = loop_gaps {
            eprintln!("[lab] {} {gaps}", crate::pair::NAMES[master]);
        }
        (paced, flood, true)
    };
    print_table(options, &paced, flood.as_ref(), peer);
    if options.json {
        let records_per_s = flood
            .as_ref()
            .and_then(|f| figure(f, "records_per_s"))
            .or_else(|| figure(&paced, "records_per_s"));
        let json = serde_json::json!({
            "stall_us_p50": figure(&paced, "stall_us_p50"),
            "stall_us_p90": figure(&paced, "stall_us_p90"),
            "stall_us_p99": figure(&paced, "stall_us_p99"),
            "flush_us_p90": figure(&paced, "flush_us_p90"),
            "replicate_us_p90": figure(&paced, "replicate_us_p90"),
            "records_per_s": records_per_s,
            "commit_us_p90": figure(&paced, "commit_us_p90"),
            "peer_durable_us_p90": figure(&paced, "peer_durable_us_p90"),
            "loop_stall_us_max": figure(&paced, "loop_stall_us_max"),
            "peer": peer,
        });
        println!("{json}");
    }
    Ok(())
}

fn print_table(options: &LogBenchOptions, paced: &Value, flood: Option<&Value>, peer: bool) {
    println!(
        "replicated state log, TCG, virtio-blk cache=none; paced run: {} records of {} bytes at {}/s{}",
        figure(paced, "records").unwrap_or(0.0),
        options.size,
        options.rate,
        if peer {
            ", replicated to the peer"
        } else {
            ", no peer"
        }
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9}   paper (WD200 5400 rpm)",
        "", "p50 us", "p90 us", "p99 us"
    );
    let rows: [(&str, &str, &str); 7] = [
        ("log_async stall", "stall_us", "~1000 at p90 (goal: < 20)"),
        ("commit: device writes + flush", "commit_us", ""),
        ("flush alone", "flush_us", "~3000 at p90 (goal: < 2000)"),
        ("log_async -> on the local disk", "durable_us", ""),
        ("log_async -> held by the peer", "replicate_us", "-"),
        ("log_async -> on the peer's disk", "peer_durable_us", "-"),
        ("main-loop pass of the log (stall)", "loop_stall_us", "-"),
    ];
    for (name, key, paper) in rows {
        println!(
            "{:<44} {:>9} {:>9} {:>9}   {paper}",
            name,
            cell(figure(paced, &format!("{key}_p50"))),
            cell(figure(paced, &format!("{key}_p90"))),
            cell(figure(paced, &format!("{key}_p99"))),
        );
    }
    println!(
        "longest log_async {} us; longest main-loop pass of the log {} us; {} commits, {} flushes",
        cell(figure(paced, "stall_us_max")),
        cell(figure(paced, "loop_stall_us_max")),
        figure(paced, "commits").unwrap_or(0.0),
        figure(paced, "flushes").unwrap_or(0.0)
    );
    if let Some(flood) = flood {
        println!(
            "flood: {} records of {} bytes: {:.0} records/s (until on {} disk{}), commit p90 {} us, ring full {} times, longest log pass {} us",
            figure(flood, "records").unwrap_or(0.0),
            options.size,
            figure(flood, "records_per_s").unwrap_or(0.0),
            if peer { "both" } else { "the" },
            if peer { "s" } else { "" },
            cell(figure(flood, "commit_us_p90")),
            figure(flood, "ring_full").unwrap_or(0.0),
            cell(figure(flood, "loop_stall_us_max")),
        );
    }
}

/// `cargo lab bench log [--records N] [--size B] [--rate R] [--flood N] [--hb-us N]
/// [--single] [--json]`.
pub fn command(words: Vec<String>) -> Result {
    let mut options = LogBenchOptions::default();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let mut number = |name: &str| -> Result<u32> {
            let value = words
                .next()
                .ok_or_else(|| lab_error!("{name} needs a value"))?;
            value
                .parse()
                .map_err(|_| lab_error!("{name}: '{value}' is not a valid number"))
        };
        match word.as_str() {
            "--records" => options.records = number("--records")?.max(1),
            "--size" => options.size = number("--size")?,
            "--rate" => options.rate = number("--rate")?,
            "--flood" => options.flood = number("--flood")?,
            "--hb-us" => options.heartbeat_us = number("--hb-us")?.max(250),
            "--single" => options.single = true,
            "--json" => options.json = true,
            other => {
                return Err(lab_error!(
                    "unknown argument '{other}' (see `cargo lab help`)"
                ));
            }
        }
    }
    run(&options)
}
