//! The command line, in two stages: clap's structs in [`args`], validated configuration in
//! `config`; then one function per subcommand, each in its own file, which `main` dispatches
//! to.

mod args;
pub mod check;
pub mod generate;
pub mod history;
pub mod report;
pub mod run;
pub mod slice;
pub mod status;
pub mod teardown;

pub use args::{Cli, Command, SliceAction};

use anyhow::Context as _;

/// The async runtime a subcommand that talks to the daemon (or is the daemon) runs in.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
