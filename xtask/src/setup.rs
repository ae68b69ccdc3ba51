//! `cargo xtask setup`: detect, and install when missing, what the build and the tests need.
//!
//! Debian 12 only: Debian's `rustc-web` is a Rust with a prebuilt `core` for the BPF targets
//! (rustup's toolchains here have no `rust-src`, so `-Z build-std` cannot work), and
//! `bpf-linker` is built from crates.io against Debian's LLVM 22.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::workspace::{self, exec};

/// A Debian package the project needs, and why.
struct Package {
    name: &'static str,
    why: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "rustc-web",
        why: "Rust 1.96 whose sysroot has a prebuilt core for bpfel-unknown-none (builds the eBPF object)",
    },
    Package {
        name: "libstd-rust-web-dev-bpf",
        why: "the prebuilt core library for the BPF targets",
    },
    Package {
        name: "llvm-22-dev",
        why: "LLVM 22, which bpf-linker links against (the same LLVM as rustc-web)",
    },
    Package {
        name: "iproute2",
        why: "`ip` and `tc`: the integration tests build network namespaces and look at HTB",
    },
    Package {
        name: "iperf3",
        why: "traffic generator for the rate tests",
    },
    Package {
        name: "nftables",
        why: "`nft`: the benchmark compares bwmon with nftables' per-uid counters",
    },
    Package {
        name: "python3-aiosmtpd",
        why: "a real SMTP server on loopback for the notice tests",
    },
    Package {
        name: "systemd",
        why: "`systemd-analyze verify` checks bwmon's unit file in the tests",
    },
    Package {
        name: "openssl",
        why: "a self-signed certificate for the test webhook receiver that must be refused",
    },
    Package {
        name: "strace",
        why: "the system calls a daemon under the unit's sandbox makes, held against its SystemCallFilter=",
    },
    Package {
        name: "util-linux",
        why: "`setpriv`: the demo sends traffic as tenant uids; `unshare`: the package test's root",
    },
    Package {
        name: "dpkg-dev",
        why: "`dpkg-shlibdeps`: the Debian package's Depends on shared libraries",
    },
    Package {
        name: "binutils",
        why: "`strip`: the packaged binary without its symbols",
    },
    Package {
        name: "lintian",
        why: "checks the Debian package against Debian's policy",
    },
    Package {
        name: "mmdebstrap",
        why: "a throwaway Debian 12 root the package is installed, upgraded and purged in",
    },
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian's rustc from `rustc-web`.
pub(crate) const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Paths of the tools the build uses, once they are known to be there.
pub(crate) struct Tools {
    /// Debian's rustc, for the eBPF crate.
    pub(crate) bpf_rustc: PathBuf,
    /// bpf-linker.
    pub(crate) bpf_linker: PathBuf,
}

/// Checks every requirement, installs what is missing, and says what it did.
pub(crate) fn run() -> anyhow::Result<Tools> {
    let missing: Vec<&Package> = PACKAGES
        .iter()
        .filter(|p| !dpkg_installed(p.name))
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
        if !workspace::is_root() {
            bail!(
                "missing Debian packages: {}; install them with `sudo apt-get install -y --no-install-recommends {}` or run `cargo xtask setup` as root",
                names.join(", "),
                names.join(" ")
            );
        }
        for p in &missing {
            eprintln!("xtask: setup: installing {}: {}", p.name, p.why);
        }
        exec(
            Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&names)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let bpf_rustc = PathBuf::from(DEBIAN_RUSTC);
    if !bpf_sysroot_has_core(&bpf_rustc)? {
        bail!(
            "{DEBIAN_RUSTC} has no core for bpfel-unknown-none; run `apt-get install --reinstall libstd-rust-web-dev-bpf`"
        );
    }
    let bpf_linker = ensure_bpf_linker()?;
    Ok(Tools {
        bpf_rustc,
        bpf_linker,
    })
}

fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", name])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn bpf_sysroot_has_core(rustc: &Path) -> anyhow::Result<bool> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("running {} --print sysroot", rustc.display()))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let libdir = sysroot.join("lib/rustlib/bpfel-unknown-none/lib");
    Ok(std::fs::read_dir(&libdir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    }))
}

/// `$CARGO_HOME/bin`, where `cargo install` puts binaries.
fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let path = cargo_bin_dir().join("bpf-linker");
    let version_ok = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if version_ok {
        return Ok(path);
    }
    eprintln!(
        "xtask: setup: installing bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (links the eBPF object; about a minute)"
    );
    exec(workspace::cargo()
        .args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        // Without LLVM_PREFIX its build finds /usr/bin/llvm-config, which is LLVM 14.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))
    .with_context(|| {
        format!(
            "installing bpf-linker; by hand: LLVM_PREFIX={LLVM_PREFIX} LLVM_SYS_221_PREFIX={LLVM_PREFIX} cargo install --locked bpf-linker@{BPF_LINKER_VERSION} --no-default-features --features llvm-22"
        )
    })?;
    Ok(path)
}
