//! `bwmon run`: the daemon.

use std::{path::Path, process::ExitCode};

use crate::{config::Config, daemon};

/// Loads the configuration at `config` and runs the daemon until it is told to stop.
///
/// # Errors
/// Whatever keeps the daemon from starting (see [`daemon::run`]).
pub fn run(config: &Path, fresh_state: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let runtime = super::runtime()?;
    let ran = runtime.block_on(daemon::run(config, fresh_state));
    // A delivery under way (a webhook that hangs until its timeout) is not waited for: the
    // state is saved, and the notice goes out after the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ran?;
    Ok(ExitCode::SUCCESS)
}
