//! The host side of the bypass line protocol (`SPEC.md`): request lines out, reply
//! lines in. No I/O and no allocation: requests are formatted into a fixed buffer and
//! replies are parsed in place.

use duplex_hal::{Error, Result};

/// The longest request line the host sends, line feed included: the 16550's FIFO.
pub const MAX_REQUEST_LENGTH: usize = 16;
/// The longest line either side may send, line feed included.
pub const MAX_LINE_LENGTH: usize = 128;
/// The protocol version this driver speaks.
pub const VERSION: u32 = 1;
/// The kick line: no sequence, no reply.
pub const KICK_LINE: &[u8] = b"k\n";

/// A request line being built in a fixed buffer.
#[derive(Clone, Copy)]
pub struct RequestLine {
    bytes: [u8; MAX_REQUEST_LENGTH],
    length: usize,
}

impl RequestLine {
    /// `"SS command[ argument]\n"`, with `sequence` as two lower-case hex digits.
    /// [`Error::OutOfRange`] when the line would not fit [`MAX_REQUEST_LENGTH`].
    pub fn new(sequence: u8, command: &str, argument: Option<u64>) -> Result<RequestLine> {
        let mut line = RequestLine {
            bytes: [0; MAX_REQUEST_LENGTH],
            length: 0,
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        line.push(HEX[usize::from(sequence >> 4)])?;
        line.push(HEX[usize::from(sequence & 0x0f)])?;
        line.push(b' ')?;
        for &byte in command.as_bytes() {
            line.push(byte)?;
        }
        if let Some(value) = argument {
            line.push(b' ')?;
            line.push_decimal(value)?;
        }
        line.push(b'\n')?;
        Ok(line)
    }

    fn push(&mut self, byte: u8) -> Result {
        let slot = self.bytes.get_mut(self.length).ok_or(Error::OutOfRange)?;
        *slot = byte;
        self.length += 1;
        Ok(())
    }

    fn push_decimal(&mut self, value: u64) -> Result {
        let mut digits = [0u8; 20];
        let mut count = 0;
        let mut rest = value;
        loop {
            digits[count] = b'0' + (rest % 10) as u8;
            count += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for &digit in digits[..count].iter().rev() {
            self.push(digit)?;
        }
        Ok(())
    }

    /// The line, line feed included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.length]
    }
}

/// Who a line from the card is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee {
    /// A reply to the request with this sequence number.
    Request(u16),
    /// An error about a line that had no sequence (`- err ...`).
    Unsequenced,
}

/// A line from the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardLine<'a> {
    /// `S ok fields...` or `- ok ...`.
    Ok {
        /// Which request it answers.
        to: Addressee,
        /// The `key=value` fields.
        fields: Fields<'a>,
    },
    /// `S err reason fields...` or `- err reason ...`.
    Err {
        /// Which request it answers.
        to: Addressee,
        /// The reason token (`range`, `version`...).
        reason: &'a str,
        /// The `key=value` fields after the reason.
        fields: Fields<'a>,
    },
    /// `* event fields...`: something the card did by itself.
    Notice {
        /// The event token (`fired`).
        event: &'a str,
        /// Its fields.
        fields: Fields<'a>,
    },
}

/// Why a line from the card could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// A byte outside printable ASCII.
    BadByte,
    /// The line is empty.
    Empty,
    /// The first token is neither a sequence, `-`, nor `*`.
    BadAddressee,
    /// The second token is neither `ok` nor `err`, or `err` has no reason.
    BadStatus,
}

/// The `key=value` fields of a line, read lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    text: &'a str,
}

impl<'a> Fields<'a> {
    /// The value of `key`, if the line has it (the first one if it has several).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.text
            .split(' ')
            .filter(|token| !token.is_empty())
            .find_map(|token| {
                let (k, v) = token.split_once('=')?;
                (k == key).then_some(v)
            })
    }

    /// The value of `key` as a decimal number.
    pub fn number(&self, key: &str) -> Option<u64> {
        parse_decimal(self.get(key)?)
    }

    /// The value of `key` as a flag: `1`/`on` is true, `0`/`off` false.
    pub fn flag(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "1" | "on" => Some(true),
            "0" | "off" => Some(false),
            _ => None,
        }
    }
}

/// Parses an unsigned decimal number (1 to 19 digits, no sign).
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.bytes().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// Parses a sequence token: 1 to 4 lower-case hex digits.
pub fn parse_sequence(token: &str) -> Option<u16> {
    if token.is_empty()
        || token.len() > 4
        || !token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u16::from_str_radix(token, 16).ok()
}

/// Parses one line from the card, without its line feed (a trailing CR is allowed).
pub fn parse_card_line(line: &[u8]) -> core::result::Result<CardLine<'_>, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
        return Err(LineError::BadByte);
    }
    // All bytes are ASCII, so this cannot fail; an error is still handled.
    let text = core::str::from_utf8(line).map_err(|_| LineError::BadByte)?;
    let text = text.trim_start_matches(' ');
    if text.trim_end_matches(' ').is_empty() {
        return Err(LineError::Empty);
    }
    let (first, rest) = split_token(text);
    if first == "*" {
        let (event, fields) = split_token(rest);
        if event.is_empty() {
            return Err(LineError::BadStatus);
        }
        return Ok(CardLine::Notice {
            event,
            fields: Fields { text: fields },
        });
    }
    let to = if first == "-" {
        Addressee::Unsequenced
    } else {
        Addressee::Request(parse_sequence(first).ok_or(LineError::BadAddressee)?)
    };
    let (status, rest) = split_token(rest);
    match status {
        "ok" => Ok(CardLine::Ok {
            to,
            fields: Fields { text: rest },
        }),
        "err" => {
            let (reason, fields) = split_token(rest);
            if reason.is_empty() {
                return Err(LineError::BadStatus);
            }
            Ok(CardLine::Err {
                to,
                reason,
                fields: Fields { text: fields },
            })
        }
        _ => Err(LineError::BadStatus),
    }
}

/// The first space-separated token of `text` and the rest after it.
fn split_token(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches(' ');
    match text.split_once(' ') {
        Some((token, rest)) => (token, rest.trim_start_matches(' ')),
        None => (text, ""),
    }
}

/// The driver error for an `err` reason (SPEC.md section 7).
pub fn error_for_reason(reason: &str) -> Error {
    match reason {
        "range" | "bad-argument" => Error::OutOfRange,
        "version" | "unknown-command" => Error::Unsupported,
        _ => Error::Io,
    }
}

/// Collects bytes from the card into lines.
///
/// A line longer than [`MAX_LINE_LENGTH`] is dropped up to its line feed.
pub struct LineAssembler {
    buffer: [u8; MAX_LINE_LENGTH],
    length: usize,
    /// The last push completed a line; the next push starts a new one.
    complete: bool,
    /// Dropping bytes up to the next line feed.
    overflowed: bool,
    /// Lines dropped for length.
    pub dropped_long_lines: u64,
}

impl Default for LineAssembler {
    fn default() -> Self {
        LineAssembler {
            buffer: [0; MAX_LINE_LENGTH],
            length: 0,
            complete: false,
            overflowed: false,
            dropped_long_lines: 0,
        }
    }
}

impl LineAssembler {
    /// Adds one byte; returns the finished line (without its line feed) when `byte`
    /// ends one.
    pub fn push(&mut self, byte: u8) -> Option<&[u8]> {
        if self.complete {
            self.complete = false;
            self.length = 0;
        }
        if byte == b'\n' {
            if self.overflowed {
                self.overflowed = false;
                self.length = 0;
                self.dropped_long_lines += 1;
                return None;
            }
            self.complete = true;
            return Some(&self.buffer[..self.length]);
        }
        if self.overflowed {
            return None;
        }
        // The line feed counts towards the limit.
        if self.length + 1 >= MAX_LINE_LENGTH {
            self.overflowed = true;
            return None;
        }
        self.buffer[self.length] = byte;
        self.length += 1;
        None
    }

    /// Forgets a partial line.
    pub fn clear(&mut self) {
        self.length = 0;
        self.complete = false;
        self.overflowed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn requests_are_formatted_and_bounded() {
        let line = RequestLine::new(0x0a, "arm", Some(10)).unwrap();
        assert_eq!(line.as_bytes(), b"0a arm 10\n");
        let line = RequestLine::new(0xff, "arm", Some(86_400_000)).unwrap();
        assert_eq!(line.as_bytes(), b"ff arm 86400000\n");
        assert_eq!(line.as_bytes().len(), MAX_REQUEST_LENGTH);
        assert_eq!(
            RequestLine::new(0xff, "arm", Some(864_000_000)).map(|l| l.as_bytes().len()),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            RequestLine::new(0, "status", None).unwrap().as_bytes(),
            b"00 status\n"
        );
        assert_eq!(
            RequestLine::new(1, "arm", Some(0)).unwrap().as_bytes(),
            b"01 arm 0\n"
        );
    }

    #[test]
    fn replies_parse() {
        let line = parse_card_line(b"1f ok relay=off armed=1 timeout=10 fired=0 kicks=7").unwrap();
        let CardLine::Ok { to, fields } = line else {
            panic!("{line:?}")
        };
        assert_eq!(to, Addressee::Request(0x1f));
        assert_eq!(fields.flag("relay"), Some(false));
        assert_eq!(fields.flag("armed"), Some(true));
        assert_eq!(fields.number("timeout"), Some(10));
        assert_eq!(fields.number("kicks"), Some(7));
        assert_eq!(fields.get("nothing"), None);

        let line = parse_card_line(b"2 err range min=1 max=86400000\r").unwrap();
        assert_eq!(
            line,
            CardLine::Err {
                to: Addressee::Request(2),
                reason: "range",
                fields: Fields {
                    text: "min=1 max=86400000"
                },
            }
        );
        assert!(matches!(
            parse_card_line(b"- err parse"),
            Ok(CardLine::Err {
                to: Addressee::Unsequenced,
                reason: "parse",
                ..
            })
        ));
        assert!(matches!(
            parse_card_line(b"* fired relay=on"),
            Ok(CardLine::Notice { event: "fired", .. })
        ));
        assert_eq!(parse_card_line(b"00 ok").map(|_| ()), Ok(()));
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        assert_eq!(parse_card_line(b""), Err(LineError::Empty));
        assert_eq!(parse_card_line(b"   "), Err(LineError::Empty));
        assert_eq!(parse_card_line(b"0a\tok"), Err(LineError::BadByte));
        assert_eq!(parse_card_line(b"0a ok \xff"), Err(LineError::BadByte));
        assert_eq!(parse_card_line(b"zz ok"), Err(LineError::BadAddressee));
        assert_eq!(parse_card_line(b"12345 ok"), Err(LineError::BadAddressee));
        assert_eq!(parse_card_line(b"0A ok"), Err(LineError::BadAddressee));
        assert_eq!(parse_card_line(b"0a okay"), Err(LineError::BadStatus));
        assert_eq!(parse_card_line(b"0a err"), Err(LineError::BadStatus));
        assert_eq!(parse_card_line(b"0a"), Err(LineError::BadStatus));
        assert_eq!(parse_card_line(b"*"), Err(LineError::BadStatus));
        // Every byte string of length 0..=3 over a small alphabet parses or errs.
        let alphabet = b" 0a*-okerr=\r\n\x00\xff";
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let _ = parse_card_line(&[*a, *b, *c]);
                }
            }
        }
    }

    #[test]
    fn numbers_reject_overflow_and_signs() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("18446744073709551615"), None); // 20 digits
        assert_eq!(
            parse_decimal("9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_decimal("+1"), None);
        assert_eq!(parse_decimal(""), None);
        assert_eq!(parse_sequence("ffff"), Some(0xffff));
        assert_eq!(parse_sequence(""), None);
    }

    #[test]
    fn assembler_splits_lines_and_drops_long_ones() {
        let mut assembler = LineAssembler::default();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut input = Vec::new();
        input.extend_from_slice(b"00 ok\n");
        input.extend(core::iter::repeat_n(b'x', 200));
        input.extend_from_slice(b"\n01 ok relay=on\n\n");
        for byte in input {
            if let Some(line) = assembler.push(byte) {
                lines.push(line.to_vec());
            }
        }
        assert_eq!(
            lines,
            [b"00 ok".to_vec(), b"01 ok relay=on".to_vec(), Vec::new()]
        );
        assert_eq!(assembler.dropped_long_lines, 1);
        // Exactly at the limit: 127 bytes plus LF is kept; 128 plus LF is dropped.
        let mut assembler = LineAssembler::default();
        for _ in 0..127 {
            assert!(assembler.push(b'a').is_none());
        }
        assert_eq!(assembler.push(b'\n').map(<[u8]>::len), Some(127));
        for _ in 0..128 {
            assert!(assembler.push(b'a').is_none());
        }
        assert!(assembler.push(b'\n').is_none());
        assert_eq!(assembler.dropped_long_lines, 1);
    }
}
