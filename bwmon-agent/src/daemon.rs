//! `bwmon run`: the async edges around the synchronous sync loop. Blocking bpf and netlink
//! work runs in `spawn_blocking`; signals, the interval, the control socket and the kernel log
//! share one shutdown signal.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    config::Config,
    control,
    datapath::{Datapath, DatapathOptions},
    htb::Htb,
    notify::{self, Mailer},
    slices::SlicesFile,
    state::{Notice, State},
    status::StatusReport,
    sync::Syncer,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the slices file at start: a missing file means no slices yet; a bad one stops the
/// start (there is no last good file to keep in force).
fn initial_slices(file: &mut SlicesFile) -> anyhow::Result<Vec<crate::slices::SliceSpec>> {
    if !file.path().exists() {
        warn!(path = %file.path().display(), "no slices file: only root and default are accounted until it appears");
        let _ = file.poll(true);
        return Ok(Vec::new());
    }
    match file.poll(true) {
        Some(Ok(slices)) => Ok(slices),
        Some(Err(e)) => Err(anyhow::Error::new(e).context("the slices file has problems")),
        None => Ok(Vec::new()),
    }
}

/// Runs the daemon until SIGTERM or SIGINT; then finishes the current sync, persists, and
/// returns (the datapath stays attached and counting).
///
/// # Errors
/// Anything that prevents starting: bad config or slices file, unreadable state, no
/// datapath, a foreign root qdisc.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let state = State::load(&config.state)?;
    let mut slices_file = SlicesFile::new(config.slices.clone());
    let slices = initial_slices(&mut slices_file)?;

    let mut opts = DatapathOptions::new(config.interface.clone());
    opts.xid_source = config.xid_source;
    opts.kernel_log = config.kernel_log;
    let mut datapath = tokio::task::spawn_blocking(move || Datapath::open(&opts))
        .await
        .context("datapath loader")??;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if config.kernel_log {
        let logger = datapath.kernel_logger(log::logger())?;
        let mut shutdown = shutdown_rx.clone();
        // SAFETY: the logger owns the ring buffer's fd and keeps it open while registered.
        let fd = unsafe { AsyncFd::register(logger) }
            .map_err(|e| anyhow::anyhow!("polling the kernel log: {e}"))?;
        tokio::spawn(async move {
            let mut fd = fd;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    guard = fd.readable_mut() => match guard {
                        Ok(mut g) => {
                            g.get_inner_mut().flush();
                            g.clear_ready();
                        }
                        Err(e) => {
                            warn!(error = %e, "kernel log stopped");
                            return;
                        }
                    },
                }
            }
        });
    }
    let htb = Htb::open(&config.interface)?;
    let mut syncer = Syncer::new(config.clone(), datapath, htb, state, slices);
    // The tree is installed before anything else, so a foreign root qdisc stops the start.
    let syncer = tokio::task::spawn_blocking(move || syncer.install_tree().map(|_| syncer))
        .await
        .context("installing the HTB tree")??;

    let (status_tx, status_rx) = watch::channel(Arc::new(StatusReport::default()));
    let listener = control::bind(&config.socket)
        .with_context(|| format!("control socket {}", config.socket.display()))?;
    tokio::spawn(control::serve(
        listener,
        status_rx.clone(),
        shutdown_rx.clone(),
    ));
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listen address {addr}"))?;
        info!(%addr, "serving Prometheus metrics");
        tokio::spawn(crate::metrics::serve(
            listener,
            status_rx,
            shutdown_rx.clone(),
        ));
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        iface = %config.interface,
        interval = ?config.interval,
        period = ?config.period,
        socket = %config.socket.display(),
        "bwmon running"
    );

    // Notices go out from their own task: a slow or absent mail server never holds up a sync.
    let mailer = Arc::new(Mailer::new(
        &config.mail,
        notify::hostname(),
        config.period.as_secs(),
    )?);
    let (notice_tx, notice_rx) = mpsc::unbounded_channel::<Notice>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u32, u64)>();
    let notify_errors = Arc::new(AtomicU64::new(0));
    tokio::spawn(notifier(
        mailer,
        notice_rx,
        done_tx,
        notify_errors.clone(),
        shutdown_rx.clone(),
    ));
    let mut handed: HashSet<(u32, u64)> = HashSet::new();
    for n in &syncer.state.notices {
        if handed.insert(n.key()) {
            let _ = notice_tx.send(n.clone());
        }
    }

    let mut carried = Some((syncer, slices_file));
    let state_path = config.state.clone();
    let mut force_reload = false;
    // A changed slices file is acted on within a second, not at the next interval.
    let mut watch_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = watch_tick.tick() => {
                if !carried.as_ref().is_some_and(|(_, file)| file.changed()) {
                    continue;
                }
                info!("the slices file changed; syncing now");
            }
            Some(key) = done_rx.recv() => {
                // Forget a delivered notice at once, so a crash cannot send it twice.
                let Some((mut s, file)) = carried.take() else { break };
                let path = state_path.clone();
                let s = tokio::task::spawn_blocking(move || {
                    forget_delivered(&mut s, &HashSet::from([key]), &path);
                    s
                })
                .await
                .context("saving a delivered notice")?;
                carried = Some((s, file));
                continue;
            }
            _ = hup.recv() => {
                info!("SIGHUP: re-reading the slices file");
                force_reload = true;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let Some((mut s, mut file)) = carried.take() else {
            break;
        };
        let force = std::mem::take(&mut force_reload);
        let path = state_path.clone();
        let mut delivered = HashSet::new();
        while let Ok(key) = done_rx.try_recv() {
            delivered.insert(key);
        }
        let (s, file, mut report, fresh) = tokio::task::spawn_blocking(move || {
            let mut dirty = s.state.forget_notices(&delivered);
            match file.poll(force) {
                Some(Ok(slices)) => {
                    info!(count = slices.len(), "slices file loaded");
                    s.set_slices(slices);
                }
                Some(Err(e)) => {
                    *s.errors.entry("slices").or_default() += 1;
                    warn!(error = %e, "slices file rejected; the last good one stays in force");
                }
                None => {}
            }
            let outcome = s.step(now());
            dirty |= outcome.state_changed;
            if dirty && let Err(e) = s.state.save(&path) {
                *s.errors.entry("state").or_default() += 1;
                warn!(error = %e, "saving the state; retrying next interval");
            }
            let fresh: Vec<Notice> = s.state.notices.clone();
            (s, file, outcome.report, fresh)
        })
        .await
        .context("sync task")?;
        for n in fresh {
            if handed.insert(n.key()) {
                let _ = notice_tx.send(n);
            }
        }
        let failed = notify_errors.load(Ordering::Relaxed);
        if failed > 0 {
            report.errors.push(("notify".into(), failed));
        }
        let _ = status_tx.send(Arc::new(report));
        carried = Some((s, file));
    }
    info!("stopping: saving the state; the datapath keeps counting");
    let _ = shutdown_tx.send(true);
    let mut delivered = HashSet::new();
    while let Ok(key) = done_rx.try_recv() {
        delivered.insert(key);
    }
    if let Some((mut s, _)) = carried {
        tokio::task::spawn_blocking(move || {
            forget_delivered(&mut s, &delivered, &state_path);
            s.state.save(&state_path)
        })
        .await
        .context("final save")??;
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Drops delivered notices from the state and saves it when that changed anything.
fn forget_delivered<K: crate::sync::Kernel, T: crate::sync::Tree>(
    s: &mut Syncer<K, T>,
    delivered: &HashSet<(u32, u64)>,
    path: &std::path::Path,
) {
    if s.state.forget_notices(delivered)
        && let Err(e) = s.state.save(path)
    {
        *s.errors.entry("state").or_default() += 1;
        warn!(error = %e, "saving the state after a delivery");
    }
}

/// Delivers notices, retrying with backoff; reports each delivered one as (xid, period start)
/// so the sync loop drops it from the persisted state.
async fn notifier(
    mailer: Arc<Mailer>,
    mut inbox: mpsc::UnboundedReceiver<Notice>,
    done: mpsc::UnboundedSender<(u32, u64)>,
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
                    let (m, msg) = (mailer.clone(), n.clone());
                    let sent = tokio::time::timeout(
                        Duration::from_secs(60),
                        tokio::task::spawn_blocking(move || m.send(&msg, t)),
                    )
                    .await;
                    match sent {
                        Ok(Ok(Ok(()))) => {
                            info!(slice = %n.slice, xid = n.xid, "notice delivered");
                            delivered.push(n.key());
                        }
                        other => {
                            let why = match other {
                                Ok(Ok(Err(e))) => e.to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => "timed out".into(),
                                Ok(Ok(Ok(()))) => String::new(),
                            };
                            n.attempts += 1;
                            n.next_attempt = t + notify::backoff(n.attempts);
                            errors.fetch_add(1, Ordering::Relaxed);
                            warn!(slice = %n.slice, xid = n.xid, attempts = n.attempts, retry_in_s = n.next_attempt - t, error = %why, "notice not delivered; will retry");
                        }
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
