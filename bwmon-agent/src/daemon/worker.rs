//! The sync worker: the one thread that owns the syncer (and with it the state), the slices
//! file and the history, and runs the daemon's commands one at a time.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::{
    notifier::{Delivered, Lanes},
    systemd,
};
use crate::{
    config::{
        Config, Retention,
        last_good::{entry_of, keep_last_good},
        slices::SlicesFile,
    },
    datapath::Datapath,
    error_kind::ErrorKind,
    history,
    htb::Htb,
    serve::{
        control::{self, ReplyBody, SliceRequest},
        slice_view::SliceRef,
        status::StatusReport,
    },
    sync::{Kernel, PullOutcome, Syncer, Tree},
    time::{UnixSecs, now},
};

/// What the daemon asks of the sync worker.
pub(super) enum Command {
    /// Sync now; re-read the slices file first when `reload` (else only when it changed).
    Sync { reload: bool },
    /// Sync now if the slices file changed (a cheap `stat`).
    SyncIfSlicesChanged,
    /// A notice was delivered on a channel: forget it there.
    Delivered(Delivered),
    /// Tell systemd's watchdog the worker is alive (between syncs of a long interval).
    Alive,
    /// SIGHUP: a new configuration to apply (`None`: it was refused), then the slices file
    /// re-read and a sync.
    Reload(Option<Box<Config>>),
    /// A request on one slice from the control socket.
    Slice(control::Asked),
}

/// The sync worker's outputs.
pub(super) struct Outlets {
    pub(super) status: watch::Sender<Arc<StatusReport>>,
    pub(super) notices: Lanes,
    pub(super) notify_errors: Arc<AtomicU64>,
    /// Said at start, shown in every report.
    pub(super) warnings: Vec<String>,
    /// The history file and how much of it is kept.
    pub(super) history: (PathBuf, Retention),
    /// True once the daemon is stopping: no command is started after that.
    pub(super) stopping: watch::Receiver<bool>,
}

/// The one owner of the syncer and the slices file: runs commands until the channel closes,
/// then saves the state.
pub(super) fn sync_worker(
    syncer: Syncer<Datapath, Htb>,
    slices: SlicesFile,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: Outlets,
) {
    let mut worker = Worker::start(syncer, slices, out);
    loop {
        // Once the daemon is stopping, commands are still carried out (a delivery confirmed
        // before is forgotten before the final save) but no sync is started.
        let stopping = *worker.out.stopping.borrow();
        // Leaves still to create: the next sync at once, unless a command is waiting.
        let command = match commands.try_recv() {
            Ok(command) => command,
            Err(mpsc::error::TryRecvError::Empty) if worker.building && !stopping => {
                worker.sync(false);
                continue;
            }
            Err(_) => match commands.blocking_recv() {
                Some(command) => command,
                None => break,
            },
        };
        if let Some(reload) = worker.handle(command)
            && !*worker.out.stopping.borrow()
        {
            worker.sync(reload);
        }
    }
    info!("stopping: saving the state; the datapath keeps counting");
    worker.syncer.persist();
}

/// The worker's own state between commands.
struct Worker {
    syncer: Syncer<Datapath, Htb>,
    slices: SlicesFile,
    out: Outlets,
    /// What is wrong with the slices file in force, shown in every report.
    slice_warnings: Vec<String>,
    /// systemd has been told the daemon is ready (after the first sync).
    ready: bool,
    history: HistoryLog,
    /// A lever's caller is answered after the sync that applied it: where, the audit line,
    /// and the slice's xid.
    after_sync: Option<(oneshot::Sender<ReplyBody>, String, u32)>,
    /// Leaves the last sync left to create.
    leaves_pending: u64,
    /// The last sync left leaves to create and fewer than the one before: the next one
    /// follows at once (a tree the kernel refuses waits for the interval instead).
    building: bool,
}

impl Worker {
    /// Hands over the notices an earlier run left undelivered, reads the slices file and opens
    /// the history.
    fn start(mut syncer: Syncer<Datapath, Htb>, mut slices: SlicesFile, out: Outlets) -> Self {
        for n in &syncer.state().notices {
            out.notices.send(n);
        }
        let mut slice_warnings = Vec::new();
        read_slices(&mut syncer, &mut slices, true, &mut slice_warnings);
        let (file, retention) = out.history.clone();
        let history = HistoryLog::open(file, retention, &mut syncer);
        Worker {
            syncer,
            slices,
            out,
            slice_warnings,
            ready: false,
            history,
            after_sync: None,
            leaves_pending: 0,
            building: false,
        }
    }

    /// Carries out `command`; `Some(reload)` when a sync is to follow (re-reading the slices
    /// file first when `reload`).
    fn handle(&mut self, command: Command) -> Option<bool> {
        match command {
            Command::Slice(asked) => self.slice_request(asked).then_some(false),
            Command::Delivered((id, channel)) => {
                // Forgotten (and saved) at once, so a crash cannot send it twice.
                self.syncer.delivered(id, channel);
                None
            }
            Command::Alive => {
                systemd::tell(&[sd_notify::NotifyState::Watchdog]);
                None
            }
            Command::Sync { reload } => Some(reload),
            Command::Reload(config) => {
                match config {
                    Some(config) => {
                        info!("configuration reloaded");
                        self.syncer.set_config(*config);
                    }
                    None => self.syncer.count_error(ErrorKind::Config),
                }
                Some(true)
            }
            Command::SyncIfSlicesChanged => {
                if !self.slices.changed() {
                    return None;
                }
                info!("the slices file changed; syncing now");
                Some(false)
            }
        }
    }

    /// Answers a request on one slice at once, or (a lever pulled) after the next sync;
    /// whether that sync is needed.
    fn slice_request(&mut self, asked: control::Asked) -> bool {
        match asked.what {
            SliceRequest::Show(which) => {
                let reply = self
                    .syncer
                    .slice_detail(&which, now())
                    .map_or_else(|e| ReplyBody::Error(e.to_string()), ReplyBody::Slice);
                let _ = asked.reply.send(reply);
                false
            }
            SliceRequest::Pull(which, lever, id) => {
                match self.syncer.pull(id, &which, lever, now()) {
                    Err(why) => {
                        let _ = asked.reply.send(ReplyBody::Error(why.to_string()));
                        false
                    }
                    Ok(PullOutcome::Applied(p)) => {
                        info!(
                            by_uid = asked.uid,
                            slice = p.slice,
                            xid = p.xid,
                            %lever,
                            request = %id,
                            before = p.before,
                            after = p.after,
                            "operator: lever pulled"
                        );
                        self.after_sync = Some((asked.reply, p.audit(), p.xid));
                        true
                    }
                    Ok(PullOutcome::Again(first)) => {
                        info!(
                            by_uid = asked.uid,
                            xid = first.xid,
                            %lever,
                            request = %id,
                            applied_at = first.at,
                            "operator: a lever request asked again; applied once, not again"
                        );
                        let said = format!(
                            "{} (request {id}, applied at {}; asked again: not applied twice)",
                            first.outcome,
                            crate::time::text::format_time(first.at)
                        );
                        let _ = asked.reply.send(self.pulled_reply(said, first.xid));
                        false
                    }
                }
            }
        }
    }

    /// The reply to a lever on the slice `xid`: `audit`, and the slice as it now stands.
    fn pulled_reply(&self, audit: String, xid: u32) -> ReplyBody {
        self.syncer
            .slice_detail(&SliceRef::Xid(xid), now())
            .map_or_else(
                |e| ReplyBody::Error(e.to_string()),
                |d| ReplyBody::Pulled(audit, d),
            )
    }

    /// One sync: its notices handed to the notifier, its report completed, told to systemd,
    /// recorded in the history and published; a lever's caller answered.
    fn sync(&mut self, reload: bool) {
        read_slices(
            &mut self.syncer,
            &mut self.slices,
            reload,
            &mut self.slice_warnings,
        );
        let outcome = self.syncer.step(now());
        for n in &outcome.new_notices {
            self.out.notices.send(n);
        }
        let mut report = outcome.report;
        let before = std::mem::replace(&mut self.leaves_pending, report.leaves_pending);
        self.building =
            report.leaves_pending > 0 && (before == 0 || report.leaves_pending < before);
        let failed = self.out.notify_errors.load(Ordering::Relaxed);
        if failed > 0 {
            report.errors.insert(ErrorKind::Notify, failed);
        }
        report.warnings.extend(self.out.warnings.iter().cloned());
        report.warnings.extend(self.slice_warnings.iter().cloned());
        // Ready once the datapath, the tree and the first sync are in place.
        systemd::synced(&report, !self.ready);
        self.ready = true;
        if !self.history.record(&report) {
            self.syncer.count_error(ErrorKind::History);
        }
        let _ = self.out.status.send(Arc::new(report));
        if let Some((reply, audit, xid)) = self.after_sync.take() {
            let _ = reply.send(self.pulled_reply(audit, xid));
        }
        // The previous report and the sync's temporary tables are freed now.
        super::allocator::give_back();
    }
}

/// Reads the slices file when it changed (or `force`): every valid slice is applied, each
/// skipped entry said (log, status, `bwmon_errors_total{kind="slices"}`) at every read until it
/// is fixed; a skipped entry that still names a slice in force keeps that slice's last good
/// definition (limits, cap, usage: a typo frees no one), and only a slice whose entry is gone
/// departs. A file that does not parse, or is missing, keeps the slices in force (none at a
/// first start: root and default are still accounted).
fn read_slices<K: Kernel, T: Tree>(
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
            let (slices, kept) = keep_last_good(&parsed, syncer.slices());
            info!(
                count = parsed.slices.len(),
                kept = kept.len(),
                "slices file loaded"
            );
            if let Some(skipped) = &parsed.skipped {
                syncer.count_error(ErrorKind::Slices);
                for p in &skipped.problems {
                    let line = format!(
                        "{}:{}: {}: {}",
                        skipped.path.display(),
                        p.line,
                        p.key,
                        p.message
                    );
                    let kept_as = entry_of(&p.key)
                        .and_then(|i| kept.iter().find(|(index, _)| *index == i))
                        .map(|(_, name)| name);
                    match kept_as {
                        Some(name) => {
                            warn!(
                                "slices file: {line}; slice '{name}' keeps its last good definition (limits, cap, usage) until this is fixed"
                            );
                            warnings.push(format!("kept: {line}; slice '{name}' keeps its last good definition until this is fixed"));
                        }
                        None => {
                            warn!("slices file: {line}; that slice is skipped");
                            warnings.push(format!("skipped: {line}"));
                        }
                    }
                }
            }
            for w in &parsed.warnings {
                warn!("slices file: {w}");
                warnings.push(w.clone());
            }
            syncer.set_slices(slices);
            syncer.set_patterns(parsed.patterns);
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

/// The history file as the worker keeps it: what each sync records, and a compaction a day.
/// A failure is said and counted (`bwmon_errors_total{kind="history"}`); the state is never
/// affected.
struct HistoryLog {
    file: PathBuf,
    retention: Retention,
    tracker: history::Tracker,
    /// When the file was last compacted.
    compacted: UnixSecs,
}

impl HistoryLog {
    /// The history in `file`, compacted to `retention` first (damaged records are not copied:
    /// said here, once), its tracker going on from it (a file that cannot be read is started
    /// afresh).
    fn open<K: Kernel, T: Tree>(
        file: PathBuf,
        retention: Retention,
        syncer: &mut Syncer<K, T>,
    ) -> Self {
        match history::compact(&file, retention, now()) {
            Ok(problems) => {
                for p in problems {
                    warn!(file = %file.display(), "history: {p}");
                }
            }
            Err(e) => {
                warn!(file = %file.display(), error = %e, "history: not compacted");
                syncer.count_error(ErrorKind::History);
            }
        }
        let tracker = match history::Tracker::resume_file(&file) {
            Ok((mut tracker, problems)) => {
                for p in problems {
                    warn!(file = %file.display(), "history: {p}");
                }
                tracker.carry_state(syncer.state());
                tracker
            }
            Err(e) => {
                warn!(file = %file.display(), error = %e, "history: unreadable; starting it afresh");
                history::Tracker::default()
            }
        };
        HistoryLog {
            file,
            retention,
            tracker,
            compacted: now(),
        }
    }

    /// Appends the records `report` makes, and compacts the file when a day has passed since
    /// the last time; false when either failed.
    fn record(&mut self, report: &StatusReport) -> bool {
        let file = &self.file;
        let mut ok = true;
        let entries = self.tracker.observe(report);
        if let Err(e) = history::append(file, &entries) {
            warn!(file = %file.display(), error = %e, "history: not written; the state is unaffected");
            ok = false;
        }
        if now().saturating_sub(self.compacted) >= 86_400 {
            self.compacted = now();
            if let Err(e) = history::compact(file, self.retention, self.compacted) {
                warn!(file = %file.display(), error = %e, "history: not compacted");
                ok = false;
            }
        }
        ok
    }
}
