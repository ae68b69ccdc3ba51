//! `bwmon run`: the async edges around the synchronous sync loop. Blocking bpf and netlink
//! work runs in `spawn_blocking`; signals, the interval, the control socket and the kernel log
//! share one shutdown signal.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    config::Config,
    control,
    datapath::{Datapath, DatapathOptions},
    htb::Htb,
    slices::SlicesFile,
    state::State,
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
    tokio::spawn(control::serve(listener, status_rx, shutdown_rx.clone()));

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

    let mut carried = Some((syncer, slices_file));
    let state_path = config.state.clone();
    let mut force_reload = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
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
        let (s, file, report) = tokio::task::spawn_blocking(move || {
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
            if outcome.state_changed
                && let Err(e) = s.state.save(&path)
            {
                *s.errors.entry("state").or_default() += 1;
                warn!(error = %e, "saving the state; retrying next interval");
            }
            (s, file, outcome.report)
        })
        .await
        .context("sync task")?;
        let _ = status_tx.send(Arc::new(report));
        carried = Some((s, file));
    }
    info!("stopping: saving the state; the datapath keeps counting");
    let _ = shutdown_tx.send(true);
    if let Some((s, _)) = carried {
        tokio::task::spawn_blocking(move || s.state.save(&state_path))
            .await
            .context("final save")??;
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
