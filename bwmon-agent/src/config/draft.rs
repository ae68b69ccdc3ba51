//! The configuration as its keys are read ([`Draft`]: the defaults, then each key's value),
//! and the readers of the keys whose values need more than one typed read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::Item;

use super::{Config, Retention, mail::Mail, read::Field};
use crate::{
    paths,
    policy::received::Count,
    policy::rspec::Attributes,
    policy::warnings::{Levels, Percent},
    time::calendar::{Align, Periods},
    units::{BWMIN, BitsPerSec},
};
use bwmon_common::XidSource;

/// The configuration as its keys are read, before the checks across keys (ripgrep's
/// `LowArgs`); `Config::parse` settles it.
pub(super) struct Draft<'a> {
    /// Each key's value once read, its default until then.
    pub(super) config: Config,
    /// The configuration file's directory: relative paths are taken from it.
    pub(super) base: PathBuf,
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

/// `value` when it was read; else `into` keeps its default.
pub(super) fn set<T>(into: &mut T, value: Option<T>) {
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
pub(super) fn ceiling(f: &mut Field<'_, '_>) -> Option<BitsPerSec> {
    let r = f.rate()?;
    if r < BWMIN {
        f.problem(format!(
            "{r} is below the smallest rate bwmon sets ({BWMIN})"
        ));
    }
    Some(r)
}

/// A whole number of `what` from `lo` to `hi`.
pub(super) fn count(f: &mut Field<'_, '_>, lo: i64, hi: i64, what: &str) -> Option<usize> {
    let n = f.integer(lo..=hi, || {
        format!("must be a number of {what} from {lo} to {hi}")
    })?;
    Some(n as usize)
}

/// `exempt_prefixes`: CIDR prefixes, no more per family than the kernel's table holds.
pub(super) fn exempt_prefixes(f: &mut Field<'_, '_>, d: &mut Draft<'_>) {
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
pub(super) fn warn_at(f: &mut Field<'_, '_>, d: &mut Draft<'_>) {
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
pub(super) fn metrics(f: &mut Field<'_, '_>, d: &mut Draft<'_>) {
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
