//! What bwmon tells about one slice: everything it knows, for the operator (`bwmon slice
//! show`), and a tenant's own usage (`bwmon status` run by a user). Pure: built from the
//! state, the slice's attributes and the last sync's report line.

use crate::{
    class::TrafficClass,
    policy::Limits,
    policy::levers::Levers,
    policy::rspec::{Attributes, KEYS},
    serve::status::{SliceStatus, percent},
    state::SliceState,
    time::{
        UnixSecs,
        calendar::{Calendar, Periods},
        text::from_now,
    },
    units::{BitsPerSec, Bytes},
};

/// A slice named in a request: by name, or by xid.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum SliceRef {
    /// Its name.
    Name(String),
    /// Its xid.
    Xid(u32),
}

impl SliceRef {
    /// A slice as typed: a number is an xid, anything else a name.
    pub(crate) fn typed(text: &str) -> SliceRef {
        text.parse()
            .map_or_else(|_| SliceRef::Name(text.to_owned()), SliceRef::Xid)
    }

    /// Whether this names the slice `name` with `xid`.
    pub(crate) fn is(&self, name: &str, xid: u32) -> bool {
        match self {
            SliceRef::Name(n) => n == name,
            SliceRef::Xid(x) => *x == xid,
        }
    }
}

impl std::fmt::Display for SliceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SliceRef::Name(n) => write!(f, "'{n}'"),
            SliceRef::Xid(x) => write!(f, "with xid {x}"),
        }
    }
}

/// One attribute's value in force and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AttributeSource {
    /// The rspec key (`net_max_kbyte`, …).
    pub(crate) key: String,
    /// The value in force, in the key's unit (kbit/s, KiB, a share), after the node's caps.
    pub(crate) value: u64,
    /// "slices file", "[defaults]" or "built-in".
    pub(crate) source: String,
}

/// One class of a slice as it stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClassView {
    /// "general" or "exempt".
    pub(crate) class: String,
    /// Bytes used this period.
    pub(crate) used_bytes: u64,
    /// The period's budget, grants included.
    pub(crate) budget_bytes: u64,
    /// Use after which the ceiling is lowered, grants included.
    pub(crate) threshold_bytes: u64,
    /// Extra budget the operator granted for this period.
    pub(crate) granted_bytes: u64,
    /// The ceiling in force, bit/s.
    pub(crate) ceil_bps: u64,
    /// The ceiling when not capped (after an operator limit), bit/s.
    pub(crate) max_rate_bps: u64,
    /// The operator's limit, bit/s, if one is set.
    pub(crate) limit_bps: Option<u64>,
    /// Below its max rate because of its use.
    pub(crate) capped: bool,
    /// Rate over the last interval, bit/s.
    pub(crate) rate_bps: u64,
    /// Use at the period's end at the current rate (at most the ceiling's worth).
    pub(crate) forecast_bytes: u64,
    /// What it is guaranteed now, bit/s: while it sends, its part of the cap among the slices
    /// that send (its min rate, plus the rest by shares, up to its ceiling); idle, its min
    /// rate. 0 when the last sync did not see it.
    #[serde(default)]
    pub(crate) guaranteed_bps: u64,
    /// The cap that is a part of (node cap, or exempt max), bit/s; 0 when unknown.
    #[serde(default)]
    pub(crate) cap_bps: u64,
    /// The levels of its budget (`warn_at`, in %) it was warned of this period.
    #[serde(default)]
    pub(crate) warned_percent: Vec<u8>,
    /// Bytes received this period (downloads from this class's sources), as of the last
    /// sync; under `count = "both"` they are in `used_bytes` too.
    #[serde(default)]
    pub(crate) received_bytes: u64,
}

/// Everything bwmon knows of one slice (`bwmon slice show --json`,
/// `etc/schema/slice.schema.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceDetail {
    /// The version of bwmon that wrote it.
    pub version: String,
    /// Name.
    pub(crate) name: String,
    /// Xid.
    pub(crate) xid: u32,
    /// Left the slices file; kept until its period ends.
    pub(crate) departed: bool,
    /// Attributes in force and their sources (empty for a departed slice).
    pub(crate) attributes: Vec<AttributeSource>,
    /// Its HTB leaves ("1:10a"); none while it shares the default leaves.
    pub(crate) leaves: Vec<String>,
    /// Period start, seconds since the epoch.
    pub(crate) period_start: UnixSecs,
    /// Period end.
    pub(crate) period_end: UnixSecs,
    /// General, then exempt.
    pub(crate) classes: Vec<ClassView>,
    /// Told of its cap in this period.
    pub(crate) emailed: bool,
    /// A notice waits for delivery.
    pub(crate) notice_pending: bool,
    /// Its cgroup (v2 path), for a cgroup slice.
    #[serde(default)]
    pub(crate) cgroup: Option<String>,
}

/// What a tenant sees of their own slice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TenantView {
    /// Name.
    pub(crate) name: String,
    /// Xid (the caller's uid).
    pub(crate) xid: u32,
    /// Period start.
    pub(crate) period_start: UnixSecs,
    /// Period end.
    pub(crate) period_end: UnixSecs,
    /// General, then exempt.
    pub(crate) classes: Vec<ClassView>,
}

/// What `class` will have used at the period's end: `used` plus the current rate over what
/// remains, never more than the ceiling allows.
pub(crate) fn forecast(used: u64, rate_bps: u64, ceil_bps: u64, remaining_secs: u64) -> u64 {
    let per_sec = rate_bps.min(ceil_bps) / 8;
    used.saturating_add(per_sec.saturating_mul(remaining_secs))
}

/// The value of attribute `key` under `l`, in its unit.
fn attribute_value(key: &str, l: &Limits) -> u64 {
    let kbit = |b: crate::units::BitsPerSec| b.0 / 1000;
    let kib = |b: crate::units::Bytes| b.0 / 1024;
    match key {
        "net_min_rate" => kbit(l.general.min_rate),
        "net_max_rate" => kbit(l.general.max_rate),
        "net_i2_min_rate" => kbit(l.exempt.min_rate),
        "net_i2_max_rate" => kbit(l.exempt.max_rate),
        "net_max_kbyte" => kib(l.general.max),
        "net_thresh_kbyte" => kib(l.general.thresh),
        "net_i2_max_kbyte" => kib(l.exempt.max),
        "net_i2_thresh_kbyte" => kib(l.exempt.thresh),
        "net_share" => u64::from(l.general.share),
        _ => u64::from(l.exempt.share),
    }
}

/// What the syncer knows of one slice, for its view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Known<'a> {
    /// Its xid.
    pub(crate) xid: u32,
    /// Its state.
    pub(crate) state: &'a SliceState,
    /// Its own attributes; `None` when it departed.
    pub(crate) attrs: Option<&'a Attributes>,
    /// The config's `[defaults]`.
    pub(crate) defaults: &'a Attributes,
    /// Its limits before levers ([`Limits::base`]).
    pub(crate) base: Limits,
    /// The operator's levers on it, of whichever period: only those [in
    /// force](Levers::in_force) are shown.
    pub(crate) levers: Option<&'a Levers>,
    /// Its line of the last report (rates), when it has one.
    pub(crate) row: Option<&'a SliceStatus>,
    /// A notice waits for delivery.
    pub(crate) notice_pending: bool,
}

/// A slice's view at `now`, its period's end from `periods`.
pub(crate) fn detail(k: &Known<'_>, periods: &Periods, now: UnixSecs) -> SliceDetail {
    let r = &k.state.record;
    let period_end = periods.end(r.period_start);
    let levers = k.levers.filter(|lv| lv.in_force(r, now, periods));
    let limits = k.base.in_force(k.levers, r, now, periods);
    let attributes = k
        .attrs
        .map(|a| {
            KEYS.iter()
                .map(|key| AttributeSource {
                    key: (*key).to_owned(),
                    value: attribute_value(key, &k.base),
                    source: if a.get(key).is_some() {
                        "slices file"
                    } else if k.defaults.get(key).is_some() {
                        "[defaults]"
                    } else {
                        "built-in"
                    }
                    .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    let remaining = period_end.saturating_sub(now);
    let classes = TrafficClass::ALL
        .into_iter()
        .map(|class| {
            let l = limits.of(class);
            let used = r.used(class).0;
            let ceil = r.classes.of(class).ceil.0;
            let seen = k.row.map(|row| row.class(class));
            let rate = seen.map_or(0, |c| c.rate.0);
            ClassView {
                class: class.name().to_owned(),
                used_bytes: used,
                budget_bytes: l.max.0,
                threshold_bytes: l.thresh.0,
                granted_bytes: levers.map_or(0, |lv| lv.grant.of(class).0),
                ceil_bps: ceil,
                max_rate_bps: l.max_rate.0,
                limit_bps: levers.and_then(|lv| lv.limit.of(class).map(|b| b.0)),
                capped: r.capped(class, &limits),
                rate_bps: rate,
                forecast_bytes: forecast(used, rate, ceil, remaining),
                guaranteed_bps: seen.map_or(0, |c| c.guaranteed.0),
                cap_bps: seen.map_or(0, |c| c.cap.0),
                warned_percent: r.warned.of(class).percents(),
                received_bytes: k.row.map_or(0, |row| row.received(class)),
            }
        })
        .collect();
    SliceDetail {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        name: k.state.name.clone(),
        xid: k.xid,
        departed: k.state.departed,
        attributes,
        leaves: k
            .state
            .minors
            .iter()
            .filter_map(|(_, m)| m.map(|m| m.to_string()))
            .collect(),
        period_start: r.period_start,
        period_end,
        classes,
        emailed: r.emailed,
        notice_pending: k.notice_pending,
        cgroup: k.row.and_then(|row| row.cgroup.clone()),
    }
}

fn render_classes(out: &mut String, classes: &[ClassView]) {
    use std::fmt::Write as _;
    for c in classes {
        let pct = c.used_bytes as f64 * 100.0 / c.budget_bytes.max(1) as f64;
        let _ = writeln!(
            out,
            "  {:<8} used {} of {} ({pct:.1} %), ceiling {}{}, now {}, at period end ~{}",
            c.class,
            Bytes(c.used_bytes),
            Bytes(c.budget_bytes),
            BitsPerSec(c.ceil_bps),
            if c.capped { " (capped)" } else { "" },
            BitsPerSec(c.rate_bps),
            Bytes(c.forecast_bytes),
        );
        if c.received_bytes > 0 {
            let _ = writeln!(
                out,
                "           received {} this period",
                Bytes(c.received_bytes)
            );
        }
        if c.granted_bytes > 0 {
            let _ = writeln!(
                out,
                "           granted {} this period",
                Bytes(c.granted_bytes)
            );
        }
        if c.cap_bps > 0 {
            let guaranteed = BitsPerSec(c.guaranteed_bps);
            let pct = percent(c.guaranteed_bps, c.cap_bps);
            let cap = BitsPerSec(c.cap_bps);
            let _ = if c.rate_bps > 0 {
                writeln!(
                    out,
                    "           guaranteed {guaranteed} now ({pct:.1} % of the {cap} cap, by its share among the slices that send)"
                )
            } else {
                writeln!(
                    out,
                    "           guaranteed {guaranteed} while idle ({pct:.1} % of the {cap} cap); sending, a part of it by its share"
                )
            };
        }
        if let Some(l) = c.limit_bps {
            let _ = writeln!(
                out,
                "           limited to {} by the operator",
                BitsPerSec(l)
            );
        }
        if !c.warned_percent.is_empty() {
            let levels: Vec<String> = c.warned_percent.iter().map(|p| format!("{p} %")).collect();
            let _ = writeln!(
                out,
                "           warned at {} of its budget this period",
                levels.join(", ")
            );
        }
    }
}

/// `bwmon slice show` as text.
pub(crate) fn render(d: &SliceDetail, now: UnixSecs) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "slice {} (xid {}){}",
        d.name,
        d.xid,
        if d.departed {
            ", departed: kept until its period ends"
        } else {
            ""
        }
    );
    if let Some(cgroup) = &d.cgroup {
        let _ = writeln!(out, "  cgroup   {cgroup} (and every cgroup below it)");
    }
    let _ = writeln!(
        out,
        "  period   {} → {} (ends {})",
        d.period_start,
        d.period_end,
        from_now(d.period_end, now)
    );
    render_classes(&mut out, &d.classes);
    let leaves = if d.leaves.is_empty() {
        "none yet (shares the default leaves; counted all the same)".to_owned()
    } else {
        d.leaves.join(", ")
    };
    let _ = writeln!(out, "  leaves   {leaves}");
    let notice = match (d.emailed, d.notice_pending) {
        (_, true) => "decided, waiting for delivery",
        (true, false) => "sent this period",
        (false, false) => "none this period",
    };
    let _ = writeln!(out, "  notice   {notice}");
    for a in &d.attributes {
        let _ = writeln!(out, "  {:<20} {:>12}  {}", a.key, a.value, a.source);
    }
    out
}

/// `bwmon status` as a tenant.
pub(crate) fn render_tenant(v: &TenantView, now: UnixSecs) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "slice {} (uid {}): period ends {}",
        v.name,
        v.xid,
        from_now(v.period_end, now)
    );
    render_classes(&mut out, &v.classes);
    out
}

/// A tenant's view of their slice from its line of the last report.
pub(crate) fn tenant(row: &SliceStatus, now: UnixSecs) -> TenantView {
    let period_end = row.period_end;
    let remaining = period_end.saturating_sub(now);
    let classes = TrafficClass::ALL
        .into_iter()
        .map(|class| {
            let c = row.class(class);
            ClassView {
                class: class.name().to_owned(),
                used_bytes: c.used.0,
                budget_bytes: c.budget.bytes().0,
                threshold_bytes: c.thresh.bytes().0,
                granted_bytes: c.granted.0,
                ceil_bps: c.ceil.0,
                max_rate_bps: c.max_rate.0,
                limit_bps: c.limit.map(|r| r.0),
                capped: c.capped,
                rate_bps: c.rate.0,
                forecast_bytes: forecast(c.used.0, c.rate.0, c.ceil.0, remaining),
                guaranteed_bps: c.guaranteed.0,
                cap_bps: c.cap.0,
                warned_percent: c.warned.percents(),
                received_bytes: row.received(class),
            }
        })
        .collect();
    TenantView {
        name: row.name.clone(),
        xid: row.xid,
        period_start: row.period_start,
        period_end,
        classes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        class::PerClass,
        policy::{
            self,
            levers::Lever,
            tests::{NODE, limits},
        },
    };

    /// A slice whose period started at 1000 and was granted 1 MiB in it.
    fn granted() -> (SliceState, Levers) {
        let l = limits(1024);
        let state = SliceState {
            name: "alice".into(),
            record: policy::start(PerClass::default(), &l, 1000),
            minors: PerClass::default(),
            drop_base: PerClass::default(),
            departed: false,
        };
        let lv = Levers::new(1000)
            .pull(Lever::Grant {
                class: TrafficClass::General,
                amount: Bytes(1 << 20),
            })
            .unwrap();
        (state, lv)
    }

    fn view(state: &SliceState, levers: &Levers, now: UnixSecs) -> SliceDetail {
        let attrs = Attributes::default();
        let known = Known {
            xid: 1001,
            state,
            attrs: Some(&attrs),
            defaults: &attrs,
            base: Limits::base(&attrs, &attrs, &NODE),
            levers: Some(levers),
            row: None,
            notice_pending: false,
        };
        detail(&known, &Periods::fixed(100), now)
    }

    #[test]
    fn a_lever_counts_while_its_period_lasts() {
        let (state, lv) = granted();
        let base = Limits::base(&Attributes::default(), &Attributes::default(), &NODE);
        let general = &view(&state, &lv, 1050).classes[0];
        assert_eq!(general.granted_bytes, 1 << 20);
        assert_eq!(general.budget_bytes, base.general.max.0 + (1 << 20));
    }

    #[test]
    fn the_view_says_what_share_of_the_cap_is_guaranteed_now() {
        let (state, _) = granted();
        let attrs = Attributes::default();
        let mut row = SliceStatus {
            name: "alice".into(),
            xid: 1001,
            rate_bps: 5_000_000,
            guaranteed_bps: 25_000_000,
            cap_bps: 100_000_000,
            exempt_guaranteed_bps: 1000,
            exempt_cap_bps: 1_000_000_000,
            ..Default::default()
        };
        let known = |row| Known {
            xid: 1001,
            state: &state,
            attrs: Some(&attrs),
            defaults: &attrs,
            base: Limits::base(&attrs, &attrs, &NODE),
            levers: None,
            row,
            notice_pending: false,
        };
        let d = detail(&known(Some(&row)), &Periods::fixed(100), 1050);
        assert_eq!(
            (d.classes[0].guaranteed_bps, d.classes[0].cap_bps),
            (25_000_000, 100_000_000)
        );
        let text = render(&d, 1050);
        assert!(
            text.contains("guaranteed 25mbit now (25.0 % of the 100mbit cap"),
            "{text}"
        );
        assert!(
            text.contains("guaranteed 1kbit while idle (0.0 % of the 1gbit cap)"),
            "{text}"
        );
        // Not seen by a sync yet: nothing said.
        let d = detail(&known(None), &Periods::fixed(100), 1050);
        assert!(!render(&d, 1050).contains("guaranteed"));
        row.rate_bps = 0;
        row.guaranteed_bps = 1000;
        let tenant_text = render_tenant(&tenant(&row, 1050), 1050);
        assert!(
            tenant_text.contains("guaranteed 1kbit while idle"),
            "{tenant_text}"
        );
    }

    #[test]
    fn a_lever_from_an_expired_period_is_not_shown_as_in_force() {
        let (state, lv) = granted();
        let base = Limits::base(&Attributes::default(), &Attributes::default(), &NODE);
        // The period ended at 1100; the sync that starts the next has not run yet.
        let d = view(&state, &lv, 1100);
        let general = &d.classes[0];
        assert_eq!(general.granted_bytes, 0);
        assert_eq!(general.budget_bytes, base.general.max.0);
        assert_eq!(d.period_end, 1100);
    }
}
