//! Time as people read it: the seed's words for a period and its timestamps, short spans for
//! tables, and "in 3 h 20 min" for views. One place, so every output says time alike.

use super::UnixSecs;

/// The seed's words for a period: "day", "hour", "1.5 hours", "40 seconds".
pub(crate) fn format_period(secs: u64) -> String {
    let s = secs as f64;
    if secs == 86_400 {
        "day".into()
    } else if secs == 3600 {
        "hour".into()
    } else if secs > 86_400 {
        format!("{:.1} days", s / 86_400.0)
    } else if secs > 3600 {
        format!("{:.1} hours", s / 3600.0)
    } else if secs > 60 {
        format!("{:.1} minutes", s / 60.0)
    } else {
        format!("{secs} seconds")
    }
}

/// A Unix time as the seed wrote it (`time.asctime(time.gmtime())` + " GMT").
pub(crate) fn format_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday} {} {day:>2} {:02}:{:02}:{:02} {year} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A span of seconds, short, for tables: "now", "45s", "12m", "3.5h", "2.0d".
pub(crate) fn human_secs(s: u64) -> String {
    match s {
        0 => "now".into(),
        1..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{:.1}h", s as f64 / 3600.0),
        _ => format!("{:.1}d", s as f64 / 86_400.0),
    }
}

/// When `at` is, from `now`: "in 3 h 20 min", "2 min ago".
pub(crate) fn from_now(at: UnixSecs, now: UnixSecs) -> String {
    let span = |secs: u64| {
        let (h, m) = (secs / 3600, secs % 3600 / 60);
        match (h, m) {
            (0, 0) => format!("{secs} s"),
            (0, m) => format!("{m} min"),
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        }
    };
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}
