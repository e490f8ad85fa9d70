//! The boot command line.
//!
//! Syntax: words separated by spaces, each `key=value`. Every key is known and typed;
//! an unknown key, a missing `=` or a bad value is rejected with a message that names
//! the word and what was expected, and the rest of the line still applies (an
//! appliance must boot even when one option is mistyped; the console shows the errors
//! under `show status`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A deliberate fault at boot, for tests of the fault paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelfTest {
    /// Nothing.
    #[default]
    None,
    /// Read from an unmapped address (page fault report, failure exit).
    PageFault,
    /// Divide by zero (exception report, failure exit).
    DivideError,
    /// Call `panic!` (panic report, failure exit).
    Panic,
}

/// Which device drives the 1 kHz tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimerChoice {
    /// Local APIC timer where present, else the PIT.
    #[default]
    Auto,
    /// The i8254 PIT through the 8259 PIC.
    Pit,
}

/// Which hardware watchdog to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogChoice {
    /// The best one present: i6300ESB (ms resolution), else iTCO (1.2 s steps), else none.
    #[default]
    Auto,
    /// The ICH9 TCO watchdog.
    Itco,
    /// The Intel 6300ESB.
    I6300Esb,
    /// No hardware watchdog (the liveness monitor still runs).
    None,
}

/// An IPv4 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub address: [u8; 4],
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

/// The typed boot options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// This node's id within its Duplex group (`node=1..255`).
    pub node: u8,
    /// A deliberate fault at boot (`selftest=none|pagefault|divide|panic`).
    pub selftest: SelfTest,
    /// Tick source (`timer=auto|pit`).
    pub timer: TimerChoice,
    /// Management address (`ip=10.0.0.1/24`).
    pub ip: Option<Ipv4Cidr>,
    /// Hardware watchdog (`watchdog=auto|itco|i6300esb|none`).
    pub watchdog: WatchdogChoice,
    /// Hardware watchdog timeout in ms (`watchdog_ms=N`); `None`: the device's default.
    pub watchdog_ms: Option<u32>,
    /// Duplex mode (`mode=parallel|serial|standalone`).
    pub mode: DuplexMode,
    /// Priority in the election, higher wins (`priority=0..255`).
    pub priority: u8,
    /// Duplex group number, 1-65535 (`group=N`).
    pub group: u16,
    /// The pair's shared secret for heartbeat authentication (`key=TEXT`, at least 8
    /// characters); `None`: a built-in lab key (the console warns).
    pub key: Option<String>,
    /// Heartbeat interval in microseconds (`hb_us=N`, 250-100000).
    pub heartbeat_us: u32,
    /// Boot incarnation override (`incarnation=N`); `None`: from the real-time clock.
    pub incarnation: Option<u32>,
    /// The replicated state log (`log=on|off|format`).
    pub log: LogChoice,
    /// Serial mode: which bridged port faces the other box (`peer=lan|wan`). `None`
    /// outside serial mode; serial mode without it refuses to join a pair.
    pub peer: Option<PeerPort>,
    /// The bypass card's watchdog timeout in ms (`bypass_ms=N`): how long a hung box
    /// stays in the path before its relay closes.
    pub bypass_ms: u32,
    /// Missing-traffic timeout in ms for the bridged ports (`traffic_ms=N`, 0: off).
    pub traffic_ms: u32,
}

/// Which bridged port of a serial box is the link to the other box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPort {
    /// The LAN port (the downstream box: the other box is on its LAN side).
    Lan,
    /// The WAN port (the upstream box).
    Wan,
}

/// What to do with the replicated state log's block device at boot (`log=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogChoice {
    /// Open the log on the first virtio-blk device and recover it; format a device that
    /// carries no log yet (never one that carries a damaged or foreign one).
    #[default]
    On,
    /// No state log.
    Off,
    /// Format the device (everything on it is lost), then run as with `on`.
    Format,
}

/// How the appliance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplexMode {
    /// One box of a parallel pair (both see the same LAN and WAN).
    #[default]
    Parallel,
    /// One box of a serial pair (in series, each with a bypass relay).
    Serial,
    /// A single bridge: no heartbeats, always forwarding.
    Standalone,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            node: 1,
            selftest: SelfTest::None,
            timer: TimerChoice::Auto,
            ip: None,
            watchdog: WatchdogChoice::Auto,
            watchdog_ms: None,
            mode: DuplexMode::Parallel,
            priority: 100,
            group: 1,
            key: None,
            heartbeat_us: 1000,
            incarnation: None,
            log: LogChoice::On,
            peer: None,
            bypass_ms: 10,
            traffic_ms: 0,
        }
    }
}

/// Every key the parser knows, with its expected value, for error messages and `help`.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    ("node", "a node id 1-255"),
    ("selftest", "none, pagefault, divide or panic"),
    ("timer", "auto or pit"),
    ("ip", "an IPv4 address with prefix, like 10.0.0.1/24"),
    ("watchdog", "auto, itco, i6300esb or none"),
    ("watchdog_ms", "a timeout in ms, 1-3600000"),
    ("mode", "parallel, serial or standalone"),
    ("priority", "a priority 0-255 (higher wins)"),
    ("group", "a group number 1-65535"),
    ("key", "a shared secret of 8-64 printable characters"),
    ("hb_us", "a heartbeat interval in microseconds, 250-100000"),
    ("incarnation", "a boot number 1-4294967295"),
    ("log", "on, off or format"),
    (
        "peer",
        "lan or wan (serial mode: the port facing the other box)",
    ),
    ("bypass_ms", "a bypass-card watchdog timeout in ms, 2-60000"),
    (
        "traffic_ms",
        "a missing-traffic timeout in ms, 0 (off) or 10-3600000",
    ),
];

/// One rejected word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The word as written.
    pub word: String,
    /// What was wrong.
    pub message: String,
}

impl core::fmt::Display for OptionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "boot option '{}' rejected: {}", self.word, self.message)
    }
}

fn known_list() -> String {
    let names: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
    names.join(", ")
}

fn expected(key: &str) -> &'static str {
    KNOWN_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("", |(_, e)| *e)
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for byte in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *byte = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses `a.b.c.d/p`.
pub fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (address, prefix) = s.split_once('/')?;
    let address = parse_ipv4(address)?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(Ipv4Cidr { address, prefix })
}

/// Parses the command line. Returns the options (defaults where a word was rejected)
/// and every rejected word.
pub fn parse(cmdline: &str) -> (BootOptions, Vec<OptionError>) {
    let mut options = BootOptions::default();
    let mut errors = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        let reject = |message: String| OptionError {
            word: String::from(word),
            message,
        };
        let Some((key, value)) = word.split_once('=') else {
            errors.push(reject(format!(
                "expected key=value (known keys: {})",
                known_list()
            )));
            continue;
        };
        let bad_value = || format!("'{value}' is not {}", expected(key));
        match key {
            "node" => match value.parse::<u8>() {
                Ok(n) if n >= 1 => options.node = n,
                _ => errors.push(reject(bad_value())),
            },
            "selftest" => match value {
                "none" => options.selftest = SelfTest::None,
                "pagefault" => options.selftest = SelfTest::PageFault,
                "divide" => options.selftest = SelfTest::DivideError,
                "panic" => options.selftest = SelfTest::Panic,
                _ => errors.push(reject(bad_value())),
            },
            "timer" => match value {
                "auto" => options.timer = TimerChoice::Auto,
                "pit" => options.timer = TimerChoice::Pit,
                _ => errors.push(reject(bad_value())),
            },
            "ip" => match parse_cidr(value) {
                Some(cidr) => options.ip = Some(cidr),
                None => errors.push(reject(bad_value())),
            },
            "watchdog" => match value {
                "auto" => options.watchdog = WatchdogChoice::Auto,
                "itco" => options.watchdog = WatchdogChoice::Itco,
                "i6300esb" => options.watchdog = WatchdogChoice::I6300Esb,
                "none" => options.watchdog = WatchdogChoice::None,
                _ => errors.push(reject(bad_value())),
            },
            "mode" => match value {
                "parallel" => options.mode = DuplexMode::Parallel,
                "serial" => options.mode = DuplexMode::Serial,
                "standalone" => options.mode = DuplexMode::Standalone,
                _ => errors.push(reject(bad_value())),
            },
            "priority" => match value.parse::<u8>() {
                Ok(p) => options.priority = p,
                _ => errors.push(reject(bad_value())),
            },
            "group" => match value.parse::<u16>() {
                Ok(g) if g >= 1 => options.group = g,
                _ => errors.push(reject(bad_value())),
            },
            "key" => {
                if (8..=64).contains(&value.len()) {
                    options.key = Some(String::from(value));
                } else {
                    errors.push(reject(bad_value()));
                }
            }
            "hb_us" => match value.parse::<u32>() {
                Ok(us) if (250..=100_000).contains(&us) => options.heartbeat_us = us,
                _ => errors.push(reject(bad_value())),
            },
            "incarnation" => match value.parse::<u32>() {
                Ok(n) if n >= 1 => options.incarnation = Some(n),
                _ => errors.push(reject(bad_value())),
            },
            "log" => match value {
                "on" => options.log = LogChoice::On,
                "off" => options.log = LogChoice::Off,
                "format" => options.log = LogChoice::Format,
                _ => errors.push(reject(bad_value())),
            },
            "peer" => match value {
                "lan" => options.peer = Some(PeerPort::Lan),
                "wan" => options.peer = Some(PeerPort::Wan),
                _ => errors.push(reject(bad_value())),
            },
            "bypass_ms" => match value.parse::<u32>() {
                Ok(ms) if (2..=60_000).contains(&ms) => options.bypass_ms = ms,
                _ => errors.push(reject(bad_value())),
            },
            "traffic_ms" => match value.parse::<u32>() {
                Ok(ms) if ms == 0 || (10..=3_600_000).contains(&ms) => options.traffic_ms = ms,
                _ => errors.push(reject(bad_value())),
            },
            "watchdog_ms" => match value.parse::<u32>() {
                Ok(ms) if (1..=3_600_000).contains(&ms) => options.watchdog_ms = Some(ms),
                _ => errors.push(reject(bad_value())),
            },
            _ => errors.push(reject(format!(
                "unknown key '{key}' (known keys: {})",
                known_list()
            ))),
        }
    }
    (options, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn empty_line_gives_defaults() {
        assert_eq!(parse(""), (BootOptions::default(), Vec::new()));
    }

    #[test]
    fn typed_values() {
        let (o, e) = parse(
            "node=2  selftest=pagefault timer=pit ip=10.1.2.3/24 watchdog=itco watchdog_ms=2400",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.watchdog, WatchdogChoice::Itco);
        assert_eq!(o.watchdog_ms, Some(2400));
        assert_eq!(o.node, 2);
        assert_eq!(o.selftest, SelfTest::PageFault);
        assert_eq!(o.timer, TimerChoice::Pit);
        assert_eq!(
            o.ip,
            Some(Ipv4Cidr {
                address: [10, 1, 2, 3],
                prefix: 24
            })
        );
    }

    #[test]
    fn duplex_options() {
        let (o, e) =
            parse("mode=serial priority=200 group=7 key=sekrit-pass hb_us=2000 incarnation=9");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.mode, DuplexMode::Serial);
        assert_eq!(
            (o.priority, o.group, o.heartbeat_us, o.incarnation),
            (200, 7, 2000, Some(9))
        );
        assert_eq!(o.key.as_deref(), Some("sekrit-pass"));
        let (_, e) = parse("mode=triple priority=256 group=0 key=short hb_us=10 incarnation=0");
        assert_eq!(e.len(), 6, "{e:?}");
    }

    #[test]
    fn serial_options() {
        let o = parse("").0;
        assert_eq!((o.peer, o.bypass_ms, o.traffic_ms), (None, 10, 0));
        let (o, e) = parse("mode=serial peer=lan bypass_ms=8 traffic_ms=500");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            (o.peer, o.bypass_ms, o.traffic_ms),
            (Some(PeerPort::Lan), 8, 500)
        );
        assert_eq!(parse("peer=wan traffic_ms=0").0.peer, Some(PeerPort::Wan));
        let (o, e) = parse("peer=up bypass_ms=1 bypass_ms=60001 traffic_ms=5");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].message.contains("lan or wan"), "{e:?}");
        assert_eq!((o.peer, o.bypass_ms, o.traffic_ms), (None, 10, 0));
    }

    #[test]
    fn log_option() {
        assert_eq!(parse("").0.log, LogChoice::On);
        assert_eq!(parse("log=off").0.log, LogChoice::Off);
        assert_eq!(parse("log=format").0.log, LogChoice::Format);
        let (o, e) = parse("log=maybe");
        assert_eq!(o.log, LogChoice::On);
        assert!(e[0].message.contains("on, off or format"), "{e:?}");
    }

    #[test]
    fn unknown_and_bad_words_are_rejected_and_the_rest_applies() {
        let (o, e) = parse("colour=blue node=0 quiet node=7 ip=1.2.3/8 ip=1.2.3.4/33");
        assert_eq!(o.node, 7);
        assert_eq!(o.ip, None);
        assert_eq!(e.len(), 5);
        assert!(e[0].message.contains("unknown key 'colour'"));
        assert!(e[0].message.contains("node, selftest"));
        assert!(
            e[1].to_string()
                .contains("'node=0' rejected: '0' is not a node id 1-255")
        );
        assert!(e[2].message.contains("expected key=value"));
    }

    #[test]
    fn ipv4_parser_is_strict() {
        assert_eq!(parse_ipv4("192.168.0.1"), Some([192, 168, 0, 1]));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "a.b.c.d",
            "1..2.3",
            "+1.2.3.4",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }
}
