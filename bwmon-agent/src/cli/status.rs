//! `bwmon status`: per-slice usage from the running daemon; a user who is not root sees their
//! own slice, through the tenant socket.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;

use crate::{
    config::Config,
    paths,
    serve::{
        control::{self, ReplyBody, RequestBody},
        slice_view, table,
    },
};

/// Prints the running daemon's status (as JSON when `json`), asking the socket named in the
/// configuration at `config` (or the default one when there is no such file).
///
/// # Errors
/// The configuration does not load, or the daemon does not answer.
pub fn status(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let sockets = Sockets::of(config);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // A user sees their own slice, through the socket every user may ask.
        let socket = sockets
            .tenant
            .context("the tenant socket is turned off (tenant_socket = \"\")")?;
        return mine(&socket, json);
    }
    let socket = sockets.control;
    let report = super::runtime()?.block_on(control::status(&socket))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the daemon's sockets are, as the configuration at `path` says.
#[derive(Debug, PartialEq, Eq)]
struct Sockets {
    control: PathBuf,
    /// `None`: turned off (`tenant_socket = ""`).
    tenant: Option<PathBuf>,
}

impl Sockets {
    /// The sockets of the configuration at `path`: read from the file when it loads; else its
    /// `socket` and `tenant_socket` keys read alone, leniently (a file broken elsewhere, being
    /// edited, still names them); else the defaults. Status must work while the config on disk
    /// is broken: the daemon still runs with the one it loaded.
    fn of(path: &Path) -> Sockets {
        if let Ok(c) = Config::load(path) {
            return Sockets {
                control: c.socket,
                tenant: c.tenant_socket,
            };
        }
        let table = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .unwrap_or_default();
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("/"));
        let key = |name: &str| table.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        // Relative paths are the config's directory's, as `Config` reads them.
        Sockets {
            control: key("socket").map_or_else(|| paths::SOCKET.into(), |p| base.join(p)),
            tenant: match key("tenant_socket") {
                Some(p) if p.is_empty() => None,
                Some(p) => Some(base.join(p)),
                None => Some(paths::TENANT_SOCKET.into()),
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sockets_are_found_in_a_config_broken_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bwmon.toml");
        std::fs::write(
            &path,
            "interface = \"eth0\"\nnode_cap = \"fast\"\nsocket = \"run/ctl.sock\"\ntenant_socket = \"\"\n",
        )
        .unwrap();
        assert!(Config::load(&path).is_err(), "broken");
        let s = Sockets::of(&path);
        assert_eq!(s.control, dir.path().join("run/ctl.sock"));
        assert_eq!(s.tenant, None);
        // Not even TOML: the defaults.
        std::fs::write(&path, "socket = = \"x\"\n").unwrap();
        let s = Sockets::of(&path);
        assert_eq!(s.control, PathBuf::from(paths::SOCKET));
        assert_eq!(s.tenant, Some(PathBuf::from(paths::TENANT_SOCKET)));
        // A good one: its own sockets.
        std::fs::write(&path, "interface = \"eth0\"\nsocket = \"/run/x.sock\"\n").unwrap();
        assert_eq!(Sockets::of(&path).control, PathBuf::from("/run/x.sock"));
    }
}
