//! Waiting for what a daemon does within a deadline.

use std::{
    thread,
    time::{Duration, Instant},
};

/// Reads `get` every 200 ms until `enough` holds of what it read or `secs` have passed; the
/// last reading.
pub fn poll<T>(secs: u64, mut get: impl FnMut() -> T, enough: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = get();
        if enough(&got) || Instant::now() > deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(200));
    }
}
