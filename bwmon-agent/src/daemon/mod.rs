//! `bwmon run`: the async edges around the synchronous sync loop. The syncer (and with it the
//! state) lives in one worker thread and is reached only through its command channel; signals,
//! the interval, the control socket, the metrics endpoint, notices and the kernel log share one
//! shutdown signal.

pub mod allocator;
pub(crate) mod instance;
mod notifier;
mod reload;
mod start;
mod systemd;
mod worker;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
    time::Interval,
};
use tracing::info;

use self::{
    notifier::Delivered,
    reload::Edges,
    worker::{Command, Outlets},
};
use crate::{
    config::{Config, slices::SlicesFile},
    history, paths,
    serve::control,
};

/// Runs the daemon until SIGTERM or SIGINT; then finishes the current sync, persists, and
/// returns (the datapath stays attached and counting).
///
/// # Errors
/// Anything that prevents starting: bad config or slices file, unreadable state, no
/// datapath, a foreign root qdisc.
pub(crate) async fn run(config: Config, fresh_state: bool) -> anyhow::Result<()> {
    // Before anything is read or touched: a second daemon on this interface, or on another
    // one with the same state file or sockets, changes nothing.
    let _instance = instance::lock_all(Path::new(paths::RUNTIME), &config)?;
    let (state, mut warnings) = start::load_state(&config, fresh_state)?;
    let slices_file = SlicesFile::new(config.slices.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let syncer = start::syncer(&config, state, &shutdown_rx).await?;
    if fresh_state {
        // Only now that the datapath and the tree are up: a start that failed kept them.
        warnings.extend(start::set_aside(&config)?);
    }
    let (status_tx, status_rx) = watch::channel(Arc::new(start::first_report(&config)));
    let asks = start::serve_control(&config, &status_rx, &shutdown_rx)?;
    let metrics = reload::start_metrics(&config, &status_rx, &shutdown_rx).await?;
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    let hup = signal(SignalKind::hangup())?;
    let ticker = reload::ticker(config.interval);
    info!(
        iface = %config.interface,
        interval = ?config.interval,
        period = config.periods.length,
        align = ?config.periods.align,
        socket = %config.socket.display(),
        "bwmon running"
    );
    let notifier = notifier::start(&config, &shutdown_rx)?;
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let outlets = Outlets {
        status: status_tx,
        notices: notifier.lanes,
        notify_errors: notifier.errors,
        warnings,
        history: (history::path_for(&config.state), config.history),
        stopping: shutdown_rx.clone(),
    };
    let worker = std::thread::Builder::new()
        .name("bwmon-sync".into())
        .spawn(move || worker::sync_worker(syncer, slices_file, command_rx, outlets))
        .context("starting the sync worker")?;
    let mut inputs = Inputs {
        term,
        int,
        hup,
        watch_tick: tokio::time::interval(Duration::from_secs(1)),
        alive_tick: tokio::time::interval(systemd::alive_every()),
        delivered: notifier.delivered,
        asks,
    };
    let mut edges = Edges {
        config,
        ticker,
        mailer: notifier.mailer,
        hook: notifier.hook,
        metrics,
        status: status_rx,
        shutdown: shutdown_rx,
    };
    while let Some(command) = inputs.next(&mut edges).await {
        if command_tx.send(command).is_err() {
            break;
        }
    }
    systemd::tell(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    // Deliveries confirmed before the shutdown are forgotten before the final save.
    while let Ok(done) = inputs.delivered.try_recv() {
        let _ = command_tx.send(Command::Delivered(done));
    }
    drop(command_tx);
    tokio::task::spawn_blocking(move || worker.join())
        .await
        .context("waiting for the sync worker")?
        .map_err(|_| anyhow::anyhow!("the sync worker panicked"))?;
    let _ = std::fs::remove_file(&edges.config.socket);
    if let Some(path) = &edges.config.tenant_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// What the daemon waits on besides the interval (which a reload may change).
struct Inputs {
    term: Signal,
    int: Signal,
    hup: Signal,
    /// A changed slices file is acted on within a second, not at the next interval.
    watch_tick: Interval,
    /// systemd's watchdog hears from the worker (see [`systemd::alive_every`]).
    alive_tick: Interval,
    /// Notices the notifier delivered, per channel.
    delivered: mpsc::UnboundedReceiver<Delivered>,
    /// Requests on one slice from the control socket.
    asks: mpsc::UnboundedReceiver<control::Asked>,
}

impl Inputs {
    /// The next command for the worker; a SIGHUP reloads `edges` first. `None` on SIGTERM
    /// or SIGINT.
    async fn next(&mut self, edges: &mut Edges) -> Option<Command> {
        let command = tokio::select! {
            _ = edges.ticker.tick() => Command::Sync { reload: false },
            _ = self.alive_tick.tick() => Command::Alive,
            _ = self.watch_tick.tick() => Command::SyncIfSlicesChanged,
            Some(done) = self.delivered.recv() => Command::Delivered(done),
            Some(asked) = self.asks.recv() => Command::Slice(asked),
            _ = self.hup.recv() => edges.reload().await,
            _ = self.term.recv() => return None,
            _ = self.int.recv() => return None,
        };
        Some(command)
    }
}
