//! The configuration file (TOML) → a typed, validated [`Config`]. Every problem is reported,
//! each as `path:line: key: message`, not only the first. `[mail]` is read in [`mail`].

pub mod mailaddr;
pub mod problems;
pub mod slices;

mod mail;

use mail::parse_mail;
pub use mail::{Mail, Transport};

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use toml_edit::Value;

use crate::{
    config::problems::{Collector, FileErrors, Problem, parse_document, plain_value, read_text},
    htb::TreeSpec,
    paths,
    policy::Node,
    policy::rspec::Attributes,
    time::calendar::{Align, Periods},
    units::{BWMIN, BitsPerSec, parse_duration},
};
use bwmon_common::XidSource;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Interface whose egress is accounted.
    pub interface: String,
    /// Ceiling of all general traffic.
    pub node_cap: BitsPerSec,
    /// Ceiling of all exempt traffic.
    pub exempt_max: BitsPerSec,
    /// Where periods start and end (`period_align`, `period_start_time`, `period_start_day`).
    pub periods: Periods,
    /// Sync interval.
    pub interval: Duration,
    /// Slices file.
    pub slices: PathBuf,
    /// State file.
    pub state: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// The tenants' socket (mode 0666: each user sees their own slice); `None` when
    /// `tenant_socket = ""` turns it off.
    pub tenant_socket: Option<PathBuf>,
    /// Where a packet's xid comes from.
    pub xid_source: XidSource,
    /// Exempt destination prefixes.
    pub exempt_prefixes: Vec<IpNet>,
    /// Account, report and notify, never lower a ceiling.
    pub dry_run: bool,
    /// Replace a root qdisc bwmon did not create.
    pub take_over_root_qdisc: bool,
    /// Attribute defaults for every slice.
    pub defaults: Attributes,
    /// Notices.
    pub mail: Mail,
    /// Prometheus listen address, if any.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Kernel-side diagnostics through aya-log.
    pub kernel_log: bool,
    /// Clients served at once by the control socket and, separately, the metrics endpoint.
    pub max_connections: usize,
    /// Accept the loopback interface (labs only).
    pub allow_loopback: bool,
    /// How much history is kept (`history_periods`, `history_sample_days`).
    pub history: Retention,
}

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Finished periods per slice.
    pub periods: usize,
    /// Age of the oldest hourly sample, seconds.
    pub sample_secs: u64,
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

fn rate(v: &Value) -> Result<BitsPerSec, String> {
    match v {
        Value::Integer(i) if *i.value() > 0 => Ok(BitsPerSec(*i.value() as u64)),
        Value::String(s) => s
            .value()
            .parse::<BitsPerSec>()
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.0 == 0 {
                    Err("must be above zero".into())
                } else {
                    Ok(r)
                }
            }),
        _ => Err("must be a rate: bit/s as a number, or a string like \"100mbit\"".into()),
    }
}

const KEYS: [&str; 24] = [
    "interface",
    "node_cap",
    "exempt_max",
    "period",
    "period_align",
    "period_start_time",
    "period_start_day",
    "interval",
    "slices",
    "state",
    "socket",
    "tenant_socket",
    "xid_source",
    "exempt_prefixes",
    "dry_run",
    "take_over_root_qdisc",
    "defaults",
    "mail",
    "metrics",
    "kernel_log",
    "max_connections",
    "allow_loopback",
    "history_periods",
    "history_sample_days",
];

impl Config {
    /// The node's limits the policy resolves slices against.
    pub fn node(&self) -> Node {
        Node {
            node_cap: self.node_cap,
            exempt_max: self.exempt_max,
        }
    }

    /// The HTB tree's fixed part.
    pub fn tree_spec(&self) -> TreeSpec {
        TreeSpec {
            node_cap: self.node_cap,
            exempt_max: self.exempt_max,
        }
    }

    /// The keys whose change needs a restart, that differ between `self` and `new`: a reload
    /// that changes one of them is refused whole.
    pub fn fixed_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.interface != new.interface {
            out.push("interface");
        }
        if self.state != new.state {
            out.push("state");
        }
        if self.socket != new.socket {
            out.push("socket");
        }
        if self.tenant_socket != new.tenant_socket {
            out.push("tenant_socket");
        }
        if self.history != new.history {
            out.push("history_periods/history_sample_days");
        }
        if self.xid_source != new.xid_source {
            out.push("xid_source");
        }
        if self.kernel_log != new.kernel_log {
            out.push("kernel_log");
        }
        out
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or has problems (all of them are reported).
    pub fn load(path: &Path) -> Result<Config, FileErrors> {
        /// A configuration is a few hundred bytes; a megabyte is a mistake.
        const MAX: u64 = 1 << 20;
        Self::parse(path, &read_text(path, MAX)?)
    }

    /// Validates configuration text (as if read from `path`).
    ///
    /// # Errors
    /// Every problem, located.
    pub fn parse(path: &Path, text: &str) -> Result<Config, FileErrors> {
        let doc = parse_document(path, text)?;
        let root = doc.as_table();
        let mut c = Collector::new(text);
        for (key, item) in root.iter() {
            if !KEYS.contains(&key) {
                c.add(
                    Some(item),
                    key,
                    format!("unknown key; known keys are {}", KEYS.join(", ")),
                );
            }
        }
        let get = |k: &str| root.get(k);
        let string = |c: &mut Collector, k: &str| -> Option<String> {
            let item = get(k)?;
            match item.as_str() {
                Some(s) => Some(s.to_owned()),
                None => {
                    c.add(Some(item), k, "must be a string");
                    None
                }
            }
        };
        let boolean = |c: &mut Collector, k: &str| -> bool {
            match get(k) {
                None => false,
                Some(item) => item.as_bool().unwrap_or_else(|| {
                    c.add(Some(item), k, "must be true or false");
                    false
                }),
            }
        };
        let rate_of = |c: &mut Collector, k: &str, default: BitsPerSec| -> BitsPerSec {
            match get(k) {
                None => default,
                Some(item) => match item.as_value().map(rate) {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        c.add(Some(item), k, e);
                        default
                    }
                    None => {
                        c.add(Some(item), k, "must be a rate");
                        default
                    }
                },
            }
        };
        let duration_of = |c: &mut Collector, k: &str, default: u64| -> Duration {
            match get(k) {
                None => Duration::from_secs(default),
                Some(item) => {
                    let parsed = match item.as_value() {
                        Some(Value::Integer(i)) => parse_duration(&i.value().to_string()),
                        Some(Value::String(s)) => parse_duration(s.value()),
                        _ => Err("must be a duration like \"1d\" or \"90s\"".into()),
                    };
                    parsed.unwrap_or_else(|e| {
                        c.add(Some(item), k, e);
                        Duration::from_secs(default)
                    })
                }
            }
        };

        let interface = match string(&mut c, "interface") {
            Some(i) => {
                if let Err(e) = crate::interface::validate_name(&i) {
                    c.add(get("interface"), "interface", e.to_string());
                }
                i
            }
            None => {
                if get("interface").is_none() {
                    c.problems.push(Problem {
                        line: 1,
                        key: "interface".into(),
                        message: "missing: the interface whose egress is accounted, e.g. interface = \"eth0\"".into(),
                    });
                }
                String::new()
            }
        };
        let gbit = BitsPerSec(1_000_000_000);
        let node_cap = rate_of(&mut c, "node_cap", gbit);
        let exempt_max = rate_of(&mut c, "exempt_max", gbit);
        let period = duration_of(&mut c, "period", 86_400);
        let interval = duration_of(&mut c, "interval", 10);
        let align = match string(&mut c, "period_align").as_deref() {
            None | Some("none") => Align::None,
            Some("day") => {
                let text = string(&mut c, "period_start_time").unwrap_or_else(|| "00:00".into());
                let parsed = text.split_once(':').and_then(|(h, m)| {
                    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
                    ((0..24).contains(&h) && (0..60).contains(&m) && m.to_string().len() <= 2)
                        .then_some(Align::Day { hour: h, minute: m })
                });
                parsed.unwrap_or_else(|| {
                    c.add(
                        get("period_start_time"),
                        "period_start_time",
                        format!("'{text}' is not a time of day like \"00:00\" or \"06:30\""),
                    );
                    Align::None
                })
            }
            Some("month") => match get("period_start_day") {
                None => Align::Month { day: 1 },
                Some(item) => match item.as_integer() {
                    Some(d @ 1..=31) => Align::Month { day: d as i8 },
                    _ => {
                        c.add(
                            Some(item),
                            "period_start_day",
                            "must be a day of the month from 1 to 31 (the last day in shorter months)",
                        );
                        Align::None
                    }
                },
            },
            Some(other) => {
                c.add(
                    get("period_align"),
                    "period_align",
                    format!("'{other}' is not one of \"none\", \"day\", \"month\""),
                );
                Align::None
            }
        };
        let daily = matches!(align, Align::Day { .. }) && period.as_secs() == 86_400;
        if align != Align::None && get("period").is_some() && !daily {
            c.add(
                get("period"),
                "period",
                "not used with period_align = \"day\" (1d) or \"month\" (their periods are days or months); remove it",
            );
        }
        let periods = Periods {
            align,
            length: period.as_secs(),
            // Local days and months: TZ, else /etc/localtime, else UTC.
            tz: jiff::tz::TimeZone::system(),
        };
        if interval > period {
            c.add(
                get("interval"),
                "interval",
                "must not be longer than the period",
            );
        }
        let path_of = |c: &mut Collector, k: &str, default: &str| {
            string(c, k)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        // Relative paths are taken from the config's directory, made absolute once so that
        // they keep meaning the same files (`bwmon run --config bwmon.toml` in any directory).
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = absolute.parent().unwrap_or(Path::new("/"));
        let slices = base.join(path_of(&mut c, "slices", paths::SLICES));
        let state = base.join(path_of(&mut c, "state", paths::STATE));
        let socket = base.join(path_of(&mut c, "socket", paths::SOCKET));
        let tenant_socket = Some(path_of(&mut c, "tenant_socket", paths::TENANT_SOCKET))
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| base.join(p));
        let xid_source = match string(&mut c, "xid_source").as_deref() {
            None | Some("uid") => XidSource::Uid,
            Some("mark") => XidSource::Mark,
            Some("source") => XidSource::Source,
            Some(other) => {
                c.add(
                    get("xid_source"),
                    "xid_source",
                    format!("'{other}' is not one of \"uid\", \"mark\", \"source\""),
                );
                XidSource::Uid
            }
        };
        let mut exempt_prefixes = Vec::new();
        if let Some(item) = get("exempt_prefixes") {
            match item.as_array() {
                Some(arr) => {
                    for v in arr.iter() {
                        match v.as_str().map(str::parse::<IpNet>) {
                            Some(Ok(net)) => exempt_prefixes.push(net.trunc()),
                            Some(Err(_)) | None => c.add_value(
                                v,
                                "exempt_prefixes",
                                format!("{v} is not a CIDR prefix like \"198.32.0.0/16\" or \"2001:db8::/32\"").replace('\n', " "),
                            ),
                        }
                    }
                }
                None => c.add(
                    Some(item),
                    "exempt_prefixes",
                    "must be a list of CIDR prefixes",
                ),
            }
        }
        for (family, count) in [
            (
                "IPv4",
                exempt_prefixes
                    .iter()
                    .filter(|p| p.addr().is_ipv4())
                    .count(),
            ),
            (
                "IPv6",
                exempt_prefixes
                    .iter()
                    .filter(|p| p.addr().is_ipv6())
                    .count(),
            ),
        ] {
            if count > bwmon_common::MAX_EXEMPT_PREFIXES as usize {
                c.add(
                    get("exempt_prefixes"),
                    "exempt_prefixes",
                    format!(
                        "{count} {family} prefixes; the kernel's table holds {}",
                        bwmon_common::MAX_EXEMPT_PREFIXES
                    ),
                );
            }
        }
        for (k, r) in [("node_cap", node_cap), ("exempt_max", exempt_max)] {
            if r < BWMIN {
                c.add(
                    get(k),
                    k,
                    format!("{r} is below the smallest rate bwmon sets ({BWMIN})"),
                );
            }
        }
        let allow_loopback = boolean(&mut c, "allow_loopback");
        if interface == "lo" && !allow_loopback {
            c.add(
                get("interface"),
                "interface",
                "the loopback interface carries no tenant's traffic off the host; set allow_loopback = true for a lab",
            );
        }
        // A whole number in `lo..=hi` (`what` names its unit), else `default` and a problem.
        let mut bounded = |key: &str, lo: i64, hi: i64, default: usize, what: &str| match get(key) {
            None => default,
            Some(item) => match item.as_integer() {
                Some(n) if (lo..=hi).contains(&n) => n as usize,
                _ => {
                    c.add(
                        Some(item),
                        key,
                        format!("must be a number of {what} from {lo} to {hi}"),
                    );
                    default
                }
            },
        };
        let max_connections = bounded(
            "max_connections",
            1,
            4096,
            crate::serve::connections::DEFAULT_LIMIT,
            "connections",
        );
        let kept = Retention::default();
        let history = Retention {
            periods: bounded("history_periods", 1, 100_000, kept.periods, "periods"),
            sample_secs: bounded(
                "history_sample_days",
                1,
                3660,
                (kept.sample_secs / 86_400) as usize,
                "days",
            ) as u64
                * 86_400,
        };
        let dry_run = boolean(&mut c, "dry_run");
        let take_over_root_qdisc = boolean(&mut c, "take_over_root_qdisc");
        let kernel_log = boolean(&mut c, "kernel_log");

        let mut defaults = Attributes::default();
        if let Some(item) = get("defaults") {
            match item.as_table_like() {
                Some(t) => {
                    for (k, v) in t.iter() {
                        let key = format!("defaults.{k}");
                        match v.as_value() {
                            Some(val) => {
                                if let Err(e) = defaults.set(k, &plain_value(val)) {
                                    c.add(Some(v), &key, e);
                                }
                            }
                            None => c.add(Some(v), &key, "must be a value"),
                        }
                    }
                }
                None => c.add(
                    Some(item),
                    "defaults",
                    "must be a table of slice attributes",
                ),
            }
        }

        let mail = parse_mail(&mut c, get("mail"));
        let metrics_listen = match get("metrics").and_then(|m| m.as_table_like()) {
            None => {
                if let Some(item) = get("metrics") {
                    c.add(Some(item), "metrics", "must be a table with `listen`");
                }
                None
            }
            Some(t) => {
                for (k, v) in t.iter() {
                    if k != "listen" {
                        c.add(
                            Some(v),
                            &format!("metrics.{k}"),
                            "unknown key; the only key is listen",
                        );
                    }
                }
                match t.get("listen") {
                    None => None,
                    Some(v) => match v.as_str().map(str::parse) {
                        Some(Ok(addr)) => Some(addr),
                        _ => {
                            c.add(
                                Some(v),
                                "metrics.listen",
                                "must be an address like \"127.0.0.1:9110\"",
                            );
                            None
                        }
                    },
                }
            }
        };
        c.finish(path)?;
        Ok(Config {
            path: path.to_owned(),
            interface,
            node_cap,
            exempt_max,
            periods,
            interval,
            slices,
            state,
            socket,
            tenant_socket,
            xid_source,
            exempt_prefixes,
            dry_run,
            take_over_root_qdisc,
            defaults,
            mail,
            metrics_listen,
            kernel_log,
            max_connections,
            allow_loopback,
            history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9110".parse().unwrap()));
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
