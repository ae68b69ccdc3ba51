//! Time: seconds since the epoch ([`UnixSecs`]), the wall clock read in one place ([`now`]),
//! where periods start and end ([`calendar`]), and time as people read it ([`text`]).
//!
//! The wall clock, read in one place: the policy and the plan take time as an argument; the
//! daemon and the state file (for the names of files set aside) ask here.

pub(crate) mod calendar;
pub(crate) mod text;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) type UnixSecs = u64;

/// Seconds since the Unix epoch now (0 for a clock set before 1970).
pub(crate) fn now() -> UnixSecs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
