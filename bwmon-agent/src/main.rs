//! The `bwmon` command.
use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context as _;
use bwmon_agent::{
    cli::{Cli, Command},
    config::Config,
    control, daemon, datapath,
    htb::Htb,
    paths, slices, status,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bwmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            fresh_state,
        } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(daemon::run(config, fresh_state))
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            let text = std::fs::read_to_string(&config.slices)
                .with_context(|| format!("reading the slices file {}", config.slices.display()))?;
            let slices = slices::parse(&config.slices, &text)?;
            println!(
                "{}: ok; {}: {} slices",
                config.path.display(),
                config.slices.display(),
                slices.len()
            );
            Ok(())
        }
        Command::Status { json, config } => {
            let socket = if config.exists() {
                Config::load(&config)?.socket
            } else {
                paths::SOCKET.into()
            };
            let report = runtime()?.block_on(control::status(&socket))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::table(&report));
            }
            Ok(())
        }
        Command::Generate { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut cmd = Cli::command();
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut cmd, "bwmon", &out)
                    .with_context(|| format!("writing {shell} completions"))?;
            }
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            std::fs::write(out.join("bwmon.1"), page).context("writing the man page")?;
            Ok(())
        }
        Command::Teardown {
            config,
            forget_state,
        } => {
            let config = Config::load(&config)?;
            datapath::teardown(std::path::Path::new(paths::PIN_ROOT), &config.interface)?;
            Htb::open(&config.interface)?.remove_tree()?;
            if forget_state {
                match std::fs::remove_file(&config.state) {
                    Ok(()) => eprintln!("bwmon: removed {}", config.state.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).context(format!("removing {}", config.state.display()));
                    }
                }
            }
            Ok(())
        }
    }
}
