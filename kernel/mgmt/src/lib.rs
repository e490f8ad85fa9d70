//! The management plane of the Duplex appliance, as portable logic.
//!
//! - [`options`]: the boot command line (`key=value ...`) parsed into typed
//!   [`options::BootOptions`]; unknown keys and bad values are rejected with a message
//!   naming the key and what was expected.
//! - [`editor`]: the serial console's line editor (echo, backspace, Ctrl-U, Ctrl-C,
//!   escape sequences swallowed).
//! - [`command`]: console commands parsed into [`command::Command`]; an unknown command
//!   or a bad argument becomes a one-line error.
//! - [`markers`]: the console lines the lab waits for; the lab and the image share them.
//! - [`json`]: a tiny JSON object writer for `--json` output (no allocation beyond the
//!   output string).
//!
//! No I/O, no clock: the image feeds bytes in and writes what comes out.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod command;
pub mod editor;
pub mod json;
pub mod markers;
pub mod options;
