//! The configuration's keys, in one table (ripgrep's `flags/defs.rs` is the model: each flag
//! owns its name, doc and update). Each [`Key`] owns its name, a one-line doc, how its value
//! is read into the configuration, and whether a running daemon can take a change of it. The
//! table drives the unknown-key check, the parse and [`Config::fixed_changes`]; a test holds it
//! to the shipped example, `etc/bwmon.toml`.

use std::{path::Path, path::PathBuf, time::Duration};

use toml_edit::{Item, Table};

use super::{
    Config, Retention,
    mail::{Mail, parse_mail},
    problems::Collector,
    read::{Field, attributes},
    webhook::parse_webhook,
};
use crate::{
    interface::validate_name,
    paths,
    policy::received::Count,
    policy::rspec::Attributes,
    policy::warnings::{Levels, Percent},
    time::calendar::{Align, Periods},
    units::{BWMIN, BitsPerSec},
};
use bwmon_common::XidSource;

/// One key of the configuration file.
pub(crate) struct Key {
    /// Its name in the file.
    pub(crate) name: &'static str,
    /// What it sets, in one line.
    pub(crate) doc: &'static str,
    /// Reads its value, present in the file, into the draft.
    read: for<'a> fn(&mut Field<'a, '_>, &mut Draft<'a>),
    /// The problem when it is absent; `None`: its default holds.
    required: Option<&'static str>,
    /// Whether a reload can apply a change of it.
    reload: Reload,
}

impl Key {
    /// A key read by `read`, optional, whose change a reload applies.
    const fn new(
        name: &'static str,
        doc: &'static str,
        read: for<'a> fn(&mut Field<'a, '_>, &mut Draft<'a>),
    ) -> Key {
        Key {
            name,
            doc,
            read,
            required: None,
            reload: Reload::Live,
        }
    }

    /// Required: `missing` is the problem when it is absent.
    const fn required(self, missing: &'static str) -> Key {
        Key {
            required: Some(missing),
            ..self
        }
    }

    /// A change of it needs a restart; `changed` says whether two configurations differ in it.
    const fn restart(self, changed: fn(&Config, &Config) -> bool) -> Key {
        Key {
            reload: Reload::Restart(changed),
            ..self
        }
    }

    /// Like [`Key::restart`], said as `shown` (the name of the keys read into one value).
    const fn restart_as(self, shown: &'static str, changed: fn(&Config, &Config) -> bool) -> Key {
        Key {
            reload: Reload::RestartAs(shown, changed),
            ..self
        }
    }
}

/// Whether a reload (SIGHUP) can apply a change of a key.
enum Reload {
    /// It can.
    Live,
    /// A change needs a restart; the function says whether two configurations differ in it.
    Restart(fn(&Config, &Config) -> bool),
    /// Like `Restart`, said under one name for the keys read into one value.
    RestartAs(&'static str, fn(&Config, &Config) -> bool),
}

/// Every key's name and one-line doc, in the table's order (for the man page).
pub(crate) fn documented() -> impl Iterator<Item = (&'static str, &'static str)> {
    KEYS.iter().map(|k| (k.name, k.doc))
}

/// Every key, in the order the unknown-key message lists them.
pub(crate) const KEYS: &[Key] = &[
    Key::new(
        "interface",
        "The interface whose egress is accounted.",
        |f, d| {
            if let Some(name) = f.string() {
                if let Err(e) = validate_name(name) {
                    f.problem(e.to_string());
                }
                d.config.interface = name.to_owned();
            }
        },
    )
    .required("missing: the interface whose egress is accounted, e.g. interface = \"eth0\"")
    .restart(|a, b| a.interface != b.interface),
    Key::new(
        "node_cap",
        "Ceiling of all general traffic (\"1gbit\", or bit/s).",
        |f, d| set(&mut d.config.node_cap, ceiling(f)),
    ),
    Key::new(
        "exempt_max",
        "Ceiling of all exempt traffic (\"1gbit\", or bit/s).",
        |f, d| set(&mut d.config.exempt_max, ceiling(f)),
    ),
    Key::new(
        "period",
        "Budget period (\"1d\", \"90s\", \"1.5h\") of unaligned periods.",
        |f, d| {
            set(
                &mut d.config.periods.length,
                f.duration().map(|p| p.as_secs()),
            )
        },
    ),
    Key::new(
        "period_align",
        "Periods from each slice's first sight (\"none\"), or local days or months.",
        |f, d| {
            d.config.periods.align = match f.string() {
                None | Some("none") => Align::None,
                // The start time and day are read with the other keys (`period_start_*`).
                Some("day") => Align::Day { hour: 0, minute: 0 },
                Some("month") => Align::Month { day: 1 },
                Some(other) => {
                    f.problem(format!(
                        "'{other}' is not one of \"none\", \"day\", \"month\""
                    ));
                    Align::None
                }
            }
        },
    ),
    Key::new(
        "period_start_time",
        "Local time of day when daily periods start (\"06:30\").",
        |f, d| d.start_time = Some(f.item),
    ),
    Key::new(
        "period_start_day",
        "Day of the month when monthly periods start (1 to 31).",
        |f, d| d.start_day = Some(f.item),
    ),
    Key::new("interval", "Sync interval (\"10s\").", |f, d| {
        set(&mut d.config.interval, f.duration())
    }),
    Key::new(
        "slices",
        "The slices file (relative paths are relative to the configuration file).",
        |f, d| set(&mut d.config.slices, f.path(&d.base)),
    ),
    Key::new("state", "The state file.", |f, d| {
        set(&mut d.config.state, f.path(&d.base))
    })
    .restart(|a, b| a.state != b.state),
    Key::new("socket", "The control socket.", |f, d| {
        set(&mut d.config.socket, f.path(&d.base))
    })
    .restart(|a, b| a.socket != b.socket),
    Key::new(
        "tenant_socket",
        "The socket where each local user sees their own slice; \"\" turns it off.",
        |f, d| match f.string() {
            Some("") => d.config.tenant_socket = None,
            Some(path) => d.config.tenant_socket = Some(d.base.join(path)),
            None => {}
        },
    )
    .restart(|a, b| a.tenant_socket != b.tenant_socket),
    Key::new(
        "xid_source",
        "Where a packet's xid comes from: \"uid\", \"mark\" or \"source\".",
        |f, d| {
            d.config.xid_source = match f.string() {
                None | Some("uid") => XidSource::Uid,
                Some("mark") => XidSource::Mark,
                Some("source") => XidSource::Source,
                Some(other) => {
                    f.problem(format!(
                        "'{other}' is not one of \"uid\", \"mark\", \"source\""
                    ));
                    XidSource::Uid
                }
            }
        },
    )
    .restart(|a, b| a.xid_source != b.xid_source),
    Key::new(
        "exempt_prefixes",
        "Destinations with their own, separate budget (CIDR prefixes).",
        exempt_prefixes,
    ),
    Key::new(
        "count",
        "Which bytes a budget covers: \"egress\" (sent) or \"both\" (sent + received).",
        |f, d| {
            if let Some(c) = count_key(f) {
                d.config.count = c;
            }
        },
    ),
    Key::new(
        "dry_run",
        "Account, report and notify, but never lower a ceiling.",
        |f, d| set(&mut d.config.dry_run, f.boolean()),
    ),
    Key::new(
        "take_over_root_qdisc",
        "Replace a root qdisc on the interface that bwmon did not create.",
        |f, d| set(&mut d.config.take_over_root_qdisc, f.boolean()),
    ),
    Key::new(
        "defaults",
        "Attribute defaults for every slice (a table of rspec keys).",
        |f, d| {
            if let Some(t) = f.table("must be a table of slice attributes") {
                attributes(f.c, t, "defaults.", &[], &mut d.config.defaults);
            }
        },
    ),
    Key::new(
        "warn_at",
        "Levels of each budget a slice is warned of before the cap ([\"80%\", \"95%\"]).",
        warn_at,
    ),
    Key::new(
        "mail",
        "How notices are delivered, and the addresses they carry (a table).",
        |f, d| d.config.mail = parse_mail(f.c, f.item),
    ),
    Key::new(
        "webhook",
        "Where notices are POSTed as JSON events (a table with `url`, `secret_file`, `timeout`).",
        |f, d| d.config.webhook = parse_webhook(f.c, f.item, &d.base),
    ),
    Key::new(
        "metrics",
        "The Prometheus endpoint (a table: `listen`, `token_file`, `public`).",
        metrics,
    ),
    Key::new(
        "kernel_log",
        "Kernel-side diagnostics through aya-log.",
        |f, d| set(&mut d.config.kernel_log, f.boolean()),
    )
    .restart(|a, b| a.kernel_log != b.kernel_log),
    Key::new(
        "max_connections",
        "Clients served at once by the control socket and, apart, the metrics endpoint.",
        |f, d| {
            set(
                &mut d.config.max_connections,
                count(f, 1, 4096, "connections"),
            )
        },
    ),
    Key::new(
        "max_connections_per_client",
        "Of those, how many one local user (tenant socket) or one address (metrics) may hold.",
        |f, d| {
            set(
                &mut d.config.max_connections_per_client,
                count(f, 1, 4096, "connections"),
            )
        },
    ),
    Key::new(
        "allow_loopback",
        "Accept the loopback interface (labs only).",
        |f, d| set(&mut d.config.allow_loopback, f.boolean()),
    ),
    Key::new(
        "history_periods",
        "Finished periods kept per slice in the history.",
        |f, d| {
            set(
                &mut d.config.history.periods,
                count(f, 1, 100_000, "periods"),
            )
        },
    )
    .restart_as(HISTORY, |a, b| a.history != b.history),
    Key::new(
        "history_sample_days",
        "Days of hourly samples kept in the history.",
        |f, d| {
            let days = count(f, 1, 3660, "days");
            set(
                &mut d.config.history.sample_secs,
                days.map(|n| n as u64 * 86_400),
            );
        },
    )
    .restart_as(HISTORY, |a, b| a.history != b.history),
];

/// How a change of the history's retention is named: both keys set it.
const HISTORY: &str = "history_periods/history_sample_days";

/// The configuration as its keys are read, before the checks across keys (ripgrep's
/// `LowArgs`); `Config::parse` settles it.
pub(super) struct Draft<'a> {
    /// Each key's value once read, its default until then.
    pub(super) config: Config,
    /// The configuration file's directory: relative paths are taken from it.
    base: PathBuf,
    /// `period_start_time` as given: used when `period_align = "day"`.
    pub(super) start_time: Option<&'a Item>,
    /// `period_start_day` as given: used when `period_align = "month"`.
    pub(super) start_day: Option<&'a Item>,
}

impl Draft<'_> {
    /// The defaults, for a configuration read from `path`.
    pub(super) fn new(path: &Path) -> Self {
        // Relative paths are taken from the config's directory, made absolute once so that
        // they keep meaning the same files (`bwmon run --config bwmon.toml` in any directory).
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = absolute.parent().unwrap_or(Path::new("/")).to_owned();
        let gbit = BitsPerSec(1_000_000_000);
        let config = Config {
            path: path.to_owned(),
            interface: String::new(),
            node_cap: gbit,
            exempt_max: gbit,
            periods: Periods {
                align: Align::None,
                length: 86_400,
                // Local days and months: TZ, else /etc/localtime, else UTC.
                tz: jiff::tz::TimeZone::system(),
            },
            interval: Duration::from_secs(10),
            slices: base.join(paths::SLICES),
            state: base.join(paths::STATE),
            socket: base.join(paths::SOCKET),
            tenant_socket: Some(base.join(paths::TENANT_SOCKET)),
            xid_source: XidSource::Uid,
            exempt_prefixes: Vec::new(),
            count: Count::Egress,
            dry_run: false,
            take_over_root_qdisc: false,
            defaults: Attributes::default(),
            mail: Mail::default(),
            warn_at: Levels::default(),
            webhook: None,
            metrics: super::Metrics::default(),
            kernel_log: false,
            max_connections: crate::serve::connections::DEFAULT_LIMIT,
            max_connections_per_client: crate::serve::connections::DEFAULT_PER_PEER,
            allow_loopback: false,
            history: Retention::default(),
        };
        Draft {
            config,
            base,
            start_time: None,
            start_day: None,
        }
    }
}

/// Reads every key of `root` into `draft`: an unknown key, a missing required one and every
/// value that cannot be read are reported.
pub(super) fn read_keys<'a>(c: &mut Collector, root: &'a Table, draft: &mut Draft<'a>) {
    for (name, item) in root.iter() {
        if !KEYS.iter().any(|k| k.name == name) {
            let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
            let message = format!("unknown key; known keys are {}", known.join(", "));
            c.add(Some(item), name, message);
        }
    }
    for key in KEYS {
        match (root.get(key.name), key.required) {
            (Some(item), _) => {
                (key.read)(&mut Field::new(c, item, key.name), draft);
            }
            (None, Some(missing)) => c.add_line(1, key.name, missing),
            (None, None) => {}
        }
    }
}

/// The keys that need a restart and differ between `old` and `new`, in table order.
pub(super) fn fixed_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    for key in KEYS {
        let (shown, changed) = match key.reload {
            Reload::Live => continue,
            Reload::Restart(changed) => (key.name, changed),
            Reload::RestartAs(shown, changed) => (shown, changed),
        };
        if changed(old, new) && !out.contains(&shown) {
            out.push(shown);
        }
    }
    out
}

/// `value` when it was read; else `into` keeps its default.
fn set<T>(into: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *into = value;
    }
}

/// `count`: "egress" or "both" (a slice's own entry may say it too).
pub(super) fn count_key(f: &mut Field<'_, '_>) -> Option<Count> {
    let s = f.string()?;
    let c = Count::parse(s);
    if c.is_none() {
        f.problem(format!("'{s}' is not one of \"egress\", \"both\""));
    }
    c
}

/// A ceiling: a rate no lower than the smallest bwmon sets.
fn ceiling(f: &mut Field<'_, '_>) -> Option<BitsPerSec> {
    let r = f.rate()?;
    if r < BWMIN {
        f.problem(format!(
            "{r} is below the smallest rate bwmon sets ({BWMIN})"
        ));
    }
    Some(r)
}

/// A whole number of `what` from `lo` to `hi`.
fn count(f: &mut Field<'_, '_>, lo: i64, hi: i64, what: &str) -> Option<usize> {
    let n = f.integer(lo..=hi, || {
        format!("must be a number of {what} from {lo} to {hi}")
    })?;
    Some(n as usize)
}

/// `exempt_prefixes`: CIDR prefixes, no more per family than the kernel's table holds.
fn exempt_prefixes(f: &mut Field<'_, '_>, d: &mut Draft<'_>) {
    let prefixes = f.cidrs(" like \"198.32.0.0/16\" or \"2001:db8::/32\"");
    let max = bwmon_common::MAX_EXEMPT_PREFIXES as usize;
    let v4 = prefixes.iter().filter(|p| p.addr().is_ipv4()).count();
    for (family, count) in [("IPv4", v4), ("IPv6", prefixes.len() - v4)] {
        if count > max {
            f.problem(format!(
                "{count} {family} prefixes; the kernel's table holds {max}"
            ));
        }
    }
    d.config.exempt_prefixes = prefixes;
}

/// `warn_at`: levels like "80%", each reported when it is not one.
fn warn_at(f: &mut Field<'_, '_>, d: &mut Draft<'_>) {
    let Some(list) = f.item.as_array() else {
        f.problem("must be a list of levels like [\"80%\", \"95%\"]");
        return;
    };
    let mut levels = Levels::default();
    for v in list.iter() {
        match v.as_str().map(str::parse::<Percent>) {
            Some(Ok(p)) => levels = levels.with(p),
            Some(Err(e)) => f.c.add_value(v, f.key, e.to_string()),
            None => f.c.add_value(
                v,
                f.key,
                format!("{} is not a level like \"80%\"", v.to_string().trim()).replace('\n', " "),
            ),
        }
    }
    d.config.warn_at = levels;
}

/// `[metrics]`: `listen`, `token_file`, `public`.
fn metrics(f: &mut Field<'_, '_>, d: &mut Draft<'_>) {
    const KNOWN: [&str; 3] = ["listen", "token_file", "public"];
    let Some(t) = f.table("must be a table with `listen` (and `token_file` or `public`)") else {
        return;
    };
    for (k, v) in t.iter().filter(|(k, _)| !KNOWN.contains(k)) {
        let key = format!("metrics.{k}");
        f.c.add(
            Some(v),
            &key,
            "unknown key; the keys are listen, token_file, public",
        );
    }
    if let Some(listen) = t.get("listen") {
        d.config.metrics.listen = match listen.as_str().map(str::parse) {
            Some(Ok(addr)) => Some(addr),
            _ => {
                let message = "must be an address like \"127.0.0.1:9110\"";
                f.c.add(Some(listen), "metrics.listen", message);
                None
            }
        };
    }
    if let Some(item) = t.get("token_file") {
        let path = Field::new(f.c, item, "metrics.token_file").path(&d.base);
        d.config.metrics.token_file = path;
    }
    if let Some(item) = t.get("public") {
        let public = Field::new(f.c, item, "metrics.public").boolean();
        set(&mut d.config.metrics.public, public);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const EXAMPLE: &str = include_str!("../../etc/bwmon.toml");

    /// The top-level keys the example mentions, set or commented out: `key = …` before the
    /// first table, and the tables' names (`[mail]`, `# [metrics]`).
    fn mentioned(example: &str) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let mut top = true;
        for line in example.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                top = false;
                out.insert(table);
            } else if let Some((key, _)) = line.split_once(" = ")
                && top
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                out.insert(key);
            }
        }
        out
    }

    #[test]
    fn every_key_is_in_the_shipped_example_and_every_key_there_is_known() {
        let mentioned = mentioned(EXAMPLE);
        for key in KEYS {
            assert!(
                mentioned.contains(key.name),
                "{} is not in etc/bwmon.toml",
                key.name
            );
            assert!(
                !key.doc.is_empty() && !key.doc.contains('\n'),
                "{}: a one-line doc",
                key.name
            );
        }
        for name in mentioned {
            assert!(
                KEYS.iter().any(|k| k.name == name),
                "etc/bwmon.toml mentions {name}, which is not a key"
            );
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = Config::parse(Path::new("/etc/bwmon/bwmon.toml"), EXAMPLE).unwrap();
        assert_eq!(c.interface, "eth0");
    }

    #[test]
    fn warn_at_is_a_list_of_levels_and_each_bad_one_is_named() {
        let path = Path::new("/etc/bwmon/bwmon.toml");
        let c =
            Config::parse(path, "interface = \"eth0\"\nwarn_at = [\"95%\", \"80%\"]\n").unwrap();
        assert_eq!(c.warn_at.percents(), [80, 95]);
        assert!(
            Config::parse(path, "interface = \"eth0\"\n")
                .unwrap()
                .warn_at
                .is_empty()
        );
        let err = Config::parse(
            path,
            "interface = \"eth0\"\nwarn_at = [\"80\", \"120%\", 5]\n",
        )
        .unwrap_err()
        .to_string();
        for expect in [
            "warn_at: '80' is not a level like \"80%\"",
            "warn_at: '120%' is not a level",
            "warn_at: 5 is not a level",
        ] {
            assert!(err.contains(expect), "{expect}: {err}");
        }
        let err = Config::parse(path, "interface = \"eth0\"\nwarn_at = \"80%\"\n").unwrap_err();
        assert!(err.to_string().contains("warn_at: must be a list"), "{err}");
    }

    #[test]
    fn a_change_that_needs_a_restart_is_named_once() {
        let path = Path::new("/etc/bwmon/bwmon.toml");
        let old = Config::parse(path, "interface = \"eth0\"\n").unwrap();
        let new = Config::parse(
            path,
            "interface = \"eth1\"\nhistory_periods = 5\nhistory_sample_days = 5\nnode_cap = \"1mbit\"\n",
        )
        .unwrap();
        assert_eq!(
            old.fixed_changes(&new),
            ["interface", "history_periods/history_sample_days"]
        );
        assert!(old.fixed_changes(&old).is_empty());
    }
}
