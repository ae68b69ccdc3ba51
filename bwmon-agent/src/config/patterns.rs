//! The slices file's `[[cgroups]]` tables: a pattern and the attributes of every slice it
//! makes (one per matching cgroup).

use toml_edit::Table;

use super::{
    draft::count_key,
    problems::Collector,
    read::{Field, attributes},
};
use crate::{
    cgroup::Pattern,
    policy::{received::Count, rspec::Attributes},
};

/// A `[[cgroups]]` table: every cgroup its pattern matches is a slice with its attributes,
/// named after the cgroup (its last component).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PatternSpec {
    /// The pattern.
    pub(crate) pattern: Pattern,
    /// Attributes of every slice it makes.
    pub(crate) attrs: Attributes,
    /// Which bytes their budgets cover, when the table says (`count`); else the config's.
    pub(crate) count: Option<Count>,
}

/// A `[[cgroups]]` table's keys that are not attributes.
const PATTERN_KEYS: [&str; 2] = ["pattern", "count"];

/// The `[[cgroups]]` tables: each with a valid `pattern` and attributes, the others reported
/// as `cgroups[i].key` and skipped.
pub(super) fn read_patterns(c: &mut Collector, root: &Table) -> Vec<PatternSpec> {
    let Some(item) = root.get("cgroups") else {
        return Vec::new();
    };
    let Some(tables) = item.as_array_of_tables() else {
        c.add(Some(item), "cgroups", "must be [[cgroups]] tables");
        return Vec::new();
    };
    let mut out: Vec<PatternSpec> = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let key = |k: &str| format!("cgroups[{index}].{k}");
        let before = c.problems.len();
        let pattern = match table.get("pattern") {
            Some(item) => match item.as_str().map(Pattern::parse) {
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    c.add(Some(item), &key("pattern"), e.to_string());
                    None
                }
                None => {
                    c.add(Some(item), &key("pattern"), "must be a string");
                    None
                }
            },
            None => {
                let line = c.line_of(table.span());
                c.add_line(line, &key("pattern"), "missing");
                None
            }
        };
        let count = table
            .get("count")
            .and_then(|item| count_key(&mut Field::new(c, item, &key("count"))));
        let mut attrs = Attributes::default();
        attributes(c, table, &key(""), &PATTERN_KEYS, &mut attrs);
        if let Some(pattern) = pattern
            && c.problems.len() == before
        {
            if out.iter().any(|p| p.pattern == pattern) {
                let message = format!("'{}' appears twice", pattern.as_str());
                c.add(table.get("pattern"), &key("pattern"), message);
                continue;
            }
            out.push(PatternSpec {
                pattern,
                attrs,
                count,
            });
        }
    }
    out
}
