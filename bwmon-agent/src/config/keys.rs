//! The configuration's keys, in one table (ripgrep's `flags/defs.rs` is the model: each flag
//! owns its name, doc and update). Each [`Key`] owns its name, a one-line doc, how its value
//! is read into the configuration, and whether a running daemon can take a change of it. The
//! table drives the unknown-key check, the parse and [`Config::fixed_changes`]; a test holds it
//! to the shipped example, `etc/bwmon.toml`.

use toml_edit::Table;

use super::{
    Config,
    draft::{Draft, ceiling, count, count_key, exempt_prefixes, metrics, set, warn_at},
    mail::parse_mail,
    problems::Collector,
    read::{Field, attributes},
    webhook::parse_webhook,
};
use crate::{interface::validate_name, time::calendar::Align};
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

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
