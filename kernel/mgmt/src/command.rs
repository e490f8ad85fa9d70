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
    (
        "show duplex [--json]",
        "duplex state, epoch, peers, path health, last transition, timers",
    ),
    ("failover", "Master: hand mastership to the best standby"),
    ("takeover", "standby: claim mastership now"),
    ("suspend", "take this node out of service until resume"),
    ("resume", "put a suspended node back in service"),
    ("reboot", "reset the appliance"),
];

/// The topics of `show`.
const SHOW_TOPICS: &str = "status, interfaces, bridge, watchdog, duplex";

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
            Some((&"watchdog", rest)) => {
                no_arguments("show watchdog", rest, Command::ShowWatchdog)?
            }
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
            assert!(parse(line).is_ok(), "{usage}");
        }
    }
}
