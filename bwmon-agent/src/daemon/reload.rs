//! SIGHUP: the configuration read again and, when it is accepted, what it changes of the
//! daemon's edges rebuilt — the interval's ticker, the mailer, the webhook (its secret read
//! again), the metrics listener — before the worker gets it. A new mailer or webhook serves
//! from the next delivery on, queued notices included.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use super::{notifier, worker::Command};
use crate::{
    config::{Config, problems::FileErrors},
    notify::{Hook, Mailer},
    serve::status::StatusReport,
};

/// The parts of the running daemon a reload may rebuild, and the configuration they were
/// built from.
pub(super) struct Edges {
    /// The configuration in force.
    pub(super) config: Config,
    /// A sync every interval.
    pub(super) ticker: Interval,
    /// The notifier's mailer.
    pub(super) mailer: watch::Sender<Option<Arc<Mailer>>>,
    /// The notifier's webhook.
    pub(super) hook: watch::Sender<Option<Arc<Hook>>>,
    /// The metrics endpoint, when `[metrics] listen` is set.
    pub(super) metrics: Option<JoinHandle<()>>,
    /// The reports the metrics endpoint serves.
    pub(super) status: watch::Receiver<Arc<StatusReport>>,
    /// The shutdown signal a new metrics endpoint listens to.
    pub(super) shutdown: watch::Receiver<bool>,
}

impl Edges {
    /// Reads the configuration again and applies what changed to the edges; the command that
    /// hands it (or its refusal) to the worker.
    pub(super) async fn reload(&mut self) -> Command {
        info!("SIGHUP: re-reading the slices file and the configuration");
        let new = match reloaded(&self.config) {
            Ok(new) => new,
            Err(why) => {
                warn!("{why}; the running configuration stays");
                return Command::Reload(None);
            }
        };
        if new.interval != self.config.interval {
            self.ticker = ticker(new.interval);
        }
        if new.mail != self.config.mail || new.periods != self.config.periods {
            match notifier::mailer(&new) {
                Ok(m) => {
                    let _ = self.mailer.send(Some(m));
                }
                Err(e) => warn!(error = %e, "the new [mail] cannot be used; the old one stays"),
            }
        }
        // Always: the secret file may have changed under the same configuration.
        match notifier::hook(&new) {
            Ok(h) => {
                if h.is_some() || self.config.webhook.is_some() {
                    info!(webhook = ?h.as_ref().map(|h| h.origin()), "webhook set up");
                }
                let _ = self.hook.send(h);
            }
            Err(e) => warn!(error = %e, "the new [webhook] cannot be used; the old one stays"),
        }
        if (&new.metrics, new.connection_limits())
            != (&self.config.metrics, self.config.connection_limits())
            || new.metrics.token_file.is_some()
        {
            // (A token file is read again at every reload: a new token needs no restart.)
            if let Some(old) = self.metrics.take() {
                old.abort();
            }
            match start_metrics(&new, &self.status, &self.shutdown).await {
                Ok(m) => self.metrics = m,
                Err(e) => warn!(error = format!("{e:#}"), "metrics endpoint not started"),
            }
        }
        self.config = new.clone();
        Command::Reload(Some(Box::new(new)))
    }
}

/// Why a reload keeps the running configuration.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The file has problems.
    #[error("configuration rejected on reload:\n{0}")]
    Problems(FileErrors),
    /// Keys that need a restart changed.
    #[error(
        "configuration rejected on reload: {} changed; that needs a restart (systemctl restart bwmon)",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
}

/// The configuration file read again for a reload.
///
/// # Errors
/// The file's problems (file:line: key: why), or the keys that need a restart.
fn reloaded(running: &Config) -> Result<Config, Refused> {
    let new = Config::load(&running.path).map_err(Refused::Problems)?;
    let fixed = running.fixed_changes(&new);
    if !fixed.is_empty() {
        return Err(Refused::NeedsRestart(fixed));
    }
    Ok(new)
}

/// A tick every `interval`; a late one does not bring the next ones forward.
pub(super) fn ticker(interval: Duration) -> Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Serves metrics when `[metrics] listen` is set, each series as `[metrics]` allows.
///
/// # Errors
/// The token file cannot be read, or the address cannot be bound.
pub(super) async fn start_metrics(
    config: &Config,
    status: &watch::Receiver<Arc<StatusReport>>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let access = config.metrics.access()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics listen address {addr}"))?;
    info!(%addr, access = ?access, "serving Prometheus metrics");
    Ok(Some(tokio::spawn(crate::serve::metrics::serve(
        listener,
        config.connection_limits(),
        access,
        status.clone(),
        shutdown.clone(),
    ))))
}
