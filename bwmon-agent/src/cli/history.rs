//! `bwmon history`: past periods per slice, read from the history file (no daemon needed).

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{config::Config, history, serve::slice_view::SliceRef};

/// Prints the newest `periods` finished periods of `slice` (of every slice when `None`) from
/// the history beside the state named in the configuration at `config`; as JSON when `json`.
///
/// # Errors
/// The configuration does not load, or the history file cannot be read.
pub fn history(
    config: &Path,
    slice: Option<&str>,
    periods: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let entries = read(config)?;
    let which = slice.map(SliceRef::typed);
    let shown = history::periods(&entries, which.as_ref(), periods);
    let cgroups = cgroups(config);
    if json {
        let doc = history::document(&shown, &cgroups);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", history::render(&shown, &cgroups));
    }
    Ok(ExitCode::SUCCESS)
}

/// The cgroups of the cgroup slices the slices file names now, by xid: each slice's `cgroup`,
/// and the cgroups its patterns match now (with the xids they get). Empty when the file
/// cannot be read: the history does not need it.
fn cgroups(config: &Path) -> std::collections::HashMap<u32, String> {
    let Some(parsed) = Config::load(config)
        .ok()
        .and_then(|c| crate::config::slices::read(&c.slices).ok())
    else {
        return Default::default();
    };
    let mut out: std::collections::HashMap<u32, String> = (parsed.slices.iter())
        .filter_map(|s| Some((s.xid, s.cgroup.as_ref()?.to_string())))
        .collect();
    let hierarchy = crate::cgroup::Hierarchy::locate();
    if let Some(h) = hierarchy.filter(|_| !parsed.patterns.is_empty()) {
        let patterns: Vec<&crate::cgroup::Pattern> =
            parsed.patterns.iter().map(|p| &p.pattern).collect();
        let found = crate::cgroup::scan(&h, &[], &patterns);
        let taken = parsed.slices.iter().map(|s| s.xid).collect();
        let paths: Vec<crate::cgroup::CgroupPath> =
            found.found.into_iter().map(|(_, p)| p).collect();
        let xids = crate::cgroup::path::assign_xids(&paths, &taken);
        out.extend(xids.into_iter().zip(paths.iter().map(|p| p.to_string())));
    }
    out
}

/// The history file of the configuration at `config`; damaged records are said and skipped.
pub(super) fn read(config: &Path) -> anyhow::Result<Vec<history::Entry>> {
    let config = Config::load(config)?;
    let file = history::path_for(&config.state);
    let (entries, problems) =
        history::read(&file).with_context(|| format!("reading {}", file.display()))?;
    for p in problems {
        eprintln!("bwmon: {}: {p}", file.display());
    }
    Ok(entries)
}
