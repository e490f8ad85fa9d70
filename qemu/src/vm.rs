//! One appliance VM: a QEMU process with its console and QMP.
//!
//! The lab listens on two unix sockets and QEMU connects to them as it starts
//! (`-chardev socket,path=...` in client mode), so the console's first byte is never
//! lost and no sleep is needed. A reader thread copies the console into memory and into
//! `console.log`. Every wait has a deadline. QEMU dies with the `Vm` (drop), when its
//! lifetime runs out, and when the thread that launched it dies (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use duplex_mgmt::markers;

use crate::qmp::Qmp;
use crate::{Result, lab_error};

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software emulation: works everywhere (the default; this lab's machines need it).
    #[default]
    Tcg,
    /// Hardware virtualisation (`/dev/kvm`), for real hosts.
    Kvm,
}

/// The firmware QEMU runs before the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// qboot: a minimal firmware that boots in a few ms; the image assigns PCI BARs
    /// itself. The default when QEMU ships it.
    #[default]
    Qboot,
    /// SeaBIOS: QEMU's default BIOS (slower; assigns BARs, sets up the LPC bridge).
    SeaBios,
}

/// Where QEMU keeps qboot.
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

impl Firmware {
    /// Parses `qboot` or `seabios`.
    pub fn parse(s: &str) -> Option<Firmware> {
        match s {
            "qboot" => Some(Firmware::Qboot),
            "seabios" => Some(Firmware::SeaBios),
            _ => None,
        }
    }
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// A short name ("A", "B", "boot"), used in logs and errors.
    pub name: String,
    /// The image to boot with `-kernel`.
    pub kernel: PathBuf,
    /// The boot command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// TCG or KVM.
    pub accel: Accel,
    /// More QEMU arguments (NICs, watchdog devices, disks).
    pub extra_args: Vec<String>,
    /// QEMU is killed after this long, whatever happens.
    pub lifetime: Duration,
    /// How long to wait for QEMU to connect its sockets.
    pub connect_timeout: Duration,
    /// Boot with `-S` (paused until `cont`).
    pub start_paused: bool,
    /// The firmware.
    pub firmware: Firmware,
    /// Boot this CD image (GRUB) with SeaBIOS instead of `-kernel`.
    pub cdrom: Option<PathBuf>,
    /// `-no-reboot`: a guest reset ends QEMU (the default). Off: the guest reboots.
    pub no_reboot: bool,
}

impl VmConfig {
    /// A config with the lab's defaults: 128 MiB, TCG, 10 minutes' lifetime.
    pub fn new(name: &str, kernel: &Path) -> Self {
        VmConfig {
            name: name.to_string(),
            kernel: kernel.to_path_buf(),
            cmdline: String::new(),
            memory_mib: 128,
            accel: Accel::default(),
            extra_args: Vec::new(),
            lifetime: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(20),
            start_paused: false,
            firmware: Firmware::default(),
            cdrom: None,
            no_reboot: true,
        }
    }

    /// Sets the command line.
    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_string();
        self
    }

    /// The QEMU arguments for this config, with sockets in `dir`.
    pub fn qemu_args(&self, dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["-machine", "q35", "-nodefaults", "-display", "none", "-m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.memory_mib.to_string());
        if self.no_reboot {
            args.push("-no-reboot".into());
        }
        match self.accel {
            Accel::Tcg => args.extend(["-accel".into(), "tcg".into()]),
            Accel::Kvm => {
                args.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()])
            }
        }
        if let Some(cdrom) = &self.cdrom {
            // GRUB needs a full BIOS; the command line is in the ISO's grub.cfg.
            args.extend([
                "-cdrom".into(),
                cdrom.display().to_string(),
                "-boot".into(),
                "d".into(),
            ]);
        } else {
            if self.firmware == Firmware::Qboot && Path::new(QBOOT_ROM).exists() {
                args.extend(["-bios".into(), QBOOT_ROM.into()]);
            }
            args.extend(["-kernel".into(), self.kernel.display().to_string()]);
            if !self.cmdline.is_empty() {
                args.extend(["-append".into(), self.cmdline.clone()]);
            }
        }
        args.extend([
            "-chardev".into(),
            format!("socket,id=con0,path={}", dir.join("console.sock").display()),
            "-serial".into(),
            "chardev:con0".into(),
            "-chardev".into(),
            format!("socket,id=qmp0,path={}", dir.join("qmp.sock").display()),
            "-mon".into(),
            "chardev=qmp0,mode=control".into(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        ]);
        if self.start_paused {
            args.push("-S".into());
        }
        args.extend(self.extra_args.iter().cloned());
        // Extra arguments for debugging (e.g. `-trace e1000*`), split on spaces.
        if let Ok(extra) = std::env::var("DUPLEX_QEMU_ARGS") {
            args.extend(extra.split_ascii_whitespace().map(str::to_string));
        }
        args
    }
}

/// Creates (or replaces) a raw disk image of `mib` MiB at `path`, every byte written as
/// zero. Not sparse on purpose: with `cache=none` a write into a hole makes the host's
/// `fdatasync` commit file-system metadata too (measured here: p90 4 ms against 0.26 ms
/// into written blocks), which would show as the guest's flush latency.
pub fn create_disk(path: &Path, mib: u32) -> Result {
    let mut file =
        File::create(path).map_err(|e| lab_error!("cannot create disk {}: {e}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(())
}

/// QEMU arguments attaching the raw image `path` as a virtio-blk disk with the id `id`:
/// `cache=none` (O_DIRECT on the host; a guest FLUSH becomes `fdatasync`).
pub fn disk_args(path: &Path, id: &str) -> Vec<String> {
    vec![
        "-drive".to_string(),
        format!(
            "file={},if=none,id={id},format=raw,cache=none",
            path.display()
        ),
        "-device".to_string(),
        format!("virtio-blk-pci,drive={id}"),
    ]
}

/// A directory of disk images that outlives the VMs using it (a box keeps its disk
/// across `restart`); removed on drop unless `DUPLEX_KEEP_RUNS` is set.
#[derive(Debug)]
pub struct DiskDirectory {
    path: PathBuf,
}

impl DiskDirectory {
    /// A fresh directory under the temporary directory.
    pub fn new(name: &str) -> Result<DiskDirectory> {
        let path = run_dir(&format!("disks-{name}"))?;
        Ok(DiskDirectory { path })
    }

    /// Creates disk `name` of `mib` MiB in it and returns its path.
    pub fn create(&self, name: &str, mib: u32) -> Result<PathBuf> {
        let path = self.path.join(format!("{name}.img"));
        create_disk(&path, mib)?;
        Ok(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DiskDirectory {
    fn drop(&mut self) {
        if std::env::var_os("DUPLEX_KEEP_RUNS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The exit status QEMU reports when the guest writes the pass code to `isa-debug-exit`.
pub const EXIT_PASS: i32 = 33;
/// ... and the failure code (exceptions, panics).
pub const EXIT_FAIL: i32 = 35;

#[derive(Default)]
struct ConsoleState {
    text: Vec<u8>,
    /// Where the next wait starts looking.
    cursor: usize,
    closed: bool,
}

/// The console's shared buffer.
#[derive(Default)]
struct ConsoleShared {
    state: Mutex<ConsoleState>,
    cond: Condvar,
}

/// A running QEMU.
pub struct Vm {
    name: String,
    child: Child,
    console: Arc<ConsoleShared>,
    console_writer: UnixStream,
    qmp: Qmp,
    dir: PathBuf,
    launched: Instant,
    stop_reaper: Option<Sender<()>>,
    exit: Option<ExitStatus>,
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

fn run_dir(name: &str) -> Result<PathBuf> {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("duplex-lab-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn accept_before(
    listener: &UnixListener,
    child: &mut Child,
    deadline: Instant,
    what: &str,
    dir: &Path,
) -> Result<UnixStream> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            return Err(lab_error!(
                "QEMU exited ({status}) before connecting its {what}:\n{log}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(lab_error!("QEMU did not connect its {what} in time"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Vm {
    /// Starts QEMU and connects to its console and QMP.
    pub fn launch(config: &VmConfig) -> Result<Vm> {
        if config.cdrom.is_none() && !config.kernel.exists() {
            return Err(lab_error!(
                "image {} does not exist (build it with `cargo lab build`)",
                config.kernel.display()
            ));
        }
        let dir = run_dir(&config.name)?;
        let console_listener = UnixListener::bind(dir.join("console.sock"))?;
        let qmp_listener = UnixListener::bind(dir.join("qmp.sock"))?;
        let log = File::create(dir.join("qemu.log"))?;
        let mut command = Command::new(qemu_binary());
        command
            .args(config.qemu_args(&dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let launched = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            lab_error!(
                "cannot start {}: {e} (install it: apt-get install -y qemu-system-x86)",
                qemu_binary()
            )
        })?;
        let deadline = launched + config.connect_timeout;
        let console_stream =
            accept_before(&console_listener, &mut child, deadline, "console", &dir)?;
        let qmp_stream = accept_before(&qmp_listener, &mut child, deadline, "QMP socket", &dir)?;

        let console: Arc<ConsoleShared> = Arc::default();
        let console_in = Arc::clone(&console);
        let mut reader = console_stream.try_clone()?;
        let mut log = File::create(dir.join("console.log"))?;
        std::thread::Builder::new()
            .name(format!("console-{}", config.name))
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let _ = log.write_all(&buf[..n]);
                    let mut state = console_in.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.text.extend_from_slice(&buf[..n]);
                    console_in.cond.notify_all();
                }
                console_in
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .closed = true;
                console_in.cond.notify_all();
            })?;

        // The reaper kills QEMU when its lifetime is over.
        let (stop_reaper, stop) = channel::<()>();
        let pid = child.id() as libc::pid_t;
        let lifetime = config.lifetime;
        std::thread::Builder::new()
            .name(format!("reaper-{}", config.name))
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(lifetime)
                {
                    // SAFETY: kill(2) on our own child's pid; at worst the process is gone.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            })?;

        let qmp = Qmp::new(qmp_stream, config.connect_timeout)?;
        Ok(Vm {
            name: config.name.clone(),
            child,
            console,
            console_writer: console_stream,
            qmp,
            dir,
            launched,
            stop_reaper: Some(stop_reaper),
            exit: None,
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When QEMU was started.
    pub fn launched(&self) -> Instant {
        self.launched
    }

    /// The directory with its sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The QMP session.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// Everything the console printed so far.
    pub fn console_text(&self) -> String {
        let state = self.console.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&state.text).into_owned()
    }

    fn tail(&self, bytes: usize) -> String {
        let text = self.console_text();
        let start = text.len().saturating_sub(bytes);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Waits up to `timeout` for console bytes beyond `offset` and returns them with the
    /// new offset; the flag is true once the console has closed.
    pub fn read_from(&self, offset: usize, timeout: Duration) -> (Vec<u8>, usize, bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.console.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.text.len() > offset || state.closed {
                let bytes = state
                    .text
                    .get(offset..)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                return (bytes, state.text.len(), state.closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return (Vec::new(), offset, false);
            }
            state = self
                .console
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Skips all output so far: later waits only see what comes next.
    pub fn mark(&self) {
        let mut state = self.console.state.lock().unwrap_or_else(|e| e.into_inner());
        state.cursor = state.text.len();
    }

    /// Waits until the console prints `needle` (after the last wait's match) and returns
    /// the whole line it is on. The next wait starts after that line.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let needle_bytes = needle.as_bytes();
        let mut state = self.console.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let cursor = state.cursor;
            let found = find(&state.text[cursor..], needle_bytes).filter(|&pos| {
                // Only a whole line (the rest of the marker's line may still be on its
                // way), except for the prompt, which ends without one.
                needle == markers::PROMPT
                    || state.text[cursor + pos..].contains(&b'\n')
                    || state.closed
            });
            if let Some(pos) = found {
                let at = cursor + pos;
                let line_start = state.text[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                let line_end = state.text[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(state.text.len(), |p| at + p);
                let line = String::from_utf8_lossy(&state.text[line_start..line_end])
                    .trim_end()
                    .to_string();
                state.cursor = (at + needle_bytes.len()).max(line_end.min(state.text.len()));
                return Ok(line);
            }
            if state.closed {
                drop(state);
                return Err(lab_error!(
                    "VM {}: console closed before '{needle}' appeared; last output:\n{}",
                    self.name,
                    self.tail(2000)
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(lab_error!(
                    "VM {}: '{needle}' did not appear within {timeout:?}; last output:\n{}",
                    self.name,
                    self.tail(2000)
                ));
            }
            state = self
                .console
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the ready marker and the first prompt after it; returns the marker's
    /// line. After this, [`Vm::command`] pairs each command with its own prompt.
    pub fn wait_ready(&self, timeout: Duration) -> Result<String> {
        let line = self.wait_for(markers::READY, timeout)?;
        self.wait_for(markers::PROMPT, timeout)?;
        Ok(line)
    }

    /// Types `text` on the console as it is.
    pub fn send(&mut self, text: &str) -> Result {
        self.console_writer
            .write_all(text.as_bytes())
            .map_err(|e| lab_error!("VM {}: cannot write to the console: {e}", self.name))
    }

    /// Runs one console command and returns its output (the lines between the echoed
    /// command and the next prompt, CR LF turned into LF).
    pub fn command(&mut self, line: &str, timeout: Duration) -> Result<String> {
        self.mark();
        let start = {
            self.console
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .text
                .len()
        };
        self.send(&format!("{line}\r"))?;
        self.wait_for(markers::PROMPT, timeout)?;
        let state = self.console.state.lock().unwrap_or_else(|e| e.into_inner());
        let end = state.cursor;
        let text = String::from_utf8_lossy(&state.text[start..end]).replace("\r\n", "\n");
        // Drop the echoed command line and the trailing prompt.
        let body = text.split_once('\n').map_or("", |(_, rest)| rest);
        let body = body.strip_suffix(markers::PROMPT).unwrap_or(body);
        Ok(body.trim_end_matches('\n').to_string())
    }

    /// Waits for QEMU to exit and returns its exit code (`None` if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return Ok(status.code());
            }
            if let Some(status) = self.child.try_wait()? {
                self.exit = Some(status);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(lab_error!(
                    "VM {}: QEMU still running after {timeout:?}; last output:\n{}",
                    self.name,
                    self.tail(2000)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True while QEMU runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit = Some(status);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if let Some(stop) = self.stop_reaper.take() {
            let _ = stop.send(());
        }
        if std::env::var_os("DUPLEX_KEEP_RUNS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The QEMU binary (`DUPLEX_QEMU` overrides).
pub fn qemu_binary() -> String {
    std::env::var("DUPLEX_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}
