//! The command line, in two stages: clap's structs here, validated configuration in `config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::paths;

/// Per-slice traffic accounting and bandwidth budgets with eBPF and HTB.
#[derive(Parser, Debug)]
#[command(name = "bwmon", version, about, propagate_version = true)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG wins when set.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: account, cap, notify, serve status.
    Run {
        /// Configuration file (TOML), e.g. /etc/bwmon/bwmon.toml.
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
        /// Start with every budget afresh: move the state files aside (`<state>.discarded-<time>`)
        /// instead of loading them. Only for when no generation of the state loads.
        #[arg(long)]
        fresh_state: bool,
    },
    /// Validate the configuration and slices files; exit non-zero naming file, line and key.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
    },
    /// Per-slice usage from the running daemon.
    Status {
        /// Print the JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Configuration file, for the control socket's path.
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
    },
    /// Write shell completions and the man page (used by `cargo xtask install`).
    #[command(hide = true)]
    Generate {
        /// Directory to write `bwmon.bash`, `_bwmon`, `bwmon.fish` and `bwmon.1` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Remove everything bwmon installed on the interface: programs, pins, HTB tree.
    Teardown {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
        /// Also delete the state file (every budget starts afresh next time).
        #[arg(long)]
        forget_state: bool,
    },
}
