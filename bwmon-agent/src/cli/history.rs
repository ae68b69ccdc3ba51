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
    if json {
        let doc = history::document(&shown);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", history::render(&shown));
    }
    Ok(ExitCode::SUCCESS)
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
