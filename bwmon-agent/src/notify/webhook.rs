//! Notices as JSON events POSTed to `[webhook] url` (`etc/schema/webhook.schema.json`), with
//! ureq: a small blocking client that the notifier runs off the runtime (as it runs lettre),
//! over the rustls, ring and webpki roots that lettre already brings (ureq adds five crates;
//! hyper would add a dozen and an async stack the notifier does not need). Its global timeout
//! bounds one delivery, connection and TLS included, so a hook that hangs costs one timeout.
//!
//! Each event carries its notice's `id`, the same on every retry and across restarts: a
//! receiver that saw an id drops it again (a delivery confirmed by the hook but not yet
//! forgotten by bwmon when it was killed is sent once more). With `secret_file`, each POST is
//! signed: `X-Bwmon-Signature: sha256=<hex>`, the HMAC-SHA256 of the exact body under the
//! file's contents (surrounding whitespace, such as a final newline, left out).
//!
//! The URL may hold a token (many chat hooks do): logs and `bwmon check` show its origin
//! (`https://hooks.example.org`) only.

use std::{io::Read as _, os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use ring::hmac;

use super::{NotifyError, Sender};
use crate::{
    config::Webhook,
    state::{
        Channel, Notice,
        open::{Access, open_regular},
    },
    time::UnixSecs,
};

/// The header that carries the signature.
pub(crate) const SIGNATURE_HEADER: &str = "X-Bwmon-Signature";

/// A secret longer than this is a mistake (a key, not a file of keys).
const MAX_SECRET: u64 = 4096;

/// The webhook's event for one notice.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Event<'a> {
    /// The version of bwmon that sent it.
    version: &'static str,
    /// The notice's id: the same on every retry.
    id: u64,
    /// "warned", "capped", "uncapped", "new_period" or "lever".
    event: &'static str,
    /// When it was decided.
    at: UnixSecs,
    /// The host bwmon runs on.
    host: &'a str,
    /// The slice's name.
    slice: &'a str,
    /// Its xid.
    xid: u32,
    /// The start of the period it belongs to.
    period_start: UnixSecs,
    /// That period's end.
    period_end: UnixSecs,
    /// The classes it is about.
    classes: Vec<EventClass>,
    /// A lever's audit line; `null` for other events.
    lever: Option<&'a str>,
}

/// One class of an event.
#[derive(Debug, serde::Serialize)]
struct EventClass {
    /// "general" or "exempt".
    class: &'static str,
    /// Used in the period (for a new period: in the one that ended).
    used_bytes: u64,
    /// The period's budget, grants included.
    budget_bytes: u64,
    /// The ceiling in force, bit/s.
    ceil_bps: u64,
    /// The warning level it crossed, or `null`.
    level_percent: Option<u8>,
}

impl<'a> Event<'a> {
    /// The event for `n`, sent from `host`.
    pub(crate) fn of(n: &'a Notice, host: &'a str) -> Event<'a> {
        Event {
            version: env!("CARGO_PKG_VERSION"),
            id: n.id.0,
            event: n.kind.name(),
            at: n.decided_at,
            host,
            slice: &n.slice,
            xid: n.xid,
            period_start: n.period_start,
            period_end: n.period_end,
            classes: n
                .classes
                .iter()
                .map(|c| EventClass {
                    class: c.class.name(),
                    used_bytes: c.used.0,
                    budget_bytes: c.budget.0,
                    ceil_bps: c.ceil.0,
                    level_percent: c.level.map(|l| l.get()),
                })
                .collect(),
            lever: match &n.kind {
                crate::state::NoticeKind::Lever(audit) => Some(audit),
                _ => None,
            },
        }
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The secret in the file at `path`: a regular file (not a link, a FIFO or a device), owned by
/// root or by bwmon's own user, that no one else may read or write (mode 0600 or stricter), at
/// most 4 KiB, not empty once surrounding whitespace is left out.
///
/// # Errors
/// Any of that is not so; the file cannot be read.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, NotifyError> {
    let refuse = |why: String| NotifyError::Secret {
        path: path.to_owned(),
        why,
    };
    let file = open_regular(path, Access::Read).map_err(|e| refuse(e.to_string()))?;
    let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "mode {mode:04o} lets other users read or change it; chmod 600 it"
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(refuse(format!(
            "owned by uid {}: only root (or bwmon's own user) may own it",
            meta.uid()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(e.to_string()))?;
    if bytes.len() as u64 > MAX_SECRET {
        return Err(refuse(format!("longer than {MAX_SECRET} bytes")));
    }
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        return Err(refuse("empty".into()));
    }
    Ok(secret.to_vec())
}

/// The scheme, host and port of `url`, without its path or query (which may hold a token).
pub(crate) fn origin(url: &str) -> String {
    match url.parse::<ureq::http::Uri>() {
        Ok(uri) => format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority()
                .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or(""))
        ),
        Err(_) => "the webhook".into(),
    }
}

/// POSTs notices to the webhook.
pub(crate) struct Hook {
    url: String,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    host: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("origin", &origin(&self.url))
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Hook {
    /// A hook for the `[webhook]` settings, sending from `host`; its secret read now.
    ///
    /// # Errors
    /// The secret file cannot be used ([`read_secret`]).
    pub(crate) fn new(w: &Webhook, host: String) -> Result<Hook, NotifyError> {
        let secret = w.secret_file.as_deref().map(read_secret).transpose()?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(w.timeout))
            // A status is an answer to read, not an error of the transport.
            .http_status_as_error(false)
            // A POST is not replayed somewhere else.
            .max_redirects(0)
            .user_agent(format!("bwmon/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Hook {
            url: w.url.clone(),
            secret,
            timeout: w.timeout,
            host,
            agent,
        })
    }

    /// Where it posts, as shown: the URL's origin.
    pub(crate) fn origin(&self) -> String {
        origin(&self.url)
    }

    /// The body POSTed for `n`.
    pub(crate) fn body(&self, n: &Notice) -> Vec<u8> {
        // Plain data into a Vec: cannot fail.
        serde_json::to_vec(&Event::of(n, &self.host)).unwrap_or_default()
    }

    /// POSTs `n`; a 2xx answer is a delivery, anything else a failure.
    ///
    /// # Errors
    /// No answer within the timeout, a TLS or connection failure, another status.
    pub(crate) fn post(&self, n: &Notice) -> Result<(), NotifyError> {
        let body = self.body(n);
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-Bwmon-Event", n.kind.name())
            .header("X-Bwmon-Delivery", n.id.0.to_string());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        let fail = |why: String| NotifyError::Send {
            slice: n.slice.clone(),
            via: format!("webhook {}", self.origin()),
            why,
        };
        match request.send(&body[..]) {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(fail(format!("answered {}", answer.status()))),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

impl Sender for Hook {
    const CHANNEL: Channel = Channel::Webhook;

    fn deliver(&self, n: &Notice, _now: UnixSecs) -> Result<(), NotifyError> {
        self.post(n)
    }

    /// Its own timeout, and a little more: ureq gives up first.
    fn patience(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::{
        class::TrafficClass,
        policy::warnings::Percent,
        state::{Channels, ClassNote, NoticeId, NoticeKind},
        units::{BitsPerSec, Bytes},
    };

    fn notice(kind: NoticeKind) -> Notice {
        Notice {
            id: NoticeId(42),
            slice: "alice".into(),
            xid: 1001,
            period_start: 1000,
            period_end: 87_400,
            kind,
            classes: vec![ClassNote {
                class: TrafficClass::General,
                used: Bytes(900),
                ceil: BitsPerSec(8000),
                budget: Bytes(1000),
                level: Percent::new(80),
            }],
            pending: Channels {
                mail: true,
                webhook: true,
            },
            decided_at: 1500,
            attempts: 0,
            next_attempt: 0,
        }
    }

    #[test]
    fn an_event_names_the_slice_the_kind_and_each_class_with_its_figures() {
        let n = notice(NoticeKind::Warned);
        let json = serde_json::to_value(Event::of(&n, "node1")).unwrap();
        assert_eq!(json["id"], 42);
        assert_eq!(json["event"], "warned");
        assert_eq!(json["host"], "node1");
        assert_eq!(
            (json["slice"].clone(), json["xid"].clone()),
            ("alice".into(), 1001.into())
        );
        assert_eq!(
            (json["period_start"].clone(), json["period_end"].clone()),
            (1000.into(), 87_400.into())
        );
        assert_eq!(json["at"], 1500);
        let c = &json["classes"][0];
        assert_eq!(c["class"], "general");
        assert_eq!(
            (
                c["used_bytes"].clone(),
                c["budget_bytes"].clone(),
                c["ceil_bps"].clone(),
                c["level_percent"].clone()
            ),
            (900.into(), 1000.into(), 8000.into(), 80.into())
        );
        assert!(json["lever"].is_null());
        let lever = notice(NoticeKind::Lever("alice: reset the period".into()));
        let json = serde_json::to_value(Event::of(&lever, "node1")).unwrap();
        assert_eq!(
            (json["event"].clone(), json["lever"].clone()),
            ("lever".into(), "alice: reset the period".into())
        );
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_secret_file_is_private_not_empty_and_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let write = |text: &[u8], mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(b"s3cret\n", 0o600);
        assert_eq!(read_secret(&path).unwrap(), b"s3cret");
        write(b"s3cret\n", 0o640);
        let e = read_secret(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        write(b" \n", 0o400);
        assert!(
            read_secret(&path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        write(&[b'x'; 5000], 0o600);
        assert!(
            read_secret(&path)
                .unwrap_err()
                .to_string()
                .contains("longer than 4096")
        );
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(
            read_secret(&path)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        assert!(read_secret(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn logs_show_the_urls_origin_not_its_token() {
        assert_eq!(
            origin("https://hooks.example.org/services/T0/B0/XYZ?token=1"),
            "https://hooks.example.org"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            origin("https://user:pw@hooks.example.org/x"),
            "https://hooks.example.org"
        );
    }
}
