//! `bwmon status`: per-slice usage from the running daemon; a user who is not root sees their
//! own slice, through the tenant socket.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{
    config::Config,
    paths,
    serve::{
        control::{self, ReplyBody, RequestBody},
        slice_view, status,
    },
};

/// Prints the running daemon's status (as JSON when `json`), asking the socket named in the
/// configuration at `config` (or the default one when there is no such file).
///
/// # Errors
/// The configuration does not load, or the daemon does not answer.
pub fn status(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = config.exists().then(|| Config::load(config)).transpose();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // A user sees their own slice, through the socket every user may ask.
        let socket = match loaded {
            Ok(Some(c)) => c.tenant_socket,
            _ => Some(paths::TENANT_SOCKET.into()),
        }
        .context("the tenant socket is turned off (tenant_socket = \"\")")?;
        return mine(&socket, json);
    }
    let socket = loaded?.map_or_else(|| paths::SOCKET.into(), |c| c.socket);
    let report = super::runtime()?.block_on(control::status(&socket))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The asking user's own slice, from the tenant socket at `socket`: as JSON, the same
/// document root gets, with that one slice.
fn mine(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let reply = super::runtime()?.block_on(control::request(socket, RequestBody::Mine))?;
    let ReplyBody::Status(report) = reply else {
        anyhow::bail!("unexpected reply from {}", socket.display());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let row = report
        .slices
        .first()
        .with_context(|| format!("no slice in the reply from {}", socket.display()))?;
    let view = slice_view::tenant(row, report.now);
    print!("{}", slice_view::render_tenant(&view, crate::time::now()));
    Ok(ExitCode::SUCCESS)
}
