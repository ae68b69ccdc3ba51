//! `[webhook]`: where notices are POSTed as JSON events, beside mail. The signing secret is
//! named by a file (`secret_file`), never written in the configuration: the file is read, and
//! its mode checked, when the webhook is set up (`bwmon check`, start, reload).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use toml_edit::Item;

use crate::config::{problems::Collector, read::Field};

/// The keys of `[webhook]`, in the order the unknown-key message lists them.
const KEYS: [&str; 3] = ["url", "secret_file", "timeout"];

/// How long one delivery may take unless `timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The range `timeout` must be in: a delivery is never abandoned at once, and a hook that
/// hangs holds the next events no longer than this.
const TIMEOUTS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// `[webhook]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Webhook {
    /// Where events are POSTed: an `http://` or `https://` URL.
    pub(crate) url: String,
    /// The file holding the secret that signs each event (HMAC-SHA256), if any.
    pub(crate) secret_file: Option<PathBuf>,
    /// How long one delivery may take, connection and TLS included.
    pub(crate) timeout: Duration,
}

/// Whether `url` is an absolute `http://` or `https://` URL with a host; why not, if not.
fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("'{url}' must start with https:// (or http://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("'{url}' names no host"));
    }
    if url.chars().any(char::is_control) {
        return Err(format!("'{url}' holds control characters"));
    }
    Ok(())
}

/// Reads `[webhook]` (only `url` required), collecting its problems; relative paths are taken
/// from `base`. `None` when it cannot be used.
pub(super) fn parse_webhook(c: &mut Collector, item: &Item, base: &Path) -> Option<Webhook> {
    let Some(t) = item.as_table_like() else {
        c.add(Some(item), "webhook", "must be a table with url");
        return None;
    };
    let mut url = None;
    let mut secret_file = None;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut usable = true;
    for (k, v) in t.iter() {
        let key = format!("webhook.{k}");
        let mut f = Field::new(c, v, &key);
        match k {
            "url" => match f.string().map(|s| (check_url(s), s)) {
                Some((Ok(()), s)) => url = Some(s.to_owned()),
                Some((Err(why), _)) => {
                    f.problem(why);
                    usable = false;
                }
                None => usable = false,
            },
            "secret_file" => match f.string() {
                Some("") => {
                    f.problem("must name a file; leave secret_file out for unsigned events")
                }
                Some(s) => secret_file = Some(base.join(s)),
                None => usable = false,
            },
            "timeout" => match f.duration() {
                Some(d) if (TIMEOUTS.0..=TIMEOUTS.1).contains(&d) => timeout = d,
                Some(_) => f.problem("must be from 1s to 5m"),
                None => usable = false,
            },
            _ => f.problem(format!("unknown key; known keys are {}", KEYS.join(", "))),
        }
    }
    let Some(url) = url else {
        if usable {
            c.add(
                Some(item),
                "webhook.url",
                "missing: where events are POSTed, e.g. url = \"https://hooks.example.org/bwmon\"",
            );
        }
        return None;
    };
    Some(Webhook {
        url,
        secret_file,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(webhook: &str) -> Result<Config, String> {
        let text = format!("interface = \"eth0\"\n[webhook]\n{webhook}");
        Config::parse(std::path::Path::new("/etc/bwmon/bwmon.toml"), &text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_webhook_is_a_url_with_an_optional_secret_file_and_timeout() {
        let c = parse("url = \"https://hooks.example.org/bwmon\"\n").unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(w.url, "https://hooks.example.org/bwmon");
        assert_eq!(w.secret_file, None);
        assert_eq!(w.timeout, super::DEFAULT_TIMEOUT);
        let c = parse(
            "url = \"http://127.0.0.1:8080/hook\"\nsecret_file = \"webhook.secret\"\ntimeout = \"3s\"\n",
        )
        .unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(
            w.secret_file.as_deref(),
            Some(std::path::Path::new("/etc/bwmon/webhook.secret")),
            "relative to the config"
        );
        assert_eq!(w.timeout, std::time::Duration::from_secs(3));
        assert!(parse("").unwrap_err().contains("webhook.url: missing"));
    }

    #[test]
    fn what_cannot_be_posted_to_is_refused_with_the_key() {
        for (text, expect) in [
            (
                "url = \"ftp://x.org/\"",
                "webhook.url: 'ftp://x.org/' must start with https://",
            ),
            (
                "url = \"/just/a/path\"",
                "webhook.url: '/just/a/path' must start with https://",
            ),
            (
                "url = \"not a url\"",
                "webhook.url: 'not a url' is not a URL",
            ),
            ("url = 5", "webhook.url: must be a string"),
            ("secret_file = \"s\"", "webhook.url: missing"),
            (
                "url = \"https://x.org/\"\nsecret = \"hunter2\"",
                "webhook.secret: unknown key",
            ),
            (
                "url = \"https://x.org/\"\ntimeout = \"10m\"",
                "webhook.timeout: must be from 1s to 5m",
            ),
            (
                "url = \"https://x.org/\"\nsecret_file = \"\"",
                "webhook.secret_file: must name a file",
            ),
        ] {
            let err = parse(&format!("{text}\n")).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
