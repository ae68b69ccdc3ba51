//! The history as `bwmon history` shows it: the finished periods of a slice, each class's use
//! as a bar against its budget.

use super::{
    file::retain,
    records::{Entry, PeriodEntry},
};
use crate::{class::TrafficClass, config::Retention, serve::slice_view::SliceRef};

/// The finished periods in `entries` of the slice `which` (all when `None`), the newest `n`
/// of each, oldest first; a period recorded twice is shown once.
pub(crate) fn periods(entries: &[Entry], which: Option<&SliceRef>, n: usize) -> Vec<PeriodEntry> {
    let matches = |p: &PeriodEntry| match which {
        None => true,
        Some(SliceRef::Name(name)) => &p.slice == name,
        Some(SliceRef::Xid(xid)) => p.xid == *xid,
    };
    let periods = entries.iter().filter_map(|e| match e {
        Entry::Period(p) if matches(p) => Some(Entry::Period(p.clone())),
        _ => None,
    });
    let kept = retain(
        periods.collect(),
        Retention {
            periods: n,
            sample_secs: 0,
        },
        0,
    );
    let mut out: Vec<PeriodEntry> = kept
        .into_iter()
        .filter_map(|e| match e {
            Entry::Period(p) => Some(p),
            Entry::Sample(_) => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.slice, a.start).cmp(&(&b.slice, b.start)));
    out
}

/// `used` of `budget` as a bar of 20 cells.
fn bar(used: u64, budget: u64) -> String {
    const CELLS: u64 = 20;
    let full = (used.saturating_mul(CELLS) / budget.max(1)).min(CELLS) as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(CELLS as usize - full))
}

/// `bwmon history` as text: per slice, a line per period and class with a bar of its use
/// against its budget.
pub(crate) fn render(periods: &[PeriodEntry]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut last = None;
    for p in periods {
        if last != Some((&p.slice, p.xid)) {
            let _ = writeln!(out, "{} (xid {})", p.slice, p.xid);
            last = Some((&p.slice, p.xid));
        }
        let _ = writeln!(
            out,
            "  {} → {}{}",
            crate::time::text::format_time(p.start),
            crate::time::text::format_time(p.end),
            if p.noticed { "  (noticed)" } else { "" }
        );
        for class in TrafficClass::ALL {
            let (used, budget) = (*p.bytes.of(class), *p.budget.of(class));
            let capped = p.capped_at.of(class).map_or(String::new(), |t| {
                format!(
                    "  capped at {}, down to {}",
                    crate::time::text::format_time(t),
                    crate::units::BitsPerSec(*p.lowest_ceil_bps.of(class))
                )
            });
            let _ = writeln!(
                out,
                "    {:<8} {} {:>5.1} %  {} of {}{capped}",
                class.name(),
                bar(used, budget),
                used as f64 * 100.0 / budget.max(1) as f64,
                crate::units::Bytes(used),
                crate::units::Bytes(budget),
            );
        }
    }
    if periods.is_empty() {
        out.push_str("no finished period recorded yet\n");
    }
    out
}
