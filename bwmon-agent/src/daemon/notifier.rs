//! Notices go out from their own task: a slow or absent mail server never holds up a sync.
//! Each is retried with backoff until its period ends; a delivered one is reported back so
//! the worker drops it from the persisted state.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    config::Config,
    notify::{self, Mailer},
    state::{Notice, NoticeKey},
    time::{UnixSecs, now},
};

/// The running notifier's ends.
pub(super) struct Notifier {
    /// The mailer in use (a reload may replace it).
    pub(super) mailer: watch::Sender<Arc<Mailer>>,
    /// Notices to deliver.
    pub(super) notices: mpsc::UnboundedSender<Notice>,
    /// Notices delivered.
    pub(super) delivered: mpsc::UnboundedReceiver<NoticeKey>,
    /// Failed deliveries since start.
    pub(super) errors: Arc<AtomicU64>,
}

/// Starts the notifier with the mailer `config` describes; it stops with `shutdown`.
///
/// # Errors
/// The `[mail]` configuration cannot be used.
pub(super) fn start(config: &Config, shutdown: &watch::Receiver<bool>) -> anyhow::Result<Notifier> {
    let (mailer_tx, mailer) = watch::channel(Arc::new(Mailer::new(
        &config.mail,
        notify::hostname(),
        config.periods.nominal_secs(),
    )?));
    let (notice_tx, notice_rx) = mpsc::unbounded_channel::<Notice>();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<NoticeKey>();
    let errors = Arc::new(AtomicU64::new(0));
    tokio::spawn(notifier(
        mailer,
        notice_rx,
        done_tx,
        errors.clone(),
        shutdown.clone(),
    ));
    Ok(Notifier {
        mailer: mailer_tx,
        notices: notice_tx,
        delivered: done_rx,
        errors,
    })
}

/// Delivers notices, retrying with backoff; reports each delivered one as (xid, period start)
/// so the sync loop drops it from the persisted state.
async fn notifier(
    mailer: watch::Receiver<Arc<Mailer>>,
    mut inbox: mpsc::UnboundedReceiver<Notice>,
    done: mpsc::UnboundedSender<NoticeKey>,
    errors: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut outbox: Vec<Notice> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(n) = inbox.recv() => outbox.push(n),
            _ = tick.tick() => {
                let t = now();
                outbox.retain(|n| n.period_end > t);
                let mut delivered = Vec::new();
                for n in outbox.iter_mut().filter(|n| n.next_attempt <= t) {
                    if deliver(&mailer, n, t, &errors).await {
                        delivered.push(n.key());
                    }
                }
                outbox.retain(|n| !delivered.contains(&n.key()));
                for key in delivered {
                    let _ = done.send(key);
                }
            }
        }
    }
}

/// One attempt at delivering `n` at `t`; a failure is counted in `errors` and the next
/// attempt put off.
async fn deliver(
    mailer: &watch::Receiver<Arc<Mailer>>,
    n: &mut Notice,
    t: UnixSecs,
    errors: &AtomicU64,
) -> bool {
    let (m, msg) = (mailer.borrow().clone(), n.clone());
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || m.send(&msg, t)),
    )
    .await;
    let why = match sent {
        Ok(Ok(Ok(()))) => {
            info!(slice = %n.slice, xid = n.xid, "notice delivered");
            return true;
        }
        Ok(Ok(Err(e))) => e.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".into(),
    };
    n.attempts += 1;
    n.next_attempt = t + notify::backoff(n.attempts);
    errors.fetch_add(1, Ordering::Relaxed);
    warn!(slice = %n.slice, xid = n.xid, attempts = n.attempts, retry_in_s = n.next_attempt - t, error = %why, "notice not delivered; will retry");
    false
}
