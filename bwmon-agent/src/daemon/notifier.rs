//! Notices go out from tasks of their own, one lane per channel: a slow or absent mail server
//! or a webhook that hangs never holds up a sync, nor the other channel. Each notice is retried
//! with backoff until its period ends; a delivery is reported back so the worker forgets the
//! notice on that channel and saves the state at once.
//!
//! The mail lane tries every notice that is due, each with its own backoff (one address that
//! fails does not hold the others back). The webhook lane delivers in the order notices were
//! decided: only the oldest undelivered one is tried, and the others follow it once it is
//! through, so a receiver sees `capped` after `warned`, and a hook that is down costs one
//! attempt (one timeout, when it hangs) per backoff, not one per event.

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
    /// Deliver in order: nothing before the notices ahead of it.
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
        for n in outbox.iter_mut() {
            // In order, nothing goes out before the notices ahead of it.
            let go = match n.next_attempt <= t {
                true => self.attempt(&sender, n, t).await,
                false => false,
            };
            match (go, self.in_order) {
                (true, _) => delivered.push(n.id),
                (false, true) => break,
                (false, false) => {}
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::state::{Channels, NoticeKind};

    /// A sender that fails each notice as often as `fails` says, and logs what it delivered.
    #[derive(Default)]
    struct Flaky {
        fails: Mutex<Vec<(NoticeId, u32)>>,
        sent: Mutex<Vec<u64>>,
    }

    impl Sender for Flaky {
        const CHANNEL: Channel = Channel::Webhook;

        fn deliver(&self, n: &Notice, _: UnixSecs) -> Result<(), notify::NotifyError> {
            let mut fails = self.fails.lock().unwrap();
            if let Some((_, left)) = fails.iter_mut().find(|(id, left)| *id == n.id && *left > 0) {
                *left -= 1;
                return Err(notify::NotifyError::Send {
                    slice: n.slice.clone(),
                    via: "test".into(),
                    why: "refused".into(),
                });
            }
            self.sent.lock().unwrap().push(n.id.0);
            Ok(())
        }

        fn patience(&self) -> Duration {
            Duration::from_secs(5)
        }
    }

    fn outbox() -> Vec<Notice> {
        (0..3)
            .map(|id| Notice {
                id: NoticeId(id),
                ..Notice::new(
                    ("alice", 1),
                    (0, u64::MAX),
                    NoticeKind::Warned,
                    vec![],
                    Channels::WEBHOOK,
                    0,
                )
            })
            .collect()
    }

    fn lane(in_order: bool) -> Lane {
        Lane {
            done: mpsc::unbounded_channel().0,
            errors: Arc::new(AtomicU64::new(0)),
            in_order,
        }
    }

    #[tokio::test]
    async fn the_webhooks_lane_holds_every_notice_behind_one_that_failed() {
        let hook = Arc::new(Flaky::default());
        hook.fails.lock().unwrap().push((NoticeId(0), 1));
        let (lane, mut out) = (lane(true), outbox());
        let t = now();
        assert!(lane.round(Some(hook.clone()), &mut out, t).await.is_empty());
        assert!(hook.sent.lock().unwrap().is_empty(), "none past the first");
        // Not yet due: still nothing, in order.
        assert!(
            lane.round(Some(hook.clone()), &mut out, t + 1)
                .await
                .is_empty()
        );
        let later = out[0].next_attempt;
        let delivered = lane.round(Some(hook.clone()), &mut out, later).await;
        assert_eq!(delivered, [NoticeId(0), NoticeId(1), NoticeId(2)]);
        assert_eq!(*hook.sent.lock().unwrap(), [0, 1, 2]);
        assert_eq!(lane.errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_mail_lane_lets_the_others_by_one_that_failed_and_a_removed_channel_drops_all() {
        let mail = Arc::new(Flaky::default());
        mail.fails.lock().unwrap().push((NoticeId(0), 1));
        let (lane, mut out) = (lane(false), outbox());
        let delivered = lane.round(Some(mail.clone()), &mut out, now()).await;
        assert_eq!(delivered, [NoticeId(1), NoticeId(2)]);
        let dropped = lane.round(None::<Arc<Flaky>>, &mut outbox(), now()).await;
        assert_eq!(dropped.len(), 3);
    }
}
