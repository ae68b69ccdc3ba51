//! The command line as clap parses it: the flags and subcommands, with their help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{paths, state::RequestId};

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
        /// Start with every budget afresh: every generation of the state is moved aside
        /// (`<state>.discarded-<time>`) instead of loaded, once the datapath is up (a start that
        /// fails keeps them). Only for when no generation of the state loads.
        #[arg(long)]
        fresh_state: bool,
    },
    /// Validate the configuration and slices files; exit non-zero naming file, line and key.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
        /// Only say whether the file names an interface yet: exit 0 when it does, 1 when it
        /// does not (the unit's ExecCondition: an installed but unconfigured bwmon is skipped,
        /// not failed). A file with other problems passes; `bwmon run` names them.
        #[arg(long)]
        configured: bool,
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
    /// One slice: everything bwmon knows of it, or the operator's levers (root, through the
    /// running daemon; applied at once, kept in the state, logged).
    Slice {
        /// What to do.
        #[command(subcommand)]
        action: SliceAction,
        /// Configuration file, for the control socket's path.
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG, global = true)]
        config: PathBuf,
        /// Send a lever as the request with this id (16 hex digits), to ask again safely after
        /// a lost reply, as the error then says: the daemon applies an id once. Without it,
        /// every lever is a new request.
        #[arg(long, value_name = "ID", global = true)]
        request_id: Option<RequestId>,
    },
    /// Past periods per slice from the history file (read directly; no daemon needed), each
    /// with a bar of its use against its budget.
    History {
        /// Only this slice (name or xid).
        slice: Option<String>,
        /// The newest N periods of each slice.
        #[arg(long, default_value_t = 10, value_name = "N")]
        periods: usize,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Configuration file, for the state file's path.
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
    },
    /// A picture (SVG) of the history's hourly samples: each slice's use over the last days as
    /// a share of its budget, with its threshold, and when it was capped.
    Report {
        /// Where to write the SVG.
        #[arg(long, value_name = "FILE")]
        svg: PathBuf,
        /// Only these slices (names or xids); else the ones nearest their budget (`--top`).
        slices: Vec<String>,
        /// Draw the N slices that came nearest their budget in the span [default: 10].
        #[arg(long, value_name = "N", conflicts_with = "slices",
              value_parser = clap::value_parser!(u16).range(1..))]
        top: Option<u16>,
        /// How many days back.
        #[arg(long, default_value_t = 7, value_name = "DAYS")]
        days: u64,
        /// Configuration file, for the state file's path.
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
    /// Remove everything bwmon installed on the interface: programs, pins, HTB tree (refused
    /// while a daemon runs on it).
    Teardown {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE", default_value = paths::CONFIG)]
        config: PathBuf,
        /// Also delete every generation of the state (`<state>` and `<state>.prev`): every
        /// budget starts afresh next time. Refused while a daemon runs.
        #[arg(long)]
        forget_state: bool,
    },
}

/// `bwmon slice` actions. SLICE is a slice's name or xid.
#[derive(Subcommand, Debug)]
pub enum SliceAction {
    /// Everything bwmon knows of one slice: attributes and their sources, leaves, usage,
    /// ceilings, period, forecast, levers, notices.
    Show {
        /// Name or xid.
        slice: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Extra budget for the current period only, e.g. `2GiB` or `500MB`.
    Grant {
        /// Name or xid.
        slice: String,
        /// How much more: a size with a unit (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB).
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Grant exempt traffic's budget instead of the general one.
        #[arg(long)]
        exempt: bool,
    },
    /// Start the slice's period now: nothing used, ceilings back, a new notice possible.
    Reset {
        /// Name or xid.
        slice: String,
    },
    /// Hold the slice at a rate (e.g. `10mbit`) until cleared or its period ends.
    Limit {
        /// Name or xid.
        slice: String,
        /// The ceiling, in tc's notation.
        #[arg(allow_hyphen_values = true, required_unless_present = "clear")]
        rate: Option<String>,
        /// Remove the limit instead.
        #[arg(long, conflicts_with = "rate")]
        clear: bool,
        /// Limit exempt traffic instead of general traffic.
        #[arg(long)]
        exempt: bool,
    },
}
