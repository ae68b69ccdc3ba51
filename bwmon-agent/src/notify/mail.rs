//! Notices by e-mail (lettre): the cap's composed like the seed's, warnings beside it; sent
//! through SMTP, the local sendmail (lettre's transport, never a shell) or nowhere, and retried
//! with backoff until delivered or stale. Every header value is an address checked by [`crate::config::mailaddr`] or text lettre
//! encodes, so nothing from config or slice data can inject a header.

use std::time::Duration;

use lettre::{
    Message, SendmailTransport, SmtpTransport, Transport as _,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};

use super::{NotifyError, Sender as ChannelSender};
use crate::{
    config::slices::ROOT_NAME,
    config::{Mail, Transport},
    state::{Channel, ClassNote, Notice, NoticeKind},
    time::{
        UnixSecs,
        text::{format_period, format_time},
    },
    units::Bytes,
};

/// Subject line of a notice of `kind`.
pub(crate) fn subject(operator: &str, kind: &NoticeKind, slice: &str, host: &str) -> String {
    match kind {
        NoticeKind::Warned => format!("{operator} bandwidth warning for slice {slice} on {host}"),
        NoticeKind::Capped => format!("{operator} capped bandwidth of slice {slice} on {host}"),
        other => format!("{operator}: slice {slice} on {host}: {}", other.name()),
    }
}

/// The body: one paragraph per class (the seed's for the cap), then the seed's footer.
pub(crate) fn body(n: &Notice, host: &str, period_secs: u64, now: u64) -> String {
    let mut out = String::new();
    let (slice, since, until) = (
        &n.slice,
        format_time(n.period_start),
        format_time(n.period_end),
    );
    let period = format_period(period_secs);
    for ClassNote {
        class,
        used,
        ceil,
        budget,
        level,
    } in &n.classes
    {
        let words = class.name();
        let limit = Bytes(budget.0);
        let text = match (&n.kind, level) {
            (NoticeKind::Warned, _) => format!(
                "The slice {slice} has transmitted {used} from\n{host} to {words} destinations\nsince {since}:\n{share} of its budget of {limit} per {period}.\n\nIts maximum {words} burst rate is {ceil}/s. Once the slice\nhas used its threshold, it is lowered so that the rest of\nthe budget lasts until {until}.\n\n",
                share = level.map(|l| l.to_string()).unwrap_or_default(),
            ),
            (NoticeKind::Capped, level) => {
                let mut text = format!(
                    "The slice {slice} has transmitted more than {used} from\n{host} to {words} destinations\nsince {since}.\n\nIts maximum {words} burst rate will be capped at {ceil}/s\nuntil {until}.\n\nPlease reduce the average {words} transmission rate\nof the slice to {limit} per {period}.\n\n",
                );
                if let Some(l) = level {
                    text.push_str(&format!("It has used {l} of its {words} budget.\n\n"));
                }
                text
            }
            (other, _) => format!(
                "{}: {words} {used} of {limit}, ceiling {ceil}/s.\n\n",
                other.name()
            ),
        };
        out.push_str(&text);
    }
    if let NoticeKind::Lever(audit) = &n.kind {
        out.push_str(&format!("{audit}\n\n"));
    }
    let tag = match n.kind {
        NoticeKind::Warned => "bwwarn",
        _ => "bwcap",
    };
    out.push_str(&format!("{} {host} {tag} {}\n", format_time(now), n.slice));
    out
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
            .subject(subject(&self.mail.operator, &n.kind, &n.slice, &self.host))
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

impl ChannelSender for Mailer {
    const CHANNEL: Channel = Channel::Mail;

    fn deliver(&self, n: &Notice, now: UnixSecs) -> Result<(), NotifyError> {
        self.send(n, now)
    }

    /// The SMTP transport's own timeout is 20 s per step.
    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        class::TrafficClass,
        policy::warnings::Percent,
        state::{Channels, NoticeId},
        units::BitsPerSec,
    };

    fn notice(slice: &str) -> Notice {
        Notice {
            id: NoticeId(7),
            slice: slice.into(),
            xid: 1001,
            period_start: 1_700_000_000,
            period_end: 1_700_086_400,
            kind: NoticeKind::Capped,
            classes: vec![
                ClassNote {
                    class: TrafficClass::General,
                    used: Bytes(5_400_000_000),
                    ceil: BitsPerSec(1_500_000),
                    budget: Bytes(5_798_205_440),
                    level: None,
                },
                ClassNote {
                    class: TrafficClass::Exempt,
                    used: Bytes(17_000_000_000),
                    ceil: BitsPerSec(8_000),
                    budget: Bytes(17_609_365_504),
                    level: None,
                },
            ],
            pending: Channels {
                mail: true,
                webhook: false,
            },
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
    fn a_warning_says_the_level_and_a_level_crossed_with_the_cap_is_in_its_notice() {
        let mut warned = notice("alice");
        warned.kind = NoticeKind::Warned;
        warned.classes.truncate(1);
        warned.classes[0].level = Percent::new(80);
        warned.classes[0].used = Bytes(4_700_000_000);
        let b = body(&warned, "node1", 86_400, 1_700_040_000);
        for expect in [
            "The slice alice has transmitted 4.4 GiB from\nnode1 to general destinations",
            "80 % of its budget of 5.4 GiB per day.",
            "Its maximum general burst rate is 1.5mbit/s.",
            "bwwarn alice\n",
        ] {
            assert!(b.contains(expect), "missing {expect:?} in\n{b}");
        }
        assert_eq!(
            subject("ExampleLab", &warned.kind, "alice", "node1"),
            "ExampleLab bandwidth warning for slice alice on node1"
        );
        let mut capped = notice("alice");
        capped.classes[0].level = Percent::new(95);
        let b = body(&capped, "node1", 86_400, 1_700_040_000);
        assert!(b.contains("It has used 95 % of its general budget."), "{b}");
        assert_eq!(b.matches("It has used").count(), 1, "{b}");
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
}
