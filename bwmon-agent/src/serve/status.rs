//! The status report the daemon serves: what `bwmon status` prints and `--json` emits, with the
//! design's field names (more may be added, none renamed).

use crate::{
    class::{PerClass, TrafficClass},
    error_kind::ErrorCounts,
    policy::received::Count,
    policy::warnings::{Levels, Percent},
    time::UnixSecs,
    units::{BitsPerSec, Bytes, KBytes},
};

/// One slice's line.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SliceStatus {
    /// Name.
    pub(crate) name: String,
    /// xid.
    pub(crate) xid: u32,
    /// Start of its current period (Unix seconds).
    pub(crate) period_start: u64,
    /// General bytes used in the current period.
    pub(crate) bytes: u64,
    /// Exempt bytes used in the current period.
    pub(crate) exempt_bytes: u64,
    /// General ceiling in force, bit/s.
    pub(crate) ceil_bps: u64,
    /// Exempt ceiling in force, bit/s.
    pub(crate) exempt_ceil_bps: u64,
    /// General volume per period, KBytes.
    pub(crate) max_kbyte: u64,
    /// General threshold, KBytes.
    pub(crate) thresh_kbyte: u64,
    /// Exempt volume per period, KBytes.
    pub(crate) i2_max_kbyte: u64,
    /// Exempt threshold, KBytes.
    pub(crate) i2_thresh_kbyte: u64,
    /// General ceiling lowered.
    pub(crate) capped: bool,
    /// Exempt ceiling lowered.
    pub(crate) exempt_capped: bool,
    /// Noticed this period.
    pub(crate) emailed: bool,
    /// General max rate, bit/s (the ceiling when not capped).
    pub(crate) max_rate_bps: u64,
    /// Exempt max rate, bit/s.
    pub(crate) i2_max_rate_bps: u64,
    /// Bytes its leaves dropped before they left (qdisc full), since the datapath was loaded.
    pub(crate) dropped_bytes: u64,
    /// Average rate over the last sync interval, general, bit/s.
    pub(crate) rate_bps: u64,
    /// Average rate over the last sync interval, exempt, bit/s.
    pub(crate) exempt_rate_bps: u64,
    /// Its HTB leaves, as tc writes them ("1:100"); empty for the default pseudo-slice's
    /// fixed classes.
    pub(crate) classes: Vec<String>,
    /// End of its current period (Unix seconds): a calendar day or month when periods are
    /// aligned, else the start plus the period.
    #[serde(default)]
    pub(crate) period_end: u64,
    /// Extra general budget the operator granted for this period (included in `max_kbyte`).
    #[serde(default)]
    pub granted_bytes: u64,
    /// Extra exempt budget granted for this period (included in `i2_max_kbyte`).
    #[serde(default)]
    pub exempt_granted_bytes: u64,
    /// The operator's general ceiling, bit/s, when one is set.
    #[serde(default)]
    pub limit_bps: Option<u64>,
    /// The operator's exempt ceiling, bit/s, when one is set.
    #[serde(default)]
    pub exempt_limit_bps: Option<u64>,
    /// What its general traffic is guaranteed now, bit/s: while it sends, its part of the node
    /// cap among the leaves that send (its min rate, plus the rest by shares, up to its
    /// ceiling); idle, its min rate.
    #[serde(default)]
    pub(crate) guaranteed_bps: u64,
    /// What its exempt traffic is guaranteed now, bit/s (of the exempt max, by `net_i2_share`).
    #[serde(default)]
    pub(crate) exempt_guaranteed_bps: u64,
    /// The cap `guaranteed_bps` is a part of: the node cap, bit/s.
    #[serde(default)]
    pub(crate) cap_bps: u64,
    /// The cap `exempt_guaranteed_bps` is a part of: the exempt max, bit/s.
    #[serde(default)]
    pub(crate) exempt_cap_bps: u64,
    /// The levels of its general budget it was warned of this period (`warn_at`), in %.
    #[serde(default)]
    pub(crate) warned_percent: Vec<u8>,
    /// The levels of its exempt budget it was warned of this period, in %.
    #[serde(default)]
    pub(crate) exempt_warned_percent: Vec<u8>,
    /// Its cgroup (v2 path) for a cgroup slice, else `None` (`null`: the control protocol's
    /// format has no optional fields).
    #[serde(default)]
    pub(crate) cgroup: Option<String>,
    /// General bytes it received in the current period (downloads; by the packet's source).
    /// Under `count = "both"` they are also in `bytes`, which its budget is charged.
    #[serde(default)]
    pub(crate) received_bytes: u64,
    /// Exempt bytes it received in the current period (from the exempt prefixes).
    #[serde(default)]
    pub(crate) received_exempt_bytes: u64,
    /// Which bytes its budget covers: "egress" (sent) or "both" (sent + received).
    #[serde(default = "egress")]
    pub(crate) count: String,
}

fn egress() -> String {
    Count::Egress.name().to_owned()
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// When it was made (Unix seconds).
    pub(crate) now: u64,
    /// Length of a period, seconds.
    pub(crate) period_secs: u64,
    /// The interface.
    pub(crate) interface: String,
    /// Dry run: ceilings are computed but not applied.
    pub(crate) dry_run: bool,
    /// Slices: root, default, then by name.
    pub(crate) slices: Vec<SliceStatus>,
    /// Duration of the last sync, seconds.
    pub(crate) last_sync_secs: f64,
    /// Errors so far, by kind.
    pub(crate) errors: ErrorCounts,
    /// What an operator should know (a damaged state file set aside, …).
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
    /// The daemon's version.
    #[serde(default)]
    pub(crate) version: String,
    /// Kernel memory of the datapath's maps, as the kernel accounts it (their `memlock`; on
    /// kernels before 6.4, whose `memlock` is an estimate from capacity, computed from the
    /// maps' sizes and entries), when it could be read.
    #[serde(default)]
    pub(crate) kernel_memory_bytes: Option<u64>,
    /// HTB leaves the plan wants that are not created yet (a sync creates capped slices'
    /// leaves first, in bounded batches, and the rest in the next syncs).
    #[serde(default)]
    pub(crate) leaves_pending: u64,
}

impl StatusReport {
    /// The xid of the cgroup slice a process in `cgroup` belongs to: the slice of its cgroup
    /// or of its nearest ancestor that is one.
    pub(crate) fn cgroup_slice(&self, cgroup: &crate::cgroup::CgroupPath) -> Option<u32> {
        let path = cgroup.as_str();
        self.slices
            .iter()
            .filter_map(|s| Some((s.cgroup.as_deref()?, s.xid)))
            .filter(|(c, _)| {
                path == *c || (path.starts_with(*c) && path.as_bytes().get(c.len()) == Some(&b'/'))
            })
            .max_by_key(|(c, _)| c.len())
            .map(|(_, xid)| xid)
    }

    /// The report a tenant is given: the same document with only the slice of `xid` in it,
    /// and nothing about the daemon's health (errors, warnings, kernel memory) or other
    /// slices.
    pub fn for_tenant(&self, xid: u32) -> Option<StatusReport> {
        let row = self.slices.iter().find(|s| s.xid == xid)?;
        Some(StatusReport {
            now: self.now,
            period_secs: self.period_secs,
            interface: self.interface.clone(),
            dry_run: self.dry_run,
            slices: vec![row.clone()],
            last_sync_secs: self.last_sync_secs,
            errors: ErrorCounts::default(),
            warnings: Vec::new(),
            version: self.version.clone(),
            kernel_memory_bytes: None,
            leaves_pending: 0,
        })
    }
}

/// What a status line says of the slice itself, beside its classes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SliceHead {
    /// Name.
    pub(crate) name: String,
    /// xid.
    pub(crate) xid: u32,
    /// Start of its current period.
    pub(crate) period_start: UnixSecs,
    /// End of its current period.
    pub(crate) period_end: UnixSecs,
    /// Noticed this period.
    pub(crate) emailed: bool,
    /// Bytes its leaves dropped before they left.
    pub(crate) dropped: Bytes,
    /// Its HTB leaves, as tc writes them.
    pub(crate) leaves: Vec<String>,
    /// Bytes received in the current period, per class.
    pub(crate) received: PerClass<Bytes>,
    /// Which bytes its budget covers.
    pub(crate) count: Count,
}

/// What a status line says of one traffic class of a slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClassStatus {
    /// Used in the current period.
    pub(crate) used: Bytes,
    /// The ceiling in force.
    pub(crate) ceil: BitsPerSec,
    /// Volume per period (grants included).
    pub(crate) budget: KBytes,
    /// Use after which the ceiling is lowered.
    pub(crate) thresh: KBytes,
    /// The ceiling is lowered.
    pub(crate) capped: bool,
    /// The ceiling when not capped.
    pub(crate) max_rate: BitsPerSec,
    /// Average rate over the last sync interval.
    pub(crate) rate: BitsPerSec,
    /// Extra budget the operator granted for this period (included in `budget`).
    pub granted: Bytes,
    /// The operator's ceiling, when one is set.
    pub limit: Option<BitsPerSec>,
    /// What it is guaranteed now (see [`SliceStatus::guaranteed_bps`]).
    pub(crate) guaranteed: BitsPerSec,
    /// The cap that is a part of: the ceiling of all of the class's traffic.
    pub(crate) cap: BitsPerSec,
    /// The levels of its budget it was warned of this period.
    pub(crate) warned: Levels,
}

/// `part` as a percentage of `whole`; 0 of nothing.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl ClassStatus {
    /// Percentage of the budget used.
    pub(crate) fn percent_used(&self) -> f64 {
        percent(self.used.0, self.budget.bytes().0)
    }
}

// The report's JSON names each class's fields apart (`bytes`/`exempt_bytes`,
// `max_kbyte`/`i2_max_kbyte`, …), a documented contract: `new` (and `set_guaranteed`, for the
// one pair decided after the lines) write those pairs, and `class` is the one place that reads
// them.
impl SliceStatus {
    /// A status line from what it says of the slice and of each class.
    pub(crate) fn new(head: SliceHead, classes: PerClass<ClassStatus>) -> SliceStatus {
        let PerClass {
            general: g,
            exempt: e,
        } = classes;
        SliceStatus {
            name: head.name,
            xid: head.xid,
            period_start: head.period_start,
            bytes: g.used.0,
            exempt_bytes: e.used.0,
            ceil_bps: g.ceil.0,
            exempt_ceil_bps: e.ceil.0,
            max_kbyte: g.budget.0,
            thresh_kbyte: g.thresh.0,
            i2_max_kbyte: e.budget.0,
            i2_thresh_kbyte: e.thresh.0,
            capped: g.capped,
            exempt_capped: e.capped,
            emailed: head.emailed,
            max_rate_bps: g.max_rate.0,
            i2_max_rate_bps: e.max_rate.0,
            dropped_bytes: head.dropped.0,
            rate_bps: g.rate.0,
            exempt_rate_bps: e.rate.0,
            classes: head.leaves,
            period_end: head.period_end,
            granted_bytes: g.granted.0,
            exempt_granted_bytes: e.granted.0,
            limit_bps: g.limit.map(|r| r.0),
            exempt_limit_bps: e.limit.map(|r| r.0),
            guaranteed_bps: g.guaranteed.0,
            exempt_guaranteed_bps: e.guaranteed.0,
            cap_bps: g.cap.0,
            exempt_cap_bps: e.cap.0,
            warned_percent: g.warned.percents(),
            exempt_warned_percent: e.warned.percents(),
            cgroup: None,
            received_bytes: head.received.general.0,
            received_exempt_bytes: head.received.exempt.0,
            count: head.count.name().to_owned(),
        }
    }

    /// Sets what each class is guaranteed now (decided once every line is known).
    pub(crate) fn set_guaranteed(&mut self, guaranteed: PerClass<BitsPerSec>) {
        self.guaranteed_bps = guaranteed.general.0;
        self.exempt_guaranteed_bps = guaranteed.exempt.0;
    }

    /// What the line says of `class`.
    /// Bytes received in the current period by `class` (of the packets' source).
    pub(crate) fn received(&self, class: TrafficClass) -> u64 {
        match class {
            TrafficClass::General => self.received_bytes,
            TrafficClass::Exempt => self.received_exempt_bytes,
        }
    }

    pub(crate) fn class(&self, class: TrafficClass) -> ClassStatus {
        match class {
            TrafficClass::General => ClassStatus {
                used: Bytes(self.bytes),
                ceil: BitsPerSec(self.ceil_bps),
                budget: KBytes(self.max_kbyte),
                thresh: KBytes(self.thresh_kbyte),
                capped: self.capped,
                max_rate: BitsPerSec(self.max_rate_bps),
                rate: BitsPerSec(self.rate_bps),
                granted: Bytes(self.granted_bytes),
                limit: self.limit_bps.map(BitsPerSec),
                guaranteed: BitsPerSec(self.guaranteed_bps),
                cap: BitsPerSec(self.cap_bps),
                warned: levels(&self.warned_percent),
            },
            TrafficClass::Exempt => ClassStatus {
                used: Bytes(self.exempt_bytes),
                ceil: BitsPerSec(self.exempt_ceil_bps),
                budget: KBytes(self.i2_max_kbyte),
                thresh: KBytes(self.i2_thresh_kbyte),
                capped: self.exempt_capped,
                max_rate: BitsPerSec(self.i2_max_rate_bps),
                rate: BitsPerSec(self.exempt_rate_bps),
                granted: Bytes(self.exempt_granted_bytes),
                limit: self.exempt_limit_bps.map(BitsPerSec),
                guaranteed: BitsPerSec(self.exempt_guaranteed_bps),
                cap: BitsPerSec(self.exempt_cap_bps),
                warned: levels(&self.exempt_warned_percent),
            },
        }
    }

    /// What the line says of each class.
    pub(crate) fn per_class(&self) -> PerClass<ClassStatus> {
        PerClass::from_fn(|c| self.class(c))
    }
}

/// The levels of a document's list of percents (those that are levels).
fn levels(percents: &[u8]) -> Levels {
    percents.iter().filter_map(|p| Percent::new(*p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::table::{eta, table};
    use crate::time::text::human_secs;

    fn slice(name: &str, bytes: u64, rate_bps: u64) -> SliceStatus {
        SliceStatus {
            name: name.into(),
            xid: 1001,
            period_start: 1000,
            period_end: 1000 + 86_400,
            bytes,
            exempt_bytes: 0,
            ceil_bps: 1_500_000,
            exempt_ceil_bps: 1_000_000_000,
            max_kbyte: 1000,
            thresh_kbyte: 800,
            i2_max_kbyte: 1000,
            i2_thresh_kbyte: 800,
            capped: true,
            exempt_capped: false,
            emailed: true,
            max_rate_bps: 100_000_000,
            i2_max_rate_bps: 1_000_000_000,
            dropped_bytes: 0,
            rate_bps,
            exempt_rate_bps: 0,
            classes: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn the_table_is_aligned_with_human_units_and_a_forecast() {
        let report = StatusReport {
            now: 1100,
            period_secs: 86_400,
            interface: "eth0".into(),
            slices: vec![
                slice("alice", 512_000, 8_000),
                slice("a-much-longer-name", 900_000, 0),
            ],
            ..Default::default()
        };
        let t = table(&report);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[2].starts_with("alice "), "{t}");
        assert!(
            lines[2].contains("500.0 KiB")
                && lines[2].contains("1.5mbit")
                && lines[2].contains("general"),
            "{t}"
        );
        // 50 % used; at 1000 bytes/s the threshold (819,200 bytes) is 308 s away.
        assert!(lines[2].contains(" 50 ") && lines[2].contains("5m"), "{t}");
        // Columns line up: numbers are right-aligned under their header.
        let end = lines[1].find("CEIL").unwrap() + "CEIL".len();
        assert_eq!(&lines[2][end - 7..end], "1.5mbit");
        assert_eq!(&lines[3][end - 7..end], "1.5mbit");
    }

    #[test]
    fn a_line_reads_back_each_class_as_written_under_the_documented_names() {
        let class = |n: u64| ClassStatus {
            used: Bytes(n),
            ceil: BitsPerSec(n + 1),
            budget: KBytes(n + 2),
            thresh: KBytes(n + 3),
            capped: n > 10,
            max_rate: BitsPerSec(n + 4),
            rate: BitsPerSec(n + 5),
            granted: Bytes(n + 6),
            limit: Some(BitsPerSec(n + 7)),
            guaranteed: BitsPerSec(n + 8),
            cap: BitsPerSec(n + 9),
            warned: levels(&[n as u8 + 8]),
        };
        let classes = PerClass {
            general: class(10),
            exempt: class(20),
        };
        let line = SliceStatus::new(SliceHead::default(), classes);
        assert_eq!(line.per_class(), classes);
        let json = serde_json::to_value(&line).unwrap();
        for (key, value) in [
            ("bytes", 10),
            ("exempt_bytes", 20),
            ("ceil_bps", 11),
            ("exempt_ceil_bps", 21),
            ("max_kbyte", 12),
            ("i2_max_kbyte", 22),
            ("thresh_kbyte", 13),
            ("i2_thresh_kbyte", 23),
            ("max_rate_bps", 14),
            ("i2_max_rate_bps", 24),
            ("rate_bps", 15),
            ("exempt_rate_bps", 25),
            ("granted_bytes", 16),
            ("exempt_granted_bytes", 26),
            ("limit_bps", 17),
            ("exempt_limit_bps", 27),
            ("guaranteed_bps", 18),
            ("exempt_guaranteed_bps", 28),
            ("cap_bps", 19),
            ("exempt_cap_bps", 29),
        ] {
            assert_eq!(json[key], value, "{key}");
        }
        assert_eq!(json["warned_percent"], serde_json::json!([18]));
        assert_eq!(json["exempt_warned_percent"], serde_json::json!([28]));
        assert_eq!(
            (json["capped"].clone(), json["exempt_capped"].clone()),
            (false.into(), true.into())
        );
    }

    #[test]
    fn the_table_says_how_many_leaves_are_still_to_create() {
        let mut report = StatusReport::default();
        assert!(!table(&report).contains("leaves still to create"));
        report.leaves_pending = 14_050;
        assert!(
            table(&report).contains("HTB leaves still to create: 14050"),
            "{}",
            table(&report)
        );
    }

    #[test]
    fn the_table_says_the_levels_warned_of() {
        let mut alice = slice("alice", 900_000, 0);
        alice.warned_percent = vec![80, 95];
        alice.exempt_warned_percent = vec![50];
        let report = StatusReport {
            slices: vec![alice, slice("bob", 0, 0)],
            ..Default::default()
        };
        let t = table(&report);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].ends_with("WARNED"), "{t}");
        assert!(lines[2].ends_with("80%,95% exempt 50%"), "{t}");
        assert!(lines[3].ends_with(" -"), "{t}");
    }

    #[test]
    fn forecasts() {
        assert_eq!(eta(0, 1000, 8000), Some(1));
        assert_eq!(eta(2000, 1000, 8000), Some(0));
        assert_eq!(eta(0, 1000, 0), None);
        assert_eq!(human_secs(90), "90s");
        assert_eq!(human_secs(3600), "60m");
        assert_eq!(human_secs(86_400 * 3), "3.0d");
    }
}
