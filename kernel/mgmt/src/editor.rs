//! The console's line editor.
//!
//! Bytes from the serial port go in; bytes to echo and finished lines come out.
//! Printable ASCII is echoed and kept; backspace (0x08) and DEL (0x7f) erase one
//! character; Ctrl-U erases the line; Ctrl-C drops it; CR, LF or CR LF ends it; escape
//! sequences (arrow keys: ESC [ A, ESC O P) are swallowed; anything else is ignored.
//! A line longer than [`MAX_LINE`] rings the bell instead of growing.

use alloc::string::String;

/// Longest line kept.
pub const MAX_LINE: usize = 256;

/// What a byte produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing finished yet.
    None,
    /// A line was entered (without its line ending).
    Line(String),
    /// Ctrl-C: the line was dropped.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escape {
    #[default]
    None,
    /// Saw ESC.
    Start,
    /// Saw ESC [ or ESC O: parameters until a final byte 0x40..=0x7e.
    Sequence,
}

/// The editor's state.
#[derive(Debug, Default)]
pub struct LineEditor {
    line: String,
    escape: Escape,
    last_was_cr: bool,
}

impl LineEditor {
    /// An empty editor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The line typed so far.
    pub fn current(&self) -> &str {
        &self.line
    }

    /// Takes one byte; `echo` receives what to send back to the terminal.
    pub fn feed(&mut self, byte: u8, echo: &mut dyn FnMut(&[u8])) -> Event {
        let after_cr = core::mem::replace(&mut self.last_was_cr, false);
        match self.escape {
            Escape::Start => {
                self.escape = if byte == b'[' || byte == b'O' {
                    Escape::Sequence
                } else {
                    Escape::None
                };
                return Event::None;
            }
            Escape::Sequence => {
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                }
                return Event::None;
            }
            Escape::None => {}
        }
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\n' && after_cr {
                    return Event::None;
                }
                self.last_was_cr = byte == b'\r';
                echo(b"\r\n");
                Event::Line(core::mem::take(&mut self.line))
            }
            0x08 | 0x7f => {
                if self.line.pop().is_some() {
                    echo(b"\x08 \x08");
                }
                Event::None
            }
            0x15 => {
                for _ in 0..self.line.len() {
                    echo(b"\x08 \x08");
                }
                self.line.clear();
                Event::None
            }
            0x03 => {
                self.line.clear();
                echo(b"^C\r\n");
                Event::Cancel
            }
            0x1b => {
                self.escape = Escape::Start;
                Event::None
            }
            0x20..=0x7e => {
                if self.line.len() >= MAX_LINE {
                    echo(b"\x07");
                } else {
                    self.line.push(byte as char);
                    echo(&[byte]);
                }
                Event::None
            }
            _ => Event::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn run(editor: &mut LineEditor, input: &[u8]) -> (Vec<Event>, Vec<u8>) {
        let mut echoed = Vec::new();
        let mut events = Vec::new();
        for &b in input {
            let e = editor.feed(b, &mut |s| echoed.extend_from_slice(s));
            if e != Event::None {
                events.push(e);
            }
        }
        (events, echoed)
    }

    #[test]
    fn echo_backspace_and_crlf() {
        let mut e = LineEditor::new();
        let (events, echoed) = run(&mut e, b"verx\x7fsion\r\nup\x08\x08uptime\n");
        assert_eq!(
            events,
            [Event::Line("version".into()), Event::Line("uptime".into())]
        );
        assert!(echoed.starts_with(b"verx\x08 \x08sion\r\n"));
    }

    #[test]
    fn escape_sequences_and_control_bytes_are_swallowed() {
        let mut e = LineEditor::new();
        let (events, _) = run(&mut e, b"he\x1b[Al\x1bOPp\x01\x00\r");
        assert_eq!(events, [Event::Line("help".into())]);
    }

    #[test]
    fn ctrl_c_and_ctrl_u() {
        let mut e = LineEditor::new();
        let (events, _) = run(&mut e, b"junk\x03ab\x15cd\r");
        assert_eq!(events, [Event::Cancel, Event::Line("cd".into())]);
    }

    #[test]
    fn long_lines_ring_the_bell() {
        let mut e = LineEditor::new();
        let input: Vec<u8> = core::iter::repeat_n(b'a', MAX_LINE + 5).collect();
        let (_, echoed) = run(&mut e, &input);
        assert_eq!(e.current().len(), MAX_LINE);
        assert_eq!(echoed.iter().filter(|&&b| b == 7).count(), 5);
    }
}
