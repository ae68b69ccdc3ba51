//! The `bwmon` command.
use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context as _;
use bwmon_agent::{
    class::TrafficClass,
    cli::{Cli, Command, SliceAction},
    config::Config,
    config::slices,
    daemon, datapath, history,
    htb::{self, Htb},
    paths, policy,
    policy::levers::Lever,
    serve::control,
    serve::control::{ReplyBody, RequestBody},
    serve::slice_view::{self, SliceRef},
    serve::status,
    units::{BitsPerSec, Bytes},
};
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
/// `bwmon check`: usable, but some slices are skipped.
const SOME_SKIPPED: u8 = 2;

fn exit_code(e: &anyhow::Error) -> ExitCode {
    let needs_operator = e.chain().any(|c| {
        c.is::<bwmon_agent::config::problems::FileErrors>()
            || c.is::<bwmon_agent::interface::InvalidName>()
            || matches!(
                c.downcast_ref::<bwmon_agent::state::StateError>(),
                Some(
                    bwmon_agent::state::StateError::NoGoodGeneration { .. }
                        | bwmon_agent::state::StateError::Newer { .. }
                )
            )
    });
    ExitCode::from(if needs_operator { EX_CONFIG } else { 1 })
}

/// The history file of the configuration at `config`; damaged records are said and skipped.
fn read_history(config: &std::path::Path) -> anyhow::Result<Vec<history::Entry>> {
    let config = Config::load(config)?;
    let file = history::path_for(&config.state);
    let (entries, problems) =
        history::read(&file).with_context(|| format!("reading {}", file.display()))?;
    for p in problems {
        eprintln!("bwmon: {}: {p}", file.display());
    }
    Ok(entries)
}

/// The control request for a `bwmon slice` action, and whether JSON is wanted.
fn slice_request(action: SliceAction) -> anyhow::Result<(RequestBody, bool)> {
    let class = |exempt| {
        if exempt {
            TrafficClass::Exempt
        } else {
            TrafficClass::General
        }
    };
    let which = |s: String| SliceRef::typed(&s);
    Ok(match action {
        SliceAction::Show { slice, json } => (RequestBody::Show(which(slice)), json),
        SliceAction::Grant {
            slice,
            amount,
            exempt,
        } => {
            let amount: Bytes = amount.parse()?;
            let lever = Lever::Grant {
                class: class(exempt),
                amount,
            };
            (RequestBody::Pull(which(slice), lever), false)
        }
        SliceAction::Reset { slice } => (RequestBody::Pull(which(slice), Lever::Reset), false),
        SliceAction::Limit {
            slice,
            rate,
            clear: _,
            exempt,
        } => {
            let rate: Option<BitsPerSec> = rate.map(|r| r.parse()).transpose()?;
            let lever = Lever::Limit {
                class: class(exempt),
                rate,
            };
            (RequestBody::Pull(which(slice), lever), false)
        }
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            fresh_state,
        } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(daemon::run(config, fresh_state))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            // The interface must exist where the daemon will run (labs: create it first).
            bwmon_agent::interface::index(&config.interface)
                .with_context(|| format!("{}: interface", config.path.display()))?;
            let parsed = slices::read(&config.slices)?;
            for w in &parsed.warnings {
                eprintln!("bwmon: warning: {w}");
            }
            let skipped = parsed.skipped.map(|s| {
                eprintln!("{s}");
                s.problems.len()
            });
            // Classes on demand: only slices whose limits differ from the default leaf's hold
            // leaves from the start; the rest get one when they send.
            let node = config.node();
            let tree = config.tree_spec();
            let always: usize = parsed
                .slices
                .iter()
                .map(|s| {
                    let limits = policy::Limits::base(&s.attrs, &config.defaults, &node);
                    let differs = bwmon_agent::sync::plan::differs_from_default(&limits, &tree);
                    differs.iter().filter(|(_, d)| **d).count()
                })
                .sum();
            let capacity = htb::minors::Minors::default().available();
            if always > capacity {
                anyhow::bail!(
                    "{}: {always} leaves are needed from the start (slices whose rates or shares differ from the defaults) but an HTB tree holds {capacity}; give fewer slices their own rates",
                    config.slices.display()
                );
            }
            if parsed.slices.len() * 2 > capacity {
                println!(
                    "note: {} slices, {capacity} leaves: only slices that send (or have rates of their own) hold leaves; when all are taken, the others share the default leaves and are still counted",
                    parsed.slices.len()
                );
            }
            println!(
                "{}: ok; {}: {} slices{}",
                config.path.display(),
                config.slices.display(),
                parsed.slices.len(),
                skipped.map_or(String::new(), |n| format!(
                    ", {n} problems: those slices are skipped"
                ))
            );
            Ok(if skipped.is_some() {
                ExitCode::from(SOME_SKIPPED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status { json, config } => {
            let loaded = config.exists().then(|| Config::load(&config)).transpose();
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                // A user sees their own slice, through the socket every user may ask.
                let socket = match loaded {
                    Ok(Some(c)) => c.tenant_socket,
                    _ => Some(paths::TENANT_SOCKET.into()),
                }
                .context("the tenant socket is turned off (tenant_socket = \"\")")?;
                let reply = runtime()?.block_on(control::request(&socket, RequestBody::Mine))?;
                let ReplyBody::Mine(view) = reply else {
                    anyhow::bail!("unexpected reply from {}", socket.display());
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                } else {
                    print!(
                        "{}",
                        slice_view::render_tenant(&view, bwmon_agent::time::now())
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let socket = loaded?.map_or_else(|| paths::SOCKET.into(), |c| c.socket);
            let report = runtime()?.block_on(control::status(&socket))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Slice { action, config } => {
            let socket = if config.exists() {
                Config::load(&config)?.socket
            } else {
                paths::SOCKET.into()
            };
            let (request, json) = slice_request(action)?;
            let reply = runtime()?.block_on(control::request(&socket, request))?;
            match reply {
                ReplyBody::Slice(d) if json => println!("{}", serde_json::to_string_pretty(&d)?),
                ReplyBody::Slice(d) => {
                    print!("{}", slice_view::render(&d, bwmon_agent::time::now()))
                }
                ReplyBody::Pulled(audit, d) => {
                    println!("{audit}");
                    print!("{}", slice_view::render(&d, bwmon_agent::time::now()));
                }
                other => anyhow::bail!("unexpected reply from {}: {other:?}", socket.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History {
            slice,
            periods,
            json,
            config,
        } => {
            let entries = read_history(&config)?;
            let which = slice.as_deref().map(SliceRef::typed);
            let shown = history::periods(&entries, which.as_ref(), periods);
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", history::render(&shown));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            svg,
            slice,
            days,
            config,
        } => {
            let entries = read_history(&config)?;
            let which = slice.as_deref().map(SliceRef::typed);
            let text = history::svg::svg(&entries, which.as_ref(), days, bwmon_agent::time::now())?;
            std::fs::write(&svg, text).with_context(|| format!("writing {}", svg.display()))?;
            Ok(ExitCode::SUCCESS)
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown {
            config,
            forget_state,
        } => {
            let config = Config::load(&config)?;
            datapath::teardown(std::path::Path::new(paths::PIN_ROOT), &config.interface)?;
            let mut tree = Htb::open(&config.interface)?;
            tree.remove_tree()?;
            tree.remove_empty_clsact()?;
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
    }
}
