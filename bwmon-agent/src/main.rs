//! The `bwmon` command: parses the command line, sets up logging, and dispatches to the
//! subcommand's function; errors are printed once, here, with their causes.
use std::{io::IsTerminal, process::ExitCode};

use bwmon_agent::cli::{self, Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. }) {
        bwmon_agent::daemon::allocator::tune_for_daemon();
    } else {
        // A command's output piped into `head` ends it quietly, as for any Unix tool; the
        // daemon keeps ignoring SIGPIPE (a client that goes away must not stop it).
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cli.log_level.clone())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bwmon: {e:#}");
            exit_code(&e)
        }
    }
}

/// `EX_CONFIG` (78): the configuration, the slices file or the state needs the operator —
/// systemd does not restart on it (`RestartPreventExitStatus=78`); anything else is 1.
const EX_CONFIG: u8 = 78;

fn exit_code(e: &anyhow::Error) -> ExitCode {
    let needs_operator = e.chain().any(|c| {
        c.is::<bwmon_agent::config::problems::FileErrors>()
            || c.is::<bwmon_agent::interface::InvalidName>()
            || matches!(
                c.downcast_ref::<bwmon_agent::state::StateError>(),
                Some(
                    bwmon_agent::state::StateError::NoGoodGeneration { .. }
                        | bwmon_agent::state::StateError::Newer { .. }
                        | bwmon_agent::state::StateError::NotAFile { .. }
                )
            )
    });
    ExitCode::from(if needs_operator { EX_CONFIG } else { 1 })
}

/// Runs one subcommand: each is a function of its own in `bwmon_agent::cli`.
fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            fresh_state,
        } => cli::run::run(&config, fresh_state),
        Command::Check {
            config,
            configured: false,
        } => cli::check::check(&config),
        Command::Check {
            config,
            configured: true,
        } => Ok(cli::check::configured(&config)),
        Command::Status { json, config } => cli::status::status(&config, json),
        Command::Slice {
            action,
            config,
            request_id,
        } => cli::slice::slice(&config, action, request_id),
        Command::History {
            slice,
            periods,
            json,
            config,
        } => cli::history::history(&config, slice.as_deref(), periods, json),
        Command::Report {
            svg,
            slices,
            top,
            days,
            config,
        } => cli::report::report(&config, &svg, &slices, top, days),
        Command::Generate { out } => cli::generate::generate(&out),
        Command::Teardown {
            config,
            forget_state,
        } => cli::teardown::teardown(&config, forget_state),
    }
}
