//! Problems found while reading a file (config or slices), each located as
//! `path:line: key: message`. Every problem is collected, not only the first.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use toml_edit::{ImDocument, Item, Value};

/// One problem in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// The key, dotted ("mail.smtp").
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Everything wrong with a file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FileErrors {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}: {}: {}",
                self.path.display(),
                p.line,
                p.key,
                p.message
            )?;
        }
        Ok(())
    }
}

/// Collects problems with their lines while a file is read.
pub(crate) struct Collector<'a> {
    text: &'a str,
    pub(crate) problems: Vec<Problem>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    pub(crate) fn line_of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        span.map(|r| {
            self.text[..r.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        })
        .unwrap_or(1)
    }

    pub(crate) fn add(&mut self, item: Option<&Item>, key: &str, message: impl Into<String>) {
        let line = self.line_of(item.and_then(Item::span));
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn add_value(&mut self, value: &Value, key: &str, message: impl Into<String>) {
        let line = self.line_of(value.span());
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn finish(mut self, path: &Path) -> Result<(), FileErrors> {
        if self.problems.is_empty() {
            return Ok(());
        }
        self.problems.sort_by_key(|p| p.line);
        Err(FileErrors {
            path: path.to_owned(),
            problems: self.problems,
        })
    }
}

/// Parses a TOML document, turning a syntax error into a located problem.
pub(crate) fn parse_document(path: &Path, text: &str) -> Result<ImDocument<String>, FileErrors> {
    ImDocument::parse(text.to_owned()).map_err(|e| {
        let c = Collector::new(text);
        FileErrors {
            path: path.to_owned(),
            problems: vec![Problem {
                line: c.line_of(e.span()),
                key: "(syntax)".into(),
                message: e.message().to_owned(),
            }],
        }
    })
}

/// Turns a TOML value into a toml::Value for the attribute parser.
pub(crate) fn plain_value(v: &Value) -> toml::Value {
    match v {
        Value::Integer(i) => toml::Value::Integer(*i.value()),
        Value::String(s) => toml::Value::String(s.value().clone()),
        Value::Float(f) => toml::Value::Float(*f.value()),
        Value::Boolean(b) => toml::Value::Boolean(*b.value()),
        Value::Datetime(d) => toml::Value::Datetime(*d.value()),
        Value::Array(a) => toml::Value::Array(a.iter().map(plain_value).collect()),
        Value::InlineTable(t) => toml::Value::Table(
            t.iter()
                .map(|(k, v)| (k.to_owned(), plain_value(v)))
                .collect(),
        ),
    }
}
