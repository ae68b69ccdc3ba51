//! Prometheus text exposition of the status report, served on `[metrics] listen`.
//!
//! `bwmon_slice_bytes_total` is the bytes of the current period (it resets at each period, as
//! counters may); `bwmon_slice_used_bytes` is the same as a gauge, beside the budget and the
//! threshold, so "% of budget" is one division; ceilings in bit/s and in bytes/s;
//! `bwmon_slice_capped` is 0 or 1.
//!
//! Who sees what ([`Access`]): the per-slice series name every tenant and their usage, so they
//! go only to requests with the bearer token of `[metrics] token_file` (Prometheus'
//! `authorization: credentials_file`), or to anyone when the operator says `public = true`.
//! Otherwise only the series without a tenant label are served (the daemon's health: syncs,
//! errors, how many slices are capped), so a listener on 127.0.0.1 does not show one local
//! user another's usage. `GET` and `HEAD`, `/metrics` with or without a query string.

use std::{fmt::Write as _, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    class::PerClass,
    error_kind::ErrorKind,
    serve::{
        connections::{self, Limits, PER_CONNECTION, Ticket},
        status::{SliceStatus, StatusReport},
    },
};

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per-slice metrics, one sample per traffic class: name, help, type, and the values
/// (general, exempt) of a status line.
type ClassMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SliceStatus) -> PerClass<u64>,
);

const PER_CLASS: [ClassMetric; 9] = [
    (
        "bwmon_slice_bytes_total",
        "Bytes a slice sent in the current period, by traffic class.",
        "counter",
        |s| s.per_class().map(|_, c| c.used.0),
    ),
    (
        "bwmon_slice_ceil_bits_per_second",
        "The HTB ceiling in force, by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| c.ceil.0),
    ),
    (
        "bwmon_slice_ceil_bytes_per_second",
        "The HTB ceiling in force in bytes per second, by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| c.ceil.bytes_per_sec()),
    ),
    (
        "bwmon_slice_used_bytes",
        "Bytes a slice used in the current period, by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| c.used.0),
    ),
    (
        "bwmon_slice_budget_bytes",
        "A slice's budget for the current period (grants included), by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| c.budget.bytes().0),
    ),
    (
        "bwmon_slice_threshold_bytes",
        "Use after which a slice's ceiling is lowered, by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| c.thresh.bytes().0),
    ),
    (
        "bwmon_slice_guaranteed_bits_per_second",
        "What a slice is guaranteed now (its part of the cap while it sends, else its min rate), by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| c.guaranteed.0),
    ),
    (
        // A name of its own (not a `direction` label on bwmon_slice_bytes_total, whose series
        // would then change identity): what a slice received in the current period, by the
        // traffic class of where it came from.
        "bwmon_slice_received_bytes_total",
        "Bytes a slice received (downloads) in the current period, by traffic class of the source.",
        "counter",
        |s| PerClass {
            general: s.received_bytes,
            exempt: s.received_exempt_bytes,
        },
    ),
    (
        "bwmon_slice_capped",
        "1 when the slice's ceiling is lowered, by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| u64::from(c.capped)),
    ),
];

/// Who may see what of the endpoint (`[metrics]` `token_file`, `public`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Every series to requests that carry this bearer token; 401 to the others.
    Token(Token),
    /// Every series to anyone who can connect (`public = true`).
    Public,
    /// Only the series without a tenant label (the daemon's health), to anyone.
    Untenanted,
}

/// A bearer token, compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// It cannot be read.
    #[error("token file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It holds no token.
    #[error("token file {path} is empty")]
    Empty {
        /// The file.
        path: std::path::PathBuf,
    },
}

impl Token {
    /// The token in `path` (its first line, without surrounding blanks), as Prometheus'
    /// `authorization: credentials_file` sends it.
    ///
    /// # Errors
    /// The file cannot be read, or holds no token.
    pub(crate) fn read(path: &std::path::Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Token(token.to_owned()))
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The series without a tenant label: what [`Access::Untenanted`] serves.
pub(crate) const UNTENANTED: [&str; 8] = [
    "bwmon_last_sync_timestamp_seconds",
    "bwmon_build_info",
    "bwmon_sync_duration_seconds",
    "bwmon_kernel_memory_bytes",
    "bwmon_errors_total",
    "bwmon_slices",
    "bwmon_slices_capped",
    "bwmon_leaves_pending",
];

/// The exposition text for a report: every series, or (`tenants` false) only the
/// [`UNTENANTED`] ones.
pub(crate) fn render(r: &StatusReport, tenants: bool) -> String {
    let mut out = String::new();
    if tenants {
        render_slices(r, &mut out);
    }
    out.push_str("# HELP bwmon_last_sync_timestamp_seconds When the last sync finished (Unix time).\n# TYPE bwmon_last_sync_timestamp_seconds gauge\n");
    let _ = writeln!(out, "bwmon_last_sync_timestamp_seconds {}", r.now);
    out.push_str(
        "# HELP bwmon_build_info The running bwmon's version.\n# TYPE bwmon_build_info gauge\n",
    );
    let _ = writeln!(
        out,
        "bwmon_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str("# HELP bwmon_sync_duration_seconds Duration of the last sync.\n# TYPE bwmon_sync_duration_seconds gauge\n");
    let _ = writeln!(out, "bwmon_sync_duration_seconds {}", r.last_sync_secs);
    if let Some(bytes) = r.kernel_memory_bytes {
        out.push_str("# HELP bwmon_kernel_memory_bytes Kernel memory of the datapath's maps (their memlock).\n# TYPE bwmon_kernel_memory_bytes gauge\n");
        let _ = writeln!(out, "bwmon_kernel_memory_bytes {bytes}");
    }
    out.push_str("# HELP bwmon_errors_total Errors since start, by kind.\n# TYPE bwmon_errors_total counter\n");
    for kind in ErrorKind::ALL {
        let v = r.errors.get(&kind).copied().unwrap_or(0);
        let _ = writeln!(out, "bwmon_errors_total{{kind=\"{}\"}} {v}", kind.name());
    }
    let capped = r
        .slices
        .iter()
        .filter(|s| s.capped || s.exempt_capped)
        .count();
    for (name, help, v) in [
        (
            "bwmon_slices",
            "Slices shown (root and default included).",
            r.slices.len() as u64,
        ),
        (
            "bwmon_slices_capped",
            "Slices with a lowered ceiling in either class.",
            capped as u64,
        ),
        (
            "bwmon_leaves_pending",
            "HTB leaves still to be created (a sync creates capped slices' first, in bounded batches).",
            r.leaves_pending,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    out
}

/// The per-slice series (labelled with the slice's name and xid).
fn render_slices(r: &StatusReport, out: &mut String) {
    for (name, help, kind, values) in PER_CLASS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &r.slices {
            for (class, v) in values(s).iter() {
                let _ = writeln!(
                    out,
                    "{name}{{slice=\"{}\",xid=\"{}\",class=\"{}\"}} {v}",
                    label(&s.name),
                    s.xid,
                    class.name()
                );
            }
        }
    }
    let name = "bwmon_slice_period_end_timestamp_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} When a slice's current period ends (Unix time).\n# TYPE {name} gauge"
    );
    for s in &r.slices {
        let end = s.period_end;
        let _ = writeln!(
            out,
            "{name}{{slice=\"{}\",xid=\"{}\"}} {end}",
            label(&s.name),
            s.xid
        );
    }
    // An info metric, so the usual series keep their labels: join on slice and xid.
    let name = "bwmon_slice_cgroup_info";
    let cgroups: Vec<(&SliceStatus, &str)> = (r.slices.iter())
        .filter_map(|s| Some((s, s.cgroup.as_deref()?)))
        .collect();
    if !cgroups.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {name} A cgroup slice's cgroup (its path under the cgroup v2 hierarchy).\n# TYPE {name} gauge"
        );
    }
    for (s, cgroup) in cgroups {
        let _ = writeln!(
            out,
            "{name}{{slice=\"{}\",xid=\"{}\",cgroup=\"{}\"}} 1",
            label(&s.name),
            s.xid,
            label(cgroup)
        );
    }
}

/// The largest request head read.
const MAX_HEAD: usize = 8 << 10;

/// Reads an HTTP request head (up to the blank line), however it is split across writes;
/// `None` when it is larger than [`MAX_HEAD`] or the client closes first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// The bearer token a request head carries, if any.
fn bearer(head: &str) -> Option<&str> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// The response to a request head: status line, extra headers, body, and whether the body is
/// sent (not for `HEAD`).
fn respond(
    head: &str,
    access: &Access,
    report: &StatusReport,
) -> (&'static str, &'static str, String, bool) {
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    // `/metrics?x=1` is `/metrics`: a query string asks nothing of bwmon.
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let send_body = method != "HEAD";
    if !matches!(method, "GET" | "HEAD") || !(path == "/metrics" || path == "/") {
        return (
            "404 Not Found",
            "",
            "only GET or HEAD /metrics\n".to_owned(),
            send_body,
        );
    }
    let tenants = match access {
        Access::Public => true,
        Access::Untenanted => false,
        Access::Token(token) => {
            if !bearer(head).is_some_and(|t| token.matches(t)) {
                return (
                    "401 Unauthorized",
                    "WWW-Authenticate: Bearer realm=\"bwmon\"\r\n",
                    "a bearer token is required (Prometheus: authorization: credentials_file)\n"
                        .to_owned(),
                    send_body,
                );
            }
            true
        }
    };
    ("200 OK", "", render(report, tenants), send_body)
}

/// Serves `GET` and `HEAD /metrics` until `shutdown` flips, within `limits` (per client
/// address), each series as `access` allows.
pub(crate) async fn serve(
    listener: TcpListener,
    limits: Limits,
    access: Access,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: watch::Receiver<bool>,
) {
    let access = Arc::new(access);
    let handle = move |mut stream: TcpStream, ticket: Ticket| {
        let status = status.clone();
        let access = access.clone();
        async move {
            let request = read_head(&mut stream).await?.unwrap_or_default();
            ticket.answering();
            let (code, headers, body, send_body) = respond(&request, &access, &status.borrow());
            let head = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            if send_body {
                stream.write_all(body.as_bytes()).await?;
            }
            stream.shutdown().await
        }
    };
    connections::serve(
        listener,
        "metrics",
        limits,
        Some(PER_CONNECTION),
        handle,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_metric_names_with_escaped_labels() {
        let r = StatusReport {
            slices: vec![SliceStatus {
                name: "a\"b".into(),
                xid: 7,
                period_start: 1000,
                period_end: 87_400,
                bytes: 10,
                exempt_bytes: 20,
                ceil_bps: 1000,
                exempt_ceil_bps: 2000,
                max_kbyte: 100,
                thresh_kbyte: 80,
                i2_max_kbyte: 0,
                i2_thresh_kbyte: 0,
                capped: true,
                exempt_capped: false,
                emailed: false,
                max_rate_bps: 0,
                i2_max_rate_bps: 0,
                dropped_bytes: 0,
                rate_bps: 0,
                exempt_rate_bps: 0,
                classes: vec![],
                received_bytes: 30,
                ..Default::default()
            }],
            last_sync_secs: 0.25,
            errors: [(ErrorKind::Htb, 3)].into(),
            kernel_memory_bytes: Some(5_160_000),
            now: 1500,
            period_secs: 86_400,
            ..Default::default()
        };
        let text = render(&r, true);
        // What Prometheus reads: every line parses, every sample has its HELP and TYPE.
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        assert_eq!(
            scrape.samples.len(),
            text.lines().filter(|l| !l.starts_with('#')).count()
        );
        for sample in &scrape.samples {
            assert!(
                scrape.docs.contains_key(&sample.metric),
                "no HELP for {}",
                sample.metric
            );
        }
        for line in [
            "bwmon_slice_bytes_total{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 10",
            "bwmon_slice_bytes_total{slice=\"a\\\"b\",xid=\"7\",class=\"exempt\"} 20",
            "bwmon_slice_ceil_bits_per_second{slice=\"a\\\"b\",xid=\"7\",class=\"exempt\"} 2000",
            "bwmon_slice_capped{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 1",
            "bwmon_slice_received_bytes_total{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 30",
            "bwmon_sync_duration_seconds 0.25",
            "bwmon_slice_used_bytes{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 10",
            "bwmon_slice_budget_bytes{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 102400",
            "bwmon_slice_threshold_bytes{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 81920",
            "bwmon_slice_ceil_bytes_per_second{slice=\"a\\\"b\",xid=\"7\",class=\"exempt\"} 250",
            "bwmon_slice_period_end_timestamp_seconds{slice=\"a\\\"b\",xid=\"7\"} 87400",
            "bwmon_last_sync_timestamp_seconds 1500",
            "bwmon_kernel_memory_bytes 5160000",
            concat!(
                "bwmon_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "bwmon_errors_total{kind=\"htb\"} 3",
            "bwmon_errors_total{kind=\"notify\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    fn one_slice() -> StatusReport {
        StatusReport {
            slices: vec![SliceStatus {
                name: "alice".into(),
                xid: 1001,
                capped: true,
                ..Default::default()
            }],
            leaves_pending: 3,
            kernel_memory_bytes: Some(4096),
            ..Default::default()
        }
    }

    #[test]
    fn a_cgroup_slice_has_an_info_series_with_its_cgroup() {
        let mut r = one_slice();
        assert!(
            !render(&r, true).contains("bwmon_slice_cgroup_info"),
            "none without cgroups"
        );
        r.slices[0].cgroup = Some("/system.slice/ci-job-42.scope".into());
        let text = render(&r, true);
        assert!(text.contains("# TYPE bwmon_slice_cgroup_info gauge"));
        assert!(text.contains(
            "bwmon_slice_cgroup_info{slice=\"alice\",xid=\"1001\",cgroup=\"/system.slice/ci-job-42.scope\"} 1"
        ));
        assert!(
            !render(&r, false).contains("bwmon_slice_cgroup_info"),
            "a tenant's"
        );
    }

    #[test]
    fn without_a_token_or_public_only_untenanted_series_are_served() {
        let r = one_slice();
        let get = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let (code, _, body, _) = respond(get, &Access::Untenanted, &r);
        assert_eq!(code, "200 OK");
        assert!(!body.contains("alice") && !body.contains("1001"), "{body}");
        let names = metric_names(&body);
        let untenanted: std::collections::BTreeSet<String> =
            UNTENANTED.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(names, untenanted);
        assert!(body.lines().any(|l| l == "bwmon_slices_capped 1"), "{body}");
        assert!(
            body.lines().any(|l| l == "bwmon_leaves_pending 3"),
            "{body}"
        );
        let (_, _, body, _) = respond(get, &Access::Public, &r);
        assert!(body.contains("slice=\"alice\""), "{body}");
    }

    #[test]
    fn a_token_opens_every_series_and_its_absence_gets_401() {
        let r = one_slice();
        let token = Access::Token(Token("s3cret".into()));
        let (code, headers, body, _) = respond("GET /metrics HTTP/1.1\r\n\r\n", &token, &r);
        assert_eq!(code, "401 Unauthorized");
        assert!(headers.starts_with("WWW-Authenticate: Bearer"));
        assert!(!body.contains("alice"));
        let wrong = "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3creT\r\n\r\n";
        assert_eq!(respond(wrong, &token, &r).0, "401 Unauthorized");
        let right = "GET /metrics HTTP/1.1\r\nauthorization: bearer s3cret\r\n\r\n";
        let (code, _, body, _) = respond(right, &token, &r);
        assert_eq!(code, "200 OK");
        assert!(body.contains("slice=\"alice\""), "{body}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret \n").unwrap();
        assert_eq!(Token::read(&file).unwrap(), Token("s3cret".into()));
        std::fs::write(&file, "\n").unwrap();
        assert!(
            Token::read(&file)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn query_strings_and_head_are_served_other_paths_are_not() {
        let r = one_slice();
        let (code, _, body, send) =
            respond("GET /metrics?x=1 HTTP/1.1\r\n\r\n", &Access::Public, &r);
        assert_eq!((code, send), ("200 OK", true));
        assert!(body.contains("bwmon_slice_bytes_total"));
        let (code, _, body, send) = respond("HEAD /metrics HTTP/1.1\r\n\r\n", &Access::Public, &r);
        assert_eq!((code, send), ("200 OK", false));
        assert!(!body.is_empty(), "its length is still said");
        for other in [
            "POST /metrics HTTP/1.1",
            "GET /other HTTP/1.1",
            "GET /metricsx HTTP/1.1",
            "",
        ] {
            assert_eq!(
                respond(other, &Access::Public, &r).0,
                "404 Not Found",
                "{other}"
            );
        }
    }

    /// The `bwmon_…` names in `text`.
    fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("bwmon_"))
            .map(str::to_owned)
            .collect()
    }

    /// Each panel's title and queries in a Grafana dashboard.
    fn panel_queries(dashboard: &serde_json::Value) -> Vec<(&str, Vec<&str>)> {
        let panels = dashboard["panels"].as_array().unwrap();
        panels
            .iter()
            .map(|panel| {
                let title = panel["title"].as_str().unwrap();
                let exprs = panel["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["expr"].as_str().unwrap())
                    .collect();
                (title, exprs)
            })
            .collect()
    }

    /// The `expr:` lines of a Prometheus rules file.
    fn rule_exprs(rules: &str) -> Vec<&str> {
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .collect()
    }

    /// Whether `expr` asks Prometheus about the scrapes of the job "bwmon" (its own `up`),
    /// which is the only way to see a host whose bwmon is not there.
    fn about_the_scrapes(expr: &str) -> bool {
        expr.contains("up{job=\"bwmon\"")
    }

    /// The names bwmon serves.
    fn served() -> std::collections::BTreeSet<String> {
        metric_names(&render(
            &StatusReport {
                slices: vec![SliceStatus::default()],
                ..Default::default()
            },
            true,
        ))
    }

    /// Whether `expr` names only metrics bwmon serves, and at least one unless it is about
    /// the scrapes.
    fn uses_served_metrics(expr: &str) -> bool {
        let used = metric_names(expr);
        (!used.is_empty() || about_the_scrapes(expr)) && used.is_subset(&served())
    }

    #[test]
    fn the_shipped_dashboard_and_alerts_use_only_metrics_bwmon_serves() {
        let served = served();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../etc/grafana-dashboard.json")).unwrap();
        let panels = panel_queries(&dashboard);
        assert!(
            panels.len() >= 4,
            "usage vs budget, capped, sync duration, errors"
        );
        for (title, exprs) in panels {
            assert!(!exprs.is_empty(), "{title}: no query");
            for e in exprs {
                let used = metric_names(e);
                assert!(!used.is_empty(), "{title}: {e}");
                assert!(used.is_subset(&served), "{title}: {e} uses {used:?}");
            }
        }
        let exprs = rule_exprs(include_str!("../../etc/alerts.yml"));
        assert_eq!(
            exprs.len(),
            7,
            "near budget, capped, sync stalled, errors rising; down, gone, not scraped"
        );
        for e in exprs {
            assert!(uses_served_metrics(e), "{e} uses {:?}", metric_names(e));
        }
        assert_eq!(
            rule_exprs(include_str!("../../etc/alerts.yml"))
                .into_iter()
                .filter(|e| about_the_scrapes(e))
                .count(),
            3,
            "an alert for a host that does not answer, one for a host no longer scraped, one for no host at all"
        );
    }

    #[test]
    fn the_fleet_dashboard_and_recording_rules_use_only_metrics_bwmon_serves() {
        let fleet: serde_json::Value =
            serde_json::from_str(include_str!("../../etc/grafana-fleet-dashboard.json")).unwrap();
        let variables = fleet["templating"]["list"].as_array().unwrap();
        let instance = variables
            .iter()
            .find(|v| v["name"] == "instance")
            .expect("an instance variable");
        assert_eq!(instance["multi"], true, "several hosts at once");
        assert_eq!(instance["includeAll"], true, "all hosts");
        let panels = panel_queries(&fleet);
        let titles: Vec<&str> = panels.iter().map(|(t, _)| *t).collect();
        for wanted in [
            "Per-slice use across hosts",
            "Top capped slices of the fleet",
        ] {
            assert!(
                titles.iter().any(|t| t.starts_with(wanted)),
                "no panel {wanted:?} in {titles:?}"
            );
        }
        for (title, exprs) in panels {
            assert!(!exprs.is_empty(), "{title}: no query");
            for e in exprs {
                assert!(
                    uses_served_metrics(e),
                    "{title}: {e} uses {:?}",
                    metric_names(e)
                );
                assert!(
                    e.contains("$instance"),
                    "{title}: {e} ignores the hosts chosen"
                );
            }
        }
        let rules = include_str!("../../etc/recording-rules.yml");
        let exprs = rule_exprs(rules);
        assert!(exprs.len() >= 5, "{exprs:?}");
        for e in exprs {
            assert!(
                uses_served_metrics(e) && !about_the_scrapes(e),
                "{e} uses {:?}",
                metric_names(e)
            );
        }
        // Recorded as level:metric:operations, each name once.
        let records: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record:"))
            .map(str::trim)
            .collect();
        let unique: std::collections::BTreeSet<&&str> = records.iter().collect();
        assert_eq!(unique.len(), records.len(), "{records:?}");
        for r in records {
            assert_eq!(r.split(':').count(), 3, "{r}");
        }
    }
}
