//! `bwmon report --svg`: a picture of the hourly samples of the history — each slice's use of
//! its general budget over the last days (and, thin and dashed, what it received of it: the
//! downloads, charged under `count = "both"`), drawn as a share of that budget so that a slice with
//! a 40 MiB budget and one with 5 GiB are drawn alike and the ones near their budget stand
//! out — with the 100 % line, each slice's threshold (dotted) and the moments it was capped
//! (crosses). Drawn with plotters' SVG backend on a time axis whose ticks fit the span.

use std::{collections::BTreeMap, ops::Range};

use plotters::{
    coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged},
    prelude::*,
};

use crate::{
    history::{Entry, Sample},
    serve::slice_view::SliceRef,
    time::{UnixSecs, text::format_time},
};

/// Which slices to draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The `n` that came nearest their budget: the highest share reached in the span.
    Top(usize),
    /// These, whatever their share.
    Named(Vec<SliceRef>),
}

impl Pick {
    /// How many slices `--top` draws when not told.
    pub(crate) const DEFAULT_TOP: usize = 10;
}

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

/// One hourly sample as drawn: shares are percent of the budget at that hour.
struct Point {
    at: UnixSecs,
    used: f64,
    threshold: f64,
    /// General bytes received so far in the period, as percent of the budget.
    received: f64,
    /// When the period's first cap was seen, if it was by then.
    capped_at: Option<UnixSecs>,
}

/// One slice's points in time order.
struct Series<'a> {
    name: &'a str,
    points: Vec<Point>,
    /// The highest share reached.
    peak: f64,
}

/// `part` as percent of `budget`; none for a slice without a budget.
fn percent(part: u64, budget: u64) -> Option<f64> {
    (budget > 0).then(|| part as f64 * 100.0 / budget as f64)
}

/// The slices to draw, and how many had samples with a budget in the span.
struct Chosen<'a> {
    series: Vec<Series<'a>>,
    of: usize,
}

/// The samples of the last `days` before `now` of the slices `pick` asks for, per slice: the
/// named ones, or the `n` with the highest peak share (ties by name).
fn choose<'a>(entries: &'a [Entry], pick: &Pick, days: u64, now: UnixSecs) -> Chosen<'a> {
    let since = now.saturating_sub(days * 86_400);
    let wanted = |s: &Sample| match pick {
        Pick::Top(_) => true,
        Pick::Named(names) => names.iter().any(|n| n.is(&s.period.slice, s.period.xid)),
    };
    let mut by_xid: BTreeMap<u32, Vec<&'a Sample>> = BTreeMap::new();
    for e in entries {
        let Entry::Sample(s) = e else { continue };
        if s.at >= since && wanted(s) {
            by_xid.entry(s.period.xid).or_default().push(s);
        }
    }
    let mut series: Vec<Series<'a>> = by_xid
        .into_values()
        .filter_map(|mut samples| {
            samples.sort_by_key(|x| x.at);
            let name = samples.first()?.period.slice.as_str();
            let points: Vec<Point> = samples
                .iter()
                .filter_map(|x| {
                    let budget = x.period.budget.general;
                    Some(Point {
                        at: x.at,
                        used: percent(x.period.bytes.general, budget)?,
                        threshold: percent(x.threshold.general, budget)?,
                        received: percent(x.period.received.general, budget)?,
                        capped_at: x.period.capped_at.general,
                    })
                })
                .collect();
            let peak = points
                .iter()
                .map(|p| p.used)
                .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))))?;
            Some(Series { name, points, peak })
        })
        .collect();
    let of = series.len();
    if let Pick::Top(n) = pick {
        series.sort_by(|a, b| b.peak.total_cmp(&a.peak).then(a.name.cmp(b.name)));
        series.truncate(*n);
    }
    Chosen { series, of }
}

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;
/// Unix day 0 was a Thursday: weekly ticks fall on the Mondays after it.
const MONDAY: u64 = 4 * DAY;
/// Tick spacings, shortest first; every one below a day divides a day.
const STEPS: [u64; 10] = [
    HOUR,
    2 * HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    WEEK,
    2 * WEEK,
    4 * WEEK,
];
/// At most this many ticks (and one more at an exact fit): their labels fit side by side.
const MAX_TICKS: u64 = 8;

/// The time axis (GMT): ticks on whole hours, days or Mondays, spaced so their labels fit,
/// labelled with what changes at that spacing ("14:00", or "Nov 26" at midnight and for days).
#[derive(Clone)]
struct TimeAxis {
    span: Range<UnixSecs>,
    step: u64,
}

impl TimeAxis {
    fn new(start: UnixSecs, end: UnixSecs) -> TimeAxis {
        let len = end.saturating_sub(start).max(1);
        let step = STEPS
            .into_iter()
            .find(|s| len / s <= MAX_TICKS)
            .unwrap_or_else(|| len.div_ceil(MAX_TICKS).div_ceil(WEEK) * WEEK);
        TimeAxis {
            span: start..end.max(start + 1),
            step,
        }
    }

    /// The ticks inside the span.
    fn ticks(&self) -> Vec<UnixSecs> {
        let origin = if self.step.is_multiple_of(WEEK) {
            MONDAY
        } else {
            0
        };
        let first = self.span.start.saturating_sub(origin).div_ceil(self.step) * self.step + origin;
        (first..=self.span.end)
            .step_by(usize::try_from(self.step).unwrap_or(usize::MAX))
            .collect()
    }

    /// A tick's label.
    fn label(&self, at: UnixSecs) -> String {
        let (date, time) = date_and_time(at);
        if self.step < DAY && !at.is_multiple_of(DAY) {
            time
        } else {
            date
        }
    }

    /// The axis' title: the time zone and the dates it covers.
    fn title(&self) -> String {
        let (from, _) = date_and_time(self.span.start);
        let (to, _) = date_and_time(self.span.end);
        if from == to {
            format!("time (GMT), {from}")
        } else {
            format!("time (GMT), {from} – {to}")
        }
    }
}

/// "Nov 26" and "14:00" of a Unix time, GMT.
fn date_and_time(at: UnixSecs) -> (String, String) {
    // "Thu Nov 26 14:00:00 2026 GMT"
    let text = format_time(at);
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        [_, month, day, time, ..] => (
            format!("{month} {day}"),
            time.get(..5).unwrap_or(time).to_owned(),
        ),
        _ => (text.clone(), text),
    }
}

impl Ranged for TimeAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (start, end) = (self.span.start as f64, self.span.end as f64);
        let share = (value - start) / (end - start);
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Bold lines only, at the ticks; the light ones would fall between unlabelled.
        if hint.max_num_points() == 0 || hint.weight().allow_light_points() {
            return Vec::new();
        }
        self.ticks().into_iter().map(|t| t as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        self.span.start as f64..self.span.end as f64
    }
}

/// The share axis reaches this far at least (the 100 % line and a margin above it) and at
/// most three times the budget (a slice far beyond it is cut at the top).
fn share_axis_top(peak: f64) -> f64 {
    peak.clamp(100.0, 300.0) * 1.1
}

/// The report's error when `pick` chose no slice with something to draw.
fn nothing_to_draw(pick: &Pick) -> ReportError {
    let of = match pick {
        Pick::Top(_) => " of a slice with a budget".to_owned(),
        Pick::Named(names) => {
            let names: Vec<String> = names.iter().map(ToString::to_string).collect();
            format!(" of slice {}", names.join(", "))
        }
    };
    ReportError::Empty(of)
}

/// The chart's caption: `drawn` slices of the `of` that had something to draw.
fn caption(drawn: usize, of: usize) -> String {
    if drawn < of {
        format!(
            "bwmon: general traffic used, as a share of each slice's budget ({drawn} of {of} slices, nearest their budget first)"
        )
    } else {
        "bwmon: general traffic used, as a share of each slice's budget".to_owned()
    }
}

/// Writes the picture of the general class as SVG text.
///
/// # Errors
/// No samples to draw, or plotters failed.
pub(crate) fn svg(
    entries: &[Entry],
    pick: &Pick,
    days: u64,
    now: UnixSecs,
) -> Result<String, ReportError> {
    let Chosen { series, of } = choose(entries, pick, days, now);
    if series.is_empty() {
        return Err(nothing_to_draw(pick));
    }
    let draw = |e: &dyn std::fmt::Display| ReportError::Draw(e.to_string());
    let first = series
        .iter()
        .filter_map(|s| s.points.first())
        .map(|p| p.at)
        .min()
        .unwrap_or(now);
    let axis = TimeAxis::new(first, now.max(first + HOUR));
    let (x_start, x_end) = (axis.span.start as f64, axis.span.end as f64);
    let y_top = share_axis_top(series.iter().map(|s| s.peak).fold(0.0, f64::max));
    let title = axis.title();
    let labels = axis.clone();
    let tick_label = |x: &f64| labels.label(*x as UnixSecs);
    let caption = caption(series.len(), of);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1200, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(axis, 0.0..y_top)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc(title)
            .y_desc("share of the budget")
            .x_label_formatter(&tick_label)
            .y_label_formatter(&|y| format!("{y:.0} %"))
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(LineSeries::new(
                [(x_start, 100.0), (x_end, 100.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| draw(&e))?
            .label("budget (100 %); dotted: threshold; dashed: received")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let used = s.points.iter().map(|p| (p.at as f64, p.used));
            chart
                .draw_series(LineSeries::new(used, color.stroke_width(2)))
                .map_err(|e| draw(&e))?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            let threshold: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|p| (p.at as f64, p.threshold))
                .collect();
            chart
                .draw_series(DashedLineSeries::new(
                    threshold,
                    2,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(|e| draw(&e))?;
            // Downloads: drawn only for slices that received something.
            if s.points.iter().any(|p| p.received > 0.0) {
                let received: Vec<(f64, f64)> =
                    s.points.iter().map(|p| (p.at as f64, p.received)).collect();
                chart
                    .draw_series(DashedLineSeries::new(received, 8, 4, color.stroke_width(1)))
                    .map_err(|e| draw(&e))?;
            }
            // The moments of capping: where the period's first cap was seen.
            let mut seen = std::collections::BTreeSet::new();
            let caps: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|p| Some((p.capped_at?, p.used)))
                .filter(|(at, _)| seen.insert(*at))
                .map(|(at, used)| (at as f64, used))
                .collect();
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

    /// Hourly samples of `slices` (name, xid, budget in KiB, bytes per hour) over 30 hours.
    fn samples_of(slices: &[(&str, u32, u64, u64)]) -> Vec<Entry> {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        for hour in 0..30u64 {
            let row = |&(name, xid, budget_kib, per_hour): &(&str, u32, u64, u64)| SliceStatus {
                name: name.into(),
                xid,
                period_start: 0,
                period_end: 86_400 * 7,
                bytes: per_hour * hour,
                max_kbyte: budget_kib,
                thresh_kbyte: budget_kib * 4 / 5,
                capped: per_hour * hour > budget_kib * 1024 * 4 / 5,
                ..Default::default()
            };
            out.extend(t.observe(&StatusReport {
                now: hour * 3600,
                period_secs: 86_400 * 7,
                slices: slices.iter().map(row).collect(),
                ..Default::default()
            }));
        }
        out
    }

    fn samples() -> Vec<Entry> {
        samples_of(&[
            ("alice", 1, 5 << 20, 200 << 20),
            ("bob", 2, 5 << 20, 10 << 20),
        ])
    }

    fn parse(text: &str) -> roxmltree::Document<'_> {
        let doc = roxmltree::Document::parse(text).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc
    }

    fn texts<'a>(doc: &'a roxmltree::Document<'_>) -> Vec<&'a str> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect()
    }

    /// The lines of use (the only polylines 2 px wide), each as its points' heights in pixels.
    fn use_lines(doc: &roxmltree::Document<'_>) -> Vec<Vec<f64>> {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
            .map(|n| {
                n.attribute("points")
                    .unwrap()
                    .split_whitespace()
                    .map(|p| p.split(',').nth(1).unwrap().parse::<f64>().unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_picture_is_svg_with_a_series_per_slice() {
        let all = Pick::Top(Pick::DEFAULT_TOP);
        let text = svg(&samples(), &all, 3, 30 * 3600).unwrap();
        // Left for a look in a browser.
        let _ = std::fs::write(std::env::temp_dir().join("bwmon-report-test.svg"), &text);
        let doc = parse(&text);
        let texts = texts(&doc);
        for name in ["alice", "bob"] {
            assert!(texts.contains(&name), "no legend for {name}: {texts:?}");
        }
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert!(lines >= 2, "one line of use per slice, got {lines}");
        let bob = Pick::Named(vec![SliceRef::Name("bob".into())]);
        let one = svg(&samples(), &bob, 3, 30 * 3600).unwrap();
        assert!(one.contains("bob") && !one.contains("alice"));
        assert!(matches!(
            svg(
                &samples(),
                &Pick::Named(vec![SliceRef::Xid(9)]),
                3,
                30 * 3600
            ),
            Err(ReportError::Empty(_))
        ));
    }

    #[test]
    fn what_a_slice_received_is_drawn_beside_its_use_when_it_received_anything() {
        let all = Pick::Top(Pick::DEFAULT_TOP);
        let polylines = |entries: &[Entry]| {
            let text = svg(entries, &all, 3, 30 * 3600).unwrap();
            parse(&text)
                .descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .count()
        };
        let plain = samples();
        let mut downloads = plain.clone();
        for e in &mut downloads {
            if let Entry::Sample(s) = e
                && s.period.slice == "alice"
            {
                s.period.received.general = s.period.bytes.general / 2;
            }
        }
        // A dashed line is a polyline per dash.
        assert!(
            polylines(&downloads) > polylines(&plain),
            "alice's received line is drawn"
        );
        let text = svg(&downloads, &all, 3, 30 * 3600).unwrap();
        assert_eq!(
            use_lines(&parse(&text)).len(),
            2,
            "the lines of use are unchanged"
        );
    }

    #[test]
    fn slices_with_budgets_a_thousand_times_apart_both_span_a_visible_height() {
        // 5 GiB and 5 MiB, each at 90 % and 45 % of it after 30 hours.
        let entries = samples_of(&[
            ("big", 1, 5 << 20, (5u64 << 30) * 9 / 10 / 29),
            ("small", 2, 5 << 10, (5u64 << 20) * 45 / 100 / 29),
        ]);
        let text = svg(&entries, &Pick::Top(10), 3, 30 * 3600).unwrap();
        let doc = parse(&text);
        let lines = use_lines(&doc);
        assert_eq!(lines.len(), 2, "one line of use per slice");
        for heights in &lines {
            let (low, high) = heights
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), y| (l.min(*y), h.max(*y)));
            // The plot is about 500 px high; 45 % of the budget is over a third of it.
            assert!(high - low > 150.0, "a line {} px high", high - low);
        }
        let texts = texts(&doc);
        assert!(
            texts.iter().any(|t| t.starts_with("budget (100 %)")),
            "the budget's line is in the legend: {texts:?}"
        );
    }

    #[test]
    fn the_top_slices_by_share_are_drawn_unless_slices_are_named() {
        // s0 … s11 with one budget, each using more than the one before.
        let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
        let slices: Vec<(&str, u32, u64, u64)> = names
            .iter()
            .zip(1u32..)
            .map(|(n, i)| (n.as_str(), i, 1 << 20, u64::from(i) << 20))
            .collect();
        let entries = samples_of(&slices);
        let legend = |pick: &Pick| {
            let text = svg(&entries, pick, 3, 30 * 3600).unwrap();
            let doc = parse(&text);
            let mut shown: Vec<String> = texts(&doc)
                .into_iter()
                .filter(|t| names.iter().any(|n| n == t))
                .map(str::to_owned)
                .collect();
            shown.sort();
            (shown, use_lines(&doc).len())
        };
        assert_eq!(
            legend(&Pick::Top(3)),
            (vec!["s10".into(), "s11".into(), "s9".into()], 3)
        );
        assert_eq!(legend(&Pick::Top(Pick::DEFAULT_TOP)).1, 10);
        let named = Pick::Named(vec![SliceRef::Name("s0".into()), SliceRef::Xid(5)]);
        assert_eq!(legend(&named), (vec!["s0".into(), "s4".into()], 2));
    }

    #[test]
    fn ticks_fit_the_span() {
        let day0 = 20_000 * DAY;
        // A few hours: on the hour, labelled with the time only.
        let axis = TimeAxis::new(day0 + 2 * HOUR + 600, day0 + 7 * HOUR);
        let labels: Vec<String> = axis.ticks().iter().map(|t| axis.label(*t)).collect();
        assert_eq!(labels, ["03:00", "04:00", "05:00", "06:00", "07:00"]);
        // A day: every 3 hours, the date at midnight.
        let axis = TimeAxis::new(day0 + 12 * HOUR, day0 + 36 * HOUR);
        let labels: Vec<String> = axis.ticks().iter().map(|t| axis.label(*t)).collect();
        assert_eq!(labels.len(), 9, "{labels:?}");
        assert!(labels.contains(&"15:00".to_owned()), "{labels:?}");
        assert_eq!(
            labels.iter().filter(|l| !l.contains(':')).count(),
            1,
            "{labels:?}"
        );
        // A week: one tick a day, each a different date.
        let axis = TimeAxis::new(day0, day0 + 7 * DAY);
        let labels: Vec<String> = axis.ticks().iter().map(|t| axis.label(*t)).collect();
        assert_eq!(labels.len(), 8, "{labels:?}");
        assert!(labels.iter().all(|l| !l.contains(':')), "{labels:?}");
        let unique: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
        // Ninety days: weekly or longer, on Mondays.
        let axis = TimeAxis::new(day0, day0 + 90 * DAY);
        let ticks = axis.ticks();
        assert!(ticks.len() <= MAX_TICKS as usize + 1, "{ticks:?}");
        assert!(ticks.iter().all(|t| format_time(*t).starts_with("Mon ")));
        // No span, or a year: still a handful of ticks.
        assert!(TimeAxis::new(day0 + 1, day0 + 1).ticks().len() <= 1);
        assert!(TimeAxis::new(day0, day0 + 400 * DAY).ticks().len() <= MAX_TICKS as usize + 1);
    }
}
