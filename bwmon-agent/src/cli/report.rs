//! `bwmon report`: a picture (SVG) of the history's hourly samples.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{history, serve::slice_view::SliceRef};

/// Writes to `svg` the last `days` of `slice` (of every slice when `None`) from the history
/// beside the state named in the configuration at `config`.
///
/// # Errors
/// The configuration does not load, the history cannot be read or drawn, or `svg` cannot be
/// written.
pub fn report(
    config: &Path,
    svg: &Path,
    slice: Option<&str>,
    days: u64,
) -> anyhow::Result<ExitCode> {
    let entries = super::history::read(config)?;
    let which = slice.map(SliceRef::typed);
    let text = history::svg::svg(&entries, which.as_ref(), days, crate::time::now())?;
    std::fs::write(svg, text).with_context(|| format!("writing {}", svg.display()))?;
    Ok(ExitCode::SUCCESS)
}
