//! `bwmon generate`: shell completions and the man page, for `cargo xtask install`.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// Writes `bwmon.bash`, `_bwmon`, `bwmon.fish` and `bwmon.1` into `out` (created if need be).
///
/// # Errors
/// A file or the directory cannot be written.
pub fn generate(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = Cli::command();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "bwmon", out)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    std::fs::write(out.join("bwmon.1"), page).context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}
