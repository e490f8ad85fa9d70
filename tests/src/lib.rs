//! Shared helpers for the QEMU integration tests in `tests/tests/`.
//!
//! Each test boots its own appliance through the lab (`duplex-lab`), waits for console
//! markers with deadlines (never fixed sleeps) and lets the `Vm` kill QEMU on drop.
//! Timing-sensitive tests take [`exclusive`] so no other VM of the same test binary
//! competes for the CPU while they measure.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use duplex_lab::image;
use duplex_lab::vm::{Vm, VmConfig};

/// Generous deadline for a boot under TCG on a loaded 2-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for one console command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

static MACHINE: RwLock<()> = RwLock::new(());

/// Held by ordinary tests: many at once.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a timing-sensitive test: no other VM of this binary runs meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// A config for the built image with `cmdline`.
pub fn config(name: &str, cmdline: &str) -> VmConfig {
    let kernel = image::build().unwrap_or_else(|e| panic!("{e}"));
    let mut config = VmConfig::new(name, &kernel).cmdline(cmdline);
    config.lifetime = Duration::from_secs(300);
    config
}

/// Boots the image with `cmdline` and waits for the ready marker.
pub fn boot(name: &str, cmdline: &str) -> Vm {
    let vm = Vm::launch(&config(name, cmdline)).unwrap_or_else(|e| panic!("{e}"));
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm
}
