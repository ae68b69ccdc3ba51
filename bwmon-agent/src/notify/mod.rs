//! What is told to tenants and operators, and how: notices by mail (`mail`, lettre) and JSON
//! events POSTed to a webhook (`webhook`, ureq). Each channel's sender delivers one notice at a
//! time, blocking (the daemon calls it off its runtime and never from the sync thread); the
//! daemon's notifier retries a failed one with [`backoff`] until it is delivered or its period
//! ends.

pub(crate) mod mail;
pub(crate) mod webhook;

pub(crate) use mail::Mailer;
pub(crate) use webhook::Hook;

use crate::{
    config::{Config, Transport},
    state::{Channel, Notice},
    time::UnixSecs,
};

/// What went wrong with a notice.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    /// The message could not be built (an address failed the checks).
    #[error("composing the notice for slice {slice}: {why}")]
    Compose {
        /// Slice.
        slice: String,
        /// Why.
        why: String,
    },
    /// The SMTP relay could not be set up.
    #[error("setting up the SMTP relay {server}")]
    Setup {
        /// `host:port` from the config.
        server: String,
        /// Cause.
        #[source]
        source: lettre::transport::smtp::Error,
    },
    /// The transport refused or failed.
    #[error("sending the notice for slice {slice} via {via}: {why}")]
    Send {
        /// Slice.
        slice: String,
        /// Transport ("smtp 127.0.0.1:25", "webhook https://hooks.example.org").
        via: String,
        /// Why.
        why: String,
    },
    /// The webhook's signing secret cannot be used.
    #[error("webhook secret_file {path}: {why}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
}

/// A channel's sender.
pub(crate) trait Sender: Send + Sync + 'static {
    /// The channel it delivers on.
    const CHANNEL: Channel;

    /// Delivers `n` at `now` (blocking: call it off the async runtime).
    ///
    /// # Errors
    /// The notice cannot be composed, or the other end did not take it.
    fn deliver(&self, n: &Notice, now: UnixSecs) -> Result<(), NotifyError>;

    /// The longest one delivery may take before the notifier stops waiting for it.
    fn patience(&self) -> std::time::Duration;
}

/// Where notices go under `config`, one line each (for `bwmon check`): the mail, the webhook
/// (set up, so its secret file is checked), the warnings' levels.
///
/// # Errors
/// The webhook's secret file cannot be used.
pub(crate) fn destinations(config: &Config) -> Result<Vec<String>, NotifyError> {
    let m = &config.mail;
    let to = format!("to {} and {}", m.support, m.slice_address);
    let mail = match &m.transport {
        Transport::None => "mail: transport \"none\": notices are logged, not sent".to_owned(),
        Transport::Sendmail => format!("mail: by the local sendmail from {} {to}", m.from),
        Transport::Smtp {
            server, starttls, ..
        } => format!(
            "mail: by SMTP to {server}{} from {} {to}",
            if *starttls { " (STARTTLS)" } else { "" },
            m.from
        ),
    };
    let hook = match &config.webhook {
        None => "webhook: none".to_owned(),
        Some(w) => {
            let hook = Hook::new(w, hostname())?;
            let signed = match &w.secret_file {
                Some(file) => format!(
                    "signed ({}: sha256=<hex>) with {}",
                    webhook::SIGNATURE_HEADER,
                    file.display()
                ),
                None => "unsigned".to_owned(),
            };
            format!(
                "webhook: JSON events POSTed to {}, {signed}, timeout {:?}",
                hook.origin(),
                w.timeout
            )
        }
    };
    let warnings = match config.warn_at.is_empty() {
        true => "warnings: none before the cap (warn_at)".to_owned(),
        false => format!("warnings: at {} of each budget", config.warn_at),
    };
    let mut out = vec![mail, hook, warnings];
    if config.dry_run {
        out.push("dry run: notices are logged, not sent".to_owned());
    }
    Ok(out)
}

/// The local host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// How long to wait before the next attempt after `attempts` failures: 5 s doubling, at most
/// 5 minutes.
pub(crate) fn backoff(attempts: u32) -> u64 {
    (5u64 << attempts.min(6)).min(300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(
            (0..8).map(backoff).collect::<Vec<_>>(),
            vec![5, 10, 20, 40, 80, 160, 300, 300]
        );
    }
}
