//! Prometheus text exposition of the status report, served on `[metrics] listen`.
//!
//! `bwmon_slice_bytes_total` is the bytes of the current period (it resets at each period, as
//! counters may); `bwmon_slice_used_bytes` is the same as a gauge, beside the budget and the
//! threshold, so "% of budget" is one division; ceilings in bit/s and in bytes/s;
//! `bwmon_slice_capped` is 0 or 1.

use std::{fmt::Write as _, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    class::PerClass,
    error_kind::ErrorKind,
    serve::status::{SliceStatus, StatusReport},
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

const PER_CLASS: [ClassMetric; 8] = [
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
        "bwmon_slice_capped",
        "1 when the slice's ceiling is lowered, by traffic class.",
        "gauge",
        |s| s.per_class().map(|_, c| u64::from(c.capped)),
    ),
];

/// The exposition text for a report.
pub(crate) fn render(r: &StatusReport) -> String {
    let mut out = String::new();
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
    out
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

/// Serves `GET /metrics` until `shutdown` flips, at most `limit` clients at once.
pub(crate) async fn serve(
    listener: TcpListener,
    limit: usize,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: watch::Receiver<bool>,
) {
    let handle = move |mut stream: TcpStream| {
        let status = status.clone();
        async move {
            let request = read_head(&mut stream).await?.unwrap_or_default();
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = if request.starts_with("GET ") && (path == "/metrics" || path == "/")
            {
                ("200 OK", render(&status.borrow()))
            } else {
                ("404 Not Found", "only GET /metrics\n".to_owned())
            };
            let head = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            stream.shutdown().await
        }
    };
    crate::serve::connections::serve(
        listener,
        "metrics",
        limit,
        Some(crate::serve::connections::PER_CONNECTION),
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
                ..Default::default()
            }],
            last_sync_secs: 0.25,
            errors: [(ErrorKind::Htb, 3)].into(),
            kernel_memory_bytes: Some(5_160_000),
            now: 1500,
            period_secs: 86_400,
            ..Default::default()
        };
        let text = render(&r);
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
        metric_names(&render(&StatusReport {
            slices: vec![SliceStatus::default()],
            ..Default::default()
        }))
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
