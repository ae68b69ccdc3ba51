//! `cargo xtask test`: formatting, lints, unit tests, then the integration tests in network
//! namespaces (root only: they refuse to run otherwise rather than skip).

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

use crate::{
    build::{self, Profile},
    setup::Tools,
    vm,
    workspace::{self, exec, phase},
};

/// The end-to-end test binaries that run beside the others, in a second stream: they measure
/// no rate and no short timing window (exact counts, files, sockets, mail, hooks, the
/// package), so the share of the two cores the others leave them is enough, and their own
/// light work (a daemon's syncs, a few datagrams) moves no rate the others measure. The rest
/// run one at a time: they measure rates on a 2-core machine.
const BESIDE: &[&str] = &[
    "budget", "history", "notices", "webhook", "service", "package", "operate", "restart", "slots",
    "memory", "schemas", "packets",
];

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
    phase("integration tests", || integration(&object, filter))?;
    if vm_kernels.is_empty() {
        return Ok(());
    }
    // After the host's tests, not beside them: the host's tests use about an eighth of the two
    // cores, but the guests even at SCHED_IDLE disturbed them (two tries: a lab's sync missed
    // its 2.5 s settle; a TCP sender was charged 7.8 % over its payload, retransmissions).
    phase("vm tests", || vm::run(tools, vm_kernels, vm::SMP))
}

/// The end-to-end tests: those of [`BESIDE`] in a second stream beside the others (its output
/// printed whole when both are done), or, with a name `filter`, every binary's tests that match
/// it in one stream.
fn integration(object: &Path, filter: Option<String>) -> anyhow::Result<()> {
    let bin = workspace::root()
        .join("target")
        .join(Profile::Debug.dir())
        .join("bwmon");
    // `targets` by name (with the harness's own unit tests when `lib`), or all of them.
    let tests = |targets: &[String], lib: bool| {
        let mut cmd = build::host_cargo(object);
        cmd.args(["test", "--package", "tests"]);
        if lib {
            cmd.arg("--lib");
        }
        for t in targets {
            cmd.args(["--test", t]);
        }
        // One at a time within a stream.
        cmd.args(["--", "--test-threads=1"]).env("BWMON_BIN", &bin);
        cmd
    };
    if let Some(f) = filter {
        return exec(tests(&[], false).arg(f));
    }
    // Built first, so that neither stream waits on the other for cargo's lock.
    exec(build::host_cargo(object).args(["test", "--package", "tests", "--no-run"]))?;
    let (beside, alone) = streams(&test_targets()?)?;
    let log_path = workspace::root().join("target").join("xtask-beside.log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut second = tests(&beside, false);
    second
        .stdout(log.try_clone().context("the log of the tests beside")?)
        .stderr(log);
    eprintln!(
        "xtask: $ {} (beside, output below when done)",
        workspace::describe(&second)
    );
    let mut child = second
        .spawn()
        .with_context(|| format!("starting `{}`", workspace::describe(&second)))?;
    let first_result = exec(&mut tests(&alone, true));
    let status = child.wait().context("waiting for the tests beside")?;
    let out =
        fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    eprintln!("xtask: the tests that ran beside ({}):", beside.join(", "));
    print!("{out}");
    first_result?;
    if !status.success() {
        bail!("the tests that ran beside failed ({status})");
    }
    Ok(())
}

/// The end-to-end test binaries: `tests/tests/*.rs`, by name.
fn test_targets() -> anyhow::Result<Vec<String>> {
    let dir = workspace::root().join("tests").join("tests");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `targets` split into those of [`BESIDE`] and the others; a name of [`BESIDE`] that is no
/// test binary is an error (a renamed file would otherwise leave the second stream quietly).
fn streams(targets: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    if let Some(gone) = BESIDE.iter().find(|b| !targets.iter().any(|t| t == *b)) {
        bail!(
            "xtask/src/test.rs names the test binary `{gone}` beside the others, but tests/tests/{gone}.rs does not exist"
        );
    }
    Ok(targets
        .iter()
        .cloned()
        .partition(|t| BESIDE.contains(&t.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_runs_in_one_stream_and_the_ones_beside_exist() {
        let all = test_targets().unwrap();
        let (beside, alone) = streams(&all).unwrap();
        assert_eq!(beside.len(), BESIDE.len());
        assert!(alone.iter().any(|t| t == "shares"), "{alone:?}");
        let mut both: Vec<String> = beside.into_iter().chain(alone).collect();
        both.sort();
        assert_eq!(both, all);
    }

    #[test]
    fn a_name_beside_that_is_no_binary_is_refused() {
        let err = streams(&["shares".to_owned()]).unwrap_err().to_string();
        assert!(
            err.contains("tests/tests/budget.rs does not exist"),
            "{err}"
        );
    }
}
