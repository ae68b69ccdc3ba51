//! `bwmon report --svg`: a picture of the hourly samples of the history — each slice's use
//! over the last days against its budget and threshold, with the moments it was capped —
//! drawn with plotters' SVG backend.

use std::collections::BTreeMap;

use plotters::prelude::*;

use crate::{
    history::{Entry, Sample},
    serve::slice_view::SliceRef,
    time::UnixSecs,
};

/// Why no picture was made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    /// Nothing to draw.
    #[error("no hourly samples{0} in the history yet")]
    Empty(String),
    /// Drawing or writing failed.
    #[error("drawing the report: {0}")]
    Draw(String),
}

/// One slice's samples in time order.
struct Series<'a> {
    name: &'a str,
    samples: Vec<&'a Sample>,
}

/// The samples of the last `days` before `now` of the slice `which` (every slice when `None`),
/// per slice.
fn series<'a>(
    entries: &'a [Entry],
    which: Option<&SliceRef>,
    days: u64,
    now: UnixSecs,
) -> Vec<Series<'a>> {
    let since = now.saturating_sub(days * 86_400);
    let mut by_xid: BTreeMap<u32, Series<'a>> = BTreeMap::new();
    for e in entries {
        let Entry::Sample(s) = e else { continue };
        let p = &s.period;
        let wanted = match which {
            None => true,
            Some(SliceRef::Name(n)) => &p.slice == n,
            Some(SliceRef::Xid(x)) => p.xid == *x,
        };
        if wanted && s.at >= since {
            by_xid
                .entry(p.xid)
                .or_insert(Series {
                    name: &p.slice,
                    samples: Vec::new(),
                })
                .samples
                .push(s);
        }
    }
    let mut out: Vec<Series<'a>> = by_xid.into_values().collect();
    for s in &mut out {
        s.samples.sort_by_key(|x| x.at);
    }
    out
}

/// "Nov 26 14h" for an axis label.
fn hour_label(at: &f64) -> String {
    let t = crate::time::text::format_time(*at as u64);
    // "Thu Nov 26 14:00:00 2026 GMT" → "Nov 26 14h"
    let parts: Vec<&str> = t.split_whitespace().collect();
    match parts.as_slice() {
        [_, month, day, time, ..] => format!("{month} {day} {}h", &time[..2]),
        _ => t,
    }
}

/// Writes the picture of the general class as SVG text.
///
/// # Errors
/// No samples to draw, or plotters failed.
pub(crate) fn svg(
    entries: &[Entry],
    which: Option<&SliceRef>,
    days: u64,
    now: UnixSecs,
) -> Result<String, ReportError> {
    let series = series(entries, which, days, now);
    if series.is_empty() {
        let of = which.map_or(String::new(), |w| format!(" of slice {w}"));
        return Err(ReportError::Empty(of));
    }
    let draw = |e: &dyn std::fmt::Display| ReportError::Draw(e.to_string());
    let first = series
        .iter()
        .filter_map(|s| s.samples.first())
        .map(|s| s.at)
        .min();
    let x_start = first.unwrap_or(now) as f64;
    let x_end = (now as f64).max(x_start + 3600.0);
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let y_max = series
        .iter()
        .flat_map(|s| &s.samples)
        .map(|s| gib(s.period.budget.general.max(s.period.bytes.general)))
        .fold(0.0f64, f64::max)
        * 1.1;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1200, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "bwmon: general traffic used this period, against budget (dashed) and threshold (dotted)",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_start..x_end, 0.0..y_max.max(0.001))
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("time (GMT)")
            .y_desc("GiB")
            .x_label_formatter(&hour_label)
            .x_labels(8)
            .draw()
            .map_err(|e| draw(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let used = s
                .samples
                .iter()
                .map(|x| (x.at as f64, gib(x.period.bytes.general)));
            chart
                .draw_series(LineSeries::new(used, color.stroke_width(2)))
                .map_err(|e| draw(&e))?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            let line = |pick: fn(&Sample) -> u64| {
                s.samples
                    .iter()
                    .map(move |x| (x.at as f64, gib(pick(x))))
                    .collect::<Vec<_>>()
            };
            let budget = line(|x| x.period.budget.general);
            let threshold = line(|x| x.threshold.general);
            chart
                .draw_series(DashedLineSeries::new(budget, 8, 4, color.stroke_width(1)))
                .map_err(|e| draw(&e))?;
            chart
                .draw_series(DashedLineSeries::new(
                    threshold,
                    2,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(|e| draw(&e))?;
            // The moments of capping: where the period's first cap was seen.
            let caps = s.samples.iter().filter_map(|x| {
                let at = x.period.capped_at.general?;
                Some((at as f64, gib(x.period.bytes.general)))
            });
            let mut seen = std::collections::BTreeSet::new();
            let caps: Vec<(f64, f64)> = caps.filter(|(at, _)| seen.insert(*at as u64)).collect();
            chart
                .draw_series(
                    caps.into_iter()
                        .map(|p| Cross::new(p, 6, color.stroke_width(2))),
                )
                .map_err(|e| draw(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        history::Tracker,
        serve::status::{SliceStatus, StatusReport},
    };

    fn samples() -> Vec<Entry> {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        for hour in 0..30u64 {
            let row = |name: &str, xid, per_hour: u64| SliceStatus {
                name: name.into(),
                xid,
                period_start: 0,
                period_end: 86_400 * 7,
                bytes: per_hour * hour,
                max_kbyte: 5 << 20,
                thresh_kbyte: 4 << 20,
                capped: per_hour * hour > 4 << 30,
                ..Default::default()
            };
            out.extend(t.observe(&StatusReport {
                now: hour * 3600,
                period_secs: 86_400 * 7,
                slices: vec![row("alice", 1, 200 << 20), row("bob", 2, 10 << 20)],
                ..Default::default()
            }));
        }
        out
    }

    #[test]
    fn the_picture_is_svg_with_a_series_per_slice() {
        let text = svg(&samples(), None, 3, 30 * 3600).unwrap();
        // Left for a look in a browser.
        let _ = std::fs::write(std::env::temp_dir().join("bwmon-report-test.svg"), &text);
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for name in ["alice", "bob"] {
            assert!(texts.contains(&name), "no legend for {name}: {texts:?}");
        }
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert!(lines >= 2, "one line of use per slice, got {lines}");
        let one = svg(
            &samples(),
            Some(&SliceRef::Name("bob".into())),
            3,
            30 * 3600,
        )
        .unwrap();
        assert!(one.contains("bob") && !one.contains("alice"));
        assert!(matches!(
            svg(&samples(), Some(&SliceRef::Xid(9)), 3, 30 * 3600),
            Err(ReportError::Empty(_))
        ));
    }
}
