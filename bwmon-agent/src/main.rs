//! The `bwmon` command.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use bwmon_agent::{
    datapath::{self, Datapath, DatapathOptions},
    paths,
};
use clap::{Parser, Subcommand};

/// Per-slice traffic accounting and bandwidth budgets with eBPF and HTB.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach (or re-attach) the datapath to an interface and print its counters per xid.
    Counters {
        /// Interface whose egress is accounted, e.g. `eth0`.
        #[arg(long)]
        interface: String,
        /// Root of the bpffs pins.
        #[arg(long, default_value = paths::PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// Remove the datapath (programs and pins) of an interface.
    Teardown {
        /// Interface, e.g. `eth0`.
        #[arg(long)]
        interface: String,
        /// Root of the bpffs pins.
        #[arg(long, default_value = paths::PIN_ROOT)]
        pin_root: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bwmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Counters {
            interface,
            pin_root,
        } => {
            let mut opts = DatapathOptions::new(interface);
            opts.pin_root = pin_root;
            let dp = Datapath::open(&opts).context("opening the datapath")?;
            let snap = dp.snapshot().context("reading the counters")?;
            println!(
                "{:>10} {:>16} {:>12} {:>16} {:>12}",
                "xid", "bytes", "packets", "exempt_bytes", "exempt_pkts"
            );
            for (xid, c) in &snap.offered {
                println!(
                    "{xid:>10} {:>16} {:>12} {:>16} {:>12}",
                    c.general.bytes, c.general.packets, c.exempt.bytes, c.exempt.packets
                );
            }
            Ok(())
        }
        Command::Teardown {
            interface,
            pin_root,
        } => datapath::teardown(&pin_root, &interface).context("teardown"),
    }
}
