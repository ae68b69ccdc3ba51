//! `cargo xtask bench`: the benchmarks, optimised, one at a time. They live as ignored tests in
//! `tests/tests/bench_*.rs` so they share the namespace harness; each prints what it measured
//! next to its baseline from the same run.

use anyhow::bail;

use crate::{build, setup::Tools, workspace};

const BENCHES: &[&str] = &["bench_datapath", "bench_htb"];

pub fn run(tools: &Tools) -> anyhow::Result<()> {
    if !workspace::is_root() {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    let object = build::ebpf(tools)?;
    workspace::exec(build::host_cargo(&object).args([
        "test",
        "--release",
        "--package",
        "bwmon-agent",
        "--lib",
        "--",
        "--ignored",
        "--nocapture",
        "bench_",
    ]))?;
    for bench in BENCHES {
        workspace::exec(build::host_cargo(&object).args([
            "test",
            "--release",
            "--package",
            "tests",
            "--test",
            bench,
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]))?;
    }
    Ok(())
}
