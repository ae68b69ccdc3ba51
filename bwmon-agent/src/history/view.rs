//! The history as `bwmon history` shows it: the finished periods of a slice, each class's use
//! as a bar against its budget.

use super::{
    file::retain,
    records::{Entry, PeriodEntry},
};
use crate::{
    class::{PerClass, TrafficClass},
    config::Retention,
    serve::slice_view::SliceRef,
    time::UnixSecs,
};

/// `bwmon history --json`: per slice, its finished periods (the document DESIGN.md names;
/// `etc/schema/history.schema.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct HistoryDocument {
    /// The version of bwmon that wrote the document.
    pub version: String,
    /// The slices, by name.
    pub slices: Vec<SliceHistory>,
}

/// One slice's finished periods.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SliceHistory {
    /// Name.
    pub name: String,
    /// Xid.
    pub xid: u32,
    /// Oldest first.
    pub periods: Vec<PeriodView>,
    /// Its cgroup, for a cgroup slice the slices file names now (by path, or by a pattern
    /// matching a cgroup that exists now).
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// One finished period, its classes' numbers side by side as in the status document.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PeriodView {
    /// Start (Unix seconds).
    pub start: UnixSecs,
    /// End (Unix seconds).
    pub end: UnixSecs,
    /// General bytes used.
    pub bytes: u64,
    /// Exempt bytes used.
    pub exempt_bytes: u64,
    /// When the general class was first seen capped, if it was.
    pub capped_at: Option<UnixSecs>,
    /// When the exempt class was first seen capped, if it was.
    pub exempt_capped_at: Option<UnixSecs>,
    /// Notices sent for the period (bwmon sends at most one).
    pub notices: u32,
    /// The general budget (grants included), bytes.
    pub budget_bytes: u64,
    /// The exempt budget, bytes.
    pub exempt_budget_bytes: u64,
    /// The lowest general ceiling of the period, bit/s.
    pub lowest_ceil_bps: u64,
    /// The lowest exempt ceiling, bit/s.
    pub exempt_lowest_ceil_bps: u64,
    /// General bytes received (downloads) in the period.
    #[serde(default)]
    pub received_bytes: u64,
    /// Exempt bytes received in the period.
    #[serde(default)]
    pub received_exempt_bytes: u64,
}

impl PeriodView {
    /// The period `p` as the document shows it: this is the one place that names its classes'
    /// fields.
    fn of(p: &PeriodEntry) -> PeriodView {
        let PerClass {
            general: (bytes, capped_at, budget_bytes, lowest_ceil_bps),
            exempt: (exempt_bytes, exempt_capped_at, exempt_budget_bytes, exempt_lowest_ceil_bps),
        } = PerClass::from_fn(|c| {
            (
                *p.bytes.of(c),
                *p.capped_at.of(c),
                *p.budget.of(c),
                *p.lowest_ceil_bps.of(c),
            )
        });
        PeriodView {
            start: p.start,
            end: p.end,
            bytes,
            exempt_bytes,
            capped_at,
            exempt_capped_at,
            notices: u32::from(p.noticed),
            budget_bytes,
            exempt_budget_bytes,
            lowest_ceil_bps,
            exempt_lowest_ceil_bps,
            received_bytes: p.received.general,
            received_exempt_bytes: p.received.exempt,
        }
    }
}

/// The document of `periods` (as [`periods`] returns them: by slice, oldest first).
pub(crate) fn document(
    periods: &[PeriodEntry],
    cgroups: &std::collections::HashMap<u32, String>,
) -> HistoryDocument {
    let mut slices: Vec<SliceHistory> = Vec::new();
    for p in periods {
        match slices.last_mut() {
            Some(s) if s.name == p.slice && s.xid == p.xid => s.periods.push(PeriodView::of(p)),
            _ => slices.push(SliceHistory {
                name: p.slice.clone(),
                xid: p.xid,
                periods: vec![PeriodView::of(p)],
                cgroup: cgroups.get(&p.xid).cloned(),
            }),
        }
    }
    HistoryDocument {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        slices,
    }
}

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
pub(crate) fn render(
    periods: &[PeriodEntry],
    cgroups: &std::collections::HashMap<u32, String>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut last = None;
    for p in periods {
        if last != Some((&p.slice, p.xid)) {
            let cgroup = cgroups.get(&p.xid);
            let cgroup = cgroup.map_or(String::new(), |c| format!(", cgroup {c}"));
            let _ = writeln!(out, "{} (xid {}{cgroup})", p.slice, p.xid);
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
