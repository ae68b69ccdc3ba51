//! `bwmon slice`: one slice shown, or an operator's lever pulled, through the running daemon.

use std::{path::Path, process::ExitCode};

use super::SliceAction;
use crate::{
    class::TrafficClass,
    config::Config,
    paths,
    policy::levers::Lever,
    serve::{
        control::{self, ReplyBody, RequestBody},
        slice_view::{self, SliceRef},
    },
    units::{BitsPerSec, Bytes},
};

/// Asks the daemon (at the socket named in the configuration at `config`, or the default one
/// when there is no such file) for `action`, and prints its answer.
///
/// # Errors
/// The configuration does not load, an amount or rate does not parse, or the daemon does not
/// answer (or refuses).
pub fn slice(config: &Path, action: SliceAction) -> anyhow::Result<ExitCode> {
    let socket = if config.exists() {
        Config::load(config)?.socket
    } else {
        paths::SOCKET.into()
    };
    let (request, json) = request(action)?;
    let reply = super::runtime()?.block_on(control::request(&socket, request))?;
    match reply {
        ReplyBody::Slice(d) if json => println!("{}", serde_json::to_string_pretty(&d)?),
        ReplyBody::Slice(d) => print!("{}", slice_view::render(&d, crate::time::now())),
        ReplyBody::Pulled(audit, d) => {
            println!("{audit}");
            print!("{}", slice_view::render(&d, crate::time::now()));
        }
        other => anyhow::bail!("unexpected reply from {}: {other:?}", socket.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The control request for a `bwmon slice` action, and whether JSON is wanted.
fn request(action: SliceAction) -> anyhow::Result<(RequestBody, bool)> {
    let class = |exempt| {
        if exempt {
            TrafficClass::Exempt
        } else {
            TrafficClass::General
        }
    };
    let which = |s: String| SliceRef::typed(&s);
    Ok(match action {
        SliceAction::Show { slice, json } => (RequestBody::Show(which(slice)), json),
        SliceAction::Grant {
            slice,
            amount,
            exempt,
        } => {
            let amount: Bytes = amount.parse()?;
            let lever = Lever::Grant {
                class: class(exempt),
                amount,
            };
            (RequestBody::Pull(which(slice), lever), false)
        }
        SliceAction::Reset { slice } => (RequestBody::Pull(which(slice), Lever::Reset), false),
        SliceAction::Limit {
            slice,
            rate,
            clear: _,
            exempt,
        } => {
            let rate: Option<BitsPerSec> = rate.map(|r| r.parse()).transpose()?;
            let lever = Lever::Limit {
                class: class(exempt),
                rate,
            };
            (RequestBody::Pull(which(slice), lever), false)
        }
    })
}
