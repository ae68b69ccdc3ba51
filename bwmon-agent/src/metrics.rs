//! Prometheus text exposition of the status report, served on `[metrics] listen`.
//!
//! `bwmon_slice_bytes_total` is the bytes of the current period (it resets at each period, as
//! counters may); ceilings in bit/s; `bwmon_slice_capped` is 0 or 1.

use std::{fmt::Write as _, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    class::PerClass,
    error_kind::ErrorKind,
    status::{SliceStatus, StatusReport},
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

const PER_CLASS: [ClassMetric; 3] = [
    (
        "bwmon_slice_bytes_total",
        "Bytes a slice sent in the current period, by traffic class.",
        "counter",
        |s| PerClass {
            general: s.bytes,
            exempt: s.exempt_bytes,
        },
    ),
    (
        "bwmon_slice_ceil_bits_per_second",
        "The HTB ceiling in force, by traffic class.",
        "gauge",
        |s| PerClass {
            general: s.ceil_bps,
            exempt: s.exempt_ceil_bps,
        },
    ),
    (
        "bwmon_slice_capped",
        "1 when the slice's ceiling is lowered, by traffic class.",
        "gauge",
        |s| PerClass {
            general: u64::from(s.capped),
            exempt: u64::from(s.exempt_capped),
        },
    ),
];

/// The exposition text for a report.
pub fn render(r: &StatusReport) -> String {
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
    out.push_str("# HELP bwmon_sync_duration_seconds Duration of the last sync.\n# TYPE bwmon_sync_duration_seconds gauge\n");
    let _ = writeln!(out, "bwmon_sync_duration_seconds {}", r.last_sync_secs);
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
pub async fn serve(
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
    crate::connections::serve(listener, "metrics", limit, handle, shutdown).await;
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
                period_start: 0,
                bytes: 10,
                exempt_bytes: 20,
                ceil_bps: 1000,
                exempt_ceil_bps: 2000,
                max_kbyte: 0,
                thresh_kbyte: 0,
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
            }],
            last_sync_secs: 0.25,
            errors: [(ErrorKind::Htb, 3)].into(),
            ..Default::default()
        };
        let text = render(&r);
        for line in [
            "bwmon_slice_bytes_total{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 10",
            "bwmon_slice_bytes_total{slice=\"a\\\"b\",xid=\"7\",class=\"exempt\"} 20",
            "bwmon_slice_ceil_bits_per_second{slice=\"a\\\"b\",xid=\"7\",class=\"exempt\"} 2000",
            "bwmon_slice_capped{slice=\"a\\\"b\",xid=\"7\",class=\"general\"} 1",
            "bwmon_sync_duration_seconds 0.25",
            "bwmon_errors_total{kind=\"htb\"} 3",
            "bwmon_errors_total{kind=\"notify\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
