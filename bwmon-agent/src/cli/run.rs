//! `bwmon run`: the daemon.

use std::{path::Path, process::ExitCode};

use crate::{config::Config, daemon};

/// Loads the configuration at `config` and runs the daemon until it is told to stop.
///
/// # Errors
/// Whatever keeps the daemon from starting (see [`daemon::run`]).
pub fn run(config: &Path, fresh_state: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    super::runtime()?.block_on(daemon::run(config, fresh_state))?;
    Ok(ExitCode::SUCCESS)
}
