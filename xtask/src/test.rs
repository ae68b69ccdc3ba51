//! `cargo xtask test`: formatting, lints, unit tests, then the integration tests in network
//! namespaces (root only: they refuse to run otherwise rather than skip).

use anyhow::bail;

use crate::{
    build::{self, Profile},
    setup::Tools,
    workspace::{self, exec, phase},
};

/// The user-space crates whose unit tests run without privileges.
const UNIT_PACKAGES: &[&str] = &["bwmon-common", "bwmon-agent", "xtask"];

/// `promtool check rules` on the shipped alerting rules, with the promtool of Debian's
/// `prometheus` package extracted under `target/` (not installed: no server is started).
fn check_alert_rules() -> anyhow::Result<()> {
    let dir = workspace::root().join("target/tools/prometheus");
    crate::vm::extract(&dir, &["prometheus"])?;
    exec(
        std::process::Command::new(dir.join("root/usr/bin/promtool"))
            .args(["check", "rules"])
            .arg(workspace::root().join("bwmon-agent/etc/alerts.yml")),
    )
}

pub(crate) fn run(tools: &Tools, filter: Option<String>) -> anyhow::Result<()> {
    phase("fmt", || {
        exec(workspace::cargo().args(["fmt", "--all", "--check"]))
    })?;
    let object = phase("ebpf", || build::ebpf(tools))?;
    // Every host crate, the end-to-end tests too (they are not default members).
    phase("clippy", || {
        exec(build::host_cargo(&object).args([
            "clippy",
            "--workspace",
            "--exclude",
            "bwmon-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    let mut unit = build::host_cargo(&object);
    unit.arg("test");
    for p in UNIT_PACKAGES {
        unit.args(["--package", p]);
    }
    phase("unit tests", || exec(&mut unit))?;
    phase("alert rules", check_alert_rules)?;

    if !workspace::is_root() {
        bail!(
            "the integration tests build network namespaces and load eBPF programs: run `cargo xtask test` as root"
        );
    }
    phase("build", || build::all(tools, Profile::Debug))?;
    let mut integration = build::host_cargo(&object);
    integration
        .args(["test", "--package", "tests", "--"])
        // One at a time: they measure rates on a 2-core machine.
        .arg("--test-threads=1");
    if let Some(f) = filter {
        integration.arg(f);
    }
    phase("integration tests", || {
        exec(
            integration.env(
                "BWMON_BIN",
                workspace::root()
                    .join("target")
                    .join(Profile::Debug.dir())
                    .join("bwmon"),
            ),
        )
    })
}
