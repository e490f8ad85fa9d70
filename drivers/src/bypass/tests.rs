//! Host tests of the bypass driver against a fake card that speaks `SPEC.md`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::format;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

use super::*;
use crate::bypass::protocol::MAX_REQUEST_LENGTH;

/// A card in memory: answers each request line as the lab card does, with knobs to
/// misbehave.
#[derive(Default)]
struct FakeCard {
    /// Bytes on their way to the host.
    to_host: VecDeque<u8>,
    /// Every line the host sent (without LF), in order.
    lines: Vec<String>,
    partial: Vec<u8>,
    relay: bool,
    armed: bool,
    timeout_ms: u64,
    fired: bool,
    kicks: u64,
    /// `try_send` refuses this many more lines.
    busy_sends: u32,
    /// Receives see nothing for this many polls after each reply is queued.
    reply_delay_polls: u32,
    delay_left: u32,
    /// No replies at all.
    mute: bool,
    /// Lines queued before each reply (stray lines, notices, garbage).
    noise_before_reply: Vec<Vec<u8>>,
    /// Replies carry this sequence instead of the request's.
    wrong_sequence: Option<&'static str>,
    /// The version `hello` accepts.
    version: u32,
    /// Largest line the host sent.
    longest_line: usize,
}

impl FakeCard {
    fn new() -> Rc<RefCell<FakeCard>> {
        Rc::new(RefCell::new(FakeCard {
            version: 1,
            ..FakeCard::default()
        }))
    }

    fn take_bytes(&mut self, line: &[u8]) {
        self.longest_line = self.longest_line.max(line.len());
        for &byte in line {
            if byte == b'\n' {
                let text = String::from_utf8(core::mem::take(&mut self.partial)).unwrap();
                self.handle(&text);
                self.lines.push(text);
            } else {
                self.partial.push(byte);
            }
        }
    }

    fn queue(&mut self, line: &str) {
        self.to_host.extend(line.as_bytes());
        self.to_host.push_back(b'\n');
    }

    fn handle(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if line == "k" {
            self.kick();
            return;
        }
        let tokens: Vec<&str> = line.split(' ').collect();
        if self.mute {
            return;
        }
        for noise in core::mem::take(&mut self.noise_before_reply) {
            self.to_host.extend(noise);
        }
        let sequence = self.wrong_sequence.unwrap_or(tokens[0]);
        let reply = match (tokens.get(1).copied(), tokens.get(2)) {
            (Some("hello"), Some(v)) if v.parse::<u32>() == Ok(self.version) => {
                format!("ok version={v} card=fake min=5 max=60000")
            }
            (Some("hello"), _) => format!("err version max={}", self.version),
            (Some("on"), None) => {
                self.relay = true;
                String::from("ok relay=on")
            }
            (Some("off"), None) => {
                self.relay = false;
                String::from("ok relay=off")
            }
            (Some("arm"), Some(ms)) => match ms.parse::<u64>() {
                Ok(ms) if (1..=60_000).contains(&ms) => {
                    self.armed = true;
                    self.timeout_ms = ms;
                    self.fired = false;
                    format!("ok armed=1 timeout={ms}")
                }
                Ok(_) => String::from("err range min=5 max=60000"),
                Err(_) => String::from("err bad-argument"),
            },
            (Some("disarm"), None) => {
                self.armed = false;
                String::from("ok armed=0")
            }
            (Some("status"), None) => format!(
                "ok relay={} armed={} timeout={} fired={} kicks={} extra=ignored",
                if self.relay { "on" } else { "off" },
                u8::from(self.armed),
                self.timeout_ms,
                u8::from(self.fired),
                self.kicks
            ),
            _ => String::from("err unknown-command"),
        };
        self.queue(&format!("{sequence} {reply}"));
        self.delay_left = self.reply_delay_polls;
    }

    fn kick(&mut self) {
        self.kicks += 1;
    }

    /// The watchdog runs out.
    fn fire(&mut self) {
        self.armed = false;
        self.fired = true;
        self.relay = true;
        self.queue("* fired relay=on");
    }
}

/// One end of the fake line.
struct FakeLine(Rc<RefCell<FakeCard>>);

impl LineTransmitter for FakeLine {
    fn try_send(&mut self, line: &[u8]) -> bool {
        let mut card = self.0.borrow_mut();
        if card.busy_sends > 0 {
            card.busy_sends -= 1;
            return false;
        }
        card.take_bytes(line);
        true
    }
}

impl ByteStream for FakeLine {
    fn try_receive(&mut self) -> Option<u8> {
        let mut card = self.0.borrow_mut();
        if card.delay_left > 0 {
            card.delay_left -= 1;
            return None;
        }
        card.to_host.pop_front()
    }
}

const SMALL: Limits = Limits {
    kick_polls: 4,
    send_polls: 10,
    reply_polls: 1_000,
};

fn open(card: &Rc<RefCell<FakeCard>>) -> LabBypass<FakeLine> {
    let mut bypass = LabBypass::new(FakeLine(Rc::clone(card)), SMALL);
    let info = bypass.hello().unwrap();
    assert_eq!(
        info,
        CardInfo {
            version: 1,
            min_timeout: Duration::from_millis(5),
            max_timeout: Duration::from_secs(60),
        }
    );
    bypass
}

#[test]
fn hello_on_off_arm_kick_status() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    assert_eq!(bypass.name(), "lab-com2");
    bypass.set_bypass(true).unwrap();
    assert!(card.borrow().relay);
    bypass.set_bypass(false).unwrap();
    bypass.arm_watchdog(Duration::from_millis(10)).unwrap();
    bypass.kick().unwrap();
    let mut kicker = BypassKicker::new(FakeLine(Rc::clone(&card)), SMALL);
    kicker.kick().unwrap();
    kicker.kick().unwrap();
    assert_eq!(kicker.sent, 2);
    let status = bypass.status().unwrap();
    assert_eq!(
        status,
        BypassStatus {
            bypassing: false,
            watchdog_armed: true,
            watchdog_timeout: Duration::from_millis(10),
            watchdog_fired: false,
        }
    );
    assert_eq!(card.borrow().kicks, 3);
    bypass.disarm_watchdog().unwrap();
    assert!(!card.borrow().armed);
    let lines = card.borrow().lines.clone();
    assert_eq!(
        lines,
        [
            "",
            "00 hello 1",
            "01 on",
            "02 off",
            "03 arm 10",
            "k",
            "k",
            "k",
            "04 status",
            "05 disarm"
        ]
    );
    assert!(card.borrow().longest_line <= MAX_REQUEST_LENGTH);
    let counters = bypass.counters();
    assert_eq!(counters.requests, 6);
    assert_eq!(counters.kicks, 1);
    assert_eq!(
        counters.timeouts + counters.errors + counters.stray_lines,
        0
    );
}

#[test]
fn watchdog_fired_shows_in_status_and_notice_is_counted() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    bypass.arm_watchdog(Duration::from_millis(5)).unwrap();
    card.borrow_mut().fire();
    let status = bypass.status().unwrap();
    assert!(status.bypassing && status.watchdog_fired && !status.watchdog_armed);
    assert_eq!(bypass.counters().fired_notices, 1);
    // Re-arming clears `fired`; the relay stays closed until `off`.
    bypass.arm_watchdog(Duration::from_millis(5)).unwrap();
    let status = bypass.status().unwrap();
    assert!(status.bypassing && !status.watchdog_fired && status.watchdog_armed);
}

#[test]
fn poll_reports_fired_notices_without_a_request() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    assert_eq!(bypass.poll(), 0);
    bypass.arm_watchdog(Duration::from_millis(5)).unwrap();
    card.borrow_mut().fire();
    let requests = bypass.counters().requests;
    assert_eq!(bypass.poll(), 1);
    // Nothing new: the notice is counted once, and polling sent nothing.
    assert_eq!(bypass.poll(), 0);
    assert_eq!(bypass.counters().requests, requests);
    assert_eq!(bypass.counters().fired_notices, 1);
}

#[test]
fn noise_and_late_replies_are_skipped() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    card.borrow_mut().noise_before_reply = [
        &b"- err parse\n"[..],
        b"* fired relay=on\n",
        b"00 ok relay=on\n", // a late reply to an old request
        b"\xff\xfe garbage\n",
        b"\n",
        &[b'x'; 300],
        b"\n",
    ]
    .iter()
    .map(|l| l.to_vec())
    .collect();
    bypass.set_bypass(true).unwrap();
    let counters = bypass.counters();
    assert_eq!(counters.stray_lines, 2);
    assert_eq!(counters.fired_notices, 1);
    assert_eq!(counters.bad_lines, 1);
    assert_eq!(counters.timeouts, 0);
}

#[test]
fn stale_input_is_drained_before_a_request() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    card.borrow_mut().queue("* fired relay=on");
    card.borrow_mut().queue("7 ok");
    bypass.set_bypass(false).unwrap();
    assert_eq!(bypass.counters().fired_notices, 1);
    assert_eq!(bypass.counters().stray_lines, 1);
}

#[test]
fn slow_reply_within_the_bound_succeeds_and_beyond_it_times_out() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    card.borrow_mut().reply_delay_polls = 900;
    bypass.set_bypass(true).unwrap();
    card.borrow_mut().reply_delay_polls = 1_000;
    assert_eq!(bypass.set_bypass(false), Err(Error::Timeout));
    assert_eq!(bypass.counters().timeouts, 1);
    // The late reply is thrown away by the next request, which works.
    card.borrow_mut().reply_delay_polls = 0;
    card.borrow_mut().delay_left = 0;
    assert!(!bypass.status().unwrap().bypassing);
    assert_eq!(bypass.counters().stray_lines, 1);
}

#[test]
fn mute_card_times_out() {
    let card = FakeCard::new();
    card.borrow_mut().mute = true;
    let mut bypass = LabBypass::new(FakeLine(Rc::clone(&card)), SMALL);
    assert_eq!(bypass.hello(), Err(Error::Timeout));
    assert_eq!(bypass.card(), None);
    assert_eq!(bypass.status(), Err(Error::Timeout));
}

#[test]
fn wrong_sequence_is_not_taken_for_the_reply() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    card.borrow_mut().wrong_sequence = Some("fe");
    assert_eq!(bypass.set_bypass(true), Err(Error::Timeout));
    assert_eq!(bypass.counters().stray_lines, 1);
}

#[test]
fn busy_transmitter_skips_kicks_and_times_out_requests() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    card.borrow_mut().busy_sends = 4;
    assert_eq!(bypass.kick(), Err(Error::Busy));
    assert_eq!(bypass.counters().kicks_skipped, 1);
    card.borrow_mut().busy_sends = 3;
    assert_eq!(bypass.kick(), Ok(()));
    let mut kicker = BypassKicker::new(FakeLine(Rc::clone(&card)), SMALL);
    card.borrow_mut().busy_sends = 4;
    assert_eq!(kicker.kick(), Err(Error::Busy));
    assert_eq!(kicker.skipped, 1);
    card.borrow_mut().busy_sends = 10;
    assert_eq!(bypass.status(), Err(Error::Timeout));
    assert_eq!(card.borrow().kicks, 1);
}

#[test]
fn errors_map_to_hal_errors() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    // Checked locally against the range `hello` reported.
    assert_eq!(
        bypass.arm_watchdog(Duration::from_millis(4)),
        Err(Error::OutOfRange)
    );
    assert_eq!(
        bypass.arm_watchdog(Duration::from_secs(61)),
        Err(Error::OutOfRange)
    );
    assert_eq!(bypass.arm_watchdog(Duration::ZERO), Err(Error::OutOfRange));
    assert_eq!(
        bypass.arm_watchdog(Duration::from_secs(u64::MAX)),
        Err(Error::OutOfRange)
    );
    // Without `hello`, the card's own answer decides.
    let mut raw = LabBypass::new(FakeLine(Rc::clone(&card)), SMALL);
    assert_eq!(
        raw.arm_watchdog(Duration::from_millis(61_000)),
        Err(Error::OutOfRange)
    );
    assert_eq!(raw.counters().errors, 1);
    assert_eq!(
        raw.request("frobnicate", None, |_| Ok(())),
        Err(Error::Unsupported)
    );
    // Fractions of a millisecond round up.
    bypass.arm_watchdog(Duration::from_micros(5_500)).unwrap();
    assert_eq!(card.borrow().timeout_ms, 6);
    assert_eq!(timeout_millis(Duration::from_micros(1)), Ok(1));
    assert_eq!(timeout_millis(Duration::from_millis(7)), Ok(7));
}

#[test]
fn card_of_another_version_is_refused() {
    let card = FakeCard::new();
    card.borrow_mut().version = 2;
    let mut bypass = LabBypass::new(FakeLine(Rc::clone(&card)), SMALL);
    assert_eq!(bypass.hello(), Err(Error::Unsupported));
}

#[test]
fn sequence_wraps_after_256_requests() {
    let card = FakeCard::new();
    let mut bypass = open(&card);
    for _ in 0..300 {
        bypass.status().unwrap();
    }
    let lines = card.borrow().lines.clone();
    assert_eq!(lines.last().map(String::as_str), Some("2c status"));
    assert!(lines.iter().any(|l| l == "ff status"));
}
