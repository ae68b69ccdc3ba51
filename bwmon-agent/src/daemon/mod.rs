//! `bwmon run`: the async edges around the synchronous sync loop. The syncer (and with it the
//! state) lives in one worker thread and is reached only through its command channel; signals,
//! the interval, the control socket, the metrics endpoint, notices and the kernel log share one
//! shutdown signal.

pub mod allocator;
pub mod instance;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bwmon_common::XidSource;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};
use tracing::{info, warn};

use crate::{
    config::Config,
    config::slices::SlicesFile,
    datapath::{Datapath, DatapathOptions},
    error_kind::ErrorKind,
    history,
    htb::Htb,
    notify::{self, Mailer},
    paths,
    serve::control::{self, ReplyBody, SliceRequest},
    serve::slice_view::SliceRef,
    serve::status::StatusReport,
    state::{Notice, NoticeKey, State, StateFile},
    sync::Syncer,
    time::now,
};

/// What the daemon asks of the sync worker.
enum Command {
    /// Sync now; re-read the slices file first when `reload` (else only when it changed).
    Sync { reload: bool },
    /// Sync now if the slices file changed (a cheap `stat`).
    SyncIfSlicesChanged,
    /// A notice was delivered: forget it.
    Delivered(NoticeKey),
    /// Tell systemd's watchdog the worker is alive (between syncs of a long interval).
    Alive,
    /// SIGHUP: a new configuration to apply (`None`: it was refused), then the slices file
    /// re-read and a sync.
    Reload(Option<Box<Config>>),
    /// A request on one slice from the control socket.
    Slice(control::Asked),
}

/// The configuration file read again for a reload.
///
/// # Errors
/// A message for the log: the file's problems (file:line: key: why), or the keys that need a
/// restart.
fn reloaded(running: &Config) -> Result<Config, String> {
    let new = Config::load(&running.path)
        .map_err(|e| format!("configuration rejected on reload:\n{e}"))?;
    let fixed = running.fixed_changes(&new);
    if !fixed.is_empty() {
        return Err(format!(
            "configuration rejected on reload: {} changed; that needs a restart (systemctl restart bwmon)",
            fixed.join(", ")
        ));
    }
    Ok(new)
}

/// Serves metrics when `[metrics] listen` is set.
async fn start_metrics(
    config: &Config,
    status: &watch::Receiver<Arc<StatusReport>>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics listen address {addr}"))?;
    info!(%addr, "serving Prometheus metrics");
    Ok(Some(tokio::spawn(crate::serve::metrics::serve(
        listener,
        config.max_connections,
        status.clone(),
        shutdown.clone(),
    ))))
}

/// Tells systemd (when it started us with `Type=notify`; a no-op otherwise) how the daemon is.
fn tell_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "telling systemd");
    }
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

/// The sync worker's outputs.
struct Outlets {
    status: watch::Sender<Arc<StatusReport>>,
    notices: mpsc::UnboundedSender<Notice>,
    notify_errors: Arc<AtomicU64>,
    /// Said at start, shown in every report.
    warnings: Vec<String>,
    /// The history file and how much of it is kept.
    history: (PathBuf, crate::config::Retention),
}

/// The history's tracker, from the history file (damaged records said and skipped); the file
/// is compacted to its retention first.
fn open_history(path: &Path, retention: crate::config::Retention) -> history::Tracker {
    match history::compact(path, retention, now()) {
        // Damaged records are not copied: said here, once.
        Ok(problems) => {
            for p in problems {
                warn!(file = %path.display(), "history: {p}");
            }
        }
        Err(e) => warn!(file = %path.display(), error = %e, "history: not compacted"),
    }
    match history::Tracker::resume_file(path) {
        Ok((tracker, problems)) => {
            for p in problems {
                warn!(file = %path.display(), "history: {p}");
            }
            tracker
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "history: unreadable; starting it afresh");
            history::Tracker::default()
        }
    }
}

/// Reads the slices file when it changed (or `force`): every valid slice is applied, each
/// skipped one said (log, status, `bwmon_errors_total{kind="slices"}`); a file that does not
/// parse, or is missing, keeps the slices in force (none at a first start: root and default
/// are still accounted).
fn read_slices<K: crate::sync::Kernel, T: crate::sync::Tree>(
    syncer: &mut Syncer<K, T>,
    file: &mut SlicesFile,
    force: bool,
    warnings: &mut Vec<String>,
) {
    let Some(read) = file.poll(force) else {
        return;
    };
    warnings.clear();
    match read {
        Ok(parsed) => {
            info!(count = parsed.slices.len(), "slices file loaded");
            if let Some(skipped) = &parsed.skipped {
                syncer.count_error(ErrorKind::Slices);
                for line in skipped.to_string().lines() {
                    warn!("slices file: {line}; that slice is skipped");
                    warnings.push(format!("skipped: {line}"));
                }
            }
            for w in &parsed.warnings {
                warn!("slices file: {w}");
                warnings.push(w.clone());
            }
            syncer.set_slices(parsed.slices);
        }
        Err(e) => {
            syncer.count_error(ErrorKind::Slices);
            warn!(error = %e, "slices file rejected; the slices in force stay");
            warnings.push(format!(
                "slices file rejected, the slices in force stay: {e}"
            ));
        }
    }
}

/// The one owner of the syncer and the slices file: runs commands until the channel closes,
/// then saves the state.
fn sync_worker(
    mut syncer: Syncer<Datapath, Htb>,
    mut slices: SlicesFile,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: Outlets,
) {
    // Notices left undelivered by an earlier run are handed over once.
    for n in &syncer.state().notices {
        let _ = out.notices.send(n.clone());
    }
    // What is wrong with the slices file in force, shown in every report.
    let mut slice_warnings = Vec::new();
    read_slices(&mut syncer, &mut slices, true, &mut slice_warnings);
    let mut ready = false;
    let (history_file, retention) = out.history.clone();
    let mut tracker = open_history(&history_file, retention);
    let mut compacted = now();
    // A lever's caller is answered after the sync that applied it.
    let mut after_sync: Option<(oneshot::Sender<ReplyBody>, String, u32)> = None;
    while let Some(command) = commands.blocking_recv() {
        let reload = match command {
            Command::Slice(asked) => match asked.what {
                SliceRequest::Show(which) => {
                    let reply = syncer
                        .slice_detail(&which, now())
                        .map_or_else(|e| ReplyBody::Error(e.to_string()), ReplyBody::Slice);
                    let _ = asked.reply.send(reply);
                    continue;
                }
                SliceRequest::Pull(which, lever) => match syncer.pull(&which, lever, now()) {
                    Err(why) => {
                        let _ = asked.reply.send(ReplyBody::Error(why.to_string()));
                        continue;
                    }
                    Ok(p) => {
                        info!(
                            by_uid = asked.uid,
                            slice = p.slice,
                            xid = p.xid,
                            %lever,
                            before = p.before,
                            after = p.after,
                            "operator: lever pulled"
                        );
                        let audit = format!("{}: {lever}: {} → {}", p.slice, p.before, p.after);
                        after_sync = Some((asked.reply, audit, p.xid));
                        false
                    }
                },
            },
            Command::Delivered(key) => {
                // Forgotten (and saved) at once, so a crash cannot send it twice.
                syncer.forget_notices(&HashSet::from([key]));
                continue;
            }
            Command::Alive => {
                tell_systemd(&[sd_notify::NotifyState::Watchdog]);
                continue;
            }
            Command::Sync { reload } => reload,
            Command::Reload(config) => {
                match config {
                    Some(config) => {
                        info!("configuration reloaded");
                        syncer.set_config(*config);
                    }
                    None => syncer.count_error(ErrorKind::Config),
                }
                true
            }
            Command::SyncIfSlicesChanged => {
                if !slices.changed() {
                    continue;
                }
                info!("the slices file changed; syncing now");
                false
            }
        };
        read_slices(&mut syncer, &mut slices, reload, &mut slice_warnings);
        let outcome = syncer.step(now());
        for n in outcome.new_notices {
            let _ = out.notices.send(n);
        }
        let mut report = outcome.report;
        let failed = out.notify_errors.load(Ordering::Relaxed);
        if failed > 0 {
            report.errors.insert(ErrorKind::Notify, failed);
        }
        report.warnings.extend(out.warnings.iter().cloned());
        report.warnings.extend(slice_warnings.iter().cloned());
        // Ready once the datapath, the tree and the first sync are in place.
        let line = summary(&report);
        let mut states = vec![
            sd_notify::NotifyState::Status(&line),
            sd_notify::NotifyState::Watchdog,
        ];
        if !ready {
            states.push(sd_notify::NotifyState::Ready);
            ready = true;
        }
        tell_systemd(&states);
        let entries = tracker.observe(&report);
        if let Err(e) = history::append(&history_file, &entries) {
            warn!(file = %history_file.display(), error = %e, "history: not written; the state is unaffected");
            syncer.count_error(ErrorKind::State);
        }
        if now().saturating_sub(compacted) >= 86_400 {
            compacted = now();
            if let Err(e) = history::compact(&history_file, retention, compacted) {
                warn!(file = %history_file.display(), error = %e, "history: not compacted");
            }
        }
        let _ = out.status.send(Arc::new(report));
        if let Some((reply, audit, xid)) = after_sync.take() {
            let body = syncer.slice_detail(&SliceRef::Xid(xid), now()).map_or_else(
                |e| ReplyBody::Error(e.to_string()),
                |d| ReplyBody::Pulled(audit, d),
            );
            let _ = reply.send(body);
        }
        // The previous report and the sync's temporary tables are freed now.
        crate::daemon::allocator::give_back();
    }
    info!("stopping: saving the state; the datapath keeps counting");
    syncer.persist();
}

/// Runs the daemon until SIGTERM or SIGINT; then finishes the current sync, persists, and
/// returns (the datapath stays attached and counting).
///
/// # Errors
/// Anything that prevents starting: bad config or slices file, unreadable state, no
/// datapath, a foreign root qdisc.
pub async fn run(mut config: Config, fresh_state: bool) -> anyhow::Result<()> {
    // Before anything is touched: a second daemon on this interface changes nothing.
    let _instance = crate::daemon::instance::lock(Path::new(paths::RUNTIME), &config.interface)?;
    if fresh_state {
        for moved in State::discard(&config.state)? {
            warn!(to = %moved.display(), "--fresh-state: the state was moved aside; every budget starts afresh");
        }
    }
    let loaded = State::load(&config.state)?;
    let mut warnings = Vec::new();
    for s in &loaded.set_aside {
        let w = format!(
            "state file {} was damaged ({}) and moved to {}; loaded {}",
            s.from.display(),
            s.why,
            s.to.display(),
            loaded
                .from
                .as_ref()
                .map_or("nothing".into(), |p| p.display().to_string())
        );
        warn!("{w}");
        warnings.push(w);
    }
    let state = loaded.state;
    let slices_file = SlicesFile::new(config.slices.clone());

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
        let fd = unsafe { AsyncFd::register(logger) }.context("polling the kernel log")?;
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
    let state_file = StateFile::new(config.state.clone());
    let mut syncer = Syncer::new(config.clone(), datapath, htb, state_file, state, Vec::new());
    // The tree is installed before anything else, so a foreign root qdisc stops the start.
    let syncer = tokio::task::spawn_blocking(move || syncer.install_tree().map(|_| syncer))
        .await
        .context("installing the HTB tree")??;

    // Until the first sync: what is known, and that it is coming (never `now = 0`).
    let (status_tx, status_rx) = watch::channel(Arc::new(StatusReport {
        now: now(),
        period_secs: config.periods.nominal_secs(),
        interface: config.interface.clone(),
        dry_run: config.dry_run,
        warnings: vec!["starting: the first sync has not finished yet".into()],
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..StatusReport::default()
    }));
    let listener = control::bind(&config.socket, 0o600)
        .with_context(|| format!("control socket {}", config.socket.display()))?;
    let (asks_tx, mut asks_rx) = mpsc::unbounded_channel::<control::Asked>();
    tokio::spawn(control::serve(
        listener,
        config.max_connections,
        status_rx.clone(),
        shutdown_rx.clone(),
        asks_tx,
    ));
    if let Some(path) = &config.tenant_socket {
        let listener = control::bind(path, 0o666)
            .with_context(|| format!("tenant socket {}", path.display()))?;
        tokio::spawn(control::serve_tenant(
            listener,
            config.max_connections,
            status_rx.clone(),
            shutdown_rx.clone(),
            config.xid_source == XidSource::Uid,
        ));
    }
    let mut metrics = start_metrics(&config, &status_rx, &shutdown_rx).await?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        iface = %config.interface,
        interval = ?config.interval,
        period = config.periods.length,
        align = ?config.periods.align,
        socket = %config.socket.display(),
        "bwmon running"
    );

    // Notices go out from their own task: a slow or absent mail server never holds up a sync.
    let (mailer_tx, mailer) = watch::channel(Arc::new(Mailer::new(
        &config.mail,
        notify::hostname(),
        config.periods.nominal_secs(),
    )?));
    let (notice_tx, notice_rx) = mpsc::unbounded_channel::<Notice>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<NoticeKey>();
    let notify_errors = Arc::new(AtomicU64::new(0));
    tokio::spawn(notifier(
        mailer,
        notice_rx,
        done_tx,
        notify_errors.clone(),
        shutdown_rx.clone(),
    ));

    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let outlets = Outlets {
        status: status_tx,
        notices: notice_tx,
        notify_errors,
        warnings,
        history: (history::path_for(&config.state), config.history),
    };
    let worker = std::thread::Builder::new()
        .name("bwmon-sync".into())
        .spawn(move || sync_worker(syncer, slices_file, command_rx, outlets))
        .context("starting the sync worker")?;

    // A changed slices file is acted on within a second, not at the next interval.
    let mut watch_tick = tokio::time::interval(Duration::from_secs(1));
    // systemd's watchdog hears from the worker at least three times per timeout, also when
    // the interval is longer; a stuck worker stops answering and is restarted.
    let mut alive_tick = tokio::time::interval(
        sd_notify::watchdog_enabled().map_or(Duration::from_secs(3600), |t| t / 3),
    );
    loop {
        let command = tokio::select! {
            _ = ticker.tick() => Command::Sync { reload: false },
            _ = alive_tick.tick() => Command::Alive,
            _ = watch_tick.tick() => Command::SyncIfSlicesChanged,
            Some(key) = done_rx.recv() => Command::Delivered(key),
            Some(asked) = asks_rx.recv() => Command::Slice(asked),
            _ = hup.recv() => {
                info!("SIGHUP: re-reading the slices file and the configuration");
                let new = match reloaded(&config) {
                    Ok(new) => new,
                    Err(why) => {
                        warn!("{why}; the running configuration stays");
                        let _ = command_tx.send(Command::Reload(None));
                        continue;
                    }
                };
                if new.interval != config.interval {
                    ticker = tokio::time::interval(new.interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                if new.mail != config.mail || new.periods != config.periods {
                    match Mailer::new(&new.mail, notify::hostname(), new.periods.nominal_secs()) {
                        Ok(m) => {
                            let _ = mailer_tx.send(Arc::new(m));
                        }
                        Err(e) => warn!(error = %e, "the new [mail] cannot be used; the old one stays"),
                    }
                }
                if (new.metrics_listen, new.max_connections)
                    != (config.metrics_listen, config.max_connections)
                {
                    if let Some(old) = metrics.take() {
                        old.abort();
                    }
                    match start_metrics(&new, &status_rx, &shutdown_rx).await {
                        Ok(m) => metrics = m,
                        Err(e) => warn!(error = format!("{e:#}"), "metrics endpoint not started"),
                    }
                }
                config = new.clone();
                Command::Reload(Some(Box::new(new)))
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        if command_tx.send(command).is_err() {
            break;
        }
    }
    tell_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    // Deliveries confirmed before the shutdown are forgotten before the final save.
    while let Ok(key) = done_rx.try_recv() {
        let _ = command_tx.send(Command::Delivered(key));
    }
    drop(command_tx);
    tokio::task::spawn_blocking(move || worker.join())
        .await
        .context("waiting for the sync worker")?
        .map_err(|_| anyhow::anyhow!("the sync worker panicked"))?;
    let _ = std::fs::remove_file(&config.socket);
    if let Some(path) = &config.tenant_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
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
                    let (m, msg) = (mailer.borrow().clone(), n.clone());
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
