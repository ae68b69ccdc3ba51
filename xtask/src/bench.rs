//! `cargo xtask bench`: the benchmarks, optimised, one at a time. They live as ignored tests in
//! `tests/tests/bench_*.rs` (and the sync's own in the agent) so they share the namespace
//! harness; each records its rows, and this prints them as one comparison table and writes
//! them to `target/bench.json`.

use anyhow::{Context as _, bail};

use crate::{
    build::{self, Profile},
    setup::Tools,
    workspace,
};

const BENCHES: &[&str] = &[
    "bench_datapath",
    "bench_htb",
    "bench_compare",
    "bench_ingress",
];

pub(crate) fn run(tools: &Tools) -> anyhow::Result<()> {
    if !workspace::is_root() {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    let object = build::ebpf(tools)?;
    build::all(tools, Profile::Release)?;
    let rows = workspace::root().join("target/bench-rows.jsonl");
    let _ = std::fs::remove_file(&rows);
    // `cargo test --release ARGS`, with the rows file every benchmark appends to.
    let bench = |args: &[&str]| {
        let mut c = build::host_cargo(&object);
        c.args(["test", "--release"])
            .args(args)
            .env("BWMON_BENCH_ROWS", &rows);
        c
    };
    workspace::exec(&mut bench(&[
        "--package",
        "bwmon-agent",
        "--lib",
        "--",
        "--ignored",
        "--nocapture",
        "bench_",
    ]))?;
    let bwmon = workspace::root()
        .join("target")
        .join(Profile::Release.dir())
        .join("bwmon");
    for name in BENCHES {
        workspace::exec(
            bench(&[
                "--package",
                "tests",
                "--test",
                name,
                "--",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BWMON_BIN", &bwmon),
        )?;
    }
    table(&rows)
}

/// Prints the recorded rows as one table and writes them as a JSON array.
fn table(rows: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(rows)
        .with_context(|| format!("reading the benchmark rows {}", rows.display()))?;
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", "target/bench-rows.jsonl"))?;
    println!();
    println!(
        "{:<11} {:<52} {:>26} {:<10} {:>32}  target",
        "group", "what", "value (min–max over rounds)", "unit", "ratio"
    );
    // `(lo–hi)` when the row has a spread.
    let spread = |r: &serde_json::Value, lo: &str, hi: &str| match (r[lo].as_f64(), r[hi].as_f64())
    {
        (Some(lo), Some(hi)) => format!(" ({lo:.2}–{hi:.2})"),
        _ => String::new(),
    };
    for r in &rows {
        let ratio = match (r["ratio"].as_f64(), r["ratio_of"].as_str()) {
            (Some(x), Some(of)) => format!("{x:.2}{} × {of}", spread(r, "ratio_min", "ratio_max")),
            _ => String::new(),
        };
        let value = format!(
            "{:.2}{}",
            r["value"].as_f64().unwrap_or(f64::NAN),
            spread(r, "min", "max")
        );
        println!(
            "{:<11} {:<52} {:>26} {:<10} {:>32}  {}",
            r["group"].as_str().unwrap_or(""),
            r["what"].as_str().unwrap_or(""),
            value,
            r["unit"].as_str().unwrap_or(""),
            ratio,
            r["target"].as_str().unwrap_or(""),
        );
    }
    let out = workspace::root().join("target/bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nxtask: the table is also in {}", out.display());
    Ok(())
}
