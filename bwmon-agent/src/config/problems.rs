//! Problems found while reading a file (config or slices), each located as
//! `path:line: key: message`. Every problem is collected, not only the first.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use toml_edit::{ImDocument, Item, Value};

/// One problem in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    /// 1-based line.
    pub(crate) line: usize,
    /// The key, dotted ("mail.smtp").
    pub(crate) key: String,
    /// What is wrong.
    pub(crate) message: String,
}

/// Everything wrong with a file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FileErrors {
    /// The file.
    pub(crate) path: PathBuf,
    /// The problems, in file order.
    pub(crate) problems: Vec<Problem>,
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

/// Reads a text file of at most `max` bytes. Anything but a regular file (a FIFO would block
/// the reader, a device never end) and anything larger is refused, said as a problem of the
/// file.
///
/// # Errors
/// Not a regular file, too large, unreadable, or not UTF-8.
pub(crate) fn read_text(path: &Path, max: u64) -> Result<String, FileErrors> {
    use std::io::Read as _;
    let refuse = |message: String| FileErrors {
        path: path.to_owned(),
        problems: vec![Problem {
            line: 0,
            key: "(file)".into(),
            message,
        }],
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(refuse(format!(
            "{} bytes; at most {max} are read",
            meta.len()
        )));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| refuse(format!("cannot read: {e}")))?;
    if text.len() as u64 > max {
        return Err(refuse(format!("grew past {max} bytes while read")));
    }
    Ok(text)
}

/// Collects problems with their lines while a file is read.
pub(crate) struct Collector {
    /// Where each line after the first starts: a line number is a binary search, so locating
    /// every entry of a 100,000-slice file stays linear overall.
    line_starts: Vec<usize>,
    pub(crate) problems: Vec<Problem>,
}

impl Collector {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            line_starts: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1)
                .collect(),
            problems: Vec::new(),
        }
    }

    pub(crate) fn line_of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        span.map(|r| self.line_starts.partition_point(|start| *start <= r.start) + 1)
            .unwrap_or(1)
    }

    pub(crate) fn add(&mut self, item: Option<&Item>, key: &str, message: impl Into<String>) {
        let line = self.line_of(item.and_then(Item::span));
        self.add_line(line, key, message);
    }

    /// A problem at `line`, for a key that has no value to point at (a missing key).
    pub(crate) fn add_line(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn add_value(&mut self, value: &Value, key: &str, message: impl Into<String>) {
        let line = self.line_of(value.span());
        self.add_line(line, key, message);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_text(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("(file): not a regular file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(101)).unwrap();
        let e = read_text(&big, 100).unwrap_err();
        assert!(
            e.to_string().contains("101 bytes; at most 100 are read"),
            "{e}"
        );
        let e = read_text(dir.path(), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::write(&big, "ok").unwrap();
        assert_eq!(read_text(&big, 100).unwrap(), "ok");
    }
}
