//! `cargo xtask build`: the eBPF object with Debian's rustc, then the agent embedding it.

use std::path::PathBuf;

use crate::{
    setup::Tools,
    workspace::{self, exec},
};

/// Debug or release build of the user-space crates (the eBPF object is always optimised: the
/// verifier rejects most unoptimised BPF code).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub(crate) fn from_flag(release: bool) -> Self {
        if release { Self::Release } else { Self::Debug }
    }

    /// The directory under `target/` cargo uses for this profile.
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Target directory of the eBPF build, apart from the host build: another compiler builds it.
pub(crate) fn ebpf_target_dir() -> PathBuf {
    workspace::root().join("target/bpf")
}

/// Path of the built eBPF object.
pub(crate) fn ebpf_object() -> PathBuf {
    ebpf_target_dir().join("bpfel-unknown-none/release/bwmon")
}

/// Builds the eBPF object and returns its path.
pub(crate) fn ebpf(tools: &Tools) -> anyhow::Result<PathBuf> {
    let mut cmd = workspace::cargo();
    cmd.args([
        "build",
        "--package",
        "bwmon-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
    ])
    .arg("--target-dir")
    .arg(ebpf_target_dir())
    .env("RUSTC", &tools.bpf_rustc)
    // aya-ebpf enables `asm_experimental_arch`; Debian's stable rustc needs this to allow it.
    .env("RUSTC_BOOTSTRAP", "1")
    .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tools.bpf_linker)
    // The target's rustflags come from .cargo/config.toml; a host RUSTFLAGS would override them.
    .env_remove("RUSTFLAGS")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    exec(&mut cmd)?;
    Ok(ebpf_object())
}

/// A cargo command for the host crates that embeds `object`.
pub(crate) fn host_cargo(object: &std::path::Path) -> std::process::Command {
    let mut cmd = workspace::cargo();
    cmd.env("BWMON_EBPF_OBJECT", object);
    cmd
}

/// Builds everything: `target/<profile>/bwmon` with the object embedded.
pub(crate) fn all(tools: &Tools, profile: Profile) -> anyhow::Result<()> {
    let object = ebpf(tools)?;
    let mut cmd = host_cargo(&object);
    cmd.args(["build", "--package", "bwmon-agent", "--bin", "bwmon"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    exec(&mut cmd)?;
    eprintln!(
        "xtask: built {}",
        workspace::root()
            .join("target")
            .join(profile.dir())
            .join("bwmon")
            .display()
    );
    Ok(())
}
