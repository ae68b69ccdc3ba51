//! `[mail]`: how notices are delivered, and the addresses they carry.

use toml_edit::Item;

use crate::config::{mailaddr, problems::Collector, read::Field};

/// The keys of `[mail]`, in the order the unknown-key message lists them.
const KEYS: [&str; 9] = [
    "transport",
    "smtp",
    "starttls",
    "user",
    "password",
    "from",
    "support",
    "slice_address",
    "operator",
];

/// How notices are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
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
pub(crate) struct Mail {
    /// Delivery.
    pub(crate) transport: Transport,
    /// The envelope and header sender address.
    pub(crate) from: String,
    /// The support address (always a recipient).
    pub(crate) support: String,
    /// The slice's address, with `{slice}` replaced by its name.
    pub(crate) slice_address: String,
    /// The operator's name ("PlanetLab").
    pub(crate) operator: String,
}

impl Default for Mail {
    /// Notices logged, not sent; addresses on localhost.
    fn default() -> Self {
        Mail {
            transport: Transport::None,
            from: "bwmon@localhost".into(),
            support: "root@localhost".into(),
            slice_address: "{slice}@localhost".into(),
            operator: "bwmon".into(),
        }
    }
}

/// Reads `[mail]` (every key optional), collecting its problems.
pub(super) fn parse_mail(c: &mut Collector, item: &Item) -> Mail {
    let mut mail = Mail::default();
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
        let mut f = Field::new(c, v, &key);
        if !KEYS.contains(&k) {
            f.problem(format!("unknown key; known keys are {}", KEYS.join(", ")));
            continue;
        }
        if k == "starttls" {
            starttls = f.boolean().unwrap_or(starttls);
            continue;
        }
        let Some(s) = f.string().map(str::to_owned) else {
            continue;
        };
        match k {
            "transport" => transport = s,
            "smtp" => {
                if s.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    f.problem(format!("'{s}' must be host:port"));
                }
                server = Some(s);
            }
            "user" => user = Some(s),
            "password" => password = Some(s),
            "from" | "support" => {
                if let Err(e) = mailaddr::validate(&s) {
                    f.problem(e.to_string());
                }
                if k == "from" {
                    mail.from = s;
                } else {
                    mail.support = s;
                }
            }
            "slice_address" => {
                if !s.contains("{slice}") {
                    f.problem("must contain {slice}, e.g. \"{slice}@slices.example.org\"");
                } else if let Err(e) = mailaddr::validate(&s.replace("{slice}", "slice")) {
                    f.problem(e.to_string());
                }
                mail.slice_address = s;
            }
            _ => {
                if s.chars().any(|ch| ch.is_control()) || s.is_empty() || s.len() > 64 {
                    f.problem("must be 1 to 64 characters without control characters");
                }
                mail.operator = s;
            }
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
