//! `bwmon slice`: one slice shown, or an operator's lever pulled, through the running daemon.
//! A lever request carries an id: when its reply is lost, it is asked again under the same id
//! (the daemon applies an id once), and the wait for the sync that applies it is shown.

use std::{path::Path, process::ExitCode, time::Duration};

use super::SliceAction;
use crate::{
    class::TrafficClass,
    config::Config,
    paths,
    policy::levers::Lever,
    serve::{
        control::{self, ControlError, ReplyBody, RequestBody},
        slice_view::{self, SliceRef},
    },
    state::RequestId,
    units::{BitsPerSec, Bytes},
};

/// How often a lever whose reply was lost is asked again (under the same id).
const RETRIES: u32 = 3;
/// How often the wait for a lever's sync is said.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Asks the daemon (at the socket named in the configuration at `config`, or the default one
/// when there is no such file) for `action`, and prints its answer. A lever is sent as request
/// `request_id` (a new id when `None`).
///
/// # Errors
/// The configuration does not load, an amount or rate does not parse, or the daemon does not
/// answer (or refuses).
pub fn slice(
    config: &Path,
    action: SliceAction,
    request_id: Option<RequestId>,
) -> anyhow::Result<ExitCode> {
    let socket = if config.exists() {
        Config::load(config)?.socket
    } else {
        paths::SOCKET.into()
    };
    let (request, json) = request(action, request_id.unwrap_or_else(RequestId::fresh))?;
    let runtime = super::runtime()?;
    let reply = match &request {
        RequestBody::Pull(which, lever, id) => {
            runtime.block_on(pull(&socket, which, *lever, *id))?
        }
        _ => runtime.block_on(control::request(&socket, request))?,
    };
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

/// Pulls `lever` on `which` as request `id`: waits for the sync that applies it as long as it
/// takes (saying so every few seconds), and asks again under the same id when the reply is
/// lost.
async fn pull(
    socket: &Path,
    which: &SliceRef,
    lever: Lever,
    id: RequestId,
) -> anyhow::Result<ReplyBody> {
    let body = RequestBody::Pull(which.clone(), lever, id);
    let mut lost: Option<ControlError> = None;
    for attempt in 0..=RETRIES {
        if let Some(e) = &lost {
            eprintln!(
                "bwmon: {e:#}; asking again as the same request {id} (a request is applied once), {attempt} of {RETRIES}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match with_progress(control::request(socket, body.clone()), id).await {
            Ok(reply) => return Ok(reply),
            Err(e @ ControlError::ReplyLost { .. }) => lost = Some(e),
            // The daemon is gone after a lost reply: what happened is unknown.
            Err(_) if lost.is_some() => break,
            Err(e) => return Err(e.into()),
        }
    }
    let cause = lost.map_or_else(String::new, |e| format!(" ({e})"));
    anyhow::bail!(
        "the reply to lever request {id} was lost{cause}: it may or may not have been applied. \
         Check with `bwmon slice show {}`; to ask again safely, repeat the command with \
         `--request-id {id}` (a request id is applied once)",
        typed(which)
    )
}

/// `which` as the operator would type it.
fn typed(which: &SliceRef) -> String {
    match which {
        SliceRef::Name(n) => n.clone(),
        SliceRef::Xid(x) => x.to_string(),
    }
}

/// `f`, saying every [`PROGRESS_EVERY`] that request `id` is still waited for.
async fn with_progress<F: std::future::Future>(f: F, id: RequestId) -> F::Output {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    tokio::pin!(f);
    loop {
        tokio::select! {
            out = &mut f => return out,
            _ = tick.tick() => eprintln!(
                "bwmon: waiting for the daemon to apply request {id} ({} s): it answers after the sync that applies it",
                started.elapsed().as_secs()
            ),
        }
    }
}

/// The control request for a `bwmon slice` action (a lever as request `id`), and whether JSON
/// is wanted.
fn request(action: SliceAction, id: RequestId) -> anyhow::Result<(RequestBody, bool)> {
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
            (RequestBody::Pull(which(slice), lever, id), false)
        }
        SliceAction::Reset { slice } => (RequestBody::Pull(which(slice), Lever::Reset, id), false),
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
            (RequestBody::Pull(which(slice), lever, id), false)
        }
    })
}
