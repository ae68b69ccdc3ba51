//! The configuration file (TOML) → a typed, validated [`Config`]. Every problem is reported,
//! each as `path:line: key: message`, not only the first. The keys are one table, in
//! [`keys`]; their values are read by the typed readers of `read` (shared with [`slices`]);
//! `[mail]` is read in `mail`, `[webhook]` in `webhook`.

pub(crate) mod keys;
pub(crate) mod last_good;
pub(crate) mod mailaddr;
pub mod problems;
pub(crate) mod slices;

mod draft;
mod mail;
pub(crate) mod patterns;
mod read;
mod webhook;

pub(crate) use mail::{Mail, Transport};
pub(crate) use webhook::Webhook;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use toml_edit::{Item, Table};

use crate::{
    config::{
        draft::Draft,
        problems::{Collector, FileErrors, parse_document, read_text},
        read::Field,
    },
    htb::TreeSpec,
    policy::Node,
    policy::rspec::Attributes,
    policy::warnings::Levels,
    time::calendar::{Align, Periods},
    units::BitsPerSec,
};
use bwmon_common::XidSource;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    /// The file it came from.
    pub(crate) path: PathBuf,
    /// Interface whose egress is accounted.
    pub(crate) interface: String,
    /// Ceiling of all general traffic.
    pub(crate) node_cap: BitsPerSec,
    /// Ceiling of all exempt traffic.
    pub(crate) exempt_max: BitsPerSec,
    /// Where periods start and end (`period_align`, `period_start_time`, `period_start_day`).
    pub(crate) periods: Periods,
    /// Sync interval.
    pub(crate) interval: Duration,
    /// Slices file.
    pub(crate) slices: PathBuf,
    /// State file.
    pub(crate) state: PathBuf,
    /// Control socket.
    pub(crate) socket: PathBuf,
    /// The tenants' socket (mode 0666: each user sees their own slice); `None` when
    /// `tenant_socket = ""` turns it off.
    pub(crate) tenant_socket: Option<PathBuf>,
    /// Where a packet's xid comes from.
    pub(crate) xid_source: XidSource,
    /// Exempt destination prefixes.
    pub(crate) exempt_prefixes: Vec<IpNet>,
    /// Which bytes a budget covers (`count`; a slice's own entry may say otherwise).
    pub(crate) count: crate::policy::received::Count,
    /// Account, report and notify, never lower a ceiling.
    pub(crate) dry_run: bool,
    /// Replace a root qdisc bwmon did not create.
    pub(crate) take_over_root_qdisc: bool,
    /// Attribute defaults for every slice.
    pub(crate) defaults: Attributes,
    /// Notices by mail.
    pub(crate) mail: Mail,
    /// The levels of each budget a slice is warned of before the cap (`warn_at`).
    pub(crate) warn_at: Levels,
    /// Notices to a webhook too, when set.
    pub(crate) webhook: Option<Webhook>,
    /// The Prometheus endpoint (`[metrics]`).
    pub(crate) metrics: Metrics,
    /// Kernel-side diagnostics through aya-log.
    pub(crate) kernel_log: bool,
    /// Clients served at once by the control socket and, separately, the metrics endpoint.
    pub(crate) max_connections: usize,
    /// Of those, how many one local user (tenant socket) or one address (metrics) may hold.
    pub(crate) max_connections_per_client: usize,
    /// Accept the loopback interface (labs only).
    pub(crate) allow_loopback: bool,
    /// How much history is kept (`history_periods`, `history_sample_days`).
    pub(crate) history: Retention,
}

/// The Prometheus endpoint, `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Metrics {
    /// Where it listens; `None`: not served.
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// The bearer token's file: per-slice series only to requests that carry it.
    pub(crate) token_file: Option<PathBuf>,
    /// Per-slice series to anyone who can connect (without `token_file`).
    pub(crate) public: bool,
}

impl Metrics {
    /// Who may see what, once the token (if any) is read.
    ///
    /// # Errors
    /// The token file cannot be read or is empty.
    pub(crate) fn access(
        &self,
    ) -> Result<crate::serve::metrics::Access, crate::serve::metrics::TokenError> {
        use crate::serve::metrics::{Access, Token};
        Ok(match (&self.token_file, self.public) {
            (Some(path), _) => Access::Token(Token::read(path)?),
            (None, true) => Access::Public,
            (None, false) => Access::Untenanted,
        })
    }

    /// What the endpoint exposes, in words (for `bwmon check`); `None` when it is off.
    pub(crate) fn exposure(&self) -> Option<String> {
        let addr = self.listen?;
        let who = if addr.ip().is_loopback() {
            "every local user"
        } else {
            "anyone who can reach it"
        };
        Some(match (&self.token_file, self.public) {
            (Some(path), _) => format!(
                "metrics on {addr}: every slice's name, usage and limits only to requests with the bearer token in {}; {who} gets 401 without it",
                path.display()
            ),
            (None, true) => format!(
                "metrics on {addr}: every slice's name, usage and limits to {who} (public = true)"
            ),
            (None, false) => format!(
                "metrics on {addr}: only series without a tenant label ({}) to {who}; per-slice series need token_file (or public = true)",
                crate::serve::metrics::UNTENANTED.join(", ")
            ),
        })
    }
}

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Finished periods per slice.
    pub(crate) periods: usize,
    /// Age of the oldest hourly sample, seconds.
    pub(crate) sample_secs: u64,
}

impl Default for Retention {
    /// 400 periods and 90 days of hourly samples.
    fn default() -> Self {
        Retention {
            periods: 400,
            sample_secs: 90 * 86_400,
        }
    }
}

impl Config {
    /// The node's limits the policy resolves slices against.
    pub(crate) fn node(&self) -> Node {
        Node {
            node_cap: self.node_cap,
            exempt_max: self.exempt_max,
        }
    }

    /// The bounds of the tenant socket and the metrics endpoint: `max_connections`, and
    /// `max_connections_per_client` of them from one uid or address.
    pub(crate) fn connection_limits(&self) -> crate::serve::connections::Limits {
        crate::serve::connections::Limits::new(
            self.max_connections,
            self.max_connections_per_client,
        )
    }

    /// The HTB tree's fixed part.
    pub(crate) fn tree_spec(&self) -> TreeSpec {
        TreeSpec {
            node_cap: self.node_cap,
            exempt_max: self.exempt_max,
        }
    }

    /// The keys whose change needs a restart, that differ between `self` and `new`: a reload
    /// that changes one of them is refused whole.
    pub(crate) fn fixed_changes(&self, new: &Config) -> Vec<&'static str> {
        keys::fixed_changes(self, new)
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or has problems (all of them are reported).
    pub(crate) fn load(path: &Path) -> Result<Config, FileErrors> {
        /// A configuration is a few hundred bytes; a megabyte is a mistake.
        const MAX: u64 = 1 << 20;
        Self::parse(path, &read_text(path, MAX)?)
    }

    /// Validates configuration text (as if read from `path`).
    ///
    /// # Errors
    /// Every problem, located.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Config, FileErrors> {
        let doc = parse_document(path, text)?;
        let root = doc.as_table();
        let mut c = Collector::new(text);
        let mut draft = Draft::new(path);
        keys::read_keys(&mut c, root, &mut draft);
        let config = settle(&mut c, root, draft);
        c.finish(path)?;
        Ok(config)
    }
}

/// The checks across keys, once each key is read (ripgrep's `HiArgs::from_low_args`): the
/// period's alignment with its start, the period against its alignment and the interval, the
/// loopback interface against `allow_loopback`.
fn settle(c: &mut Collector, root: &Table, draft: Draft<'_>) -> Config {
    let mut config = draft.config;
    let periods = &mut config.periods;
    periods.align = match periods.align {
        Align::Day { .. } => start_time(c, draft.start_time),
        Align::Month { .. } => start_day(c, draft.start_day),
        Align::None => Align::None,
    };
    let daily = matches!(periods.align, Align::Day { .. }) && periods.length == 86_400;
    if periods.align != Align::None && root.contains_key("period") && !daily {
        c.add(
            root.get("period"),
            "period",
            "not used with period_align = \"day\" (1d) or \"month\" (their periods are days or months); remove it",
        );
    }
    if config.interval > Duration::from_secs(periods.length) {
        c.add(
            root.get("interval"),
            "interval",
            "must not be longer than the period",
        );
    }
    if config.interface == "lo" && !config.allow_loopback {
        c.add(
            root.get("interface"),
            "interface",
            "the loopback interface carries no tenant's traffic off the host; set allow_loopback = true for a lab",
        );
    }
    config
}

/// Daily periods' start, `period_start_time` ("00:00" when absent); `Align::None` and a
/// problem when it is not a time of day.
fn start_time(c: &mut Collector, item: Option<&Item>) -> Align {
    let key = "period_start_time";
    let given = item.and_then(|item| Field::new(c, item, key).string());
    let text = given.unwrap_or("00:00");
    let parsed = text.split_once(':').and_then(|(h, m)| {
        let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m) && m.to_string().len() <= 2)
            .then_some(Align::Day { hour: h, minute: m })
    });
    parsed.unwrap_or_else(|| {
        let message = format!("'{text}' is not a time of day like \"00:00\" or \"06:30\"");
        c.add(item, key, message);
        Align::None
    })
}

/// Monthly periods' start, `period_start_day` (1 when absent); `Align::None` and a problem
/// when it is not a day of the month.
fn start_day(c: &mut Collector, item: Option<&Item>) -> Align {
    let Some(item) = item else {
        return Align::Month { day: 1 };
    };
    let key = "period_start_day";
    let message =
        || "must be a day of the month from 1 to 31 (the last day in shorter months)".to_owned();
    match Field::new(c, item, key).integer(1..=31, message) {
        Some(day) => Align::Month { day: day as i8 },
        None => Align::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths;

    fn parse(text: &str) -> Result<Config, FileErrors> {
        Config::parse(Path::new("/etc/bwmon/bwmon.toml"), text)
    }

    #[test]
    fn only_the_interface_is_required() {
        let c = parse("interface = \"eth0\"\n").unwrap();
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.node_cap, BitsPerSec(1_000_000_000));
        assert_eq!(c.periods.length, 86_400);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.slices, PathBuf::from(paths::SLICES));
        assert_eq!(c.xid_source, XidSource::Uid);
        assert_eq!(c.mail.transport, Transport::None);
        assert!(!c.dry_run);
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"
interface = "veth0"
node_cap = "1.5mbit"
exempt_max = 2000000
period = "90s"
interval = "1s"
slices = "slices.toml"
state = "/var/lib/x/state"
socket = "/run/x.sock"
xid_source = "mark"
exempt_prefixes = ["198.32.0.0/16", "2001:db8::/32"]
dry_run = true
[defaults]
net_max_kbyte = 100
net_share = 2
[mail]
transport = "smtp"
smtp = "127.0.0.1:2525"
from = "bwmon@example.org"
support = "support@example.org"
slice_address = "{slice}@slices.example.org"
operator = "ExampleLab"
[metrics]
listen = "127.0.0.1:9110"
"#,
        )
        .unwrap();
        assert_eq!(c.node_cap, BitsPerSec(1_500_000));
        assert_eq!(c.exempt_max, BitsPerSec(2_000_000));
        assert_eq!(c.periods.length, 90);
        assert_eq!(
            c.slices,
            PathBuf::from("/etc/bwmon/slices.toml"),
            "relative to the config"
        );
        assert_eq!(c.xid_source, XidSource::Mark);
        assert_eq!(c.exempt_prefixes.len(), 2);
        assert!(c.dry_run);
        assert_eq!(c.defaults.share, Some(2));
        assert!(matches!(c.mail.transport, Transport::Smtp { .. }));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9110".parse().unwrap()));
    }

    #[test]
    fn periods_align_to_days_or_months_and_bad_alignments_are_named() {
        let c = parse("interface = \"eth0\"\n").unwrap();
        assert_eq!(c.periods.align, Align::None);
        assert_eq!(c.periods.length, 86_400);
        let c =
            parse("interface = \"eth0\"\nperiod_align = \"day\"\nperiod_start_time = \"06:30\"\n")
                .unwrap();
        assert_eq!(
            c.periods.align,
            Align::Day {
                hour: 6,
                minute: 30
            }
        );
        let c = parse("interface = \"eth0\"\nperiod_align = \"month\"\nperiod_start_day = 31\n")
            .unwrap();
        assert_eq!(c.periods.align, Align::Month { day: 31 });
        for (text, key) in [
            ("period_align = \"week\"", "period_align"),
            (
                "period_align = \"day\"\nperiod_start_time = \"25:00\"",
                "period_start_time",
            ),
            (
                "period_align = \"day\"\nperiod_start_time = \"6h\"",
                "period_start_time",
            ),
            (
                "period_align = \"month\"\nperiod_start_day = 0",
                "period_start_day",
            ),
            ("period_align = \"month\"\nperiod = \"1d\"", "period"),
        ] {
            let err = parse(&format!("interface = \"eth0\"\n{text}\n")).unwrap_err();
            assert!(
                err.to_string().contains(&format!(": {key}: ")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn files_beside_a_config_named_without_a_directory_get_absolute_paths() {
        let c = Config::parse(
            Path::new("bwmon.toml"),
            "interface = \"eth0\"\nstate = \"state\"\n",
        )
        .unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(c.state, here.join("state"));
        assert!(c.slices.is_absolute() && c.socket.is_absolute(), "{c:?}");
    }

    #[test]
    fn every_problem_is_reported_with_file_line_and_key() {
        let err = parse(
            "node_cap = \"fast\"\nperiod = \"soon\"\nbogus = 1\nexempt_prefixes = [\"10.0.0.0/33\"]\n[defaults]\nnet_max_rate = 1.5\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for expect in [
            "/etc/bwmon/bwmon.toml:1: node_cap: invalid rate 'fast'",
            "/etc/bwmon/bwmon.toml:1: interface: missing",
            "/etc/bwmon/bwmon.toml:2: period: invalid duration 'soon'",
            "/etc/bwmon/bwmon.toml:3: bogus: unknown key",
            "/etc/bwmon/bwmon.toml:4: exempt_prefixes:",
            "/etc/bwmon/bwmon.toml:6: defaults.net_max_rate: must be a whole number (kbit/s, or a rate such as \"10mbit\"), got float",
        ] {
            assert!(text.contains(expect), "missing {expect:?} in:\n{text}");
        }
        assert_eq!(err.problems.len(), 6, "{text}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("interface = \"eth0\"\nnode_cap = = 3\n").unwrap_err();
        assert_eq!(err.problems[0].line, 2, "{err}");
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_key() {
        let err = parse("interface = \"lo\"\n").unwrap_err();
        assert!(err.to_string().contains("interface: the loopback"), "{err}");
        assert!(parse("interface = \"lo\"\nallow_loopback = true\n").is_ok());

        let err = parse("interface = \"eth0\"\nnode_cap = 1\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("node_cap: 1bit is below the smallest rate"),
            "{err}"
        );

        let many: Vec<String> = (0..16_385u32)
            .map(|i| format!("\"10.{}.{}.0/24\"", i >> 8, i & 0xff))
            .collect();
        let text = format!(
            "interface = \"eth0\"\nexempt_prefixes = [{}]\n",
            many.join(", ")
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.to_string()
                .contains("16385 IPv4 prefixes; the kernel's table holds 16384"),
            "{err}"
        );

        let err = parse("interface = \"eth0\"\nmax_connections = 0\n").unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
        assert_eq!(
            parse("interface = \"eth0\"\n").unwrap().max_connections,
            crate::serve::connections::DEFAULT_LIMIT
        );
    }
}
