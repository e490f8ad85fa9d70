//! Console commands.
//!
//! A line is split on white space; the first word (two for `show ...`) names the
//! command. Every command checks its arguments; anything it does not know is an error
//! with a one-line message, never a guess.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`: list the commands.
    Help,
    /// `version`: the image's name, version and build.
    Version,
    /// `uptime`: time since boot.
    Uptime,
    /// `pci`: the PCI functions found at boot.
    Pci,
    /// `stats`: timer ticks, clock, heap and interrupt counters.
    Stats,
    /// `reboot`: reset the appliance.
    Reboot,
    /// `show status [--json]`: node, uptime and state in one view.
    ShowStatus {
        /// One JSON line instead of text.
        json: bool,
    },
    /// `show interfaces`: ports, link, driver and bridge counters.
    ShowInterfaces,
    /// `show bridge`: the MAC table.
    ShowBridge,
    /// `show watchdog`: the hardware watchdog in use.
    ShowWatchdog,
    /// `show bypass`: the bypass card (relay, its watchdog, kicks).
    ShowBypass,
    /// `show duplex [--json]`: state, epoch, peers, per-path health, last transition, timers.
    ShowDuplex {
        /// One JSON line instead of text.
        json: bool,
    },
    /// `failover`: hand mastership to the peer on purpose.
    Failover,
    /// `takeover`: a standby claims mastership now.
    TakeOver,
    /// `suspend`: take this node out until `resume`.
    Suspend,
    /// `resume`: undo `suspend`.
    Resume,
    /// `show liveness`: the services the timer interrupt watches.
    ShowLiveness,
    /// `debug hang-loop`: the main loop spins forever (interrupts stay on).
    DebugHangLoop,
    /// `debug hang-isr`: interrupts off and spin forever (the timer interrupt dies too).
    DebugHangIsr,
    /// `debug stall SERVICE MS`: a service stops proving it runs for MS milliseconds.
    DebugStall {
        /// The service's name.
        service: String,
        /// How long, in ms.
        ms: u32,
    },
    /// `show log [--json]`: the replicated state log: device, sequences, role, replication,
    /// recovery report.
    ShowLog {
        /// One JSON line instead of text.
        json: bool,
    },
    /// `log write TEXT`: log an operator note with `log_async` (returns at once).
    LogWrite {
        /// The note (the words after `write`, joined by single spaces).
        text: String,
    },
    /// `log sync TEXT`: log an operator note with `log_sync`; answers once it is on the
    /// local disk and acknowledged by the peer, or with an error after a bounded wait.
    LogSync {
        /// The note.
        text: String,
    },
    /// `log dump [N]`: the operator notes the log holds (the last `N`, default all) and,
    /// without `N`, the bridge table as logged (primary) or replicated (standby).
    LogDump {
        /// How many of the newest notes to list; `None`: all.
        last: Option<usize>,
    },
    /// `log checkpoint`: write a checkpoint (snapshot of the logged state) now.
    LogCheckpoint,
    /// `log bench COUNT SIZE [RATE]`: log `COUNT` records of `SIZE` bytes at `RATE`
    /// records per second (0 or absent: as fast as the log takes them) and print one JSON
    /// line of measurements when done.
    LogBench {
        /// Records to log.
        count: u32,
        /// Payload bytes of each.
        size: u32,
        /// Records per second; 0 for as fast as possible.
        rate: u32,
    },
}

/// Every command with its one-line help, in the order `help` lists them.
pub const HELP: &[(&str, &str)] = &[
    ("help", "list the commands"),
    ("version", "image name, version and build"),
    ("uptime", "time since boot"),
    ("pci", "PCI functions found at boot"),
    ("stats", "timer ticks, clock, heap and interrupt counters"),
    (
        "show status [--json]",
        "node, uptime and state (--json: one line for scripts)",
    ),
    (
        "show interfaces",
        "ports, link state, driver and bridge counters",
    ),
    ("show bridge", "the bridge's MAC table"),
    ("show watchdog", "the hardware watchdog in use"),
    ("show bypass", "the bypass card: relay, its watchdog, kicks"),
    (
        "show duplex [--json]",
        "duplex state, epoch, peers, path health, last transition, timers",
    ),
    ("failover", "Master: hand mastership to the best standby"),
    ("takeover", "standby: claim mastership now"),
    ("suspend", "take this node out of service until resume"),
    ("resume", "put a suspended node back in service"),
    ("show liveness", "the services the timer interrupt watches"),
    (
        "debug hang-loop",
        "fault injection: hang the main loop (interrupts stay on)",
    ),
    (
        "debug hang-isr",
        "fault injection: interrupts off, hang (the watchdog must reset)",
    ),
    (
        "debug stall SERVICE MS",
        "fault injection: SERVICE stops reporting for MS ms",
    ),
    (
        "show log [--json]",
        "replicated state log: device, sequences, role, replication, recovery",
    ),
    (
        "log write TEXT",
        "log an operator note (log_async: returns at once)",
    ),
    (
        "log sync TEXT",
        "log a note and wait until it is on disk and acknowledged by the peer",
    ),
    (
        "log dump [N]",
        "the notes in the log (the last N) and the logged bridge table",
    ),
    (
        "log checkpoint",
        "write a checkpoint of the logged state now",
    ),
    (
        "log bench COUNT SIZE [RATE]",
        "log COUNT records of SIZE bytes at RATE/s; prints one JSON line when done",
    ),
    ("reboot", "reset the appliance"),
];

/// The topics of `show`.
const SHOW_TOPICS: &str = "status, interfaces, bridge, watchdog, bypass, duplex, log, liveness";

/// The subcommands of `log`.
const LOG_SUBCOMMANDS: &str = "write, sync, dump, checkpoint, bench";

/// Longest operator note `log write` / `log sync` take, in bytes.
pub const MAX_NOTE_LEN: usize = 200;

/// Reads the note of `log write` / `log sync`.
fn note(name: &str, rest: &[&str]) -> Result<String, CommandError> {
    if rest.is_empty() {
        return Err(CommandError(format!("'{name}' needs a text")));
    }
    let text = rest.join(" ");
    if text.len() > MAX_NOTE_LEN {
        return Err(CommandError(format!(
            "'{name}': the text is {} bytes, at most {MAX_NOTE_LEN} are allowed",
            text.len()
        )));
    }
    Ok(text)
}

/// Reads a decimal number argument of `name`.
fn number<T: core::str::FromStr>(name: &str, what: &str, word: &str) -> Result<T, CommandError> {
    word.parse()
        .map_err(|_| CommandError(format!("'{name}': {what} '{word}' is not a number")))
}

/// Parses `log ...`.
fn parse_log(rest: &[&str]) -> Result<Command, CommandError> {
    let Some((&sub, rest)) = rest.split_first() else {
        return Err(CommandError(format!(
            "'log' needs a subcommand ({LOG_SUBCOMMANDS})"
        )));
    };
    match sub {
        "write" => Ok(Command::LogWrite {
            text: note("log write", rest)?,
        }),
        "sync" => Ok(Command::LogSync {
            text: note("log sync", rest)?,
        }),
        "dump" => match rest {
            [] => Ok(Command::LogDump { last: None }),
            [n] => Ok(Command::LogDump {
                last: Some(number("log dump", "count", n)?),
            }),
            [_, extra, ..] => Err(CommandError(format!(
                "'log dump' takes at most one number (got '{extra}')"
            ))),
        },
        "checkpoint" => no_arguments("log checkpoint", rest, Command::LogCheckpoint),
        "bench" => {
            let (count, size, rate) = match rest {
                [count, size] => (count, size, &"0"),
                [count, size, rate] => (count, size, rate),
                _ => {
                    return Err(CommandError(String::from(
                        "'log bench' takes COUNT SIZE [RATE]",
                    )));
                }
            };
            let count: u32 = number("log bench", "count", count)?;
            let size: u32 = number("log bench", "size", size)?;
            let rate: u32 = number("log bench", "rate", rate)?;
            if count == 0 || count > 1_000_000 || size > 65_536 {
                return Err(CommandError(String::from(
                    "'log bench': COUNT must be 1-1000000 and SIZE at most 65536",
                )));
            }
            Ok(Command::LogBench { count, size, rate })
        }
        other => Err(CommandError(format!(
            "'log' has no subcommand '{other}' ({LOG_SUBCOMMANDS})"
        ))),
    }
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn no_arguments(name: &str, rest: &[&str], command: Command) -> Result<Command, CommandError> {
    match rest.first() {
        None => Ok(command),
        Some(extra) => Err(CommandError(format!(
            "'{name}' takes no arguments (got '{extra}')"
        ))),
    }
}

/// Reads flags for a command that accepts only `--json`.
fn json_flag(name: &str, rest: &[&str]) -> Result<bool, CommandError> {
    let mut json = false;
    for word in rest {
        match *word {
            "--json" => json = true,
            other => {
                return Err(CommandError(format!(
                    "'{name}' does not take '{other}' (it takes: --json)"
                )));
            }
        }
    }
    Ok(json)
}

/// Parses one line. `Ok(None)` for an empty line.
pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let Some((&first, rest)) = words.split_first() else {
        return Ok(None);
    };
    let command = match first {
        "help" | "?" => no_arguments("help", rest, Command::Help)?,
        "version" => no_arguments(first, rest, Command::Version)?,
        "uptime" => no_arguments(first, rest, Command::Uptime)?,
        "pci" => no_arguments(first, rest, Command::Pci)?,
        "stats" => no_arguments(first, rest, Command::Stats)?,
        "reboot" => no_arguments(first, rest, Command::Reboot)?,
        "failover" => no_arguments(first, rest, Command::Failover)?,
        "takeover" => no_arguments(first, rest, Command::TakeOver)?,
        "suspend" => no_arguments(first, rest, Command::Suspend)?,
        "resume" => no_arguments(first, rest, Command::Resume)?,
        "debug" => match rest {
            ["hang-loop"] => Command::DebugHangLoop,
            ["hang-isr"] => Command::DebugHangIsr,
            ["stall", service, ms] => match ms.parse::<u32>() {
                Ok(ms) if (1..=600_000).contains(&ms) => Command::DebugStall {
                    service: String::from(*service),
                    ms,
                },
                _ => {
                    return Err(CommandError(format!(
                        "debug stall: '{ms}' is not a duration in ms (1-600000)"
                    )));
                }
            },
            _ => {
                return Err(CommandError(String::from(
                    "usage: debug hang-loop | debug hang-isr | debug stall SERVICE MS",
                )));
            }
        },
        "log" => parse_log(rest)?,
        "show" => match rest.split_first() {
            Some((&"status", flags)) => Command::ShowStatus {
                json: json_flag("show status", flags)?,
            },
            Some((&"interfaces", rest)) => {
                no_arguments("show interfaces", rest, Command::ShowInterfaces)?
            }
            Some((&"bridge", rest)) => no_arguments("show bridge", rest, Command::ShowBridge)?,
            Some((&"duplex", flags)) => Command::ShowDuplex {
                json: json_flag("show duplex", flags)?,
            },
            Some((&"liveness", rest)) => {
                no_arguments("show liveness", rest, Command::ShowLiveness)?
            }
            Some((&"watchdog", rest)) => {
                no_arguments("show watchdog", rest, Command::ShowWatchdog)?
            }
            Some((&"bypass", rest)) => no_arguments("show bypass", rest, Command::ShowBypass)?,
            Some((&"log", flags)) => Command::ShowLog {
                json: json_flag("show log", flags)?,
            },
            Some((topic, _)) => {
                return Err(CommandError(format!(
                    "'show' has no topic '{topic}' (topics: {SHOW_TOPICS})"
                )));
            }
            None => {
                return Err(CommandError(format!(
                    "'show' needs a topic (topics: {SHOW_TOPICS})"
                )));
            }
        },
        other => {
            return Err(CommandError(format!(
                "unknown command '{other}' (type 'help' for the list)"
            )));
        }
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("  version "), Ok(Some(Command::Version)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(
            parse("show status --json"),
            Ok(Some(Command::ShowStatus { json: true }))
        );
        assert_eq!(
            parse("show status"),
            Ok(Some(Command::ShowStatus { json: false }))
        );
    }

    #[test]
    fn bad_lines_get_one_line_errors() {
        let cases = [
            ("bogus", "unknown command 'bogus'"),
            ("uptime now", "'uptime' takes no arguments (got 'now')"),
            ("show", "'show' needs a topic"),
            ("show weather", "'show' has no topic 'weather'"),
            ("show status --yaml", "does not take '--yaml'"),
        ];
        for (line, want) in cases {
            let err = parse(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn every_command_has_help() {
        for (usage, _) in HELP {
            let line = usage.split(" [").next().unwrap_or(usage);
            // Placeholders in upper case stand for values.
            let line = line
                .replace("COUNT", "10")
                .replace("SIZE", "64")
                .replace("TEXT", "hello")
                .replace("SERVICE MS", "main-loop 10");
            assert!(parse(&line).is_ok(), "{usage}");
        }
    }

    #[test]
    fn log_commands() {
        assert_eq!(
            parse("show log --json"),
            Ok(Some(Command::ShowLog { json: true }))
        );
        assert_eq!(
            parse("log write  hello   world"),
            Ok(Some(Command::LogWrite {
                text: "hello world".to_string()
            }))
        );
        assert_eq!(
            parse("log sync x"),
            Ok(Some(Command::LogSync {
                text: "x".to_string()
            }))
        );
        assert_eq!(parse("log dump"), Ok(Some(Command::LogDump { last: None })));
        assert_eq!(
            parse("log dump 5"),
            Ok(Some(Command::LogDump { last: Some(5) }))
        );
        assert_eq!(parse("log checkpoint"), Ok(Some(Command::LogCheckpoint)));
        assert_eq!(
            parse("log bench 100 64"),
            Ok(Some(Command::LogBench {
                count: 100,
                size: 64,
                rate: 0
            }))
        );
        assert_eq!(
            parse("log bench 100 64 500"),
            Ok(Some(Command::LogBench {
                count: 100,
                size: 64,
                rate: 500
            }))
        );
        let long = "x".repeat(MAX_NOTE_LEN + 1);
        let cases = [
            ("log", "'log' needs a subcommand"),
            ("log erase", "'log' has no subcommand 'erase'"),
            ("log write", "'log write' needs a text"),
            ("log dump many", "'log dump': count 'many' is not a number"),
            ("log dump 1 2", "at most one number"),
            ("log bench 10", "COUNT SIZE [RATE]"),
            ("log bench 0 64", "COUNT must be"),
            ("log bench 10 100000", "SIZE at most"),
            ("log checkpoint now", "takes no arguments"),
            ("show log --yaml", "does not take '--yaml'"),
        ];
        for (line, want) in cases {
            let err = parse(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
        let err = parse(&format!("log sync {long}")).unwrap_err().to_string();
        assert!(err.contains("at most 200"), "{err}");
    }
}
