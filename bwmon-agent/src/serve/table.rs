//! The status report as the text table `bwmon status` prints: a line per slice with its use,
//! budget, ceiling and forecast, then the node's figures.

use super::status::StatusReport;
use crate::{
    class::PerClass,
    policy::warnings::Levels,
    time::text::human_secs,
    units::{Bytes, KBytes},
};

/// When, at `rate_bps`, `used` grows to `target` (seconds from now), if it does.
pub(crate) fn eta(used: u64, target: u64, rate_bps: u64) -> Option<u64> {
    if used >= target {
        return Some(0);
    }
    let per_sec = rate_bps / 8;
    (per_sec > 0).then(|| (target - used).div_ceil(per_sec))
}

/// The levels a slice was warned of this period, as the table says them: "80%,95%", the
/// exempt ones after "exempt", or "-".
fn warned(general: &Levels, exempt: &Levels) -> String {
    let said = |l: &Levels| {
        l.iter()
            .map(|p| format!("{}%", p.get()))
            .collect::<Vec<_>>()
            .join(",")
    };
    match (general.is_empty(), exempt.is_empty()) {
        (true, true) => "-".into(),
        (false, true) => said(general),
        (true, false) => format!("exempt {}", said(exempt)),
        (false, false) => format!("{} exempt {}", said(general), said(exempt)),
    }
}

/// The aligned table `bwmon status` prints.
pub(crate) fn table(report: &StatusReport) -> String {
    let headers = [
        "SLICE",
        "XID",
        "USED",
        "%",
        "CEIL",
        "EXEMPT",
        "%",
        "CEIL",
        "CAPPED",
        "THRESH IN",
        "BUDGET IN",
        "WARNED",
    ];
    let mut rows: Vec<[String; 12]> = Vec::new();
    for s in &report.slices {
        let PerClass {
            general: g,
            exempt: e,
        } = s.per_class();
        let capped = match (g.capped, e.capped) {
            (true, true) => "both",
            (true, false) => "general",
            (false, true) => "exempt",
            (false, false) => "-",
        };
        let forecast = |target: KBytes| {
            eta(g.used.0, target.bytes().0, g.rate.0)
                .filter(|t| s.period_end > report.now + t)
                .map(human_secs)
                .unwrap_or_else(|| "-".into())
        };
        rows.push([
            s.name.clone(),
            s.xid.to_string(),
            g.used.to_string(),
            format!("{:.0}", g.percent_used()),
            g.ceil.to_string(),
            e.used.to_string(),
            format!("{:.0}", e.percent_used()),
            e.ceil.to_string(),
            capped.into(),
            forecast(g.thresh),
            forecast(g.budget),
            warned(&g.warned, &e.warned),
        ]);
    }
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "{} on {}{}, period {}\n",
        "bwmon",
        report.interface,
        if report.dry_run { " (dry run)" } else { "" },
        human_secs(report.period_secs)
    );
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths.iter())
            .enumerate()
            .map(|(i, (c, w))| {
                if matches!(i, 0 | 8 | 11) {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(&line(headers.to_vec()));
    out.push('\n');
    for (r, s) in rows.iter().zip(&report.slices) {
        let mut text = line(r.iter().map(String::as_str).collect());
        // Cgroup slices say their cgroup after the columns (a host without them: no change).
        if let Some(cgroup) = &s.cgroup {
            text.push_str(&format!("  cgroup {cgroup}"));
        }
        out.push_str(&text);
        out.push('\n');
    }
    if let Some(bytes) = report.kernel_memory_bytes {
        out.push_str(&format!("kernel memory of the maps: {}\n", Bytes(bytes)));
    }
    if report.leaves_pending > 0 {
        out.push_str(&format!(
            "HTB leaves still to create: {} (capped slices' first; the next syncs make the rest)\n",
            report.leaves_pending
        ));
    }
    out
}
