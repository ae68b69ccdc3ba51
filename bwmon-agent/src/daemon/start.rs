//! The daemon's start, in the order it must happen: the state loaded (never silently afresh),
//! the datapath opened, the HTB tree installed, the control sockets bound.

use std::sync::Arc;

use anyhow::Context as _;
use bwmon_common::XidSource;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    config::Config,
    datapath::{Datapath, DatapathOptions},
    htb::Htb,
    serve::{control, status::StatusReport},
    state::{self, State, StateFile},
    sync::Syncer,
    time::now,
};

/// The state at `config.state` (none with `fresh_state`: the files are set aside by
/// [`set_aside`] once the datapath is up), and a warning for every damaged generation set
/// aside, or for a lone previous generation loaded.
///
/// # Errors
/// No generation loads, or a file cannot be read or moved.
pub(super) fn load_state(
    config: &Config,
    fresh_state: bool,
) -> anyhow::Result<(State, Vec<String>)> {
    if fresh_state {
        return Ok((State::default(), Vec::new()));
    }
    let loaded = State::load(&config.state)?;
    let mut warnings = Vec::new();
    if loaded.lone_previous {
        let w = format!(
            "state file {} is missing; loaded its previous generation {} (the usage of the save before the last). To start every budget afresh instead: stop bwmon, `bwmon teardown --forget-state`",
            config.state.display(),
            state::previous(&config.state).display()
        );
        warn!("{w}");
        warnings.push(w);
    }
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
    Ok((loaded.state, warnings))
}

/// `--fresh-state`: every generation of the state moved aside (`<file>.discarded-<time>`),
/// said once.
///
/// # Errors
/// A file that exists and cannot be moved.
pub(super) fn set_aside(config: &Config) -> anyhow::Result<Vec<String>> {
    let moved = State::discard(&config.state)?;
    if moved.is_empty() {
        return Ok(Vec::new());
    }
    let to: Vec<String> = moved.iter().map(|p| p.display().to_string()).collect();
    let w = format!(
        "--fresh-state: every budget starts afresh; the state was moved aside to {}",
        to.join(" and ")
    );
    warn!("{w}");
    Ok(vec![w])
}

/// The syncer over the datapath (opened, with its kernel log followed until `shutdown` when
/// asked) and the HTB tree (installed: a foreign root qdisc stops the start).
///
/// # Errors
/// The datapath cannot be opened, or the tree cannot be installed.
pub(super) async fn syncer(
    config: &Config,
    state: State,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Syncer<Datapath, Htb>> {
    let mut opts = DatapathOptions::new(config.interface.clone());
    opts.xid_source = config.xid_source;
    opts.kernel_log = config.kernel_log;
    let mut datapath = tokio::task::spawn_blocking(move || Datapath::open(&opts))
        .await
        .context("datapath loader")??;
    if config.kernel_log {
        follow_kernel_log(&mut datapath, shutdown.clone())?;
    }
    let htb = Htb::open(&config.interface)?;
    let state_file = StateFile::new(config.state.clone());
    let mut syncer = Syncer::new(config.clone(), datapath, htb, state_file, state, Vec::new());
    syncer.stop_on(shutdown.clone());
    let hierarchy = crate::cgroup::Hierarchy::locate();
    match &hierarchy {
        Some(h) => info!("{}: cgroup slices are read there", h.describe()),
        None => info!("no cgroup v2 hierarchy is mounted: cgroup slices match nothing"),
    }
    syncer.set_hierarchy(hierarchy);
    // The tree is installed before anything else, so a foreign root qdisc stops the start.
    let syncer = tokio::task::spawn_blocking(move || syncer.install_tree().map(|_| syncer))
        .await
        .context("installing the HTB tree")??;
    Ok(syncer)
}

/// Copies the eBPF programs' log lines into ours as they come, until `shutdown`.
fn follow_kernel_log(
    datapath: &mut Datapath,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let logger = datapath.kernel_logger(log::logger())?;
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
    Ok(())
}

/// What status shows until the first sync: what is known, and that it is coming (never
/// `now = 0`).
pub(super) fn first_report(config: &Config) -> StatusReport {
    StatusReport {
        now: now(),
        period_secs: config.periods.nominal_secs(),
        interface: config.interface.clone(),
        dry_run: config.dry_run,
        warnings: vec!["starting: the first sync has not finished yet".into()],
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..StatusReport::default()
    }
}

/// Serves the control socket (and the tenant socket, when configured) until `shutdown`; the
/// requests on one slice come out of the returned channel.
///
/// # Errors
/// A socket cannot be bound.
pub(super) fn serve_control(
    config: &Config,
    status: &watch::Receiver<Arc<StatusReport>>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<mpsc::UnboundedReceiver<control::Asked>> {
    let listener = control::bind(&config.socket, 0o600)
        .with_context(|| format!("control socket {}", config.socket.display()))?;
    let (asks_tx, asks_rx) = mpsc::unbounded_channel::<control::Asked>();
    // Root's socket: every client is root, so no bound per client below the total.
    let root_only = crate::serve::connections::Limits::new(config.max_connections, usize::MAX);
    tokio::spawn(control::serve(
        listener,
        root_only,
        crate::serve::connections::PER_CONNECTION,
        status.clone(),
        shutdown.clone(),
        asks_tx,
    ));
    if let Some(path) = &config.tenant_socket {
        let listener = control::bind(path, 0o666)
            .with_context(|| format!("tenant socket {}", path.display()))?;
        tokio::spawn(control::serve_tenant(
            listener,
            config.connection_limits(),
            status.clone(),
            shutdown.clone(),
            config.xid_source == XidSource::Uid,
        ));
    }
    Ok(asks_rx)
}
