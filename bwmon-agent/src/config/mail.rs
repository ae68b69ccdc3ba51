//! `[mail]`: how notices are delivered, and the addresses they carry.

use toml_edit::Item;

use crate::config::problems::Collector;

/// How notices are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SMTP to `host:port`.
    Smtp {
        /// `host:port`
        server: String,
        /// Use STARTTLS.
        starttls: bool,
        /// Optional `(user, password)`.
        credentials: Option<(String, String)>,
    },
    /// The local sendmail (no shell).
    Sendmail,
    /// Notices are logged, not sent.
    None,
}

/// `[mail]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// Delivery.
    pub transport: Transport,
    /// The envelope and header sender address.
    pub from: String,
    /// The support address (always a recipient).
    pub support: String,
    /// The slice's address, with `{slice}` replaced by its name.
    pub slice_address: String,
    /// The operator's name ("PlanetLab").
    pub operator: String,
}

/// Reads `[mail]` (every key optional), collecting its problems.
pub(super) fn parse_mail(c: &mut Collector, item: Option<&Item>) -> Mail {
    let mut mail = Mail {
        transport: Transport::None,
        from: "bwmon@localhost".into(),
        support: "root@localhost".into(),
        slice_address: "{slice}@localhost".into(),
        operator: "bwmon".into(),
    };
    let Some(item) = item else {
        return mail;
    };
    let Some(t) = item.as_table_like() else {
        c.add(Some(item), "mail", "must be a table");
        return mail;
    };
    let mut transport = "none".to_owned();
    let mut server = None;
    let mut starttls = false;
    let (mut user, mut password) = (None, None);
    for (k, v) in t.iter() {
        let key = format!("mail.{k}");
        let s = v.as_str().map(str::to_owned);
        match (k, s) {
            ("transport", Some(s)) => transport = s,
            ("smtp", Some(s)) => {
                if s.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    c.add(Some(v), &key, format!("'{s}' must be host:port"));
                }
                server = Some(s);
            }
            ("starttls", _) => match v.as_bool() {
                Some(b) => starttls = b,
                None => c.add(Some(v), &key, "must be true or false"),
            },
            ("user", Some(s)) => user = Some(s),
            ("password", Some(s)) => password = Some(s),
            ("from" | "support", Some(s)) => {
                if let Err(e) = crate::config::mailaddr::validate(&s) {
                    c.add(Some(v), &key, e);
                }
                if k == "from" {
                    mail.from = s;
                } else {
                    mail.support = s;
                }
            }
            ("slice_address", Some(s)) => {
                if !s.contains("{slice}") {
                    c.add(Some(v), &key, "must contain {slice}, e.g. \"{slice}@slices.example.org\"");
                } else if let Err(e) = crate::config::mailaddr::validate(&s.replace("{slice}", "slice")) {
                    c.add(Some(v), &key, e);
                }
                mail.slice_address = s;
            }
            ("operator", Some(s)) => {
                if s.chars().any(|ch| ch.is_control()) || s.is_empty() || s.len() > 64 {
                    c.add(Some(v), &key, "must be 1 to 64 characters without control characters");
                }
                mail.operator = s;
            }
            ("transport" | "smtp" | "user" | "password" | "from" | "support" | "slice_address" | "operator", None) => {
                c.add(Some(v), &key, "must be a string");
            }
            _ => c.add(
                Some(v),
                &key,
                "unknown key; known keys are transport, smtp, starttls, user, password, from, support, slice_address, operator",
            ),
        }
    }
    mail.transport = match transport.as_str() {
        "none" => Transport::None,
        "sendmail" => Transport::Sendmail,
        "smtp" => match server {
            Some(server) => Transport::Smtp {
                server,
                starttls,
                credentials: user.zip(password),
            },
            None => {
                c.add(
                    t.get("transport"),
                    "mail.transport",
                    "\"smtp\" needs mail.smtp = \"host:port\"",
                );
                Transport::None
            }
        },
        other => {
            c.add(
                t.get("transport"),
                "mail.transport",
                format!("'{other}' is not one of \"smtp\", \"sendmail\", \"none\""),
            );
            Transport::None
        }
    };
    mail
}
