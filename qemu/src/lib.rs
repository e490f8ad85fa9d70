//! The Duplex lab: everything on the host side of the appliance.
//!
//! - [`image`]: builds the appliance image (a nested `cargo build` for
//!   `x86_64-unknown-none` with a clean environment, its own target directory).
//! - [`vm`]: one QEMU process: serial console and QMP on unix sockets that the lab
//!   listens on (QEMU connects at start-up, so no output is lost), a log file per
//!   console, waits for console markers with deadlines, killed on drop.
//! - [`qmp`]: the QEMU Machine Protocol client (commands and events).
//! - [`stats`]: medians and percentiles for the benchmarks.
//! - [`appliance`]: an appliance VM with its NICs plugged into the fabric
//!   (`duplex-fabric`: wires, hubs, bypass relays, traffic source and sink).
//! - [`bench_forward`]: the forwarding benchmark (rate under 0.1 % loss against the
//!   fabric's own ceiling).
//! - [`bench_log`]: the replicated state log's benchmark (stall, flush, replication).
//!
//! The `duplex-lab` binary (`cargo lab ...`) is a thin command line over these.

pub mod appliance;
pub mod bench_forward;
pub mod bench_log;
pub mod bypass_card;
pub mod image;
pub mod pair;
pub mod qmp;
pub mod stats;
pub mod vm;

use std::fmt;

/// The lab's error: what failed, in words a person can act on.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<duplex_fabric::Error> for Error {
    fn from(e: duplex_fabric::Error) -> Self {
        Error(format!("fabric: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(format!("I/O error: {e}"))
    }
}

/// `Result` with the lab's [`Error`].
pub type Result<T = ()> = std::result::Result<T, Error>;

/// Builds an [`Error`] from a format string.
#[macro_export]
macro_rules! lab_error {
    ($($arg:tt)*) => { $crate::Error(format!($($arg)*)) };
}

/// The workspace root (the directory of the top-level Cargo.toml).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
