//! What the log says of a sync: its plan's events, one line each (a first start with many new
//! slices in one line), and the clock falling behind or catching up.

use tracing::{debug, info, warn};

use super::{
    Kernel, Syncer, Tree,
    plan::{Event, Who},
};
use crate::{error_kind::ErrorKind, time::UnixSecs};

/// More new slices than this in one sync are logged as one line (a first start, a big file).
const MANY_NEW_SLICES: usize = 20;

impl<K: Kernel, T: Tree> Syncer<K, T> {
    /// Logs a plan's `events`, and whether the clock is behind the period starts at `now`
    /// (said when that changes).
    pub(super) fn log_events(&mut self, events: &[Event], clock_behind: bool, now: UnixSecs) {
        // A first start with thousands of slices says so in one line, not one per slice.
        let new = events
            .iter()
            .filter(|e| matches!(e, Event::NewSlice(_)))
            .count();
        if new > MANY_NEW_SLICES {
            info!(
                count = new,
                "new slices: their periods start now (each named at debug level)"
            );
        }
        for event in events {
            if new > MANY_NEW_SLICES
                && let Event::NewSlice(Who { slice, xid }) = event
            {
                debug!(slice, xid, "new slice: its period starts now");
                continue;
            }
            self.log(event);
        }
        if clock_behind != self.clock_behind {
            if clock_behind {
                warn!(
                    now,
                    "the clock is earlier than slices' period starts; holding their periods and usage until it catches up"
                );
            } else {
                info!(now, "the clock caught up with the period starts");
            }
            self.clock_behind = clock_behind;
        }
    }

    /// Logs one event (no minors left is counted as an error too).
    fn log(&mut self, event: &Event) {
        match event {
            Event::NewSlice(Who { slice, xid }) => {
                info!(slice, xid, "new slice: its period starts now")
            }
            Event::Returned(Who { slice, xid }) => {
                info!(slice, xid, "slice is back within its period: continuing it")
            }
            Event::Departed(Who { slice, xid }) => {
                info!(
                    slice,
                    xid, "slice left; keeping its record until its period ends"
                )
            }
            Event::Forgotten(Who { slice, xid }) => {
                info!(slice, xid, "departed slice's period ended; forgotten")
            }
            Event::NoMinors(Who { slice, xid }) => {
                self.count_error(ErrorKind::Minors);
                warn!(slice, xid, "no HTB minors left for this slice");
            }
            Event::StaleNotice(Who { slice, xid }) => {
                warn!(slice, xid, "dropping a notice whose period is over")
            }
            Event::NewPeriod(Who { slice, xid }) => {
                info!(slice, xid, "new period: limits back to the max rates")
            }
            Event::Capped(Who { slice, xid }, c) => {
                info!(slice, xid, class = c.class.name(), used = %c.used, ceil = %c.ceil, "capped; notice queued")
            }
            Event::WouldNotify(Who { slice, xid }, capped) => {
                let classes: Vec<&str> = capped.iter().map(|c| c.class.name()).collect();
                info!(slice, xid, classes = ?classes, "dry run: would notify the slice that it is capped")
            }
            Event::Warned(Who { slice, xid }, c) => {
                let level = c.level.map(|l| l.to_string()).unwrap_or_default();
                info!(slice, xid, class = c.class.name(), level, used = %c.used, budget = %c.budget, "warned: a level of its budget used; notice queued")
            }
            Event::WouldWarn(Who { slice, xid }, warned) => {
                let levels: Vec<String> = warned
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}",
                            c.class.name(),
                            c.level.map(|l| l.to_string()).unwrap_or_default()
                        )
                    })
                    .collect();
                info!(slice, xid, levels = ?levels, "dry run: would warn the slice of the levels of its budget it used")
            }
            Event::CountersRestarted => warn!(
                "the kernel's counters restarted from zero (reboot, or pins removed): usage is carried on; bytes sent since the last sync before that are lost"
            ),
            Event::ClockJumped(Who { slice, xid }, j) => warn!(
                slice,
                xid,
                period_start = j.was,
                new_start = j.now,
                carried = %j.carried.general,
                carried_exempt = %j.carried.exempt,
                "the slice's period started at {}, more than one period after the clock: the clock ran ahead when it began; a new period starts at {}, carrying the {} (exempt {}) used in it",
                crate::time::text::format_time(j.was),
                crate::time::text::format_time(j.now),
                j.carried.general,
                j.carried.exempt
            ),
            Event::Orphan(minor) => {
                info!(class = %minor, "removing a class that belongs to no slice")
            }
        }
    }
}
