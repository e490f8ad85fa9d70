//! The lab's bypass card: one per appliance box, played on the host because QEMU has none.
//!
//! A card is a relay across the box's two fabric ports plus a watchdog of its own. The
//! guest drives it over its COM2 with the line protocol of
//! `drivers/src/bypass/SPEC.md` (version 1); the driver is `duplex_drivers::bypass`.
//!
//! ```text
//!  guest COM2 ─QEMU chardev─▶ unix socket ─▶ reader thread ─▶ CardCore ─▶ Fabric::set_bypass
//!                                   ▲                           ▲   │
//!                                   └──── writer thread ◀───────┘   └─ events (clock::now_ns)
//!                                                watchdog thread ┘ (condvar, deadline)
//! ```
//!
//! - The lab listens and QEMU connects as a client when it starts
//!   ([`BypassCard::qemu_args`]), as the console and QMP do in [`crate::vm`], so no byte
//!   is lost. The arguments go into `VmConfig::extra_args`, which come after the
//!   console's `-serial`: the card is COM2.
//! - The reader thread never writes to the socket: replies go through a bounded queue to
//!   a writer thread, so a guest that never reads COM2 cannot stop its kicks from being
//!   read. Replies beyond the queue are dropped and counted.
//! - The watchdog thread sleeps on a condition variable until the deadline (monotonic
//!   clock, 1 ns timer slack). A kick only moves the deadline; it wakes nobody.
//! - Power: when the VM's end closes (QEMU exited or was killed) the card loses power:
//!   its watchdog stops and, unless configured otherwise, the relay closes (fail to
//!   wire). A new connection is power on: watchdog disarmed, relay as it was.
//! - Every event carries a [`clock::now_ns`] timestamp, the clock of the fabric's source
//!   and sink, so "watchdog fired at t, first frame through the relay at t'" compares.
//!
//! The card's logic ([`CardCore`]) has no threads and reads time through an injected
//! clock, so the host tests drive it in virtual time.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use duplex_fabric::clock;
use duplex_fabric::{Fabric, PortId};

use crate::{Result, lab_error};

/// The protocol version the card speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// The longest line either side may send, line feed included.
pub const MAX_LINE_LENGTH: usize = 128;
/// Replies waiting for the writer thread before further ones are dropped.
const REPLY_QUEUE: usize = 256;
/// The card's name in `hello` replies.
const CARD_NAME: &str = "lab";

// ---------------------------------------------------------------------------------------
// Protocol: requests in, replies out.

/// A command of the protocol (SPEC.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `hello V`.
    Hello(u64),
    /// `on`: close the relay.
    On,
    /// `off`: open the relay.
    Off,
    /// `status`.
    Status,
    /// `arm MS`.
    Arm(u64),
    /// `disarm`.
    Disarm,
    /// `kick` (answered).
    Kick,
}

/// One line from the host, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// An empty line (or spaces): ignored, not answered.
    Empty,
    /// `k`: a kick without a reply.
    Kick,
    /// A request with its sequence token (echoed in the reply as it came).
    Command {
        /// The sequence token.
        sequence: &'a str,
        /// What to do.
        command: Command,
    },
    /// A line that is not a valid request; answered `SEQ err REASON` when it had a
    /// sequence, else `- err REASON`.
    Invalid {
        /// The sequence token, when the line started with one.
        sequence: Option<&'a str>,
        /// The reason token of SPEC.md section 7.
        reason: &'static str,
    },
}

/// True for a sequence token: 1 to 4 lower-case hex digits.
fn is_sequence(token: &str) -> bool {
    (1..=4).contains(&token.len())
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An unsigned decimal number of 1 to 19 digits.
fn parse_decimal(token: &str) -> Option<u64> {
    if token.is_empty() || token.len() > 19 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// Parses one line from the host, without its line feed (a trailing CR is removed).
pub fn parse_request(line: &[u8]) -> Request<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Request::Invalid {
            sequence: None,
            reason: "bad-byte",
        };
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Request::Invalid {
            sequence: None,
            reason: "bad-byte",
        };
    };
    let mut tokens = text.split(' ').filter(|token| !token.is_empty());
    let Some(first) = tokens.next() else {
        return Request::Empty;
    };
    let name = tokens.next();
    let argument = tokens.next();
    let extra = tokens.next().is_some();
    if first == "k" && name.is_none() {
        return Request::Kick;
    }
    if !is_sequence(first) {
        return Request::Invalid {
            sequence: None,
            reason: "parse",
        };
    }
    let invalid = |reason| Request::Invalid {
        sequence: Some(first),
        reason,
    };
    let Some(name) = name else {
        return invalid("unknown-command");
    };
    if extra {
        return invalid(if is_command(name) {
            "bad-argument"
        } else {
            "unknown-command"
        });
    }
    let command = match (name, argument) {
        ("hello", Some(version)) => parse_decimal(version).map(Command::Hello),
        ("arm", Some(millis)) => parse_decimal(millis).map(Command::Arm),
        ("on", None) => Some(Command::On),
        ("off", None) => Some(Command::Off),
        ("status", None) => Some(Command::Status),
        ("disarm", None) => Some(Command::Disarm),
        ("kick", None) => Some(Command::Kick),
        (name, _) if is_command(name) => None,
        _ => return invalid("unknown-command"),
    };
    match command {
        Some(command) => Request::Command {
            sequence: first,
            command,
        },
        None => invalid("bad-argument"),
    }
}

fn is_command(name: &str) -> bool {
    matches!(
        name,
        "hello" | "arm" | "on" | "off" | "status" | "disarm" | "kick"
    )
}

/// What the line splitter found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitLine {
    /// A whole line, without its line feed.
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE_LENGTH`], dropped up to its line feed.
    TooLong,
}

/// Cuts the byte stream from the host into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    overflowed: bool,
}

impl LineSplitter {
    /// Takes `bytes` and hands every finished line to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(SplitLine)) {
        for &byte in bytes {
            if byte == b'\n' {
                if self.overflowed {
                    self.overflowed = false;
                    out(SplitLine::TooLong);
                } else {
                    out(SplitLine::Line(std::mem::take(&mut self.partial)));
                }
                self.partial.clear();
            } else if !self.overflowed {
                // The line feed counts towards the limit.
                if self.partial.len() + 1 >= MAX_LINE_LENGTH {
                    self.overflowed = true;
                    self.partial.clear();
                } else {
                    self.partial.push(byte);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Events and status.

/// Why the relay switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayCause {
    /// The guest sent `on` or `off`.
    Command,
    /// The card's watchdog ran out.
    Watchdog,
    /// The VM's end of the socket closed (power loss: fail to wire).
    PowerLoss,
    /// The lab switched it ([`BypassCard::set_relay`]).
    Lab,
    /// The card's setting at start ([`CardConfig::relay_at_start`]).
    Start,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardEventKind {
    /// The VM connected (power on).
    Connected,
    /// The VM's end closed (power loss).
    Disconnected,
    /// The guest armed the watchdog.
    Armed {
        /// The timeout.
        timeout: Duration,
    },
    /// The guest disarmed the watchdog.
    Disarmed,
    /// The watchdog ran out.
    WatchdogFired {
        /// The deadline it fired for (last kick or arm + timeout); the event's `at_ns`
        /// minus this is how late the card noticed.
        deadline_ns: u64,
        /// The last kick (or the arm) before it fired.
        last_kick_ns: u64,
    },
    /// The relay switched; `at_ns` is when the fabric had done it.
    RelaySwitched {
        /// Closed (traffic around the box) or open.
        on: bool,
        /// Why.
        cause: RelayCause,
    },
    /// The relay did not switch (the fabric refused).
    RelayFailed {
        /// What was asked.
        on: bool,
        /// Why it was asked.
        cause: RelayCause,
        /// The fabric's error.
        error: String,
    },
}

/// One event, stamped with [`clock::now_ns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardEvent {
    /// When it happened.
    pub at_ns: u64,
    /// What happened.
    pub kind: CardEventKind,
}

/// The card's state as the lab sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CardStatus {
    /// A VM is connected (the card has power).
    pub connected: bool,
    /// The relay is closed.
    pub relay: bool,
    /// The watchdog is armed.
    pub armed: bool,
    /// The last armed timeout.
    pub timeout: Duration,
    /// The watchdog fired since it was last armed.
    pub fired: bool,
    /// Kicks since power on.
    pub kicks: u64,
    /// The last kick, if any.
    pub last_kick_ns: Option<u64>,
    /// The longest time between consecutive kicks (or arm and first kick) while armed:
    /// how close the guest came to letting the watchdog fire.
    pub longest_kick_gap: Duration,
    /// Lines that were not valid requests.
    pub protocol_errors: u64,
    /// Replies dropped because the guest did not read them.
    pub replies_dropped: u64,
    /// Events not recorded because the log was full.
    pub events_dropped: u64,
}

// ---------------------------------------------------------------------------------------
// The card's logic.

/// How a card behaves.
#[derive(Debug, Clone)]
pub struct CardConfig {
    /// A short name ("A"), used for thread names and the socket's directory.
    pub name: String,
    /// Where to listen; `None`: a fresh directory under the temporary directory.
    pub socket_path: Option<PathBuf>,
    /// Close the relay when the VM's end closes (a real card's fail-to-wire).
    pub close_relay_on_power_loss: bool,
    /// Close the relay when the card starts (a card without power is a wire); the guest
    /// opens it with `off` when it is ready. Off by default.
    pub relay_at_start: bool,
    /// Shortest watchdog timeout accepted.
    pub min_timeout: Duration,
    /// Longest watchdog timeout accepted.
    pub max_timeout: Duration,
    /// Events kept; later ones are counted in [`CardStatus::events_dropped`].
    pub max_events: usize,
}

impl CardConfig {
    /// The defaults: fail to wire on power loss, relay open at start, 1 ms to 24 h.
    pub fn new(name: &str) -> CardConfig {
        CardConfig {
            name: name.to_string(),
            socket_path: None,
            close_relay_on_power_loss: true,
            relay_at_start: false,
            min_timeout: Duration::from_millis(1),
            max_timeout: Duration::from_secs(24 * 3600),
            max_events: 100_000,
        }
    }
}

/// The relay: closes (`true`) or opens the path around the box.
pub type RelaySwitch = Box<dyn FnMut(bool) -> std::result::Result<(), String> + Send>;
/// A monotonic clock in nanoseconds ([`clock::now_ns`], or a fake in tests).
pub type ClockSource = Box<dyn Fn() -> u64 + Send>;

/// The card without threads: relay, watchdog, protocol, event log.
pub struct CardCore {
    config: CardConfig,
    relay_switch: RelaySwitch,
    clock: ClockSource,
    status: CardStatus,
    /// When the watchdog runs out, while armed.
    deadline_ns: Option<u64>,
    events: Vec<CardEvent>,
}

/// What the card says back to a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing (kicks, empty lines).
    Silent,
    /// This line, line feed included.
    Line(String),
}

impl CardCore {
    /// A card with the relay open and the watchdog disarmed, without power.
    pub fn new(config: CardConfig, relay_switch: RelaySwitch, clock: ClockSource) -> CardCore {
        CardCore {
            config,
            relay_switch,
            clock,
            status: CardStatus::default(),
            deadline_ns: None,
            events: Vec::new(),
        }
    }

    /// The state.
    pub fn status(&self) -> CardStatus {
        self.status
    }

    /// Events so far.
    pub fn events(&self) -> &[CardEvent] {
        &self.events
    }

    /// Forgets the events so far.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// When the watchdog runs out, if armed.
    pub fn deadline_ns(&self) -> Option<u64> {
        self.deadline_ns
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn record(&mut self, kind: CardEventKind) {
        if self.events.len() >= self.config.max_events {
            self.status.events_dropped += 1;
            return;
        }
        let at_ns = self.now();
        self.events.push(CardEvent { at_ns, kind });
    }

    /// Switches the relay; records the switch (or the failure). Switching to the state
    /// it is in still tells the relay (the fabric may have been changed behind the
    /// card's back) but records nothing.
    pub fn switch_relay(&mut self, on: bool, cause: RelayCause) -> std::result::Result<(), String> {
        match (self.relay_switch)(on) {
            Ok(()) => {
                if self.status.relay != on {
                    self.status.relay = on;
                    self.record(CardEventKind::RelaySwitched { on, cause });
                }
                Ok(())
            }
            Err(error) => {
                self.record(CardEventKind::RelayFailed {
                    on,
                    cause,
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    /// A VM connected: power on.
    pub fn power_on(&mut self) {
        self.status.connected = true;
        self.status.armed = false;
        self.status.kicks = 0;
        self.status.last_kick_ns = None;
        self.deadline_ns = None;
        self.record(CardEventKind::Connected);
    }

    /// The VM's end closed: power loss.
    pub fn power_loss(&mut self) {
        self.status.connected = false;
        self.status.armed = false;
        self.deadline_ns = None;
        self.record(CardEventKind::Disconnected);
        if self.config.close_relay_on_power_loss {
            // A failure is in the event log; nobody to tell.
            let _ = self.switch_relay(true, RelayCause::PowerLoss);
        }
    }

    /// A line that was too long.
    pub fn too_long(&mut self) -> Answer {
        self.status.protocol_errors += 1;
        Answer::Line("- err too-long\n".to_string())
    }

    /// Handles one line from the host (without its line feed).
    pub fn handle_line(&mut self, line: &[u8]) -> Answer {
        match parse_request(line) {
            Request::Empty => Answer::Silent,
            Request::Kick => {
                self.kick();
                Answer::Silent
            }
            Request::Invalid { sequence, reason } => {
                self.status.protocol_errors += 1;
                Answer::Line(format!("{} err {reason}\n", sequence.unwrap_or("-")))
            }
            Request::Command { sequence, command } => {
                let body = self.execute(command);
                Answer::Line(format!("{sequence} {body}\n"))
            }
        }
    }

    fn kick(&mut self) {
        self.status.kicks = self.status.kicks.wrapping_add(1);
        let now = self.now();
        if self.status.armed {
            let since = self
                .status
                .last_kick_ns
                .map_or(0, |last| now.saturating_sub(last));
            let gap = Duration::from_nanos(since);
            if gap > self.status.longest_kick_gap {
                self.status.longest_kick_gap = gap;
            }
            self.deadline_ns = Some(now.saturating_add(duration_ns(self.status.timeout)));
        }
        self.status.last_kick_ns = Some(now);
    }

    fn execute(&mut self, command: Command) -> String {
        let (min, max) = (
            self.config.min_timeout.as_millis(),
            self.config.max_timeout.as_millis(),
        );
        match command {
            Command::Hello(PROTOCOL_VERSION) => {
                format!("ok version={PROTOCOL_VERSION} card={CARD_NAME} min={min} max={max}")
            }
            Command::Hello(_) => format!("err version max={PROTOCOL_VERSION}"),
            Command::On | Command::Off => {
                let on = command == Command::On;
                match self.switch_relay(on, RelayCause::Command) {
                    Ok(()) => format!("ok relay={}", on_off(on)),
                    Err(_) => "err relay".to_string(),
                }
            }
            Command::Status => format!(
                "ok relay={} armed={} timeout={} fired={} kicks={}",
                on_off(self.status.relay),
                u8::from(self.status.armed),
                self.status.timeout.as_millis(),
                u8::from(self.status.fired),
                self.status.kicks
            ),
            Command::Arm(millis) => {
                if u128::from(millis) < min || u128::from(millis) > max {
                    return format!("err range min={min} max={max}");
                }
                let timeout = Duration::from_millis(millis);
                let now = self.now();
                self.status.armed = true;
                self.status.fired = false;
                self.status.timeout = timeout;
                self.status.last_kick_ns = Some(now);
                self.deadline_ns = Some(now.saturating_add(duration_ns(timeout)));
                self.record(CardEventKind::Armed { timeout });
                format!("ok armed=1 timeout={millis}")
            }
            Command::Disarm => {
                if self.status.armed {
                    self.status.armed = false;
                    self.deadline_ns = None;
                    self.record(CardEventKind::Disarmed);
                }
                "ok armed=0".to_string()
            }
            Command::Kick => {
                self.kick();
                format!("ok armed={}", u8::from(self.status.armed))
            }
        }
    }

    /// Fires the watchdog if its deadline has passed: closes the relay and returns the
    /// notice for the host. `None` when not armed or not yet due.
    pub fn expire(&mut self) -> Option<String> {
        let deadline_ns = self.deadline_ns?;
        if self.now() < deadline_ns {
            return None;
        }
        self.deadline_ns = None;
        self.status.armed = false;
        self.status.fired = true;
        let last_kick_ns = self.status.last_kick_ns.unwrap_or(0);
        self.record(CardEventKind::WatchdogFired {
            deadline_ns,
            last_kick_ns,
        });
        let _ = self.switch_relay(true, RelayCause::Watchdog);
        Some(format!("* fired relay={}\n", on_off(self.status.relay)))
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn duration_ns(duration: Duration) -> u64 {
    clock::duration_ns(duration)
}

// ---------------------------------------------------------------------------------------
// The card with its socket and threads.

struct Inner {
    core: CardCore,
    stopping: bool,
    /// The current connection (to shut it down) and its reply queue.
    connection: Option<(UnixStream, SyncSender<String>)>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the watchdog thread (armed, stopping).
    watchdog_wake: Condvar,
    /// Wakes waiters for events.
    event_added: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running bypass card: a unix socket for the VM's COM2, a relay, a watchdog.
/// Dropping it stops its threads (the relay stays as it is) and removes its socket.
pub struct BypassCard {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    socket_path: PathBuf,
    /// The directory the card made for its socket, removed on drop.
    own_directory: Option<PathBuf>,
}

static CARD_COUNTER: AtomicU32 = AtomicU32::new(0);

impl BypassCard {
    /// A card whose relay is `fabric.set_bypass(port_a, port_b, on)`.
    pub fn start(
        fabric: Arc<Fabric>,
        port_a: PortId,
        port_b: PortId,
        config: CardConfig,
    ) -> Result<BypassCard> {
        let relay: RelaySwitch = Box::new(move |on| {
            fabric
                .set_bypass(port_a, port_b, on)
                .map_err(|error| error.to_string())
        });
        BypassCard::with_relay(relay, config)
    }

    /// A card with any relay (tests, or a relay that is not the fabric's).
    pub fn with_relay(relay: RelaySwitch, config: CardConfig) -> Result<BypassCard> {
        let (socket_path, own_directory) = match &config.socket_path {
            Some(path) => (path.clone(), None),
            None => {
                let n = CARD_COUNTER.fetch_add(1, Ordering::Relaxed);
                let directory = std::env::temp_dir().join(format!(
                    "duplex-bypass-{}-{n}-{}",
                    std::process::id(),
                    config.name
                ));
                let _ = std::fs::remove_dir_all(&directory);
                std::fs::create_dir_all(&directory)?;
                (directory.join("card.sock"), Some(directory))
            }
        };
        let _ = std::fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path).map_err(|error| {
            lab_error!(
                "bypass card {}: cannot listen on {}: {error}",
                config.name,
                socket_path.display()
            )
        })?;
        let name = config.name.clone();
        let relay_at_start = config.relay_at_start;
        let mut core = CardCore::new(config, relay, Box::new(clock::now_ns));
        if relay_at_start {
            core.switch_relay(true, RelayCause::Start)
                .map_err(|error| lab_error!("bypass card {name}: relay: {error}"))?;
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                core,
                stopping: false,
                connection: None,
            }),
            watchdog_wake: Condvar::new(),
            event_added: Condvar::new(),
        });
        let mut card = BypassCard {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            socket_path,
            own_directory,
        };
        let watchdog_shared = Arc::clone(&shared);
        card.threads.push(
            std::thread::Builder::new()
                .name(format!("bypass-wd-{name}"))
                .spawn(move || run_watchdog(&watchdog_shared))?,
        );
        let line_shared = Arc::clone(&shared);
        let line_name = name.clone();
        card.threads.push(
            std::thread::Builder::new()
                .name(format!("bypass-{name}"))
                .spawn(move || run_line(&line_shared, &listener, &line_name))?,
        );
        Ok(card)
    }

    /// The socket QEMU connects to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The QEMU arguments that make the card the VM's COM2:
    /// `-chardev socket,id=ID,path=SOCKET -serial chardev:ID`. They must come after the
    /// console's `-serial` (as `VmConfig::extra_args` do).
    pub fn qemu_args(&self, chardev_id: &str) -> [String; 4] {
        [
            "-chardev".to_string(),
            format!("socket,id={chardev_id},path={}", self.socket_path.display()),
            "-serial".to_string(),
            format!("chardev:{chardev_id}"),
        ]
    }

    /// The card's state now.
    pub fn status(&self) -> CardStatus {
        self.shared.lock().core.status()
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> Vec<CardEvent> {
        self.shared.lock().core.events().to_vec()
    }

    /// Forgets the events so far (between benchmark rounds).
    pub fn clear_events(&self) {
        self.shared.lock().core.clear_events();
    }

    /// Waits up to `timeout` for an event (already recorded or to come) that
    /// `predicate` accepts, and returns the first such.
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        predicate: impl Fn(&CardEvent) -> bool,
    ) -> Option<CardEvent> {
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if let Some(event) = inner.core.events().iter().find(|e| predicate(e)) {
                return Some(event.clone());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            inner = self
                .shared
                .event_added
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Switches the relay from the lab (a manual fault, a test), as if by hand.
    pub fn set_relay(&self, on: bool) -> Result {
        let mut inner = self.shared.lock();
        let result = inner.core.switch_relay(on, RelayCause::Lab);
        self.shared.event_added.notify_all();
        result.map_err(|error| lab_error!("bypass card: relay: {error}"))
    }
}

impl Drop for BypassCard {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.stopping = true;
            if let Some((stream, _)) = &inner.connection {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            self.shared.watchdog_wake.notify_all();
        }
        // Wakes the accept; the line thread sees `stopping` and ends.
        let _ = UnixStream::connect(&self.socket_path);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket_path);
        if let Some(directory) = &self.own_directory {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}

fn run_watchdog(shared: &Shared) {
    // Wake-ups as close to the deadline as the kernel allows (default slack: 50 µs).
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut inner = shared.lock();
    loop {
        if inner.stopping {
            return;
        }
        let Some(deadline_ns) = inner.core.deadline_ns() else {
            inner = shared
                .watchdog_wake
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let now = clock::now_ns();
        if now < deadline_ns {
            // A kick moves the deadline without waking this thread: it finds the later
            // deadline when it wakes and sleeps again.
            inner = shared
                .watchdog_wake
                .wait_timeout(inner, Duration::from_nanos(deadline_ns - now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        if let Some(notice) = inner.core.expire() {
            if let Some((_, replies)) = &inner.connection {
                let _ = replies.try_send(notice);
            }
            shared.event_added.notify_all();
        }
    }
}

fn run_line(shared: &Shared, listener: &UnixListener, name: &str) {
    loop {
        let accepted = listener.accept();
        if shared.lock().stopping {
            return;
        }
        let Ok((stream, _)) = accepted else {
            // accept(2) fails only on resource exhaustion; do not spin on it.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        serve(shared, stream, name);
    }
}

/// Serves one connection (one power-on period) until it closes.
fn serve(shared: &Shared, mut stream: UnixStream, name: &str) {
    let (Ok(writer), Ok(shutdown_handle)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let (replies, queue) = sync_channel::<String>(REPLY_QUEUE);
    let writer_thread = std::thread::Builder::new()
        .name(format!("bypass-out-{name}"))
        .spawn(move || {
            let mut writer = writer;
            for line in queue {
                if writer.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        });
    {
        let mut inner = shared.lock();
        if inner.stopping {
            return;
        }
        inner.connection = Some((shutdown_handle, replies.clone()));
        inner.core.power_on();
        shared.event_added.notify_all();
    }
    let mut splitter = LineSplitter::default();
    let mut buffer = [0u8; 4096];
    loop {
        let count = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        let mut inner = shared.lock();
        let mut wake_watchdog = false;
        let mut new_events = false;
        splitter.feed(&buffer[..count], &mut |line| {
            let events_before = inner.core.events().len();
            let deadline_before = inner.core.deadline_ns();
            let answer = match line {
                SplitLine::Line(line) => inner.core.handle_line(&line),
                SplitLine::TooLong => inner.core.too_long(),
            };
            new_events |= inner.core.events().len() != events_before;
            // Arming (or re-arming with a shorter timeout) may bring the deadline
            // forward; kicks only push it back and need no wake-up.
            if let (Some(after), before) = (inner.core.deadline_ns(), deadline_before)
                && before.is_none_or(|before| after < before)
            {
                wake_watchdog = true;
            }
            if let Answer::Line(reply) = answer
                && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    replies.try_send(reply)
            {
                inner.core.status.replies_dropped += 1;
            }
        });
        if wake_watchdog {
            shared.watchdog_wake.notify_all();
        }
        if new_events {
            shared.event_added.notify_all();
        }
    }
    {
        let mut inner = shared.lock();
        inner.connection = None;
        if !inner.stopping {
            inner.core.power_loss();
        }
        shared.watchdog_wake.notify_all();
        shared.event_added.notify_all();
    }
    drop(replies);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Ok(thread) = writer_thread {
        let _ = thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::AtomicU64;

    use duplex_fabric::Discard;

    use crate::stats::{median, percentile};

    // --- Protocol ---------------------------------------------------------------------

    #[test]
    fn requests_parse() {
        let command = |line: &'static [u8]| match parse_request(line) {
            Request::Command { sequence, command } => (sequence, command),
            other => panic!("{other:?}"),
        };
        assert_eq!(command(b"00 hello 1"), ("00", Command::Hello(1)));
        assert_eq!(command(b"a on"), ("a", Command::On));
        assert_eq!(command(b"ffff off\r"), ("ffff", Command::Off));
        assert_eq!(command(b"1 status"), ("1", Command::Status));
        assert_eq!(command(b"1f  arm   10 "), ("1f", Command::Arm(10)));
        assert_eq!(command(b"2 disarm"), ("2", Command::Disarm));
        assert_eq!(command(b"3 kick"), ("3", Command::Kick));
        assert_eq!(parse_request(b"k"), Request::Kick);
        assert_eq!(parse_request(b"k\r"), Request::Kick);
        assert_eq!(parse_request(b""), Request::Empty);
        assert_eq!(parse_request(b"   "), Request::Empty);
    }

    #[test]
    fn bad_requests_say_why() {
        let invalid = |sequence, reason| Request::Invalid { sequence, reason };
        assert_eq!(parse_request(b"hello"), invalid(None, "parse"));
        assert_eq!(parse_request(b"k k"), invalid(None, "parse"));
        assert_eq!(parse_request(b"12345 on"), invalid(None, "parse"));
        assert_eq!(parse_request(b"0A on"), invalid(None, "parse"));
        assert_eq!(parse_request(b"0a\ton"), invalid(None, "bad-byte"));
        assert_eq!(parse_request(b"0a on\r\r"), invalid(None, "bad-byte"));
        assert_eq!(parse_request(b"0a \xffon"), invalid(None, "bad-byte"));
        assert_eq!(parse_request(b"0a"), invalid(Some("0a"), "unknown-command"));
        assert_eq!(
            parse_request(b"0a reboot"),
            invalid(Some("0a"), "unknown-command")
        );
        assert_eq!(
            parse_request(b"0a reboot now please"),
            invalid(Some("0a"), "unknown-command")
        );
        assert_eq!(
            parse_request(b"0a on 1"),
            invalid(Some("0a"), "bad-argument")
        );
        assert_eq!(
            parse_request(b"0a arm"),
            invalid(Some("0a"), "bad-argument")
        );
        assert_eq!(
            parse_request(b"0a arm -1"),
            invalid(Some("0a"), "bad-argument")
        );
        assert_eq!(
            parse_request(b"0a arm 1 2"),
            invalid(Some("0a"), "bad-argument")
        );
        assert_eq!(
            parse_request(b"0a arm 99999999999999999999"),
            invalid(Some("0a"), "bad-argument")
        );
        assert_eq!(
            parse_request(b"0a hello x"),
            invalid(Some("0a"), "bad-argument")
        );
        // Nothing panics on short byte strings over an awkward alphabet.
        let alphabet = b" 0ak\r\n\x00\xff-";
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let _ = parse_request(&[*a, *b, *c]);
                }
            }
        }
    }

    #[test]
    fn splitter_cuts_lines_and_drops_long_ones() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        let mut input = b"0 on\n1 o".to_vec();
        splitter.feed(&input, &mut |l| lines.push(l));
        input = b"ff\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 127));
        input.extend(b"\nk\n");
        splitter.feed(&input, &mut |l| lines.push(l));
        assert_eq!(
            lines,
            [
                SplitLine::Line(b"0 on".to_vec()),
                SplitLine::Line(b"1 off".to_vec()),
                SplitLine::Line(vec![b'x'; 127]),
                SplitLine::Line(b"k".to_vec()),
            ]
        );
        lines.clear();
        let mut long = vec![b'y'; 128];
        long.extend(b"\n\n");
        splitter.feed(&long, &mut |l| lines.push(l));
        assert_eq!(lines, [SplitLine::TooLong, SplitLine::Line(Vec::new())]);
    }

    // --- The card's logic in virtual time ------------------------------------------------

    struct Virtual {
        core: CardCore,
        now: Arc<AtomicU64>,
        relay_calls: Arc<Mutex<Vec<bool>>>,
        refuse_relay: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Virtual {
        fn new(config: CardConfig) -> Virtual {
            let now = Arc::new(AtomicU64::new(1_000_000));
            let relay_calls = Arc::new(Mutex::new(Vec::new()));
            let refuse_relay = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let clock_now = Arc::clone(&now);
            let calls = Arc::clone(&relay_calls);
            let refuse = Arc::clone(&refuse_relay);
            let core = CardCore::new(
                config,
                Box::new(move |on| {
                    if refuse.load(Ordering::Relaxed) {
                        return Err("refused".to_string());
                    }
                    calls.lock().unwrap().push(on);
                    Ok(())
                }),
                Box::new(move || clock_now.load(Ordering::Relaxed)),
            );
            Virtual {
                core,
                now,
                relay_calls,
                refuse_relay,
            }
        }

        fn advance_ms(&self, millis: u64) {
            self.now.fetch_add(millis * 1_000_000, Ordering::Relaxed);
        }

        fn line(&mut self, line: &str) -> String {
            match self.core.handle_line(line.as_bytes()) {
                Answer::Line(reply) => reply,
                Answer::Silent => String::new(),
            }
        }
    }

    #[test]
    fn watchdog_fires_at_its_deadline_and_closes_the_relay() {
        let mut card = Virtual::new(CardConfig::new("v"));
        card.core.power_on();
        assert_eq!(card.line("1 off"), "1 ok relay=off\n");
        assert_eq!(card.line("2 arm 10"), "2 ok armed=1 timeout=10\n");
        let armed_at = card.now.load(Ordering::Relaxed);
        assert_eq!(card.core.deadline_ns(), Some(armed_at + 10_000_000));
        card.advance_ms(6);
        assert_eq!(card.line("k"), "");
        card.advance_ms(9);
        assert_eq!(card.core.expire(), None);
        card.advance_ms(1);
        assert_eq!(card.core.expire().as_deref(), Some("* fired relay=on\n"));
        assert_eq!(card.core.expire(), None);
        let status = card.core.status();
        assert!(status.relay && status.fired && !status.armed);
        assert_eq!(status.kicks, 1);
        assert_eq!(status.longest_kick_gap, Duration::from_millis(6));
        assert_eq!(*card.relay_calls.lock().unwrap(), [false, true]);
        let events: Vec<_> = card.core.events().iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            events,
            [
                CardEventKind::Connected,
                CardEventKind::Armed {
                    timeout: Duration::from_millis(10)
                },
                CardEventKind::WatchdogFired {
                    deadline_ns: armed_at + 16_000_000,
                    last_kick_ns: armed_at + 6_000_000,
                },
                CardEventKind::RelaySwitched {
                    on: true,
                    cause: RelayCause::Watchdog
                },
            ]
        );
        assert_eq!(
            card.line("3 status"),
            "3 ok relay=on armed=0 timeout=10 fired=1 kicks=1\n"
        );
        // `off` keeps `fired`; `arm` clears it.
        assert_eq!(card.line("4 off"), "4 ok relay=off\n");
        assert!(card.core.status().fired);
        assert_eq!(card.line("5 arm 5"), "5 ok armed=1 timeout=5\n");
        assert!(!card.core.status().fired);
        assert_eq!(card.line("6 disarm"), "6 ok armed=0\n");
        card.advance_ms(100);
        assert_eq!(card.core.expire(), None);
        assert_eq!(card.line("7 kick"), "7 ok armed=0\n");
        assert_eq!(card.core.deadline_ns(), None);
    }

    #[test]
    fn power_loss_closes_the_relay_and_power_on_disarms() {
        let mut card = Virtual::new(CardConfig::new("v"));
        card.core.power_on();
        card.line("1 arm 1000");
        card.core.power_loss();
        let status = card.core.status();
        assert!(status.relay && !status.armed && !status.connected);
        assert_eq!(card.core.deadline_ns(), None);
        assert!(card.core.events().iter().any(|e| e.kind
            == CardEventKind::RelaySwitched {
                on: true,
                cause: RelayCause::PowerLoss
            }));
        card.core.power_on();
        assert_eq!(
            card.line("2 status"),
            "2 ok relay=on armed=0 timeout=1000 fired=0 kicks=0\n"
        );

        let mut config = CardConfig::new("keep");
        config.close_relay_on_power_loss = false;
        let mut card = Virtual::new(config);
        card.core.power_on();
        card.core.power_loss();
        assert!(!card.core.status().relay);
        assert!(card.relay_calls.lock().unwrap().is_empty());
    }

    #[test]
    fn errors_are_answered_and_change_nothing() {
        let mut card = Virtual::new(CardConfig::new("v"));
        card.core.power_on();
        assert_eq!(
            card.line("0 hello 1"),
            "0 ok version=1 card=lab min=1 max=86400000\n"
        );
        assert_eq!(card.line("1 hello 2"), "1 err version max=1\n");
        assert_eq!(card.line("2 arm 0"), "2 err range min=1 max=86400000\n");
        assert_eq!(
            card.line("3 arm 86400001"),
            "3 err range min=1 max=86400000\n"
        );
        assert_eq!(card.line("4 fly"), "4 err unknown-command\n");
        assert_eq!(card.line("hello"), "- err parse\n");
        assert_eq!(card.line("5 arm ten"), "5 err bad-argument\n");
        assert_eq!(
            card.core.too_long(),
            Answer::Line("- err too-long\n".into())
        );
        assert!(!card.core.status().armed);
        assert_eq!(card.core.status().protocol_errors, 4);
        card.refuse_relay.store(true, Ordering::Relaxed);
        assert_eq!(card.line("6 on"), "6 err relay\n");
        assert!(!card.core.status().relay);
        assert!(matches!(
            card.core.events().last().map(|e| &e.kind),
            Some(CardEventKind::RelayFailed { on: true, .. })
        ));
    }

    #[test]
    fn event_log_is_bounded() {
        let mut config = CardConfig::new("v");
        config.max_events = 2;
        let mut card = Virtual::new(config);
        card.core.power_on();
        card.line("1 arm 5");
        card.line("2 disarm");
        assert_eq!(card.core.events().len(), 2);
        assert_eq!(card.core.status().events_dropped, 1);
    }

    // --- The card on its socket, with a fake guest --------------------------------------

    /// The guest's end of COM2, as QEMU's chardev would hold it.
    struct Guest {
        writer: UnixStream,
        reader: BufReader<UnixStream>,
    }

    impl Guest {
        fn connect(card: &BypassCard) -> Guest {
            let writer = UnixStream::connect(card.socket_path()).unwrap();
            writer
                .set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let reader = writer.try_clone().unwrap();
            reader
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            Guest {
                writer,
                reader: BufReader::new(reader),
            }
        }

        fn send(&mut self, line: &str) {
            self.writer.write_all(line.as_bytes()).unwrap();
        }

        fn read_line(&mut self) -> String {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            line
        }

        fn request(&mut self, line: &str) -> String {
            self.send(line);
            self.read_line()
        }
    }

    fn fabric_card(name: &str) -> (Arc<Fabric>, PortId, PortId, BypassCard) {
        let fabric = Arc::new(Fabric::new().unwrap());
        let a = fabric
            .add_internal_port(&format!("{name}.lan"), Discard)
            .unwrap();
        let b = fabric
            .add_internal_port(&format!("{name}.wan"), Discard)
            .unwrap();
        let card = BypassCard::start(Arc::clone(&fabric), a, b, CardConfig::new(name)).unwrap();
        (fabric, a, b, card)
    }

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn guest_stops_kicking_and_the_relay_closes() {
        let (fabric, a, b, card) = fabric_card("A");
        assert_eq!(
            card.qemu_args("bp0"),
            [
                "-chardev".to_string(),
                format!("socket,id=bp0,path={}", card.socket_path().display()),
                "-serial".to_string(),
                "chardev:bp0".to_string(),
            ]
        );
        let mut guest = Guest::connect(&card);
        guest.send("\n");
        assert_eq!(
            guest.request("00 hello 1\n"),
            "00 ok version=1 card=lab min=1 max=86400000\n"
        );
        assert_eq!(guest.request("01 off\n"), "01 ok relay=off\n");
        assert_eq!(fabric.bypass_peer(a).unwrap(), None);
        assert_eq!(guest.request("02 arm 10\n"), "02 ok armed=1 timeout=10\n");
        for _ in 0..5 {
            guest.send("k\n");
        }
        // Kicks are read in order before this request, which answers after them.
        assert!(guest.request("03 status\n").starts_with("03 ok relay="));
        // Now the guest is dead: no more kicks.
        let fired = card
            .wait_for_event(WAIT, |e| {
                matches!(e.kind, CardEventKind::WatchdogFired { .. })
            })
            .expect("the watchdog fired");
        let relay = card
            .wait_for_event(WAIT, |e| {
                e.kind
                    == CardEventKind::RelaySwitched {
                        on: true,
                        cause: RelayCause::Watchdog,
                    }
            })
            .expect("the relay closed");
        assert_eq!(fabric.bypass_peer(a).unwrap(), Some(b));
        let CardEventKind::WatchdogFired {
            deadline_ns,
            last_kick_ns,
        } = fired.kind
        else {
            unreachable!()
        };
        // Never early; exactly one timeout after the last kick.
        assert_eq!(deadline_ns, last_kick_ns + 10_000_000);
        assert!(fired.at_ns >= deadline_ns);
        assert!(relay.at_ns >= fired.at_ns);
        println!(
            "watchdog 10 ms: fired {} µs after its deadline, relay closed {} µs after it",
            (fired.at_ns - deadline_ns) / 1_000,
            (relay.at_ns - deadline_ns) / 1_000
        );
        assert_eq!(guest.read_line(), "* fired relay=on\n");
        assert_eq!(
            guest.request("04 status\n"),
            "04 ok relay=on armed=0 timeout=10 fired=1 kicks=5\n"
        );
        assert_eq!(card.status().kicks, 5);
        // The guest recovers and opens the relay again.
        assert_eq!(guest.request("05 off\n"), "05 ok relay=off\n");
        assert_eq!(fabric.bypass_peer(a).unwrap(), None);
    }

    #[test]
    fn vm_death_closes_the_relay_and_a_new_vm_finds_it_closed() {
        let (fabric, a, b, card) = fabric_card("B");
        let mut guest = Guest::connect(&card);
        assert_eq!(guest.request("1 off\n"), "1 ok relay=off\n");
        assert_eq!(
            guest.request("2 arm 60000\n"),
            "2 ok armed=1 timeout=60000\n"
        );
        drop(guest); // QEMU killed
        card.wait_for_event(WAIT, |e| {
            e.kind
                == CardEventKind::RelaySwitched {
                    on: true,
                    cause: RelayCause::PowerLoss,
                }
        })
        .expect("relay closed on power loss");
        assert_eq!(fabric.bypass_peer(a).unwrap(), Some(b));
        let status = card.status();
        assert!(!status.connected && !status.armed && status.relay);

        let mut guest = Guest::connect(&card); // a new QEMU
        assert_eq!(
            guest.request("3 status\n"),
            "3 ok relay=on armed=0 timeout=60000 fired=0 kicks=0\n"
        );
        let connects = card
            .events()
            .iter()
            .filter(|e| e.kind == CardEventKind::Connected)
            .count();
        assert_eq!(connects, 2);
        card.set_relay(false).unwrap();
        assert_eq!(fabric.bypass_peer(a).unwrap(), None);
        // A refused switch is an error, not a panic: join the two ports in one segment.
        fabric.wire(a, b).unwrap();
        assert_eq!(guest.request("4 on\n"), "4 err relay\n");
    }

    #[test]
    fn garbage_is_answered_and_a_guest_that_never_reads_cannot_stall_kicks() {
        let (_fabric, _a, _b, card) = fabric_card("C");
        let mut guest = Guest::connect(&card);
        assert_eq!(guest.request("\u{1}on\n"), "- err bad-byte\n");
        assert_eq!(guest.request("on\n"), "- err parse\n");
        let long = "0 ".to_string() + &"x".repeat(200) + "\n";
        assert_eq!(guest.request(&long), "- err too-long\n");
        assert_eq!(guest.request("0 on\n"), "0 ok relay=on\n");

        // 2 MB of replies the guest never reads: far more than the socket buffers and
        // the reply queue hold. The card must keep reading (else this write would block
        // and time out) and drop replies.
        let garbage = "x\n".repeat(170_000);
        guest.send(&garbage);
        guest.send("1 arm 5\n");
        card.wait_for_event(WAIT, |e| {
            matches!(e.kind, CardEventKind::WatchdogFired { .. })
        })
        .expect("the arm after the garbage was read");
        let status = card.status();
        assert_eq!(status.protocol_errors, 3 + 170_000);
        assert!(status.replies_dropped > 0, "{status:?}");
    }

    #[test]
    fn measure_watchdog_precision() {
        let (_fabric, _a, _b, card) = fabric_card("D");
        let mut guest = Guest::connect(&card);
        let mut fired_late_us = Vec::new();
        let mut relay_late_us = Vec::new();
        for round in 0..20u32 {
            card.clear_events();
            assert!(
                guest
                    .request(&format!("{round:x} arm 5\n"))
                    .contains(" ok ")
            );
            let fired = card
                .wait_for_event(WAIT, |e| {
                    matches!(e.kind, CardEventKind::WatchdogFired { .. })
                })
                .expect("fired");
            let relay = card
                .wait_for_event(WAIT, |e| {
                    matches!(e.kind, CardEventKind::RelaySwitched { on: true, .. })
                })
                .expect("relay");
            let CardEventKind::WatchdogFired { deadline_ns, .. } = fired.kind else {
                unreachable!()
            };
            assert!(fired.at_ns >= deadline_ns);
            fired_late_us.push((fired.at_ns - deadline_ns) as f64 / 1_000.0);
            relay_late_us.push((relay.at_ns - deadline_ns) as f64 / 1_000.0);
            assert_eq!(guest.read_line(), "* fired relay=on\n");
            assert!(guest.request("ff off\n").contains(" ok "));
        }
        let summary = |values: &[f64]| {
            format!(
                "min {:.0} median {:.0} p90 {:.0} max {:.0} µs",
                percentile(values, 0.0).unwrap_or(0.0),
                median(values).unwrap_or(0.0),
                percentile(values, 90.0).unwrap_or(0.0),
                percentile(values, 100.0).unwrap_or(0.0)
            )
        };
        println!(
            "card watchdog 5 ms, 20 rounds: fired after deadline {}; relay closed after deadline {}",
            summary(&fired_late_us),
            summary(&relay_late_us)
        );
    }
}
