//! `cargo xtask test`: formatting, lints, unit tests, then the integration tests in network
//! namespaces (root only: they refuse to run otherwise rather than skip).

use anyhow::{Context as _, bail};

use crate::{
    build::{self, Profile},
    setup::Tools,
    vm,
    workspace::{self, exec, phase},
};

/// The user-space crates whose unit tests run without privileges.
const UNIT_PACKAGES: &[&str] = &["bwmon-common", "bwmon-agent", "xtask"];

/// The shipped Prometheus files, checked by the promtool of Debian's `prometheus` package
/// (extracted under `target/`, not installed: no server is started): the alerting and
/// recording rules parse (`check rules`), behave on the fleet they are written for (`test
/// rules`), and every Grafana query parses too (each as a recording rule, the dashboards'
/// variables standing for any value).
fn check_prometheus_files() -> anyhow::Result<()> {
    let dir = workspace::root().join("target/tools/prometheus");
    crate::vm::extract(&dir, &["prometheus"])?;
    let promtool = dir.join("root/usr/bin/promtool");
    let etc = workspace::root().join("bwmon-agent/etc");
    let queries = dir.join("dashboard-queries.yml");
    std::fs::write(&queries, dashboard_queries_as_rules(&etc)?)?;
    exec(
        std::process::Command::new(&promtool)
            .args(["check", "rules"])
            .arg(etc.join("alerts.yml"))
            .arg(etc.join("recording-rules.yml"))
            .arg(&queries),
    )?;
    exec(
        std::process::Command::new(&promtool)
            .args(["test", "rules"])
            .arg(etc.join("rules.test.yml")),
    )
}

/// The queries of the shipped dashboards as a rules file, one recording rule each.
fn dashboard_queries_as_rules(etc: &std::path::Path) -> anyhow::Result<String> {
    let mut out = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for file in ["grafana-dashboard.json", "grafana-fleet-dashboard.json"] {
        let path = etc.join(file);
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("parsing {}", path.display()))?;
        let targets = dashboard["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["targets"].as_array())
            .flatten();
        for expr in targets.filter_map(|t| t["expr"].as_str()) {
            n += 1;
            let expr = expr.replace("$instance", ".*").replace("$slice", ".*");
            // A JSON string is a YAML double-quoted scalar.
            out.push_str(&format!(
                "      - record: dashboard:query:{n}\n        expr: {}\n",
                serde_json::to_string(&expr)?
            ));
        }
    }
    Ok(out)
}

/// fmt, clippy, unit tests, the Prometheus files, then the end-to-end tests on the host — and
/// then, for each kernel line of `vm_kernels`, in a qemu guest (the guests side by side).
pub(crate) fn run(
    tools: &Tools,
    filter: Option<String>,
    vm_kernels: &[&str],
) -> anyhow::Result<()> {
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
    phase("prometheus rules", check_prometheus_files)?;

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
    })?;
    if vm_kernels.is_empty() {
        return Ok(());
    }
    // After the host's tests, not beside them: the host's tests use about an eighth of the two
    // cores, but the guests even at SCHED_IDLE disturbed them (two tries: a lab's sync missed
    // its 2.5 s settle; a TCP sender was charged 7.8 % over its payload, retransmissions).
    phase("vm tests", || vm::run(tools, vm_kernels, vm::SMP))
}
