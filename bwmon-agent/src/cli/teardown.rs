//! `bwmon teardown`: everything bwmon installed on the interface removed.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{config::Config, datapath, htb::Htb, paths};

/// Removes the programs, pins and HTB tree from the interface named in the configuration at
/// `config`; with `forget_state`, the state file too.
///
/// # Errors
/// The configuration does not load, or something cannot be removed.
pub fn teardown(config: &Path, forget_state: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
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
        match std::fs::remove_file(&config.state) {
            Ok(()) => eprintln!("bwmon: removed {}", config.state.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).context(format!("removing {}", config.state.display()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
