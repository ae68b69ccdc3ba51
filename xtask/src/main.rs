//! `cargo xtask`: everything about building and checking bwmon that cargo alone cannot do.
//!
//! The eBPF object needs a compiler with a prebuilt `core` for `bpfel-unknown-none` (Debian's
//! `rustc-web`) and `bpf-linker`; `setup` installs them, `build` drives them, and every command
//! that needs them runs `setup` first.

mod bench;
mod build;
mod deb;
mod demo;
mod install;
mod setup;
mod test;
mod vm;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "bwmon's build tasks", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need on Debian 12 (idempotent; a no-op when present).
    Setup,
    /// Build the eBPF object, then the agent with the object embedded.
    Build {
        /// Optimised build: the binary is target/release/bwmon.
        #[arg(long)]
        release: bool,
    },
    /// See bwmon work: a throwaway lab, three tenants, live status until one is capped.
    Demo,
    /// Install the release binary, unit, config, completions and man page.
    Install {
        /// Installation prefix (bin/, share/ go below it).
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Root of the target file system (like DESTDIR), for packaging and tests.
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
        /// The debug build instead of the release build (the end-to-end tests: the same
        /// files without a second, optimised compile).
        #[arg(long)]
        debug: bool,
    },
    /// The Debian package: target/debian/bwmon_<version>-1_<arch>.deb (release build).
    Deb {
        /// Package the debug build (the end-to-end tests: the same package without an
        /// optimised compile). Never for a package anyone installs.
        #[arg(long)]
        debug: bool,
    },
    /// Benchmarks (root): datapath cost from bpf_stats, side by side in one run.
    Bench,
    /// fmt, clippy, unit tests, then the root-only integration tests in network namespaces.
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
        /// Skip the end-to-end checks in qemu on Debian's kernels.
        #[arg(long)]
        no_vm: bool,
    },
    /// The kernel-dependent end-to-end checks inside qemu on Debian 12's kernels (root).
    VmTest {
        /// Which kernel: 6.1, 6.12, or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Virtual CPUs of the guest. Above 2 only the kernel-memory check runs (a load, a
        /// short lab check and the maps' memlock): TCG runs that many CPUs slowly.
        #[arg(long, default_value_t = vm::SMP)]
        smp: u32,
    },
}

/// The kernels `cargo xtask test` checks in qemu after the host tests ("" = none).
const VM_TESTS_IN_TEST: &str = "all";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Build { release } => {
            setup::run().and_then(|tools| build::all(&tools, build::Profile::from_flag(release)))
        }
        Command::Test { filter, no_vm } => {
            workspace::phase("setup", setup::run).and_then(|tools| {
                // The VM checks run the whole of their tests; a filtered run is for the host.
                let kernels = if no_vm || filter.is_some() || VM_TESTS_IN_TEST.is_empty() {
                    Vec::new()
                } else {
                    vm::kernels(VM_TESTS_IN_TEST)?
                };
                test::run(&tools, filter, &kernels)
            })
        }
        Command::VmTest { kernel, smp } => {
            setup::run().and_then(|tools| vm::run(&tools, &vm::kernels(&kernel)?, smp))
        }
        Command::Bench => setup::run().and_then(|tools| bench::run(&tools)),
        Command::Deb { debug } => setup::run()
            .and_then(|tools| deb::run(&tools, build::Profile::from_flag(!debug)).map(|_| ())),
        Command::Demo => setup::run().and_then(|tools| demo::run_demo(&tools)),
        Command::Install {
            prefix,
            root,
            debug,
        } => setup::run().and_then(|tools| {
            install::run(&tools, &prefix, &root, build::Profile::from_flag(!debug))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
