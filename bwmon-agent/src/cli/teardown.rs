//! `bwmon teardown`: everything bwmon installed on the interface removed.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{config::Config, daemon::instance, datapath, htb::Htb, paths, state::State};

/// Removes the programs, pins and HTB tree from the interface named in the configuration at
/// `config`; with `forget_state`, every generation of the state too. Refused while a daemon
/// runs on the interface (or, with `forget_state`, writes the state): it would lose its
/// datapath (or its state) under it.
///
/// # Errors
/// The configuration does not load, a daemon runs, or something cannot be removed.
pub fn teardown(config: &Path, forget_state: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let stop_first = || {
        "teardown refused: stop the daemon first (`systemctl stop bwmon`, or kill the pid named \
         below), then run `bwmon teardown` again"
    };
    let _running =
        instance::lock(Path::new(paths::RUNTIME), &config.interface).with_context(stop_first)?;
    let _state = forget_state
        .then(|| instance::lock_file(&config.state, "state file", &config.interface))
        .transpose()
        .with_context(stop_first)?;
    datapath::teardown(Path::new(paths::PIN_ROOT), &config.interface)?;
    // The HTB tree and the clsact qdisc go with their interface: when it is gone (or was never
    // here, as in the chroot a package is tested in), there is nothing left on it.
    match crate::interface::index(&config.interface) {
        Ok(_) => {
            let mut tree = Htb::open(&config.interface)?;
            tree.remove_tree()?;
            tree.remove_empty_clsact()?;
        }
        Err(e) => eprintln!("bwmon: {e}: no HTB tree or filter to remove"),
    }
    if forget_state {
        let removed = State::forget(&config.state)?;
        if removed.is_empty() {
            eprintln!(
                "bwmon: no state at {}: every budget starts afresh",
                config.state.display()
            );
        } else {
            let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
            eprintln!(
                "bwmon: removed {}: every budget starts afresh at the next start",
                names.join(" and ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
