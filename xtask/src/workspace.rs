//! Where things are in the workspace, and running commands with a clear error when they fail.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root (the parent of `xtask/`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs us, so nested builds use the same toolchain.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd`, failing with the command line when it exits non-zero.
pub(crate) fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let line = describe(cmd);
    eprintln!("xtask: $ {line}");
    let status = cmd.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// A command as a human would type it (for messages only; never executed through a shell).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Whether we run as root (installing packages and the namespace tests need it).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

// SAFETY: libc's geteuid(2) with its C signature.
unsafe extern "C" {
    fn geteuid() -> u32;
}

/// Runs one phase of a long task and says how long it took, in a line `.ci/run` gathers into
/// its summary ("xtask: phase NAME: N s").
pub(crate) fn phase<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let out = f();
    eprintln!(
        "xtask: phase {name}: {} s{}",
        started.elapsed().as_secs(),
        if out.is_err() { " (failed)" } else { "" }
    );
    out
}
