//! `bwmon report`: a picture (SVG) of the history's hourly samples.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{
    history::{self, svg::Pick},
    serve::slice_view::SliceRef,
};

/// Writes to `svg` the last `days` of the `slices` named (names or xids), or else of the `top`
/// slices nearest their budget (10 when `None`), from the history beside the state named in
/// the configuration at `config`.
///
/// # Errors
/// The configuration does not load, the history cannot be read or drawn, or `svg` cannot be
/// written.
pub fn report(
    config: &Path,
    svg: &Path,
    slices: &[String],
    top: Option<u16>,
    days: u64,
) -> anyhow::Result<ExitCode> {
    let entries = super::history::read(config)?;
    let pick = if slices.is_empty() {
        Pick::Top(top.map_or(Pick::DEFAULT_TOP, usize::from))
    } else {
        Pick::Named(slices.iter().map(|s| SliceRef::typed(s)).collect())
    };
    let text = history::svg::svg(&entries, &pick, days, crate::time::now())?;
    std::fs::write(svg, text).with_context(|| format!("writing {}", svg.display()))?;
    Ok(ExitCode::SUCCESS)
}
