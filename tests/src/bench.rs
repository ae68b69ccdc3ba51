//! Benchmark results: each benchmark appends its rows to one JSON-lines file, from which
//! `cargo xtask bench` prints one comparison table and writes `target/bench.json`.

use std::io::Write;

/// Where the rows go: `BWMON_BENCH_ROWS`, set by `cargo xtask bench`; printed only otherwise.
const ROWS_ENV: &str = "BWMON_BENCH_ROWS";

/// One measured figure, with the figure it is compared to (same run) when there is one.
#[derive(Clone, Copy, Debug, Default)]
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
    /// The lowest and highest value over the rounds whose median `value` is.
    pub spread: Option<(f64, f64)>,
    /// The lowest and highest per-round ratio, when `ratio` is their median.
    pub ratio_spread: Option<(f64, f64)>,
}

/// The median of `runs`, and their lowest and highest.
pub fn median_spread(runs: &[f64]) -> (f64, (f64, f64)) {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let lo = sorted.first().copied().unwrap_or(f64::NAN);
    let hi = sorted.last().copied().unwrap_or(f64::NAN);
    (median, (lo, hi))
}

/// ` (lo–hi)` for a spread, empty without one.
pub fn spread_text((lo, hi): (f64, f64)) -> String {
    format!(" ({lo:.2}–{hi:.2})")
}

/// Prints `row` and appends it to the run's rows file.
pub fn record(row: Row) {
    let ratio_spread = row.ratio_spread.map(spread_text).unwrap_or_default();
    let ratio = row
        .ratio
        .map(|(r, of)| format!("   {r:.2}{ratio_spread} × {of}"))
        .unwrap_or_default();
    let spread = row.spread.map(spread_text).unwrap_or_default();
    println!(
        "  {:<12} {:<52} {:>12.2}{spread} {:<10}{ratio}",
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
        "min": row.spread.map(|s| s.0),
        "max": row.spread.map(|s| s.1),
        "ratio_min": row.ratio_spread.map(|s| s.0),
        "ratio_max": row.ratio_spread.map(|s| s.1),
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.to_string_lossy()));
    writeln!(f, "{line}").unwrap();
}

/// `kernel.bpf_stats_enabled` set for as long as this lives, and put back as it was after.
/// Per-program statistics cost two clock reads per run (~30 ns here): on for the per-packet cost
/// rows, off for every throughput row (left on, they charged bwmon's programs a cost the
/// bare veth never pays).
pub struct BpfStats(Option<String>);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    /// Statistics on.
    pub fn on() -> Self {
        Self::set("1")
    }

    /// Statistics off (a throughput measurement).
    pub fn off() -> Self {
        Self::set("0")
    }

    fn set(value: &str) -> Self {
        let was = std::fs::read_to_string(BPF_STATS).ok();
        std::fs::write(BPF_STATS, value)
            .unwrap_or_else(|e| panic!("writing {value} to {BPF_STATS}: {e}"));
        Self(was)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = std::fs::write(BPF_STATS, was.trim());
        }
    }
}

/// A program's runs between two readings of its statistics, and its mean nanoseconds per run.
pub fn per_packet(
    before: bwmon_agent::datapath::ProgramStats,
    after: bwmon_agent::datapath::ProgramStats,
) -> (u64, f64) {
    let runs = after.run_count - before.run_count;
    let ns = (after.run_time - before.run_time).as_nanos() as f64;
    (runs, ns / runs.max(1) as f64)
}
