//! Notices go out from tasks of their own, one lane per channel: a slow or absent mail server
//! or a webhook that hangs never holds up a sync, nor the other channel. Each notice is retried
//! with backoff until its period ends; a delivery is reported back so the worker forgets the
//! notice on that channel and saves the state at once.
//!
//! The mail lane tries every notice that is due, each with its own backoff (one address that
//! fails does not hold the others back). The webhook lane delivers in the order notices were
//! decided: after a failure, the notices behind it wait for the same next attempt, so a hook
//! that is down costs one attempt (one timeout, when it hangs) per backoff, not one per event.

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
    notify::{self, Hook, Mailer, Sender},
    state::{Channel, Notice, NoticeId},
    time::{UnixSecs, now},
};

/// A delivery: the notice, and the channel it was delivered on.
pub(super) type Delivered = (NoticeId, Channel);

/// Where the worker hands notices: each goes to the lane of every channel it is pending on.
#[derive(Clone, Debug)]
pub(super) struct Lanes {
    mail: mpsc::UnboundedSender<Notice>,
    webhook: mpsc::UnboundedSender<Notice>,
}

impl Lanes {
    /// Hands `n` to the lanes of its pending channels.
    pub(super) fn send(&self, n: &Notice) {
        for channel in Channel::ALL.into_iter().filter(|c| n.pending.has(*c)) {
            let lane = match channel {
                Channel::Mail => &self.mail,
                Channel::Webhook => &self.webhook,
            };
            let _ = lane.send(n.clone());
        }
    }
}

/// The running notifier's ends.
pub(super) struct Notifier {
    /// The mailer in use (a reload may replace it).
    pub(super) mailer: watch::Sender<Option<Arc<Mailer>>>,
    /// The webhook in use, if any (a reload may replace or remove it).
    pub(super) hook: watch::Sender<Option<Arc<Hook>>>,
    /// Notices to deliver.
    pub(super) lanes: Lanes,
    /// Notices delivered, per channel.
    pub(super) delivered: mpsc::UnboundedReceiver<Delivered>,
    /// Failed deliveries since start, on either channel.
    pub(super) errors: Arc<AtomicU64>,
}

/// The webhook `config` describes, set up (its secret read).
///
/// # Errors
/// The secret file cannot be used.
pub(super) fn hook(config: &Config) -> Result<Option<Arc<Hook>>, notify::NotifyError> {
    config
        .webhook
        .as_ref()
        .map(|w| Hook::new(w, notify::hostname()).map(Arc::new))
        .transpose()
}

/// The mailer `config` describes.
///
/// # Errors
/// An SMTP relay that cannot be set up.
pub(super) fn mailer(config: &Config) -> Result<Arc<Mailer>, notify::NotifyError> {
    let period = config.periods.nominal_secs();
    Mailer::new(&config.mail, notify::hostname(), period).map(Arc::new)
}

/// Starts a lane per channel with the mailer and the webhook `config` describes; they stop
/// with `shutdown`.
///
/// # Errors
/// The `[mail]` or `[webhook]` configuration cannot be used.
pub(super) fn start(config: &Config, shutdown: &watch::Receiver<bool>) -> anyhow::Result<Notifier> {
    let (mailer_tx, mailer) = watch::channel(Some(mailer(config)?));
    let (hook_tx, hook) = watch::channel(hook(config)?);
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Delivered>();
    let errors = Arc::new(AtomicU64::new(0));
    let (mail_tx, mail_rx) = mpsc::unbounded_channel::<Notice>();
    let (hook_lane_tx, hook_rx) = mpsc::unbounded_channel::<Notice>();
    let lane = |in_order| Lane {
        done: done_tx.clone(),
        errors: errors.clone(),
        in_order,
    };
    tokio::spawn(lane(false).run(mailer, mail_rx, shutdown.clone()));
    tokio::spawn(lane(true).run(hook, hook_rx, shutdown.clone()));
    Ok(Notifier {
        mailer: mailer_tx,
        hook: hook_tx,
        lanes: Lanes {
            mail: mail_tx,
            webhook: hook_lane_tx,
        },
        delivered: done_rx,
        errors,
    })
}

/// One channel's lane.
struct Lane {
    /// Where deliveries are reported.
    done: mpsc::UnboundedSender<Delivered>,
    /// Failed deliveries, counted.
    errors: Arc<AtomicU64>,
    /// Deliver in order: after a failure, hold the rest until the next attempt.
    in_order: bool,
}

impl Lane {
    /// Delivers the notices of `inbox` with the sender `current` holds, retrying with backoff;
    /// reports each delivery. With no sender (the channel's configuration was removed), what
    /// waits for it is dropped, said once per notice, and reported delivered.
    async fn run<S: Sender>(
        self,
        current: watch::Receiver<Option<Arc<S>>>,
        mut inbox: mpsc::UnboundedReceiver<Notice>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut outbox: Vec<Notice> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(n) = inbox.recv() => outbox.push(n),
                _ = tick.tick() => {
                    let sender = current.borrow().clone();
                    let delivered = self.round(sender, &mut outbox, now()).await;
                    outbox.retain(|n| !delivered.contains(&n.id));
                    for id in delivered {
                        let _ = self.done.send((id, S::CHANNEL));
                    }
                }
            }
        }
    }

    /// One round at `t`: the notices of `outbox` that are due, tried in order; the ids
    /// delivered (or dropped for want of a sender).
    async fn round<S: Sender>(
        &self,
        sender: Option<Arc<S>>,
        outbox: &mut Vec<Notice>,
        t: UnixSecs,
    ) -> Vec<NoticeId> {
        outbox.retain(|n| n.period_end > t);
        let Some(sender) = sender else {
            for n in outbox.iter() {
                warn!(slice = %n.slice, xid = n.xid, id = n.id.0, channel = S::CHANNEL.name(), "its configuration was removed: notice dropped");
            }
            return outbox.iter().map(|n| n.id).collect();
        };
        let mut delivered = Vec::new();
        let mut held_until = None;
        for n in outbox.iter_mut().filter(|n| n.next_attempt <= t) {
            if let Some(until) = held_until {
                n.next_attempt = until;
                continue;
            }
            if self.attempt(&sender, n, t).await {
                delivered.push(n.id);
            } else if self.in_order {
                held_until = Some(n.next_attempt);
            }
        }
        delivered
    }

    /// One attempt at delivering `n` at `t`; a failure is counted and the next attempt put
    /// off.
    async fn attempt<S: Sender>(&self, sender: &Arc<S>, n: &mut Notice, t: UnixSecs) -> bool {
        let (s, msg) = (sender.clone(), n.clone());
        let patience = sender.patience();
        let sent = tokio::time::timeout(
            patience,
            tokio::task::spawn_blocking(move || s.deliver(&msg, t)),
        )
        .await;
        let channel = S::CHANNEL.name();
        let why = match sent {
            Ok(Ok(Ok(()))) => {
                info!(slice = %n.slice, xid = n.xid, id = n.id.0, kind = n.kind.name(), channel, "notice delivered");
                return true;
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {patience:?}"),
        };
        n.attempts += 1;
        // From when the attempt ended: one that hung took its timeout.
        let wait = notify::backoff(n.attempts);
        n.next_attempt = now().max(t) + wait;
        self.errors.fetch_add(1, Ordering::Relaxed);
        warn!(slice = %n.slice, xid = n.xid, id = n.id.0, kind = n.kind.name(), channel, attempts = n.attempts, retry_in_s = wait, error = %why, "notice not delivered; will retry");
        false
    }
}
