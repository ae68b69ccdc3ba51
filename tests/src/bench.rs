//! Benchmark results: each benchmark appends its rows to one JSON-lines file, from which
//! `cargo xtask bench` prints one comparison table and writes `target/bench.json`.

use std::io::Write;

/// Where the rows go: `BWMON_BENCH_ROWS`, set by `cargo xtask bench`; printed only otherwise.
const ROWS_ENV: &str = "BWMON_BENCH_ROWS";

/// One measured figure, with the figure it is compared to (same run) when there is one.
pub struct Row<'a> {
    /// Group of the table ("throughput", "scale", "datapath", "htb").
    pub group: &'a str,
    /// What was measured.
    pub what: &'a str,
    /// The figure.
    pub value: f64,
    /// Its unit ("Gbit/s", "ms", "MB", "ns/packet").
    pub unit: &'a str,
    /// `value / baseline`, named by what the baseline is ("bare veth").
    pub ratio: Option<(f64, &'a str)>,
    /// The target for this row, as text ("≤ 1 s", "≥ 0.90").
    pub target: &'a str,
}

/// Prints `row` and appends it to the run's rows file.
pub fn record(row: Row) {
    let ratio = row
        .ratio
        .map(|(r, of)| format!("   {r:.2} × {of}"))
        .unwrap_or_default();
    println!(
        "  {:<12} {:<52} {:>12.2} {:<10}{ratio}",
        row.group, row.what, row.value, row.unit
    );
    let Some(path) = std::env::var_os(ROWS_ENV) else {
        return;
    };
    let line = serde_json::json!({
        "group": row.group,
        "what": row.what,
        "value": row.value,
        "unit": row.unit,
        "ratio": row.ratio.map(|(r, _)| r),
        "ratio_of": row.ratio.map(|(_, of)| of),
        "target": row.target,
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.to_string_lossy()));
    writeln!(f, "{line}").unwrap();
}
