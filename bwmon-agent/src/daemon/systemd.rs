//! What systemd hears of the daemon (when it started it with `Type=notify`; a no-op
//! otherwise): ready, alive, a one-line status, stopping.

use std::time::Duration;

use tracing::warn;

use crate::serve::status::StatusReport;

/// Tells systemd `states`.
pub(super) fn tell(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "telling systemd");
    }
}

/// After a sync: the summary line, alive, and ready when it was the `first`.
pub(super) fn synced(report: &StatusReport, first: bool) {
    let line = summary(report);
    let mut states = vec![
        sd_notify::NotifyState::Status(&line),
        sd_notify::NotifyState::Watchdog,
    ];
    if first {
        states.push(sd_notify::NotifyState::Ready);
    }
    tell(&states);
}

/// How often the worker tells the watchdog it is alive: three times per timeout, also when
/// the interval is longer (a stuck worker stops answering and is restarted); hourly when there
/// is no watchdog.
pub(super) fn alive_every() -> Duration {
    sd_notify::watchdog_enabled().map_or(Duration::from_secs(3600), |t| t / 3)
}

/// The one-line summary systemd shows for the service.
fn summary(report: &StatusReport) -> String {
    let capped = report
        .slices
        .iter()
        .filter(|s| s.capped || s.exempt_capped)
        .count();
    let errors: u64 = report.errors.values().sum();
    format!(
        "{} slices, {capped} capped, last sync {:.0} ms, {errors} errors",
        report.slices.len(),
        report.last_sync_secs * 1e3
    )
}
