//! Building the appliance image.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::{Result, lab_error, workspace_root};

/// The target the image is built for.
pub const TARGET: &str = "x86_64-unknown-none";

static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory the nested build uses (kept apart from the host build's, so the two
/// never wait on each other's lock).
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("image")
}

/// Builds the image (release) once per process and returns the ELF's path.
///
/// Set `DUPLEX_IMAGE` to use a prebuilt image instead.
pub fn build() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DUPLEX_IMAGE") {
        return Ok(PathBuf::from(path));
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let root = workspace_root();
    let mut command = Command::new(cargo_binary());
    command
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "duplex-image",
            "--target",
            TARGET,
        ])
        .env_clear()
        .env("CARGO_TARGET_DIR", target_dir());
    // A clean environment: the outer cargo's variables (RUSTFLAGS for the host,
    // CARGO_* of the running test) must not leak into the image build.
    for key in [
        "PATH",
        "HOME",
        "RUSTUP_HOME",
        "CARGO_HOME",
        "RUSTUP_TOOLCHAIN",
        "TERM",
        "TMPDIR",
    ] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    let output = command
        .output()
        .map_err(|e| lab_error!("cannot run cargo to build the image: {e}"))?;
    if !output.status.success() {
        return Err(lab_error!(
            "image build failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = target_dir()
        .join(TARGET)
        .join("release")
        .join("duplex-image");
    if !path.exists() {
        return Err(lab_error!(
            "image build succeeded but {} is missing",
            path.display()
        ));
    }
    *built = Some(path.clone());
    Ok(path)
}

fn cargo_binary() -> PathBuf {
    // Inside `cargo run`/`cargo test`, CARGO names the cargo that started us.
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Sizes of an image.
#[derive(Debug, Clone, Copy)]
pub struct ImageSizes {
    /// Bytes the loader copies into memory (sum of the PT_LOAD segments' file sizes).
    pub loaded: u64,
    /// Bytes of the ELF file (with symbols and debug information).
    pub file: u64,
}

/// Reads an ELF64's sizes from its program headers.
pub fn sizes(path: &std::path::Path) -> Result<ImageSizes> {
    let data = std::fs::read(path)?;
    let bad = || lab_error!("{} is not an ELF64 image", path.display());
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let phoff = u64_at(32).ok_or_else(bad)? as usize;
    let phentsize = u16_at(54).ok_or_else(bad)? as usize;
    let phnum = u16_at(56).ok_or_else(bad)? as usize;
    let mut loaded = 0;
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        let kind = data.get(header..header + 4).ok_or_else(bad)?;
        if kind == [1, 0, 0, 0] {
            loaded += u64_at(header + 32).ok_or_else(bad)?;
        }
    }
    Ok(ImageSizes {
        loaded,
        file: data.len() as u64,
    })
}

/// Builds a bootable hybrid ISO (BIOS CD, BIOS USB stick and UEFI) with GRUB that loads
/// the image through Multiboot2 with `cmdline`. Needs `grub-mkrescue` (Debian packages
/// grub-pc-bin, grub-efi-amd64-bin, xorriso, mtools).
pub fn grub_iso(kernel: &std::path::Path, cmdline: &str, out: &std::path::Path) -> Result<()> {
    let tree = out.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::copy(kernel, tree.join("boot/duplex.elf"))?;
    let config = format!(
        "# Duplex appliance boot menu (written by `cargo lab iso`).\n\
         set timeout=0\n\
         set default=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         menuentry \"Duplex appliance\" {{\n\
         \x20   multiboot2 /boot/duplex.elf {cmdline}\n\
         \x20   boot\n\
         }}\n"
    );
    std::fs::write(tree.join("boot/grub/grub.cfg"), config)?;
    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .arg(&tree)
        .output()
        .map_err(|e| {
            lab_error!(
                "cannot run grub-mkrescue: {e} (install: apt-get install -y grub-pc-bin grub-efi-amd64-bin xorriso mtools)"
            )
        })?;
    let _ = std::fs::remove_dir_all(&tree);
    if !output.status.success() {
        return Err(lab_error!(
            "grub-mkrescue failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
