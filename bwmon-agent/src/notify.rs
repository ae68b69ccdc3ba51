//! Notices by e-mail (lettre): composed like the seed's, sent through SMTP, the local sendmail
//! (lettre's transport, never a shell) or nowhere, and retried with backoff until delivered or
//! stale. Every header value is an address checked by [`crate::config::mailaddr`] or text lettre
//! encodes, so nothing from config or slice data can inject a header.

use std::time::Duration;

use lettre::{
    Message, SendmailTransport, SmtpTransport, Transport as _,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};

use crate::{
    class::TrafficClass,
    config::slices::ROOT_NAME,
    config::{Mail, Transport},
    state::{CappedClass, Notice},
    time::text::{format_period, format_time},
    units::Bytes,
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
        /// Transport ("smtp 127.0.0.1:25").
        via: String,
        /// Why.
        why: String,
    },
}

/// Subject line.
pub(crate) fn subject(operator: &str, slice: &str, host: &str) -> String {
    format!("{operator} capped bandwidth of slice {slice} on {host}")
}

/// The body: one paragraph per capped class, then the seed's footer.
pub(crate) fn body(n: &Notice, host: &str, period_secs: u64, now: u64) -> String {
    let mut out = String::new();
    for CappedClass {
        class,
        used,
        ceil,
        budget: limit,
    } in &n.capped
    {
        let words = match class {
            TrafficClass::General => "general",
            TrafficClass::Exempt => "exempt",
        };
        out.push_str(&format!(
            "The slice {slice} has transmitted more than {used} from\n{host} to {words} destinations\nsince {since}.\n\nIts maximum {words} burst rate will be capped at {ceil}/s\nuntil {until}.\n\nPlease reduce the average {words} transmission rate\nof the slice to {limit} per {period}.\n\n",
            slice = n.slice,
            used = used,
            since = format_time(n.period_start),
            ceil = ceil,
            until = format_time(n.period_end),
            limit = Bytes(limit.0),
            period = format_period(period_secs),
        ));
    }
    out.push_str(&format!("{} {host} bwcap {}\n", format_time(now), n.slice));
    out
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

enum Sender {
    Smtp(SmtpTransport, String),
    Sendmail(SendmailTransport),
    None,
}

/// Composes and sends notices.
pub(crate) struct Mailer {
    mail: Mail,
    host: String,
    period_secs: u64,
    sender: Sender,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("transport", &self.mail.transport)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for the `[mail]` settings.
    ///
    /// # Errors
    /// An SMTP relay that cannot be set up (bad host name).
    pub(crate) fn new(mail: &Mail, host: String, period_secs: u64) -> Result<Self, NotifyError> {
        let sender = match &mail.transport {
            Transport::None => Sender::None,
            Transport::Sendmail => Sender::Sendmail(SendmailTransport::new()),
            Transport::Smtp {
                server,
                starttls,
                credentials,
            } => {
                let (h, port) = server.rsplit_once(':').unwrap_or((server, "25"));
                let port: u16 = port.parse().unwrap_or(25);
                let builder = if *starttls {
                    SmtpTransport::starttls_relay(h).map_err(|source| NotifyError::Setup {
                        server: server.clone(),
                        source,
                    })?
                } else {
                    SmtpTransport::builder_dangerous(h)
                };
                let mut builder = builder.port(port).timeout(Some(Duration::from_secs(20)));
                if let Some((user, password)) = credentials {
                    builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
                }
                Sender::Smtp(builder.build(), format!("smtp {server}"))
            }
        };
        Ok(Self {
            mail: mail.clone(),
            host,
            period_secs,
            sender,
        })
    }

    /// The message for a notice.
    ///
    /// # Errors
    /// An address (support, from, the slice's) that is not a plain address.
    pub(crate) fn compose(&self, n: &Notice, now: u64) -> Result<Message, NotifyError> {
        let err = |why: String| NotifyError::Compose {
            slice: n.slice.clone(),
            why,
        };
        let mailbox = |name: Option<String>, addr: &str| -> Result<Mailbox, NotifyError> {
            crate::config::mailaddr::validate(addr).map_err(|e| err(e.to_string()))?;
            let addr = addr
                .parse()
                .map_err(|e: lettre::address::AddressError| err(e.to_string()))?;
            Ok(Mailbox::new(name, addr))
        };
        // lettre folds and encodes header text but panics on line breaks: refuse them first.
        for (what, text) in [
            ("operator", &self.mail.operator),
            ("host name", &self.host),
            ("slice name", &n.slice),
        ] {
            if text.chars().any(char::is_control) {
                return Err(err(format!("{what} {:?} holds control characters", text)));
            }
        }
        let from = mailbox(
            Some(format!("{} Support", self.mail.operator)),
            &self.mail.support,
        )?;
        let mut builder = Message::builder()
            .from(from.clone())
            .reply_to(from)
            .sender(mailbox(None, &self.mail.from)?)
            .to(mailbox(None, &self.mail.support)?)
            .subject(subject(&self.mail.operator, &n.slice, &self.host))
            .header(ContentType::TEXT_PLAIN);
        if n.slice != ROOT_NAME {
            let addr = self.mail.slice_address.replace("{slice}", &n.slice);
            builder = builder.to(mailbox(None, &addr)?);
        }
        builder
            .body(body(n, &self.host, self.period_secs, now))
            .map_err(|e| err(e.to_string()))
    }

    /// Sends a notice (blocking; call it off the async runtime).
    ///
    /// # Errors
    /// Composition or transport failures.
    pub(crate) fn send(&self, n: &Notice, now: u64) -> Result<(), NotifyError> {
        let msg = self.compose(n, now)?;
        let fail = |via: &str, why: String| NotifyError::Send {
            slice: n.slice.clone(),
            via: via.to_owned(),
            why,
        };
        match &self.sender {
            Sender::None => {
                tracing::info!(slice = %n.slice, "notice (mail transport is none):\n{}", body(n, &self.host, self.period_secs, now));
                Ok(())
            }
            Sender::Smtp(t, via) => t
                .send(&msg)
                .map(|_| ())
                .map_err(|e| fail(via, e.to_string())),
            Sender::Sendmail(t) => t.send(&msg).map_err(|e| fail("sendmail", e.to_string())),
        }
    }
}

/// How long to wait before the next attempt after `attempts` failures: 5 s doubling, at most
/// 5 minutes.
pub(crate) fn backoff(attempts: u32) -> u64 {
    (5u64 << attempts.min(6)).min(300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::BitsPerSec;

    fn notice(slice: &str) -> Notice {
        Notice {
            slice: slice.into(),
            xid: 1001,
            period_start: 1_700_000_000,
            period_end: 1_700_086_400,
            capped: vec![
                CappedClass {
                    class: TrafficClass::General,
                    used: Bytes(5_400_000_000),
                    ceil: BitsPerSec(1_500_000),
                    budget: Bytes(5_798_205_440),
                },
                CappedClass {
                    class: TrafficClass::Exempt,
                    used: Bytes(17_000_000_000),
                    ceil: BitsPerSec(8_000),
                    budget: Bytes(17_609_365_504),
                },
            ],
            decided_at: 1_700_040_000,
            attempts: 0,
            next_attempt: 0,
        }
    }

    fn mail() -> Mail {
        Mail {
            transport: Transport::None,
            from: "bwmon@example.org".into(),
            support: "support@example.org".into(),
            slice_address: "{slice}@slices.example.org".into(),
            operator: "ExampleLab".into(),
        }
    }

    #[test]
    fn periods_and_times_read_like_the_seeds() {
        assert_eq!(format_period(86_400), "day");
        assert_eq!(format_period(3600), "hour");
        assert_eq!(format_period(5400), "1.5 hours");
        assert_eq!(format_period(172_800 + 43_200), "2.5 days");
        assert_eq!(format_period(90), "1.5 minutes");
        assert_eq!(format_period(40), "40 seconds");
        assert_eq!(format_time(0), "Thu Jan  1 00:00:00 1970 GMT");
        assert_eq!(format_time(1_700_000_000), "Tue Nov 14 22:13:20 2023 GMT");
    }

    #[test]
    fn the_body_says_what_was_sent_where_since_when_and_what_follows() {
        let b = body(&notice("alice"), "node1", 86_400, 1_700_040_000);
        for expect in [
            "The slice alice has transmitted more than 5.0 GiB from\nnode1 to general destinations\nsince Tue Nov 14 22:13:20 2023 GMT.",
            "capped at 1.5mbit/s\nuntil Wed Nov 15 22:13:20 2023 GMT.",
            "of the slice to 5.4 GiB per day.",
            "to exempt destinations",
            "capped at 8kbit/s",
            "bwcap alice\n",
        ] {
            assert!(b.contains(expect), "missing {expect:?} in\n{b}");
        }
    }

    #[test]
    fn headers_follow_the_seed_and_root_gets_no_slice_address() {
        let m = Mailer::new(&mail(), "node1".into(), 86_400).unwrap();
        let text = String::from_utf8(m.compose(&notice("alice"), 1).unwrap().formatted()).unwrap();
        assert!(
            text.contains("Subject: ExampleLab capped bandwidth of slice alice on node1"),
            "{text}"
        );
        assert!(
            text.contains("From: \"ExampleLab Support\" <support@example.org>"),
            "{text}"
        );
        assert!(
            text.contains("To: support@example.org, alice@slices.example.org"),
            "{text}"
        );
        let root = String::from_utf8(m.compose(&notice("root"), 1).unwrap().formatted()).unwrap();
        assert!(root.contains("To: support@example.org\r\n"), "{root}");
    }

    #[test]
    fn header_injection_is_impossible() {
        let mut evil = mail();
        evil.operator = "Evil\r\nBcc: victim@example.org".into();
        let m = Mailer::new(&evil, "node1".into(), 86_400).unwrap();
        assert!(matches!(
            m.compose(&notice("alice"), 1),
            Err(NotifyError::Compose { .. })
        ));
        let m = Mailer::new(&mail(), "node1\r\nX-Injected: yes".into(), 86_400).unwrap();
        assert!(matches!(
            m.compose(&notice("alice"), 1),
            Err(NotifyError::Compose { .. })
        ));
        // Text that is merely unusual is encoded, not interpreted.
        let mut odd = mail();
        odd.operator = "Ünïcode: Lab <x>".into();
        let m = Mailer::new(&odd, "node1".into(), 86_400).unwrap();
        let text = String::from_utf8(m.compose(&notice("alice"), 1).unwrap().formatted()).unwrap();
        assert_eq!(
            text.matches("\r\nFrom:").count() + usize::from(text.starts_with("From:")),
            1,
            "{text}"
        );
        let mut bad = mail();
        bad.slice_address = "{slice}@x.org\r\nBcc: v@x.org".into();
        let m = Mailer::new(&bad, "node1".into(), 86_400).unwrap();
        assert!(matches!(
            m.compose(&notice("alice"), 1),
            Err(NotifyError::Compose { .. })
        ));
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(
            (0..8).map(backoff).collect::<Vec<_>>(),
            vec![5, 10, 20, 40, 80, 160, 300, 300]
        );
    }
}
